//! `Pool`, `Allocation` and `Mirror`: a pool shared through the rendezvous, allocations named by
//! descriptors, and other processes' mirrors of it.
//!
//! Copies between Python buffers and device memory are checked against the allocation's bounds and
//! refused once the allocation is freed or the pool closed: a copy holds the allocation's and the pool's
//! locks for reading, a free or a close takes them for writing. Locks are taken, and everything done
//! under them, with the interpreter released (inside `Python::detach`, errors still Rust errors), so a
//! thread holding one never waits for the interpreter: no lock-order cycle with it.

use std::path::PathBuf;

use aclshm::share::MirrorStats;
use aclshm::vmm::PageSize;
use aclshm::{AllocDesc, Error, PoolConfig, PoolStats, ShareConfig, ShareDesc};
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffer::{self, Region};
use crate::held::Held;
use crate::{err, runtime};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pool>()?;
    m.add_class::<Allocation>()?;
    m.add_class::<Mirror>()?;
    Ok(())
}

/// A size argument: an int, or text such as `"20M"`, `"2MiB"`, `"1G"`.
#[derive(FromPyObject)]
pub(crate) enum Size {
    Int(u64),
    Text(String),
}

impl Size {
    pub(crate) fn bytes(&self, what: &str) -> PyResult<u64> {
        match self {
            Size::Int(n) => Ok(*n),
            Size::Text(s) => aclshm::parse_bytes(s).map_err(|e| err(Error::InvalidArgument(format!("{what}: {e}")))),
        }
    }
}

/// A pool configuration from keyword arguments over a base (a file's, or the defaults).
pub(crate) fn pool_config(
    mut c: PoolConfig,
    chunk_bytes: Option<Size>,
    reserve_bytes: Option<Size>,
    page: Option<&str>,
    trim_watermark: Option<Size>,
    reserve_chunks: Option<u32>,
) -> PyResult<PoolConfig> {
    if let Some(s) = chunk_bytes {
        c.chunk_bytes = s.bytes("chunk_bytes")?;
    }
    if let Some(s) = reserve_bytes {
        c.reserve_bytes = s.bytes("reserve_bytes")?;
    }
    if let Some(p) = page {
        c.page = PageSize::parse(p)
            .ok_or_else(|| err(Error::InvalidArgument(format!("page: {p:?} is not \"2M\" or \"1G\""))))?;
    }
    if let Some(s) = trim_watermark {
        c.trim_watermark = Some(s.bytes("trim_watermark")?);
    }
    if let Some(n) = reserve_chunks {
        c.reserve_chunks = n;
    }
    Ok(c)
}

pub(crate) fn share_config(validate_pids: bool, share_dir: Option<PathBuf>) -> ShareConfig {
    ShareConfig { validate_pids, dir: share_dir }
}

pub(crate) fn pool_stats<'py>(py: Python<'py>, s: &PoolStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("device", s.device)?;
    d.set_item("chunk_bytes", s.chunk_bytes)?;
    d.set_item("reserved_bytes", s.reserved_bytes)?;
    d.set_item("mapped_bytes", s.mapped_bytes)?;
    d.set_item("allocated_bytes", s.allocated_bytes)?;
    d.set_item("chunks", s.chunks)?;
    d.set_item("free_chunks", s.free_chunks)?;
    d.set_item("unknown_chunks", s.unknown_chunks)?;
    d.set_item("largest_free_extent", s.largest_free_extent)?;
    d.set_item("utilization", s.utilization)?;
    d.set_item("live_allocations", s.live_allocations)?;
    d.set_item("live_blocks", s.live_blocks)?;
    d.set_item("free_blocks", s.free_blocks)?;
    d.set_item("chunks_grown", s.chunks_grown)?;
    d.set_item("chunks_trimmed", s.chunks_trimmed)?;
    d.set_item("generation", s.generation)?;
    let calls = PyDict::new(py);
    for (name, n) in &s.runtime_calls {
        calls.set_item(name, n)?;
    }
    d.set_item("runtime_calls", calls)?;
    Ok(d)
}

pub(crate) fn mirror_stats<'py>(py: Python<'py>, s: &MirrorStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("chunks", s.chunks)?;
    d.set_item("generation", s.generation)?;
    d.set_item("imports", s.imports)?;
    Ok(d)
}

/// A pool's state as Python sees it: open, or closed (everything released).
pub(crate) struct Gate(RwLock<bool>);

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate(RwLock::new(true))
    }

    /// Run `f` while the gate stays open (many at once); `Closed` if it is shut.
    pub(crate) fn read<T>(&self, f: impl FnOnce() -> aclshm::Result<T>) -> aclshm::Result<T> {
        let g = self.0.read();
        if !*g {
            return Err(Error::Closed);
        }
        f()
    }

    /// Run `f` alone (nothing else under the gate), while it stays open; `Closed` if it is shut.
    pub(crate) fn write<T>(&self, f: impl FnOnce() -> aclshm::Result<T>) -> aclshm::Result<T> {
        let g = self.0.write();
        if !*g {
            return Err(Error::Closed);
        }
        f()
    }

    /// Shut the gate once nothing runs under it, running `close` then; false if it was shut already.
    pub(crate) fn shut(&self, close: impl FnOnce() -> aclshm::Result<()>) -> aclshm::Result<bool> {
        let mut g = self.0.write();
        if !*g {
            return Ok(false);
        }
        *g = false;
        close().map(|()| true)
    }

    pub(crate) fn is_open(&self) -> bool {
        *self.0.read()
    }
}

/// A pool of device memory: reserves a virtual range once, grows and trims by physical chunks, and can
/// be shared with other processes (`share`), which attach `Mirror`s and map allocations by descriptor.
///
/// `Pool(device=0, *, chunk_bytes=None, reserve_bytes=None, page=None, trim_watermark=None,
/// reserve_chunks=None, config=None)`: sizes are ints or text (`"20M"`); `config` is a file as
/// `aclshm tune` writes, the keyword arguments override it. Use it as a context manager, or `close()` it.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Pool {
    pool: aclshm::Pool,
    gate: Gate,
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (device=0, *, chunk_bytes=None, reserve_bytes=None, page=None, trim_watermark=None, reserve_chunks=None, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        device: i32,
        chunk_bytes: Option<Size>,
        reserve_bytes: Option<Size>,
        page: Option<&str>,
        trim_watermark: Option<Size>,
        reserve_chunks: Option<u32>,
        config: Option<PathBuf>,
    ) -> PyResult<Pool> {
        let base = match config {
            Some(p) => PoolConfig::load(p).map_err(err)?,
            None => PoolConfig::default(),
        };
        let c = pool_config(base, chunk_bytes, reserve_bytes, page, trim_watermark, reserve_chunks)?;
        let rt = runtime()?;
        let pool = py.detach(|| aclshm::Pool::new(rt, device, c)).map_err(err)?;
        Ok(Pool { pool, gate: Gate::new() })
    }

    /// The device.
    #[getter]
    fn device(&self) -> i32 {
        self.pool.device()
    }

    /// The start of the pool's range (device address).
    #[getter]
    fn base(&self) -> usize {
        self.pool.base()
    }

    /// Whether the pool is open.
    #[getter]
    fn is_open(&self) -> bool {
        self.gate.is_open()
    }

    /// Allocate `size` bytes (aligned to 512, or to `align`, a power of two): an `Allocation`.
    #[pyo3(signature = (size, align=None))]
    fn alloc(slf: &Bound<'_, Pool>, size: Size, align: Option<u64>) -> PyResult<Allocation> {
        let size = size.bytes("size")?;
        let this = slf.get();
        let a = slf
            .py()
            .detach(|| {
                this.gate.read(|| match align {
                    Some(al) => this.pool.alloc_aligned(size, al),
                    None => this.pool.alloc(size),
                })
            })
            .map_err(err)?;
        Ok(Allocation { pool: slf.clone().unbind(), alloc: a, live: RwLock::new(true) })
    }

    /// Free an allocation. Freeing it twice raises `NotAllocatedError`; an allocation of another pool,
    /// `WrongPoolError`.
    fn free(&self, py: Python<'_>, a: &Allocation) -> PyResult<()> {
        py.detach(|| {
            let mut live = a.live.write();
            self.gate.read(|| self.pool.free(a.alloc))?;
            *live = false;
            Ok(())
        })
        .map_err(err)
    }

    /// Share the pool: starts the rendezvous that workers attach through. Returns the share descriptor
    /// (text) that `Mirror(desc, device)` takes. `validate_pids=False` exports without the whitelist
    /// (any process of this user that learns a handle can import: the documented opt-out).
    #[pyo3(signature = (*, validate_pids=true, share_dir=None))]
    fn share(&self, py: Python<'_>, validate_pids: bool, share_dir: Option<PathBuf>) -> PyResult<String> {
        let c = share_config(validate_pids, share_dir);
        let d = py.detach(|| self.gate.read(|| self.pool.share(c))).map_err(err)?;
        Ok(d.to_string())
    }

    /// The descriptor of a live allocation of this shared pool (text), for a mirror to map.
    fn descriptor(&self, a: &Allocation) -> PyResult<String> {
        let d = self.gate.read(|| self.pool.descriptor(&a.alloc)).map_err(err)?;
        Ok(d.to_hex())
    }

    /// Give back fully free chunks; returns how many.
    fn trim(&self, py: Python<'_>) -> PyResult<u32> {
        py.detach(|| self.gate.read(|| self.pool.trim())).map_err(err)
    }

    /// What the pool holds and what it cost, as a dict (`mapped_bytes`, `allocated_bytes`, `chunks`,
    /// `utilization`, `runtime_calls`, ...), with `share` (mirrors, chunks, generation) when shared.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = pool_stats(py, &self.pool.stats())?;
        if let Some(s) = self.pool.share_stats() {
            let sd = PyDict::new(py);
            sd.set_item("mirrors", s.mirrors)?;
            sd.set_item("chunks", s.chunks)?;
            sd.set_item("retired_pending", s.retired_pending)?;
            sd.set_item("generation", s.generation)?;
            d.set_item("share", sd)?;
        }
        Ok(d)
    }

    /// Release everything: mirrors are told, memory is unmapped and freed, the range released. Later
    /// calls raise `ClosedError`; closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.gate.shut(|| self.pool.close())).map(|_| ()).map_err(err)
    }

    fn __enter__(slf: Py<Pool>) -> Py<Pool> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let s = self.pool.stats();
        format!(
            "<aclshm.Pool device={} mapped={} allocated={}{}>",
            s.device,
            s.mapped_bytes,
            s.allocated_bytes,
            if self.gate.is_open() { "" } else { " closed" }
        )
    }
}

/// An allocation of a `Pool`: its place (`offset`, `size`), its device address (`ptr`), and copies in
/// and out (`write`, `read`, `readinto`). Freed by `Pool.free` or `free()`.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Allocation {
    pool: Py<Pool>,
    alloc: aclshm::Allocation,
    live: RwLock<bool>,
}

impl Region for Allocation {
    const WHAT: &'static str = "allocation";

    fn size(&self) -> u64 {
        self.alloc.len()
    }

    fn device(&self) -> i32 {
        self.pool.get().pool.device()
    }

    /// The allocation live and its pool open for the copy.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        _len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        let pool = self.pool.get();
        py.detach(|| {
            let live = self.live.read();
            if !*live {
                return Err(Error::NotAllocated {
                    pool: pool.pool.id(),
                    offset: self.alloc.offset(),
                    len: self.alloc.len(),
                });
            }
            pool.gate.read(|| f(self.alloc.as_ptr() as usize + offset as usize))
        })
        .map_err(err)
    }
}

#[pymethods]
impl Allocation {
    /// Offset from the start of the pool's range.
    #[getter]
    fn offset(&self) -> u64 {
        self.alloc.offset()
    }

    /// Bytes (the request rounded up to 512).
    #[getter]
    fn size(&self) -> u64 {
        self.alloc.len()
    }

    /// The device address.
    #[getter]
    fn ptr(&self) -> usize {
        self.alloc.as_ptr() as usize
    }

    /// The pool.
    #[getter]
    fn pool(&self, py: Python<'_>) -> Py<Pool> {
        self.pool.clone_ref(py)
    }

    /// Whether it is still allocated.
    #[getter]
    fn is_live(&self) -> bool {
        *self.live.read()
    }

    fn __len__(&self) -> usize {
        self.alloc.len() as usize
    }

    /// Copy `data` (bytes, bytearray, memoryview, a contiguous numpy array, ...) to the device at `offset`.
    #[pyo3(signature = (data, offset=0))]
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        buffer::write(py, self, data, offset)
    }

    /// Copy `size` bytes (default: to the end) at `offset` from the device: bytes.
    #[pyo3(signature = (size=None, offset=0))]
    fn read<'py>(&self, py: Python<'py>, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        buffer::read(py, self, size, offset)
    }

    /// Copy into `buf` (a writable buffer) from `offset`, as many bytes as it holds; returns that count.
    #[pyo3(signature = (buf, offset=0))]
    fn readinto(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        buffer::readinto(py, self, buf, offset)
    }

    /// The descriptor (text) a mirror maps this allocation by; the pool must be shared.
    fn descriptor(&self) -> PyResult<String> {
        self.pool.get().descriptor(self)
    }

    /// Free it (as `Pool.free`).
    fn free(&self, py: Python<'_>) -> PyResult<()> {
        self.pool.get().free(py, self)
    }

    fn __repr__(&self) -> String {
        format!(
            "<aclshm.Allocation offset={:#x} size={:#x}{}>",
            self.alloc.offset(),
            self.alloc.len(),
            if *self.live.read() { "" } else { " freed" }
        )
    }
}

/// Another process's shared pool, mapped here: `Mirror(desc, device=0)` attaches through the owner's
/// rendezvous (which whitelists this process), on any device. Allocations are reached by the descriptors
/// the owner hands out (`ptr`, `read`, `write`, `readinto`). A context manager; `close()` unmaps.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Mirror {
    mirror: Held<aclshm::Mirror>,
    device: i32,
}

fn alloc_desc(d: &str) -> PyResult<AllocDesc> {
    AllocDesc::from_hex(d).map_err(err)
}

/// An allocation of the shared pool, as a mirror maps it.
struct MirrorRegion<'a> {
    mirror: &'a Mirror,
    desc: AllocDesc,
}

impl Region for MirrorRegion<'_> {
    const WHAT: &'static str = "allocation";

    fn size(&self) -> u64 {
        self.desc.len()
    }

    fn device(&self) -> i32 {
        self.mirror.device
    }

    /// The mirror held open and the descriptor resolved for the copy.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        _len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let g = self.mirror.mirror.read();
            let p = g.as_ref().ok_or(Error::Closed)?.ptr(&self.desc)?;
            f(p as usize + offset as usize)
        })
        .map_err(err)
    }
}

impl Mirror {
    fn region(&self, desc: &str) -> PyResult<MirrorRegion<'_>> {
        Ok(MirrorRegion { mirror: self, desc: alloc_desc(desc)? })
    }
}

#[pymethods]
impl Mirror {
    #[new]
    #[pyo3(signature = (desc, device=0))]
    fn new(py: Python<'_>, desc: &str, device: i32) -> PyResult<Mirror> {
        let d: ShareDesc = desc.parse().map_err(err)?;
        let rt = runtime()?;
        let m = py.detach(|| aclshm::Mirror::attach(rt, &d, device)).map_err(err)?;
        Ok(Mirror { mirror: Held::new(m), device })
    }

    /// The device the pool is mapped on here.
    #[getter]
    fn device(&self) -> i32 {
        self.device
    }

    /// Whether the owner closed the pool (or died).
    #[getter]
    fn owner_closed(&self, py: Python<'_>) -> PyResult<bool> {
        self.mirror.with(py, |m| Ok(m.owner_closed()))
    }

    /// Map what the owner published since; returns the generation synced to.
    fn sync(&self, py: Python<'_>) -> PyResult<u64> {
        self.mirror.with(py, |m| m.sync())
    }

    /// The local device address of the allocation `desc` names.
    fn ptr(&self, py: Python<'_>, desc: &str) -> PyResult<usize> {
        let d = alloc_desc(desc)?;
        self.mirror.with(py, |m| m.ptr(&d).map(|p| p as usize))
    }

    /// Copy `data` into the allocation `desc` names, at `offset`.
    #[pyo3(signature = (desc, data, offset=0))]
    fn write(&self, py: Python<'_>, desc: &str, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        buffer::write(py, &self.region(desc)?, data, offset)
    }

    /// Copy `size` bytes (default: to the end) at `offset` of the allocation `desc` names: bytes.
    #[pyo3(signature = (desc, size=None, offset=0))]
    fn read<'py>(&self, py: Python<'py>, desc: &str, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        buffer::read(py, &self.region(desc)?, size, offset)
    }

    /// Copy into `buf` from `offset` of the allocation `desc` names; returns the bytes copied.
    #[pyo3(signature = (desc, buf, offset=0))]
    fn readinto(&self, py: Python<'_>, desc: &str, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        buffer::readinto(py, &self.region(desc)?, buf, offset)
    }

    /// What the mirror holds: `chunks`, `generation`, `imports`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        mirror_stats(py, &self.mirror.with(py, |m| Ok(m.stats()))?)
    }

    /// Unmap and release everything (the owner is told). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.mirror.close(py, aclshm::Mirror::close)
    }

    fn __enter__(slf: Py<Mirror>) -> Py<Mirror> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Mirror device={}{}>", self.device, if self.mirror.is_closed() { " closed" } else { "" })
    }
}
