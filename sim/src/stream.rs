//! Streams: each is a thread that runs the tasks queued on it, in order, as a device would.
//!
//! `aclrtMemcpyAsync`, `aclrtRecordNotify` and `aclrtWaitAndResetNotify` validate their arguments when
//! called and queue a task; the task does its work (and can fail: an address unmapped meanwhile, a wait
//! that times out) when the stream reaches it. A failed task puts the stream in error: the tasks queued
//! after it, until the next `aclrtSynchronizeStream` reports the failure, are dropped; then the stream is
//! usable again. `aclrtDestroyStream` lets queued work finish first; `aclrtDestroyStreamForce` drops it
//! and interrupts a task that is waiting on a notify.

use std::sync::Arc;
use std::thread::JoinHandle;

use aclshm_sys::*;
use parking_lot::Mutex;

use crate::call::{Fail, R, fail};
use crate::queue::TaskQueue;
use crate::sync::AtomicBool;

/// Work queued on a stream: what to do when the stream reaches it, built by the module whose call queued
/// it (a copy by `memory`, a record or a wait by `notify`). It gets the flag a forced destroy raises, for
/// work that waits.
pub(crate) type Task = Box<dyn FnOnce(&AtomicBool) -> R + Send>;

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
            .spawn(move || worker.run(|task: Task, abort| task(abort)))
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
