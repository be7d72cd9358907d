//! `KvPool`, `KvMirror`, `KvBlock` and `Pinned`: KV-cache blocks shared between a scheduler and its
//! workers.
//!
//! Copies are made safe against frees: the scheduler's own copies hold its pool's gate for reading, and
//! its frees, trims and close take it for writing; a worker's copies pin the block for the copy (a block
//! freed before is refused as stale, one freed during it is kept by the scheduler until the pin goes).
//! As in `pool`, locks are taken, and the work under them done, with the interpreter released.

use std::path::PathBuf;
use std::time::Duration;

use aclshm::{Error, KvConfig, KvDesc, KvLayout, PoolConfig};
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::buffer::{self, Region};
use crate::held::Held;
use crate::pool::{Gate, Size, mirror_stats, pool_config, pool_stats, share_config};
use crate::{err, runtime};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KvBlock>()?;
    m.add_class::<KvPool>()?;
    m.add_class::<KvMirror>()?;
    m.add_class::<Pinned>()?;
    m.add_function(wrap_pyfunction!(kv_block_bytes, m)?)?;
    Ok(())
}

/// A block of a `KvPool`: which pool, which block, which allocation of it. Hashable, comparable,
/// picklable; its text form `<pool>:<id>:<generation>` travels any way you like (`KvBlock.parse`).
#[pyclass(module = "aclshm", frozen, eq, hash, ord)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KvBlock(aclshm::KvBlock);

#[pymethods]
impl KvBlock {
    /// The block its text form names.
    #[staticmethod]
    fn parse(text: &str) -> PyResult<KvBlock> {
        text.parse().map(KvBlock).map_err(err)
    }

    /// The pool's token.
    #[getter]
    fn pool(&self) -> u64 {
        self.0.pool()
    }

    /// The block id (its place in the pool).
    #[getter]
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Which allocation of the block this is.
    #[getter]
    fn generation(&self) -> u32 {
        self.0.generation()
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __repr__(&self) -> String {
        format!("KvBlock.parse({:?})", self.0.to_string())
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        Ok((py.get_type::<KvBlock>().getattr("parse")?, (self.0.to_string(),)))
    }
}

/// Blocks from one `KvBlock` or a sequence of them.
fn blocks(obj: &Bound<'_, PyAny>) -> PyResult<Vec<aclshm::KvBlock>> {
    if let Ok(b) = obj.cast::<KvBlock>() {
        return Ok(vec![b.get().0]);
    }
    obj.try_iter()?.map(|b| Ok(b?.cast::<KvBlock>()?.get().0)).collect()
}

/// Bytes of a block for a model's KV cache: keys and values of every layer for `block_tokens` tokens,
/// rounded up to the pool's granule (512).
#[pyfunction]
#[pyo3(signature = (*, layers, kv_heads, head_dim, dtype_bytes, block_tokens))]
fn kv_block_bytes(layers: u32, kv_heads: u32, head_dim: u32, dtype_bytes: u32, block_tokens: u32) -> PyResult<u64> {
    KvLayout { layers, kv_heads, head_dim, dtype_bytes, block_tokens }.block_bytes().map_err(err)
}

/// The scheduler's pool of KV-cache blocks, shared with workers: `desc` is what `KvMirror(desc, device)`
/// attaches with. Blocks are allocated and freed here (`alloc`, `alloc_many`, `free`, `free_many`); a
/// block a worker pins is kept until the pin goes.
///
/// `KvPool(block_bytes=None, device=0, *, config=None, chunk_bytes=None, reserve_bytes=None, page=None,
/// trim_watermark=None, validate_pids=True, share_dir=None)`: `block_bytes` (see `kv_block_bytes`) or a
/// configuration file from `aclshm tune` with `kv_block_bytes`. A context manager; `close()` releases.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct KvPool {
    kv: aclshm::KvPool,
    desc: String,
    gate: Gate,
}

/// A block, as the scheduler reaches it.
struct PoolBlock<'a> {
    kv: &'a KvPool,
    block: aclshm::KvBlock,
}

impl Region for PoolBlock<'_> {
    const WHAT: &'static str = "block";

    fn size(&self) -> u64 {
        self.kv.kv.block_bytes()
    }

    fn device(&self) -> i32 {
        self.kv.kv.pool().device()
    }

    /// The pool's gate held for the copy: frees, trims and the close wait for it.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        _len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        let kv = &self.kv.kv;
        py.detach(|| self.kv.gate.read(|| f(kv.ptr(&self.block)? as usize + offset as usize))).map_err(err)
    }
}

impl KvPool {
    fn block(&self, b: &KvBlock) -> PoolBlock<'_> {
        PoolBlock { kv: self, block: b.0 }
    }

    /// Run `f` alone (no copy under way), the pool open.
    fn exclusive<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&aclshm::KvPool) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.gate.write(|| f(&self.kv))).map_err(err)
    }

    fn shared<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&aclshm::KvPool) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.gate.read(|| f(&self.kv))).map_err(err)
    }
}

#[pymethods]
impl KvPool {
    #[new]
    #[pyo3(signature = (block_bytes=None, device=0, *, config=None, chunk_bytes=None, reserve_bytes=None, page=None, trim_watermark=None, validate_pids=true, share_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        block_bytes: Option<Size>,
        device: i32,
        config: Option<PathBuf>,
        chunk_bytes: Option<Size>,
        reserve_bytes: Option<Size>,
        page: Option<&str>,
        trim_watermark: Option<Size>,
        validate_pids: bool,
        share_dir: Option<PathBuf>,
    ) -> PyResult<KvPool> {
        let share = share_config(validate_pids, share_dir);
        let mut c = match config {
            Some(p) => KvConfig::load(p, share).map_err(err)?,
            None => {
                let Some(b) = &block_bytes else {
                    return Err(err(Error::InvalidArgument(
                        "give block_bytes (see aclshm.kv_block_bytes) or a config file with kv_block_bytes".into(),
                    )));
                };
                KvConfig { block_bytes: b.bytes("block_bytes")?, pool: PoolConfig::default(), share }
            }
        };
        if let Some(b) = block_bytes {
            c.block_bytes = b.bytes("block_bytes")?;
        }
        c.pool = pool_config(c.pool, chunk_bytes, reserve_bytes, page, trim_watermark, None)?;
        let rt = runtime()?;
        let kv = py.detach(|| aclshm::KvPool::new(rt, device, c)).map_err(err)?;
        let desc = kv.desc().to_string();
        Ok(KvPool { kv, desc, gate: Gate::new() })
    }

    /// The descriptor workers attach with (text).
    #[getter]
    fn desc(&self) -> &str {
        &self.desc
    }

    /// Bytes per block.
    #[getter]
    fn block_bytes(&self) -> u64 {
        self.kv.block_bytes()
    }

    /// The device.
    #[getter]
    fn device(&self) -> i32 {
        self.kv.pool().device()
    }

    /// Allocate a block.
    fn alloc(&self, py: Python<'_>) -> PyResult<KvBlock> {
        self.shared(py, |kv| kv.alloc()).map(KvBlock)
    }

    /// Allocate `n` blocks: all or none.
    fn alloc_many(&self, py: Python<'_>, n: usize) -> PyResult<Vec<KvBlock>> {
        Ok(self.shared(py, |kv| kv.alloc_many(n))?.into_iter().map(KvBlock).collect())
    }

    /// Free a block, or a sequence of blocks (all or none). A block some worker pins is kept until the
    /// pin goes; a stale reference raises `StaleBlockError`.
    fn free(&self, py: Python<'_>, blocks_: &Bound<'_, PyAny>) -> PyResult<()> {
        let bs = blocks(blocks_)?;
        self.exclusive(py, |kv| kv.free_many(&bs))
    }

    /// Pins the workers hold on block `b`.
    fn pins(&self, py: Python<'_>, b: &KvBlock) -> PyResult<u32> {
        self.shared(py, |kv| kv.pins(&b.0))
    }

    /// Give back blocks freed while pinned whose pins are gone; returns how many.
    fn reclaim(&self, py: Python<'_>) -> PyResult<u32> {
        self.exclusive(py, |kv| kv.reclaim())
    }

    /// Wait up to `timeout` seconds until no freed block is kept for its pins; whether none is.
    fn wait_unpinned(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = duration(timeout)?;
        self.shared(py, |kv| kv.wait_unpinned(t))
    }

    /// The scheduler's device address of block `b`.
    fn ptr(&self, py: Python<'_>, b: &KvBlock) -> PyResult<usize> {
        self.shared(py, |kv| kv.ptr(&b.0).map(|p| p as usize))
    }

    /// Copy `data` into block `b` at `offset`.
    #[pyo3(signature = (b, data, offset=0))]
    fn write(&self, py: Python<'_>, b: &KvBlock, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        buffer::write(py, &self.block(b), data, offset)
    }

    /// Copy `size` bytes (default: the rest of the block) at `offset` of block `b`: bytes.
    #[pyo3(signature = (b, size=None, offset=0))]
    fn read<'py>(&self, py: Python<'py>, b: &KvBlock, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        buffer::read(py, &self.block(b), size, offset)
    }

    /// Copy into `buf` from `offset` of block `b`; returns the bytes copied.
    #[pyo3(signature = (b, buf, offset=0))]
    fn readinto(&self, py: Python<'_>, b: &KvBlock, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        buffer::readinto(py, &self.block(b), buf, offset)
    }

    /// Give fully free chunks back to the device; returns how many.
    fn trim(&self, py: Python<'_>) -> PyResult<u32> {
        self.exclusive(py, |kv| kv.trim())
    }

    /// What the pool holds: `block_bytes`, `blocks_per_chunk`, `capacity`, `allocated`, `deferred`,
    /// `workers`, and `pool` (the pool's statistics).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.kv.stats();
        let d = PyDict::new(py);
        d.set_item("block_bytes", s.block_bytes)?;
        d.set_item("blocks_per_chunk", s.blocks_per_chunk)?;
        d.set_item("capacity", s.capacity)?;
        d.set_item("allocated", s.allocated)?;
        d.set_item("deferred", s.deferred)?;
        d.set_item("workers", s.workers)?;
        d.set_item("pool", pool_stats(py, &s.pool)?)?;
        Ok(d)
    }

    /// Release everything (workers keep what they mapped until they close). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.gate.shut(|| self.kv.close())).map(|_| ()).map_err(err)
    }

    fn __enter__(slf: Py<KvPool>) -> Py<KvPool> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let s = self.kv.stats();
        format!("<aclshm.KvPool block_bytes={} allocated={} of {}>", s.block_bytes, s.allocated, s.capacity)
    }
}

fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| err(Error::InvalidArgument(format!("timeout {seconds} is not a non-negative number of seconds"))))
}

/// A worker's view of a `KvPool`: `KvMirror(desc, device=0)` attaches through the scheduler's rendezvous
/// and maps its blocks on `device`. Reads and writes pin the block for the copy; `pinned(blocks)` keeps
/// blocks (a shared prefix) for as long as its context lasts. A context manager; `close()` detaches.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct KvMirror {
    mirror: Held<aclshm::KvMirror>,
    device: i32,
    block_bytes: u64,
}

impl KvMirror {
    fn block(&self, b: &KvBlock) -> MirrorBlock<'_> {
        MirrorBlock { mirror: self, block: b.0 }
    }
}

/// A block, as a worker reaches it.
struct MirrorBlock<'a> {
    mirror: &'a KvMirror,
    block: aclshm::KvBlock,
}

impl Region for MirrorBlock<'_> {
    const WHAT: &'static str = "block";

    fn size(&self) -> u64 {
        self.mirror.block_bytes
    }

    fn device(&self) -> i32 {
        self.mirror.device
    }

    /// The block pinned for the copy: one freed before is refused, one freed meanwhile is kept.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        _len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        self.mirror.mirror.with(py, |m| {
            let pinned = m.pinned(&[self.block])?;
            f(pinned.ptrs()[0] as usize + offset as usize)
        })
    }
}

#[pymethods]
impl KvMirror {
    #[new]
    #[pyo3(signature = (desc, device=0))]
    fn new(py: Python<'_>, desc: &str, device: i32) -> PyResult<KvMirror> {
        let d: KvDesc = desc.parse().map_err(err)?;
        let rt = runtime()?;
        let m = py.detach(|| aclshm::KvMirror::attach(rt, &d, device)).map_err(err)?;
        let block_bytes = m.block_bytes();
        Ok(KvMirror { mirror: Held::new(m), device, block_bytes })
    }

    /// Bytes per block.
    #[getter]
    fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The device the blocks are mapped on here.
    #[getter]
    fn device(&self) -> i32 {
        self.device
    }

    /// The local device address of block `b` (valid while the scheduler keeps it: pin to be sure).
    fn ptr(&self, py: Python<'_>, b: &KvBlock) -> PyResult<usize> {
        self.mirror.with(py, |m| m.ptr(&b.0).map(|p| p as usize))
    }

    /// Pin blocks (one or a sequence): all or none. Pins nest.
    fn pin(&self, py: Python<'_>, blocks_: &Bound<'_, PyAny>) -> PyResult<()> {
        let bs = blocks(blocks_)?;
        self.mirror.with(py, |m| m.pin(&bs))
    }

    /// Unpin blocks; one this worker does not pin raises `NotPinnedError` and nothing is unpinned.
    fn unpin(&self, py: Python<'_>, blocks_: &Bound<'_, PyAny>) -> PyResult<()> {
        let bs = blocks(blocks_)?;
        self.mirror.with(py, |m| m.unpin(&bs))
    }

    /// This worker's pins on block `b`.
    fn pins(&self, py: Python<'_>, b: &KvBlock) -> PyResult<u32> {
        self.mirror.with(py, |m| m.pins(&b.0))
    }

    /// Pin blocks for the life of the returned context (`with mirror.pinned(blocks) as p:`).
    fn pinned(slf: &Bound<'_, KvMirror>, blocks_: &Bound<'_, PyAny>) -> PyResult<Pinned> {
        let bs = blocks(blocks_)?;
        let this = slf.get();
        let ptrs = this.mirror.with(slf.py(), |m| {
            // The pins outlive the guard: the Python object releases them.
            let (_, ptrs) = m.pinned(&bs)?.keep();
            Ok(ptrs.into_iter().map(|p| p as usize).collect::<Vec<_>>())
        })?;
        Ok(Pinned { mirror: slf.clone().unbind(), blocks: bs, ptrs, held: RwLock::new(true) })
    }

    /// Copy `data` into block `b` at `offset` (the block pinned meanwhile).
    #[pyo3(signature = (b, data, offset=0))]
    fn write(&self, py: Python<'_>, b: &KvBlock, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        buffer::write(py, &self.block(b), data, offset)
    }

    /// Copy `size` bytes (default: the rest) at `offset` of block `b`: bytes.
    #[pyo3(signature = (b, size=None, offset=0))]
    fn read<'py>(&self, py: Python<'py>, b: &KvBlock, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        buffer::read(py, &self.block(b), size, offset)
    }

    /// Copy into `buf` from `offset` of block `b`; returns the bytes copied.
    #[pyo3(signature = (b, buf, offset=0))]
    fn readinto(&self, py: Python<'_>, b: &KvBlock, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        buffer::readinto(py, &self.block(b), buf, offset)
    }

    /// What the mirror holds: `chunks`, `generation`, `imports`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        mirror_stats(py, &self.mirror.with(py, |m| Ok(m.stats()))?)
    }

    /// Detach: unmap everything, drop this worker's pins. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.mirror.close(py, aclshm::KvMirror::close)
    }

    fn __enter__(slf: Py<KvMirror>) -> Py<KvMirror> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<aclshm.KvMirror device={} block_bytes={}{}>",
            self.device,
            self.block_bytes,
            if self.mirror.is_closed() { " closed" } else { "" }
        )
    }
}

/// Blocks a worker pinned with `KvMirror.pinned`: kept by the scheduler (not reused, even once freed)
/// until `release()` or the end of the `with` block. `blocks`, `ptrs` (local device addresses), and
/// `read(i)` / `readinto(i, buf)` / `write(i, data)` by position.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Pinned {
    mirror: Py<KvMirror>,
    blocks: Vec<aclshm::KvBlock>,
    ptrs: Vec<usize>,
    /// Whether the pins are still held (false once released).
    held: RwLock<bool>,
}

/// A pinned block, by its place in a `Pinned`.
struct PinnedBlock<'a> {
    pinned: &'a Pinned,
    addr: usize,
}

impl Region for PinnedBlock<'_> {
    const WHAT: &'static str = "block";

    fn size(&self) -> u64 {
        self.pinned.mirror.get().block_bytes
    }

    fn device(&self) -> i32 {
        self.pinned.mirror.get().device
    }

    /// The pins (and the mirror) held for the copy.
    fn with_addr<T: Send>(
        &self,
        py: Python<'_>,
        offset: u64,
        _len: u64,
        f: impl FnOnce(usize) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        let m = self.pinned.mirror.get();
        py.detach(|| {
            let held = self.pinned.held.read();
            let g = m.mirror.read();
            if !*held || g.is_none() {
                return Err(Error::Closed);
            }
            f(self.addr + offset as usize)
        })
        .map_err(err)
    }
}

impl Pinned {
    fn block(&self, i: usize) -> PyResult<PinnedBlock<'_>> {
        match self.ptrs.get(i) {
            Some(&addr) => Ok(PinnedBlock { pinned: self, addr }),
            None => Err(pyo3::exceptions::PyIndexError::new_err(format!("block {i} of {} pinned", self.ptrs.len()))),
        }
    }
}

#[pymethods]
impl Pinned {
    /// The blocks pinned.
    #[getter]
    fn blocks(&self) -> Vec<KvBlock> {
        self.blocks.iter().copied().map(KvBlock).collect()
    }

    /// Their local device addresses, valid while the pins are held.
    #[getter]
    fn ptrs(&self) -> Vec<usize> {
        self.ptrs.clone()
    }

    fn __len__(&self) -> usize {
        self.blocks.len()
    }

    /// Copy `size` bytes (default: the rest) at `offset` of the `i`th pinned block: bytes.
    #[pyo3(signature = (i, size=None, offset=0))]
    fn read<'py>(&self, py: Python<'py>, i: usize, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        buffer::read(py, &self.block(i)?, size, offset)
    }

    /// Copy into `buf` from `offset` of the `i`th pinned block; returns the bytes copied.
    #[pyo3(signature = (i, buf, offset=0))]
    fn readinto(&self, py: Python<'_>, i: usize, buf: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        buffer::readinto(py, &self.block(i)?, buf, offset)
    }

    /// Copy `data` into the `i`th pinned block at `offset`.
    #[pyo3(signature = (i, data, offset=0))]
    fn write(&self, py: Python<'_>, i: usize, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        buffer::write(py, &self.block(i)?, data, offset)
    }

    /// Unpin the blocks (once; later calls do nothing). A mirror closed first dropped the pins already.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.mirror.get();
        py.detach(|| {
            let mut held = self.held.write();
            if !*held {
                return Ok(());
            }
            *held = false;
            match m.mirror.read().as_ref() {
                Some(mirror) => mirror.unpin(&self.blocks),
                None => Ok(()),
            }
        })
        .map_err(err)
    }

    fn __enter__(slf: Py<Pinned>) -> Py<Pinned> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Pinned {} block(s)>", self.blocks.len())
    }
}

impl Drop for Pinned {
    /// Pins not released when the object goes are released now (as the Rust guard does); a mirror that
    /// is closing drops them itself.
    fn drop(&mut self) {
        if std::mem::replace(self.held.get_mut(), false)
            && let Some(g) = self.mirror.get().mirror.try_read()
            && let Some(m) = g.as_ref()
        {
            let _ = m.unpin(&self.blocks);
        }
    }
}
