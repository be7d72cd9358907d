//! Streams: each is a thread that runs the tasks queued on it, in order, as a device would.
//!
//! `aclrtMemcpyAsync`, `aclrtRecordNotify` and `aclrtWaitAndResetNotify` validate their arguments when
//! called and queue a task; the task does its work (and can fail: an address unmapped meanwhile, a wait
//! that times out) when the stream reaches it. A failed task puts the stream in error: the tasks queued
//! after it, until the next `aclrtSynchronizeStream` reports the failure, are dropped; then the stream is
//! usable again. `aclrtDestroyStream` lets queued work finish first; `aclrtDestroyStreamForce` drops it
//! and interrupts a task that is waiting on a notify.

use crate::sync::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aclshm_sys::*;
use parking_lot::Mutex;

use crate::queue::TaskQueue;
use crate::state::{Fail, R, fail};

/// Work queued on a stream.
#[derive(Debug, Clone)]
pub(crate) enum Task {
    /// Copy `count` bytes (addresses as the caller gave them, resolved when the task runs, and which of them
    /// were device memory when the copy was queued).
    Copy { dst: usize, src: usize, count: usize, dst_dev: bool, src_dev: bool },
    /// Set notify `slot` (serial `serial`).
    Record { slot: usize, serial: u64 },
    /// Wait until notify `slot` is set, then reset it; `timeout` 0 waits for ever.
    Wait { slot: usize, serial: u64, timeout: Duration },
}

/// A stream of this process.
pub(crate) struct Stream {
    pub generation: u32,
    pub device: u32,
    queue: Arc<TaskQueue<Task, Fail>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("device", &self.device).field("generation", &self.generation).finish()
    }
}

impl Stream {
    /// Start a stream on `device`.
    pub(crate) fn start(generation: u32, device: u32) -> R<Stream> {
        let queue = Arc::new(TaskQueue::new());
        let worker = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name(format!("aclshm-sim-stream-d{device}"))
            .spawn(move || worker.run(|task, abort| execute(&task, abort)))
            .map_err(|e| fail(ACL_ERROR_RT_NO_STREAM_RESOURCE, format!("start a stream thread: {e}")))?;
        Ok(Stream { generation, device, queue, thread: Mutex::new(Some(thread)) })
    }

    /// Queue a task.
    pub(crate) fn push(&self, task: Task) -> R {
        self.queue.push(task).map_err(|_| fail(ACL_ERROR_RT_INVALID_HANDLE, "the stream is being destroyed"))
    }

    /// Wait until everything queued so far has run; report (and clear) the first failure.
    pub(crate) fn synchronize(&self) -> R {
        self.queue.synchronize()
    }

    /// Stop the stream's thread: after running what is queued, or at once dropping it (`force`).
    pub(crate) fn shut_down(&self, force: bool) {
        self.queue.close(force);
        if let Some(t) = self.thread.lock().take() {
            // A stream destroyed from its own thread cannot join itself; it ends on its own.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn execute(task: &Task, abort: &AtomicBool) -> R {
    let sim = crate::state::sim_if_attached()
        .ok_or_else(|| fail(ACL_ERROR_RT_STREAM_ABORT, "the simulator was detached while work was queued"))?;
    match *task {
        Task::Copy { dst, src, count, dst_dev, src_dev } => crate::memory::copy(sim, dst, src, count, dst_dev, src_dev),
        Task::Record { slot, serial } => crate::notify::record_now(sim, slot, serial),
        Task::Wait { slot, serial, timeout } => {
            let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
            crate::notify::wait_now(sim, slot, serial, deadline, abort)
        }
    }
}
