//! # aclshm-os: the Linux facilities aclshm and its ACL simulator are built on
//!
//! Both the library (`aclshm`) and the simulator (`aclshm-sim`) keep state in files of a private directory
//! that several processes map, wait on words in those files, and need to know which processes are alive.
//! This crate is that operating-system layer, written once, on [`rustix`] (system calls without libc's
//! error conventions), [`memmap2`] (file mappings) and [`getrandom`]. `libc` serves only where rustix falls
//! short: OFD byte-range locks ([`try_lock_byte`]; rustix locks whole files per process), glibc's
//! `posix_fallocate` emulation ([`allocate`], on filesystems without `fallocate(2)`), `sigaction` ([`guard`];
//! rustix has no signal handling), and `SO_PEERCRED`
//! ([`peer_credentials`]; rustix's answer cannot hold the pid 0 the kernel gives for a peer in another pid
//! namespace).
//!
//! ```text
//!   file      private files and directories (0600 / 0700, never through a link, never another user's),
//!             set_len, allocate
//!   map       SharedMapping (a whole file, read-write, shared), AnonymousMapping (private memory)
//!   addr      address space: reserve (PROT_NONE, aligned), unreserve, rereserve, SharedMapping::mirror_at
//!   lock      OFD byte locks: owned by an open file, dropped by the kernel when the process dies
//!   guard     a SIGBUS handler that turns a shared file truncated under its mapping into zero pages
//!   futex     futex_wait / futex_wake_all on a shared AtomicU32, across processes
//!   process   pid, euid, /proc identity (start_time, alive, bare_tgid), now_ticks, boot_id
//!   socket    poll, peer_credentials (SO_PEERCRED)
//!   random    random_u64
//!   units     parse_bytes ("64M", "2GiB")
//! ```
//!
//! Errors are [`std::io::Error`]s (rustix's `Errno` converted), with a message naming the path where a
//! refusal is ours rather than the kernel's; [`parse_bytes`] has its own [`ParseBytesError`]. Everything
//! that is `unsafe` about the address space is in `addr`, behind functions whose `# Safety` sections say
//! what the caller must keep true. Linux only.

#![deny(missing_docs)]

mod addr;
mod file;
mod futex;
mod guard;
mod lock;
mod map;
mod process;
mod random;
mod socket;
mod units;

pub use addr::{rereserve, reserve, unreserve};
pub use file::{
    TempDir, allocate, check_private_file, create_file, ensure_private_dir, file_len, open_file, open_read_nonblocking,
    set_len,
};
pub use futex::{FutexWait, futex_wait, futex_wake_all};
pub use guard::{Guard, MAX_GUARDS, guard};
pub use lock::{byte_locked_by_other, try_lock_byte, unlock_byte};
pub use map::{AnonymousMapping, SharedMapping};
pub use process::{alive, bare_tgid, boot_id, euid, monotonic_ns, now_ticks, pid, start_time};
pub use random::random_u64;
pub use socket::{PeerCredentials, PollFd, PollFlags, out_of_descriptors, peer_credentials, poll};
pub use units::{ParseBytesError, parse_bytes};

/// A private temporary directory for this crate's unit tests, removed when dropped (even when a test
/// fails).
/// A private test directory (see [`TempDir`]).
#[cfg(test)]
pub(crate) type TestDir = TempDir;

/// A new private file `name` in a fresh test directory (kept while the directory is), open read-write.
#[cfg(test)]
pub(crate) fn test_file(name: &str) -> (TestDir, std::path::PathBuf, std::os::fd::OwnedFd) {
    let dir = TestDir::new(name).unwrap();
    let path = dir.0.join(name);
    let fd = create_file(&path).unwrap();
    (dir, path, fd)
}
