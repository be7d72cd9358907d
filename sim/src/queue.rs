//! The task queue behind a stream: one producer side (the API calls that queue work), one worker (the
//! stream's thread), and `synchronize`, which waits until everything queued before it has run.
//!
//! Invariants (checked by the loom model in `loom-tests/`):
//! - `synchronize` returns only when every task pushed before it was called has been run (or dropped after
//!   a failure), and it reports the first failure since the last `synchronize` exactly once;
//! - a failed task drops the tasks queued behind it (the stream is in error until synchronised);
//! - `close` lets the worker finish what is queued and stop; `close(force)` drops queued tasks and raises
//!   the abort flag a running task polls; no wakeup is lost in any of these.

use std::collections::VecDeque;

use crate::sync::{AtomicBool, Condvar, Mutex, MutexGuard, Ordering};

/// Why a task could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

struct State<T, E> {
    tasks: VecDeque<T>,
    busy: bool,
    error: Option<E>,
    closing: bool,
}

/// A stream's queue of tasks of type `T` whose failures are `E`.
pub struct TaskQueue<T, E> {
    state: Mutex<State<T, E>>,
    work: Condvar,
    idle: Condvar,
    abort: AtomicBool,
}

impl<T, E> Default for TaskQueue<T, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> TaskQueue<T, E> {
    /// An empty, open queue.
    pub fn new() -> Self {
        TaskQueue {
            state: Mutex::new(State { tasks: VecDeque::new(), busy: false, error: None, closing: false }),
            work: Condvar::new(),
            idle: Condvar::new(),
            abort: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        // A panic while holding the lock leaves the queue's plain data consistent; carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a task (refused once the queue is closing).
    pub fn push(&self, task: T) -> Result<(), Closed> {
        let mut s = self.lock();
        if s.closing {
            return Err(Closed);
        }
        s.tasks.push_back(task);
        self.work.notify_one();
        Ok(())
    }

    /// The worker's next task: blocks until there is one; None once the queue is closing and empty.
    pub fn next(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            // A stream in error drops its work until the error is reported.
            if s.error.is_some() && !s.tasks.is_empty() {
                s.tasks.clear();
                self.idle.notify_all();
            }
            if let Some(t) = s.tasks.pop_front() {
                s.busy = true;
                return Some(t);
            }
            if s.closing {
                self.idle.notify_all();
                return None;
            }
            s = self.work.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The worker finished the task `next` gave it, with `result`.
    pub fn done(&self, result: Result<(), E>) {
        let mut s = self.lock();
        s.busy = false;
        if let Err(e) = result {
            if s.error.is_none() {
                s.error = Some(e);
            }
            s.tasks.clear();
        }
        if s.tasks.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Run tasks with `exec` until the queue is closed and drained.
    pub fn run(&self, mut exec: impl FnMut(T, &AtomicBool) -> Result<(), E>) {
        while let Some(t) = self.next() {
            let r = exec(t, &self.abort);
            self.done(r);
        }
    }

    /// Wait until everything queued so far has run; report (and clear) the first failure.
    pub fn synchronize(&self) -> Result<(), E> {
        let mut s = self.lock();
        while s.busy || !s.tasks.is_empty() {
            s = self.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stop taking tasks: the worker finishes what is queued and stops, or with `force` drops it and the
    /// running task sees [`aborted`](TaskQueue::aborted).
    pub fn close(&self, force: bool) {
        let mut s = self.lock();
        if force {
            s.tasks.clear();
            self.abort.store(true, Ordering::Release);
        }
        s.closing = true;
        self.work.notify_all();
    }

    /// Whether a forced close asked the running task to stop.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }
}
