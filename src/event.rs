//! Events and IPC events: a point in one stream's work that other streams, the host, and (for an IPC
//! event) other processes wait for.
//!
//! ```text
//!   creator (A)                                          opener (B)
//!   Event::ipc ── export() ──── IpcEventHandle ──────>  Event::open(handle, device)
//!   record(&stream)                                      wait(&stream) / synchronize() / wait_host()
//!   wait / synchronize / is_complete                     record(&stream)   (either side records)
//!   drop: destroy                                        drop: destroy
//! ```
//!
//! The runtime's rules, kept by the types: only an event made with `ACL_EVENT_IPC` is exported, by its
//! creator, and only once (the handle is cached, so exporting again is free); an opened event is not
//! exported again and records no time; every process destroys its own handle (on drop). Unlike an IPC
//! notify, any process may wait for an IPC event, and there is no pid whitelist (the runtime exports the
//! memory behind it without pid validation). A wait waits for the latest record made before it, so a
//! record that comes later does not move it; an event never recorded is complete.

use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::{Duration, Instant};

use aclshm_sys::{ACL_EVENT_IPC, ACL_EVENT_SYNC, ACL_EVENT_TIME_LINE, aclrtEvent, aclrtIpcEventHandle};

use crate::device::on_device;
use crate::error::{Error, Result, close_on_drop, release_retrying};
use crate::raw;
use crate::runtime::Runtime;
use crate::stream::{HostStream, Stream};
use crate::sync::Mutex;

/// An exported IPC event: 64 bytes to hand to other processes (as bytes, or as 128 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcEventHandle(pub [u8; IpcEventHandle::LEN]);

impl IpcEventHandle {
    /// Its size, `ACL_IPC_EVENT_HANDLE_SIZE`.
    pub const LEN: usize = aclshm_sys::ACL_IPC_EVENT_HANDLE_SIZE as usize;

    fn from_raw(h: &aclrtIpcEventHandle) -> IpcEventHandle {
        IpcEventHandle(h.reserved.map(|b| b as u8))
    }

    fn to_raw(self) -> aclrtIpcEventHandle {
        aclrtIpcEventHandle { reserved: self.0.map(|b| b as std::ffi::c_char) }
    }

    /// A handle from bytes another process sent; refused unless there are exactly 64.
    pub fn from_bytes(b: &[u8]) -> Result<IpcEventHandle> {
        let a: [u8; IpcEventHandle::LEN] = b.try_into().map_err(|_| {
            Error::InvalidArgument(format!("an IPC event handle is {} bytes, not {}", IpcEventHandle::LEN, b.len()))
        })?;
        Ok(IpcEventHandle(a))
    }
}

impl fmt::Display for IpcEventHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for IpcEventHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpcEventHandle({self})")
    }
}

impl FromStr for IpcEventHandle {
    type Err = Error;
    /// 128 hex digits, as [`Display`](fmt::Display) writes them.
    fn from_str(s: &str) -> Result<IpcEventHandle> {
        let bad = || Error::InvalidArgument(format!("an IPC event handle is 128 hex digits, not {s:?}"));
        if s.len() != 2 * IpcEventHandle::LEN || !s.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; IpcEventHandle::LEN];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(IpcEventHandle(b))
    }
}

/// What kind of event this handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A process-local event.
    Local,
    /// An IPC event this process created.
    IpcCreator,
    /// An IPC event another process exported.
    IpcOpened,
}

/// An event this process created or opened. Destroyed on drop (the runtime lets a destroy happen while a
/// record is still queued; the event is released once it completes).
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::{Event, Runtime, Stream};
/// let rt = Runtime::simulator();
/// let (a, b) = (Stream::new(&rt, 0)?, Stream::new(&rt, 0)?);
/// let e = Event::new(&rt, 0)?;
/// e.record(&a)?;   // completes when stream a reaches it
/// e.wait(&b)?;     // stream b goes on after that
/// b.synchronize()?;
/// assert!(e.is_complete()?);
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct Event {
    rt: Runtime,
    raw: NonNull<std::ffi::c_void>,
    device: i32,
    kind: Kind,
    /// The export, once made.
    handle: Mutex<Option<IpcEventHandle>>,
    /// A stream of its own for [`signal`](Event::signal).
    host_stream: HostStream,
}

// SAFETY: an event is a runtime object usable from any thread; our own state is behind mutexes.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("device", &self.device).field("kind", &self.kind).finish()
    }
}

impl Event {
    /// A process-local event on `device` that streams and the host can wait for, and that records time.
    pub fn new(rt: &Runtime, device: i32) -> Result<Event> {
        let e = on_device(rt, device, || raw::create_event_ex_with_flag(rt, ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE))?;
        Self::wrap(rt, e, device, Kind::Local)
    }

    /// An event on `device` that other processes can open ([`export`](Event::export), then
    /// [`Event::open`] there).
    pub fn ipc(rt: &Runtime, device: i32) -> Result<Event> {
        let e = on_device(rt, device, || raw::create_event_ex_with_flag(rt, ACL_EVENT_IPC))?;
        Self::wrap(rt, e, device, Kind::IpcCreator)
    }

    /// Open an IPC event another process exported, on `device`. Refused by the runtime in the process
    /// that created it, and once its creator destroyed it.
    pub fn open(rt: &Runtime, handle: &IpcEventHandle, device: i32) -> Result<Event> {
        let e = on_device(rt, device, || raw::ipc_open_event_handle(rt, handle.to_raw()))?;
        Self::wrap(rt, e, device, Kind::IpcOpened)
    }

    fn wrap(rt: &Runtime, e: aclrtEvent, device: i32, kind: Kind) -> Result<Event> {
        let raw = NonNull::new(e).ok_or_else(|| Error::InvalidArgument("the runtime returned a NULL event".into()))?;
        Ok(Event { rt: rt.clone(), raw, device, kind, handle: Mutex::new(None), host_stream: HostStream::default() })
    }

    /// Its device.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// Whether other processes can open it (an IPC event, created or opened here).
    pub fn is_ipc(&self) -> bool {
        self.kind != Kind::Local
    }

    /// The handle other processes open it with: made once, cached after. Only for an IPC event this
    /// process created.
    pub fn export(&self) -> Result<IpcEventHandle> {
        match self.kind {
            Kind::Local => return Err(Error::NotPermitted("only an IPC event (Event::ipc) is exported".into())),
            Kind::IpcOpened => {
                return Err(Error::NotPermitted("an opened IPC event is exported by its creator, not again".into()));
            }
            Kind::IpcCreator => {}
        }
        let mut h = self.handle.lock();
        if let Some(h) = *h {
            return Ok(h);
        }
        // SAFETY: our live event.
        let raw = unsafe { raw::ipc_get_event_handle(&self.rt, self.as_raw()) }?;
        let handle = IpcEventHandle::from_raw(&raw);
        *h = Some(handle);
        Ok(handle)
    }

    /// Queue a record on `stream`: the event completes when the stream reaches it.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.check_stream(stream)?;
        // SAFETY: our live event and a live stream of the same runtime.
        unsafe { raw::record_event(&self.rt, self.as_raw(), stream.as_raw()) }
    }

    /// Queue on `stream` a wait for the latest record made so far.
    pub fn wait(&self, stream: &Stream) -> Result<()> {
        self.check_stream(stream)?;
        // SAFETY: our live event and a live stream of the same runtime.
        unsafe { raw::stream_wait_event(&self.rt, stream.as_raw(), self.as_raw()) }
    }

    /// Block until the latest record made so far has completed (at once if there is none).
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: our live event.
        unsafe { raw::synchronize_event(&self.rt, self.as_raw()) }
    }

    /// Whether the latest record made so far has completed.
    pub fn is_complete(&self) -> Result<bool> {
        // SAFETY: our live event.
        unsafe { raw::query_event_status(&self.rt, self.as_raw()) }
    }

    /// Wait from the host for at most `timeout`: `Ok(true)` once the latest record has completed,
    /// `Ok(false)` if the time passed first (the runtime's synchronize has no timeout; this polls).
    pub fn wait_host(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(50);
        loop {
            if self.is_complete()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    /// Record from the host: a record on a stream of the event's own, then wait for it.
    pub fn signal(&self) -> Result<()> {
        self.host_stream.with(&self.rt, self.device, |s| {
            self.record(s)?;
            s.synchronize()
        })
    }

    /// Milliseconds from this event's latest record to `end`'s (both local events, recorded and
    /// complete).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        if self.is_ipc() || end.is_ipc() {
            return Err(Error::NotPermitted("IPC events record no time".into()));
        }
        // SAFETY: two live events of ours.
        unsafe { raw::event_elapsed_time(&self.rt, self.as_raw(), end.as_raw()) }
    }

    fn check_stream(&self, stream: &Stream) -> Result<()> {
        if stream.runtime().is_same(&self.rt) {
            Ok(())
        } else {
            Err(Error::InvalidArgument("the stream and the event are of different runtimes".into()))
        }
    }

    /// The runtime's handle (valid while `self` lives).
    pub fn as_raw(&self) -> aclrtEvent {
        self.raw.as_ptr()
    }

    /// Destroy it in this process (other processes' handles of an IPC event stay until they destroy
    /// theirs), reporting a failure, which dropping can only print.
    pub fn close(self) -> Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        let r = this.destroy();
        // SAFETY: `this` is never used again; each field that owns something on the heap is dropped exactly
        // once, here (`handle` owns nothing that needs dropping).
        unsafe {
            drop(std::ptr::read(&this.rt));
            drop(std::ptr::read(&this.host_stream));
        }
        r
    }

    fn destroy(&mut self) -> Result<()> {
        let stream = self.host_stream.close();
        // SAFETY: our live event, not used after this.
        let destroyed = release_retrying(|| unsafe { raw::destroy_event(&self.rt, self.as_raw()) });
        stream.and(destroyed)
    }
}

close_on_drop!(Event, destroy, "an event");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_and_parse() {
        let mut b = [0u8; 64];
        b[0] = 0xAB;
        b[63] = 0x01;
        let h = IpcEventHandle(b);
        let text = h.to_string();
        assert_eq!(text.len(), 128);
        assert_eq!(text.parse::<IpcEventHandle>().unwrap(), h);
        assert!("zz".repeat(64).parse::<IpcEventHandle>().is_err());
        assert!("ab".parse::<IpcEventHandle>().is_err());
        assert!(IpcEventHandle::from_bytes(&[0; 63]).is_err());
        assert_eq!(IpcEventHandle::from_bytes(&b).unwrap(), h);
    }
}
