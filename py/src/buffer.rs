//! Python buffers (bytes, bytearray, memoryview, numpy arrays: anything with the buffer protocol) as
//! host memory for copies to and from the device.

use std::ffi::c_void;

use aclshm::Runtime;
use aclshm::sys::aclrtMemcpyKind;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::runtime;

/// A C-contiguous buffer held (exported) while it is in use: its object cannot be resized meanwhile.
pub(crate) struct HostBuffer(PyUntypedBuffer);

impl HostBuffer {
    /// A buffer to read from.
    pub(crate) fn readable(obj: &Bound<'_, PyAny>) -> PyResult<HostBuffer> {
        let b = PyUntypedBuffer::get(obj)?;
        if !b.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "the buffer is not C-contiguous (copy it first, e.g. numpy.ascontiguousarray)",
            ));
        }
        Ok(HostBuffer(b))
    }

    /// A buffer to write into.
    pub(crate) fn writable(obj: &Bound<'_, PyAny>) -> PyResult<HostBuffer> {
        let b = HostBuffer::readable(obj)?;
        if b.0.readonly() {
            return Err(PyBufferError::new_err("the buffer is read-only (pass a bytearray or a writable array)"));
        }
        Ok(b)
    }

    /// Its address.
    pub(crate) fn addr(&self) -> usize {
        self.0.buf_ptr() as usize
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len_bytes()
    }
}

/// Where a copy of `len` bytes at `offset` lands in a region of `size` bytes, refused if it does not fit.
pub(crate) fn check_range(what: &str, offset: u64, len: u64, size: u64) -> PyResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PyValueError::new_err(format!(
            "{len} bytes at offset {offset} do not fit in the {size} bytes of the {what}"
        ))),
    }
}

/// Copy `len` bytes between host and device memory with `device` current (for callers that released the
/// interpreter and hold what keeps both sides valid).
///
/// # Safety
/// 1. `dst` and `src` are valid for `len` bytes: a host buffer held by the caller, and device memory of
///    this runtime that stays mapped until the copy returns.
pub(crate) unsafe fn copy(
    rt: &Runtime,
    device: i32,
    dst: usize,
    src: usize,
    len: usize,
    kind: aclrtMemcpyKind,
) -> aclshm::Result<()> {
    if len == 0 {
        return Ok(());
    }
    rt.on_device(device, || {
        // SAFETY: valid for `len` bytes (precondition 1).
        unsafe { aclshm::raw::memcpy(rt, dst as *mut c_void, len, src as *const c_void, len, kind) }
    })
}

/// Device memory that Python copies into and out of: an allocation, an allocation a mirror maps, a KV
/// block on either side. Each says how it keeps the memory valid for the length of a copy.
pub(crate) trait Region: Sync {
    /// What it is, for errors (`"allocation"`, `"block"`).
    const WHAT: &'static str;

    /// Its size in bytes.
    fn size(&self) -> u64;

    /// The device it is mapped on here.
    fn device(&self) -> i32;

    /// Run `f` on the device address at `offset` (the caller checked that `len` bytes fit), the
    /// interpreter released, holding what keeps the memory valid meanwhile.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T>;
}

/// Copy `data` (any buffer) into `r` at `offset`.
pub(crate) fn write<R: Region>(py: Python<'_>, r: &R, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
    let src = HostBuffer::readable(data)?;
    let (addr, n, rt, device) = (src.addr(), src.len(), runtime()?, r.device());
    check_range(R::WHAT, offset, n as u64, r.size())?;
    r.with_addr(py, offset, n as u64, |dst| {
        // SAFETY: a held host buffer of `n` bytes into device memory the region keeps valid, which holds them.
        unsafe { copy(rt, device, dst, addr, n, aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE) }
    })
}

/// Copy `size` bytes (default: to the end) at `offset` of `r` into new bytes.
pub(crate) fn read<'py, R: Region>(
    py: Python<'py>,
    r: &R,
    size: Option<u64>,
    offset: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let len = size.unwrap_or_else(|| r.size().saturating_sub(offset));
    let (rt, device) = (runtime()?, r.device());
    check_range(R::WHAT, offset, len, r.size())?;
    let out = r.with_addr(py, offset, len, |src| {
        let mut out = vec![0u8; len as usize];
        // SAFETY: a host buffer of `len` bytes from device memory the region keeps valid, which holds them.
        unsafe {
            copy(rt, device, out.as_mut_ptr() as usize, src, out.len(), aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST)?
        };
        Ok(out)
    })?;
    Ok(PyBytes::new(py, &out))
}

/// Fill `buf` (a writable buffer) from `offset` of `r`; returns the bytes copied.
pub(crate) fn readinto<R: Region>(py: Python<'_>, r: &R, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
    let dst = HostBuffer::writable(buf)?;
    let (addr, n, rt, device) = (dst.addr(), dst.len(), runtime()?, r.device());
    check_range(R::WHAT, offset, n as u64, r.size())?;
    r.with_addr(py, offset, n as u64, |src| {
        // SAFETY: a held writable host buffer of `n` bytes from device memory the region keeps valid.
        unsafe { copy(rt, device, addr, src, n, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST) }
    })?;
    Ok(n)
}
