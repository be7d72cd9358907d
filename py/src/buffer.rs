//! Python buffers (bytes, bytearray, memoryview, numpy arrays: anything with the buffer protocol) as
//! host memory for copies to and from the device.

use std::ffi::c_void;

use aclshm::Runtime;
use aclshm::sys::aclrtMemcpyKind;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{err, runtime};

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

    /// Run `f` on the device address at `offset` (the caller checked that the copy fits), holding what
    /// keeps the memory valid meanwhile. Called with the interpreter released.
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T>;
}

/// Copy `data` (any buffer) into `r` at `offset`.
pub(crate) fn write<R: Region>(py: Python<'_>, r: &R, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
    let src = HostBuffer::readable(data)?;
    let (addr, n, rt, device) = (src.addr(), src.len(), runtime()?, r.device());
    check_range(R::WHAT, offset, n as u64, r.size())?;
    at(py, r, offset, |dst| {
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
    let out = at(py, r, offset, |src| {
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
    at(py, r, offset, |src| {
        // SAFETY: a held writable host buffer of `n` bytes from device memory the region keeps valid.
        unsafe { copy(rt, device, addr, src, n, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST) }
    })?;
    Ok(n)
}

/// [`Region::with_addr`] with the interpreter released, its error raised as its exception.
fn at<T: Send>(
    py: Python<'_>,
    r: &impl Region,
    offset: u64,
    f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| r.with_addr(offset, f)).map_err(err)
}

/// `write`, `read` and `readinto` for a `#[pyclass]` whose objects copy to and from [`Region`]s: the
/// region is `$region`, an expression of the object (`$this`) and of the key argument the methods take
/// first, if any; `$what` names it in the docstrings. For example
/// `copy_methods!(Mirror, "the allocation `desc` names", |m, desc: &str| &m.region(desc)?)` gives
/// `Mirror.write(desc, data, offset=0)`, `Mirror.read(desc, size=None, offset=0)` and
/// `Mirror.readinto(desc, buf, offset=0)`. A `#[pymethods]` block of its own (PyO3's
/// `multiple-pymethods`), since macros cannot expand inside one.
macro_rules! copy_methods {
    ($class:ty, $what:literal, |$this:ident $(, $key:ident: $kty:ty)?| $region:expr) => {
        #[::pyo3::pymethods]
        impl $class {
            #[doc = concat!(
                "Copy `data` (bytes, bytearray, memoryview, a contiguous numpy array, ...) into ",
                $what,
                " at `offset`."
            )]
            #[pyo3(signature = ($($key,)? data, offset=0))]
            fn write(
                &self,
                py: ::pyo3::Python<'_>,
                $($key: $kty,)?
                data: &::pyo3::Bound<'_, ::pyo3::PyAny>,
                offset: u64,
            ) -> ::pyo3::PyResult<()> {
                let $this = self;
                $crate::buffer::write(py, $region, data, offset)
            }

            #[doc = concat!("Copy `size` bytes (default: to the end) at `offset` of ", $what, ": bytes.")]
            #[pyo3(signature = ($($key,)? size=None, offset=0))]
            fn read<'py>(
                &self,
                py: ::pyo3::Python<'py>,
                $($key: $kty,)?
                size: Option<u64>,
                offset: u64,
            ) -> ::pyo3::PyResult<::pyo3::Bound<'py, ::pyo3::types::PyBytes>> {
                let $this = self;
                $crate::buffer::read(py, $region, size, offset)
            }

            #[doc = concat!(
                "Copy into `buf` (a writable buffer) from `offset` of ",
                $what,
                ", as many bytes as it holds; returns that count."
            )]
            #[pyo3(signature = ($($key,)? buf, offset=0))]
            fn readinto(
                &self,
                py: ::pyo3::Python<'_>,
                $($key: $kty,)?
                buf: &::pyo3::Bound<'_, ::pyo3::PyAny>,
                offset: u64,
            ) -> ::pyo3::PyResult<usize> {
                let $this = self;
                $crate::buffer::readinto(py, $region, buf, offset)
            }
        }
    };
}
pub(crate) use copy_methods;
