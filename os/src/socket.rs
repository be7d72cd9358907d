//! Waiting on descriptors, and who is at the other end of a Unix socket.
//!
//! [`peer_credentials`] asks the kernel (`SO_PEERCRED`), so a peer cannot lie about its pid or uid: the
//! kernel recorded them when the peer connected. That is what lets an owner whitelist exactly the
//! process that asked to attach.
//!
//! `peer_credentials` calls `getsockopt` through libc; its documentation says why.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

pub use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

/// Wait until one of `fds` is ready for what it asks (or `timeout` passes); each one's
/// [`revents`](PollFd::revents) says what happened to it. Returns how many are ready; an interrupted
/// wait returns 0, as if it had timed out.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Duration) -> io::Result<usize> {
    let ts = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match rustix::event::poll(fds, Some(&ts)) {
        Ok(n) => Ok(n),
        Err(Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether `e` says the process (`EMFILE`) or the system (`ENFILE`) has no file descriptor left: what an
/// `accept` fails with while a connection waits that cannot be taken.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == Errno::MFILE.raw_os_error() || code == Errno::NFILE.raw_os_error())
}

/// The process at the other end of a Unix socket, as the kernel recorded it when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its pid, in this process's pid namespace (0 if it is in none this one can see).
    pub pid: i32,
    /// Its effective uid.
    pub uid: u32,
}

/// The credentials of the peer of the connected Unix socket `sock` (`SO_PEERCRED`).
///
/// Through libc rather than rustix: rustix's `socket_peercred` reads the answer into a non-zero `Pid`,
/// but the kernel answers pid 0 for a peer outside every pid namespace this process can see (an owner
/// in a container, a worker on the host), and a zero there would be undefined behaviour.
pub fn peer_credentials(sock: impl AsFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a descriptor borrowed for the call; cred and len are valid out-parameters of the sizes
    // given, and every bit pattern is a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials { pid: cred.pid, uid: cred.uid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn poll_reports_the_readable_end_only() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        let mut fds = [PollFd::new(&b, PollFlags::IN), PollFd::new(&d, PollFlags::IN)];
        assert_eq!(poll(&mut fds, Duration::ZERO).unwrap(), 0, "nothing to read yet");
        a.write_all(b"x").unwrap();
        assert_eq!(poll(&mut fds, Duration::from_secs(30)).unwrap(), 1);
        assert!(fds[0].revents().contains(PollFlags::IN));
        assert!(fds[1].revents().is_empty());
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_credentials(&a).unwrap();
        assert_eq!(c, PeerCredentials { pid: crate::pid(), uid: crate::euid() });
    }
}
