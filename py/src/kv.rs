//! `KvPool`, `KvMirror`, `KvBlock` and `Pinned`: KV-cache blocks shared between a scheduler and its
//! workers.
//!
//! Copies are made safe against frees: the scheduler's own copies hold its pool's gate for reading, and
//! its frees, trims and close take it for writing; a worker's copies pin the block for the copy (a block
//! freed before is refused as stale, one freed during it is kept by the scheduler until the pin goes).
//! As in `pool`, locks are taken, and the work under them done, with the interpreter released.

use std::path::PathBuf;

use aclshm::{Error, KvConfig, KvDesc, KvLayout, PoolConfig, SleepReport};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::{Size, duration};
use crate::buffer::{HostBuffer, Region, copy_methods};
use crate::held::{Gate, Held, context_manager};
use crate::pool::{mirror_stats, pool_config, pool_stats, share_config};
use crate::sleep::{Sleeper, Sleeping, py_bool, report};
use crate::{err, on_runtime};

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
///
/// Sleep mode: `sleep(discard_kv=True)` gives the blocks' memory back (workers unmap it too), `wake_up()`
/// maps new memory at the same addresses (workers' included), with the blocks' bytes when kept.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct KvPool {
    kv: aclshm::KvPool,
    /// The descriptor workers attach with (text).
    #[pyo3(get)]
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

    /// The pool's gate held for the copy: frees, trims, sleeps, wakes and the close wait for it. Refused
    /// while the pool is asleep (its memory is given back).
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T> {
        let kv = &self.kv.kv;
        self.kv.gate.read(|| {
            let addr = kv.ptr(&self.block)? as usize;
            if kv.pool().is_asleep() {
                return Err(Error::Asleep("the blocks' memory is given back until wake_up()".into()));
            }
            f(addr + offset as usize)
        })
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
        self.gate.alone(py, || f(&self.kv))
    }

    /// Put the pool to sleep, alone under the gate (no copy under way).
    pub(crate) fn sleep_now(&self, py: Python<'_>, discard_kv: bool) -> PyResult<SleepReport> {
        self.exclusive(py, |kv| kv.sleep(discard_kv))
    }

    /// Wake the pool, alone under the gate.
    pub(crate) fn wake_now(&self, py: Python<'_>) -> PyResult<()> {
        self.exclusive(py, aclshm::KvPool::wake)
    }

    /// Whether the pool is asleep.
    pub(crate) fn asleep(&self) -> bool {
        self.kv.pool().is_asleep()
    }

    /// Run `f` beside other calls and copies, the pool open.
    fn shared<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&aclshm::KvPool) -> aclshm::Result<T> + Send,
    ) -> PyResult<T> {
        self.gate.with(py, || f(&self.kv))
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
        c.pool = pool_config(c.pool, chunk_bytes, reserve_bytes, page, trim_watermark, None, None)?;
        let kv = on_runtime(py, |rt| aclshm::KvPool::new(rt, device, c))?;
        let desc = kv.desc().to_string();
        Ok(KvPool { kv, desc, gate: Gate::new() })
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
        // In slices, each under the gate on its own: frees, trims and the like (which take the gate alone)
        // run between them rather than waiting for the whole wait; and Ctrl-C is heard.
        const SLICE: std::time::Duration = std::time::Duration::from_millis(50);
        let deadline = std::time::Instant::now().checked_add(duration(timeout)?);
        loop {
            let left = deadline.map_or(SLICE, |d| d.saturating_duration_since(std::time::Instant::now()));
            if self.shared(py, |kv| kv.wait_unpinned(left.min(SLICE)))? {
                return Ok(true);
            }
            if left <= SLICE {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    /// The scheduler's device address of block `b`.
    fn ptr(&self, py: Python<'_>, b: &KvBlock) -> PyResult<usize> {
        self.shared(py, |kv| kv.ptr(&b.0).map(|p| p as usize))
    }

    /// Copy `blocks`, in order, into `buf` (a writable buffer of exactly their size: block after block),
    /// one copy per run of blocks side by side in the pool: how a transfer stages blocks through host
    /// memory (see `aclshm.mooncake`). Returns the bytes copied.
    fn readinto_blocks(&self, py: Python<'_>, blocks_: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let bs = blocks(blocks_)?;
        let dst = HostBuffer::writable(buf)?;
        let (addr, n) = (dst.addr(), dst.len());
        self.shared(py, move |kv| {
            // SAFETY: `dst` (held, writable, `n` bytes) stays exported until this call returns.
            let out = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, n) };
            kv.read_blocks(&bs, out)
        })?;
        drop(dst);
        Ok(n)
    }

    /// Copy `data` (a buffer of exactly their size, block after block) into `blocks`, in order: the other
    /// way of `readinto_blocks`.
    fn write_blocks(&self, py: Python<'_>, blocks_: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bs = blocks(blocks_)?;
        let src = HostBuffer::readable(data)?;
        let (addr, n) = (src.addr(), src.len());
        self.shared(py, move |kv| {
            // SAFETY: `src` (held, `n` bytes) stays exported until this call returns.
            let data = unsafe { std::slice::from_raw_parts(addr as *const u8, n) };
            kv.write_blocks(&bs, data)
        })?;
        drop(src);
        Ok(())
    }

    /// Give fully free chunks back to the device; returns how many.
    fn trim(&self, py: Python<'_>) -> PyResult<u32> {
        self.exclusive(py, |kv| kv.trim())
    }

    /// Whether the pool is asleep.
    #[getter]
    fn is_asleep(&self) -> bool {
        self.asleep()
    }

    /// Put the pool to sleep (vLLM's sleep mode): the blocks' physical memory goes back to the device,
    /// once every worker unmapped it (they do by themselves). With `discard_kv` (the default) the blocks'
    /// bytes are dropped (undefined after the wake); without, they are kept in host memory and copied back
    /// at the wake. Blocks, generations, pins and addresses stay valid; allocating, copies and workers'
    /// `ptr` raise `AsleepError` until `wake_up`. Returns what it did: `slept_chunks`, `trimmed_chunks`,
    /// `released_bytes`, `kept_bytes`.
    #[pyo3(signature = (discard_kv=true))]
    fn sleep<'py>(&self, py: Python<'py>, discard_kv: bool) -> PyResult<Bound<'py, PyDict>> {
        report(py, &self.sleep_now(py, discard_kv)?)
    }

    /// Wake the pool: new physical memory at the same addresses, here and in the workers, with the blocks'
    /// bytes if the sleep kept them. Waking a pool that is awake does nothing.
    fn wake_up(&self, py: Python<'_>) -> PyResult<()> {
        self.wake_now(py)
    }

    /// A context manager that puts the pool to sleep on entering (`as` gives `sleep`'s report) and wakes
    /// it on leaving, even when the block raises.
    #[pyo3(signature = (discard_kv=true))]
    fn sleeping(slf: &Bound<'_, KvPool>, discard_kv: bool) -> Sleeping {
        Sleeping::new(KvSleeper { kv: slf.clone().unbind(), discard_kv })
    }

    /// What the pool holds: `block_bytes`, `blocks_per_chunk`, `capacity`, `allocated`, `deferred`,
    /// `cached` (free blocks kept in threads' magazines), `workers`, and `pool` (the pool's statistics).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.kv.stats();
        let d = PyDict::new(py);
        d.set_item("block_bytes", s.block_bytes)?;
        d.set_item("blocks_per_chunk", s.blocks_per_chunk)?;
        d.set_item("capacity", s.capacity)?;
        d.set_item("allocated", s.allocated)?;
        d.set_item("deferred", s.deferred)?;
        d.set_item("cached", s.cached)?;
        d.set_item("workers", s.workers)?;
        d.set_item("pool", pool_stats(py, &s.pool)?)?;
        Ok(d)
    }

    /// Release everything (workers keep what they mapped until they close). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.gate.close(py, || self.kv.close())
    }

    fn __repr__(&self) -> String {
        let s = self.kv.stats();
        format!(
            "<aclshm.KvPool block_bytes={} allocated={} of {}{}>",
            s.block_bytes,
            s.allocated,
            s.capacity,
            if s.pool.sleeping_chunks > 0 { " asleep" } else { "" }
        )
    }
}

context_manager!(KvPool, close);
copy_methods!(KvPool, "block `b`", |kv, b: &KvBlock| &kv.block(b));

/// A worker's view of a `KvPool`: `KvMirror(desc, device=0)` attaches through the scheduler's rendezvous
/// and maps its blocks on `device`. Reads and writes pin the block for the copy; `pinned(blocks)` keeps
/// blocks (a shared prefix) for as long as its context lasts. A context manager; `close()` detaches.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct KvMirror {
    mirror: Held<aclshm::KvMirror>,
    /// The device the blocks are mapped on here.
    #[pyo3(get)]
    device: i32,
    /// Bytes per block.
    #[pyo3(get)]
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
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T> {
        self.mirror.mirror.with_detached(|m| {
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
        let m = on_runtime(py, |rt| aclshm::KvMirror::attach(rt, &d, device))?;
        let block_bytes = m.block_bytes();
        Ok(KvMirror { mirror: Held::new(m), device, block_bytes })
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
        Ok(Pinned { mirror: slf.clone().unbind(), blocks: bs, ptrs, held: Gate::new() })
    }

    /// What the mirror holds: `chunks`, `generation`, `imports`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        mirror_stats(py, &self.mirror.with(py, |m| Ok(m.stats()))?)
    }

    /// Detach: unmap everything, drop this worker's pins. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.mirror.close(py, aclshm::KvMirror::close)
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

context_manager!(KvMirror, close);
copy_methods!(KvMirror, "block `b` (pinned meanwhile)", |m, b: &KvBlock| &m.block(b));

/// Blocks a worker pinned with `KvMirror.pinned`: kept by the scheduler (not reused, even once freed)
/// until `release()` or the end of the `with` block. `blocks`, `ptrs` (local device addresses), and
/// `read(i)` / `readinto(i, buf)` / `write(i, data)` by position.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Pinned {
    mirror: Py<KvMirror>,
    blocks: Vec<aclshm::KvBlock>,
    ptrs: Vec<usize>,
    /// Open while the pins are held (shut once released).
    held: Gate,
}

/// A pinned block, by its place in a `Pinned`.
struct PinnedBlock<'a> {
    pinned: &'a Pinned,
    block: aclshm::KvBlock,
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

    /// The pins (and the mirror) held for the copy, the block's memory mapped (not asleep).
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T> {
        let m = self.pinned.mirror.get();
        self.pinned.held.read(|| {
            m.mirror.with_detached(|mirror| {
                // Resolved again: `AsleepError` while the scheduler's pool sleeps (the address is the same).
                // A block the scheduler freed since is stale for `ptr`, but kept for the pins: readable.
                match mirror.ptr(&self.block) {
                    Ok(_) | Err(Error::StaleBlock { .. }) => f(self.addr + offset as usize),
                    Err(e) => Err(e),
                }
            })
        })
    }
}

impl Pinned {
    fn block(&self, i: usize) -> PyResult<PinnedBlock<'_>> {
        match self.ptrs.get(i) {
            Some(&addr) => Ok(PinnedBlock { pinned: self, block: self.blocks[i], addr }),
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

    /// Unpin the blocks (once; later calls do nothing). A mirror closed first dropped the pins already.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.mirror.get();
        self.held.close(py, || match m.mirror.read().as_ref() {
            Some(mirror) => mirror.unpin(&self.blocks),
            None => Ok(()),
        })
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Pinned {} block(s)>", self.blocks.len())
    }
}

context_manager!(Pinned, release);
copy_methods!(Pinned, "the `i`th pinned block", |p, i: usize| &p.block(i)?);

impl Drop for Pinned {
    /// Pins not released when the object goes are released now (as the Rust guard does); a mirror that
    /// is closing drops them itself.
    fn drop(&mut self) {
        if self.held.shut_mut()
            && let Some(g) = self.mirror.get().mirror.try_read()
            && let Some(m) = g.as_ref()
        {
            let _ = m.unpin(&self.blocks);
        }
    }
}

/// What `KvPool.sleeping` puts to sleep.
struct KvSleeper {
    kv: Py<KvPool>,
    discard_kv: bool,
}

impl Sleeper for KvSleeper {
    fn is_asleep(&self) -> bool {
        self.kv.get().asleep()
    }

    fn sleep(&self, py: Python<'_>) -> PyResult<aclshm::SleepReport> {
        self.kv.get().sleep_now(py, self.discard_kv)
    }

    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        self.kv.get().wake_now(py)
    }

    fn describe(&self) -> String {
        format!("KvPool discard_kv={}", py_bool(self.discard_kv))
    }
}
