//! What a pool knows under its lock: the chunk slots, the heap and the block classes, and the counters
//! over them; and every operation on them. Pure bookkeeping: no runtime call is made here (the pool makes
//! those outside the lock, with what these operations hand it), so each operation is short and cannot fail
//! halfway.
//!
//! Invariants, kept by every operation:
//! - `free_chunks` counts the `Mapped` slots with nothing allocated in them; `mapped_chunks` the `Mapped`
//!   slots;
//! - a `Mapped { owner: Heap }` slot's range is in the heap and in no class; a `Mapped { owner: Class(c) }`
//!   slot is class `c`'s chunk and not in the heap; no other slot is in either;
//! - `live_allocations` counts heap allocations handed out and not freed (those kept in threads'
//!   magazines too: they are the heap's until a magazine gives them back).

#![deny(unsafe_code)]

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::stats::PoolStats;
use crate::sync::{Arc, StdArc};
use crate::vmm::{Mapping, VaRange};

use super::blocks::BlockClass;
use super::handle::{Allocation, Block, BlockClassId};
use super::heap::{FreeError, Heap, HeapBlock};
use super::records::Records;
use super::slots::{Leftover, Owner, Slot, Teardown};

/// Where a pool's bytes are: what turns a place in the range into a handle and an address.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// The pool's number in this process.
    pub pool: u32,
    /// The first address of the range.
    pub base: usize,
    /// Bytes per chunk.
    pub chunk: u64,
}

impl Geometry {
    /// The handle of block `index` of a `size`-byte class in the chunk `chunk` at `slot`.
    #[inline]
    pub(super) fn block(&self, class: BlockClassId, size: u64, slot: u32, chunk: u32, index: u32) -> Block {
        let offset = u64::from(slot) * self.chunk + u64::from(index) * size;
        Block { pool: self.pool, class: class.0, slot, chunk, index, offset, addr: self.base + offset as usize, size }
    }
}

/// The tag of allocations made without one (number 0).
pub(crate) const DEFAULT_TAG: &str = "default";
/// Most tags a pool knows (a sleeping chunk keeps the set of its tags as a bitmask).
pub(super) const MAX_TAGS: usize = 64;

pub(super) struct State {
    /// The pool's range; taken out only when the pool closes.
    pub range: Option<Arc<VaRange>>,
    /// Tag names by number; 0 is [`DEFAULT_TAG`].
    pub tags: Vec<String>,
    /// Heap allocations with a tag other than the default: offset -> (length, tag).
    pub tagged: BTreeMap<u64, (u64, u8)>,
    /// Each block class's tag.
    pub class_tags: Vec<u8>,
    /// Asleep: nothing can be allocated (some chunks are `Asleep`, or a sleep or wake is under way).
    pub asleep: bool,
    /// What a sleep kept of the sleeping chunks, in page-locked host memory, until they wake.
    pub kept: Option<super::kept::Kept>,
    pub slots: Vec<Slot>,
    heap: Heap,
    classes: Vec<BlockClass>,
    /// Mapped chunks with nothing allocated in them.
    pub free_chunks: u32,
    pub mapped_chunks: u32,
    live_allocations: u64,
    next_chunk_id: u32,
    generation: u64,
    chunks_grown: u64,
    chunks_trimmed: u64,
    pub closed: bool,
    /// A close is under way: nothing new is allocated, grown, trimmed, put to sleep or woken.
    pub closing: bool,
}

// The methods of the hot path (allocating and freeing inside mapped chunks) are `#[inline]`: the pool
// calls them from another module, which may be another codegen unit.
impl State {
    /// A pool of `slots` empty chunk slots of `chunk` bytes over `range`, its heap's records' words in
    /// `records`.
    pub(super) fn new(range: Arc<VaRange>, slots: usize, chunk: u64, records: Option<StdArc<Records>>) -> State {
        State {
            range: Some(range),
            tags: vec![DEFAULT_TAG.to_string()],
            tagged: BTreeMap::new(),
            class_tags: Vec::new(),
            asleep: false,
            kept: None,
            slots: (0..slots).map(|_| Slot::Empty).collect(),
            heap: Heap::with_records(chunk, slots, records),
            classes: Vec::new(),
            free_chunks: 0,
            mapped_chunks: 0,
            live_allocations: 0,
            next_chunk_id: 0,
            generation: 0,
            chunks_grown: 0,
            chunks_trimmed: 0,
            closed: false,
            closing: false,
        }
    }

    /// Refuse work on a closed pool (or one being closed).
    #[inline]
    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed || self.closing { Err(Error::Closed) } else { Ok(()) }
    }

    /// Whether a grow, a wake, a trim or a repair is under way: a slot `Growing` or `Retiring` (with
    /// `retiring_only`, a trim or a repair: memory on its way back to the device).
    pub(super) fn in_flight(&self, retiring_only: bool) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Retiring) || (!retiring_only && matches!(s, Slot::Growing)))
    }

    /// Refuse an allocation from a closed or sleeping pool.
    #[inline]
    pub(super) fn check_allocatable(&self) -> Result<()> {
        self.check_open()?;
        if self.asleep {
            return Err(Error::Asleep("nothing can be allocated until it wakes (Pool::wake)".into()));
        }
        Ok(())
    }

    /// The number of tag `name`, registered if new (at most [`MAX_TAGS`]).
    pub(super) fn tag(&mut self, name: &str) -> Result<u8> {
        if let Some(i) = self.tags.iter().position(|t| t == name) {
            return Ok(i as u8);
        }
        if self.tags.len() == MAX_TAGS {
            return Err(Error::InvalidArgument(format!(
                "a pool has at most {MAX_TAGS} tags; {name:?} is one too many"
            )));
        }
        self.tags.push(name.to_string());
        Ok((self.tags.len() - 1) as u8)
    }

    /// The tag of a heap allocation made with [`alloc`](State::alloc): recorded, so a sleep can keep it.
    pub(super) fn set_tag(&mut self, a: &mut Allocation, tag: u8) {
        if tag != 0 {
            a.tag = tag;
            self.tagged.insert(a.block.offset, (a.block.size, tag));
        }
    }

    fn is_free_chunk(&self, slot: usize) -> bool {
        match &self.slots[slot] {
            Slot::Mapped { owner: Owner::Heap, .. } => self.heap.used_in_chunk(slot) == 0,
            Slot::Mapped { owner: Owner::Class(c), .. } => self.classes[*c as usize].chunk_is_free(slot),
            _ => false,
        }
    }

    // ---- the heap ----

    /// Allocate `size` bytes aligned to `align` from the mapped heap chunks, if they have room.
    #[inline]
    pub(super) fn alloc(&mut self, g: &Geometry, size: u64, align: u64) -> Option<Allocation> {
        // Chunks the allocation is the first to use were free: the heap counts them as it accounts.
        let in_use = self.heap.in_use_chunks();
        let b = self.heap.alloc(size, align)?;
        self.free_chunks -= self.heap.in_use_chunks() - in_use;
        self.live_allocations += 1;
        Some(Allocation { pool: g.pool, block: b, addr: g.base + b.offset as usize, tag: 0 })
    }

    /// Free a heap allocation (checked: not allocated is [`Error::NotAllocated`], nothing changed);
    /// `claimable` as [`Heap::free`] says.
    #[inline]
    pub(super) fn free(&mut self, a: &Allocation, claimable: bool) -> Result<()> {
        let in_use = self.heap.in_use_chunks();
        self.heap.free(a.block, claimable).map_err(|FreeError::NotAllocated| Error::NotAllocated {
            pool: a.pool,
            offset: a.block.offset,
            len: a.block.size,
        })?;
        // Chunks the free left with nothing allocated are free.
        self.free_chunks += in_use - self.heap.in_use_chunks();
        self.live_allocations -= 1;
        if a.tag != 0 {
            self.tagged.remove(&a.block.offset);
        }
        Ok(())
    }

    /// Free a heap allocation a magazine kept, taken out of it (see [`Heap::free_cached`]); false if the
    /// heap no longer has it so (nothing changed).
    pub(super) fn free_cached(&mut self, b: HeapBlock) -> bool {
        let in_use = self.heap.in_use_chunks();
        if !self.heap.free_cached(b) {
            return false;
        }
        self.free_chunks += in_use - self.heap.in_use_chunks();
        self.live_allocations -= 1;
        true
    }

    /// Whether `b` is a live heap allocation.
    pub(super) fn is_allocated(&self, b: &HeapBlock) -> bool {
        self.heap.is_allocated(b)
    }

    /// The allocated heap blocks overlapping `[lo, hi)` (cold).
    pub(super) fn heap_allocated_in(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        self.heap.allocated_in(lo, hi)
    }

    /// The size of class `c`'s blocks and the indices of its allocated blocks in the chunk of `slot`.
    pub(super) fn class_allocated_in(&self, c: u16, slot: usize) -> (u64, Vec<u32>) {
        let class = &self.classes[c as usize];
        (class.size(), class.allocated_in_chunk(slot))
    }

    /// Take a fully free mapped chunk out of its allocator; false if it is not free.
    pub(super) fn remove_from_allocator(&mut self, slot: usize, owner: Owner, chunk: u64) -> bool {
        if !self.is_free_chunk(slot) {
            return false;
        }
        match owner {
            Owner::Heap => self.heap.remove_range(slot as u64 * chunk, chunk),
            Owner::Class(c) => self.classes[c as usize].remove_chunk(slot),
        }
    }

    /// Record that chunks were mapped or unmapped.
    pub(super) fn bump_generation(&mut self) {
        self.generation += 1;
    }

    // ---- block classes ----

    /// The class of `size`-byte blocks, registered if new.
    pub(super) fn block_class(&mut self, size: u64, chunk: u64) -> Result<BlockClassId> {
        if let Some(i) = self.classes.iter().position(|c| c.size() == size) {
            return Ok(BlockClassId(i as u16));
        }
        let i =
            u16::try_from(self.classes.len()).map_err(|_| Error::InvalidArgument("too many block classes".into()))?;
        self.classes.push(BlockClass::new(size, chunk));
        self.class_tags.push(0);
        Ok(BlockClassId(i))
    }

    /// Class `id`, or an error naming it unknown.
    #[inline]
    pub(super) fn class(&self, id: BlockClassId) -> Result<&BlockClass> {
        self.classes.get(id.0 as usize).ok_or_else(|| Error::InvalidArgument(format!("unknown block class {}", id.0)))
    }

    /// Take a block of `class` from its mapped chunks, if one is free.
    #[inline]
    pub(super) fn take_block(&mut self, g: &Geometry, class: BlockClassId) -> Result<Option<Block>> {
        self.class(class)?;
        let c = &mut self.classes[class.0 as usize];
        let Some((slot, chunk, index)) = c.alloc() else { return Ok(None) };
        if c.free_in_chunk(slot) == c.per_chunk() - 1 {
            self.free_chunks -= 1;
        }
        Ok(Some(g.block(class, c.size(), slot as u32, chunk, index)))
    }

    /// Take up to `n - out.len()` blocks of `class` from its mapped chunks into `out`.
    pub(super) fn take_blocks(
        &mut self,
        g: &Geometry,
        class: BlockClassId,
        n: usize,
        out: &mut Vec<Block>,
    ) -> Result<()> {
        while out.len() < n {
            let Some(b) = self.take_block(g, class)? else { break };
            out.push(b);
        }
        Ok(())
    }

    /// Whether `b` is a live block.
    pub(super) fn is_allocated_block(&self, b: &Block) -> bool {
        self.classes.get(b.class as usize).is_some_and(|c| c.is_allocated(b.slot as usize, b.chunk, b.index))
    }

    /// Free blocks, all or none: every one is checked first (unknown class, not allocated, listed twice).
    #[inline]
    pub(super) fn free_blocks(&mut self, blocks: &[Block]) -> Result<()> {
        let not_allocated = |b: &Block| Error::NotAllocated { pool: b.pool, offset: b.offset, len: b.size };
        if let [b] = blocks {
            // One block (the common case): no duplicate to look for.
            if !self.class(BlockClassId(b.class))?.is_allocated(b.slot as usize, b.chunk, b.index) {
                return Err(not_allocated(b));
            }
        } else {
            for b in blocks {
                if !self.class(BlockClassId(b.class))?.is_allocated(b.slot as usize, b.chunk, b.index) {
                    return Err(not_allocated(b));
                }
            }
            // A block listed twice is a double free too.
            let place = |b: &Block| (b.class, b.slot, b.index);
            if let Some(twice) = crate::listed::repeated(blocks, place) {
                return Err(not_allocated(blocks.iter().find(|b| place(b) == twice).expect("listed")));
            }
        }
        for b in blocks {
            let c = &mut self.classes[b.class as usize];
            if c.free_block(b.slot as usize, b.chunk, b.index) == Ok(true) {
                self.free_chunks += 1;
            }
        }
        Ok(())
    }

    // ---- growing ----

    /// Claim slots `pick` chooses (marking them `Growing`), unless the pool is closed.
    pub(super) fn claim(&mut self, pick: impl FnOnce(&State) -> Option<Vec<usize>>) -> Option<Vec<usize>> {
        if self.closed {
            return None;
        }
        let slots = pick(self)?;
        for &s in &slots {
            self.slots[s] = Slot::Growing;
        }
        Some(slots)
    }

    /// The lowest run of empty slots that holds what is needed: `count` slots for a block class, or (with
    /// `tail_need` > 0, bytes wanted from the heap) enough that, with a free heap tail just before the run,
    /// the heap can serve `tail_need` bytes.
    pub(super) fn pick_run(&self, chunk: u64, count: usize, tail_need: u64) -> Option<Vec<usize>> {
        let n = self.slots.len();
        let mut s = 0;
        while s < n {
            if !matches!(self.slots[s], Slot::Empty) {
                s += 1;
                continue;
            }
            let run = self.slots[s..].iter().take_while(|x| matches!(x, Slot::Empty)).count();
            let want = if tail_need > 0 {
                let tail = self.heap.free_ending_at(s as u64 * chunk).min(tail_need);
                // A count of slots beyond the range cannot fit any run.
                usize::try_from((tail_need - tail).div_ceil(chunk).max(1)).unwrap_or(usize::MAX)
            } else {
                count
            };
            if want <= run {
                return Some((s..s + want).collect());
            }
            s += run;
        }
        None
    }

    /// Put the chunks a grow mapped into `owner`'s allocator: from now on they can be allocated from.
    pub(super) fn commit(&mut self, chunk: u64, mapped: Vec<(usize, Mapping)>, owner: Owner) {
        for (s, mapping) in mapped {
            let id = self.next_chunk_id;
            self.next_chunk_id = self.next_chunk_id.wrapping_add(1);
            self.slots[s] = Slot::Mapped { owner, mapping };
            match owner {
                Owner::Heap => self.heap.add_range(s as u64 * chunk, chunk),
                Owner::Class(c) => self.classes[c as usize].add_chunk(s, id),
            }
            self.free_chunks += 1;
            self.mapped_chunks += 1;
            self.chunks_grown += 1;
        }
        self.generation += 1;
    }

    // ---- trimming and repairing ----

    /// Take fully free chunks out of the allocators, highest first, until at most `keep` free chunks are
    /// left (never going below `reserve` mapped chunks). Their slots are `Retiring`; the caller unmaps them.
    pub(super) fn take_free_chunks(&mut self, chunk: u64, keep: u32, reserve: u32) -> Vec<(usize, Mapping)> {
        let mut out = Vec::new();
        if self.asleep || self.closing {
            // A sleep or a wake owns the chunks until it is done; a sleeping pool has nothing to trim; a
            // close takes them all.
            return out;
        }
        for s in (0..self.slots.len()).rev() {
            if self.free_chunks <= keep || self.mapped_chunks <= reserve {
                break;
            }
            if !self.is_free_chunk(s) {
                continue;
            }
            let Slot::Mapped { owner, .. } = self.slots[s] else { continue };
            let taken = match owner {
                Owner::Heap => self.heap.remove_range(s as u64 * chunk, chunk),
                Owner::Class(c) => self.classes[c as usize].remove_chunk(s),
            };
            if !taken {
                continue;
            }
            let Slot::Mapped { mapping, .. } = std::mem::replace(&mut self.slots[s], Slot::Retiring) else {
                unreachable!("checked above")
            };
            self.free_chunks -= 1;
            self.mapped_chunks -= 1;
            out.push((s, mapping));
        }
        if !out.is_empty() {
            self.generation += 1;
        }
        out
    }

    /// Take every `Unknown` slot's leftover (the slot is `Retiring` while the caller retries it).
    pub(super) fn take_leftovers(&mut self) -> Vec<(usize, Leftover)> {
        let mut out = Vec::new();
        if self.closing {
            // The close under way takes them with every other slot.
            return out;
        }
        for (s, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot, Slot::Unknown(_)) {
                let Slot::Unknown(l) = std::mem::replace(slot, Slot::Retiring) else { unreachable!("matched above") };
                out.push((s, l));
            }
        }
        out
    }

    /// Record how tearing down `Retiring` slots went: `Empty` when released, `Unknown` with what is left
    /// otherwise. Returns how many were released and the first error.
    pub(super) fn settle(&mut self, results: Vec<(usize, Teardown)>) -> (u32, Vec<Error>) {
        let mut released = 0;
        let mut errors = Vec::new();
        for (s, r) in results {
            self.slots[s] = match r {
                Ok(()) => {
                    released += 1;
                    Slot::Empty
                }
                Err((e, left)) => {
                    errors.push(e);
                    Slot::Unknown(left)
                }
            };
        }
        (released, errors)
    }

    /// Count chunks given back by a trim.
    pub(super) fn trimmed(&mut self, n: u32) {
        self.chunks_trimmed += u64::from(n);
    }

    // ---- closing ----

    /// Take every slot out for the final teardown (refused while a grow or a trim is under way).
    pub(super) fn take_all(&mut self) -> Result<Vec<(usize, Slot)>> {
        if self.slots.iter().any(|s| matches!(s, Slot::Growing | Slot::Retiring)) {
            return Err(Error::InvalidArgument("close while a grow, trim, sleep or wake is under way".into()));
        }
        // What a sleep kept goes with the pool.
        self.kept = None;
        self.asleep = false;
        self.mapped_chunks = 0;
        self.free_chunks = 0;
        Ok(self.slots.iter_mut().enumerate().map(|(i, s)| (i, std::mem::replace(s, Slot::Retiring))).collect())
    }

    /// After the final teardown: every allocator empty (what it held was in the chunks just released).
    pub(super) fn reset_allocators(&mut self, chunk: u64) {
        self.heap = Heap::with_records(chunk, self.slots.len(), self.heap.records().cloned());
        for c in &mut self.classes {
            *c = BlockClass::new(c.size(), chunk);
        }
        self.live_allocations = 0;
        self.tagged.clear();
    }

    // ---- statistics ----

    /// What the pool holds now.
    pub(super) fn stats(
        &self,
        chunk: u64,
        device: i32,
        reserved: u64,
        runtime_calls: Vec<(&'static str, u64)>,
    ) -> PoolStats {
        let blocks: u64 = self.classes.iter().map(|c| c.allocated() * c.size()).sum();
        let allocated = self.heap.allocated_bytes() + blocks;
        let mapped = u64::from(self.mapped_chunks) * chunk;
        PoolStats {
            device,
            chunk_bytes: chunk,
            reserved_bytes: reserved,
            mapped_bytes: mapped,
            allocated_bytes: allocated,
            chunks: self.mapped_chunks,
            free_chunks: self.free_chunks,
            unknown_chunks: self.slots.iter().filter(|s| matches!(s, Slot::Unknown(_))).count() as u32,
            largest_free_extent: self.heap.largest_free(),
            utilization: if mapped == 0 { 0.0 } else { allocated as f64 / mapped as f64 },
            live_allocations: self.live_allocations,
            cached_bytes: 0,
            live_blocks: self.classes.iter().map(BlockClass::allocated).sum(),
            free_blocks: self.classes.iter().map(BlockClass::free).sum(),
            chunks_grown: self.chunks_grown,
            chunks_trimmed: self.chunks_trimmed,
            generation: self.generation,
            sleeping_chunks: self.slots.iter().filter(|s| matches!(s, Slot::Asleep { .. })).count() as u32,
            host_bytes: self.kept.as_ref().map_or(0, |k| k.bytes()),
            runtime_calls,
        }
    }
}
