//! The calling thread's current device: [`Runtime::on_device`] runs work with a device current and puts
//! the thread's previous one back, after making sure the runtime is initialised (`aclInit`, once per
//! process and library, as the documentation requires before other calls). Contexts ([`Context`]) and
//! where an address lives ([`Runtime::locate`]). Above [`raw`](crate::raw), which it calls.

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use aclshm_sys::{aclrtContext, aclrtMemLocationType};

use crate::error::{AclError, Error, Result, close_on_drop, release_retrying};
use crate::raw;
use crate::runtime::Runtime;
use crate::sync::StaticMutex;

impl Runtime {
    /// Run `f` with `device` current in the calling thread (`aclrtSetDevice` when it is not), and make the
    /// thread's previous device current again after: for copies and other calls that act on the current
    /// device. A thread that had no device keeps `device`. If `f` ran, its result is returned, also when
    /// the previous device cannot be made current again (logged at level `error`, target `aclshm`: what
    /// `f` made may be freed only through its result).
    pub fn on_device<T>(&self, device: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
        on_device(self, device, f)
    }

    /// Call `aclInit` unless aclshm did in this process already, through this runtime's library: the
    /// documentation requires it before other calls (the runtime does not check, and the simulator does
    /// not either). A program that initialised the runtime itself (`aclInit` before aclshm) is fine: the
    /// runtime's `ACL_ERROR_REPEAT_INITIALIZE` counts as done. aclshm never calls `aclFinalize`: the
    /// program that owns the process does, once, before it exits.
    pub fn ensure_initialized(&self) -> Result<()> {
        static DONE: StaticMutex<Vec<usize>> = StaticMutex::new(Vec::new());
        let Some(init) = self.fns().aclInit else { return Ok(()) };
        let key = init as usize;
        let mut done = DONE.lock();
        if done.contains(&key) {
            return Ok(());
        }
        match raw::init(self, None) {
            Ok(()) => {}
            Err(e) if e.acl_code() == Some(AclError::REPEAT_INITIALIZE) => {}
            Err(e) => return Err(e),
        }
        done.push(key);
        Ok(())
    }

    /// Where `ptr` lives, as the runtime sees it (`aclrtPointerGetAttributes`).
    pub fn locate(&self, ptr: *const c_void) -> Result<Location> {
        let a = raw::pointer_get_attributes(self, ptr)?;
        let page_size = a.pageSize;
        let place = match a.location.type_ {
            aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE => Place::Device(a.location.id as i32),
            aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST => Place::PinnedHost,
            _ => Place::Host,
        };
        Ok(Location { place, page_size })
    }
}

/// Where memory is: what [`Runtime::locate`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Device memory of this device.
    Device(i32),
    /// Page-locked host memory from the runtime (`aclrtMallocHost`).
    PinnedHost,
    /// Other host memory.
    Host,
}

/// An address's place and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Where it is.
    pub place: Place,
    /// Its page size in bytes, as the runtime reports it.
    pub page_size: u32,
}

/// This process's pid as the device driver sees it (`aclrtDeviceGetBareTgid`: the host's pid, inside a
/// container too), asked once per process: it cannot change while the process lives, and the call is
/// not free (the simulator reads `/proc/self/status`, ~10 µs of each attach on a 2-core VM). A forked
/// child has another pid, so it asks again.
pub(crate) fn bare_tgid(rt: &Runtime) -> Result<i32> {
    use crate::sync::stat::{AtomicU64, Ordering};
    /// The pid asked for (high half) and its answer (low half); 0 until the first answer.
    static KNOWN: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let known = KNOWN.load(Ordering::Relaxed);
    if known != 0 && (known >> 32) as u32 == pid {
        return Ok(known as u32 as i32);
    }
    let tgid = raw::device_get_bare_tgid(rt)?;
    KNOWN.store((u64::from(pid) << 32) | u64::from(tgid as u32), Ordering::Relaxed);
    Ok(tgid)
}

/// See [`Runtime::on_device`].
pub(crate) fn on_device<T>(rt: &Runtime, device: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    rt.ensure_initialized()?;
    match raw::get_device(rt) {
        Ok(d) if d == device => f(),
        before => {
            raw::set_device(rt, device)?;
            let r = f();
            if let Ok(d) = before
                && let Err(e) = raw::set_device(rt, d)
            {
                // What `f` did stands (it may have made something only its result can free): its result is
                // returned, and the device left current in this thread is said where it can be seen.
                log::error!(target: "aclshm", "device {device} stays current in this thread: device {d} could not be made current again: {e}");
            }
            r
        }
    }
}

/// A context made with `aclrtCreateContext`: a device, made current in the creating thread. Other threads
/// use it with [`make_current`](Context::make_current). Destroyed on drop (which releases its hold on the
/// device, as `aclrtResetDevice` does).
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::{Context, Runtime, raw};
/// let rt = Runtime::simulator();
/// let ctx = Context::new(&rt, 1)?;
/// assert_eq!(raw::get_device(&rt)?, 1, "the new context is current, and so is its device");
/// assert_eq!(raw::get_current_context(&rt)?, ctx.as_raw());
/// ctx.close()?;
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct Context {
    rt: Runtime,
    raw: NonNull<c_void>,
    device: i32,
}

// SAFETY: a context is a runtime object any thread may make current.
unsafe impl Send for Context {}
// SAFETY: as above; `Context` has no interior state of its own.
unsafe impl Sync for Context {}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("device", &self.device).finish()
    }
}

impl Context {
    /// Create a context on `device`; it becomes the calling thread's current context.
    pub fn new(rt: &Runtime, device: i32) -> Result<Context> {
        rt.ensure_initialized()?;
        let c = raw::create_context(rt, device)?;
        let raw =
            NonNull::new(c).ok_or_else(|| Error::InvalidArgument("the runtime returned a NULL context".into()))?;
        Ok(Context { rt: rt.clone(), raw, device })
    }

    /// Make it the calling thread's current context (its device becomes the current device).
    pub fn make_current(&self) -> Result<()> {
        // SAFETY: our live context.
        unsafe { raw::set_current_context(&self.rt, self.as_raw()) }
    }

    /// Its device.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// The runtime's handle (valid while `self` lives).
    pub fn as_raw(&self) -> aclrtContext {
        self.raw.as_ptr()
    }

    /// Destroy it, reporting a failure, which dropping can only print.
    pub fn close(self) -> Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        let r = this.destroy();
        // SAFETY: `this` is never used again; its one field that owns something is dropped once, here.
        unsafe { drop(std::ptr::read(&this.rt)) };
        r
    }

    fn destroy(&mut self) -> Result<()> {
        // SAFETY: our live context, not used after this.
        release_retrying(|| unsafe { raw::destroy_context(&self.rt, self.as_raw()) })
    }
}

close_on_drop!(Context, destroy, "a context");
