//! Byte locks on a file, owned by an open file description (OFD locks, `F_OFD_SETLK` / `F_OFD_GETLK`).
//!
//! An OFD lock belongs to one `open` of the file, not to a process: it conflicts with every other open of
//! the file, in this process or another, and the kernel drops it when that open is closed, which happens
//! however the process ends (`SIGKILL` included). So a lock on byte `n` says "the holder of that open is
//! alive", without pids, which pid namespaces and pid reuse would make unreliable. Each lock here covers
//! one byte, so one file carries many independent flags.
//!
//! rustix has only whole-file, per-process locks (`flock`, `fcntl_lock`), so this module calls `fcntl`
//! through libc.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Take an exclusive lock on byte `at` of the file behind `fd`, without waiting. `Ok(false)` if another
/// open of the file holds a lock on it; taking a lock this open already holds succeeds.
pub fn try_lock_byte(fd: impl AsFd, at: u64) -> io::Result<bool> {
    match fcntl(fd, libc::F_OFD_SETLK, libc::F_WRLCK, at) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Drop this open's lock on byte `at` (nothing happens if it holds none).
pub fn unlock_byte(fd: impl AsFd, at: u64) -> io::Result<()> {
    fcntl(fd, libc::F_OFD_SETLK, libc::F_UNLCK, at).map(|_| ())
}

/// Whether another open of the file holds a lock on byte `at` (this open's own locks do not count).
pub fn byte_locked_by_other(fd: impl AsFd, at: u64) -> io::Result<bool> {
    let fl = fcntl(fd, libc::F_OFD_GETLK, libc::F_WRLCK, at)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// `fcntl(fd, cmd, &flock)` on a one-byte lock request of type `kind` at `at`; returns the structure as
/// the kernel left it (for `F_OFD_GETLK`: the conflicting lock, or `F_UNLCK`).
fn fcntl(fd: impl AsFd, cmd: libc::c_int, kind: libc::c_int, at: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: flock is plain data and all-zero is a valid value; the fields that matter are set next, and
    // l_pid stays 0 as OFD locks require.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    // SAFETY: a descriptor borrowed for the call, and a valid flock the kernel reads and writes.
    if unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open_file, test_file};

    #[test]
    fn a_byte_lock_excludes_other_opens_until_unlocked_or_closed() {
        let (_dir, path, a) = test_file("lock");
        let b = open_file(&path).unwrap();
        assert!(try_lock_byte(&a, 3).unwrap());
        assert!(try_lock_byte(&a, 3).unwrap(), "again through the same open");
        assert!(!byte_locked_by_other(&a, 3).unwrap(), "its own lock is not another's");
        assert!(byte_locked_by_other(&b, 3).unwrap());
        assert!(!try_lock_byte(&b, 3).unwrap(), "another open is refused, in the same process too");
        assert!(!byte_locked_by_other(&b, 4).unwrap() && try_lock_byte(&b, 4).unwrap(), "bytes are independent");
        assert!(byte_locked_by_other(&a, 4).unwrap());

        unlock_byte(&a, 3).unwrap();
        assert!(!byte_locked_by_other(&b, 3).unwrap());
        assert!(try_lock_byte(&b, 3).unwrap());

        drop(b);
        assert!(!byte_locked_by_other(&a, 3).unwrap() && !byte_locked_by_other(&a, 4).unwrap(), "close drops them");
    }
}
