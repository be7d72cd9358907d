//! What the sharing layer adds to the operating-system layer (`aclshm_os`, shared with the simulator): a
//! shared-memory file whose creator can be told alive or gone, the sweep of files whose creator is gone,
//! where shared files go by default, and a test directory. Every system call is `aclshm_os`'s.

use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use aclshm_os::{PeerCredentials, euid, futex_wake_all, out_of_descriptors, peer_credentials};
use aclshm_os::{PollFd, PollFlags, SharedMapping};

use crate::sync::shm::AtomicU32;

/// A read-write shared mapping of a whole file, guarded against the file shrinking under it (a truncated
/// file reads as zeros and [`truncated`](SharedMap::truncated) says so, instead of `SIGBUS` killing the
/// process: see `aclshm_os::guard`). Unmapped on drop.
#[derive(Debug)]
pub(crate) struct SharedMap {
    /// Declared before the mapping: it stops guarding before the range is unmapped.
    guard: aclshm_os::Guard,
    map: SharedMapping,
    /// The file, open while mapped: byte-range locks on it are taken through this descriptor.
    fd: OwnedFd,
}

impl SharedMap {
    /// Create `path` (mode 0600, failing if it exists) of `len` bytes, zeroed, and map it.
    pub(crate) fn create(path: &Path, len: usize) -> io::Result<SharedMap> {
        let fd = aclshm_os::create_file(path)?;
        if let Err(e) = aclshm_os::set_len(&fd, len as u64) {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Self::map(fd, len)
    }

    /// As [`create`](SharedMap::create), and lock byte 0 for as long as this map lives: how other
    /// processes tell, with [`creator_alive`](SharedMap::creator_alive), that its creator still runs.
    pub(crate) fn create_locked(path: &Path, len: usize) -> io::Result<SharedMap> {
        let map = Self::create(path, len)?;
        match map.try_lock_byte(0) {
            Ok(true) => Ok(map),
            Ok(false) => {
                let _ = fs::remove_file(path);
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is locked by another open", path.display()),
                ))
            }
            Err(e) => {
                let _ = fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Whether the process that made the file with [`create_locked`](SharedMap::create_locked) still holds
    /// it (the kernel drops the lock when that process ends, however it ends). From another open only.
    pub(crate) fn creator_alive(&self) -> bool {
        self.byte_locked_by_other(0).unwrap_or(true)
    }

    /// Map an existing `path`, which must be ours, private, and `len` bytes long.
    pub(crate) fn open(path: &Path, len: usize) -> io::Result<SharedMap> {
        let fd = aclshm_os::open_file(path)?;
        let size = aclshm_os::check_private_file(&fd, path)?;
        if size != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has {size} bytes, not {len}", path.display()),
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedMap> {
        let map = SharedMapping::map(&fd, len)?;
        let guard = aclshm_os::guard(map.ptr() as usize, map.len())?;
        Ok(SharedMap { guard, map, fd })
    }

    /// Whether the file shrank under the mapping (someone truncated it): what it held is lost, and the
    /// mapping now holds zeros of this process's own.
    pub(crate) fn truncated(&self) -> bool {
        // A fault beyond the file's end was caught, or (for a shrink within the last page, which reads as
        // zeros without a fault) the file is shorter than the mapping now.
        self.guard.tripped() || aclshm_os::file_len(&self.fd).is_ok_and(|len| len < self.map.len() as u64)
    }

    /// The start of the mapping.
    #[inline]
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.ptr()
    }

    /// Take an exclusive lock on byte `at` of the file, without waiting: `Ok(false)` if another open of
    /// the file holds it. The lock belongs to this open of the file (an OFD lock): it conflicts with every
    /// other open, in this process or another, and the kernel drops it when the file is closed, however
    /// the process ends. Pid namespaces and pid reuse do not matter.
    pub(crate) fn try_lock_byte(&self, at: u64) -> io::Result<bool> {
        aclshm_os::try_lock_byte(&self.fd, at)
    }

    /// Drop our lock on byte `at`.
    pub(crate) fn unlock_byte(&self, at: u64) {
        // Fails only for a descriptor that is not open, which ours is for as long as self lives.
        let _ = aclshm_os::unlock_byte(&self.fd, at);
    }

    /// Whether another open of the file holds a lock on byte `at`.
    pub(crate) fn byte_locked_by_other(&self, at: u64) -> io::Result<bool> {
        aclshm_os::byte_locked_by_other(&self.fd, at)
    }
}

/// Remove files in `dir` whose names `is_ours` accepts, that are older than `min_age` and whose byte 0
/// no open of the file holds locked: shared files whose creating process (which locks byte 0 for as long
/// as it lives) is gone without cleaning up. `and_then` is called with each path removed. Errors are
/// ignored: this is housekeeping.
pub(crate) fn sweep_orphans(dir: &Path, is_ours: impl Fn(&str) -> bool, min_age: Duration, and_then: impl Fn(&Path)) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_ours(name) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let old = meta.modified().is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age));
        if !old {
            continue;
        }
        // A name of ours that is not a regular file (a link, a FIFO planted in our private directory) was
        // made by no creator of ours: nothing holds it, and it goes (the link itself, not what it names).
        let planted = !meta.file_type().is_file();
        if (planted || creator_gone(&path)) && fs::remove_file(&path).is_ok() {
            and_then(&path);
        }
    }
}

/// Whether `path` is a file whose creator (which locks its byte 0 for as long as it lives) is gone: the
/// lock is free. False if it cannot be told (no such file, not ours).
pub(crate) fn creator_gone(path: &Path) -> bool {
    let Ok(fd) = aclshm_os::open_file(path) else { return false };
    aclshm_os::byte_locked_by_other(&fd, 0).is_ok_and(|locked| !locked)
}

/// Sleep while `word` holds `expected`, for at most `timeout` (see `aclshm_os::futex_wait`). Every
/// caller here loops on its word and its own deadline, so how the wait ended does not matter to it.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let _ = aclshm_os::futex_wait(word, expected, timeout);
}

/// Wait until one of `fds` has something to read, has hung up or failed (or `timeout` passes); which did
/// is `true` in the answer, in the order given. An interrupted wait answers all `false`.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    aclshm_os::poll(&mut polled, timeout)?;
    Ok(polled.iter().map(|p| !p.revents().is_empty()).collect())
}

/// A random 64-bit value from the kernel, never 0.
pub(crate) fn random_u64() -> u64 {
    aclshm_os::random_u64().max(1)
}

/// Create `dir` (0700) or check an existing one is a real directory of ours that others cannot write.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    aclshm_os::ensure_private_dir(dir)
}

/// Where aclshm puts this user's shared files by default: `$ACLSHM_SHARE_DIR` if set, else
/// `/dev/shm/aclshm-share-<uid>` (or the temporary directory where there is no `/dev/shm`).
pub(crate) fn default_share_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ACLSHM_SHARE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("aclshm-share-{}", euid()))
}

/// A private temporary directory for unit tests, removed when dropped (even when the test fails).
#[cfg(test)]
pub(crate) type TestDir = aclshm_os::TempDir;
