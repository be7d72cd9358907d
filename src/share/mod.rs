//! Sharing a pool across processes: the owner exports each chunk once and publishes a chunk table;
//! workers attach [`Mirror`]s, on any device, that import and map each chunk into address space of their
//! own and follow the pool as it grows and trims.
//!
//! ```text
//!   owner process                                       worker process (any device)
//!   Pool ──grow──> export chunk (once) ─┐               Mirror
//!     │                                 ├─> chunk table ──> import (once per process), map at the
//!     │  whitelist every attached       │   (shm, seqlock,    same offset in its own reservation;
//!     │  worker's pid on every chunk    │    futex wakeups)    ptr(descriptor): no runtime call
//!     └──trim──> unpublish; free its   ─┘
//!                handle once every mirror acked         ack(generation) ──┐
//!   rendezvous thread <── Unix socket: Hello{tgid} ─── attach ────────────┘ (Welcome{table, token, ..})
//! ```
//!
//! **Secure by default.** Chunks are exported with pid validation on. A worker attaches through the
//! rendezvous socket (a path in a 0700 directory, the socket 0600): it sends its pid as the host sees it
//! (`aclrtDeviceGetBareTgid`); the owner checks it against the socket's peer credentials (the kernel's
//! word, same user) and whitelists it on every chunk, and on each chunk added later, before answering.
//! (An owner inside a pid namespace, a container, sees workers' pids as its namespace numbers them, while
//! the runtime whitelists host pids: there the pid cannot be cross-checked, and the same-user check is
//! what stands; owners on the host, or sharing the host's pid namespace, check both.)
//! On an NPU the driver also ties each whitelist entry to the time it was added, so a pid recycled by a
//! later process is refused. [`ShareConfig::validate_pids`]` = false` exports without pid validation: any
//! process that learns a shareable handle can import it (the explicit, documented opt-out).
//!
//! **Lifetimes.** The owner never frees a chunk an attached mirror may still import: a retired chunk's
//! handle is kept until every attached mirror has acknowledged a generation in which it had the chunk, or
//! attached after it was gone. Mirrors that imported it keep its memory until they unmap it (the runtime
//! frees memory when every process has freed it). A worker that disconnects (or dies: its socket closes)
//! is forgotten at once, so nothing waits on it; its whitelist entries no longer matter (a recycled pid
//! fails the driver's time check). If the owner dies, mirrors keep what they mapped until they release it.
//!
//! ```text
//!   owner.rs    Sharing (the chunk observer, the rendezvous), Pool::share / descriptor
//!   mirror.rs   Mirror (a worker's view)        followers.rs  the threads that follow mirrors
//!     table.rs    the chunk table (a shared file)       wire.rs   the rendezvous protocol
//!     desc.rs     ShareDesc, AllocDesc                   files.rs  the share directory's files
//! ```

mod desc;
mod files;
mod followers;
mod mirror;
mod owner;
mod table;
pub(crate) mod wire;

pub use desc::{AllocDesc, ShareDesc};
pub(crate) use files::NAMES as FILE_NAMES;
pub(crate) use files::forget_dead_owner;
pub use files::{default_dir, published_handles, table_path};
pub use mirror::{Mirror, MirrorStats};
pub use owner::{ShareConfig, ShareStats, WHITELIST_CAPACITY};
pub use wire::Message;

/// The rendezvous protocol's version (see [`Message`]).
pub const PROTOCOL_VERSION: u16 = wire::VERSION;
