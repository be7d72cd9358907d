//! The few operating-system facilities the sharing layer needs: a shared-memory file mapped in several
//! processes, byte locks on it, a socket peer's credentials, random tokens, private directories. What the
//! simulator needs too (private files and directories, futexes, random numbers) is `aclshm_sys::host`.

use std::fs;
use std::io;

use aclshm_sys::host;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A read-write shared mapping of a whole file. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct SharedMap {
    map: host::SharedMapping,
    /// The file, open while mapped: byte-range locks on it are taken through this descriptor.
    fd: OwnedFd,
}

impl SharedMap {
    /// Create `path` (mode 0600, failing if it exists) of `len` bytes, zeroed, and map it.
    pub(crate) fn create(path: &Path, len: usize) -> io::Result<SharedMap> {
        let fd = host::create_file(path)?;
        // SAFETY: fd is valid.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            let e = io::Error::last_os_error();
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
        let fd = host::open_file(path)?;
        let size = host::check_private_file(&fd, path)?;
        if size != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has {size} bytes, not {len}", path.display()),
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedMap> {
        Ok(SharedMap { map: host::SharedMapping::map(&fd, len)?, fd })
    }

    /// The start of the mapping.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.ptr()
    }

    /// Take an exclusive lock on byte `at` of the file, without waiting: `Ok(false)` if another open of
    /// the file holds it. The lock belongs to this open of the file (an OFD lock): it conflicts with every
    /// other open, in this process or another, and the kernel drops it when the file is closed, however
    /// the process ends. Pid namespaces and pid reuse do not matter.
    pub(crate) fn try_lock_byte(&self, at: u64) -> io::Result<bool> {
        let mut fl = flock(libc::F_WRLCK as libc::c_short, at);
        // SAFETY: a valid descriptor and flock structure.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(e),
        }
    }

    /// Drop our lock on byte `at`.
    pub(crate) fn unlock_byte(&self, at: u64) {
        let mut fl = flock(libc::F_UNLCK as libc::c_short, at);
        // SAFETY: a valid descriptor and flock structure.
        unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    }

    /// Whether another open of the file holds a lock on byte `at`.
    pub(crate) fn byte_locked_by_other(&self, at: u64) -> io::Result<bool> {
        let mut fl = flock(libc::F_WRLCK as libc::c_short, at);
        // SAFETY: a valid descriptor and flock structure.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
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
        let old = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age));
        if !old {
            continue;
        }
        if creator_gone(&path) && fs::remove_file(&path).is_ok() {
            and_then(&path);
        }
    }
}

/// Whether `path` is a file whose creator (which locks its byte 0 for as long as it lives) is gone: the
/// lock is free. False if it cannot be told (no such file, not ours).
pub(crate) fn creator_gone(path: &Path) -> bool {
    let Ok(fd) = host::open_file(path) else { return false };
    let mut fl = flock(libc::F_WRLCK as libc::c_short, 0);
    // SAFETY: a valid descriptor and flock structure.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) == 0 && fl.l_type == libc::F_UNLCK as libc::c_short
    }
}

/// A one-byte lock request at `at` (pid 0, as OFD locks require).
fn flock(kind: libc::c_short, at: u64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value, then the fields that matter are set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at as libc::off_t;
    fl.l_len = 1;
    fl
}

pub(crate) use aclshm_sys::host::{futex_wait, futex_wake_all};

/// Wait until one of `fds` is ready (or `timeout` passes); `revents` says which. Interrupted: `Ok(0)`.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: fds is a valid array of fds.len() pollfd structures.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    Ok(n as usize)
}

/// The pid and uid of the process at the other end of a Unix socket, as the kernel knows them.
pub(crate) fn peer_credentials(sock: &impl AsRawFd) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-parameters of the sizes given.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A random 64-bit value from the kernel, never 0.
pub(crate) fn random_u64() -> u64 {
    host::random_u64().max(1)
}

/// Create `dir` (0700) or check an existing one is a real directory of ours that others cannot write.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    host::ensure_private_dir(dir)
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
pub(crate) struct TestDir(pub PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(what: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("aclshm-{what}-test-{}", random_u64()));
        private_dir(&dir).expect("a private test directory");
        TestDir(dir)
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
