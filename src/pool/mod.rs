//! The pool: device memory owned the way the best caching allocators own it (PyTorch's and torch_npu's
//! expandable segments), built so that sharing it between processes is natural.
//!
//! ```text
//!   one reserved virtual range, cut into chunk slots of `chunk_bytes`
//!   base                                                                      base + reserved
//!   |  slot 0   |  slot 1   |  slot 2   |  slot 3   |  slot 4   |  slot 5   | ...  |
//!   [ Mapped H  ][ Mapped H  ][ Mapped B0 ][  Empty    ][ Unknown  ][ Mapped H  ]
//!    \___ heap: one free/used block list ___/                       \_ heap _/
//!          (allocations may span H chunks    B0: 3 MiB blocks,       a hole breaks
//!           that are side by side)           one bitmap              the heap's chain
//! ```
//!
//! - The range is reserved once, up front (by default as large as the device's memory), so addresses never
//!   move and mapping more is cheap. The pool grows by physical chunks, each one `aclrtMallocPhysical`
//!   handle mapped whole into the lowest empty slots, so large allocations span chunks laid side by side.
//! - Variable-size allocations come from a TLSF heap over the heap's chunks (`heap`); fixed-size blocks
//!   (the KV-cache case) from a bitmap per block size, each class with chunks of its own (`blocks`).
//!   What they hand out are plain values (`handle`).
//! - Each slot is in an explicit state (`slots`): `Empty` (reserved, nothing mapped), `Growing` (claimed
//!   by a grow whose runtime calls are under way), `Mapped` (in an allocator), `Retiring` (taken out of the
//!   allocators, being unmapped), `Unknown` (an unmap or free failed: what the device holds is uncertain,
//!   so the slot is never used again until [`Pool::repair`] releases it).
//! - Everything the pool knows is one `State` under one lock (`state`: pure bookkeeping); this module
//!   makes the runtime calls around it.
//! - Whoever must follow the pool's chunks (its sharing, when it is shared) watches as a chunk observer:
//!   told of every chunk mapped (before it can be allocated from) and given back. The pool does not know
//!   who watches.
//! - The hot path (allocating and freeing inside mapped chunks) makes no runtime call: it takes the pool's
//!   lock, works on host-side records, and lets go. With [`PoolConfig::thread_cache`], in front of the
//!   heap each thread keeps what it freed of up to four sizes (each at most an eighth of a chunk and
//!   1 MiB) in magazines for its next allocations of those sizes, which then take no lock at all
//!   (`cache`); the pool takes them back before it grows, trims or sleeps.
//! - Runtime calls never happen under the lock: a grow claims
//!   slots under it, maps them outside it, and publishes them under it again; a trim takes fully free chunks
//!   out of the allocators under it (so no allocation can land in them) and unmaps them outside it. A grow
//!   that fails halfway is rolled back by a guard: nothing is left half-mapped.
//! - Trimming gives fully free chunks back (unmap, then free), highest slots first, so low addresses are
//!   refilled first; it happens on [`Pool::trim`], when a free leaves more than the watermark in fully free
//!   chunks, and when the device is out of memory (then the pool trims and retries once before returning
//!   [`Error::OutOfMemory`] with its statistics).
//! - A pool can sleep ([`Pool::sleep`]): every chunk's physical memory goes back, its place and allocations
//!   stay, what its tags say to keep is copied to host memory; [`Pool::wake`] maps new memory at the same
//!   places.
//!
//! ```text
//!   mod.rs   Pool: the public API, grow / trim / repair / close (the runtime calls)
//!   sleep.rs   sleep and wake (the runtime calls), the kept bytes' copies
//!     cache.rs   heap allocations through threads' magazines (no lock)
//!     inner.rs   a pool's parts (below both: neither needs the other)
//!     kept.rs    what a sleep keeps: pieces and the host buffer
//!     state.rs   State under the lock: slots, heap, classes, counters   (no runtime call)
//!       slots.rs    a slot's states, teardown, the chunk observer
//!       handle.rs   Allocation, Block, BlockClassId
//!       heap.rs     TLSF heap           blocks.rs   block bitmaps
//!         records.rs  the heap's records' words: live, free or cached, and generation
//!     config.rs  PoolConfig and configuration files
//! ```

mod blocks;
mod cache;
pub(crate) mod config;
mod divide;
mod handle;
mod heap;
mod inner;
mod kept;
mod records;
mod sleep;
mod slots;
mod state;

use std::fmt;
use std::time::Duration;

pub(crate) use config::ConfigFile;
pub use config::PoolConfig;
pub(crate) use divide::Divisor;
pub use handle::{Allocation, Block, BlockClassId};
pub use heap::GRANULE;
pub use sleep::{DEFAULT as DEFAULT_TAG, SleepConfig, SleepReport};
pub(crate) use slots::ChunkObserver;

use crate::device::on_device;
use crate::error::{AclError, Error, Result, close_on_drop};
use crate::magazine::{Gate, Magazines};
use crate::raw;
use crate::runtime::Runtime;
pub use crate::stats::PoolStats;
use crate::sync::stat::{AtomicU32, Ordering as StatOrdering};
use crate::sync::{Arc, Mutex, StdArc};
use crate::vmm::{DropErrors, Mapping, PhysicalMem, VaRange};

use inner::Inner;
use records::Records;
use slots::{Leftover, Owner, Slot, finish, teardown};
use state::{Geometry, State};

/// A pool of device memory on one device: variable-size allocations and fixed-size blocks over one
/// reserved range that grows and shrinks by physical chunks. `Send + Sync`: share it by reference or `Arc`.
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::{Pool, PoolConfig, Runtime};
///
/// let rt = Runtime::simulator();
/// let config = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, ..PoolConfig::default() };
/// let pool = Pool::new(&rt, 0, config)?;
/// let a = pool.alloc(3 << 20)?; // spans two 2 MiB chunks, mapped side by side
/// assert_eq!(pool.stats().chunks, 2);
/// let kv = pool.block_class(1 << 20)?; // 1 MiB blocks, two per chunk
/// let b = pool.alloc_block(kv)?;
/// pool.free(a)?;
/// pool.free_block(b)?;
/// assert_eq!(pool.trim()?, 3); // every chunk is free again: all three go back to the device
/// pool.close()?;
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("id", &self.inner.geometry.pool).field("device", &self.inner.device).finish()
    }
}

static NEXT_POOL: AtomicU32 = AtomicU32::new(1);

impl Pool {
    /// A pool on `device` of `rt`. Reserves its range and maps `config.reserve_chunks` chunks.
    ///
    /// With `config.reserve_bytes == 0` it asks the device for its memory size, making `device` the
    /// calling thread's current device for the call if it has another or none.
    pub fn new(rt: &Runtime, device: i32, config: PoolConfig) -> Result<Pool> {
        let page = config.page.bytes();
        let chunk = config.chunk_bytes;
        if chunk == 0 || !chunk.is_multiple_of(page) {
            return Err(Error::Misaligned { what: "chunk_bytes", value: chunk, align: page });
        }
        let granularity = raw::mem_get_allocation_granularity(
            rt,
            &crate::vmm::device_prop(device, config.page),
            aclshm_sys::aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM,
        )? as u64;
        if granularity == 0 || !chunk.is_multiple_of(granularity) {
            return Err(Error::Misaligned { what: "chunk_bytes", value: chunk, align: granularity });
        }
        let reserve = if config.reserve_bytes == 0 {
            on_device(rt, device, || Ok(raw::get_mem_info(rt, aclshm_sys::aclrtMemAttr::ACL_HBM_MEM)?.1 as u64))?
        } else {
            config.reserve_bytes
        };
        let slots = reserve.div_ceil(chunk).max(u64::from(config.reserve_chunks)).max(1);
        let slots = usize::try_from(slots).map_err(|_| Error::InvalidArgument("reserve_bytes is too large".into()))?;
        let bytes = (slots as u64).checked_mul(chunk).filter(|&b| b <= isize::MAX as u64 / 2).ok_or_else(|| {
            Error::InvalidArgument(format!("{slots} chunks of {chunk:#x} bytes are more than an address space"))
        })?;
        let errors = DropErrors::new();
        let range = VaRange::reserve(rt, bytes as usize, &errors)?;
        let geometry = Geometry { pool: NEXT_POOL.fetch_add(1, StatOrdering::Relaxed), base: range.base(), chunk };
        // Per-thread magazines, if asked for, and the words they claim allocations by.
        let cache_max = cache::max_size(&config);
        let records = (cache_max > 0).then(|| StdArc::new(Records::default()));
        let pool = Pool {
            inner: Arc::new(Inner {
                rt: rt.clone(),
                device,
                config: config.clone(),
                geometry,
                reserved: bytes,
                errors,
                state: Mutex::new(State::new(range, slots, chunk, records.clone())),
                observer: Mutex::new(None),
                sleep_wake: Mutex::new(()),
                records,
                cache: Magazines::new(if cache_max > 0 { cache::SIZES_PER_THREAD } else { 0 }, cache::entries),
                cache_max,
                awake: Gate::new(true),
            }),
        };
        if config.reserve_chunks > 0 {
            let n = config.reserve_chunks as usize;
            let claimed = pool
                .inner
                .state
                .lock()
                .claim(|st| (0..n).all(|s| matches!(st.slots[s], Slot::Empty)).then(|| (0..n).collect()));
            let claimed = claimed.ok_or_else(|| Error::InvalidArgument("reserve_chunks exceed the range".into()))?;
            pool.map_claimed(claimed, Owner::Heap)?;
        }
        Ok(pool)
    }

    /// The runtime the pool uses.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.rt
    }

    /// The pool's number in this process, as errors name it ([`Error::NotAllocated`], [`Error::WrongPool`]).
    pub fn id(&self) -> u32 {
        self.inner.geometry.pool
    }

    /// The device the pool is on.
    pub fn device(&self) -> i32 {
        self.inner.device
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The start of the pool's range.
    pub fn base(&self) -> usize {
        self.inner.geometry.base
    }

    /// Bytes of address space the pool reserved: its capacity.
    pub fn reserved_bytes(&self) -> u64 {
        self.inner.reserved
    }

    /// The chunk slots of its range.
    pub(crate) fn slot_count(&self) -> usize {
        (self.inner.reserved / self.inner.geometry.chunk) as usize
    }

    /// Where failures while dropping the pool's objects are kept.
    pub(crate) fn drop_errors(&self) -> &Arc<DropErrors> {
        &self.inner.errors
    }

    /// Allocate `size` bytes (aligned to [`GRANULE`]).
    #[inline]
    pub fn alloc(&self, size: u64) -> Result<Allocation> {
        self.alloc_aligned(size, GRANULE)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two, at most the chunk size).
    #[inline]
    pub fn alloc_aligned(&self, size: u64, align: u64) -> Result<Allocation> {
        let chunk = self.inner.geometry.chunk;
        if size == 0 || !align.is_power_of_two() || align > chunk {
            return Err(refused_request(size, align, chunk));
        }
        self.inner.errors.check()?;
        if align <= GRANULE
            && size <= self.inner.cache_max
            && let Some(a) = cache::take(&self.inner, size.next_multiple_of(GRANULE))
        {
            return Ok(a);
        }
        if let Some(a) = self.try_alloc(size, align)? {
            return Ok(a);
        }
        self.grow_and_alloc(size, align)
    }

    /// The slow path of an allocation: grow until it fits (or the device or the range is full).
    #[inline(never)]
    fn grow_and_alloc(&self, size: u64, align: u64) -> Result<Allocation> {
        // What the heap may need for it: the size rounded to the granule, plus room to align its start. A
        // request the whole range cannot hold fails now, before any chunk is mapped or trimmed.
        let need = size
            .checked_next_multiple_of(GRANULE)
            .and_then(|n| n.checked_add(if align > GRANULE { align } else { 0 }))
            .filter(|&n| n <= self.inner.reserved);
        let Some(need) = need else {
            return Err(self.out_of_memory(size));
        };
        // What threads' magazines hold first: it may be enough, or coalesce with free neighbours.
        if cache::take_back_all(&self.inner) > 0
            && let Some(a) = self.try_alloc(size, align)?
        {
            return Ok(a);
        }
        loop {
            self.grow(Owner::Heap, need)?;
            if let Some(a) = self.try_alloc(size, align)? {
                return Ok(a);
            }
            // Another thread took the new memory first: grow again (the range filling up ends the loop
            // with OutOfMemory, as every grow maps at least one chunk).
        }
    }

    #[inline(always)]
    fn try_alloc(&self, size: u64, align: u64) -> Result<Option<Allocation>> {
        let mut st = self.inner.state.lock();
        st.check_allocatable()?;
        Ok(st.alloc(&self.inner.geometry, size, align))
    }

    /// Refuse a handle of another pool.
    pub(crate) fn check_mine(&self, pool: u32) -> Result<()> {
        let expected = self.inner.geometry.pool;
        if pool != expected { Err(Error::WrongPool { expected, found: pool }) } else { Ok(()) }
    }

    /// Free an allocation of this pool.
    #[inline]
    pub fn free(&self, a: Allocation) -> Result<()> {
        self.check_mine(a.pool)?;
        let claimable = cache::claimable(&self.inner, &a);
        if claimable && cache::keep(&self.inner, &a) {
            return Ok(());
        }
        let over_watermark = {
            let mut st = self.inner.state.lock();
            st.check_open()?;
            st.free(&a, claimable)?;
            self.over_watermark(&st)
        };
        if over_watermark {
            self.auto_trim();
        }
        Ok(())
    }

    /// Whether `a` is a live allocation of this pool (an error says why not).
    pub(crate) fn check_allocated(&self, a: &Allocation) -> Result<()> {
        self.check_mine(a.pool)?;
        let st = self.inner.state.lock();
        st.check_open()?;
        if st.is_allocated(&a.block) {
            Ok(())
        } else {
            Err(Error::NotAllocated { pool: a.pool, offset: a.offset(), len: a.len() })
        }
    }

    /// Whether `b` is a live block of this pool (an error says why not).
    pub(crate) fn check_allocated_block(&self, b: &Block) -> Result<()> {
        self.check_mine(b.pool)?;
        let st = self.inner.state.lock();
        st.check_open()?;
        if st.is_allocated_block(b) {
            Ok(())
        } else {
            Err(Error::NotAllocated { pool: b.pool, offset: b.offset(), len: b.len() })
        }
    }

    fn over_watermark(&self, st: &State) -> bool {
        self.inner.config.trim_watermark.is_some_and(|w| u64::from(st.free_chunks) * self.inner.geometry.chunk > w)
    }

    /// Trim down to the watermark after a free; failures are kept for the next call to report.
    fn auto_trim(&self) {
        let w = self.inner.config.trim_watermark.unwrap_or(0);
        if let Err(e) = self.trim_to(w) {
            self.inner.errors.record(e);
        }
    }

    /// Register (or find) the class of `size`-byte blocks; `size` a multiple of [`GRANULE`], at most the
    /// chunk size.
    pub fn block_class(&self, size: u64) -> Result<BlockClassId> {
        if size == 0 || !size.is_multiple_of(GRANULE) {
            return Err(Error::Misaligned { what: "block size", value: size, align: GRANULE });
        }
        let chunk = self.inner.geometry.chunk;
        if size > chunk {
            return Err(Error::InvalidArgument(format!(
                "blocks of {size:#x} bytes do not fit chunks of {chunk:#x} bytes"
            )));
        }
        let mut st = self.inner.state.lock();
        st.check_open()?;
        st.block_class(size, chunk)
    }

    /// Blocks per chunk of a class.
    pub fn blocks_per_chunk(&self, class: BlockClassId) -> Result<u32> {
        Ok(self.inner.state.lock().class(class)?.per_chunk())
    }

    /// How many blocks of `class` are allocated now.
    pub fn blocks_allocated(&self, class: BlockClassId) -> Result<u64> {
        Ok(self.inner.state.lock().class(class)?.allocated())
    }

    /// How many blocks of `class` the pool's range holds at most.
    pub fn block_capacity(&self, class: BlockClassId) -> Result<u64> {
        Ok(self.slot_count() as u64 * u64::from(self.blocks_per_chunk(class)?))
    }

    /// The handle [`alloc_block`](Pool::alloc_block) gave for block `index` of `class` (blocks of `size`
    /// bytes) in the chunk `chunk` at `slot`: how a caller that keeps its blocks by number (the KV pool)
    /// makes one to free. Nothing is checked here; freeing it checks it is allocated.
    #[inline]
    pub(crate) fn block_handle(&self, class: BlockClassId, size: u64, slot: u32, chunk: u32, index: u32) -> Block {
        self.inner.geometry.block(class, size, slot, chunk, index)
    }

    /// Allocate a block of class `class`.
    #[inline]
    pub fn alloc_block(&self, class: BlockClassId) -> Result<Block> {
        self.inner.errors.check()?;
        // The hot path, small enough to inline into callers (the KV pool): a block from a mapped chunk.
        {
            let mut st = self.inner.state.lock();
            st.check_allocatable()?;
            if let Some(b) = st.take_block(&self.inner.geometry, class)? {
                return Ok(b);
            }
        }
        self.alloc_block_growing(class)
    }

    /// [`alloc_block`](Pool::alloc_block) when no mapped chunk has a free block: grow, take, again.
    #[cold]
    #[inline(never)]
    fn alloc_block_growing(&self, class: BlockClassId) -> Result<Block> {
        loop {
            let (taken, size) = {
                let mut st = self.inner.state.lock();
                st.check_allocatable()?;
                (st.take_block(&self.inner.geometry, class)?, st.class(class)?.size())
            };
            if let Some(b) = taken {
                return Ok(b);
            }
            // Each grow adds a chunk of blocks; another thread may take them first, then grow again. The
            // range filling up ends the loop with OutOfMemory.
            self.grow(Owner::Class(class.0), size)?;
        }
    }

    /// Allocate `n` blocks of `class` at once: all of them or, on failure, none (what was taken is given
    /// back). One lock acquisition per chunk's worth of blocks; each grow maps a chunk of blocks. More
    /// blocks than the whole range holds ([`block_capacity`](Pool::block_capacity)) is
    /// [`Error::OutOfMemory`] at once, before anything is allocated.
    pub fn alloc_blocks(&self, class: BlockClassId, n: usize) -> Result<Vec<Block>> {
        let (size, per_chunk) = {
            let st = self.inner.state.lock();
            let c = st.class(class)?;
            (c.size(), c.per_chunk())
        };
        if n as u64 > self.slot_count() as u64 * u64::from(per_chunk) {
            return Err(self.out_of_memory((n as u64).saturating_mul(size)));
        }
        self.inner.errors.check()?;
        let mut out = Vec::with_capacity(n);
        loop {
            let taken = {
                let mut st = self.inner.state.lock();
                st.check_allocatable().and_then(|()| st.take_blocks(&self.inner.geometry, class, n, &mut out))
            };
            if taken.is_ok() && out.len() == n {
                return Ok(out);
            }
            // Each grow adds a chunk of blocks (the range filling up ends the loop with OutOfMemory).
            if let Err(e) = taken.and_then(|()| self.grow(Owner::Class(class.0), size)) {
                // All or nothing: give back what was taken.
                if let Err(undo) = self.free_blocks(&out) {
                    self.inner.errors.record(undo);
                }
                return Err(e);
            }
        }
    }

    /// Free many blocks of this pool under one lock. Every block is checked first: if any is foreign or not
    /// allocated, nothing is freed.
    #[inline]
    pub fn free_blocks(&self, blocks: &[Block]) -> Result<()> {
        if let Some(b) = blocks.iter().find(|b| b.pool != self.inner.geometry.pool) {
            return Err(Error::WrongPool { expected: self.inner.geometry.pool, found: b.pool });
        }
        let over = {
            let mut st = self.inner.state.lock();
            st.check_open()?;
            st.free_blocks(blocks)?;
            self.over_watermark(&st)
        };
        if over {
            self.auto_trim();
        }
        Ok(())
    }

    /// Free a block of this pool.
    pub fn free_block(&self, b: Block) -> Result<()> {
        self.free_blocks(std::slice::from_ref(&b))
    }

    /// Map what `owner` needs to serve `need` more bytes: chunks enough for `need` for the heap (counting a
    /// free tail just before the chunks it gets), one chunk for a block class. When the device (or the
    /// range) is full, give back what is free, once, and try again; then fail with OutOfMemory.
    fn grow(&self, owner: Owner, need: u64) -> Result<()> {
        let chunk = self.inner.geometry.chunk;
        let mut trimmed = false;
        loop {
            let (count, tail_need) = match owner {
                Owner::Heap => (0, need),
                Owner::Class(_) => (1, 0),
            };
            // The claim's guard must be gone before `out_of_memory` takes the lock for the stats: bound in
            // one statement with the `ok_or_else`, the temporary guard would live through it (a deadlock
            // whenever the range had no room left).
            // Nothing is claimed once a sleep or a close began: they wait only for grows under way.
            let claim = {
                let mut st = self.inner.state.lock();
                st.check_allocatable()?;
                st.claim(|st| st.pick_run(chunk, count, tail_need))
            };
            let claimed = claim.ok_or_else(|| self.out_of_memory(need));
            match claimed.and_then(|slots| self.map_claimed(slots, owner)) {
                Ok(()) => return Ok(()),
                Err(e) if is_full(&e) && !trimmed => {
                    trimmed = true;
                    self.trim_to(0)?;
                    // Chunks another thread's trim took are on their way back to the device: a retry
                    // before they get there would fail for nothing.
                    self.inner.wait_settled(true, SETTLE_WAIT);
                }
                Err(e) if is_full(&e) => return Err(self.out_of_memory(need)),
                Err(e) => return Err(e),
            }
        }
    }

    fn out_of_memory(&self, requested: u64) -> Error {
        Error::OutOfMemory { requested, stats: Box::new(self.stats()) }
    }

    /// Map claimed slots for `owner`; roll back (nothing left half-mapped) on failure.
    fn map_claimed(&self, slots: Vec<usize>, owner: Owner) -> Result<()> {
        // The guard first: a close that began since the claim undoes it (the slots go back to `Empty`)
        // rather than leaving them `Growing`, which the close waits for.
        let mut grow = Grow { pool: self, slots, mapped: Vec::new(), committed: false };
        let range = {
            let st = self.inner.state.lock();
            st.check_open()?;
            st.range.clone().ok_or(Error::Closed)?
        };
        let chunk = self.inner.geometry.chunk as usize;
        for &s in &grow.slots.clone() {
            let phys = PhysicalMem::allocate(
                &self.inner.rt,
                self.inner.device,
                chunk,
                self.inner.config.page,
                &self.inner.errors,
            )?;
            let m = Mapping::map(&range, s * chunk, &phys)?;
            drop(phys);
            grow.mapped.push((s, m));
        }
        // A watched pool hands new chunks to its observer (a shared pool publishes them: export, whitelist,
        // table) before they can be allocated from, so every descriptor made over them names chunks the
        // mirrors can find.
        let observer = self.inner.observer.lock();
        if let Some(o) = observer.as_ref() {
            let chunks: Vec<(usize, &Arc<PhysicalMem>)> = grow.mapped.iter().map(|(s, m)| (*s, m.phys())).collect();
            o.grown(&chunks)?;
        }
        grow.commit(owner);
        drop(observer);
        Ok(())
    }

    /// Start watching the pool's chunks with the observer `start` makes from the chunks mapped now (slot,
    /// physical memory); from then on it is told of every chunk mapped or given back. If an observer
    /// watches already, it is returned and `start` is not called.
    pub(crate) fn watch(
        &self,
        start: impl FnOnce(&[(usize, &Arc<PhysicalMem>)]) -> Result<StdArc<dyn ChunkObserver>>,
    ) -> Result<StdArc<dyn ChunkObserver>> {
        let mut observer = self.inner.observer.lock();
        if let Some(o) = observer.as_ref() {
            return Ok(StdArc::clone(o));
        }
        let mapped: Vec<(usize, Arc<PhysicalMem>)> = {
            let st = self.inner.state.lock();
            st.check_open()?;
            st.slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Slot::Mapped { mapping, .. } => Some((i, Arc::clone(mapping.phys()))),
                    _ => None,
                })
                .collect()
        };
        let chunks: Vec<(usize, &Arc<PhysicalMem>)> = mapped.iter().map(|(s, p)| (*s, p)).collect();
        let o = start(&chunks)?;
        *observer = Some(StdArc::clone(&o));
        Ok(o)
    }

    /// The observer watching the pool's chunks, if any.
    pub(crate) fn observer(&self) -> Option<StdArc<dyn ChunkObserver>> {
        self.inner.observer.lock().clone()
    }

    /// Allocate `size` bytes tagged `tag` (vLLM's tags: "weights", "kv_cache", ...), for
    /// [`sleep`](Pool::sleep) to keep or discard by tag. [`alloc`](Pool::alloc) tags `default`.
    pub fn alloc_tagged(&self, size: u64, tag: &str) -> Result<Allocation> {
        let t = self.inner.state.lock().tag(tag)?;
        let mut a = self.alloc(size)?;
        let mut st = self.inner.state.lock();
        if st.is_allocated(&a.block) {
            st.set_tag(&mut a, t);
        }
        Ok(a)
    }

    /// Tag every block of `class` (a KV pool tags its blocks `kv_cache`), for [`sleep`](Pool::sleep).
    pub fn tag_block_class(&self, class: BlockClassId, tag: &str) -> Result<()> {
        let mut st = self.inner.state.lock();
        st.check_open()?;
        st.class(class)?;
        let t = st.tag(tag)?;
        st.class_tags[class.0 as usize] = t;
        Ok(())
    }

    /// Whether the pool is asleep (some chunk sleeps, or a sleep or wake is under way).
    pub fn is_asleep(&self) -> bool {
        self.inner.state.lock().asleep
    }

    /// Put the pool to sleep: copy what `config` keeps to page-locked host memory, then give back the
    /// physical memory of every chunk, keeping the reserved range, every allocation and block, and (in a
    /// shared pool) every mirror's addresses and every descriptor. Allocating is refused
    /// ([`Error::Asleep`]) until [`wake`](Pool::wake). A grow or trim under way in another thread
    /// finishes first; in a shared pool, mirrors unmap the chunks and acknowledge before the memory is
    /// freed. The sleep waits for both (`config.release_timeout`, then [`Error::Timeout`]): when it
    /// returns `Ok`, the device has every byte the pool mapped back.
    pub fn sleep(&self, config: &SleepConfig) -> Result<SleepReport> {
        // One at a time with wakes and closes: the magazines' gates change only under this lock.
        let _one = self.inner.sleep_wake.lock();
        let r = sleep::sleep(&self.inner, config, || {
            // Nothing comes out of a magazine while asleep (the pool's, or a cache in front of it); what
            // the pool's hold goes back to the heap first (free, nothing of it is kept).
            self.inner.awake.set_open(false);
            self.inner.cache.set_open(false);
            cache::take_back_all(&self.inner);
        });
        self.reopen_magazines();
        r
    }

    /// Open the magazines if the pool can allocate (a sleep that failed before anything slept, a wake),
    /// with `sleep_wake` held.
    fn reopen_magazines(&self) {
        let st = self.inner.state.lock();
        if st.check_allocatable().is_ok() {
            self.inner.awake.set_open(true);
            self.inner.cache.set_open(true);
        }
    }

    /// Whether the pool can allocate now, read without its lock (a moment's truth: a sleep may begin
    /// just after). What a cache in front of the pool checks before handing out what it holds.
    #[inline]
    pub(crate) fn is_awake(&self) -> bool {
        self.inner.awake.is_open()
    }

    /// Wake the pool: map new physical memory at the places of the sleeping chunks (all of them, or with
    /// `tags` those that held allocations of these tags), copy back what the sleep kept, and (in a shared
    /// pool) publish them so mirrors map them at their unchanged addresses. The pool can allocate again
    /// once no chunk sleeps. Waking a pool that is awake does nothing.
    pub fn wake(&self, tags: Option<&[&str]>) -> Result<()> {
        let _one = self.inner.sleep_wake.lock();
        let r = sleep::wake(&self.inner, tags);
        self.reopen_magazines();
        r
    }

    /// Give back every fully free chunk beyond the reserve. Returns how many chunks were given back.
    pub fn trim(&self) -> Result<u32> {
        self.inner.state.lock().check_open()?;
        cache::take_back_all(&self.inner);
        self.trim_to(0)
    }

    /// Give back fully free chunks, highest first, until at most `keep_bytes` are left in them (never going
    /// below the reserve chunks).
    fn trim_to(&self, keep_bytes: u64) -> Result<u32> {
        let chunk = self.inner.geometry.chunk;
        let keep = u32::try_from(keep_bytes.div_ceil(chunk)).unwrap_or(u32::MAX);
        let retiring = self.inner.state.lock().take_free_chunks(chunk, keep, self.inner.config.reserve_chunks);
        let n = retiring.len() as u32;
        let observer = self.observer();
        let results: Vec<_> =
            retiring.into_iter().map(|(s, m)| (s, teardown(m, observer.as_deref().map(|o| (o, s))))).collect();
        let mut st = self.inner.state.lock();
        let (_, errors) = st.settle(results);
        st.trimmed(n);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Try again to release chunks whose teardown failed. Returns how many were released.
    pub fn repair(&self) -> Result<u32> {
        let leftovers = self.inner.state.lock().take_leftovers();
        let observer = self.observer();
        let results: Vec<_> =
            leftovers.into_iter().map(|(s, l)| (s, finish(l, observer.as_deref().map(|o| (o, s))))).collect();
        let (done, errors) = self.inner.state.lock().settle(results);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Bytes mapped now (one lock, no counting): what [`stats`](Pool::stats) says in `mapped_bytes`.
    pub fn mapped_bytes(&self) -> u64 {
        u64::from(self.inner.state.lock().mapped_chunks) * self.inner.geometry.chunk
    }

    /// What the pool holds, and what it cost (cold: scans the slots and the heap's largest bin).
    pub fn stats(&self) -> PoolStats {
        let calls = self.inner.rt.call_counts();
        let mut s =
            self.inner.state.lock().stats(self.inner.geometry.chunk, self.inner.device, self.inner.reserved, calls);
        // Cached allocations are the heap's, but nobody's: free memory waiting in magazines.
        let (n, bytes) = self.inner.cache.held();
        s.live_allocations = s.live_allocations.saturating_sub(n);
        s.allocated_bytes = s.allocated_bytes.saturating_sub(bytes);
        s.cached_bytes = bytes;
        s.utilization = if s.mapped_bytes == 0 { 0.0 } else { s.allocated_bytes as f64 / s.mapped_bytes as f64 };
        s
    }

    /// Release everything: unmap and free every chunk, then release the range, reporting every failure
    /// (those recorded while dropping too). What fails to be released is kept (its slot `Unknown`, or the
    /// range) so that `close` can be called again, after [`repair`](Pool::repair) or not. Once everything
    /// is released the pool is closed: every later call fails with [`Error::Closed`]. Allocations still
    /// live become invalid. From its start nothing new is allocated, grown or trimmed (those fail with
    /// [`Error::Closed`]); a sleep, wake, grow or trim under way in another thread finishes first (if a
    /// grow or trim takes over 10 s, the close fails having changed nothing).
    pub fn close(&self) -> Result<()> {
        // One at a time with sleeps and wakes: a close waits for one under way to finish.
        let _one = self.inner.sleep_wake.lock();
        {
            let mut st = self.inner.state.lock();
            if st.closed {
                return Ok(());
            }
            // From here nothing is allocated, grown or trimmed; what is under way finishes first, before
            // anything is torn down (a close that cannot wait for it changes nothing).
            st.closing = true;
        }
        if !self.inner.wait_settled(false, SETTLE_WAIT) {
            self.inner.state.lock().closing = false;
            return Err(Error::InvalidArgument(format!(
                "close while a grow, trim or repair is under way (waited {SETTLE_WAIT:?} for it)"
            )));
        }
        // Magazines close for good (what they hold goes with the chunks).
        self.inner.awake.shut();
        self.inner.cache.seal();
        // The observer goes first (a shared pool's table closes, mirrors keep what they mapped, retired
        // chunks are freed). Then the pool's own chunks are freed directly.
        if let Some(o) = self.inner.observer.lock().take() {
            o.closed();
        }
        let slots = {
            let mut st = self.inner.state.lock();
            if st.closed {
                return Ok(());
            }
            st.take_all()?
        };
        let results: Vec<_> = slots
            .into_iter()
            .map(|(i, s)| {
                let r = match s {
                    Slot::Mapped { mapping, .. } => teardown(mapping, None),
                    Slot::Unknown(l) => finish(l, None),
                    Slot::Asleep { leftover: Some(p), .. } => finish(Leftover::Unmapped(p), None),
                    _ => Ok(()),
                };
                (i, r)
            })
            .collect();
        let mut st = self.inner.state.lock();
        let (_, mut errors) = st.settle(results);
        // The range last, and only when nothing is left in it.
        if errors.is_empty()
            && let Some(range) = st.range.take()
        {
            match Arc::try_unwrap(range) {
                Ok(range) => {
                    if let Err((e, range)) = range.release() {
                        errors.push(e);
                        st.range = Some(Arc::new(range));
                    }
                }
                // A mapping outside the pool's slots still holds it (a leaked one): it goes with it.
                Err(range) => drop(range),
            }
        }
        st.closed = errors.is_empty();
        // A close that failed leaves a pool that can still allocate (unshared, its magazines shut for good),
        // what failed kept for `repair` and the next close.
        st.closing = false;
        // Everything is in the slots now: empty allocators for a pool that is not closed.
        st.reset_allocators(self.inner.geometry.chunk);
        drop(st);
        errors.extend(self.inner.errors.take());
        if errors.is_empty() { Ok(()) } else { Err(Error::Deferred(errors)) }
    }
}

close_on_drop!(Pool, close, "a pool");

/// Why an allocation request is refused before anything is tried (off the hot path).
#[cold]
fn refused_request(size: u64, align: u64, chunk: u64) -> Error {
    if size == 0 {
        Error::InvalidArgument("an allocation of 0 bytes".into())
    } else if !align.is_power_of_two() {
        Error::InvalidArgument(format!("alignment {align:#x} is not a power of two"))
    } else {
        Error::InvalidArgument(format!("alignment {align:#x} is larger than the pool's chunks ({chunk:#x} bytes)"))
    }
}

/// How long a close or an out-of-memory retry waits for grows, trims and repairs under way (each takes
/// microseconds to milliseconds: only a runtime that hangs takes this long).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// The device is out of memory, or the pool's range has no room.
fn is_full(e: &Error) -> bool {
    e.acl_code() == Some(AclError::MEMORY_ALLOCATION) || matches!(e, Error::OutOfMemory { .. })
}

/// A grow in progress: slots claimed, some mapped. Dropped without `commit`, it undoes itself: mapped
/// chunks are unmapped and freed, slots go back to `Empty` (or `Unknown` if the undo failed).
struct Grow<'a> {
    pool: &'a Pool,
    slots: Vec<usize>,
    mapped: Vec<(usize, Mapping)>,
    committed: bool,
}

impl Grow<'_> {
    fn commit(mut self, owner: Owner) {
        let inner = &self.pool.inner;
        inner.state.lock().commit(inner.geometry.chunk, std::mem::take(&mut self.mapped), owner);
        self.committed = true;
    }
}

impl Drop for Grow<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let results: Vec<_> = self.mapped.drain(..).map(|(s, m)| (s, teardown(m, None))).collect();
        let mut st = self.pool.inner.state.lock();
        for &s in &self.slots {
            st.slots[s] = Slot::Empty;
        }
        for (s, r) in results {
            if let Err((e, left)) = r {
                self.pool.inner.errors.record(e);
                st.slots[s] = Slot::Unknown(left);
            }
        }
    }
}
