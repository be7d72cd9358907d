//! The variable-size allocator: two-level segregated fit (TLSF) over byte offsets of the pool's range.
//!
//! Device memory cannot hold allocator headers, so every block is a record on the host, in a slab,
//! linked to its neighbours in address order (for coalescing) and, when free, into one of the size bins.
//! Allocation and free are O(1): two bitmap scans find a bin whose every block fits, a block is split if it
//! is larger, and a freed block merges with free neighbours before going back to its bin.
//!
//! ```text
//!   offsets:  |<-- chunk 0 -->|<-- chunk 1 -->|   (hole)   |<-- chunk 3 -->|
//!   blocks:   [a: used][b: free          ][c]              [d: free       ]
//!             a<->b<->c linked in address order; d has no neighbours: the hole breaks the chain
//!   bins:     fl = floor(log2(size)), sl = the next 4 bits; bitmaps say which bins are non-empty
//! ```
//!
//! Sizes are multiples of [`GRANULE`] (512 bytes). Ranges are added as memory is mapped and removed when
//! it is trimmed (they must be entirely free then); those cold paths scan the blocks. The heap also counts,
//! per chunk of the pool, the bytes allocated in it, so a fully free chunk is known at once.
//!
//! Whether an allocation is live is its record's generation, which its handle carries: in the block record
//! (under the pool's lock, like the rest), or, in a pool with per-thread magazines, in the record's word
//! in [`Records`], which a magazine can change without the lock (`records`): an allocation kept in a
//! magazine is allocated here (not free, not in a bin) and not live.
//!
//! Invariants (checked by `check` in tests): blocks of one contiguous range tile it exactly; no two free
//! blocks are neighbours; every free block is in the bin of its size, every allocated one in none; the
//! per-chunk counts sum to the allocated bytes.

#![deny(unsafe_code)]

use slab::Slab;

use super::divide::Divisor;
use super::records::{CACHED, FREE, LIVE, Records};
use crate::sync::StdArc;

/// Allocation granularity and default alignment: every size and offset is a multiple of it.
pub const GRANULE: u64 = 512;
const GRANULE_SHIFT: u32 = 9;
/// log2 of the number of second-level bins per first-level bin.
const SL_LOG2: u32 = 4;
const SL: usize = 1 << SL_LOG2;
/// First-level bins: enough for 2^(FL + GRANULE_SHIFT + SL_LOG2 - 1) bytes, far beyond any device.
const FL: usize = 40;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    offset: u64,
    size: u64,
    prev_phys: u32,
    next_phys: u32,
    prev_free: u32,
    next_free: u32,
    free: bool,
    /// The live allocation's generation (0: none); unused when the words in [`Records`] hold it.
    generation: u32,
}

/// An allocated block: enough to free it and to check that what is freed was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeapBlock {
    /// Slab key of the block record.
    pub key: u32,
    /// Generation of the record when it was allocated (its word's, in [`Records`]).
    pub generation: u32,
    /// Offset in the range.
    pub offset: u64,
    /// Size in bytes (a multiple of [`GRANULE`]).
    pub size: u64,
}

/// Why a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// No live allocation matches: freed twice, never allocated here, or forged.
    NotAllocated,
}

/// A TLSF allocator over offsets.
#[derive(Debug)]
pub struct Heap {
    blocks: Slab<Block>,
    fl_bitmap: u64,
    sl_bitmap: [u32; FL],
    heads: [[u32; SL]; FL],
    /// The records' words, in a pool with magazines; else generations are in the blocks.
    records: Option<StdArc<Records>>,
    next_generation: u32,
    chunk: u64,
    per_chunk: Divisor,
    /// Chunks with something allocated in them (`used` not 0).
    in_use_chunks: u32,
    /// Bytes allocated in each chunk of the range (indexed by offset / chunk).
    used: Vec<u64>,
    free_bytes: u64,
    allocated_bytes: u64,
}

/// The bin a free block of `size` bytes goes in.
fn bin_of(size: u64) -> (usize, usize) {
    let units = size >> GRANULE_SHIFT;
    if units < SL as u64 {
        return (0, units as usize);
    }
    let msb = 63 - units.leading_zeros();
    let fl = (msb - SL_LOG2 + 1) as usize;
    let sl = ((units >> (msb - SL_LOG2)) as usize) & (SL - 1);
    (fl, sl)
}

/// The first bin whose every block holds `size` bytes.
fn bin_for_request(size: u64) -> Option<(usize, usize)> {
    let units = size >> GRANULE_SHIFT;
    if units < SL as u64 {
        return Some((0, units as usize));
    }
    let msb = 63 - units.leading_zeros();
    let rounded = units.checked_add((1 << (msb - SL_LOG2)) - 1)?;
    let (fl, sl) = bin_of(rounded << GRANULE_SHIFT);
    (fl < FL).then_some((fl, sl))
}

impl Heap {
    /// An empty heap over a range of `chunks` chunks of `chunk` bytes.
    #[cfg(test)]
    pub fn new(chunk: u64, chunks: usize) -> Heap {
        Heap::with_records(chunk, chunks, Some(StdArc::default()))
    }

    /// An empty heap whose records' words are in `records` if given (a pool's, kept across heaps so that
    /// a generation never repeats).
    pub fn with_records(chunk: u64, chunks: usize, records: Option<StdArc<Records>>) -> Heap {
        assert!(chunk.is_multiple_of(GRANULE) && chunk > 0, "chunk size {chunk} is not a multiple of {GRANULE}");
        Heap {
            blocks: Slab::new(),
            fl_bitmap: 0,
            sl_bitmap: [0; FL],
            heads: [[NIL; SL]; FL],
            records,
            next_generation: 0,
            chunk,
            per_chunk: Divisor::new(chunk),
            in_use_chunks: 0,
            used: vec![0; chunks],
            free_bytes: 0,
            allocated_bytes: 0,
        }
    }

    /// Where its records' words are, if anywhere.
    pub fn records(&self) -> Option<&StdArc<Records>> {
        self.records.as_ref()
    }

    /// Bytes allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// Bytes free (in ranges added and not removed).
    #[cfg(test)]
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Chunks with something allocated in them.
    #[inline]
    pub fn in_use_chunks(&self) -> u32 {
        self.in_use_chunks
    }

    /// Bytes allocated in chunk `i`.
    pub fn used_in_chunk(&self, i: usize) -> u64 {
        self.used[i]
    }

    /// The allocated blocks that overlap `[lo, hi)`, as (offset, size), in no order. Cold: walks every
    /// block record (for a sleep, which copies what it keeps).
    pub fn allocated_in(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        self.blocks
            .iter()
            .filter(|(k, b)| !b.free && b.offset < hi && b.offset + b.size > lo && !self.cached(*k as u32))
            .map(|(_, b)| (b.offset, b.size))
            .collect()
    }

    /// Whether allocated block `key` is kept in a thread's magazine.
    fn cached(&self, key: u32) -> bool {
        self.records.as_ref().and_then(|r| r.get(key)).is_some_and(|r| r.load().1 == CACHED)
    }

    #[inline]
    fn link_free(&mut self, key: u32) {
        let (fl, sl) = bin_of(self.blocks[key as usize].size);
        let head = self.heads[fl][sl];
        {
            let b = &mut self.blocks[key as usize];
            b.free = true;
            b.prev_free = NIL;
            b.next_free = head;
        }
        if head != NIL {
            self.blocks[head as usize].prev_free = key;
        }
        self.heads[fl][sl] = key;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmap[fl] |= 1 << sl;
    }

    #[inline]
    fn unlink_free(&mut self, key: u32) {
        let (prev, next, size) = {
            let b = &self.blocks[key as usize];
            (b.prev_free, b.next_free, b.size)
        };
        let (fl, sl) = bin_of(size);
        if prev != NIL {
            self.blocks[prev as usize].next_free = next;
        } else {
            self.heads[fl][sl] = next;
            if next == NIL {
                self.sl_bitmap[fl] &= !(1 << sl);
                if self.sl_bitmap[fl] == 0 {
                    self.fl_bitmap &= !(1 << fl);
                }
            }
        }
        if next != NIL {
            self.blocks[next as usize].prev_free = prev;
        }
        let b = &mut self.blocks[key as usize];
        b.free = false;
        b.prev_free = NIL;
        b.next_free = NIL;
    }

    /// A free block from the first non-empty bin at or above (fl, sl).
    fn find(&self, fl: usize, sl: usize) -> Option<u32> {
        let sl_map = self.sl_bitmap[fl] & (!0u32 << sl);
        let (fl, sl_map) = if sl_map != 0 {
            (fl, sl_map)
        } else {
            let fl_map = self.fl_bitmap & (!0u64).checked_shl(fl as u32 + 1).unwrap_or(0);
            if fl_map == 0 {
                return None;
            }
            let fl = fl_map.trailing_zeros() as usize;
            (fl, self.sl_bitmap[fl])
        };
        Some(self.heads[fl][sl_map.trailing_zeros() as usize])
    }

    fn new_block(&mut self, offset: u64, size: u64) -> u32 {
        let key = self.blocks.insert(Block {
            offset,
            size,
            prev_phys: NIL,
            next_phys: NIL,
            prev_free: NIL,
            next_free: NIL,
            free: false,
            generation: 0,
        });
        let key = u32::try_from(key).expect("fewer than 2^32 blocks");
        // Its word: free, at the generation a record of this key last had.
        if let Some(r) = &self.records {
            r.make(key);
        }
        key
    }

    /// Cut `key` so that it keeps its first `size` bytes; the rest becomes a new block, returned (not yet
    /// in any bin, not free).
    fn split(&mut self, key: u32, size: u64) -> u32 {
        let (offset, total, next) = {
            let b = &self.blocks[key as usize];
            (b.offset, b.size, b.next_phys)
        };
        debug_assert!(size < total && size.is_multiple_of(GRANULE));
        let rest = self.new_block(offset + size, total - size);
        self.blocks[rest as usize].prev_phys = key;
        self.blocks[rest as usize].next_phys = next;
        if next != NIL {
            self.blocks[next as usize].prev_phys = rest;
        }
        let b = &mut self.blocks[key as usize];
        b.size = size;
        b.next_phys = rest;
        rest
    }

    /// Merge free block `key` with free neighbours, then put the result in its bin. `key` is not in a bin.
    fn release(&mut self, key: u32) {
        let mut key = key;
        let prev = self.blocks[key as usize].prev_phys;
        if prev != NIL && self.blocks[prev as usize].free {
            self.unlink_free(prev);
            self.absorb_next(prev);
            key = prev;
        }
        let next = self.blocks[key as usize].next_phys;
        if next != NIL && self.blocks[next as usize].free {
            self.unlink_free(next);
            self.absorb_next(key);
        }
        self.link_free(key);
    }

    /// Block `key` takes over its next neighbour (neither is in a bin).
    fn absorb_next(&mut self, key: u32) {
        let next = self.blocks[key as usize].next_phys;
        let gone = self.blocks.remove(next as usize);
        let b = &mut self.blocks[key as usize];
        b.size += gone.size;
        b.next_phys = gone.next_phys;
        if gone.next_phys != NIL {
            self.blocks[gone.next_phys as usize].prev_phys = key;
        }
    }

    #[inline]
    fn account(&mut self, offset: u64, size: u64, add: bool) {
        let mut at = offset;
        let end = offset + size;
        while at < end {
            let i = self.per_chunk.div(at) as usize;
            let stop = ((i as u64 + 1) * self.chunk).min(end);
            if add {
                self.in_use_chunks += u32::from(self.used[i] == 0);
                self.used[i] += stop - at;
            } else {
                self.used[i] -= stop - at;
                self.in_use_chunks -= u32::from(self.used[i] == 0);
            }
            at = stop;
        }
    }

    /// Allocate `size` bytes aligned to `align` (a power of two; below [`GRANULE`] means [`GRANULE`]).
    #[inline]
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<HeapBlock> {
        let size = size.max(1).checked_next_multiple_of(GRANULE)?;
        let align = align.max(GRANULE);
        debug_assert!(align.is_power_of_two());
        // Ask for enough to carve an aligned start out of any block found.
        let want = if align == GRANULE { size } else { size.checked_add(align - GRANULE)? };
        let (fl, sl) = bin_for_request(want)?;
        let mut key = self.find(fl, sl)?;
        self.unlink_free(key);
        let offset = self.blocks[key as usize].offset;
        let aligned = offset.next_multiple_of(align);
        if aligned > offset {
            // Give the unaligned front back.
            let rest = self.split(key, aligned - offset);
            self.release(key);
            key = rest;
        }
        if self.blocks[key as usize].size > size {
            let rest = self.split(key, size);
            self.release(rest);
        }
        let b = &mut self.blocks[key as usize];
        let (offset, size) = (b.offset, b.size);
        // Live at a new generation: a handle of the record's earlier allocations never matches again.
        let generation = match &self.records {
            None => {
                self.next_generation = self.next_generation.wrapping_add(1).max(1);
                b.generation = self.next_generation;
                self.next_generation
            }
            Some(r) => {
                let rec = r.get(key).expect("made with the block");
                let (last, state) = rec.load();
                debug_assert_eq!(state, FREE);
                let generation = last.wrapping_add(1);
                rec.set_offset(offset);
                rec.store(generation, LIVE);
                generation
            }
        };
        self.account(offset, size, true);
        self.allocated_bytes += size;
        self.free_bytes -= size;
        Some(HeapBlock { key, generation, offset, size })
    }

    /// Free an allocated block. `claimable`: a free into a magazine may race this one for it (the block
    /// is of a size magazines keep), so the word changes with a compare-and-swap; otherwise nothing else
    /// changes a live word outside the pool's lock, and a load and a store do.
    #[inline]
    pub fn free(&mut self, blk: HeapBlock, claimable: bool) -> Result<(), FreeError> {
        if !self.matches(&blk) {
            return Err(FreeError::NotAllocated);
        }
        let Some(r) = &self.records else {
            let b = &mut self.blocks[blk.key as usize];
            if b.generation != blk.generation {
                return Err(FreeError::NotAllocated);
            }
            // The same allocation can never be freed twice with its generation.
            b.generation = 0;
            self.give_back(blk);
            return Ok(());
        };
        // Live to free, unless a magazine's free took it first (then this one is the second free).
        let rec = r.get(blk.key).expect("made with the block");
        if claimable {
            if !rec.change(blk.generation, LIVE, FREE) {
                return Err(FreeError::NotAllocated);
            }
        } else if rec.load() == (blk.generation, LIVE) {
            rec.store(blk.generation, FREE);
        } else {
            return Err(FreeError::NotAllocated);
        }
        self.give_back(blk);
        Ok(())
    }

    /// Free a block cached in a magazine (its word `CACHED` at its generation), taken out of it by the
    /// caller; false if the word says otherwise (a record the heap has freed since: nothing is done).
    pub fn free_cached(&mut self, blk: HeapBlock) -> bool {
        let Some(r) = &self.records else {
            return false;
        };
        if !self.matches(&blk) {
            return false;
        }
        let rec = r.get(blk.key).expect("made with the block");
        if rec.load() != (blk.generation, CACHED) {
            return false;
        }
        rec.store(blk.generation, FREE);
        self.give_back(blk);
        true
    }

    /// Whether `blk` is the allocated (not free) block of its record, at its place.
    #[inline]
    fn matches(&self, blk: &HeapBlock) -> bool {
        matches!(self.blocks.get(blk.key as usize), Some(b) if !b.free && b.offset == blk.offset && b.size == blk.size)
    }

    /// A block whose word just went free goes back to its bin.
    #[inline]
    fn give_back(&mut self, blk: HeapBlock) {
        self.account(blk.offset, blk.size, false);
        self.allocated_bytes -= blk.size;
        self.free_bytes += blk.size;
        self.release(blk.key);
    }

    /// Whether `blk` is a live allocation of this heap.
    pub fn is_allocated(&self, blk: &HeapBlock) -> bool {
        self.matches(blk)
            && match &self.records {
                None => self.blocks[blk.key as usize].generation == blk.generation,
                Some(r) => r.get(blk.key).is_some_and(|r| r.load() == (blk.generation, LIVE)),
            }
    }

    /// Add `[offset, offset+len)`, newly mapped, as free memory, merging with adjacent blocks of ours.
    pub fn add_range(&mut self, offset: u64, len: u64) {
        debug_assert!(offset.is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE) && len > 0);
        let key = self.new_block(offset, len);
        let end = offset + len;
        let before =
            self.blocks.iter().find(|(k, b)| *k != key as usize && b.offset + b.size == offset).map(|(k, _)| k);
        let after = self.blocks.iter().find(|(k, b)| *k != key as usize && b.offset == end).map(|(k, _)| k);
        if let Some(p) = before {
            self.blocks[p].next_phys = key;
            self.blocks[key as usize].prev_phys = p as u32;
        }
        if let Some(n) = after {
            self.blocks[n].prev_phys = key;
            self.blocks[key as usize].next_phys = n as u32;
        }
        self.free_bytes += len;
        self.release(key);
    }

    /// Remove `[offset, offset+len)`, which must be entirely free, before it is unmapped. Returns false (and
    /// changes nothing) if any of it is allocated or not ours.
    pub fn remove_range(&mut self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let covering: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.offset < end && b.offset + b.size > offset)
            .map(|(k, _)| k as u32)
            .collect();
        // Entirely free: the free blocks overlapping the range cover all of it.
        let overlap: u64 = covering
            .iter()
            .map(|&k| {
                let b = &self.blocks[k as usize];
                (b.offset + b.size).min(end) - b.offset.max(offset)
            })
            .sum();
        if overlap != len || covering.iter().any(|&k| !self.blocks[k as usize].free) {
            return false;
        }
        for k in covering {
            self.unlink_free(k);
            let (b_off, b_end) = {
                let b = &self.blocks[k as usize];
                (b.offset, b.offset + b.size)
            };
            // Split off what lies before and after the range; those pieces stay free.
            let mut mid = k;
            if b_off < offset {
                mid = self.split(k, offset - b_off);
                self.cut_after(k);
                self.link_free(k);
            }
            let mid_end = self.blocks[mid as usize].offset + self.blocks[mid as usize].size;
            debug_assert_eq!(mid_end, b_end);
            if b_end > end {
                let tail = self.split(mid, end - self.blocks[mid as usize].offset);
                self.cut_before(tail);
                self.link_free(tail);
            }
            self.cut_before(mid);
            self.cut_after(mid);
            self.blocks.remove(mid as usize);
        }
        self.free_bytes -= len;
        true
    }

    fn cut_after(&mut self, key: u32) {
        let next = std::mem::replace(&mut self.blocks[key as usize].next_phys, NIL);
        if next != NIL {
            self.blocks[next as usize].prev_phys = NIL;
        }
    }

    fn cut_before(&mut self, key: u32) {
        let prev = std::mem::replace(&mut self.blocks[key as usize].prev_phys, NIL);
        if prev != NIL {
            self.blocks[prev as usize].next_phys = NIL;
        }
    }

    /// The largest free block (cold: scans the highest non-empty bin).
    pub fn largest_free(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
        let mut best = 0;
        let mut k = self.heads[fl][sl];
        while k != NIL {
            best = best.max(self.blocks[k as usize].size);
            k = self.blocks[k as usize].next_free;
        }
        best
    }

    /// The free block that ends exactly at `offset`, if any: its size.
    pub fn free_ending_at(&self, offset: u64) -> u64 {
        self.blocks.iter().find(|(_, b)| b.free && b.offset + b.size == offset).map_or(0, |(_, b)| b.size)
    }

    /// Check every invariant; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        let mut free_total = 0;
        let mut alloc_total = 0;
        for (k, b) in &self.blocks {
            assert!(b.size > 0 && b.size.is_multiple_of(GRANULE) && b.offset.is_multiple_of(GRANULE));
            if b.next_phys != NIL {
                let n = &self.blocks[b.next_phys as usize];
                assert_eq!(b.offset + b.size, n.offset, "neighbours tile");
                assert_eq!(n.prev_phys as usize, k);
                assert!(!(b.free && n.free), "two free neighbours at {:#x}", n.offset);
            }
            if b.free {
                free_total += b.size;
                let (fl, sl) = bin_of(b.size);
                let mut x = self.heads[fl][sl];
                let mut found = false;
                while x != NIL {
                    found |= x as usize == k;
                    x = self.blocks[x as usize].next_free;
                }
                assert!(found, "free block {k} is not in its bin");
            } else {
                alloc_total += b.size;
            }
        }
        assert_eq!(free_total, self.free_bytes);
        assert_eq!(alloc_total, self.allocated_bytes);
        assert_eq!(self.used.iter().sum::<u64>(), self.allocated_bytes);
        assert_eq!(self.used.iter().filter(|&&u| u != 0).count(), self.in_use_chunks as usize);
        for fl in 0..FL {
            for sl in 0..SL {
                let nonempty = self.heads[fl][sl] != NIL;
                assert_eq!(nonempty, self.sl_bitmap[fl] & (1 << sl) != 0);
            }
            assert_eq!(self.sl_bitmap[fl] != 0, self.fl_bitmap & (1 << fl) != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 20 << 20;

    #[test]
    fn bins_are_monotonic_and_requests_round_up() {
        const N: u64 = 200_000;
        // The smallest size of each bin, found in one ascending pass.
        let mut smallest = std::collections::HashMap::new();
        let mut last = (0, 0);
        for units in 1..2 * N {
            let b = bin_of(units * GRANULE);
            assert!(b >= last, "bin of {units} units went down");
            last = b;
            smallest.entry(b).or_insert(units);
        }
        for units in 1..N {
            // Every block in the request's bin is at least as large as the request, and the bin is the
            // first one with that property (no needless waste).
            let b = bin_for_request(units * GRANULE).unwrap();
            assert!(smallest[&b] >= units, "request {units}: bin starts at {}", smallest[&b]);
            assert!(bin_of(units * GRANULE) <= b);
        }
    }

    #[test]
    fn allocates_splits_coalesces() {
        // Generations in the records' words (a pool with magazines) and in the blocks (one without).
        for records in [Some(StdArc::default()), None] {
            allocates_splits_coalesces_with(records);
        }
    }

    fn allocates_splits_coalesces_with(records: Option<StdArc<Records>>) {
        let mut h = Heap::with_records(C, 4, records);
        h.add_range(0, C);
        let a = h.alloc(1000, 0).unwrap();
        assert_eq!((a.offset, a.size), (0, 1024));
        let b = h.alloc(4096, 4096).unwrap();
        assert_eq!(b.offset % 4096, 0);
        let c = h.alloc(1 << 20, 0).unwrap();
        h.check();
        assert_eq!(h.used_in_chunk(0), a.size + b.size + c.size);
        h.free(b, true).unwrap();
        assert!(!h.is_allocated(&b));
        assert_eq!(h.free(b, true), Err(FreeError::NotAllocated), "double free");
        assert_eq!(h.free(b, false), Err(FreeError::NotAllocated), "double free, unclaimable");
        // Allocated again: a new handle, and the old one stays refused.
        let b2 = h.alloc(b.size, 4096).unwrap();
        assert_ne!(b2, b);
        assert!(h.is_allocated(&b2) && !h.is_allocated(&b));
        assert_eq!(h.free(b, false), Err(FreeError::NotAllocated), "a stale handle");
        h.free(b2, false).unwrap();
        h.free(a, true).unwrap();
        h.free(c, true).unwrap();
        h.check();
        assert_eq!(h.largest_free(), C, "everything coalesced back");
        assert_eq!(h.used_in_chunk(0), 0);
    }

    #[test]
    fn adjacent_ranges_merge_and_allocations_span_chunks() {
        let mut h = Heap::new(C, 4);
        h.add_range(C, C);
        h.add_range(0, C);
        h.check();
        assert_eq!(h.largest_free(), 2 * C);
        let big = h.alloc(C + (1 << 20), 0).unwrap();
        assert_eq!(big.offset, 0);
        assert_eq!((h.used_in_chunk(0), h.used_in_chunk(1)), (C, 1 << 20));
        assert!(!h.remove_range(C, C), "chunk 1 is in use");
        h.free(big, true).unwrap();
        // A hole: chunk 3 does not merge with chunk 1.
        h.add_range(3 * C, C);
        h.check();
        assert!(h.remove_range(C, C));
        h.check();
        assert_eq!(h.free_bytes(), 2 * C);
        assert_eq!(h.largest_free(), C);
        assert!(h.alloc(C + GRANULE, 0).is_none(), "no contiguous room");
        assert!(!h.remove_range(2 * C, C), "not ours");
        assert!(h.remove_range(0, C) && h.remove_range(3 * C, C));
        assert_eq!(h.free_bytes(), 0);
        h.check();
    }

    #[test]
    fn a_random_workload_keeps_every_invariant() {
        for records in [Some(StdArc::default()), None] {
            a_random_workload_with(records);
        }
    }

    fn a_random_workload_with(records: Option<StdArc<Records>>) {
        let mut h = Heap::with_records(C, 8, records);
        for i in 0..8 {
            h.add_range(i * C, C);
        }
        let mut live: Vec<HeapBlock> = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000 {
            if live.is_empty() || next() % 3 != 0 {
                let size = match next() % 4 {
                    0 => next() % 4096 + 1,
                    1 => next() % (1 << 20) + 1,
                    2 => next() % (8 << 20) + 1,
                    _ => next() % (3 * C) + 1,
                };
                let align = 1 << (next() % 22);
                if let Some(b) = h.alloc(size, align) {
                    assert!(b.size >= size && b.offset % align.max(GRANULE) == 0);
                    assert!(live.iter().all(|o| b.offset + b.size <= o.offset || o.offset + o.size <= b.offset));
                    live.push(b);
                }
            } else {
                let i = (next() as usize) % live.len();
                h.free(live.swap_remove(i), i.is_multiple_of(2)).unwrap();
            }
            if step % 997 == 0 {
                h.check();
            }
        }
        for b in live.drain(..) {
            h.free(b, true).unwrap();
        }
        h.check();
        assert_eq!(h.largest_free(), 8 * C);
    }
}
