//! Thin, checked wrappers over the Linux facilities the simulator is built on: anonymous and shared
//! mappings, process identity from `/proc`, futexes, random bytes, and the simulator directory's checks.
//!
//! Most of what is `unsafe` about the operating system lives here (and in `aclshm_sys::host`, shared with
//! the library), behind functions whose contracts say what the caller must keep true. The rest calls libc
//! directly only where it owns the object: the registry's mapping and robust mutex (`registry.rs`), host
//! allocations (`memory.rs`), the exit hook (`state.rs`), the effective uid (`config.rs`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub(crate) use aclshm_sys::host::{
    SharedMapping, check_private_file, create_file, ensure_private_dir, futex_wait, futex_wake_all, open_file,
    random_u64,
};

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
pub(crate) struct Alias(SharedMapping);

impl Alias {
    /// Map the whole of `fd` (of `len` bytes) read-write and shared.
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<Alias> {
        SharedMapping::map(fd, len).map(Alias)
    }

    /// The start of the mapping.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.ptr()
    }

    /// Map the same pages a second time at `addr`, inaccessible: what a device mapping looks like from the
    /// host. Replaces the reservation there.
    ///
    /// # Safety
    /// 1. `[addr, addr+self.len())` lies inside a reservation this simulator owns and nothing is mapped there.
    pub(crate) unsafe fn mirror_at(&self, addr: usize) -> io::Result<()> {
        // SAFETY: forwarded to the caller (precondition 1).
        unsafe { self.mirror_part_at(addr, self.0.len()) }
    }

    /// Like [`mirror_at`](Alias::mirror_at), for the first `len` bytes only.
    ///
    /// # Safety
    /// 1. `len <= self.len()`, and `[addr, addr+len)` lies inside a reservation this simulator owns and
    ///    nothing is mapped there.
    pub(crate) unsafe fn mirror_part_at(&self, addr: usize, len: usize) -> io::Result<()> {
        debug_assert!(len <= self.0.len());
        // SAFETY: old_size 0 on a shared mapping duplicates it (mremap(2)); MREMAP_FIXED replaces only the
        // caller's reserved range (precondition 1).
        let p = unsafe {
            libc::mremap(
                self.0.ptr().cast(),
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

/// Give `fd` a size of `len` bytes, backed only as it is written (sparse).
pub(crate) fn set_len(fd: &OwnedFd, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fd is valid.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
