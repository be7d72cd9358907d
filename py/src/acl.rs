//! pyACL's calling convention over [`aclshm::raw`]: the `acl` module (`init`, `finalize`,
//! `get_version`), `acl.rt` and `acl.util` (see `aclshm/acl`).
//!
//! As pyACL documents it: every function returns the ACL status `ret` (0 = success), after its outputs
//! when it has any (`dev_ptr, ret = acl.rt.malloc(size, policy)`); pointers, handles, contexts, streams,
//! events and notifies are ints; keys are str; IPC event and fabric handles are bytes; pid whitelists are
//! lists; structs are dicts. Each function makes
//! exactly the runtime call its name says, through the runtime the library selected, so `ret` is the
//! code the Rust layer's `Error::Acl` carries for the same call. Failures that never reach the runtime
//! are reported as the runtime would report them: an argument the C API cannot even be given (a key over
//! 64 characters, an IPC event handle that is not 64 bytes) is `ACL_ERROR_INVALID_PARAM`, a function the
//! loaded runtime lacks is `ACL_ERROR_API_NOT_SUPPORT`. On failure the outputs are 0 (`""` for keys,
//! `b""` for byte handles, `{}` for attribute dicts).
//!
//! Like pyACL, this level trusts the ints it is given: a stale handle is the runtime's to refuse (the
//! simulator always does), but a bad host address given to `memcpy` is as fatal as in C. The safe API
//! is the package's `Pool`, `Mirror`, `KvPool`, ... .

use std::ffi::{CString, c_void};

use aclshm::raw::{self, IpcKey};
use aclshm::sys::{
    self, aclrtDrvMemHandle, aclrtIpcEventHandle, aclrtMemAccessDesc, aclrtMemAccessFlags, aclrtMemAllocationType,
    aclrtMemAttr, aclrtMemFabricHandle, aclrtMemGranularityOptions, aclrtMemHandleType, aclrtMemLocation,
    aclrtMemLocationType, aclrtMemMallocPolicy, aclrtMemSharedHandleType, aclrtMemcpyKind, aclrtPhysicalMemProp,
};
use aclshm::{AclError, Error, IpcEventHandle, Runtime};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyModule};

use crate::buffer::HostBuffer;
use crate::{err, runtime};

/// The `ret` for an error of the raw layer. A missing runtime (`Error::Backend`) is raised instead:
/// there is no runtime to return a status for.
fn code(e: Error) -> PyResult<i32> {
    Ok(match e {
        Error::Acl { source, .. } => source.code(),
        Error::Unsupported { .. } => sys::ACL_ERROR_API_NOT_SUPPORT,
        Error::InvalidArgument(_) | Error::Misaligned { .. } => sys::ACL_ERROR_INVALID_PARAM,
        Error::Backend { .. } => return Err(err(e)),
        _ => sys::ACL_ERROR_FAILURE,
    })
}

/// `ret` of a call with no outputs.
fn status(r: aclshm::Result<()>) -> PyResult<i32> {
    match r {
        Ok(()) => Ok(0),
        Err(e) => code(e),
    }
}

/// `(value, ret)` of a call with one output; `fail` is the value on failure.
fn out<T>(r: aclshm::Result<T>, fail: T) -> PyResult<(T, i32)> {
    match r {
        Ok(v) => Ok((v, 0)),
        Err(e) => Ok((fail, code(e)?)),
    }
}

/// A pointer or handle argument (an int, as pyACL takes them).
fn ptr(p: usize) -> *mut c_void {
    p as *mut c_void
}

/// `(pointer, ret)` of a call that outputs a pointer or handle: the pointer as an int, 0 on failure.
fn out_ptr(r: aclshm::Result<*mut c_void>) -> PyResult<(usize, i32)> {
    out(r.map(|p| p as usize), 0)
}

/// A key argument; one that cannot be a key (empty, over 64 characters, not ASCII) is the runtime's
/// invalid-parameter status.
fn key(k: &str) -> aclshm::Result<IpcKey> {
    k.parse()
}

/// A pid whitelist: a list of ints, or one int.
#[derive(FromPyObject)]
enum Pids {
    One(i32),
    Many(Vec<i32>),
}

impl Pids {
    fn to_vec(&self) -> Vec<i32> {
        match self {
            Pids::One(p) => vec![*p],
            Pids::Many(v) => v.clone(),
        }
    }
}

fn field<'py>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    d.get_item(name)
}

/// `aclrtMemLocation` from its dict form (`{"id": .., "type": ..}`, missing keys 0; none at all is
/// `{}`) as the `location` of the struct `what`; an unknown key is a `TypeError`.
fn location(l: Option<Bound<'_, PyAny>>, what: &str) -> PyResult<aclrtMemLocation> {
    let mut location = aclrtMemLocation { id: 0, type_: aclrtMemLocationType(0) };
    if let Some(l) = l {
        let l = l
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err(format!("{what}[\"location\"] is a dict of id and type")))?;
        for k in l.keys() {
            let k: String = k.extract()?;
            if k != "id" && k != "type" {
                return Err(PyTypeError::new_err(format!(
                    "{what}[\"location\"]: unknown key {k:?} (it has id and type)"
                )));
            }
        }
        location.id = field(l, "id")?.map_or(Ok(0), |v| v.extract())?;
        location.type_ = aclrtMemLocationType(field(l, "type")?.map_or(Ok(0), |v| v.extract())?);
    }
    Ok(location)
}

/// Refuse a struct dict with a key its struct lacks (a misspelt key would otherwise be silently 0).
fn known_keys(d: &Bound<'_, PyDict>, what: &str, keys: &[&str]) -> PyResult<()> {
    for k in d.keys() {
        let k: String = k.extract().map_err(|_| PyTypeError::new_err(format!("{what} keys are str")))?;
        if !keys.contains(&k.as_str()) {
            return Err(PyTypeError::new_err(format!("{what}: unknown key {k:?} ({what} has {keys:?})")));
        }
    }
    Ok(())
}

/// `aclrtMemAccessDesc` from its dict form: keys `flags` and `location` (a dict of `id` and `type`),
/// missing keys 0, an unknown key a `TypeError` (pyACL documents no Python form of this struct; these are
/// the C struct's members, as pyACL's `prop` dicts use `aclrtPhysicalMemProp`'s).
fn access_desc(d: &Bound<'_, PyAny>) -> PyResult<aclrtMemAccessDesc> {
    let d = d.cast::<PyDict>().map_err(|_| PyTypeError::new_err("desc is a dict of flags and location"))?;
    known_keys(d, "desc", &["flags", "location"])?;
    Ok(aclrtMemAccessDesc {
        flags: aclrtMemAccessFlags(field(d, "flags")?.map_or(Ok(0), |v| v.extract())?),
        location: location(field(d, "location")?, "desc")?,
        rsv: [0; 12],
    })
}

/// `aclrtPhysicalMemProp` from its dict form: keys `handleType`, `allocationType`, `memAttr`,
/// `location` (a dict of `id` and `type`), `reserve`; missing keys are 0. An unknown key is a
/// `TypeError`, so that a misspelt one is not silently 0.
fn physical_prop(d: &Bound<'_, PyDict>) -> PyResult<aclrtPhysicalMemProp> {
    known_keys(d, "prop", &["handleType", "allocationType", "memAttr", "location", "reserve"])?;
    let uint = |name: &str| -> PyResult<u32> { field(d, name)?.map_or(Ok(0), |v| v.extract()) };
    let location = location(field(d, "location")?, "prop")?;
    Ok(aclrtPhysicalMemProp {
        handleType: aclrtMemHandleType(uint("handleType")?),
        allocationType: aclrtMemAllocationType(uint("allocationType")?),
        memAttr: aclrtMemAttr(uint("memAttr")?),
        location,
        reserve: field(d, "reserve")?.map_or(Ok(0), |v| v.extract())?,
    })
}

// ---- acl ----

/// `ret = acl.init(config_path)`: `config_path` may be omitted.
#[pyfunction]
#[pyo3(signature = (config_path=None))]
fn init(config_path: Option<&str>) -> PyResult<i32> {
    let rt = runtime()?;
    let c = match config_path.map(CString::new).transpose() {
        Ok(c) => c,
        Err(_) => return Ok(sys::ACL_ERROR_INVALID_PARAM),
    };
    status(raw::init(rt, c.as_deref()))
}

/// `ret = acl.finalize()`.
#[pyfunction]
fn finalize() -> PyResult<i32> {
    status(raw::finalize(runtime()?))
}

/// `major, minor, patch, ret = acl.get_version()`.
#[pyfunction]
fn get_version() -> PyResult<(i32, i32, i32, i32)> {
    Ok(match raw::get_version(runtime()?) {
        Ok((a, b, c)) => (a, b, c, 0),
        Err(e) => (0, 0, 0, code(e)?),
    })
}

// ---- acl.rt: devices ----

/// `ret = acl.rt.set_device(device_id)`.
#[pyfunction]
fn set_device(device_id: i32) -> PyResult<i32> {
    status(raw::set_device(runtime()?, device_id))
}

/// `ret = acl.rt.reset_device(device_id)`.
#[pyfunction]
fn reset_device(device_id: i32) -> PyResult<i32> {
    status(raw::reset_device(runtime()?, device_id))
}

/// `ret = acl.rt.reset_device_force(device_id)`.
#[pyfunction]
fn reset_device_force(device_id: i32) -> PyResult<i32> {
    status(raw::reset_device_force(runtime()?, device_id))
}

/// `device_id, ret = acl.rt.get_device()`.
#[pyfunction]
fn get_device() -> PyResult<(i32, i32)> {
    out(raw::get_device(runtime()?), 0)
}

/// `count, ret = acl.rt.get_device_count()`.
#[pyfunction]
fn get_device_count() -> PyResult<(u32, i32)> {
    out(raw::get_device_count(runtime()?), 0)
}

/// `pid, ret = acl.rt.device_get_bare_tgid()`.
#[pyfunction]
fn device_get_bare_tgid() -> PyResult<(i32, i32)> {
    out(raw::device_get_bare_tgid(runtime()?), 0)
}

/// `can_access_peer, ret = acl.rt.device_can_access_peer(dev_id, peer_dev_id)`: 1 or 0.
#[pyfunction]
fn device_can_access_peer(dev_id: i32, peer_dev_id: i32) -> PyResult<(i32, i32)> {
    out(raw::device_can_access_peer(runtime()?, dev_id, peer_dev_id).map(i32::from), 0)
}

/// `ret = acl.rt.device_enable_peer_access(peer_dev_id, flag)`.
#[pyfunction]
fn device_enable_peer_access(peer_dev_id: i32, flag: u32) -> PyResult<i32> {
    status(raw::device_enable_peer_access(runtime()?, peer_dev_id, flag))
}

/// `ret = acl.rt.device_disable_peer_access(peer_dev_id)`.
#[pyfunction]
fn device_disable_peer_access(peer_dev_id: i32) -> PyResult<i32> {
    status(raw::device_disable_peer_access(runtime()?, peer_dev_id))
}

/// `free, total, ret = acl.rt.get_mem_info(attr)`.
#[pyfunction]
fn get_mem_info(attr: u32) -> PyResult<(usize, usize, i32)> {
    Ok(match raw::get_mem_info(runtime()?, aclrtMemAttr(attr)) {
        Ok((free, total)) => (free, total, 0),
        Err(e) => (0, 0, code(e)?),
    })
}

// ---- streams ----

/// `stream, ret = acl.rt.create_stream()`.
#[pyfunction]
fn create_stream() -> PyResult<(usize, i32)> {
    out_ptr(raw::create_stream(runtime()?))
}

/// `ret = acl.rt.destroy_stream(stream)`.
#[pyfunction]
fn destroy_stream(py: Python<'_>, stream: usize) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: the caller's stream handle (the runtime refuses an unknown one).
    status(py.detach(|| unsafe { raw::destroy_stream(rt, ptr(stream)) }))
}

/// `ret = acl.rt.destroy_stream_force(stream)`.
#[pyfunction]
fn destroy_stream_force(stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's stream handle.
    status(unsafe { raw::destroy_stream_force(runtime()?, ptr(stream)) })
}

/// `ret = acl.rt.synchronize_stream(stream)`.
#[pyfunction]
fn synchronize_stream(py: Python<'_>, stream: usize) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: the caller's stream handle.
    status(py.detach(|| unsafe { raw::synchronize_stream(rt, ptr(stream)) }))
}

// ---- memory ----

/// `dev_ptr, ret = acl.rt.malloc(size, policy)`.
#[pyfunction]
fn malloc(size: usize, policy: u32) -> PyResult<(usize, i32)> {
    out_ptr(raw::malloc(runtime()?, size, aclrtMemMallocPolicy(policy)))
}

/// `ret = acl.rt.free(dev_ptr)`.
#[pyfunction]
fn free(dev_ptr: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's device pointer (the runtime refuses an unknown one).
    status(unsafe { raw::free(runtime()?, ptr(dev_ptr)) })
}

/// `host_ptr, ret = acl.rt.malloc_host(size)`.
#[pyfunction]
fn malloc_host(size: usize) -> PyResult<(usize, i32)> {
    out_ptr(raw::malloc_host(runtime()?, size))
}

/// `ret = acl.rt.free_host(host_ptr)`.
#[pyfunction]
fn free_host(host_ptr: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's host pointer from malloc_host.
    status(unsafe { raw::free_host(runtime()?, ptr(host_ptr)) })
}

/// `ret = acl.rt.memcpy(dst, dest_max, src, count, kind)`.
#[pyfunction]
fn memcpy(py: Python<'_>, dst: usize, dest_max: usize, src: usize, count: usize, kind: u32) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: addresses valid for `count` bytes (as in C).
    status(py.detach(|| unsafe { raw::memcpy(rt, ptr(dst), dest_max, ptr(src), count, aclrtMemcpyKind(kind)) }))
}

/// `ret = acl.rt.memcpy_async(dst, dest_max, src, count, kind, stream)`.
#[pyfunction]
fn memcpy_async(dst: usize, dest_max: usize, src: usize, count: usize, kind: u32, stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: addresses valid for `count` bytes until the stream has run the copy.
    status(unsafe {
        raw::memcpy_async(runtime()?, ptr(dst), dest_max, ptr(src), count, aclrtMemcpyKind(kind), ptr(stream))
    })
}

/// `ret = acl.rt.memset(dev_ptr, max_count, value, count)`.
#[pyfunction]
fn memset(py: Python<'_>, dev_ptr: usize, max_count: usize, value: i32, count: usize) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: device memory of this runtime.
    status(py.detach(|| unsafe { raw::memset(rt, ptr(dev_ptr), max_count, value, count) }))
}

// ---- virtual memory ----

/// `vir_ptr, ret = acl.rt.reserve_mem_address(size, alignment, expect_ptr, flags)`.
#[pyfunction]
fn reserve_mem_address(size: usize, alignment: usize, expect_ptr: usize, flags: u64) -> PyResult<(usize, i32)> {
    // SAFETY: pyACL's contract: `expect_ptr` 0 or a range the caller does not use.
    out_ptr(unsafe { raw::reserve_mem_address(runtime()?, size, alignment, ptr(expect_ptr), flags) })
}

/// `ret = acl.rt.release_mem_address(vir_ptr)`.
#[pyfunction]
fn release_mem_address(vir_ptr: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: a reserved range of the caller's (the runtime refuses an unknown one).
    status(unsafe { raw::release_mem_address(runtime()?, ptr(vir_ptr)) })
}

/// `handle, ret = acl.rt.malloc_physical(size, prop, flags)`.
#[pyfunction]
fn malloc_physical(size: usize, prop: &Bound<'_, PyDict>, flags: u64) -> PyResult<(usize, i32)> {
    let p = physical_prop(prop)?;
    out_ptr(raw::malloc_physical(runtime()?, size, &p, flags))
}

/// `ret = acl.rt.free_physical(handle)`.
#[pyfunction]
fn free_physical(handle: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's handle (the runtime refuses an unknown one).
    status(unsafe { raw::free_physical(runtime()?, ptr(handle)) })
}

/// `ret = acl.rt.map_mem(vir_ptr, size, offset, handle, flags)`.
#[pyfunction]
fn map_mem(vir_ptr: usize, size: usize, offset: usize, handle: usize, flags: u64) -> PyResult<i32> {
    // SAFETY: pyACL's contract: a reserved range and a handle of the caller's.
    status(unsafe { raw::map_mem(runtime()?, ptr(vir_ptr), size, offset, ptr(handle), flags) })
}

/// `ret = acl.rt.unmap_mem(vir_ptr)`.
#[pyfunction]
fn unmap_mem(vir_ptr: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: a mapping of the caller's that nothing uses any more.
    status(unsafe { raw::unmap_mem(runtime()?, ptr(vir_ptr)) })
}

/// `granularity, ret = acl.rt.mem_get_allocation_granularity(prop, option)`.
#[pyfunction]
fn mem_get_allocation_granularity(prop: &Bound<'_, PyDict>, option: u32) -> PyResult<(usize, i32)> {
    let p = physical_prop(prop)?;
    out(raw::mem_get_allocation_granularity(runtime()?, &p, aclrtMemGranularityOptions(option)), 0)
}

/// `shareable_handle, ret = acl.rt.mem_export_to_shareable_handle(handle, handle_type, flags)`.
#[pyfunction]
fn mem_export_to_shareable_handle(handle: usize, handle_type: u32, flags: u64) -> PyResult<(u64, i32)> {
    // SAFETY: pyACL's contract: the caller's handle (the runtime refuses an unknown one).
    out(
        unsafe { raw::mem_export_to_shareable_handle(runtime()?, ptr(handle), aclrtMemHandleType(handle_type), flags) },
        0,
    )
}

/// `handle, ret = acl.rt.mem_import_from_shareable_handle(shareable_handle, device_id)`.
#[pyfunction]
fn mem_import_from_shareable_handle(shareable_handle: u64, device_id: i32) -> PyResult<(usize, i32)> {
    out_ptr(raw::mem_import_from_shareable_handle(runtime()?, shareable_handle, device_id))
}

/// `ret = acl.rt.mem_set_pid_to_shareable_handle(shareable_handle, pid)`: `pid` a list (or one int).
#[pyfunction]
fn mem_set_pid_to_shareable_handle(shareable_handle: u64, pid: Pids) -> PyResult<i32> {
    status(raw::mem_set_pid_to_shareable_handle(runtime()?, shareable_handle, &pid.to_vec()))
}

// ---- IPC memory ----

/// `key, ret = acl.rt.ipc_mem_get_export_key(dev_ptr, size, len, flag)`.
#[pyfunction]
fn ipc_mem_get_export_key(dev_ptr: usize, size: usize, len: usize, flag: u64) -> PyResult<(String, i32)> {
    // SAFETY: pyACL's contract: device memory of the caller's (the runtime refuses an unknown one).
    let r = unsafe { raw::ipc_mem_get_export_key_len(runtime()?, ptr(dev_ptr), size, len, flag) };
    out(r.map(|k| k.to_string()), String::new())
}

/// `ret = acl.rt.ipc_mem_set_import_pid(key, pid)`: `pid` a list (or one int).
#[pyfunction]
fn ipc_mem_set_import_pid(key: &str, pid: Pids) -> PyResult<i32> {
    let rt = runtime()?;
    status(self::key(key).and_then(|k| raw::ipc_mem_set_import_pid(rt, &k, &pid.to_vec())))
}

/// `dev_ptr, ret = acl.rt.ipc_mem_import_by_key(key, flags)`.
#[pyfunction]
fn ipc_mem_import_by_key(key: &str, flags: u64) -> PyResult<(usize, i32)> {
    let rt = runtime()?;
    out_ptr(self::key(key).and_then(|k| raw::ipc_mem_import_by_key(rt, &k, flags)))
}

/// `ret = acl.rt.ipc_mem_close(key)`.
#[pyfunction]
fn ipc_mem_close(key: &str) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: the caller no longer uses the memory (importers closed, for the exporter).
    status(self::key(key).and_then(|k| unsafe { raw::ipc_mem_close(rt, &k) }))
}

// ---- notify ----

/// `notify, ret = acl.rt.create_notify(flag)`.
#[pyfunction]
fn create_notify(flag: u64) -> PyResult<(usize, i32)> {
    out_ptr(raw::create_notify(runtime()?, flag))
}

/// `ret = acl.rt.destroy_notify(notify)`.
#[pyfunction]
fn destroy_notify(notify: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's notify (the runtime refuses an unknown one).
    status(unsafe { raw::destroy_notify(runtime()?, ptr(notify)) })
}

/// `ret = acl.rt.record_notify(notify, stream)`: stream 0 is the default stream.
#[pyfunction]
fn record_notify(notify: usize, stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's notify and stream.
    status(unsafe { raw::record_notify(runtime()?, ptr(notify), ptr(stream)) })
}

/// `ret = acl.rt.wait_and_reset_notify(notify, stream, timeout)`: `timeout` is passed to
/// `aclrtWaitAndResetNotify` as it is (0 waits for ever; the C API counts it in seconds, pyACL's page
/// says milliseconds).
#[pyfunction]
fn wait_and_reset_notify(notify: usize, stream: usize, timeout: u32) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's notify and stream.
    status(unsafe { raw::wait_and_reset_notify(runtime()?, ptr(notify), ptr(stream), timeout) })
}

/// `notify_id, ret = acl.rt.get_notify_id(notify)`.
#[pyfunction]
fn get_notify_id(notify: usize) -> PyResult<(u32, i32)> {
    // SAFETY: pyACL's contract: the caller's notify.
    out(unsafe { raw::get_notify_id(runtime()?, ptr(notify)) }, 0)
}

/// `key, ret = acl.rt.notify_get_export_key(notify, len, flags)`.
#[pyfunction]
fn notify_get_export_key(notify: usize, len: usize, flags: u64) -> PyResult<(String, i32)> {
    // SAFETY: pyACL's contract: the caller's notify.
    let r = unsafe { raw::notify_get_export_key_len(runtime()?, ptr(notify), len, flags) };
    out(r.map(|k| k.to_string()), String::new())
}

/// `ret = acl.rt.notify_set_import_pid(notify, pid)`: `pid` a list (or one int).
#[pyfunction]
fn notify_set_import_pid(notify: usize, pid: Pids) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's notify.
    status(unsafe { raw::notify_set_import_pid(runtime()?, ptr(notify), &pid.to_vec()) })
}

/// `notify, ret = acl.rt.notify_import_by_key(key, flags)`.
#[pyfunction]
fn notify_import_by_key(key: &str, flags: u64) -> PyResult<(usize, i32)> {
    let rt = runtime()?;
    out_ptr(self::key(key).and_then(|k| raw::notify_import_by_key(rt, &k, flags)))
}

// ---- run mode, device synchronisation, contexts ----

/// `mode, ret = acl.rt.get_run_mode()`: `ACL_DEVICE` (0) or `ACL_HOST` (1).
#[pyfunction]
fn get_run_mode() -> PyResult<(u32, i32)> {
    out(raw::get_run_mode(runtime()?).map(|m| m.0), 0)
}

/// `ret = acl.rt.synchronize_device()`: waits for every stream of the current device.
#[pyfunction]
fn synchronize_device(py: Python<'_>) -> PyResult<i32> {
    let rt = runtime()?;
    status(py.detach(|| raw::synchronize_device(rt)))
}

/// `context, ret = acl.rt.create_context(device_id)`: the new context is the thread's current one.
#[pyfunction]
fn create_context(device_id: i32) -> PyResult<(usize, i32)> {
    out_ptr(raw::create_context(runtime()?, device_id))
}

/// `ret = acl.rt.destroy_context(context)`.
#[pyfunction]
fn destroy_context(py: Python<'_>, context: usize) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: the caller's context (the runtime refuses an unknown one).
    status(py.detach(|| unsafe { raw::destroy_context(rt, ptr(context)) }))
}

/// `ret = acl.rt.set_context(context)`.
#[pyfunction]
fn set_context(context: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's context (the runtime refuses an unknown one).
    status(unsafe { raw::set_current_context(runtime()?, ptr(context)) })
}

/// `context, ret = acl.rt.get_context()`: the thread's current context.
#[pyfunction]
fn get_context() -> PyResult<(usize, i32)> {
    out_ptr(raw::get_current_context(runtime()?))
}

// ---- pointer attributes, memory access, stream memory operations ----

/// `attributes, ret = acl.rt.pointer_get_attributes(ptr)`: `attributes` is `aclrtPtrAttributes` as a
/// dict, `{"location": {"id": .., "type": ..}, "pageSize": ..}` (the C members, as pyACL's struct dicts
/// are named): type `ACL_MEM_LOCATION_TYPE_DEVICE` (1) with its device id, `..._HOST` (0) for
/// page-locked host memory, `..._UNREGISTERED` (2) for other host memory. `{}` on failure.
#[pyfunction]
fn pointer_get_attributes<'py>(py: Python<'py>, ptr: usize) -> PyResult<(Bound<'py, PyDict>, i32)> {
    let attrs = PyDict::new(py);
    match raw::pointer_get_attributes(runtime()?, ptr as *const c_void) {
        Ok(a) => {
            let location = PyDict::new(py);
            location.set_item("id", a.location.id)?;
            location.set_item("type", a.location.type_.0)?;
            attrs.set_item("location", location)?;
            attrs.set_item("pageSize", a.pageSize)?;
            Ok((attrs, 0))
        }
        Err(e) => Ok((attrs, code(e)?)),
    }
}

/// `ret = acl.rt.mem_set_access(vir_ptr, size, desc)`: `desc` a list of `aclrtMemAccessDesc` dicts,
/// `{"flags": ACL_RT_MEM_ACCESS_FLAGS_READWRITE, "location": {"id": 0, "type": ACL_MEM_LOCATION_TYPE_DEVICE}}`
/// (or one such dict). pyACL documents no `mem_set_access`; this is `aclrtMemSetAccess` in its convention.
#[pyfunction]
fn mem_set_access(vir_ptr: usize, size: usize, desc: &Bound<'_, PyAny>) -> PyResult<i32> {
    let descs = if desc.is_instance_of::<PyDict>() {
        vec![access_desc(desc)?]
    } else {
        desc.try_iter()
            .map_err(|_| PyTypeError::new_err("desc is a list of dicts of flags and location"))?
            .map(|d| access_desc(&d?))
            .collect::<PyResult<Vec<_>>>()?
    };
    // SAFETY: pyACL's contract: a mapping of the caller's (the runtime refuses an unknown one).
    status(unsafe { raw::mem_set_access(runtime()?, ptr(vir_ptr), size, &descs) })
}

/// `ret = acl.rt.value_write(dev_addr, value, flag, stream)`: queue a write of the 64-bit `value` at
/// `dev_addr` (device memory, 8-byte aligned); `flag` reserved, 0.
#[pyfunction]
fn value_write(dev_addr: usize, value: u64, flag: u32, stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: 8 bytes of the caller's device memory, live until the stream ran the write.
    status(unsafe { raw::value_write(runtime()?, ptr(dev_addr), value, flag, ptr(stream)) })
}

/// `ret = acl.rt.value_wait(dev_addr, value, flag, stream)`: queue a wait until the 64-bit word at
/// `dev_addr` meets `value` by `flag` (`ACL_STREAM_WAIT_VALUE_GEQ`, `_EQ`, `_AND`, `_NOR`).
#[pyfunction]
fn value_wait(dev_addr: usize, value: u64, flag: u32, stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: 8 bytes of the caller's device memory, live until the stream ran the wait.
    status(unsafe { raw::value_wait(runtime()?, ptr(dev_addr), value, flag, ptr(stream)) })
}

// ---- events and IPC events ----

/// `event, ret = acl.rt.create_event()`.
#[pyfunction]
fn create_event() -> PyResult<(usize, i32)> {
    out_ptr(raw::create_event(runtime()?))
}

/// `event, ret = acl.rt.create_event_with_flag(flag)`: `flag` of `ACL_EVENT_*`.
#[pyfunction]
fn create_event_with_flag(flag: u32) -> PyResult<(usize, i32)> {
    out_ptr(raw::create_event_with_flag(runtime()?, flag))
}

/// `event, ret = acl.rt.create_event_ex_with_flag(flag)`: `ACL_EVENT_IPC` makes an IPC event.
#[pyfunction]
fn create_event_ex_with_flag(flag: u32) -> PyResult<(usize, i32)> {
    out_ptr(raw::create_event_ex_with_flag(runtime()?, flag))
}

/// `ret = acl.rt.destroy_event(event)`.
#[pyfunction]
fn destroy_event(event: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's event (the runtime refuses an unknown one).
    status(unsafe { raw::destroy_event(runtime()?, ptr(event)) })
}

/// `ret = acl.rt.record_event(event, stream)`: stream 0 is the default stream.
#[pyfunction]
fn record_event(event: usize, stream: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's event and stream.
    status(unsafe { raw::record_event(runtime()?, ptr(event), ptr(stream)) })
}

/// `ret = acl.rt.stream_wait_event(stream, event)`.
#[pyfunction]
fn stream_wait_event(stream: usize, event: usize) -> PyResult<i32> {
    // SAFETY: pyACL's contract: the caller's stream and event.
    status(unsafe { raw::stream_wait_event(runtime()?, ptr(stream), ptr(event)) })
}

/// `ret = acl.rt.synchronize_event(event)`.
#[pyfunction]
fn synchronize_event(py: Python<'_>, event: usize) -> PyResult<i32> {
    let rt = runtime()?;
    // SAFETY: pyACL's contract: the caller's event.
    status(py.detach(|| unsafe { raw::synchronize_event(rt, ptr(event)) }))
}

/// `status, ret = acl.rt.query_event_status(event)`: `ACL_EVENT_RECORDED_STATUS_COMPLETE` (1) once the
/// latest record has completed, else `..._NOT_READY` (0).
#[pyfunction]
fn query_event_status(event: usize) -> PyResult<(u32, i32)> {
    // SAFETY: pyACL's contract: the caller's event.
    out(unsafe { raw::query_event_status(runtime()?, ptr(event)) }.map(u32::from), 0)
}

/// `ms, ret = acl.rt.event_elapsed_time(start, end)`: milliseconds (a float) between two completed records.
#[pyfunction]
fn event_elapsed_time(start: usize, end: usize) -> PyResult<(f32, i32)> {
    // SAFETY: pyACL's contract: the caller's events.
    out(unsafe { raw::event_elapsed_time(runtime()?, ptr(start), ptr(end)) }, 0.0)
}

/// `handle, ret = acl.rt.ipc_get_event_handle(event)`: the 64-byte `aclrtIpcEventHandle` as bytes.
#[pyfunction]
fn ipc_get_event_handle<'py>(py: Python<'py>, event: usize) -> PyResult<(Bound<'py, PyBytes>, i32)> {
    // SAFETY: pyACL's contract: the caller's event.
    match unsafe { raw::ipc_get_event_handle(runtime()?, ptr(event)) } {
        Ok(h) => Ok((PyBytes::new(py, &h.reserved.map(|b| b as u8)), 0)),
        Err(e) => Ok((PyBytes::new(py, &[]), code(e)?)),
    }
}

/// `event, ret = acl.rt.ipc_open_event_handle(handle)`: `handle` the 64 bytes another process exported;
/// any other length is `ACL_ERROR_INVALID_PARAM` (it cannot be an `aclrtIpcEventHandle`).
#[pyfunction]
fn ipc_open_event_handle(handle: Vec<u8>) -> PyResult<(usize, i32)> {
    let rt = runtime()?;
    let h = IpcEventHandle::from_bytes(&handle)
        .map(|h| aclrtIpcEventHandle { reserved: h.0.map(|b| b as std::ffi::c_char) });
    out_ptr(h.and_then(|h| raw::ipc_open_event_handle(rt, h)))
}

// ---- sharing physical memory, version 2 ----

const SHARE_DEFAULT: u32 = aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT.0;
const SHARE_FABRIC: u32 = aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC.0;

/// A V2 shareable handle as Python holds it: an int (`ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT`) or the 128
/// bytes of an `aclrtMemFabricHandle` (`..._FABRIC`).
#[derive(FromPyObject)]
enum Shareable {
    Int(u64),
    Bytes(Vec<u8>),
}

/// The memory a V2 call reads a shareable handle of `share_type` from: the `uint64_t` of an int, the
/// `aclrtMemFabricHandle` of 128 bytes. An int given for FABRIC, bytes for DEFAULT, or bytes not 128
/// long cannot be the struct the C API reads: `InvalidArgument` (so `ACL_ERROR_INVALID_PARAM`). Another
/// share type takes either, for the runtime to judge.
enum V2Handle {
    Default(u64),
    Fabric(aclrtMemFabricHandle),
}

impl V2Handle {
    fn new(s: &Shareable, share_type: u32) -> aclshm::Result<V2Handle> {
        match s {
            Shareable::Int(v) if share_type != SHARE_FABRIC => Ok(V2Handle::Default(*v)),
            Shareable::Bytes(b) if share_type != SHARE_DEFAULT => match <[u8; 128]>::try_from(b.as_slice()) {
                Ok(data) => Ok(V2Handle::Fabric(aclrtMemFabricHandle { data })),
                Err(_) => Err(Error::InvalidArgument(format!("a fabric handle is 128 bytes, not {}", b.len()))),
            },
            Shareable::Int(_) => {
                Err(Error::InvalidArgument("a FABRIC shareable handle is 128 bytes, not an int".into()))
            }
            Shareable::Bytes(_) => {
                Err(Error::InvalidArgument("a DEFAULT shareable handle is an int, not bytes".into()))
            }
        }
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        match self {
            V2Handle::Default(v) => std::ptr::from_mut(v).cast(),
            V2Handle::Fabric(f) => std::ptr::from_mut(f).cast(),
        }
    }
}

/// Call entry point `$name` of runtime `$rt` directly, its status as a `Result` (as `aclshm::raw` does):
/// for the forms of the V2 calls that `raw` has no function for (a DEFAULT pid whitelist, import flags,
/// share types it does not name).
macro_rules! direct {
    ($rt:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let rt: &Runtime = $rt;
        match rt.fns().$name {
            None => Err(Error::Unsupported { call: stringify!($name) }),
            // SAFETY: the table holds this function with its declared C signature, and the arguments meet
            // its C contract: out-pointers and handle buffers this function owns, and what the Python caller
            // vouched for (pyACL's contract).
            Some(f) => match AclError::from_code(unsafe { f($($arg),*) }) {
                None => Ok(()),
                Some(source) => Err(Error::Acl { call: stringify!($name), source }),
            },
        }
    }};
}

/// `shareable, ret = acl.rt.mem_export_to_shareable_handle_v2(handle, flags, share_type)`: an int for
/// `ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT` (0 on failure), the 128 bytes of a fabric handle for `..._FABRIC`
/// (`b""` on failure).
#[pyfunction]
fn mem_export_to_shareable_handle_v2(
    py: Python<'_>,
    handle: usize,
    flags: u64,
    share_type: u32,
) -> PyResult<(Py<PyAny>, i32)> {
    let rt = runtime()?;
    let h: aclrtDrvMemHandle = ptr(handle);
    if share_type == SHARE_DEFAULT {
        // SAFETY: pyACL's contract: the caller's handle (the runtime refuses an unknown one).
        let (v, ret) = out(unsafe { raw::mem_export_to_shareable_handle_v2(rt, h, flags) }, 0)?;
        return Ok((v.into_py_any(py)?, ret));
    }
    let r = if share_type == SHARE_FABRIC {
        // SAFETY: as above.
        unsafe { raw::mem_export_to_fabric_handle(rt, h, flags) }
    } else {
        // A share type aclshm does not know: room for the largest handle, for the runtime to refuse.
        let mut f = aclrtMemFabricHandle { data: [0; 128] };
        let p: *mut aclrtMemFabricHandle = &mut f;
        direct!(rt, aclrtMemExportToShareableHandleV2(h, flags, aclrtMemSharedHandleType(share_type), p.cast()))
            .map(|()| f)
    };
    Ok(match r {
        Ok(f) => (PyBytes::new(py, &f.data).into_any().unbind(), 0),
        Err(e) => (PyBytes::new(py, &[]).into_any().unbind(), code(e)?),
    })
}

/// `handle, ret = acl.rt.mem_import_from_shareable_handle_v2(shareable, share_type, flags)`: on the
/// current device; `shareable` an int (DEFAULT) or 128 bytes (FABRIC).
#[pyfunction]
fn mem_import_from_shareable_handle_v2(shareable: Shareable, share_type: u32, flags: u64) -> PyResult<(usize, i32)> {
    let rt = runtime()?;
    let mut v2 = match V2Handle::new(&shareable, share_type) {
        Ok(v2) => v2,
        Err(e) => return out_ptr(Err(e)),
    };
    let r = match &v2 {
        V2Handle::Default(v) if share_type == SHARE_DEFAULT && flags == 0 => {
            raw::mem_import_from_shareable_handle_v2(rt, *v)
        }
        V2Handle::Fabric(f) if share_type == SHARE_FABRIC && flags == 0 => raw::mem_import_from_fabric_handle(rt, f),
        _ => {
            let mut h: aclrtDrvMemHandle = std::ptr::null_mut();
            let p = v2.as_mut_ptr();
            direct!(rt, aclrtMemImportFromShareableHandleV2(p, aclrtMemSharedHandleType(share_type), flags, &mut h))
                .map(|()| h)
        }
    };
    out_ptr(r)
}

/// `ret = acl.rt.mem_set_pid_to_shareable_handle_v2(shareable, share_type, pid)`: `pid` a list (or one
/// int).
#[pyfunction]
fn mem_set_pid_to_shareable_handle_v2(shareable: Shareable, share_type: u32, pid: Pids) -> PyResult<i32> {
    let rt = runtime()?;
    let mut pids = pid.to_vec();
    let mut v2 = match V2Handle::new(&shareable, share_type) {
        Ok(v2) => v2,
        Err(e) => return status(Err(e)),
    };
    if let V2Handle::Fabric(f) = &v2
        && share_type == SHARE_FABRIC
    {
        return status(raw::mem_set_pid_to_fabric_handle(rt, f, &pids));
    }
    let p = v2.as_mut_ptr();
    status(direct!(
        rt,
        aclrtMemSetPidToShareableHandleV2(p, aclrtMemSharedHandleType(share_type), pids.as_mut_ptr(), pids.len())
    ))
}

// ---- acl.util ----

/// `ptr = acl.util.bytes_to_ptr(data)`: the address of `data`'s buffer (bytes, bytearray, memoryview,
/// an array), valid while `data` lives and is not resized. As pyACL documents, a memcpy may write into it.
#[pyfunction]
fn bytes_to_ptr(data: &Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(HostBuffer::readable(data)?.addr())
}

/// `ptr = acl.util.numpy_to_ptr(array)`: as `bytes_to_ptr`, for a C-contiguous array.
#[pyfunction]
fn numpy_to_ptr(array: &Bound<'_, PyAny>) -> PyResult<usize> {
    bytes_to_ptr(array)
}

/// `ptr, data_out = acl.util.numpy_contiguous_to_ptr(data_in)`: `data_in` a numpy array; `data_out` the
/// array itself when it is C-contiguous, else a C-contiguous copy (`numpy.ascontiguousarray`, as pyACL's
/// `PyArray_GETCONTIGUOUS`), and `ptr` the address of `data_out`'s data, valid while `data_out` lives. Not
/// an array: `ValueError`, as in pyACL.
#[pyfunction]
fn numpy_contiguous_to_ptr<'py>(data_in: &Bound<'py, PyAny>) -> PyResult<(usize, Bound<'py, PyAny>)> {
    let not_an_array = || PyValueError::new_err("numpy_contiguous_to_ptr: needs an ndarray as argument");
    // No numpy, no ndarray: the package does not depend on numpy.
    let np = data_in.py().import("numpy").map_err(|_| not_an_array())?;
    if !data_in.is_instance(&np.getattr("ndarray")?)? {
        return Err(not_an_array());
    }
    let data_out = np.call_method1("ascontiguousarray", (data_in,))?;
    let ptr = HostBuffer::readable(&data_out)?.addr();
    Ok((ptr, data_out))
}

/// `data = acl.util.ptr_to_bytes(ptr, size)`: a copy of `size` bytes of host memory at `ptr`.
#[pyfunction]
fn ptr_to_bytes<'py>(py: Python<'py>, ptr: usize, size: usize) -> PyResult<Bound<'py, PyBytes>> {
    if ptr == 0 && size > 0 {
        return Err(PyValueError::new_err("ptr_to_bytes: a NULL pointer"));
    }
    if size == 0 {
        return Ok(PyBytes::new(py, &[]));
    }
    // SAFETY: pyACL's contract: host memory readable for `size` bytes at `ptr`.
    let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, size) };
    Ok(PyBytes::new(py, data))
}

macro_rules! add {
    ($m:expr, $($f:ident),* $(,)?) => {
        $( $m.add_function(wrap_pyfunction!($f, $m)?)?; )*
    };
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let acl = PyModule::new(py, "acl")?;
    add!(&acl, init, finalize, get_version);
    let rt = PyModule::new(py, "rt")?;
    add!(
        &rt,
        set_device,
        reset_device,
        reset_device_force,
        get_device,
        get_device_count,
        device_get_bare_tgid,
        device_can_access_peer,
        device_enable_peer_access,
        device_disable_peer_access,
        get_mem_info,
        create_stream,
        destroy_stream,
        destroy_stream_force,
        synchronize_stream,
        malloc,
        free,
        malloc_host,
        free_host,
        memcpy,
        memcpy_async,
        memset,
        reserve_mem_address,
        release_mem_address,
        malloc_physical,
        free_physical,
        map_mem,
        unmap_mem,
        mem_get_allocation_granularity,
        mem_export_to_shareable_handle,
        mem_import_from_shareable_handle,
        mem_set_pid_to_shareable_handle,
        ipc_mem_get_export_key,
        ipc_mem_set_import_pid,
        ipc_mem_import_by_key,
        ipc_mem_close,
        create_notify,
        destroy_notify,
        record_notify,
        wait_and_reset_notify,
        get_notify_id,
        notify_get_export_key,
        notify_set_import_pid,
        notify_import_by_key,
        get_run_mode,
        synchronize_device,
        create_context,
        destroy_context,
        set_context,
        get_context,
        pointer_get_attributes,
        mem_set_access,
        value_write,
        value_wait,
        create_event,
        create_event_with_flag,
        create_event_ex_with_flag,
        destroy_event,
        record_event,
        stream_wait_event,
        synchronize_event,
        query_event_status,
        event_elapsed_time,
        ipc_get_event_handle,
        ipc_open_event_handle,
        mem_export_to_shareable_handle_v2,
        mem_import_from_shareable_handle_v2,
        mem_set_pid_to_shareable_handle_v2,
    );
    let util = PyModule::new(py, "util")?;
    add!(&util, bytes_to_ptr, numpy_to_ptr, numpy_contiguous_to_ptr, ptr_to_bytes);
    m.add("_acl", acl)?;
    m.add("_acl_rt", rt)?;
    m.add("_acl_util", util)?;
    m.add("_ACL_CONSTANTS", constants(py)?)?;
    Ok(())
}

/// The constants pyACL's pages give by name, with their values from `aclshm-sys` (pyACL programs define
/// them themselves; `aclshm.acl` offers them too).
fn constants(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let c: &[(&str, i64)] = &[
        ("ACL_SUCCESS", i64::from(sys::ACL_SUCCESS)),
        ("ACL_MEM_MALLOC_HUGE_FIRST", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST.0)),
        ("ACL_MEM_MALLOC_HUGE_ONLY", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_ONLY.0)),
        ("ACL_MEM_MALLOC_NORMAL_ONLY", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_NORMAL_ONLY.0)),
        ("ACL_MEM_MALLOC_HUGE_FIRST_P2P", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST_P2P.0)),
        ("ACL_MEM_MALLOC_HUGE_ONLY_P2P", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_ONLY_P2P.0)),
        ("ACL_MEM_MALLOC_NORMAL_ONLY_P2P", i64::from(sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_NORMAL_ONLY_P2P.0)),
        ("ACL_MEMCPY_HOST_TO_HOST", i64::from(sys::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST.0)),
        ("ACL_MEMCPY_HOST_TO_DEVICE", i64::from(sys::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE.0)),
        ("ACL_MEMCPY_DEVICE_TO_HOST", i64::from(sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST.0)),
        ("ACL_MEMCPY_DEVICE_TO_DEVICE", i64::from(sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE.0)),
        ("ACL_MEMCPY_DEFAULT", i64::from(sys::aclrtMemcpyKind::ACL_MEMCPY_DEFAULT.0)),
        ("ACL_DDR_MEM", i64::from(sys::aclrtMemAttr::ACL_DDR_MEM.0)),
        ("ACL_HBM_MEM", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM.0)),
        ("ACL_DDR_MEM_HUGE", i64::from(sys::aclrtMemAttr::ACL_DDR_MEM_HUGE.0)),
        ("ACL_DDR_MEM_NORMAL", i64::from(sys::aclrtMemAttr::ACL_DDR_MEM_NORMAL.0)),
        ("ACL_HBM_MEM_HUGE", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_HUGE.0)),
        ("ACL_HBM_MEM_NORMAL", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_NORMAL.0)),
        ("ACL_DDR_MEM_P2P_HUGE", i64::from(sys::aclrtMemAttr::ACL_DDR_MEM_P2P_HUGE.0)),
        ("ACL_DDR_MEM_P2P_NORMAL", i64::from(sys::aclrtMemAttr::ACL_DDR_MEM_P2P_NORMAL.0)),
        ("ACL_HBM_MEM_P2P_HUGE", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_P2P_HUGE.0)),
        ("ACL_HBM_MEM_P2P_NORMAL", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_P2P_NORMAL.0)),
        ("ACL_HBM_MEM_HUGE1G", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_HUGE1G.0)),
        ("ACL_HBM_MEM_P2P_HUGE1G", i64::from(sys::aclrtMemAttr::ACL_HBM_MEM_P2P_HUGE1G.0)),
        ("ACL_MEM_HANDLE_TYPE_NONE", i64::from(sys::aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE.0)),
        ("ACL_MEM_ALLOCATION_TYPE_PINNED", i64::from(sys::aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED.0)),
        ("ACL_MEM_LOCATION_TYPE_HOST", i64::from(sys::aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST.0)),
        ("ACL_MEM_LOCATION_TYPE_DEVICE", i64::from(sys::aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE.0)),
        (
            "ACL_MEM_LOCATION_TYPE_UNREGISTERED",
            i64::from(sys::aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_UNREGISTERED.0),
        ),
        ("ACL_MEM_LOCATION_TYPE_HOST_NUMA", i64::from(sys::aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST_NUMA.0)),
        ("ACL_RT_MEM_ACCESS_FLAGS_NONE", i64::from(aclrtMemAccessFlags::ACL_RT_MEM_ACCESS_FLAGS_NONE.0)),
        ("ACL_RT_MEM_ACCESS_FLAGS_READ", i64::from(aclrtMemAccessFlags::ACL_RT_MEM_ACCESS_FLAGS_READ.0)),
        ("ACL_RT_MEM_ACCESS_FLAGS_READWRITE", i64::from(aclrtMemAccessFlags::ACL_RT_MEM_ACCESS_FLAGS_READWRITE.0)),
        (
            "ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM",
            i64::from(sys::aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM.0),
        ),
        (
            "ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED",
            i64::from(sys::aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED.0),
        ),
        ("ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT", sys::ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT as i64),
        (
            "ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION",
            sys::ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION as i64,
        ),
        ("ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT", sys::ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT as i64),
        ("ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS", sys::ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS as i64),
        ("ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT", sys::ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT as i64),
        (
            "ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION",
            sys::ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION as i64,
        ),
        ("ACL_RT_NOTIFY_IMPORT_FLAG_DEFAULT", sys::ACL_RT_NOTIFY_IMPORT_FLAG_DEFAULT as i64),
        ("ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS", sys::ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS as i64),
        ("ACL_DEVICE", i64::from(sys::aclrtRunMode::ACL_DEVICE.0)),
        ("ACL_HOST", i64::from(sys::aclrtRunMode::ACL_HOST.0)),
        ("ACL_EVENT_SYNC", i64::from(sys::ACL_EVENT_SYNC)),
        ("ACL_EVENT_CAPTURE_STREAM_PROGRESS", i64::from(sys::ACL_EVENT_CAPTURE_STREAM_PROGRESS)),
        ("ACL_EVENT_TIME_LINE", i64::from(sys::ACL_EVENT_TIME_LINE)),
        ("ACL_EVENT_DEVICE_USE_ONLY", i64::from(sys::ACL_EVENT_DEVICE_USE_ONLY)),
        ("ACL_EVENT_EXTERNAL", i64::from(sys::ACL_EVENT_EXTERNAL)),
        ("ACL_EVENT_IPC", i64::from(sys::ACL_EVENT_IPC)),
        (
            "ACL_EVENT_RECORDED_STATUS_NOT_READY",
            i64::from(sys::aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_NOT_READY.0),
        ),
        (
            "ACL_EVENT_RECORDED_STATUS_COMPLETE",
            i64::from(sys::aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_COMPLETE.0),
        ),
        ("ACL_STREAM_WAIT_VALUE_GEQ", i64::from(sys::ACL_STREAM_WAIT_VALUE_GEQ)),
        ("ACL_STREAM_WAIT_VALUE_EQ", i64::from(sys::ACL_STREAM_WAIT_VALUE_EQ)),
        ("ACL_STREAM_WAIT_VALUE_AND", i64::from(sys::ACL_STREAM_WAIT_VALUE_AND)),
        ("ACL_STREAM_WAIT_VALUE_NOR", i64::from(sys::ACL_STREAM_WAIT_VALUE_NOR)),
        ("ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT", i64::from(SHARE_DEFAULT)),
        ("ACL_MEM_SHARE_HANDLE_TYPE_FABRIC", i64::from(SHARE_FABRIC)),
    ];
    for (k, v) in c {
        d.set_item(k, v)?;
    }
    Ok(d)
}
