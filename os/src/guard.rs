//! Surviving a shared file that shrinks under its mapping.
//!
//! A process that touches a page of a file mapping past the file's end gets `SIGBUS`, which kills it. A
//! shared file can be truncated by any process of its user (a careless `truncate`, a bug, an attacker
//! with the same uid), so a process that maps one would die for another's mistake. The files cannot be
//! sealed against shrinking (only `memfd`s can, and these must be found by path), and checking the size
//! before every access races with the truncation anyway.
//!
//! So a mapping can be *guarded*: its range is listed in a process-wide table, and a `SIGBUS` handler
//! (installed once, on the first guard) looks the faulting address up. A fault inside a guarded range
//! replaces that whole mapping with private zero pages (`mmap(MAP_FIXED | MAP_ANONYMOUS)`, a system call
//! and nothing else: safe in a signal handler) and marks the guard; the faulting access is retried and
//! succeeds, reading zeros. The owner of the mapping asks [`Guard::tripped`] at its checkpoints and
//! reports the file as broken, so the damage is a typed error, never a dead process. A fault anywhere else
//! goes to the handler that was there before (or to the default action, which ends the process as it
//! would have without us).
//!
//! ```text
//!   truncate(file) ──> access past the end ──SIGBUS──> handler: in a guarded range?
//!                                                        yes: zero pages over the mapping, mark, retry
//!                                                        no:  the previous handler / default action
//! ```

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Mappings guarded at once in a process (a process maps a handful of shared files per pool).
pub const MAX_GUARDS: usize = 1024;

const FREE: u8 = 0;
const CLAIMING: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    tripped: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    tripped: AtomicBool::new(false),
};

static SLOTS: [Slot; MAX_GUARDS] = [EMPTY; MAX_GUARDS];

/// The `SIGBUS` action that was in place before ours (set once, before ours is installed).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A guarded range: while it lives, a `SIGBUS` inside it turns the range into zero pages instead of
/// ending the process. Dropping it stops guarding (drop it before unmapping the range).
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Whether a fault in the range was caught: the file shrank under the mapping, which now holds zero
    /// pages, private to this process.
    pub fn tripped(&self) -> bool {
        SLOTS[self.slot].tripped.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        SLOTS[self.slot].state.store(FREE, Ordering::Release);
    }
}

/// Guard `[start, start + len)`, a shared mapping of a file that may shrink: see the module docs.
/// Installs the `SIGBUS` handler the first time. Fails if [`MAX_GUARDS`] ranges are guarded already or
/// the handler cannot be installed.
pub fn guard(start: usize, len: usize) -> io::Result<Guard> {
    install()?;
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot.state.compare_exchange(FREE, CLAIMING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            slot.start.store(start, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            slot.tripped.store(false, Ordering::Relaxed);
            // The handler reads a slot only once it is active: after its range is written.
            slot.state.store(ACTIVE, Ordering::Release);
            return Ok(Guard { slot: i });
        }
    }
    Err(io::Error::other(format!("{MAX_GUARDS} shared mappings are guarded already")))
}

fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<io::Result<()>> = OnceLock::new();
    let done = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (no handler, empty mask, no flags); then the
        // fields that matter are set. sigaction(2) with valid pointers; the handler is async-signal-safe
        // (atomics and mmap only).
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut ours.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            // Read the action in place first: PREVIOUS must be set before ours can run.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return Err(io::Error::last_os_error());
            }
            let _ = PREVIOUS.set(previous);
            if libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    });
    match done {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("install the SIGBUS guard: {e}"))),
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let (start, len) = (slot.start.load(Ordering::Relaxed), slot.len.load(Ordering::Relaxed));
        if addr >= start && addr - start < len {
            // SAFETY: [start, start+len) is a mapping its guard's owner made and still holds (a guard is
            // dropped before its range is unmapped); replacing it with private zero pages of the same size
            // keeps every address of it valid for that owner, and only it uses them.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                slot.tripped.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not a guarded range: whatever was there before.
    // SAFETY: forwarding the signal as the previous action asked; restoring the default action with a
    // valid sigaction.
    unsafe {
        match PREVIOUS.get() {
            Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(prev.sa_sigaction);
                    f(sig, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
                    f(sig);
                }
            }
            // The default action (ignoring a fault would retry it for ever): reinstated, so that the
            // access, retried on return, ends the process as it would have without us.
            _ => {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedMapping;

    #[test]
    fn a_file_truncated_under_a_guarded_mapping_reads_zeros_and_trips_the_guard() {
        let dir = crate::TestDir::new("guard").unwrap();
        let path = dir.0.join("f");
        let fd = crate::create_file(&path).unwrap();
        crate::set_len(&fd, 8192).unwrap();
        let map = SharedMapping::map(&fd, 8192).unwrap();
        let g = guard(map.ptr() as usize, map.len()).unwrap();
        let word = map.ptr().cast::<AtomicUsize>();
        // SAFETY: the mapping is 8 KiB, aligned, and read through atomics.
        unsafe { (*word.add(600)).store(7, Ordering::Relaxed) };
        assert!(!g.tripped());
        crate::set_len(&fd, 0).unwrap();
        // Without the guard, this read kills the process with SIGBUS.
        // SAFETY: as above; the guard turns the fault into zero pages.
        let seen = unsafe { (*word.add(600)).load(Ordering::Relaxed) };
        assert_eq!(seen, 0, "the file's bytes are gone: zeros, private to this process");
        assert!(g.tripped());
        // The range stays usable.
        // SAFETY: as above.
        unsafe { (*word.add(1)).store(3, Ordering::Relaxed) };
        drop(g);
        drop(map);
    }

    /// A fault outside every guarded range still ends the process, as `SIGBUS` does without a guard.
    #[test]
    fn a_fault_outside_the_guarded_ranges_is_not_swallowed() {
        const ROLE: &str = "ACLSHM_OS_TEST_UNGUARDED";
        if let Some(dir) = std::env::var_os(ROLE) {
            // The parent's directory: this process dies, the parent removes it.
            let fd = crate::create_file(&std::path::Path::new(&dir).join("f")).unwrap();
            crate::set_len(&fd, 4096).unwrap();
            let map = SharedMapping::map(&fd, 4096).unwrap();
            let _other = guard(0x1000, 0x1000).unwrap(); // the handler is installed, for another range
            crate::set_len(&fd, 0).unwrap();
            // SAFETY: a 4 KiB mapping read through an atomic; the file behind it is gone, so this faults.
            let v = unsafe { (*map.ptr().cast::<AtomicUsize>()).load(Ordering::Relaxed) };
            println!("survived with {v}");
            std::process::exit(0);
        }
        let dir = crate::TestDir::new("unguarded").unwrap();
        let me = std::env::current_exe().unwrap();
        let out = std::process::Command::new(me)
            .args(["--exact", "guard::tests::a_fault_outside_the_guarded_ranges_is_not_swallowed", "--nocapture"])
            .env(ROLE, &dir.0)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    }

    #[test]
    fn guards_are_given_back() {
        // More guards than the table holds, one after another: each dropped guard frees its slot.
        for i in 0..MAX_GUARDS + 16 {
            let g = guard(0x1000 * (i + 1), 0x1000).unwrap();
            assert!(!g.tripped(), "a slot starts untripped");
        }
    }
}
