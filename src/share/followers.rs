//! The threads that follow mirrors, kept from one mirror to the next.
//!
//! Every mirror needs a thread that sleeps on its chunk table and syncs when the owner changes it. A
//! thread of its own, started at attach and joined at close, cost an attach + close on a 2-core machine
//! more than the runtime calls of 8 chunks (about 60 µs of 0.22 ms: the new thread had often not run yet
//! when a short-lived mirror closed, so the close waited for it to start, see the stop and exit). Here a
//! thread that has finished following one mirror waits up to [`IDLE`] for the next, so a process starts
//! threads only for as many mirrors as it holds at once, and a close never waits for a thread: the
//! mirror's close makes sure the thread makes no runtime call for it afterwards (see `Mirror::close`).
//!
//! A process forked while it held idle followers has none of them in the child (only the forking thread
//! goes on): the set is tied to the pid that made it, and a child starts its own. (Its locks are std's,
//! which a child of `fork` can use: see [`ForkSafeMutex`].)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::{ForkSafeCondvar, ForkSafeMutex, thread};

/// How long a follower with nothing to follow waits for a mirror before it ends.
const IDLE: Duration = Duration::from_secs(10);

/// Work for a follower: following one mirror until it closes.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

struct Followers {
    /// The process these followers are threads of (0: none yet).
    pid: u32,
    /// Mirrors handed over and not yet taken by a follower.
    queued: VecDeque<Job>,
    /// Followers waiting for a mirror.
    idle: usize,
}

static FOLLOWERS: ForkSafeMutex<Followers> = ForkSafeMutex::new(Followers { pid: 0, queued: VecDeque::new(), idle: 0 });
static QUEUED: ForkSafeCondvar = ForkSafeCondvar::new();

/// The followers' state (nothing panics while holding it; a poisoned lock is taken as it is).
fn followers() -> std::sync::MutexGuard<'static, Followers> {
    FOLLOWERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Run `job` on a follower: one that waits for work if there is one, a new thread otherwise.
pub(crate) fn follow(job: Job) -> std::io::Result<()> {
    {
        let mut f = followers();
        let pid = std::process::id();
        if f.pid != pid {
            // First use, or a child forked from a process that had followers: none of them is here. Jobs
            // the parent had queued are its mirrors': forgotten, not dropped (dropping one would undo
            // the parent's mirror in this process).
            std::mem::forget(std::mem::replace(&mut *f, Followers { pid, queued: VecDeque::new(), idle: 0 }));
        }
        // Each idle follower takes one queued job: queue this one if one is left over for it.
        if f.idle > f.queued.len() {
            f.queued.push_back(job);
            QUEUED.notify_one();
            return Ok(());
        }
    }
    thread::Builder::new().name("aclshm-mirror".into()).spawn(move || {
        job();
        serve();
    })?;
    Ok(())
}

/// A follower between mirrors: take the next one handed over, or end after [`IDLE`] without one.
fn serve() {
    let mut f = followers();
    loop {
        f.idle += 1;
        let deadline = Instant::now() + IDLE;
        let job = loop {
            if let Some(job) = f.queued.pop_front() {
                break job;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                f.idle -= 1;
                return;
            }
            f = QUEUED.wait_timeout(f, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        };
        f.idle -= 1;
        drop(f);
        job();
        f = followers();
    }
}

/// Followers waiting for a mirror now (for tests).
#[cfg(test)]
pub(crate) fn idle() -> usize {
    let f = followers();
    if f.pid == std::process::id() { f.idle } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_finished_follower_takes_the_next_job_every_job_runs_once_and_a_forked_child_has_its_own() {
        let (tx, rx) = mpsc::channel();
        let job = |i: i32, tx: &mpsc::Sender<(i32, thread::ThreadId)>| -> Job {
            let tx = tx.clone();
            Box::new(move || tx.send((i, thread::current().id())).unwrap())
        };
        follow(job(1, &tx)).unwrap();
        let (_, first) = rx.recv().unwrap();
        // Once that thread waits for work, the next job is handed to it (the only follower waiting: no
        // thread is started for it).
        let until = Instant::now() + Duration::from_secs(10);
        while idle() == 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(idle(), 1, "the thread that ran a job waits for the next");
        follow(job(2, &tx)).unwrap();
        assert_eq!(rx.recv().unwrap(), (2, first), "a finished follower is used again rather than a new thread");
        // The process forks while its one follower waits for work (one test: the followers are the
        // process's, and a test running beside this one would find them).
        let until = Instant::now() + Duration::from_secs(10);
        while idle() == 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(idle(), 1);
        // SAFETY: the child only takes the lock of this module (which the one follower, waiting, does not
        // hold), starts threads and leaves with `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            // Three jobs in turn, each handed over once the one before is done and its thread waits for
            // work: each must run at once (not at the end of an idle timeout, 10 s).
            let ok = (0..3).all(|_| {
                let (tx, rx) = mpsc::channel();
                let handed = follow(Box::new(move || {
                    let _ = tx.send(());
                }))
                .is_ok();
                let ran = handed && rx.recv_timeout(Duration::from_secs(3)).is_ok();
                let until = Instant::now() + Duration::from_secs(3);
                while ran && idle() == 0 && Instant::now() < until {
                    thread::sleep(Duration::from_millis(1));
                }
                ran && idle() >= 1
            });
            // SAFETY: leaves the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child's jobs ran late or not at all");
        // More jobs than followers waiting: threads are started for the rest, and each job runs once.
        for i in 3..=20 {
            follow(job(i, &tx)).unwrap();
        }
        drop(tx);
        let mut ran: Vec<i32> = rx.iter().map(|r| r.0).collect();
        ran.sort_unstable();
        assert_eq!(ran, (3..=20).collect::<Vec<_>>());
    }
}
