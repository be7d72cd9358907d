//! Fixed-size blocks: one bitmap per chunk of a size class (the KV-cache case).
//!
//! A chunk given to a class holds `chunk / size` blocks laid end to end from its start (blocks never
//! straddle chunks, so a chunk can be trimmed on its own; the tail that does not fit a block is the class's
//! only waste, `chunk mod size`). A set bit is an allocated block. Allocation takes the lowest free block of
//! the lowest chunk that has one, so blocks pack into low addresses and high chunks empty out for trimming.
//!
//! The class's chunks are found by slot in a vector, and the lowest chunk with a free block by a two-level
//! bitmap over the slots: an allocation or a free is a few word operations, with no search tree.
//!
//! Invariants: a chunk's `free` count equals its zero bits; a chunk is in `nonfull` exactly when `free > 0`;
//! `allocated` is the total of set bits; a summary bit is set exactly when its word of `nonfull` is not 0.

#![deny(unsafe_code)]

use bitvec::prelude::*;

#[derive(Debug)]
struct ChunkBits {
    bits: BitVec<u64, Lsb0>,
    free: u32,
    /// Identifies this use of the chunk slot: a block id from before a trim does not match after.
    id: u32,
}

/// A set of chunk slots with a quick lowest member: one bit per slot, and one summary bit per word of
/// them (so the lowest is found by two scans of at most `slots / 4096` words).
#[derive(Debug, Default)]
struct SlotSet {
    words: Vec<u64>,
    summary: Vec<u64>,
}

impl SlotSet {
    fn insert(&mut self, slot: usize) {
        let w = slot / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
            self.summary.resize(w / 64 + 1, 0);
        }
        self.words[w] |= 1 << (slot % 64);
        self.summary[w / 64] |= 1 << (w % 64);
    }

    fn remove(&mut self, slot: usize) {
        let w = slot / 64;
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << (slot % 64));
            if *word == 0 {
                self.summary[w / 64] &= !(1 << (w % 64));
            }
        }
    }

    #[cfg(test)]
    fn contains(&self, slot: usize) -> bool {
        self.words.get(slot / 64).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn first(&self) -> Option<usize> {
        let (i, s) = self.summary.iter().enumerate().find(|(_, s)| **s != 0)?;
        let w = i * 64 + s.trailing_zeros() as usize;
        Some(w * 64 + self.words[w].trailing_zeros() as usize)
    }
}

/// One block size's chunks and their bitmaps.
#[derive(Debug)]
pub struct BlockClass {
    size: u64,
    per_chunk: u32,
    /// By chunk slot: the class's chunks (most slots are `None`: not the class's).
    chunks: Vec<Option<ChunkBits>>,
    /// The chunks with a free block.
    nonfull: SlotSet,
    allocated: u64,
}

/// Why a block free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFreeError {
    /// The block is not allocated: freed twice, from a chunk trimmed since, or never handed out.
    NotAllocated,
}

impl BlockClass {
    /// A class of `size`-byte blocks in chunks of `chunk` bytes (`size <= chunk`).
    pub fn new(size: u64, chunk: u64) -> BlockClass {
        assert!(size > 0 && size <= chunk, "block size {size} does not fit a chunk of {chunk}");
        let per_chunk = u32::try_from(chunk / size).expect("fewer than 2^32 blocks per chunk");
        BlockClass { size, per_chunk, chunks: Vec::new(), nonfull: SlotSet::default(), allocated: 0 }
    }

    /// The block size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Blocks per chunk.
    pub fn per_chunk(&self) -> u32 {
        self.per_chunk
    }

    #[inline]
    fn chunk(&self, slot: usize) -> Option<&ChunkBits> {
        self.chunks.get(slot).and_then(Option::as_ref)
    }

    /// The allocated blocks of the chunk in `slot`, by index (none if the class has no chunk there).
    pub fn allocated_in_chunk(&self, slot: usize) -> Vec<u32> {
        self.chunk(slot).map_or_else(Vec::new, |c| c.bits.iter_ones().map(|i| i as u32).collect())
    }

    /// Blocks allocated.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Blocks free in the class's chunks.
    pub fn free(&self) -> u64 {
        self.chunks.iter().flatten().map(|c| u64::from(c.free)).sum()
    }

    /// Give chunk slot `slot` (use number `id`) to the class, all its blocks free.
    pub fn add_chunk(&mut self, slot: usize, id: u32) {
        let bits = bitvec![u64, Lsb0; 0; self.per_chunk as usize];
        if slot >= self.chunks.len() {
            self.chunks.resize_with(slot + 1, || None);
        }
        let prev = self.chunks[slot].replace(ChunkBits { bits, free: self.per_chunk, id });
        debug_assert!(prev.is_none(), "slot {slot} given to the class twice");
        self.nonfull.insert(slot);
    }

    /// Take a fully free chunk back (before it is trimmed). False, changing nothing, if any block in it is
    /// allocated or the chunk is not the class's.
    pub fn remove_chunk(&mut self, slot: usize) -> bool {
        if !self.chunk_is_free(slot) {
            return false;
        }
        self.chunks[slot] = None;
        self.nonfull.remove(slot);
        true
    }

    /// Free blocks in chunk `slot` (0 if the chunk is not the class's).
    pub fn free_in_chunk(&self, slot: usize) -> u32 {
        self.chunk(slot).map_or(0, |c| c.free)
    }

    /// Whether chunk `slot` has no allocated block.
    pub fn chunk_is_free(&self, slot: usize) -> bool {
        self.chunk(slot).is_some_and(|c| c.free == self.per_chunk)
    }

    /// Allocate a block: (chunk slot, chunk use id, index in the chunk).
    #[inline]
    pub fn alloc(&mut self) -> Option<(usize, u32, u32)> {
        let slot = self.nonfull.first()?;
        let c = self.chunks[slot].as_mut().expect("nonfull chunks exist");
        let index = c.bits.first_zero().expect("a nonfull chunk has a free block");
        c.bits.set(index, true);
        c.free -= 1;
        let id = c.id;
        if c.free == 0 {
            self.nonfull.remove(slot);
        }
        self.allocated += 1;
        Some((slot, id, index as u32))
    }

    /// Whether block `index` of chunk `slot` (use `id`) is allocated.
    pub fn is_allocated(&self, slot: usize, id: u32, index: u32) -> bool {
        self.chunk(slot).is_some_and(|c| c.id == id && c.bits.get(index as usize).is_some_and(|b| *b))
    }

    /// Free block `index` of chunk `slot` (use `id`). Returns whether the chunk is now fully free.
    #[inline]
    pub fn free_block(&mut self, slot: usize, id: u32, index: u32) -> Result<bool, BlockFreeError> {
        let c = match self.chunks.get_mut(slot).and_then(Option::as_mut) {
            Some(c) if c.id == id && (index as usize) < c.bits.len() && c.bits[index as usize] => c,
            _ => return Err(BlockFreeError::NotAllocated),
        };
        c.bits.set(index as usize, false);
        c.free += 1;
        let all_free = c.free == self.per_chunk;
        self.nonfull.insert(slot);
        self.allocated -= 1;
        Ok(all_free)
    }

    /// Check every invariant; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        let mut set = 0;
        for (slot, c) in self.chunks.iter().enumerate() {
            let Some(c) = c else {
                assert!(!self.nonfull.contains(slot));
                continue;
            };
            assert_eq!(c.bits.count_zeros() as u32, c.free);
            assert_eq!(self.nonfull.contains(slot), c.free > 0);
            set += c.bits.count_ones() as u64;
        }
        assert_eq!(set, self.allocated);
        for (w, word) in self.nonfull.words.iter().enumerate() {
            assert_eq!(self.nonfull.summary[w / 64] & (1 << (w % 64)) != 0, *word != 0, "summary of word {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_pack_low_and_free_to_a_trimmable_chunk() {
        let mut c = BlockClass::new(3 << 20, 20 << 20);
        assert_eq!(c.per_chunk(), 6, "20 MiB holds six 3 MiB blocks, 2 MiB of tail unused");
        c.add_chunk(5, 1);
        c.add_chunk(2, 7);
        let first = c.alloc().unwrap();
        assert_eq!(first, (2, 7, 0), "the lowest chunk first");
        let rest: Vec<_> = (0..11).map(|_| c.alloc().unwrap()).collect();
        assert_eq!(c.alloc(), None, "12 blocks, all taken");
        c.check();
        assert!(!c.remove_chunk(2));
        for &(slot, id, i) in rest.iter().filter(|b| b.0 == 5) {
            c.free_block(slot, id, i).unwrap();
        }
        assert!(c.chunk_is_free(5));
        assert!(c.remove_chunk(5));
        assert_eq!(c.free_block(5, 1, 0), Err(BlockFreeError::NotAllocated), "the chunk is gone");
        assert_eq!(c.free_block(2, 8, 0), Err(BlockFreeError::NotAllocated), "another use of the slot");
        c.free_block(first.0, first.1, first.2).unwrap();
        assert_eq!(c.free_block(first.0, first.1, first.2), Err(BlockFreeError::NotAllocated), "twice");
        c.check();
        assert_eq!(c.allocated(), 5);
    }

    /// Against a model (the lowest nonfull chunk from a sorted set), over slots far apart (several summary
    /// words) and a random mix of operations.
    #[test]
    fn the_lowest_chunk_with_room_is_found_across_many_slots() {
        let mut x = 0x5107_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut c = BlockClass::new(1 << 20, 4 << 20); // 4 blocks a chunk
        let mut model: std::collections::BTreeSet<usize> = Default::default();
        let mut live = Vec::new();
        let mut slots = Vec::new();
        for step in 0..20_000u32 {
            match next() % 4 {
                0 if slots.len() < 300 => {
                    let slot = (next() % 300_000) as usize;
                    if !slots.contains(&slot) {
                        c.add_chunk(slot, step);
                        slots.push(slot);
                        model.insert(slot);
                    }
                }
                1 if !live.is_empty() => {
                    let (slot, id, i) = live.swap_remove((next() % live.len() as u64) as usize);
                    c.free_block(slot, id, i).unwrap();
                    model.insert(slot);
                }
                2 if !slots.is_empty() => {
                    let k = (next() % slots.len() as u64) as usize;
                    let slot = slots[k];
                    if c.remove_chunk(slot) {
                        slots.swap_remove(k);
                        model.remove(&slot);
                    }
                }
                _ => {
                    let want = model.first().copied();
                    let got = c.alloc();
                    assert_eq!(got.map(|b| b.0), want, "step {step}");
                    if let Some(b) = got {
                        live.push(b);
                        if c.free_in_chunk(b.0) == 0 {
                            model.remove(&b.0);
                        }
                    }
                }
            }
        }
        c.check();
        assert_eq!(c.allocated(), live.len() as u64);
    }
}
