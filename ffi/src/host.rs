//! Host operating-system pieces that both the library and the simulator need, in one place: private
//! files and directories in shared memory, futexes on shared words, random numbers. Linux only.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// A read-write shared mapping of a whole file (of `len` bytes), at an address of the kernel's choosing.
/// Unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; its users synchronise access to its contents, and the
// pointer itself is immutable.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Map the whole of `fd` (of `len` bytes) read-write and shared.
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<SharedMapping> {
        // SAFETY: a fresh shared mapping of a file the caller holds open, at an address of the kernel's
        // choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(SharedMapping { ptr, len })
    }

    /// The start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: mappings have at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` and is reachable only through self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Parse a byte count: digits with an optional suffix K, M, G or T (also KiB, MiB, GiB, TiB; any case).
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let s = v.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    if digits.is_empty() {
        return Err("expected a number of bytes, optionally with a suffix K, M, G or T".to_string());
    }
    let n: u64 = digits.parse().map_err(|_| "the number is too large".to_string())?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown suffix {other:?}; use K, M, G or T")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| "the size overflows 64 bits".to_string())
}

/// A path as a C string.
fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Create a new file, mode 0600, failing if it exists.
pub fn create_file(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The umask may have narrowed the mode further, never widened it; make it exactly 0600.
    // SAFETY: fd is valid.
    unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) };
    Ok(fd)
}

/// Open an existing file read-write, refusing links.
pub fn open_file(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Check the file behind `fd` is ours and private (owner us, no access for anyone else).
pub fn check_private_file(fd: &OwnedFd, path: &Path) -> io::Result<u64> {
    let meta = fs::File::from(fd.try_clone()?).metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {:o}; aclshm only uses files it owns with mode 0600",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(meta.len())
}

/// Create `dir` (mode 0700) or check an existing one: a real directory, not a link, owned by us and
/// writable by no one else. Anything else is refused: another user could plant or read objects there.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A missing parent (a directory set in the environment): create it, then this directory.
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user (uid {me}); use a directory of yours",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others (mode {:o}); aclshm needs a private directory (0700)",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A random number from the kernel.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: writes at most the remaining bytes of b.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // No entropy source: fall back to something that still differs between processes.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            return t ^ (u64::from(std::process::id()) << 32);
        }
    }
    u64::from_ne_bytes(b)
}

/// Sleep on `word` while it holds `expected`, for at most `timeout`. Works across processes on a shared
/// mapping (the futex is not private).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: word is a valid, aligned u32 for the duration of the call; a spurious or early return is
    // harmless, callers re-check the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec) };
}

/// Wake every waiter on `word`, in any process.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: word is a valid, aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_futex_wait_returns_when_the_word_differs() {
        let w = AtomicU32::new(1);
        // The word is not 0, so this returns at once rather than after the timeout.
        futex_wait(&w, 0, Duration::from_secs(5));
        w.store(0, Ordering::SeqCst);
        futex_wake_all(&w);
    }

    #[test]
    fn private_files_in_private_directories() {
        let dir = std::env::temp_dir().join(format!("aclshm-host-test-{}", random_u64()));
        ensure_private_dir(&dir).unwrap();
        ensure_private_dir(&dir).unwrap();
        let f = create_file(&dir.join("f")).unwrap();
        assert!(create_file(&dir.join("f")).is_err(), "never over an existing file");
        check_private_file(&f, &dir.join("f")).unwrap();
        let g = open_file(&dir.join("f")).unwrap();
        drop((f, g));
        std::os::unix::fs::symlink(dir.join("f"), dir.join("link")).unwrap();
        assert!(open_file(&dir.join("link")).is_err(), "links are refused");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_private_dir(&dir).is_err(), "a directory others can write is refused");
        fs::remove_dir_all(&dir).unwrap();
    }
}
