//! IPC notifies: a signal one process records and another waits for, on device streams.
//!
//! ```text
//!   creator (A)                                   importer (B)
//!   Notify::new ── export() ──── key ──────────>  Notify::import(key)   (peer access enabled)
//!        allow(B's bare tgid) (pid validation)
//!   wait(&stream) / wait_host(timeout)  <──────── record(&stream) / signal()
//!   drop: destroy                                 drop: destroy
//! ```
//!
//! The runtime's rules, kept by the types: only the creator waits (the notify's hardware is on its side;
//! an importer asking to wait gets [`Error::NotPermitted`], not a runtime error); a notify is exported
//! once, its key cached (a second export would fail in the runtime); every process destroys its own
//! notify (on drop), and the runtime releases it after all have. The creator must not drop its notify
//! before importers imported it; an importer that comes late gets a typed runtime error, not a crash.
//!
//! Timeouts are whole seconds, the unit the runtime's documentation gives (its header comment says
//! milliseconds; the simulator follows the documentation), rounded up.

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use aclshm_sys::{
    ACL_NOTIFY_DEFAULT, ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT, ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION,
    ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS, aclrtNotify,
};

use crate::device::on_device;
use crate::error::{AclError, Error, Result, close_on_drop, release_retrying};
use crate::raw::{self, IpcKey};
use crate::runtime::Runtime;
use crate::stream::{HostStream, Stream};
use crate::sync::Mutex;

/// A notify this process created or imported. Destroyed on drop: synchronize the streams a record or
/// wait of it was queued on first (what the runtime does with a task on a destroyed notify is not
/// documented; the simulator fails the task).
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use std::time::Duration;
/// use aclshm::{Notify, Runtime, raw};
/// let rt = Runtime::simulator();
/// raw::set_device(&rt, 0)?;
/// let n = Notify::new(&rt, 0)?;
/// let key = n.export(true)?; // for another process: Notify::import(&rt, &key, device)
/// assert_eq!(n.export(true)?, key); // exported once; the key is cached
/// // n.allow(importer_tgid)?; the importer records, the creator waits:
/// n.signal()?; // (the creator may record too)
/// assert!(n.wait_host(Duration::from_secs(5))?);
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct Notify {
    rt: Runtime,
    raw: NonNull<std::ffi::c_void>,
    device: i32,
    creator: bool,
    /// The export (key, flags), once made.
    export: Mutex<Option<(IpcKey, u64)>>,
    /// A stream of its own for [`wait_host`](Notify::wait_host), and another for
    /// [`signal`](Notify::signal): a signal from this process must not queue behind (or wait for the lock
    /// of) a wait it is to end.
    host_stream: HostStream,
    signal_stream: HostStream,
}

// SAFETY: a notify is a runtime object usable from any thread; our own state is behind mutexes.
unsafe impl Send for Notify {}
// SAFETY: as above.
unsafe impl Sync for Notify {}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify").field("device", &self.device).field("creator", &self.creator).finish()
    }
}

/// A timeout as the runtime takes it: whole seconds, rounded up; 0 is "for ever", so `None` is 0 and a
/// zero duration is one second.
fn seconds(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => 0,
        Some(t) => {
            let s = t.as_secs().saturating_add(u64::from(t.subsec_nanos() > 0));
            u32::try_from(s.max(1)).unwrap_or(u32::MAX - 1)
        }
    }
}

impl Notify {
    /// Create a notify on `device`.
    pub fn new(rt: &Runtime, device: i32) -> Result<Notify> {
        let n = on_device(rt, device, || raw::create_notify(rt, u64::from(ACL_NOTIFY_DEFAULT)))?;
        Self::wrap(rt, n, device, true)
    }

    /// Import a notify another process exported, on `device`, with peer access enabled (the runtime
    /// sets up the path to the creator's device). Refused by the runtime if this process is not
    /// whitelisted (and the export validates pids) or the creator destroyed it.
    pub fn import(rt: &Runtime, key: &IpcKey, device: i32) -> Result<Notify> {
        let n =
            on_device(rt, device, || raw::notify_import_by_key(rt, key, ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS))?;
        Self::wrap(rt, n, device, false)
    }

    fn wrap(rt: &Runtime, n: aclrtNotify, device: i32, creator: bool) -> Result<Notify> {
        let raw = NonNull::new(n).ok_or_else(|| Error::InvalidArgument("the runtime returned a NULL notify".into()))?;
        Ok(Notify {
            rt: rt.clone(),
            raw,
            device,
            creator,
            export: Mutex::new(None),
            host_stream: HostStream::default(),
            signal_stream: HostStream::default(),
        })
    }

    /// Whether this process created it (and so may wait on it).
    pub fn is_creator(&self) -> bool {
        self.creator
    }

    /// Its device.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// Export it for other processes, once: later calls return the same key. With `validate_pids`
    /// (the default to choose), only processes whitelisted with [`allow`](Notify::allow) can import it;
    /// `false` is the opt-out. Refused for an imported notify, and for other flags than the first export's.
    pub fn export(&self, validate_pids: bool) -> Result<IpcKey> {
        if !self.creator {
            return Err(Error::NotPermitted("an imported notify cannot be exported again".into()));
        }
        let flags = if validate_pids {
            ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT
        } else {
            ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION
        };
        let mut export = self.export.lock();
        if let Some((key, f)) = *export {
            if f != flags {
                return Err(Error::NotPermitted(format!("exported already with flags {f:#x}; a notify has one key")));
            }
            return Ok(key);
        }
        // SAFETY: our live notify.
        let key = unsafe { raw::notify_get_export_key(&self.rt, self.as_raw(), flags) }?;
        *export = Some((key, flags));
        Ok(key)
    }

    /// Whitelist a process (its pid from `aclrtDeviceGetBareTgid`) to import the exported notify.
    pub fn allow(&self, tgid: i32) -> Result<()> {
        match *self.export.lock() {
            None => Err(Error::NotPermitted("export the notify before whitelisting importers".into())),
            Some((_, f)) if f != ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT => {
                Err(Error::NotPermitted("the notify was exported without pid validation: it has no whitelist".into()))
            }
            // One pid per call: what the runtime accepts everywhere.
            // SAFETY: our live notify.
            Some(_) => unsafe { raw::notify_set_import_pid(&self.rt, self.as_raw(), &[tgid]) },
        }
    }

    /// Queue a record on `stream` (either side may record; importers are the usual recorders).
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.check_stream(stream)?;
        // SAFETY: our live notify and a live stream of the same runtime.
        unsafe { raw::record_notify(&self.rt, self.as_raw(), stream.as_raw()) }
    }

    /// Queue, on `stream`, a wait for the next record followed by a reset. Creator only. A wait that
    /// times out fails the stream's work (reported by [`Stream::synchronize`]); `None` waits for ever.
    pub fn wait(&self, stream: &Stream, timeout: Option<Duration>) -> Result<()> {
        if !self.creator {
            return Err(Error::NotPermitted(
                "only the process that created a notify may wait on it; an importer records".into(),
            ));
        }
        self.check_stream(stream)?;
        // SAFETY: our live notify and a live stream of the same runtime.
        unsafe { raw::wait_and_reset_notify(&self.rt, self.as_raw(), stream.as_raw(), seconds(timeout)) }
    }

    fn check_stream(&self, stream: &Stream) -> Result<()> {
        if stream.runtime().is_same(&self.rt) {
            Ok(())
        } else {
            Err(Error::InvalidArgument("the stream and the notify are of different runtimes".into()))
        }
    }

    /// Record from the host: queue a record on a stream of the notify's own and wait for it to run.
    pub fn signal(&self) -> Result<()> {
        self.signal_stream.with(&self.rt, self.device, |s| {
            self.record(s)?;
            s.synchronize()
        })
    }

    /// Wait from the host (creator only): `Ok(true)` once recorded (and reset), `Ok(false)` if `timeout`
    /// passed first (rounded up to whole seconds).
    pub fn wait_host(&self, timeout: Duration) -> Result<bool> {
        self.on_host_stream(|s| {
            self.wait(s, Some(timeout))?;
            match s.synchronize() {
                Ok(()) => Ok(true),
                Err(e) if e.acl_code() == Some(AclError::TASK_TIMEOUT) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn on_host_stream<T>(&self, f: impl FnOnce(&Stream) -> Result<T>) -> Result<T> {
        self.host_stream.with(&self.rt, self.device, f)
    }

    /// The runtime's handle (valid while `self` lives).
    pub fn as_raw(&self) -> aclrtNotify {
        self.raw.as_ptr()
    }
}

impl Notify {
    /// Destroy it in this process (other processes' imports stay until they destroy theirs), reporting
    /// a failure, which dropping can only print.
    pub fn close(self) -> Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        let r = this.destroy();
        // SAFETY: `this` is never used again; each field that owns something on the heap is dropped exactly
        // once, here (`export` owns nothing that needs dropping).
        unsafe {
            drop(std::ptr::read(&this.rt));
            drop(std::ptr::read(&this.host_stream));
            drop(std::ptr::read(&this.signal_stream));
        }
        r
    }

    fn destroy(&mut self) -> Result<()> {
        // The private streams go first: nothing queued on them may outlive the notify.
        let stream = self.host_stream.close().and(self.signal_stream.close());
        // SAFETY: our live notify; the streams that used it are the caller's, whose work on it the caller
        // finished (a queued task on a destroyed notify is the runtime's to refuse).
        let destroyed = release_retrying(|| unsafe { raw::destroy_notify(&self.rt, self.as_raw()) });
        stream.and(destroyed)
    }
}

close_on_drop!(Notify, destroy, "a notify");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(seconds(None), 0);
        assert_eq!(seconds(Some(Duration::ZERO)), 1);
        assert_eq!(seconds(Some(Duration::from_millis(1))), 1);
        assert_eq!(seconds(Some(Duration::from_millis(1500))), 2);
        assert_eq!(seconds(Some(Duration::from_secs(3))), 3);
        assert_eq!(seconds(Some(Duration::MAX)), u32::MAX - 1);
    }
}
