//! The simulator's stream queue (`aclshm_sim::queue::TaskQueue`): what `aclrtSynchronizeStream`,
//! `aclrtDestroyStream` and `aclrtDestroyStreamForce` rely on.
#![cfg(loom)]

use aclshm_loom_tests::model;
use aclshm_sim::queue::TaskQueue;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

/// A queue of tasks (numbers) and the thread that runs them, recording each it ran (bit `t` of `ran`).
struct Stream {
    q: Arc<TaskQueue<u32, u32>>,
    ran: Arc<AtomicUsize>,
    executor: Option<thread::JoinHandle<()>>,
}

impl Stream {
    /// Task `failing` fails (`u32::MAX`: none does); the others succeed.
    fn start(failing: u32) -> Stream {
        Stream::run(move |t, _abort| if t == failing { Err(t) } else { Ok(()) })
    }

    /// Each task is recorded, then `exec` runs it.
    fn run(exec: impl Fn(u32, &AtomicBool) -> Result<(), u32> + Send + 'static) -> Stream {
        let q: Arc<TaskQueue<u32, u32>> = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let (q2, ran2) = (Arc::clone(&q), Arc::clone(&ran));
        let executor = thread::spawn(move || {
            q2.run(|t, abort| {
                ran2.fetch_or(1 << t, Ordering::SeqCst);
                exec(t, abort)
            })
        });
        Stream { q, ran, executor: Some(executor) }
    }

    /// The tasks that ran so far, as bits.
    fn ran(&self) -> usize {
        self.ran.load(Ordering::SeqCst)
    }

    /// Close the queue (dropping what is queued if `force`) and wait for the executor to stop.
    fn close(&mut self, force: bool) {
        self.q.close(force);
        self.join();
    }

    /// Wait for the executor to stop (the queue closed).
    fn join(&mut self) {
        self.executor.take().expect("joined once").join().unwrap();
    }
}

#[test]
fn synchronize_waits_for_every_task_pushed_before_it() {
    model(|| {
        let mut s = Stream::start(u32::MAX);
        s.q.push(0).unwrap();
        s.q.push(1).unwrap();
        assert_eq!(s.q.synchronize(), Ok(()));
        assert_eq!(s.ran(), 0b11, "both tasks ran before synchronize returned");
        s.close(false);
    });
}

#[test]
fn a_failure_is_reported_once_and_drops_what_was_queued_behind_it() {
    model(|| {
        let mut s = Stream::start(0);
        s.q.push(0).unwrap();
        s.q.push(1).unwrap();
        assert_eq!(s.q.synchronize(), Err(0));
        // Task 1 was queued after task 0 and before the failure was reported: dropped, whether it was
        // pushed before or after task 0 failed.
        assert_eq!(s.ran(), 0b01);
        assert_eq!(s.q.synchronize(), Ok(()), "reported once");
        s.q.push(2).unwrap();
        assert_eq!(s.q.synchronize(), Ok(()), "the stream works again");
        assert_eq!(s.ran(), 0b101);
        s.close(false);
    });
}

#[test]
fn a_plain_close_runs_what_is_queued_a_forced_one_drops_it() {
    model(|| {
        let mut s = Stream::start(u32::MAX);
        s.q.push(0).unwrap();
        s.q.close(false);
        assert!(s.q.push(1).is_err(), "closed");
        s.join();
        assert_eq!(s.ran(), 0b01, "queued work ran before the worker stopped");
    });
    model(|| {
        // Task 0 waits until aborted, like a notify wait nobody records.
        let mut s = Stream::run(|t, abort| {
            while t == 0 && !abort.load(Ordering::Acquire) {
                thread::yield_now();
            }
            Ok(())
        });
        s.q.push(0).unwrap();
        s.q.push(1).unwrap();
        s.close(true);
        assert_eq!(s.ran() & 0b10, 0, "the queued task was dropped");
        assert!(s.q.aborted());
    });
}

#[test]
fn two_producers_and_a_synchronizer_lose_nothing() {
    model(|| {
        let mut s = Stream::start(u32::MAX);
        let q2 = Arc::clone(&s.q);
        let p = thread::spawn(move || {
            q2.push(1).unwrap();
            q2.synchronize().unwrap();
        });
        s.q.push(0).unwrap();
        s.q.synchronize().unwrap();
        assert_eq!(s.ran() & 0b01, 0b01, "our own task ran before our synchronize returned");
        p.join().unwrap();
        assert_eq!(s.q.synchronize(), Ok(()));
        assert_eq!(s.ran(), 0b11);
        s.close(false);
    });
}
