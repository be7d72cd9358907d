//! Thin, checked wrappers over the Linux facilities the simulator is built on: anonymous and shared
//! mappings, process identity from `/proc`, futexes, random bytes, and the simulator directory's checks.
//!
//! Everything `unsafe` about the operating system lives here, behind functions whose contracts say what
//! the caller must keep true; the rest of the simulator is ordinary Rust over these.

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

/// Bytes in a normal host page.
pub(crate) const HOST_PAGE: usize = 4096;

/// Reserve `len` bytes of address space aligned to `align`, inaccessible (`PROT_NONE`) and without
/// committing memory. With `at`, only that address is acceptable.
pub(crate) fn reserve(len: usize, align: usize, at: Option<usize>) -> io::Result<usize> {
    debug_assert!(align.is_power_of_two() && align >= HOST_PAGE && len.is_multiple_of(HOST_PAGE));
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if let Some(addr) = at {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; it fails instead.
        let p = unsafe {
            libc::mmap(addr as *mut libc::c_void, len, libc::PROT_NONE, flags | libc::MAP_FIXED_NOREPLACE, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if p as usize != addr {
            // Kernels older than 4.17 ignore the flag and treat the address as a hint.
            // SAFETY: p..p+len is the mapping just created and owned by nobody else.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        return Ok(addr);
    }
    let total = len.checked_add(align).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), total, libc::PROT_NONE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = p as usize;
    let base = start.next_multiple_of(align);
    let head = base - start;
    let tail = total - head - len;
    // SAFETY: both trims lie inside the mapping just created, outside [base, base+len).
    unsafe {
        if head > 0 {
            libc::munmap(start as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((base + len) as *mut libc::c_void, tail);
        }
    }
    Ok(base)
}

/// Return `[addr, addr+len)` to the kernel.
///
/// # Safety
/// 1. The range is address space this simulator reserved or mapped and nothing references it any more.
pub(crate) unsafe fn unreserve(addr: usize, len: usize) {
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// Put `[addr, addr+len)` back to an inaccessible, uncommitted reservation, replacing what is mapped there.
///
/// # Safety
/// 1. The range lies inside a reservation this simulator owns, and no one uses what is mapped there.
pub(crate) unsafe fn rereserve(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MAP_FIXED replaces only the caller's own range (precondition 1).
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A read-write shared mapping of a whole shared-memory object: how the simulator itself reaches
/// "device" memory (copies, memset). Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Alias {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the simulator synchronises access to its contents the way
// a device would (not at all: racing copies race), and the pointer itself is immutable.
unsafe impl Send for Alias {}
// SAFETY: as above.
unsafe impl Sync for Alias {}

impl Alias {
    /// Map the whole of `fd` (of `len` bytes) read-write and shared.
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<Alias> {
        // SAFETY: a fresh shared mapping of an object we hold open, at an address of the kernel's choosing.
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
        Ok(Alias { ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?, len })
    }

    /// The start of the mapping.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Map the same pages a second time at `addr`, inaccessible: what a device mapping looks like from the
    /// host. Replaces the reservation there.
    ///
    /// # Safety
    /// 1. `[addr, addr+self.len())` lies inside a reservation this simulator owns and nothing is mapped there.
    pub(crate) unsafe fn mirror_at(&self, addr: usize) -> io::Result<()> {
        // SAFETY: forwarded to the caller (precondition 1).
        unsafe { self.mirror_part_at(addr, self.len) }
    }

    /// Like [`mirror_at`](Alias::mirror_at), for the first `len` bytes only.
    ///
    /// # Safety
    /// 1. `len <= self.len()`, and `[addr, addr+len)` lies inside a reservation this simulator owns and
    ///    nothing is mapped there.
    pub(crate) unsafe fn mirror_part_at(&self, addr: usize, len: usize) -> io::Result<()> {
        debug_assert!(len <= self.len);
        // SAFETY: old_size 0 on a shared mapping duplicates it (mremap(2)); MREMAP_FIXED replaces only the
        // caller's reserved range (precondition 1).
        let p = unsafe {
            libc::mremap(
                self.ptr.as_ptr().cast(),
                0,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                addr as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the range was just mapped by us.
        if unsafe { libc::mprotect(p, len, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: undo the mirror; the range is ours (precondition 1).
            let _ = unsafe { rereserve(addr, len) };
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by Alias::map and is only reachable through self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A path as a C string.
fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Create a new file, mode 0600, failing if it exists.
pub(crate) fn create_file(path: &Path) -> io::Result<OwnedFd> {
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
pub(crate) fn open_file(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Give `fd` a size of `len` bytes, all of it allocated now: a shared-memory object that later ran out of
/// room would kill the process with SIGBUS on a write, where a device allocation fails up front instead.
pub(crate) fn allocate(fd: &OwnedFd, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fd is valid.
    let rc = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Check the file behind `fd` is ours and private (owner us, no access for anyone else).
pub(crate) fn check_private_file(fd: &OwnedFd, path: &Path) -> io::Result<u64> {
    let meta = fs::File::from(fd.try_clone()?).metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {:o}; the simulator only uses files it owns with mode 0600",
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
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A missing parent (a custom ACLSHM_SIM_DIR): create it, then this directory.
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
                "{} belongs to uid {}, not to this user (uid {me}); set ACLSHM_SIM_DIR to a directory of yours",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others (mode {:o}); the simulator needs a private directory (0700)",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A random number from the kernel.
pub(crate) fn random_u64() -> u64 {
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

/// This process's pid.
pub(crate) fn pid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22), or None if it is gone.
/// Together with the pid it names a process for good: a recycled pid has another start time.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that was `pid` with start time `start` is still running (zombies count as gone).
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_ascii_whitespace();
    let state = fields.next();
    let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    started == Some(start) && !matches!(state, Some("Z") | Some("X") | Some("x"))
}

/// Clock ticks since boot now, on the same clock as [`start_time`].
pub(crate) fn now_ticks() -> u64 {
    // SAFETY: sysconf cannot fail for _SC_CLK_TCK on Linux.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-parameter. CLOCK_BOOTTIME is what /proc start times count from.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
}

/// The pid the host sees for this process: the first (outermost) entry of `NSpid` in `/proc/self/status`,
/// which differs from getpid() inside a container with its own pid namespace.
pub(crate) fn bare_tgid() -> i32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|rest| rest.split_ascii_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(pid)
}

/// An identifier of this boot, so a registry left on a persistent disk is not trusted after a reboot.
pub(crate) fn boot_id() -> [u8; 36] {
    let mut out = [b'0'; 36];
    if let Ok(s) = fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let s = s.trim().as_bytes();
        let n = s.len().min(out.len());
        out[..n].copy_from_slice(&s[..n]);
    }
    out
}

/// Sleep on `word` while it holds `expected`, for at most `timeout`. Works across processes on a shared
/// mapping (the futex is not private).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: word is a valid, aligned u32 for the duration of the call; a spurious or early return is
    // harmless, callers re-check the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec) };
}

/// Wake every waiter on `word`, in any process.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: word is a valid, aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn reservations_are_aligned_and_inaccessible() {
        let base = reserve(4 << 20, 2 << 20, None).unwrap();
        assert_eq!(base % (2 << 20), 0);
        // SAFETY: we own the reservation.
        unsafe { unreserve(base, 4 << 20) };
    }

    #[test]
    fn our_own_identity_is_alive() {
        let st = start_time(pid()).unwrap();
        assert!(alive(pid(), st));
        assert!(!alive(pid(), st + 1), "another start time is another process");
        assert!(now_ticks() >= st);
        assert!(bare_tgid() > 0);
    }

    #[test]
    fn a_futex_wait_returns_when_the_word_differs() {
        let w = AtomicU32::new(1);
        // The word is not 0, so this returns at once rather than after the timeout.
        futex_wait(&w, 0, Duration::from_secs(5));
        w.store(0, Ordering::SeqCst);
        futex_wake_all(&w);
    }

    #[test]
    fn alias_and_mirror_share_pages() {
        let dir = std::env::temp_dir().join(format!("aclshm-sys-test-{}", random_u64()));
        ensure_private_dir(&dir).unwrap();
        let f = create_file(&dir.join("obj")).unwrap();
        allocate(&f, 2 << 20).unwrap();
        let a = Alias::map(&f, 2 << 20).unwrap();
        let b = Alias::map(&open_file(&dir.join("obj")).unwrap(), 2 << 20).unwrap();
        // SAFETY: both aliases are 2 MiB read-write mappings.
        unsafe {
            a.ptr().write(7);
            assert_eq!(b.ptr().read(), 7);
        }
        let va = reserve(2 << 20, 2 << 20, None).unwrap();
        // SAFETY: va is our reservation with nothing mapped.
        unsafe { a.mirror_at(va).unwrap() };
        // SAFETY: still our range.
        unsafe { rereserve(va, 2 << 20).unwrap() };
        // SAFETY: as above.
        unsafe { unreserve(va, 2 << 20) };
        drop((a, b, f));
        fs::remove_dir_all(&dir).unwrap();
    }
}
