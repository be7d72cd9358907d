//! # aclshm: share Ascend NPU memory between processes through the ACL runtime
//!
//! Multi-process model serving needs one process to own device memory and many workers to see it. The
//! AscendCL runtime (`libascendcl.so`) has the primitives (reserve virtual ranges, allocate physical
//! memory, map it, export a physical handle, import it in another process or on another device, whitelist
//! importers by pid, share `aclrtMalloc` memory by key, signal across processes with IPC notifies) and
//! sharp rules about using them. aclshm wraps them so that the rules hold by construction.
//!
//! ## Layers
//!
//! Each line uses only the lines below it (`.ci/modgraph.py check` fails CI on a cycle;
//! `docs/design.md` explains the three places where a hook turns an upward call around).
//!
//! ```text
//!   aclshm (this crate)
//!     cleanup              sweep_share_dir: every kind of shared file
//!     kv                   KV-cache blocks shared by reference, pins across processes
//!     share  tune          a pool shared with other processes (mirrors, descriptors, the rendezvous) │
//!                          allocation traces replayed over a grid of configurations
//!     pool                 a chunked pool: reserve once, grow and trim by physical chunks; a chunk
//!                          observer (the sharing) is told of every chunk mapped and given back
//!     registry  ipc  notify  event   imports (one per handle per process) │ IPC memory by key │
//!                          IPC notifies │ events and IPC events
//!     vmm                  RAII ranges, physical memory, mappings; the process's book of handles
//!     backend  device      choosing a runtime │ the current device, aclInit, contexts, pointer places
//!     raw                  one fallible function per ACL call
//!     runtime  handles  shm   the one seam: a table of ACL entry points │ the handle book │ shared files
//!     error  stats  sync  os
//!   aclshm-sys   the C API as data: our declarations, bindgen output, the libascendcl.so loader
//!   aclshm-sim   the ACL runtime simulated on host shared memory (embedded, or as a drop-in .so)
//!   aclshm-os    the Linux layer under both (rustix, memmap2, getrandom)
//! ```
//!
//! Everything reaches the device through a [`Runtime`]: a real CANN `libascendcl.so` loaded at run time,
//! the simulator's drop-in library, or the simulator linked in (feature `sim`, the default). The code path
//! that runs on an NPU is the one the tests run on the simulator.
//!
//! ```
//! use aclshm::{Runtime, raw};
//!
//! # fn main() -> aclshm::Result<()> {
//! # let _dirs = unsafe { aclshm::doc_dirs() };
//! let rt = Runtime::simulator();
//! let devices = raw::get_device_count(&rt)?;
//! assert!(devices >= 1);
//! raw::set_device(&rt, 0)?;
//! let (free, total) = raw::get_mem_info(&rt, aclshm::sys::aclrtMemAttr::ACL_HBM_MEM)?;
//! assert!(free <= total);
//! # raw::reset_device(&rt, 0)?;
//! # Ok(())
//! # }
//! ```

mod backend;
mod cleanup;
mod device;
mod error;
pub mod event;
mod handles;
mod info;
mod input;
pub mod ipc;
pub mod kv;
mod listed;
mod magazine;
pub mod notify;
mod os;
pub mod pool;
pub mod raw;
pub mod registry;
mod runtime;
pub mod share;
mod shm;
mod stats;
mod stream;
mod sync;
pub mod tune;
pub mod vmm;

pub use aclshm_os::{ParseBytesError, parse_bytes};
pub use aclshm_sys as sys;
pub use cleanup::sweep_share_dir;
pub use device::{Context, Location, Place};
pub use error::{AclError, Error, Result};
pub use event::{Event, IpcEventHandle};
pub use info::{DeviceInfo, RuntimeInfo, SimulatorInfo};
pub use ipc::{IpcMemConfig, IpcMemDesc, IpcMemImport, IpcMemory};
pub use kv::{KV_TAG, KvBlock, KvConfig, KvDesc, KvLayout, KvMirror, KvPool, KvStats, Pinned};
pub use notify::Notify;
pub use pool::{Allocation, Block, BlockClassId, Pool, PoolConfig, PoolStats, SleepConfig, SleepReport};
pub use runtime::{Backend, Runtime};
pub use share::{AllocDesc, Mirror, ShareConfig, ShareDesc};
pub use stream::Stream;

/// Private simulator and share directories for one process, for the documentation's examples (each runs
/// as a process of its own): sets `ACLSHM_SIM_DIR` and `ACLSHM_SHARE_DIR`, and removes the share directory
/// when dropped (the simulator removes its own when the process leaves it).
///
/// # Safety
/// 1. No other thread of the process is running (it sets environment variables).
#[doc(hidden)]
pub unsafe fn doc_dirs() -> DocDirs {
    let base = std::env::temp_dir().join(format!("aclshm-doc-{}-{:x}", std::process::id(), os::random_u64()));
    let share = base.with_extension("share");
    // SAFETY: no other thread runs (precondition 1).
    unsafe {
        std::env::set_var("ACLSHM_SIM_DIR", &base);
        std::env::set_var("ACLSHM_SHARE_DIR", &share);
    }
    DocDirs(share)
}

/// See [`doc_dirs`].
#[doc(hidden)]
pub struct DocDirs(std::path::PathBuf);

impl Drop for DocDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
