//! Futexes on a word that may lie in shared memory: a thread sleeps while the word holds a value, another
//! thread (of any process mapping the same file) changes the word and wakes it.
//!
//! The futexes are not `FUTEX_PRIVATE_FLAG`: the kernel keys them by the page's file and offset, so
//! waiters and wakers in different processes, at different addresses, meet. The protocol is the usual
//! one: the waker changes the word *before* waking; the waiter checks the word, then waits for the value it
//! saw, so a change between its check and its sleep makes the wait return at once (the value differs)
//! instead of losing the wakeup. Any return may be spurious in the waiter's terms: callers check their
//! word again.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

/// How a [`futex_wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexWait {
    /// A wake on the word (or, rarely, a spurious wakeup: the kernel does not tell them apart).
    Woken,
    /// The word did not hold the expected value when the wait began: it returned at once.
    ValueDiffered,
    /// The timeout passed with no wake.
    TimedOut,
    /// A signal handler ran in the waiting thread.
    Interrupted,
}

/// Sleep while `word` holds `expected`, for at most `timeout`. Works across processes when `word` is in
/// a shared mapping. Errors are those of a word the kernel cannot read (it can always read a live
/// `&AtomicU32`).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<FutexWait> {
    let ts = futex::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match futex::wait(word, futex::Flags::empty(), expected, Some(&ts)) {
        Ok(()) => Ok(FutexWait::Woken),
        Err(Errno::AGAIN) => Ok(FutexWait::ValueDiffered),
        Err(Errno::TIMEDOUT) => Ok(FutexWait::TimedOut),
        Err(Errno::INTR) => Ok(FutexWait::Interrupted),
        Err(e) => Err(e.into()),
    }
}

/// Wake every thread waiting on `word`, in any process; returns how many were woken. Change the word
/// first (see the module documentation).
pub fn futex_wake_all(word: &AtomicU32) -> usize {
    // FUTEX_WAKE fails only for a word the kernel cannot read, which a live `&AtomicU32` is not; such a
    // failure woke nobody.
    futex::wake(word, futex::Flags::empty(), i32::MAX as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// Whether thread `tid` of this process is asleep (state `S` in `/proc/self/task/<tid>/stat`).
    fn sleeping(tid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The state follows the command name, which ends with the last ')'.
        stat[stat.rfind(')').unwrap() + 1..].split_ascii_whitespace().next() == Some("S")
    }

    #[test]
    fn a_waiter_is_woken_by_a_wake() {
        let word = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let word = Arc::clone(&word);
            std::thread::spawn(move || {
                tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
                futex_wait(&word, 0, Duration::from_secs(30))
            })
        };
        let tid = rx.recv().unwrap();
        // Wake only once the waiter is really asleep: a wake before the wait would test nothing (the wait
        // would see the new value and return ValueDiffered). Any sleep before the futex (the channel's
        // send does not block) ends before the futex's, and only the futex sleeps for long.
        while !sleeping(tid) {
            std::thread::yield_now();
        }
        word.store(1, Ordering::SeqCst);
        let woken = futex_wake_all(&word);
        assert_eq!(waiter.join().unwrap().unwrap(), FutexWait::Woken, "the wake must end the wait, not the timeout");
        assert_eq!(woken, 1);
    }

    #[test]
    fn a_wait_nobody_wakes_times_out() {
        let word = AtomicU32::new(0);
        assert_eq!(futex_wait(&word, 0, Duration::from_millis(20)).unwrap(), FutexWait::TimedOut);
        assert_eq!(futex_wait(&word, 0, Duration::ZERO).unwrap(), FutexWait::TimedOut);
    }

    #[test]
    fn a_differing_value_returns_at_once() {
        let word = AtomicU32::new(1);
        assert_eq!(futex_wait(&word, 0, Duration::from_secs(30)).unwrap(), FutexWait::ValueDiffered);
        assert_eq!(futex_wake_all(&word), 0, "nobody waits");
    }
}
