//! A stream: the queue device work runs on, destroyed when dropped.

use std::fmt;
use std::ptr::NonNull;

use aclshm_sys::aclrtStream;

use crate::device::on_device;
use crate::error::{Error, Result, close_on_drop, release_retrying};
use crate::raw;
use crate::runtime::Runtime;

/// An `aclrtCreateStream` stream on one device. Work queued on it runs in order; errors of queued work
/// surface at [`synchronize`](Stream::synchronize). Dropping it lets queued work finish, then destroys it.
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::{Runtime, Stream};
/// let rt = Runtime::simulator();
/// let s = Stream::new(&rt, 1)?;
/// assert_eq!(s.device(), 1);
/// s.synchronize()?; // nothing queued: returns at once
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct Stream {
    rt: Runtime,
    raw: NonNull<std::ffi::c_void>,
    device: i32,
}

// SAFETY: a stream is a runtime object usable from any thread of the process; the runtime serialises
// what is queued on it.
unsafe impl Send for Stream {}
// SAFETY: as above: every call on a stream is a runtime call, which the runtime makes thread-safe.
unsafe impl Sync for Stream {}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").field("raw", &self.raw).field("device", &self.device).finish()
    }
}

impl Stream {
    /// A stream on `device` (made current for the call only).
    pub fn new(rt: &Runtime, device: i32) -> Result<Stream> {
        let s = on_device(rt, device, || raw::create_stream(rt))?;
        let raw = NonNull::new(s).ok_or_else(|| Error::InvalidArgument("the runtime returned a NULL stream".into()))?;
        Ok(Stream { rt: rt.clone(), raw, device })
    }

    /// Wait for everything queued so far; reports the first failure of queued work since the last call.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: our live stream.
        unsafe { raw::synchronize_stream(&self.rt, self.as_raw()) }
    }

    /// The runtime's handle (valid while `self` lives).
    pub fn as_raw(&self) -> aclrtStream {
        self.raw.as_ptr()
    }

    /// Its device.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// The runtime it belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
}

impl Stream {
    /// Destroy it (queued work finishes first), reporting a failure, which dropping can only print.
    pub fn close(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        let r = this.destroy();
        // SAFETY: `this` is never used again; its runtime handle is dropped exactly once, here.
        drop(unsafe { std::ptr::read(&this.rt) });
        r
    }

    fn destroy(&self) -> Result<()> {
        // SAFETY: our live stream, never used again (we are closing or dropping it).
        release_retrying(|| unsafe { raw::destroy_stream(&self.rt, self.as_raw()) })
    }
}

close_on_drop!(Stream, destroy, "a stream");

/// A stream of an object's own, made on first use, for the work it queues from the host (a notify's or
/// an event's `signal`, a notify's `wait_host`); closed with the object, before it.
#[derive(Default)]
pub(crate) struct HostStream(crate::sync::Mutex<Option<Stream>>);

impl HostStream {
    /// Run `f` on the stream, making it on `device` first if there is none yet.
    pub(crate) fn with<T>(&self, rt: &Runtime, device: i32, f: impl FnOnce(&Stream) -> Result<T>) -> Result<T> {
        let mut s = self.0.lock();
        if s.is_none() {
            *s = Some(Stream::new(rt, device)?);
        }
        f(s.as_ref().expect("just made"))
    }

    /// Destroy the stream, if one was made.
    pub(crate) fn close(&self) -> Result<()> {
        self.0.lock().take().map_or(Ok(()), Stream::close)
    }
}
