//! # aclshm-sim: the AscendCL runtime, simulated on host shared memory
//!
//! An implementation of the ACL C API subset declared in `aclshm-sys` (`aclshm_acl.h`) for machines
//! without an NPU, faithful enough that code tested on it behaves the same on one. It is aclshm's embedded
//! default backend ([`fns`] gives its function table) and also builds as a drop-in `libascendcl.so`
//! (`sim/ascendcl`) that C and C++ programs written against the ACL headers can link or load.
//!
//! ## How it is built
//!
//! ```text
//!   process A                                   process B
//!   +-------------------------------+           +-------------------------------+
//!   | device VA (PROT_NONE)         |           | device VA (PROT_NONE)         |
//!   |  [reservation  | map | map ]  |           |  [reservation  | map ]        |
//!   |                  |                        |                  |            |
//!   | private RW alias of each object  <--- aclrtMemcpy copies through it ---> |
//!   +-------------------|-----------+           +------------------|------------+
//!                       v                                          v
//!   simulator directory (/dev/shm/aclshm-<uid>, 0700)
//!     registry         process table, physical objects (holders, export, whitelist),
//!                      IPC keys, notifies; robust process-shared mutex; notify futex words
//!     phys-<serial>    one shared-memory object per physical allocation (0600)
//! ```
//!
//! - **Physical memory** is a shared-memory file; **reserving** address space is a `PROT_NONE` mapping;
//!   **mapping** places the object there, still inaccessible: like device memory, it cannot be
//!   dereferenced on the host (doing so faults, as on an NPU). Copies and memset reach it through a private
//!   read-write alias, so a pointer one process writes through is read by another.
//! - **Cross-process state** lives in the registry (see `registry`): what each process holds, exports and
//!   whitelists, and how much of each device is used, so capacity is enforced across processes.
//! - **Lifetime** follows the driver: memory lives until every process that holds it has freed it (or
//!   exited). A process that dies is noticed by pid and start time the next time any process attaches,
//!   imports, finds a device full or asks for statistics, and everything it held is released then.
//! - **Streams** are threads running queued tasks in order; notifies are futex words in the registry.
//! - **Rules**: every documented rule of the VMM, IPC memory and IPC notify APIs is enforced with the error
//!   code the runtime or its driver returns (the table is in `docs/simulator.md`).
//!
//! Configuration is read from the environment (see [`Config`]). Fault injection (`ACLSHM_SIM_FAULTS`,
//! `aclshmSimInjectFault`), per-function call counters and live-object counts serve tests.
//!
//! ## Modules, in layers
//!
//! Each module uses only modules below it (`.ci/modgraph.py check sim/src` keeps it so):
//!
//! ```text
//!   capi                   the C surface: one extern "C" fn per entry point; counts, faults, catch_unwind
//!   ─────────────────────────────────────────────────────────────────────────────────────────────────
//!   memory                 aclrtMalloc/Free, host memory, copies, memset (a free closes the memory's
//!                          IPC keys: uses ipc)
//!   ipc  notify  vmm       IPC memory by key; notifies; reservations, physical memory, export/import
//!   event                  events and IPC events (counters in the process or, for IPC, the registry)
//!   device  ext  object    devices, contexts, stream handles (stream_for); the simulator's extensions;
//!                          physical objects (files, capacity, aliases, mapping one whole)
//!   ─────────────────────────────────────────────────────────────────────────────────────────────────
//!   state                  this process's simulator: attach and detach, local tables, handles,
//!                          each thread's current device
//!   stream                 a thread per stream, running tasks that carry their own work (closures
//!                          built by memory and notify), so it names no entry-point module
//!   call                   R and Fail, NULL checks, out-parameters, key buffers
//!   queue  registry        the stream's task queue (loom-checked); the cross-process registry
//!   config  fault  sync    the environment, fault injection, std or loom primitives
//!   ─────────────────────────────────────────────────────────────────────────────────────────────────
//!   aclshm-os  aclshm-sys  the operating system; the ACL API as data
//! ```
//!
//! ## Limits, knowingly
//! No kernels, host (DDR) physical memory or `ASCEND_RT_VISIBLE_DEVICES`; streams belong to their device,
//! not to a context (every context of a device shares them). A process that forks after using the simulator must exec
//! before the child uses it, as with CANN.

mod call;
mod capi;
mod config;
mod device;
mod event;
mod ext;
mod fault;
mod ipc;
mod memory;
mod notify;
mod object;
#[doc(hidden)]
pub mod queue;
mod registry;
mod state;
mod stream;
mod sync;
mod vmm;

pub use capi::*;
pub use config::{Config, DEFAULT_DEVICES, DEFAULT_HBM_BYTES, GRANULARITY, MAX_DEVICES, default_dir, parse_bytes};
