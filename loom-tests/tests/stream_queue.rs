//! The simulator's stream queue (`aclshm_sim::queue::TaskQueue`): what `aclrtSynchronizeStream`,
//! `aclrtDestroyStream` and `aclrtDestroyStreamForce` rely on.
#![cfg(loom)]

use aclshm_loom_tests::model;
use aclshm_sim::queue::TaskQueue;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Tasks are numbers; the executor records each it ran, and fails the ones listed.
fn worker(q: &Arc<TaskQueue<u32, u32>>, ran: &Arc<AtomicUsize>, failing: u32) -> thread::JoinHandle<()> {
    let (q, ran) = (Arc::clone(q), Arc::clone(ran));
    thread::spawn(move || {
        q.run(|t, _abort| {
            ran.fetch_or(1 << t, Ordering::SeqCst);
            if t == failing { Err(t) } else { Ok(()) }
        })
    })
}

#[test]
fn synchronize_waits_for_every_task_pushed_before_it() {
    model(|| {
        let q = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let w = worker(&q, &ran, u32::MAX);
        q.push(0).unwrap();
        q.push(1).unwrap();
        assert_eq!(q.synchronize(), Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0b11, "both tasks ran before synchronize returned");
        q.close(false);
        w.join().unwrap();
    });
}

#[test]
fn a_failure_is_reported_once_and_drops_what_was_queued_behind_it() {
    model(|| {
        let q = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let w = worker(&q, &ran, 0);
        q.push(0).unwrap();
        q.push(1).unwrap();
        assert_eq!(q.synchronize(), Err(0));
        // Task 1 was queued after task 0 and before the failure was reported: dropped, whether it was
        // pushed before or after task 0 failed.
        assert_eq!(ran.load(Ordering::SeqCst), 0b01);
        assert_eq!(q.synchronize(), Ok(()), "reported once");
        q.push(2).unwrap();
        assert_eq!(q.synchronize(), Ok(()), "the stream works again");
        assert_eq!(ran.load(Ordering::SeqCst), 0b101);
        q.close(false);
        w.join().unwrap();
    });
}

#[test]
fn a_plain_close_runs_what_is_queued_a_forced_one_drops_it() {
    model(|| {
        let q = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let w = worker(&q, &ran, u32::MAX);
        q.push(0).unwrap();
        q.close(false);
        assert!(q.push(1).is_err(), "closed");
        w.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0b01, "queued work ran before the worker stopped");
    });
    model(|| {
        let q: Arc<TaskQueue<u32, u32>> = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        // Task 0 waits until aborted, like a notify wait nobody records.
        let (q2, ran2) = (Arc::clone(&q), Arc::clone(&ran));
        let w = thread::spawn(move || {
            q2.run(|t, abort| {
                ran2.fetch_or(1 << t, Ordering::SeqCst);
                while t == 0 && !abort.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                Ok(())
            })
        });
        q.push(0).unwrap();
        q.push(1).unwrap();
        q.close(true);
        w.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst) & 0b10, 0, "the queued task was dropped");
        assert!(q.aborted());
    });
}

#[test]
fn two_producers_and_a_synchronizer_lose_nothing() {
    model(|| {
        let q = Arc::new(TaskQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let w = worker(&q, &ran, u32::MAX);
        let q2 = Arc::clone(&q);
        let p = thread::spawn(move || {
            q2.push(1).unwrap();
            q2.synchronize().unwrap();
        });
        q.push(0).unwrap();
        q.synchronize().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst) & 0b01, 0b01, "our own task ran before our synchronize returned");
        p.join().unwrap();
        assert_eq!(q.synchronize(), Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0b11);
        q.close(false);
        w.join().unwrap();
    });
}
