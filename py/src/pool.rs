//! `Pool`, `Allocation` and `Mirror`: a pool shared through the rendezvous, allocations named by
//! descriptors, and other processes' mirrors of it.
//!
//! Copies between Python buffers and device memory are checked against the allocation's bounds and
//! refused once the allocation is freed or the pool closed: a copy holds the allocation's and the pool's
//! locks for reading, a free or a close takes them for writing. Locks are taken, and everything done
//! under them, with the interpreter released (inside `Python::detach`, errors still Rust errors), so a
//! thread holding one never waits for the interpreter: no lock-order cycle with it.

use std::path::PathBuf;
use std::time::Duration;

use aclshm::pool::{DEFAULT_TAG, GRANULE};
use aclshm::share::MirrorStats;
use aclshm::vmm::PageSize;
use aclshm::{AllocDesc, Error, PoolConfig, PoolStats, ShareConfig, ShareDesc, SleepConfig, SleepReport};
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::{Size, duration};
use crate::buffer::{Region, copy_methods};
use crate::held::{Gate, Held, context_manager};
use crate::sleep::{Sleeper, Sleeping, report, tag_list};
use crate::{err, on_runtime};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pool>()?;
    m.add_class::<Allocation>()?;
    m.add_class::<Mirror>()?;
    Ok(())
}

/// A pool configuration from keyword arguments over a base (a file's, or the defaults).
pub(crate) fn pool_config(
    mut c: PoolConfig,
    chunk_bytes: Option<Size>,
    reserve_bytes: Option<Size>,
    page: Option<&str>,
    trim_watermark: Option<Size>,
    reserve_chunks: Option<u32>,
    thread_cache: Option<bool>,
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
    if let Some(t) = thread_cache {
        c.thread_cache = t;
    }
    Ok(c)
}

pub(crate) fn share_config(validate_pids: bool, share_dir: Option<PathBuf>) -> ShareConfig {
    ShareConfig { validate_pids, dir: share_dir, ..ShareConfig::default() }
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
    d.set_item("cached_bytes", s.cached_bytes)?;
    d.set_item("live_blocks", s.live_blocks)?;
    d.set_item("free_blocks", s.free_blocks)?;
    d.set_item("chunks_grown", s.chunks_grown)?;
    d.set_item("chunks_trimmed", s.chunks_trimmed)?;
    d.set_item("generation", s.generation)?;
    d.set_item("sleeping_chunks", s.sleeping_chunks)?;
    d.set_item("host_bytes", s.host_bytes)?;
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

/// A pool of device memory: reserves a virtual range once, grows and trims by physical chunks, and can
/// be shared with other processes (`share`), which attach `Mirror`s and map allocations by descriptor.
///
/// `Pool(device=0, *, chunk_bytes=None, reserve_bytes=None, page=None, trim_watermark=None,
/// reserve_chunks=None, config=None)`: sizes are ints or text (`"20M"`); `config` is a file as
/// `aclshm tune` writes, the keyword arguments override it. Use it as a context manager, or `close()` it.
///
/// Sleep mode (vLLM's): allocations carry a tag (`alloc(size, tag="weights")`); `sleep(offload_tags)`
/// gives the physical memory back, keeping the allocations of those tags in host memory, and
/// `wake_up(tags=None)` maps new memory at the same addresses and copies them back.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Pool {
    pool: aclshm::Pool,
    /// Copies, allocations and frees run under it; sleeps and wakes alone (no copy is under way while the
    /// memory goes or comes back).
    gate: Gate,
    /// While asleep, the tags woken since the sleep (`wake_up(tags)`): copies of their allocations are
    /// allowed (every chunk that held one is mapped again). Changed under the gate, alone.
    awake_tags: Mutex<Vec<String>>,
}

impl Pool {
    /// Put the pool to sleep, alone under the gate; the tags woken so far are forgotten.
    pub(crate) fn sleep_now(
        &self,
        py: Python<'_>,
        offload_tags: Vec<String>,
        release_timeout: Option<Duration>,
    ) -> PyResult<SleepReport> {
        let mut c = SleepConfig { offload_tags, ..SleepConfig::default() };
        if let Some(t) = release_timeout {
            c.release_timeout = t;
        }
        self.gate.alone(py, || {
            // Asleep already: refused, and the tags woken since stay awake.
            let was_asleep = self.pool.is_asleep();
            let r = self.pool.sleep(&c);
            if !was_asleep {
                // Whatever the outcome: what sleeps now sleeps for every tag.
                self.awake_tags.lock().clear();
            }
            r
        })
    }

    /// Wake all, or the chunks of `tags`, alone under the gate.
    pub(crate) fn wake_now(&self, py: Python<'_>, tags: Option<Vec<String>>) -> PyResult<()> {
        self.gate.alone(py, || {
            let names: Option<Vec<&str>> = tags.as_ref().map(|v| v.iter().map(String::as_str).collect());
            self.pool.wake(names.as_deref())?;
            let mut awake = self.awake_tags.lock();
            match tags {
                None => awake.clear(),
                Some(v) => awake.extend(v),
            }
            Ok(())
        })
    }

    /// Whether the pool is asleep.
    pub(crate) fn asleep(&self) -> bool {
        self.pool.is_asleep()
    }

    /// Refuse a copy to or from an allocation of `tag` while its memory sleeps (call under the gate).
    fn check_awake(&self, tag: &str) -> aclshm::Result<()> {
        if self.pool.is_asleep() && !self.awake_tags.lock().iter().any(|t| t == tag) {
            return Err(Error::Asleep(format!(
                "the memory of allocations tagged {tag:?} is given back until wake_up() (or wake_up([{tag:?}]))"
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (device=0, *, chunk_bytes=None, reserve_bytes=None, page=None, trim_watermark=None, reserve_chunks=None, thread_cache=None, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        device: i32,
        chunk_bytes: Option<Size>,
        reserve_bytes: Option<Size>,
        page: Option<&str>,
        trim_watermark: Option<Size>,
        reserve_chunks: Option<u32>,
        thread_cache: Option<bool>,
        config: Option<PathBuf>,
    ) -> PyResult<Pool> {
        let base = match config {
            Some(p) => PoolConfig::load(p).map_err(err)?,
            None => PoolConfig::default(),
        };
        let c = pool_config(base, chunk_bytes, reserve_bytes, page, trim_watermark, reserve_chunks, thread_cache)?;
        let pool = on_runtime(py, |rt| aclshm::Pool::new(rt, device, c))?;
        Ok(Pool { pool, gate: Gate::new(), awake_tags: Mutex::new(Vec::new()) })
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

    /// Whether the pool is asleep (`sleep` was called and some of its memory is not woken yet).
    #[getter]
    fn is_asleep(&self) -> bool {
        self.asleep()
    }

    /// Allocate `size` bytes (aligned to 512, or to `align`, a power of two): an `Allocation`. `tag`
    /// (vLLM's: `"weights"`, `"kv_cache"`, ...; `"default"` when not given) says what `sleep` does with it:
    /// kept when its tag is offloaded, else discarded. A tagged allocation is aligned to 512 at most.
    #[pyo3(signature = (size, align=None, *, tag=None))]
    fn alloc(slf: &Bound<'_, Pool>, size: Size, align: Option<u64>, tag: Option<String>) -> PyResult<Allocation> {
        let size = size.bytes("size")?;
        let this = slf.get();
        let tag = tag.unwrap_or_else(|| DEFAULT_TAG.to_string());
        let a = this.gate.with(slf.py(), || match align {
            _ if tag == DEFAULT_TAG => this.pool.alloc_aligned(size, align.unwrap_or(GRANULE)),
            Some(al) if !al.is_power_of_two() || al > GRANULE => Err(Error::InvalidArgument(format!(
                "align={al} with tag={tag:?}: tagged allocations are aligned to {GRANULE} (a power of two up to {GRANULE})"
            ))),
            _ => this.pool.alloc_tagged(size, &tag),
        })?;
        Ok(Allocation { pool: slf.clone().unbind(), alloc: a, tag, live: RwLock::new(true) })
    }

    /// Put the pool to sleep (vLLM's `sleep`): allocations of `offload_tags` (a tag or a sequence of tags)
    /// are copied to page-locked host memory, then every chunk's physical memory goes back to the device;
    /// the other allocations read as undefined after the wake. Allocations, addresses and descriptors stay;
    /// allocating raises `AsleepError` until `wake_up`, and so do copies of allocations still asleep. A
    /// shared pool waits for its mirrors to unmap (`release_timeout` seconds, 30 by default: then
    /// `TimeoutError`, the pool asleep all the same). Returns what it did: `slept_chunks`,
    /// `trimmed_chunks` (free chunks given back for good), `released_bytes`, `kept_bytes`.
    #[pyo3(signature = (offload_tags=None, *, release_timeout=None))]
    fn sleep<'py>(
        &self,
        py: Python<'py>,
        offload_tags: Option<&Bound<'py, PyAny>>,
        release_timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let tags = offload_tags.map(tag_list).transpose()?.unwrap_or_default();
        let timeout = release_timeout.map(duration).transpose()?;
        report(py, &self.sleep_now(py, tags, timeout)?)
    }

    /// Wake the pool (vLLM's `wake_up`): all of it (`tags=None`), or the chunks that held allocations of
    /// `tags` (a tag or a sequence). New physical memory is mapped at the same addresses and what the sleep
    /// kept is copied back; mirrors map it again. Waking what is awake does nothing.
    #[pyo3(signature = (tags=None))]
    fn wake_up(&self, py: Python<'_>, tags: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let tags = tags.map(tag_list).transpose()?;
        self.wake_now(py, tags)
    }

    /// A context manager that puts the pool to sleep on entering (`as` gives `sleep`'s report) and wakes
    /// all of it on leaving, even when the block raises.
    #[pyo3(signature = (offload_tags=None, *, release_timeout=None))]
    fn sleeping(
        slf: &Bound<'_, Pool>,
        offload_tags: Option<&Bound<'_, PyAny>>,
        release_timeout: Option<f64>,
    ) -> PyResult<Sleeping> {
        let tags = offload_tags.map(tag_list).transpose()?.unwrap_or_default();
        let timeout = release_timeout.map(duration).transpose()?;
        Ok(Sleeping::new(PoolSleeper { pool: slf.clone().unbind(), offload_tags: tags, release_timeout: timeout }))
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
        Ok(self.gate.with(py, || self.pool.share(c))?.to_string())
    }

    /// The descriptor of a live allocation of this shared pool (text), for a mirror to map.
    fn descriptor(&self, py: Python<'_>, a: &Allocation) -> PyResult<String> {
        Ok(self.gate.with(py, || self.pool.descriptor(&a.alloc))?.to_hex())
    }

    /// Give back fully free chunks; returns how many.
    fn trim(&self, py: Python<'_>) -> PyResult<u32> {
        self.gate.with(py, || self.pool.trim())
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
        self.gate.close(py, || self.pool.close())
    }

    fn __repr__(&self) -> String {
        let s = self.pool.stats();
        format!(
            "<aclshm.Pool device={} mapped={} allocated={}{}{}>",
            s.device,
            s.mapped_bytes,
            s.allocated_bytes,
            if s.sleeping_chunks > 0 { " asleep" } else { "" },
            if self.gate.is_open() { "" } else { " closed" }
        )
    }
}

context_manager!(Pool, close);

/// An allocation of a `Pool`: its place (`offset`, `size`), its device address (`ptr`), and copies in
/// and out (`write`, `read`, `readinto`). Freed by `Pool.free` or `free()`.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Allocation {
    pool: Py<Pool>,
    alloc: aclshm::Allocation,
    /// Its tag (`"default"` unless given to `alloc`).
    tag: String,
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

    /// The allocation live, its pool open and its memory awake for the copy.
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T> {
        let pool = self.pool.get();
        let live = self.live.read();
        if !*live {
            return Err(Error::NotAllocated {
                pool: pool.pool.id(),
                offset: self.alloc.offset(),
                len: self.alloc.len(),
            });
        }
        pool.gate.read(|| {
            pool.check_awake(&self.tag)?;
            f(self.alloc.as_ptr() as usize + offset as usize)
        })
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

    /// The device address (unchanged by a sleep and a wake).
    #[getter]
    fn ptr(&self) -> usize {
        self.alloc.as_ptr() as usize
    }

    /// Its tag (`"default"` unless given to `Pool.alloc`): what `Pool.sleep` keeps or discards it by.
    #[getter]
    fn tag(&self) -> &str {
        &self.tag
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

    /// The descriptor (text) a mirror maps this allocation by; the pool must be shared.
    fn descriptor(&self, py: Python<'_>) -> PyResult<String> {
        self.pool.get().descriptor(py, self)
    }

    /// Free it (as `Pool.free`).
    fn free(&self, py: Python<'_>) -> PyResult<()> {
        self.pool.get().free(py, self)
    }

    fn __repr__(&self) -> String {
        format!(
            "<aclshm.Allocation offset={:#x} size={:#x} tag={:?}{}>",
            self.alloc.offset(),
            self.alloc.len(),
            self.tag,
            if *self.live.read() { "" } else { " freed" }
        )
    }
}

copy_methods!(Allocation, "the allocation", |a| a);

/// Another process's shared pool, mapped here: `Mirror(desc, device=0)` attaches through the owner's
/// rendezvous (which whitelists this process), on any device. Allocations are reached by the descriptors
/// the owner hands out (`ptr`, `read`, `write`, `readinto`). A context manager; `close()` unmaps.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Mirror {
    mirror: Held<aclshm::Mirror>,
    /// The device the pool is mapped on here.
    #[pyo3(get)]
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
    fn with_addr<T>(&self, offset: u64, f: impl FnOnce(usize) -> aclshm::Result<T>) -> aclshm::Result<T> {
        self.mirror.mirror.with_detached(|m| f(m.ptr(&self.desc)? as usize + offset as usize))
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
        let m = on_runtime(py, |rt| aclshm::Mirror::attach(rt, &d, device))?;
        Ok(Mirror { mirror: Held::new(m), device })
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

    /// What the mirror holds: `chunks`, `generation`, `imports`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        mirror_stats(py, &self.mirror.with(py, |m| Ok(m.stats()))?)
    }

    /// Unmap and release everything (the owner is told). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.mirror.close(py, aclshm::Mirror::close)
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Mirror device={}{}>", self.device, if self.mirror.is_closed() { " closed" } else { "" })
    }
}

context_manager!(Mirror, close);
copy_methods!(Mirror, "the allocation `desc` names", |m, desc: &str| &m.region(desc)?);

/// What `Pool.sleeping` puts to sleep, and how.
struct PoolSleeper {
    pool: Py<Pool>,
    offload_tags: Vec<String>,
    release_timeout: Option<std::time::Duration>,
}

impl Sleeper for PoolSleeper {
    fn is_asleep(&self) -> bool {
        self.pool.get().asleep()
    }

    fn sleep(&self, py: Python<'_>) -> PyResult<aclshm::SleepReport> {
        self.pool.get().sleep_now(py, self.offload_tags.clone(), self.release_timeout)
    }

    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        self.pool.get().wake_now(py, None)
    }

    fn describe(&self) -> String {
        format!("Pool offload_tags={:?}", self.offload_tags)
    }
}
