//! Initialisation, devices, contexts, peer access and streams.
//!
//! As in the runtime: the current device is per thread (`aclrtSetDevice` in each thread that needs one);
//! the device's context is shared by the process and counted (each `aclrtSetDevice` adds a reference,
//! `aclrtResetDevice` drops one, `aclrtResetDeviceForce` drops them all); when the count reaches zero the
//! context's streams are destroyed and threads that still point at it have no current device. `aclInit`
//! is not required before `aclrt*` calls, and `aclFinalize` does not release devices or memory.

#![allow(non_snake_case)]

use std::ffi::{CStr, c_char};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use aclshm_sys::*;
use parking_lot::Mutex;

use crate::call::{R, bail, fail, not_null, put};
use crate::state::{Context, Local, Sim, TAG_CONTEXT, TAG_STREAM, decode, encode, sim};
use crate::stream::Stream;

/// The ACL version the simulator implements (the headers aclshm-sys is checked against).
pub(crate) const VERSION: (i32, i32, i32) = (1, 17, 0);

#[derive(Default)]
struct InitState {
    initialised: bool,
    finalised: bool,
    /// Contents of the first aclInit's configuration file ("" for none): later ones must match.
    config: Option<Vec<u8>>,
}

static INIT: Mutex<InitState> = Mutex::new(InitState { initialised: false, finalised: false, config: None });

pub(crate) unsafe fn aclInit(config_path: *const c_char) -> R {
    let config = if config_path.is_null() {
        Vec::new()
    } else {
        // SAFETY: a non-null configPath is a NUL-terminated path (C API contract).
        let path = unsafe { CStr::from_ptr(config_path) };
        if path.to_bytes().is_empty() {
            Vec::new()
        } else {
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
            std::fs::read(path).map_err(|e| fail(ACL_ERROR_INVALID_FILE, format!("read {}: {e}", path.display())))?
        }
    };
    let mut st = INIT.lock();
    if st.initialised {
        return bail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit was already called (call aclFinalize first)");
    }
    if let Some(first) = &st.config
        && *first != config
    {
        return bail(
            ACL_ERROR_INVALID_PARAM,
            "the configuration differs from the one the first aclInit of this process used",
        );
    }
    st.config = Some(config);
    st.initialised = true;
    st.finalised = false;
    Ok(())
}

pub(crate) unsafe fn aclFinalize() -> R {
    let mut st = INIT.lock();
    if st.finalised {
        return bail(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize was already called");
    }
    if st.initialised {
        st.initialised = false;
        st.finalised = true;
    }
    Ok(())
}

pub(crate) unsafe fn aclrtGetVersion(major: *mut i32, minor: *mut i32, patch: *mut i32) -> R {
    not_null(major, "majorVersion")?;
    not_null(minor, "minorVersion")?;
    not_null(patch, "patchVersion")?;
    // SAFETY: all three are non-null out-parameters (C API contract).
    unsafe {
        put(major, VERSION.0);
        put(minor, VERSION.1);
        put(patch, VERSION.2);
    }
    Ok(())
}

pub(crate) unsafe fn aclrtSetDevice(device_id: i32) -> R {
    let s = sim()?;
    let d = s.device(device_id)?;
    let mut l = s.local.lock();
    l.devices[d as usize].refs += 1;
    s.set_current(&l, d);
    Ok(())
}

fn reset(device_id: i32, force: bool) -> R {
    let s = sim()?;
    let d = s.device(device_id)?;
    let streams = {
        let mut l = s.local.lock();
        if l.devices[d as usize].refs == 0 {
            return bail(
                ACL_ERROR_RT_CONTEXT_RELEASE_ERROR,
                format!("device {d} is not set in this process (no aclrtSetDevice reference left)"),
            );
        }
        release_device(s, &mut l, d, force)
    };
    for st in streams {
        st.shut_down(true);
    }
    Ok(())
}

/// Drop one aclrtSetDevice reference to device `d` (all of them: `force`); once neither references nor
/// contexts keep it up, tear it down and return its streams, to be shut down once the tables are unlocked
/// (a stream's tasks take the lock).
fn release_device(s: &Sim, l: &mut Local, d: u32, force: bool) -> Vec<Arc<Stream>> {
    let ctx = &mut l.devices[d as usize];
    ctx.refs = if force { 0 } else { ctx.refs.saturating_sub(1) };
    tear_down_unless_up(s, l, d)
}

/// Tear device `d` down in this process if nothing keeps it up (see `release_device`).
fn tear_down_unless_up(s: &Sim, l: &mut Local, d: u32) -> Vec<Arc<Stream>> {
    let ctx = &mut l.devices[d as usize];
    if ctx.up() {
        return Vec::new();
    }
    ctx.epoch += 1;
    ctx.default_stream = None;
    // The runtime clears the calling thread's current device on the final release.
    s.clear_current();
    take_streams(l, |st| st.device == d)
}

/// Remove the streams matching `which` from the table (to be shut down after the lock is released: a
/// stream's tasks take it).
fn take_streams(l: &mut Local, which: impl Fn(&Stream) -> bool) -> Vec<Arc<Stream>> {
    let keys: Vec<usize> = l.streams.iter().filter(|(_, st)| which(st)).map(|(k, _)| k).collect();
    keys.into_iter().map(|k| l.streams.remove(k)).collect()
}

pub(crate) unsafe fn aclrtResetDevice(device_id: i32) -> R {
    reset(device_id, false)
}

pub(crate) unsafe fn aclrtResetDeviceForce(device_id: i32) -> R {
    reset(device_id, true)
}

pub(crate) unsafe fn aclrtGetDevice(device_id: *mut i32) -> R {
    not_null(device_id, "deviceId")?;
    let s = sim()?;
    let l = s.local.lock();
    let d = s.current(&l)?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(device_id, d as i32) };
    Ok(())
}

pub(crate) unsafe fn aclrtGetRunMode(run_mode: *mut aclrtRunMode) -> R {
    not_null(run_mode, "runMode")?;
    // The simulator runs on a host that drives its devices.
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(run_mode, aclrtRunMode::ACL_HOST) };
    Ok(())
}

pub(crate) unsafe fn aclrtSynchronizeDevice() -> R {
    let s = sim()?;
    let streams: Vec<Arc<Stream>> = {
        let l = s.local.lock();
        let d = s.current(&l)?;
        l.streams.iter().filter(|(_, st)| st.device == d).map(|(_, st)| Arc::clone(st)).collect()
    };
    // Every stream is waited for; the first failure is reported.
    let mut first = Ok(());
    for st in streams {
        let r = st.synchronize();
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Key of the handle of device `d`'s default context (explicit contexts have small keys).
const DEFAULT_CONTEXT: usize = 0x8000_0000;

/// The handle of device `d`'s default context in its current incarnation.
fn default_context(l: &Local, d: u32) -> aclrtContext {
    encode(TAG_CONTEXT, DEFAULT_CONTEXT | d as usize, (l.devices[d as usize].epoch & 0xFF_FFFF) as u32)
}

/// What a context handle names: an explicit context (its key) or a device's default context.
enum Ctx {
    Explicit(usize),
    Default(u32),
}

fn context_of(s: &Sim, l: &Local, context: aclrtContext) -> R<Ctx> {
    let invalid = || fail(ACL_ERROR_RT_CONTEXT_NULL, "not a live context of this process");
    let (k, generation) = decode(TAG_CONTEXT, context).ok_or_else(invalid)?;
    if k & DEFAULT_CONTEXT != 0 {
        let d = (k & !DEFAULT_CONTEXT) as u32;
        let live = d < s.devices
            && l.devices[d as usize].up()
            && (l.devices[d as usize].epoch & 0xFF_FFFF) as u32 == generation;
        return if live { Ok(Ctx::Default(d)) } else { Err(invalid()) };
    }
    match l.contexts.get(k) {
        Some(c) if c.generation == generation => Ok(Ctx::Explicit(k)),
        _ => Err(invalid()),
    }
}

pub(crate) unsafe fn aclrtCreateContext(context: *mut aclrtContext, device_id: i32) -> R {
    not_null(context, "context")?;
    let s = sim()?;
    let d = s.device(device_id)?;
    let mut l = s.local.lock();
    l.devices[d as usize].contexts += 1;
    let generation = l.new_generation();
    let k = l.contexts.insert(Context { generation, device: d });
    s.set_current_context(&l, d, k);
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(context, encode(TAG_CONTEXT, k, generation)) };
    Ok(())
}

pub(crate) unsafe fn aclrtDestroyContext(context: aclrtContext) -> R {
    not_null(context, "context")?;
    let s = sim()?;
    let streams = {
        let mut l = s.local.lock();
        let k = match context_of(s, &l, context)? {
            Ctx::Explicit(k) => k,
            Ctx::Default(_) => {
                return bail(
                    ACL_ERROR_RT_CONTEXT_NULL,
                    "a device's default context is released by aclrtResetDevice, not aclrtDestroyContext",
                );
            }
        };
        let current = s.current_context(&l) == Some(k);
        let c = l.contexts.remove(k);
        let dev = &mut l.devices[c.device as usize];
        dev.contexts = dev.contexts.saturating_sub(1);
        let streams = tear_down_unless_up(s, &mut l, c.device);
        if current {
            s.clear_current();
        }
        streams
    };
    for st in streams {
        st.shut_down(true);
    }
    Ok(())
}

pub(crate) unsafe fn aclrtSetCurrentContext(context: aclrtContext) -> R {
    not_null(context, "context")?;
    let s = sim()?;
    let l = s.local.lock();
    match context_of(s, &l, context)? {
        Ctx::Explicit(k) => {
            let d = l.contexts[k].device;
            if !l.devices[d as usize].up() {
                return bail(ACL_ERROR_RT_CONTEXT_NULL, format!("device {d} of the context was reset"));
            }
            s.set_current_context(&l, d, k);
        }
        Ctx::Default(d) => s.set_current(&l, d),
    }
    Ok(())
}

pub(crate) unsafe fn aclrtGetCurrentContext(context: *mut aclrtContext) -> R {
    not_null(context, "context")?;
    let s = sim()?;
    let l = s.local.lock();
    let d = s.current(&l)?;
    let h = match s.current_context(&l) {
        Some(k) => encode(TAG_CONTEXT, k, l.contexts[k].generation),
        None => default_context(&l, d),
    };
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(context, h) };
    Ok(())
}

pub(crate) unsafe fn aclrtGetDeviceCount(count: *mut u32) -> R {
    not_null(count, "count")?;
    let s = sim()?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(count, s.devices) };
    Ok(())
}

pub(crate) unsafe fn aclrtDeviceCanAccessPeer(can_access_peer: *mut i32, device_id: i32, peer_device_id: i32) -> R {
    if device_id == peer_device_id {
        return bail(ACL_ERROR_INVALID_PARAM, "deviceId and peerDeviceId are the same device");
    }
    if can_access_peer.is_null() {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "canAccessPeer is NULL");
    }
    let s = sim()?;
    s.device(device_id)?;
    s.device(peer_device_id)?;
    // Every simulated device can reach every other (as within one AI server).
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(can_access_peer, 1) };
    Ok(())
}

/// Enabling or disabling peer access: checked as the runtime does. It has no other effect: simulated
/// devices reach each other's memory whether or not it is enabled (imports enable it themselves, as the
/// runtime does).
fn peer_access(peer_device_id: i32) -> R {
    let s = sim()?;
    let l = s.local.lock();
    let d = s.current(&l)?;
    if peer_device_id == d as i32 {
        return bail(ACL_ERROR_INVALID_PARAM, "the peer is the current device");
    }
    s.device(peer_device_id)?;
    Ok(())
}

pub(crate) unsafe fn aclrtDeviceEnablePeerAccess(peer_device_id: i32, flags: u32) -> R {
    if flags != 0 {
        return bail(ACL_ERROR_FEATURE_UNSUPPORTED, "flags must be 0");
    }
    peer_access(peer_device_id)
}

pub(crate) unsafe fn aclrtDeviceDisablePeerAccess(peer_device_id: i32) -> R {
    peer_access(peer_device_id)
}

pub(crate) unsafe fn aclrtDeviceGetBareTgid(pid: *mut i32) -> R {
    not_null(pid, "pid")?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(pid, aclshm_os::bare_tgid()) };
    Ok(())
}

pub(crate) unsafe fn aclrtCreateStream(stream: *mut aclrtStream) -> R {
    not_null(stream, "stream")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    let generation = l.new_generation();
    let st = Stream::start(generation, d)?;
    let key = l.streams.insert(Arc::new(st));
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(stream, encode(TAG_STREAM, key, generation)) };
    Ok(())
}

/// The table key of a caller's stream handle.
pub(crate) fn stream_key(l: &Local, stream: aclrtStream) -> R<usize> {
    match decode(TAG_STREAM, stream) {
        Some((k, generation)) if l.streams.get(k).is_some_and(|st| st.generation == generation) => Ok(k),
        _ => bail(ACL_ERROR_RT_INVALID_HANDLE, "not a live stream of this process"),
    }
}

/// The stream a task goes to: `stream`, or the current device's default stream for NULL. The stream must
/// belong to the current device's context.
pub(crate) fn stream_for(s: &Sim, l: &mut Local, stream: aclrtStream) -> R<Arc<Stream>> {
    let d = s.current(l)?;
    if stream.is_null() {
        if let Some(k) = l.devices[d as usize].default_stream {
            return Ok(Arc::clone(&l.streams[k]));
        }
        let generation = l.new_generation();
        let st = Arc::new(Stream::start(generation, d)?);
        let k = l.streams.insert(Arc::clone(&st));
        l.devices[d as usize].default_stream = Some(k);
        return Ok(st);
    }
    let k = stream_key(l, stream)?;
    let st = &l.streams[k];
    if st.device != d {
        return bail(
            ACL_ERROR_RT_STREAM_CONTEXT,
            format!("the stream belongs to device {}, the current device is {d}", st.device),
        );
    }
    Ok(Arc::clone(st))
}

fn destroy_stream(stream: aclrtStream, force: bool) -> R {
    not_null(stream, "stream")?;
    let s = sim()?;
    let st = {
        let mut l = s.local.lock();
        let k = stream_key(&l, stream)?;
        let d = s.current(&l)?;
        if l.streams[k].device != d {
            return bail(
                ACL_ERROR_RT_STREAM_CONTEXT,
                format!("the stream belongs to device {}, the current device is {d}", l.streams[k].device),
            );
        }
        l.streams.remove(k)
    };
    st.shut_down(force);
    Ok(())
}

pub(crate) unsafe fn aclrtDestroyStream(stream: aclrtStream) -> R {
    destroy_stream(stream, false)
}

pub(crate) unsafe fn aclrtDestroyStreamForce(stream: aclrtStream) -> R {
    destroy_stream(stream, true)
}

pub(crate) unsafe fn aclrtSynchronizeStream(stream: aclrtStream) -> R {
    let s = sim()?;
    let st = {
        let l = s.local.lock();
        if stream.is_null() {
            let d = s.current(&l)?;
            match l.devices[d as usize].default_stream {
                Some(k) => Arc::clone(&l.streams[k]),
                None => return Ok(()),
            }
        } else {
            Arc::clone(&l.streams[stream_key(&l, stream)?])
        }
    };
    st.synchronize()
}
