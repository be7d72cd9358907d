//! The thin layer: one fallible function per ACL call, through a [`Runtime`].
//!
//! Each function calls exactly one entry point, turns a non-zero status into [`Error::Acl`] (naming the
//! call), a missing entry point into [`Error::Unsupported`], and returns out-parameters as values. It adds
//! no policy; the safe types above it do. `#[doc(alias)]` names the C function.
//!
//! The contract, once for all (as rustix states its own): a function is `unsafe` when the runtime would
//! act on something the caller must vouch for, that is a raw device or host pointer (valid for the bytes
//! the call touches, and not in use elsewhere in a way the call would break), or a handle (`aclrtStream`,
//! `aclrtNotify`, `aclrtDrvMemHandle`) that must be one this process got from the same runtime and has not
//! released. A real runtime may crash on a bad one where the simulator returns an error. Functions that
//! take only values are safe. All of them count their call on the runtime (see
//! [`Runtime::call_count`]).

use std::ffi::{CStr, CString, c_char, c_void};
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;

use aclshm_sys::{
    Entry, aclError, aclrtContext, aclrtDrvMemHandle, aclrtEvent, aclrtEventRecordedStatus, aclrtIpcEventHandle,
    aclrtMemAccessDesc, aclrtMemAttr, aclrtMemFabricHandle, aclrtMemGranularityOptions, aclrtMemHandleType,
    aclrtMemMallocPolicy, aclrtMemSharedHandleType, aclrtMemcpyBatchAttr, aclrtMemcpyKind, aclrtNotify,
    aclrtPhysicalMemProp, aclrtPtrAttributes, aclrtRunMode, aclrtStream, aclshmSimInfo, aclshmSimProcess,
    aclshmSimStats,
};

use crate::error::{AclError, Error, Result};
use crate::runtime::Runtime;

fn check(call: &'static str, code: aclError) -> Result<()> {
    match AclError::from_code(code) {
        None => Ok(()),
        Some(source) => Err(Error::Acl { call, source }),
    }
}

/// Call entry point `$name` of runtime `$rt` with `$args`, check its status.
macro_rules! call {
    ($rt:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let rt: &Runtime = $rt;
        let f = rt.fns().$name.ok_or(Error::Unsupported { call: stringify!($name) })?;
        rt.count_call(Entry::$name as usize);
        // SAFETY: the table holds this function with its declared C signature (AclFns's contract), and the
        // function using `call!` passes arguments meeting its C contract: valid out-pointers it owns, and
        // what its own caller vouched for (the module contract).
        let code = unsafe { f($($arg),*) };
        check(stringify!($name), code)
    }};
}

/// Call `f` with an out-parameter that starts as `value`, and return what the call left in it.
fn out<T>(mut value: T, f: impl FnOnce(&mut T) -> Result<()>) -> Result<T> {
    f(&mut value)?;
    Ok(value)
}

/// A key for IPC memory or an IPC notify: up to 64 characters, stored NUL-terminated in the 65 bytes
/// the ACL functions take.
///
/// ```
/// use aclshm::raw::IpcKey;
/// let k: IpcKey = "0000abcd".parse().unwrap();
/// assert_eq!(k.as_str(), "0000abcd");
/// assert!("".parse::<IpcKey>().is_err());
/// assert!("x".repeat(65).parse::<IpcKey>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcKey([u8; IpcKey::LEN]);

impl IpcKey {
    /// The size of a key buffer: 64 characters and a NUL.
    pub const LEN: usize = 65;

    fn empty() -> IpcKey {
        IpcKey([0; IpcKey::LEN])
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(IpcKey::LEN - 1);
        std::str::from_utf8(&self.0[..n]).unwrap_or("")
    }

    /// The NUL-terminated key, for the C functions.
    pub fn as_ptr(&self) -> *const c_char {
        self.0.as_ptr().cast()
    }

    /// A key as the runtime wrote it into a buffer; refused unless it is 1 to 64 ASCII characters.
    fn from_buffer(buf: &[u8]) -> Result<IpcKey> {
        match buf.iter().position(|&b| b == 0) {
            Some(n) if n > 0 && n < IpcKey::LEN && buf[..n].is_ascii() => {
                let mut key = IpcKey::empty();
                key.0[..n].copy_from_slice(&buf[..n]);
                Ok(key)
            }
            _ => Err(Error::InvalidArgument("the runtime returned a malformed key".to_string())),
        }
    }
}

/// A zeroed buffer for the runtime to write a key into: at least [`IpcKey::LEN`] bytes, whatever length
/// the runtime is told, so that a runtime writing a whole key stays inside it.
struct KeyBuffer(Vec<u8>);

impl KeyBuffer {
    fn new(len: usize) -> KeyBuffer {
        KeyBuffer(vec![0; len.max(IpcKey::LEN)])
    }

    fn as_mut_ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }

    fn key(&self) -> Result<IpcKey> {
        IpcKey::from_buffer(&self.0)
    }
}

impl FromStr for IpcKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<IpcKey> {
        if s.is_empty() || s.len() >= IpcKey::LEN || !s.is_ascii() || s.contains('\0') {
            return Err(Error::InvalidArgument(format!("an IPC key is 1 to 64 ASCII characters, not {s:?}")));
        }
        let mut k = IpcKey::empty();
        k.0[..s.len()].copy_from_slice(s.as_bytes());
        Ok(k)
    }
}

impl fmt::Display for IpcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for IpcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpcKey({})", self.as_str())
    }
}

// ---- Initialisation and devices ----

/// Initialise the runtime (once per process); `config` is a JSON configuration file's path.
#[doc(alias = "aclInit")]
pub fn init(rt: &Runtime, config: Option<&CStr>) -> Result<()> {
    call!(rt, aclInit(config.map_or(std::ptr::null(), CStr::as_ptr)))
}

/// Finalise the runtime.
#[doc(alias = "aclFinalize")]
pub fn finalize(rt: &Runtime) -> Result<()> {
    call!(rt, aclFinalize())
}

/// The runtime's version, (major, minor, patch).
#[doc(alias = "aclrtGetVersion")]
pub fn get_version(rt: &Runtime) -> Result<(i32, i32, i32)> {
    let (mut a, mut b, mut c) = (0, 0, 0);
    call!(rt, aclrtGetVersion(&mut a, &mut b, &mut c))?;
    Ok((a, b, c))
}

/// Make `device` the calling thread's current device.
#[doc(alias = "aclrtSetDevice")]
pub fn set_device(rt: &Runtime, device: i32) -> Result<()> {
    call!(rt, aclrtSetDevice(device))
}

/// Drop one reference to `device`.
#[doc(alias = "aclrtResetDevice")]
pub fn reset_device(rt: &Runtime, device: i32) -> Result<()> {
    call!(rt, aclrtResetDevice(device))
}

/// Release `device`'s resources in this process.
#[doc(alias = "aclrtResetDeviceForce")]
pub fn reset_device_force(rt: &Runtime, device: i32) -> Result<()> {
    call!(rt, aclrtResetDeviceForce(device))
}

/// The calling thread's current device.
#[doc(alias = "aclrtGetDevice")]
pub fn get_device(rt: &Runtime) -> Result<i32> {
    out(0, |d| call!(rt, aclrtGetDevice(d)))
}

/// The number of devices.
#[doc(alias = "aclrtGetDeviceCount")]
pub fn get_device_count(rt: &Runtime) -> Result<u32> {
    out(0, |n| call!(rt, aclrtGetDeviceCount(n)))
}

/// Whether `device` can access `peer`'s memory.
#[doc(alias = "aclrtDeviceCanAccessPeer")]
pub fn device_can_access_peer(rt: &Runtime, device: i32, peer: i32) -> Result<bool> {
    Ok(out(0, |can| call!(rt, aclrtDeviceCanAccessPeer(can, device, peer)))? != 0)
}

/// Let the current device access `peer`'s memory (`flags` must be 0).
#[doc(alias = "aclrtDeviceEnablePeerAccess")]
pub fn device_enable_peer_access(rt: &Runtime, peer: i32, flags: u32) -> Result<()> {
    call!(rt, aclrtDeviceEnablePeerAccess(peer, flags))
}

/// Undo [`device_enable_peer_access`].
#[doc(alias = "aclrtDeviceDisablePeerAccess")]
pub fn device_disable_peer_access(rt: &Runtime, peer: i32) -> Result<()> {
    call!(rt, aclrtDeviceDisablePeerAccess(peer))
}

/// This process's pid as the host sees it: what whitelists take.
#[doc(alias = "aclrtDeviceGetBareTgid")]
pub fn device_get_bare_tgid(rt: &Runtime) -> Result<i32> {
    out(0, |pid| call!(rt, aclrtDeviceGetBareTgid(pid)))
}

/// (free, total) bytes of the current device's memory of kind `attr`.
#[doc(alias = "aclrtGetMemInfo")]
pub fn get_mem_info(rt: &Runtime, attr: aclrtMemAttr) -> Result<(usize, usize)> {
    let (mut free, mut total) = (0, 0);
    call!(rt, aclrtGetMemInfo(attr, &mut free, &mut total))?;
    Ok((free, total))
}

// ---- Streams ----

/// Create a stream on the current device.
#[doc(alias = "aclrtCreateStream")]
pub fn create_stream(rt: &Runtime) -> Result<aclrtStream> {
    out(std::ptr::null_mut(), |s| call!(rt, aclrtCreateStream(s)))
}

/// Destroy a stream after its queued work.
///
/// # Safety
/// 1. `stream` is a live stream of this runtime, not used again (module contract).
#[doc(alias = "aclrtDestroyStream")]
pub unsafe fn destroy_stream(rt: &Runtime, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtDestroyStream(stream))
}

/// Destroy a stream at once, dropping queued work.
///
/// # Safety
/// 1. As for [`destroy_stream`].
#[doc(alias = "aclrtDestroyStreamForce")]
pub unsafe fn destroy_stream_force(rt: &Runtime, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtDestroyStreamForce(stream))
}

/// Wait for a stream's queued work (NULL: the current device's default stream).
///
/// # Safety
/// 1. `stream` is NULL or a live stream of this runtime.
#[doc(alias = "aclrtSynchronizeStream")]
pub unsafe fn synchronize_stream(rt: &Runtime, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtSynchronizeStream(stream))
}

// ---- Memory ----

/// Allocate device memory on the current device.
#[doc(alias = "aclrtMalloc")]
pub fn malloc(rt: &Runtime, size: usize, policy: aclrtMemMallocPolicy) -> Result<*mut c_void> {
    out(std::ptr::null_mut(), |p| call!(rt, aclrtMalloc(p, size, policy)))
}

/// Free memory from [`malloc`].
///
/// # Safety
/// 1. `ptr` came from [`malloc`] of this runtime and is not used again.
#[doc(alias = "aclrtFree")]
pub unsafe fn free(rt: &Runtime, ptr: *mut c_void) -> Result<()> {
    call!(rt, aclrtFree(ptr))
}

/// Allocate page-locked host memory.
#[doc(alias = "aclrtMallocHost")]
pub fn malloc_host(rt: &Runtime, size: usize) -> Result<*mut c_void> {
    out(std::ptr::null_mut(), |p| call!(rt, aclrtMallocHost(p, size)))
}

/// Free memory from [`malloc_host`].
///
/// # Safety
/// 1. `ptr` came from [`malloc_host`] of this runtime and is not used again.
#[doc(alias = "aclrtFreeHost")]
pub unsafe fn free_host(rt: &Runtime, ptr: *mut c_void) -> Result<()> {
    call!(rt, aclrtFreeHost(ptr))
}

/// Copy `count` bytes to `dst` (room for `dest_max`) from `src`.
///
/// # Safety
/// 1. Host pointers among `dst` and `src` are valid for `count` bytes; device ones are this runtime's.
#[doc(alias = "aclrtMemcpy")]
pub unsafe fn memcpy(
    rt: &Runtime,
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> Result<()> {
    call!(rt, aclrtMemcpy(dst, dest_max, src, count, kind))
}

/// Queue a copy on `stream` (NULL: the default stream).
///
/// # Safety
/// 1. As for [`memcpy`], until the stream has run the copy; `stream` is NULL or a live stream.
#[doc(alias = "aclrtMemcpyAsync")]
pub unsafe fn memcpy_async(
    rt: &Runtime,
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> Result<()> {
    call!(rt, aclrtMemcpyAsync(dst, dest_max, src, count, kind, stream))
}

/// Set `count` bytes of device memory to `value` (room for `max_count`).
///
/// # Safety
/// 1. `ptr` is device memory of this runtime.
#[doc(alias = "aclrtMemset")]
pub unsafe fn memset(rt: &Runtime, ptr: *mut c_void, max_count: usize, value: i32, count: usize) -> Result<()> {
    call!(rt, aclrtMemset(ptr, max_count, value, count))
}

// ---- Virtual memory management ----

/// Reserve `size` bytes of device address space (`alignment` 0; `flags` 0 or 1 for huge pages).
///
/// # Safety
/// 1. `expect_ptr` is NULL, or an address range of `size` bytes this process does not use.
#[doc(alias = "aclrtReserveMemAddress")]
pub unsafe fn reserve_mem_address(
    rt: &Runtime,
    size: usize,
    alignment: usize,
    expect_ptr: *mut c_void,
    flags: u64,
) -> Result<*mut c_void> {
    out(std::ptr::null_mut(), |p| call!(rt, aclrtReserveMemAddress(p, size, alignment, expect_ptr, flags)))
}

/// Release a range from [`reserve_mem_address`].
///
/// # Safety
/// 1. `ptr` is the start of a reserved range of this runtime, with nothing mapped, not used again.
#[doc(alias = "aclrtReleaseMemAddress")]
pub unsafe fn release_mem_address(rt: &Runtime, ptr: *mut c_void) -> Result<()> {
    call!(rt, aclrtReleaseMemAddress(ptr))
}

/// Allocate physical device memory.
#[doc(alias = "aclrtMallocPhysical")]
pub fn malloc_physical(
    rt: &Runtime,
    size: usize,
    prop: &aclrtPhysicalMemProp,
    flags: u64,
) -> Result<aclrtDrvMemHandle> {
    out(std::ptr::null_mut(), |h| call!(rt, aclrtMallocPhysical(h, size, prop, flags)))
}

/// Free physical memory (its release waits for its last unmap).
///
/// # Safety
/// 1. `handle` is a live physical memory handle of this runtime, not used again.
#[doc(alias = "aclrtFreePhysical")]
pub unsafe fn free_physical(rt: &Runtime, handle: aclrtDrvMemHandle) -> Result<()> {
    call!(rt, aclrtFreePhysical(handle))
}

/// Map a whole physical allocation at `ptr` (`offset` and `flags` 0).
///
/// # Safety
/// 1. `ptr` lies in a range reserved through this runtime and `handle` is a live handle of it.
#[doc(alias = "aclrtMapMem")]
pub unsafe fn map_mem(
    rt: &Runtime,
    ptr: *mut c_void,
    size: usize,
    offset: usize,
    handle: aclrtDrvMemHandle,
    flags: u64,
) -> Result<()> {
    call!(rt, aclrtMapMem(ptr, size, offset, handle, flags))
}

/// Unmap what [`map_mem`] mapped at `ptr`.
///
/// # Safety
/// 1. Nothing uses the mapping any more (queued device work included).
#[doc(alias = "aclrtUnmapMem")]
pub unsafe fn unmap_mem(rt: &Runtime, ptr: *mut c_void) -> Result<()> {
    call!(rt, aclrtUnmapMem(ptr))
}

/// Grant access to a mapping.
///
/// # Safety
/// 1. `ptr` and `size` are those of a mapping made through this runtime.
#[doc(alias = "aclrtMemSetAccess")]
pub unsafe fn mem_set_access(rt: &Runtime, ptr: *mut c_void, size: usize, desc: &[aclrtMemAccessDesc]) -> Result<()> {
    call!(rt, aclrtMemSetAccess(ptr, size, desc.as_ptr().cast_mut(), desc.len()))
}

/// The allocation granularity for memory of `prop`.
#[doc(alias = "aclrtMemGetAllocationGranularity")]
pub fn mem_get_allocation_granularity(
    rt: &Runtime,
    prop: &aclrtPhysicalMemProp,
    option: aclrtMemGranularityOptions,
) -> Result<usize> {
    let mut g = 0;
    let mut p = *prop;
    call!(rt, aclrtMemGetAllocationGranularity(&mut p, option, &mut g))?;
    Ok(g)
}

/// Export a physical allocation as a shareable handle (once per handle).
///
/// # Safety
/// 1. `handle` is a live physical memory handle of this runtime.
#[doc(alias = "aclrtMemExportToShareableHandle")]
pub unsafe fn mem_export_to_shareable_handle(
    rt: &Runtime,
    handle: aclrtDrvMemHandle,
    handle_type: aclrtMemHandleType,
    flags: u64,
) -> Result<u64> {
    out(0, |s| call!(rt, aclrtMemExportToShareableHandle(handle, handle_type, flags, s)))
}

/// Import a shareable handle from another process as a handle on `device`.
#[doc(alias = "aclrtMemImportFromShareableHandle")]
pub fn mem_import_from_shareable_handle(rt: &Runtime, shareable: u64, device: i32) -> Result<aclrtDrvMemHandle> {
    out(std::ptr::null_mut(), |h| call!(rt, aclrtMemImportFromShareableHandle(shareable, device, h)))
}

/// Whitelist importer pids (from [`device_get_bare_tgid`]) for a shareable handle.
#[doc(alias = "aclrtMemSetPidToShareableHandle")]
pub fn mem_set_pid_to_shareable_handle(rt: &Runtime, shareable: u64, pids: &[i32]) -> Result<()> {
    let mut pids = pids.to_vec();
    call!(rt, aclrtMemSetPidToShareableHandle(shareable, pids.as_mut_ptr(), pids.len()))
}

// ---- IPC memory by key ----

/// Export a whole [`malloc`] allocation under a key.
///
/// # Safety
/// 1. `ptr` is device memory of this runtime.
#[doc(alias = "aclrtIpcMemGetExportKey")]
pub unsafe fn ipc_mem_get_export_key(rt: &Runtime, ptr: *mut c_void, size: usize, flags: u64) -> Result<IpcKey> {
    // SAFETY: as the caller vouched (precondition 1).
    unsafe { ipc_mem_get_export_key_len(rt, ptr, size, IpcKey::LEN, flags) }
}

/// [`ipc_mem_get_export_key`], telling the runtime that the key buffer holds `len` bytes (pyACL's `len`
/// argument): the runtime refuses a length below [`IpcKey::LEN`].
///
/// # Safety
/// 1. `ptr` is device memory of this runtime.
#[doc(alias = "aclrtIpcMemGetExportKey")]
pub unsafe fn ipc_mem_get_export_key_len(
    rt: &Runtime,
    ptr: *mut c_void,
    size: usize,
    len: usize,
    flags: u64,
) -> Result<IpcKey> {
    let mut buf = KeyBuffer::new(len);
    call!(rt, aclrtIpcMemGetExportKey(ptr, size, buf.as_mut_ptr(), len, flags))?;
    buf.key()
}

/// Whitelist importer pids for a key.
#[doc(alias = "aclrtIpcMemSetImportPid")]
pub fn ipc_mem_set_import_pid(rt: &Runtime, key: &IpcKey, pids: &[i32]) -> Result<()> {
    let mut pids = pids.to_vec();
    call!(rt, aclrtIpcMemSetImportPid(key.as_ptr(), pids.as_mut_ptr(), pids.len()))
}

/// Import memory exported by another process under `key`.
#[doc(alias = "aclrtIpcMemImportByKey")]
pub fn ipc_mem_import_by_key(rt: &Runtime, key: &IpcKey, flags: u64) -> Result<*mut c_void> {
    out(std::ptr::null_mut(), |p| call!(rt, aclrtIpcMemImportByKey(p, key.as_ptr(), flags)))
}

/// Close a key: one import in an importer, the export in the exporter.
///
/// # Safety
/// 1. Nothing uses the imported memory any more (in an importer); importers closed first (in the exporter).
#[doc(alias = "aclrtIpcMemClose")]
pub unsafe fn ipc_mem_close(rt: &Runtime, key: &IpcKey) -> Result<()> {
    call!(rt, aclrtIpcMemClose(key.as_ptr()))
}

// ---- Notify ----

/// Create a notify on the current device.
#[doc(alias = "aclrtCreateNotify")]
pub fn create_notify(rt: &Runtime, flag: u64) -> Result<aclrtNotify> {
    out(std::ptr::null_mut(), |n| call!(rt, aclrtCreateNotify(n, flag)))
}

/// Destroy a notify (in every process that created or imported it).
///
/// # Safety
/// 1. `notify` is a live notify of this runtime, with no queued task on it, not used again.
#[doc(alias = "aclrtDestroyNotify")]
pub unsafe fn destroy_notify(rt: &Runtime, notify: aclrtNotify) -> Result<()> {
    call!(rt, aclrtDestroyNotify(notify))
}

/// Queue a record of `notify` on `stream`.
///
/// # Safety
/// 1. `notify` is a live notify and `stream` NULL or a live stream, of this runtime.
#[doc(alias = "aclrtRecordNotify")]
pub unsafe fn record_notify(rt: &Runtime, notify: aclrtNotify, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtRecordNotify(notify, stream))
}

/// Queue a wait for `notify`, then its reset, on `stream`; `timeout` in seconds, 0 for ever.
///
/// # Safety
/// 1. As for [`record_notify`].
#[doc(alias = "aclrtWaitAndResetNotify")]
pub unsafe fn wait_and_reset_notify(
    rt: &Runtime,
    notify: aclrtNotify,
    stream: aclrtStream,
    timeout: u32,
) -> Result<()> {
    call!(rt, aclrtWaitAndResetNotify(notify, stream, timeout))
}

/// The notify's id on its device.
///
/// # Safety
/// 1. `notify` is a live notify of this runtime.
#[doc(alias = "aclrtGetNotifyId")]
pub unsafe fn get_notify_id(rt: &Runtime, notify: aclrtNotify) -> Result<u32> {
    out(0, |id| call!(rt, aclrtGetNotifyId(notify, id)))
}

/// Export a notify under a key.
///
/// # Safety
/// 1. `notify` is a live notify of this runtime.
#[doc(alias = "aclrtNotifyGetExportKey")]
pub unsafe fn notify_get_export_key(rt: &Runtime, notify: aclrtNotify, flags: u64) -> Result<IpcKey> {
    // SAFETY: as the caller vouched (precondition 1).
    unsafe { notify_get_export_key_len(rt, notify, IpcKey::LEN, flags) }
}

/// [`notify_get_export_key`], telling the runtime that the key buffer holds `len` bytes (pyACL's `len`
/// argument): the runtime refuses a length below [`IpcKey::LEN`].
///
/// # Safety
/// 1. `notify` is a live notify of this runtime.
#[doc(alias = "aclrtNotifyGetExportKey")]
pub unsafe fn notify_get_export_key_len(rt: &Runtime, notify: aclrtNotify, len: usize, flags: u64) -> Result<IpcKey> {
    let mut buf = KeyBuffer::new(len);
    call!(rt, aclrtNotifyGetExportKey(notify, buf.as_mut_ptr(), len, flags))?;
    buf.key()
}

/// Whitelist an importer pid for an exported notify (one per call).
///
/// # Safety
/// 1. `notify` is a live notify of this runtime.
#[doc(alias = "aclrtNotifySetImportPid")]
pub unsafe fn notify_set_import_pid(rt: &Runtime, notify: aclrtNotify, pids: &[i32]) -> Result<()> {
    let mut pids = pids.to_vec();
    call!(rt, aclrtNotifySetImportPid(notify, pids.as_mut_ptr(), pids.len()))
}

/// Import a notify exported by another process.
#[doc(alias = "aclrtNotifyImportByKey")]
pub fn notify_import_by_key(rt: &Runtime, key: &IpcKey, flags: u64) -> Result<aclrtNotify> {
    out(std::ptr::null_mut(), |n| call!(rt, aclrtNotifyImportByKey(n, key.as_ptr(), flags)))
}

// ---- Run mode, device synchronisation, contexts ----

/// Whether this process runs on the device or on a host.
#[doc(alias = "aclrtGetRunMode")]
pub fn get_run_mode(rt: &Runtime) -> Result<aclrtRunMode> {
    out(aclrtRunMode::ACL_HOST, |m| call!(rt, aclrtGetRunMode(m)))
}

/// Wait until all work queued on the current device's streams has run.
#[doc(alias = "aclrtSynchronizeDevice")]
pub fn synchronize_device(rt: &Runtime) -> Result<()> {
    call!(rt, aclrtSynchronizeDevice())
}

/// Create a context on `device` and make it the calling thread's current context.
#[doc(alias = "aclrtCreateContext")]
pub fn create_context(rt: &Runtime, device: i32) -> Result<aclrtContext> {
    out(std::ptr::null_mut(), |c| call!(rt, aclrtCreateContext(c, device)))
}

/// Destroy a context from [`create_context`].
///
/// # Safety
/// 1. `context` is a live context of this runtime from [`create_context`], not used again.
#[doc(alias = "aclrtDestroyContext")]
pub unsafe fn destroy_context(rt: &Runtime, context: aclrtContext) -> Result<()> {
    call!(rt, aclrtDestroyContext(context))
}

/// Make `context` the calling thread's current context.
///
/// # Safety
/// 1. `context` is a live context of this runtime (from [`create_context`] or [`get_current_context`]).
#[doc(alias = "aclrtSetCurrentContext")]
pub unsafe fn set_current_context(rt: &Runtime, context: aclrtContext) -> Result<()> {
    call!(rt, aclrtSetCurrentContext(context))
}

/// The calling thread's current context.
#[doc(alias = "aclrtGetCurrentContext")]
pub fn get_current_context(rt: &Runtime) -> Result<aclrtContext> {
    out(std::ptr::null_mut(), |c| call!(rt, aclrtGetCurrentContext(c)))
}

// ---- Pointer attributes, batch copies, stream memory operations ----

/// Where `ptr` lives: device memory (and which device), page-locked host memory or other memory. Safe: the
/// runtime looks the address up; it never reads what it points to.
#[doc(alias = "aclrtPointerGetAttributes")]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // an address to look up, never dereferenced
pub fn pointer_get_attributes(rt: &Runtime, ptr: *const c_void) -> Result<aclrtPtrAttributes> {
    out(aclrtPtrAttributes::default(), |a| call!(rt, aclrtPointerGetAttributes(ptr, a)))
}

/// One copy of [`memcpy_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchCopy {
    /// Destination and its capacity.
    pub dst: *mut c_void,
    /// Bytes writable at `dst`.
    pub dest_max: usize,
    /// Source.
    pub src: *const c_void,
    /// Bytes to copy.
    pub size: usize,
}

/// Copy a batch of ranges between host and device memory; `attrs[i]` describes the copies from
/// `attrs_indexes[i]` on. On failure, the index of the copy that failed, if the runtime names one.
///
/// # Safety
/// 1. Each copy's host pointers are valid for its bytes and its device pointers are this runtime's.
#[doc(alias = "aclrtMemcpyBatch")]
pub unsafe fn memcpy_batch(
    rt: &Runtime,
    copies: &[BatchCopy],
    attrs: &[aclrtMemcpyBatchAttr],
    attrs_indexes: &[usize],
) -> std::result::Result<(), (Error, Option<usize>)> {
    if attrs.len() != attrs_indexes.len() {
        let e = Error::InvalidArgument("attrs and attrs_indexes differ in length".to_string());
        return Err((e, None));
    }
    let mut dsts: Vec<*mut c_void> = copies.iter().map(|c| c.dst).collect();
    let mut maxes: Vec<usize> = copies.iter().map(|c| c.dest_max).collect();
    let mut srcs: Vec<*mut c_void> = copies.iter().map(|c| c.src.cast_mut()).collect();
    let mut sizes: Vec<usize> = copies.iter().map(|c| c.size).collect();
    let mut attrs = attrs.to_vec();
    let mut idx = attrs_indexes.to_vec();
    let mut fail = usize::MAX;
    let r = (|| {
        call!(
            rt,
            aclrtMemcpyBatch(
                dsts.as_mut_ptr(),
                maxes.as_mut_ptr(),
                srcs.as_mut_ptr(),
                sizes.as_mut_ptr(),
                copies.len(),
                attrs.as_mut_ptr(),
                idx.as_mut_ptr(),
                attrs.len(),
                &mut fail
            )
        )
    })();
    r.map_err(|e| (e, (fail != usize::MAX).then_some(fail)))
}

/// Queue a write of `value` to the 64-bit word of device memory at `addr` on `stream`.
///
/// # Safety
/// 1. `addr` is this runtime's device memory, 8 bytes, until the stream ran the write; `stream` is NULL or
///    a live stream of this runtime.
#[doc(alias = "aclrtValueWrite")]
pub unsafe fn value_write(rt: &Runtime, addr: *mut c_void, value: u64, flag: u32, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtValueWrite(addr, value, flag, stream))
}

/// Queue a wait on `stream` until the 64-bit word at `addr` meets `value` (`ACL_STREAM_WAIT_VALUE_*`).
///
/// # Safety
/// 1. As for [`value_write`].
#[doc(alias = "aclrtValueWait")]
pub unsafe fn value_wait(rt: &Runtime, addr: *mut c_void, value: u64, flag: u32, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtValueWait(addr, value, flag, stream))
}

// ---- Events and IPC events ----

/// Create an event on the current device (synchronising, timed).
#[doc(alias = "aclrtCreateEvent")]
pub fn create_event(rt: &Runtime) -> Result<aclrtEvent> {
    out(std::ptr::null_mut(), |e| call!(rt, aclrtCreateEvent(e)))
}

/// Create an event with `ACL_EVENT_*` flags.
#[doc(alias = "aclrtCreateEventWithFlag")]
pub fn create_event_with_flag(rt: &Runtime, flag: u32) -> Result<aclrtEvent> {
    out(std::ptr::null_mut(), |e| call!(rt, aclrtCreateEventWithFlag(e, flag)))
}

/// Create a reusable event with `ACL_EVENT_*` flags (`ACL_EVENT_IPC` for one other processes open).
#[doc(alias = "aclrtCreateEventExWithFlag")]
pub fn create_event_ex_with_flag(rt: &Runtime, flag: u32) -> Result<aclrtEvent> {
    out(std::ptr::null_mut(), |e| call!(rt, aclrtCreateEventExWithFlag(e, flag)))
}

/// Destroy an event (an opened IPC event in each process that opened it).
///
/// # Safety
/// 1. `event` is a live event of this runtime, not used again.
#[doc(alias = "aclrtDestroyEvent")]
pub unsafe fn destroy_event(rt: &Runtime, event: aclrtEvent) -> Result<()> {
    call!(rt, aclrtDestroyEvent(event))
}

/// Queue a record of `event` on `stream`.
///
/// # Safety
/// 1. `event` is a live event and `stream` NULL or a live stream, of this runtime.
#[doc(alias = "aclrtRecordEvent")]
pub unsafe fn record_event(rt: &Runtime, event: aclrtEvent, stream: aclrtStream) -> Result<()> {
    call!(rt, aclrtRecordEvent(event, stream))
}

/// Queue a wait on `stream` for the event's latest record.
///
/// # Safety
/// 1. As for [`record_event`].
#[doc(alias = "aclrtStreamWaitEvent")]
pub unsafe fn stream_wait_event(rt: &Runtime, stream: aclrtStream, event: aclrtEvent) -> Result<()> {
    call!(rt, aclrtStreamWaitEvent(stream, event))
}

/// Block until the event's latest record has completed.
///
/// # Safety
/// 1. `event` is a live event of this runtime.
#[doc(alias = "aclrtSynchronizeEvent")]
pub unsafe fn synchronize_event(rt: &Runtime, event: aclrtEvent) -> Result<()> {
    call!(rt, aclrtSynchronizeEvent(event))
}

/// Whether the event's latest record has completed.
///
/// # Safety
/// 1. `event` is a live event of this runtime.
#[doc(alias = "aclrtQueryEventStatus")]
pub unsafe fn query_event_status(rt: &Runtime, event: aclrtEvent) -> Result<bool> {
    let s = out(aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_NOT_READY, |s| {
        call!(rt, aclrtQueryEventStatus(event, s))
    })?;
    Ok(s == aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_COMPLETE)
}

/// Milliseconds between the completions of two recorded, timed events.
///
/// # Safety
/// 1. Both are live events of this runtime.
#[doc(alias = "aclrtEventElapsedTime")]
pub unsafe fn event_elapsed_time(rt: &Runtime, start: aclrtEvent, end: aclrtEvent) -> Result<f32> {
    out(0.0, |ms| call!(rt, aclrtEventElapsedTime(ms, start, end)))
}

/// The IPC handle of an event created with `ACL_EVENT_IPC`.
///
/// # Safety
/// 1. `event` is a live event of this runtime.
#[doc(alias = "aclrtIpcGetEventHandle")]
pub unsafe fn ipc_get_event_handle(rt: &Runtime, event: aclrtEvent) -> Result<aclrtIpcEventHandle> {
    out(aclrtIpcEventHandle { reserved: [0; 64] }, |h| call!(rt, aclrtIpcGetEventHandle(event, h)))
}

/// Open an event another process exported.
#[doc(alias = "aclrtIpcOpenEventHandle")]
pub fn ipc_open_event_handle(rt: &Runtime, handle: aclrtIpcEventHandle) -> Result<aclrtEvent> {
    out(std::ptr::null_mut(), |e| call!(rt, aclrtIpcOpenEventHandle(handle, e)))
}

// ---- Sharing physical memory, version 2 (fabric handles) ----

/// Export a physical allocation as a fabric handle (importable on other servers of a super node).
///
/// # Safety
/// 1. `handle` is a live physical memory handle of this runtime.
#[doc(alias = "aclrtMemExportToShareableHandleV2")]
pub unsafe fn mem_export_to_fabric_handle(
    rt: &Runtime,
    handle: aclrtDrvMemHandle,
    flags: u64,
) -> Result<aclrtMemFabricHandle> {
    out(aclrtMemFabricHandle { data: [0; 128] }, |h| {
        let p: *mut aclrtMemFabricHandle = h;
        call!(
            rt,
            aclrtMemExportToShareableHandleV2(
                handle,
                flags,
                aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC,
                p.cast()
            )
        )
    })
}

/// Export a physical allocation with the V2 call as a plain (DEFAULT, one-server) 64-bit handle.
///
/// # Safety
/// 1. As for [`mem_export_to_fabric_handle`].
#[doc(alias = "aclrtMemExportToShareableHandleV2")]
pub unsafe fn mem_export_to_shareable_handle_v2(rt: &Runtime, handle: aclrtDrvMemHandle, flags: u64) -> Result<u64> {
    out(0u64, |h| {
        let p: *mut u64 = h;
        call!(
            rt,
            aclrtMemExportToShareableHandleV2(
                handle,
                flags,
                aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT,
                p.cast()
            )
        )
    })
}

/// Import a fabric handle on the current device.
#[doc(alias = "aclrtMemImportFromShareableHandleV2")]
pub fn mem_import_from_fabric_handle(rt: &Runtime, fabric: &aclrtMemFabricHandle) -> Result<aclrtDrvMemHandle> {
    let mut f = *fabric;
    let p: *mut aclrtMemFabricHandle = &mut f;
    out(std::ptr::null_mut(), |h| {
        call!(
            rt,
            aclrtMemImportFromShareableHandleV2(
                p.cast(),
                aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC,
                0,
                h
            )
        )
    })
}

/// Import a plain 64-bit handle with the V2 call, on the current device.
#[doc(alias = "aclrtMemImportFromShareableHandleV2")]
pub fn mem_import_from_shareable_handle_v2(rt: &Runtime, shareable: u64) -> Result<aclrtDrvMemHandle> {
    let mut v = shareable;
    let p: *mut u64 = &mut v;
    out(std::ptr::null_mut(), |h| {
        call!(
            rt,
            aclrtMemImportFromShareableHandleV2(
                p.cast(),
                aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT,
                0,
                h
            )
        )
    })
}

/// Whitelist importer pids for a fabric handle.
#[doc(alias = "aclrtMemSetPidToShareableHandleV2")]
pub fn mem_set_pid_to_fabric_handle(rt: &Runtime, fabric: &aclrtMemFabricHandle, pids: &[i32]) -> Result<()> {
    let mut f = *fabric;
    let p: *mut aclrtMemFabricHandle = &mut f;
    let mut pids = pids.to_vec();
    call!(
        rt,
        aclrtMemSetPidToShareableHandleV2(
            p.cast(),
            aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC,
            pids.as_mut_ptr(),
            pids.len()
        )
    )
}

// ---- Simulator extensions (Error::Unsupported on a real runtime) ----

/// The simulator's description.
#[doc(alias = "aclshmSimGetInfo")]
pub fn sim_get_info(rt: &Runtime) -> Result<aclshmSimInfo> {
    out(aclshmSimInfo::default(), |info| call!(rt, aclshmSimGetInfo(info)))
}

/// The simulator's directory.
#[doc(alias = "aclshmSimGetDir")]
pub fn sim_get_dir(rt: &Runtime) -> Result<PathBuf> {
    let mut needed = 0usize;
    let mut buf = vec![0u8; 256];
    loop {
        match call!(rt, aclshmSimGetDir(buf.as_mut_ptr().cast(), buf.len(), &mut needed)) {
            Ok(()) => break,
            Err(Error::Acl { .. }) if needed > buf.len() => buf.resize(needed, 0),
            Err(e) => return Err(e),
        }
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(n);
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// Live simulator objects, in the directory and in this process.
#[doc(alias = "aclshmSimGetStats")]
pub fn sim_get_stats(rt: &Runtime) -> Result<aclshmSimStats> {
    out(aclshmSimStats::default(), |s| call!(rt, aclshmSimGetStats(s)))
}

/// How many times this process called the named ACL function, as the simulator counted.
#[doc(alias = "aclshmSimGetCallCount")]
pub fn sim_get_call_count(rt: &Runtime, func: &str) -> Result<u64> {
    let f = CString::new(func).map_err(|_| Error::InvalidArgument(format!("{func:?} holds a NUL")))?;
    out(0, |n| call!(rt, aclshmSimGetCallCount(f.as_ptr(), n)))
}

/// Make the `nth` call from now of `func` (and the `times - 1` after it) fail with `code`.
#[doc(alias = "aclshmSimInjectFault")]
pub fn sim_inject_fault(rt: &Runtime, func: &str, nth: u64, times: u64, code: AclError) -> Result<()> {
    let f = CString::new(func).map_err(|_| Error::InvalidArgument(format!("{func:?} holds a NUL")))?;
    call!(rt, aclshmSimInjectFault(f.as_ptr(), nth, times, code.code()))
}

/// Disarm every injected fault.
#[doc(alias = "aclshmSimClearFaults")]
pub fn sim_clear_faults(rt: &Runtime) -> Result<()> {
    call!(rt, aclshmSimClearFaults())
}

/// Release what dead processes left in the simulator; returns how many there were.
#[doc(alias = "aclshmSimReclaim")]
pub fn sim_reclaim(rt: &Runtime) -> Result<u32> {
    out(0, |n| call!(rt, aclshmSimReclaim(n)))
}

/// The processes attached to the simulator directory and what each holds, dead ones included until
/// reclaimed. Reclaims nothing.
#[doc(alias = "aclshmSimListProcesses")]
pub fn sim_list_processes(rt: &Runtime) -> Result<Vec<aclshmSimProcess>> {
    loop {
        let mut n = 0usize;
        call!(rt, aclshmSimListProcesses(std::ptr::null_mut(), 0, &mut n))?;
        let mut v = vec![aclshmSimProcess::default(); n + 4];
        let mut got = 0usize;
        call!(rt, aclshmSimListProcesses(v.as_mut_ptr(), v.len(), &mut got))?;
        // More processes attached between the two calls than the slack: ask again.
        if got <= v.len() {
            v.truncate(got);
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_entry_point_is_unsupported() {
        // A library without the simulator's extensions: a real CANN, here a table with nothing in it.
        let rt = crate::runtime::tests_support::empty();
        match get_device_count(&rt) {
            Err(Error::Unsupported { call }) => assert_eq!(call, "aclrtGetDeviceCount"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(rt.call_count("aclrtGetDeviceCount"), Some(0), "a missing function is not called");
    }

    #[test]
    fn keys_parse_and_print() {
        let k: IpcKey = "0123456789abcdef".parse().unwrap();
        assert_eq!(k.to_string(), "0123456789abcdef");
        assert_eq!(format!("{k:?}"), "IpcKey(0123456789abcdef)");
        assert!("bad\0key".parse::<IpcKey>().is_err());
        assert!("é".parse::<IpcKey>().is_err());
        assert!(IpcKey::from_buffer(&[0; IpcKey::LEN]).is_err());
        assert!(IpcKey::from_buffer(&[b'a'; IpcKey::LEN]).is_err(), "no NUL");
        let mut long = [b'a'; 80];
        long[70] = 0;
        assert!(IpcKey::from_buffer(&long).is_err(), "a key over 64 characters");
        let mut short = [0u8; 80];
        short[..3].copy_from_slice(b"abc");
        assert_eq!(IpcKey::from_buffer(&short).unwrap().as_str(), "abc", "a longer buffer than a key needs");
    }
}
