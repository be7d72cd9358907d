//! Who this process is, and whether another process is still the one we knew.
//!
//! A pid alone does not name a process for long: pids are reused. A pid together with the process's
//! start time (clock ticks since boot, `/proc/<pid>/stat` field 22) does, for as long as the machine runs;
//! [`boot_id`] tells one boot from the next for state that outlives a reboot. Inside a container with its
//! own pid namespace, [`pid`] is the namespace's number and [`bare_tgid`] the host's, which is what a
//! device driver sees.

use std::fs;

/// This process's pid (in its own pid namespace).
pub fn pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// This process's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22), or None if there
/// is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let (_, started) = stat_state_and_start(pid)?;
    started
}

/// Whether the process that was `pid` with start time `start` still runs. A zombie counts as gone: it
/// has exited and only waits for its parent to reap it.
pub fn alive(pid: i32, start: u64) -> bool {
    match stat_state_and_start(pid) {
        Some((state, started)) => started == Some(start) && !matches!(state.as_str(), "Z" | "X" | "x"),
        None => false,
    }
}

/// The state letter (field 3) and start time (field 22) of `/proc/<pid>/stat`; None if it cannot be read.
fn stat_state_and_start(pid: i32) -> Option<(String, Option<u64>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?.to_string();
    let started = fields.nth(18).and_then(|s| s.parse().ok());
    Some((state, started))
}

/// Clock ticks since boot now, on the clock [`start_time`] counts on (`CLOCK_BOOTTIME`, which keeps
/// counting during suspend, in units of `sysconf(_SC_CLK_TCK)`).
pub fn now_ticks() -> u64 {
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let (secs, nanos) = (u64::try_from(ts.tv_sec).unwrap_or(0), u64::try_from(ts.tv_nsec).unwrap_or(0));
    secs * hz + nanos * hz / 1_000_000_000
}

/// Nanoseconds of the monotonic clock: comparable between the processes of one boot.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The pid the host sees for this process: the first (outermost) entry of `NSpid` in
/// `/proc/self/status`, which differs from [`pid`] inside a container with its own pid namespace.
pub fn bare_tgid() -> i32 {
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

/// An identifier of this boot (`/proc/sys/kernel/random/boot_id`, 36 characters), so that state left on
/// a persistent disk is not trusted after a reboot. All `'0'` where it cannot be read.
pub fn boot_id() -> [u8; 36] {
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
    fn our_own_identity_is_alive_and_another_start_time_is_not() {
        assert_eq!(pid() as u32, std::process::id());
        let st = start_time(pid()).unwrap();
        assert!(alive(pid(), st));
        assert!(!alive(pid(), st + 1), "another start time is another process");
        assert!(now_ticks() >= st, "started before now, on the same clock");
        assert!(bare_tgid() > 0);
        let meta = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(euid(), std::os::unix::fs::MetadataExt::uid(&meta), "/proc/self belongs to our euid");
    }

    #[test]
    fn a_zombie_is_not_alive_and_a_reaped_child_is_gone() {
        use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let cpid = child.id() as i32;
        // Until it is reaped, the pid stays the child's: first running, then a zombie.
        let st = start_time(cpid).expect("an unreaped child has a /proc entry");
        // Wait for the exit without reaping (WNOWAIT): the child is a zombie now.
        let id = WaitId::Pid(Pid::from_raw(cpid).unwrap());
        waitid(id, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT).unwrap();
        assert_eq!(start_time(cpid), Some(st), "a zombie keeps its entry and start time");
        assert!(!alive(cpid, st), "but it has exited: not alive");
        child.wait().unwrap();
        assert!(!alive(cpid, st), "reaped: gone");
    }

    #[test]
    fn the_boot_id_looks_like_one() {
        let id = boot_id();
        assert_eq!(id.iter().filter(|&&b| b == b'-').count(), 4, "{}", String::from_utf8_lossy(&id));
    }
}
