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
//! - Each slot is in an explicit state: `Empty` (reserved, nothing mapped), `Growing` (claimed by a grow
//!   whose runtime calls are under way), `Mapped` (in an allocator), `Retiring` (taken out of the
//!   allocators, being unmapped), `Unknown` (an unmap or free failed: what the device holds is uncertain,
//!   so the slot is never used again until [`Pool::repair`] releases it).
//! - The hot path (allocating and freeing inside mapped chunks) makes no runtime call: it takes the pool's
//!   lock, works on host-side records, and lets go. Runtime calls never happen under the lock: a grow claims
//!   slots under it, maps them outside it, and publishes them under it again; a trim takes fully free chunks
//!   out of the allocators under it (so no allocation can land in them) and unmaps them outside it. A grow
//!   that fails halfway is rolled back by a guard: nothing is left half-mapped.
//! - Trimming gives fully free chunks back (unmap, then free), highest slots first, so low addresses are
//!   refilled first; it happens on [`Pool::trim`], when a free leaves more than the watermark in fully free
//!   chunks, and when the device is out of memory (then the pool trims and retries once before returning
//!   [`Error::OutOfMemory`] with its statistics).

mod blocks;
pub(crate) mod config;
mod heap;

use std::fmt;

pub(crate) use config::ConfigFile;
pub use config::PoolConfig;
pub use heap::GRANULE;

use crate::device::on_device;
use crate::error::{AclError, Error, Result};
use crate::raw;
use crate::runtime::Runtime;
use crate::share::{AllocDesc, ShareConfig, ShareDesc, ShareStats, Sharing};
pub use crate::stats::PoolStats;
use crate::sync::stat::{AtomicU32, Ordering as StatOrdering};
use crate::sync::{Arc, Mutex};
use crate::vmm::{DropErrors, Mapping, PhysicalMem, VaRange};

use blocks::BlockClass;
use heap::{FreeError, Heap, HeapBlock};

/// A variable-size allocation: its place in the pool and its device address.
///
/// A plain value: freeing it twice, or in another pool, is refused with a typed error.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allocation {
    pool: u32,
    block: HeapBlock,
    addr: usize,
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Allocation(pool {}, offset {:#x}, {:#x} bytes)", self.pool, self.block.offset, self.block.size)
    }
}

impl Allocation {
    /// Offset from the start of the pool's range.
    pub fn offset(&self) -> u64 {
        self.block.offset
    }

    /// Its length in bytes: the size asked for, rounded up to [`GRANULE`].
    pub fn len(&self) -> u64 {
        self.block.size
    }

    /// Always false: an allocation is at least one granule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The device address (not dereferenceable on the host: copy with `aclrtMemcpy`).
    pub fn as_ptr(&self) -> *mut std::ffi::c_void {
        self.addr as *mut std::ffi::c_void
    }
}

/// A block size class of a pool (see [`Pool::block_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockClassId(u16);

/// A fixed-size block: its class, chunk, index and device address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pool: u32,
    class: u16,
    slot: u32,
    chunk: u32,
    index: u32,
    offset: u64,
    addr: usize,
    size: u64,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block(pool {}, class {}, slot {}, index {})", self.pool, self.class, self.slot, self.index)
    }
}

impl Block {
    /// Its chunk slot.
    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    /// Its index in the chunk.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The device address.
    pub fn as_ptr(&self) -> *mut std::ffi::c_void {
        self.addr as *mut std::ffi::c_void
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Its class.
    pub fn class(&self) -> BlockClassId {
        BlockClassId(self.class)
    }

    /// Offset from the start of the pool's range.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Who a mapped chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Heap,
    Class(u16),
}

/// What is left of a chunk whose teardown failed.
#[derive(Debug)]
enum Leftover {
    /// The unmap failed: it may still be mapped.
    Mapped(Mapping),
    /// The unmap worked, the free failed (boxed: errors stay small).
    Unmapped(Box<PhysicalMem>),
}

#[derive(Debug)]
enum Slot {
    Empty,
    Growing,
    Mapped { owner: Owner, mapping: Mapping },
    Retiring,
    Unknown(Leftover),
}

struct State {
    /// The pool's range; taken out only when the pool closes.
    range: Option<Arc<VaRange>>,
    slots: Vec<Slot>,
    heap: Heap,
    classes: Vec<BlockClass>,
    /// Mapped chunks with nothing allocated in them.
    free_chunks: u32,
    mapped_chunks: u32,
    live_allocations: u64,
    next_chunk_id: u32,
    generation: u64,
    chunks_grown: u64,
    chunks_trimmed: u64,
    closed: bool,
}

impl State {
    fn is_free_chunk(&self, slot: usize) -> bool {
        match &self.slots[slot] {
            Slot::Mapped { owner: Owner::Heap, .. } => self.heap.used_in_chunk(slot) == 0,
            Slot::Mapped { owner: Owner::Class(c), .. } => self.classes[*c as usize].chunk_is_free(slot),
            _ => false,
        }
    }
}

struct Inner {
    rt: Runtime,
    device: i32,
    id: u32,
    config: PoolConfig,
    chunk: u64,
    /// Start and size of the range (it lives in the state, to be released explicitly at close).
    base: usize,
    reserved: u64,
    errors: Arc<DropErrors>,
    state: Mutex<State>,
    /// The pool's sharing, once [`Pool::share`] started it. Its lock is taken before the state's (never
    /// after) and held across a grow's publication and commit, so a chunk is published exactly once
    /// whether it was mapped before sharing started or during it.
    sharing: Mutex<Option<Arc<Sharing>>>,
}

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
        f.debug_struct("Pool").field("id", &self.inner.id).field("device", &self.inner.device).finish()
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
        let base = range.base();
        let state = State {
            range: Some(range),
            slots: (0..slots).map(|_| Slot::Empty).collect(),
            heap: Heap::new(chunk, slots),
            classes: Vec::new(),
            free_chunks: 0,
            mapped_chunks: 0,
            live_allocations: 0,
            next_chunk_id: 0,
            generation: 0,
            chunks_grown: 0,
            chunks_trimmed: 0,
            closed: false,
        };
        let pool = Pool {
            inner: Arc::new(Inner {
                rt: rt.clone(),
                device,
                id: NEXT_POOL.fetch_add(1, StatOrdering::Relaxed),
                config: config.clone(),
                chunk,
                base,
                reserved: bytes,
                errors,
                state: Mutex::new(state),
                sharing: Mutex::new(None),
            }),
        };
        if config.reserve_chunks > 0 {
            let n = config.reserve_chunks as usize;
            let claimed = pool.claim(|st| (0..n).all(|s| matches!(st.slots[s], Slot::Empty)).then(|| (0..n).collect()));
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
        self.inner.id
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
        self.inner.base
    }

    /// Allocate `size` bytes (aligned to [`GRANULE`]).
    pub fn alloc(&self, size: u64) -> Result<Allocation> {
        self.alloc_aligned(size, GRANULE)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two, at most the chunk size).
    pub fn alloc_aligned(&self, size: u64, align: u64) -> Result<Allocation> {
        if size == 0 {
            return Err(Error::InvalidArgument("an allocation of 0 bytes".into()));
        }
        if !align.is_power_of_two() || align > self.inner.chunk {
            return Err(Error::Misaligned { what: "alignment", value: align, align: self.inner.chunk });
        }
        self.inner.errors.check()?;
        if let Some(a) = self.try_alloc(size, align)? {
            return Ok(a);
        }
        self.grow_and_alloc(size, align)
    }

    fn try_alloc(&self, size: u64, align: u64) -> Result<Option<Allocation>> {
        let mut st = self.inner.state.lock();
        self.check_open(&st)?;
        Ok(Self::alloc_locked(&self.inner, &mut st, size, align))
    }

    fn alloc_locked(inner: &Inner, st: &mut State, size: u64, align: u64) -> Option<Allocation> {
        let b = st.heap.alloc(size, align)?;
        let chunk = inner.chunk;
        let (first, last) = ((b.offset / chunk) as usize, ((b.offset + b.size - 1) / chunk) as usize);
        for slot in first..=last {
            let lo = (slot as u64 * chunk).max(b.offset);
            let hi = ((slot as u64 + 1) * chunk).min(b.offset + b.size);
            if st.heap.used_in_chunk(slot) == hi - lo {
                st.free_chunks -= 1;
            }
        }
        st.live_allocations += 1;
        Some(Allocation { pool: inner.id, block: b, addr: inner.base + b.offset as usize })
    }

    /// Free an allocation of this pool.
    pub fn free(&self, a: Allocation) -> Result<()> {
        if a.pool != self.inner.id {
            return Err(Error::WrongPool { expected: self.inner.id, found: a.pool });
        }
        let over_watermark = {
            let mut st = self.inner.state.lock();
            self.check_open(&st)?;
            st.heap.free(a.block).map_err(|FreeError::NotAllocated| Error::NotAllocated {
                pool: a.pool,
                offset: a.block.offset,
                len: a.block.size,
            })?;
            st.live_allocations -= 1;
            let chunk = self.inner.chunk;
            let (first, last) =
                ((a.block.offset / chunk) as usize, ((a.block.offset + a.block.size - 1) / chunk) as usize);
            for slot in first..=last {
                if st.heap.used_in_chunk(slot) == 0 {
                    st.free_chunks += 1;
                }
            }
            self.over_watermark(&st)
        };
        if over_watermark {
            self.auto_trim();
        }
        Ok(())
    }

    fn over_watermark(&self, st: &State) -> bool {
        self.inner.config.trim_watermark.is_some_and(|w| u64::from(st.free_chunks) * self.inner.chunk > w)
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
        if size > self.inner.chunk {
            return Err(Error::InvalidArgument(format!(
                "blocks of {size:#x} bytes do not fit chunks of {:#x} bytes",
                self.inner.chunk
            )));
        }
        let mut st = self.inner.state.lock();
        self.check_open(&st)?;
        if let Some(i) = st.classes.iter().position(|c| c.size() == size) {
            return Ok(BlockClassId(i as u16));
        }
        let i = u16::try_from(st.classes.len()).map_err(|_| Error::InvalidArgument("too many block classes".into()))?;
        st.classes.push(BlockClass::new(size, self.inner.chunk));
        Ok(BlockClassId(i))
    }

    /// Blocks per chunk of a class.
    pub fn blocks_per_chunk(&self, class: BlockClassId) -> Result<u32> {
        let st = self.inner.state.lock();
        st.classes
            .get(class.0 as usize)
            .map(BlockClass::per_chunk)
            .ok_or(Error::InvalidArgument("unknown block class".into()))
    }

    /// Allocate a block of class `class`.
    pub fn alloc_block(&self, class: BlockClassId) -> Result<Block> {
        self.inner.errors.check()?;
        loop {
            if let Some(b) = self.try_alloc_block(class)? {
                return Ok(b);
            }
            // Each grow adds a chunk of blocks; another thread may take them first, then grow again. The
            // range filling up ends the loop with OutOfMemory.
            let size = self.inner.state.lock().classes[class.0 as usize].size();
            self.grow(Owner::Class(class.0), size)?;
        }
    }

    fn try_alloc_block(&self, class: BlockClassId) -> Result<Option<Block>> {
        let mut out = Vec::with_capacity(1);
        self.take_blocks(class, 1, &mut out)?;
        Ok(out.pop())
    }

    /// Take up to `n - out.len()` blocks of `class` from mapped chunks, under one lock, into `out`.
    fn take_blocks(&self, class: BlockClassId, n: usize, out: &mut Vec<Block>) -> Result<()> {
        let mut st = self.inner.state.lock();
        self.check_open(&st)?;
        let st = &mut *st;
        let c = st.classes.get_mut(class.0 as usize).ok_or(Error::InvalidArgument("unknown block class".into()))?;
        let size = c.size();
        let per_chunk = c.per_chunk();
        while out.len() < n {
            let Some((slot, chunk, index)) = c.alloc() else { break };
            if c.free_in_chunk(slot) == per_chunk - 1 {
                st.free_chunks -= 1;
            }
            let offset = slot as u64 * self.inner.chunk + u64::from(index) * size;
            let addr = self.inner.base + offset as usize;
            out.push(Block {
                pool: self.inner.id,
                class: class.0,
                slot: slot as u32,
                chunk,
                index,
                offset,
                addr,
                size,
            });
        }
        Ok(())
    }

    /// Allocate `n` blocks of `class` at once: all of them or, on failure, none (what was taken is given
    /// back). One lock acquisition per chunk's worth of blocks; growth as for [`alloc_block`](Pool::alloc_block).
    pub fn alloc_blocks(&self, class: BlockClassId, n: usize) -> Result<Vec<Block>> {
        self.inner.errors.check()?;
        let mut out = Vec::with_capacity(n);
        loop {
            let taken = self.take_blocks(class, n, &mut out);
            if taken.is_ok() && out.len() == n {
                return Ok(out);
            }
            // Each grow adds a chunk of blocks (the range filling up ends the loop with OutOfMemory).
            let grown = taken.and_then(|()| {
                let size = self.inner.state.lock().classes[class.0 as usize].size();
                self.grow(Owner::Class(class.0), size)
            });
            if let Err(e) = grown {
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
    pub fn free_blocks(&self, blocks: &[Block]) -> Result<()> {
        if let Some(b) = blocks.iter().find(|b| b.pool != self.inner.id) {
            return Err(Error::WrongPool { expected: self.inner.id, found: b.pool });
        }
        let over = {
            let mut st = self.inner.state.lock();
            self.check_open(&st)?;
            // A block listed twice is a double free too.
            let mut seen = std::collections::HashSet::with_capacity(if blocks.len() > 1 { blocks.len() } else { 0 });
            for b in blocks {
                let c = st.classes.get(b.class as usize).ok_or(Error::InvalidArgument("unknown block class".into()))?;
                let twice = blocks.len() > 1 && !seen.insert((b.class, b.slot, b.index));
                if twice || !c.is_allocated(b.slot as usize, b.chunk, b.index) {
                    return Err(Error::NotAllocated { pool: b.pool, offset: b.offset, len: b.size });
                }
            }
            for b in blocks {
                let c = &mut st.classes[b.class as usize];
                if c.free_block(b.slot as usize, b.chunk, b.index) == Ok(true) {
                    st.free_chunks += 1;
                }
            }
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

    /// Claim slots with `pick` under the lock (marking them `Growing`).
    fn claim(&self, pick: impl FnOnce(&State) -> Option<Vec<usize>>) -> Option<Vec<usize>> {
        let mut st = self.inner.state.lock();
        if st.closed {
            return None;
        }
        let slots = pick(&st)?;
        for &s in &slots {
            st.slots[s] = Slot::Growing;
        }
        Some(slots)
    }

    /// Claim the lowest run of empty slots that, with a free heap tail just before it (`tail_need`: bytes
    /// wanted from the heap, 0 for a block class), holds what is needed: `count` slots for a class, or
    /// enough for `tail_need` bytes.
    fn claim_slots(&self, count: usize, tail_need: u64) -> Result<Vec<usize>> {
        let chunk = self.inner.chunk;
        self.claim(|st| {
            let n = st.slots.len();
            let mut s = 0;
            while s < n {
                if !matches!(st.slots[s], Slot::Empty) {
                    s += 1;
                    continue;
                }
                let run = st.slots[s..].iter().take_while(|x| matches!(x, Slot::Empty)).count();
                let want = if tail_need > 0 {
                    let tail = st.heap.free_ending_at(s as u64 * chunk).min(tail_need);
                    (tail_need - tail).div_ceil(chunk).max(1) as usize
                } else {
                    count
                };
                if want <= run {
                    return Some((s..s + want).collect());
                }
                s += run;
            }
            None
        })
        .ok_or_else(|| self.out_of_memory(tail_need.max(count as u64 * chunk)))
    }

    /// Map claimed slots for `owner`; roll back (nothing left half-mapped) on failure.
    fn map_claimed(&self, slots: Vec<usize>, owner: Owner) -> Result<()> {
        let range = {
            let st = self.inner.state.lock();
            self.check_open(&st)?;
            st.range.clone().ok_or(Error::Closed)?
        };
        let mut grow = Grow { pool: self, slots, mapped: Vec::new(), committed: false };
        let page = self.inner.config.page;
        for &s in &grow.slots.clone() {
            let phys = PhysicalMem::allocate(
                &self.inner.rt,
                self.inner.device,
                self.inner.chunk as usize,
                page,
                &self.inner.errors,
            )?;
            let m = Mapping::map(&range, s * self.inner.chunk as usize, &phys)?;
            drop(phys);
            grow.mapped.push((s, m));
        }
        // A shared pool publishes new chunks (export, whitelist, table) before they can be allocated from,
        // so every descriptor made over them names chunks the mirrors can find.
        let sharing = self.inner.sharing.lock();
        if let Some(sh) = sharing.as_ref() {
            let chunks: Vec<(usize, &Arc<PhysicalMem>)> = grow.mapped.iter().map(|(s, m)| (*s, m.phys())).collect();
            sh.publish(&chunks)?;
        }
        grow.commit(owner);
        drop(sharing);
        Ok(())
    }

    /// Share the pool with other processes (see [`crate::share`]): export every chunk (now and as it
    /// grows), publish the chunk table, open the rendezvous. Returns what workers attach with; calling it
    /// again returns the same.
    ///
    /// ```
    /// # let _dirs = unsafe { aclshm::doc_dirs() };
    /// use aclshm::{AllocDesc, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc};
    /// let rt = Runtime::simulator();
    /// let pool = Pool::new(&rt, 0, PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, ..PoolConfig::default() })?;
    /// let a = pool.alloc(1 << 20)?;
    /// let share = pool.share(ShareConfig::default())?;         // the chunk is exported, the rendezvous opens
    /// let text = share.to_string();                             // for a worker's command line or environment
    /// assert_eq!(text.parse::<ShareDesc>()?, share);
    /// let d = pool.descriptor(&a)?;                             // no runtime call
    /// assert_eq!(AllocDesc::from_hex(&d.to_hex())?, d);        // 64 bytes, 128 hex digits
    /// assert_eq!(pool.share_stats().unwrap().chunks, 1);
    /// // A worker: `Mirror::attach(&rt, &share, device)?.ptr(&d)?` (in another process: see `Mirror`).
    /// pool.free(a)?;
    /// pool.close()?;
    /// # Ok::<(), aclshm::Error>(())
    /// ```
    pub fn share(&self, config: ShareConfig) -> Result<ShareDesc> {
        let mut slot = self.inner.sharing.lock();
        if let Some(sh) = slot.as_ref() {
            return Ok(sh.desc());
        }
        let (slots, mapped): (usize, Vec<(usize, Arc<PhysicalMem>)>) = {
            let st = self.inner.state.lock();
            self.check_open(&st)?;
            let mapped = st
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Slot::Mapped { mapping, .. } => Some((i, Arc::clone(mapping.phys()))),
                    _ => None,
                })
                .collect();
            (st.slots.len(), mapped)
        };
        let sh =
            Sharing::start(&self.inner.rt, self.inner.device, self.inner.chunk, slots, &config, &self.inner.errors)?;
        let chunks: Vec<(usize, &Arc<PhysicalMem>)> = mapped.iter().map(|(s, p)| (*s, p)).collect();
        if let Err(e) = sh.publish(&chunks) {
            // Its threads hold it: stop it explicitly, or it would outlive this call.
            sh.stop();
            return Err(e);
        }
        let desc = sh.desc();
        *slot = Some(sh);
        Ok(desc)
    }

    /// The descriptor of a live allocation of this shared pool, for a mirror to map (64 bytes). No
    /// runtime call.
    pub fn descriptor(&self, a: &Allocation) -> Result<AllocDesc> {
        if a.pool != self.inner.id {
            return Err(Error::WrongPool { expected: self.inner.id, found: a.pool });
        }
        self.describe(a.block.offset, a.block.size, |st| st.heap.is_allocated(&a.block))
    }

    /// The descriptor of a live block of this shared pool (as [`descriptor`](Pool::descriptor)).
    pub fn block_descriptor(&self, b: &Block) -> Result<AllocDesc> {
        if b.pool != self.inner.id {
            return Err(Error::WrongPool { expected: self.inner.id, found: b.pool });
        }
        self.describe(b.offset, b.size, |st| {
            st.classes.get(b.class as usize).is_some_and(|c| c.is_allocated(b.slot as usize, b.chunk, b.index))
        })
    }

    /// The descriptor of `len` bytes at `offset`, if `live` says they are allocated.
    fn describe(&self, offset: u64, len: u64, live: impl FnOnce(&State) -> bool) -> Result<AllocDesc> {
        let sharing = self.inner.sharing.lock().clone().ok_or(Error::NotShared)?;
        {
            let st = self.inner.state.lock();
            self.check_open(&st)?;
            if !live(&st) {
                return Err(Error::NotAllocated { pool: self.inner.id, offset, len });
            }
        }
        let chunk = self.inner.chunk;
        let (first, last) = ((offset / chunk) as usize, ((offset + len - 1) / chunk) as usize);
        // Not published: another thread freed it and the chunk was trimmed meanwhile.
        let (ids, generation) =
            sharing.chunk_ids(first, last).ok_or(Error::NotAllocated { pool: self.inner.id, offset, len })?;
        Ok(AllocDesc { pool: sharing.token(), generation, offset, len, fingerprint: crate::share::fingerprint(ids) })
    }

    /// The sharing's state, if the pool is shared.
    pub fn share_stats(&self) -> Option<ShareStats> {
        self.inner.sharing.lock().as_ref().map(|s| s.stats())
    }

    /// The sharing, if any.
    fn sharing(&self) -> Option<Arc<Sharing>> {
        self.inner.sharing.lock().clone()
    }

    fn grow_and_alloc(&self, size: u64, align: u64) -> Result<Allocation> {
        loop {
            self.grow(Owner::Heap, size.next_multiple_of(GRANULE) + if align > GRANULE { align } else { 0 })?;
            if let Some(a) = self.try_alloc(size, align)? {
                return Ok(a);
            }
            // Another thread took the new memory first: grow again (bounded by the range).
        }
    }

    /// Map what `owner` needs to serve `need` more bytes: chunks enough for `need` for the heap (counting a
    /// free tail just before the chunks it gets), one chunk for a block class. When the device (or the
    /// range) is full, give back what is free, once, and try again; then fail with OutOfMemory.
    fn grow(&self, owner: Owner, need: u64) -> Result<()> {
        let mut trimmed = false;
        loop {
            let claimed = match owner {
                Owner::Heap => self.claim_slots(0, need),
                Owner::Class(_) => self.claim_slots(1, 0),
            };
            match claimed.and_then(|slots| self.map_claimed(slots, owner)) {
                Ok(()) => return Ok(()),
                Err(e) if is_full(&e) && !trimmed => {
                    trimmed = true;
                    self.trim_to(0)?;
                }
                Err(e) if is_full(&e) => return Err(self.out_of_memory(need)),
                Err(e) => return Err(e),
            }
        }
    }

    fn out_of_memory(&self, requested: u64) -> Error {
        Error::OutOfMemory { requested, stats: Box::new(self.stats()) }
    }

    /// Give back every fully free chunk beyond the reserve. Returns how many chunks were given back.
    pub fn trim(&self) -> Result<u32> {
        self.check_open(&self.inner.state.lock())?;
        self.trim_to(0)
    }

    /// Give back fully free chunks, highest first, until at most `keep_bytes` are left in them (never going
    /// below the reserve chunks).
    fn trim_to(&self, keep_bytes: u64) -> Result<u32> {
        let chunk = self.inner.chunk;
        let keep = keep_bytes.div_ceil(chunk) as u32;
        let reserve = self.inner.config.reserve_chunks;
        let retiring: Vec<(usize, Mapping)> = {
            let mut st = self.inner.state.lock();
            let mut out = Vec::new();
            for s in (0..st.slots.len()).rev() {
                if st.free_chunks <= keep || st.mapped_chunks <= reserve {
                    break;
                }
                if !st.is_free_chunk(s) {
                    continue;
                }
                let Slot::Mapped { owner, .. } = st.slots[s] else { continue };
                let taken = match owner {
                    Owner::Heap => st.heap.remove_range(s as u64 * chunk, chunk),
                    Owner::Class(c) => st.classes[c as usize].remove_chunk(s),
                };
                if !taken {
                    continue;
                }
                let Slot::Mapped { mapping, .. } = std::mem::replace(&mut st.slots[s], Slot::Retiring) else {
                    unreachable!("checked above")
                };
                st.free_chunks -= 1;
                st.mapped_chunks -= 1;
                out.push((s, mapping));
            }
            if !out.is_empty() {
                st.generation += 1;
            }
            out
        };
        let n = retiring.len() as u32;
        let sharing = self.sharing();
        let mut results = Vec::with_capacity(retiring.len());
        for (s, m) in retiring {
            results.push((s, teardown(m, sharing.as_deref().map(|sh| (sh, s)))));
        }
        let mut first_error = None;
        let mut st = self.inner.state.lock();
        for (s, r) in results {
            st.slots[s] = match r {
                Ok(()) => Slot::Empty,
                Err((e, left)) => {
                    first_error.get_or_insert(e);
                    Slot::Unknown(left)
                }
            };
        }
        st.chunks_trimmed += u64::from(n);
        match first_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Try again to release chunks whose teardown failed. Returns how many were released.
    pub fn repair(&self) -> Result<u32> {
        let leftovers: Vec<(usize, Leftover)> = {
            let mut st = self.inner.state.lock();
            (0..st.slots.len())
                .filter(|&s| matches!(st.slots[s], Slot::Unknown(_)))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|s| match std::mem::replace(&mut st.slots[s], Slot::Retiring) {
                    Slot::Unknown(l) => (s, l),
                    _ => unreachable!("filtered above"),
                })
                .collect()
        };
        let mut done = 0;
        let mut first_error = None;
        let sharing = self.sharing();
        let results: Vec<_> =
            leftovers.into_iter().map(|(s, l)| (s, finish(l, sharing.as_deref().map(|sh| (sh, s))))).collect();
        let mut st = self.inner.state.lock();
        for (s, r) in results {
            st.slots[s] = match r {
                Ok(()) => {
                    done += 1;
                    Slot::Empty
                }
                Err((e, l)) => {
                    first_error.get_or_insert(e);
                    Slot::Unknown(l)
                }
            };
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Statistics (cold: scans the slots and the heap's largest bin).
    /// Bytes mapped now (one lock, no counting): what [`stats`](Pool::stats) says in `mapped_bytes`.
    pub fn mapped_bytes(&self) -> u64 {
        u64::from(self.inner.state.lock().mapped_chunks) * self.inner.chunk
    }

    /// What the pool holds, and what it cost.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state.lock();
        let chunk = self.inner.chunk;
        let blocks: u64 = st.classes.iter().map(|c| c.allocated() * c.size()).sum();
        let allocated = st.heap.allocated_bytes() + blocks;
        let mapped = u64::from(st.mapped_chunks) * chunk;
        PoolStats {
            device: self.inner.device,
            chunk_bytes: chunk,
            reserved_bytes: self.inner.reserved,
            mapped_bytes: mapped,
            allocated_bytes: allocated,
            chunks: st.mapped_chunks,
            free_chunks: st.free_chunks,
            unknown_chunks: st.slots.iter().filter(|s| matches!(s, Slot::Unknown(_))).count() as u32,
            largest_free_extent: st.heap.largest_free(),
            utilization: if mapped == 0 { 0.0 } else { allocated as f64 / mapped as f64 },
            live_allocations: st.live_allocations,
            live_blocks: st.classes.iter().map(BlockClass::allocated).sum(),
            free_blocks: st.classes.iter().map(BlockClass::free).sum(),
            chunks_grown: st.chunks_grown,
            chunks_trimmed: st.chunks_trimmed,
            generation: st.generation,
            runtime_calls: self.inner.rt.call_counts(),
        }
    }

    /// Release everything: unmap and free every chunk, then release the range, reporting every failure
    /// (those recorded while dropping too). What fails to be released is kept (its slot `Unknown`, or the
    /// range) so that `close` can be called again, after [`repair`](Pool::repair) or not. Once everything
    /// is released the pool is closed: every later call fails with [`Error::Closed`]. Allocations still
    /// live become invalid.
    pub fn close(&self) -> Result<()> {
        // Sharing goes first: the table closes (mirrors keep what they mapped), the rendezvous stops,
        // retired chunks are freed. Then the pool's own chunks are freed directly.
        if let Some(sh) = self.inner.sharing.lock().take() {
            sh.stop();
        }
        let slots: Vec<(usize, Slot)> = {
            let mut st = self.inner.state.lock();
            if st.closed {
                return Ok(());
            }
            if st.slots.iter().any(|s| matches!(s, Slot::Growing | Slot::Retiring)) {
                return Err(Error::InvalidArgument("close while a grow or trim is under way".into()));
            }
            st.mapped_chunks = 0;
            st.free_chunks = 0;
            st.slots.iter_mut().enumerate().map(|(i, s)| (i, std::mem::replace(s, Slot::Retiring))).collect()
        };
        let mut errors = Vec::new();
        let results: Vec<_> = slots
            .into_iter()
            .map(|(i, s)| {
                let r = match s {
                    Slot::Mapped { mapping, .. } => teardown(mapping, None),
                    Slot::Unknown(l) => finish(l, None),
                    _ => Ok(()),
                };
                (i, r)
            })
            .collect();
        let mut st = self.inner.state.lock();
        for (i, r) in results {
            st.slots[i] = match r {
                Ok(()) => Slot::Empty,
                Err((e, left)) => {
                    errors.push(e);
                    Slot::Unknown(left)
                }
            };
        }
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
        // Everything is in the tables now: rebuild them as empty for a pool that is not closed.
        st.heap = Heap::new(self.inner.chunk, st.slots.len());
        for c in &mut st.classes {
            *c = BlockClass::new(c.size(), self.inner.chunk);
        }
        st.live_allocations = 0;
        drop(st);
        errors.extend(self.inner.errors.take());
        if errors.is_empty() { Ok(()) } else { Err(Error::Deferred(errors)) }
    }

    /// Refuse work on a closed pool.
    fn check_open(&self, st: &State) -> Result<()> {
        if st.closed { Err(Error::Closed) } else { Ok(()) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Nobody is left to return errors to (close() returns them): say so rather than lose them.
        if let Err(e) = self.close() {
            eprintln!("aclshm: while dropping a pool: {e}");
        }
    }
}

/// Unmap, then free: a chunk's teardown. A shared chunk (`retire`: the sharing and its slot) is handed to
/// the sharing instead of freed, to be freed once no mirror can need it. On failure, what is left.
fn teardown(m: Mapping, retire: Option<(&Sharing, usize)>) -> std::result::Result<(), (Error, Leftover)> {
    finish(Leftover::Mapped(m), retire)
}

/// Carry a leftover's teardown on from where it stopped.
fn finish(l: Leftover, retire: Option<(&Sharing, usize)>) -> std::result::Result<(), (Error, Leftover)> {
    let phys = match l {
        Leftover::Mapped(m) => match m.unmap() {
            Ok(phys) => phys,
            Err((e, m)) => return Err((e, Leftover::Mapped(m))),
        },
        Leftover::Unmapped(p) => Arc::new(*p),
    };
    if let Some((sharing, slot)) = retire {
        sharing.retire(slot, phys);
        return Ok(());
    }
    match Arc::try_unwrap(phys) {
        Ok(p) => p.free().map_err(|(e, p)| (e, Leftover::Unmapped(Box::new(p)))),
        // Someone else holds the physical memory too: it is freed with their reference.
        Err(_) => Ok(()),
    }
}

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
        let mut st = inner.state.lock();
        let chunk = inner.chunk;
        for (s, mapping) in self.mapped.drain(..) {
            let id = st.next_chunk_id;
            st.next_chunk_id = st.next_chunk_id.wrapping_add(1);
            st.slots[s] = Slot::Mapped { owner, mapping };
            match owner {
                Owner::Heap => st.heap.add_range(s as u64 * chunk, chunk),
                Owner::Class(c) => st.classes[c as usize].add_chunk(s, id),
            }
            st.free_chunks += 1;
            st.mapped_chunks += 1;
            st.chunks_grown += 1;
        }
        st.generation += 1;
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
