//! Fixed-size blocks: one bitmap per chunk of a size class (the KV-cache case).
//!
//! A chunk given to a class holds `chunk / size` blocks laid end to end from its start (blocks never
//! straddle chunks, so a chunk can be trimmed on its own; the tail that does not fit a block is the class's
//! only waste, `chunk mod size`). A set bit is an allocated block. Allocation takes the lowest free block of
//! the lowest chunk that has one, so blocks pack into low addresses and high chunks empty out for trimming.
//!
//! Invariants: a chunk's `free` count equals its zero bits; a chunk is in `nonfull` exactly when `free > 0`;
//! `allocated` is the total of set bits.

#![deny(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use bitvec::prelude::*;

#[derive(Debug)]
struct ChunkBits {
    bits: BitVec<u64, Lsb0>,
    free: u32,
    /// Identifies this use of the chunk slot: a block id from before a trim does not match after.
    id: u32,
}

/// One block size's chunks and their bitmaps.
#[derive(Debug)]
pub struct BlockClass {
    size: u64,
    per_chunk: u32,
    chunks: BTreeMap<usize, ChunkBits>,
    nonfull: BTreeSet<usize>,
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
        BlockClass { size, per_chunk, chunks: BTreeMap::new(), nonfull: BTreeSet::new(), allocated: 0 }
    }

    /// The block size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Blocks per chunk.
    pub fn per_chunk(&self) -> u32 {
        self.per_chunk
    }

    /// The allocated blocks of the chunk in `slot`, by index (none if the class has no chunk there).
    pub fn allocated_in_chunk(&self, slot: usize) -> Vec<u32> {
        self.chunks.get(&slot).map_or_else(Vec::new, |c| c.bits.iter_ones().map(|i| i as u32).collect())
    }

    /// Blocks allocated.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Blocks free in the class's chunks.
    pub fn free(&self) -> u64 {
        self.chunks.values().map(|c| u64::from(c.free)).sum()
    }

    /// Give chunk slot `slot` (use number `id`) to the class, all its blocks free.
    pub fn add_chunk(&mut self, slot: usize, id: u32) {
        let bits = bitvec![u64, Lsb0; 0; self.per_chunk as usize];
        let prev = self.chunks.insert(slot, ChunkBits { bits, free: self.per_chunk, id });
        debug_assert!(prev.is_none(), "slot {slot} given to the class twice");
        self.nonfull.insert(slot);
    }

    /// Take a fully free chunk back (before it is trimmed). False, changing nothing, if any block in it is
    /// allocated or the chunk is not the class's.
    pub fn remove_chunk(&mut self, slot: usize) -> bool {
        match self.chunks.get(&slot) {
            Some(c) if c.free == self.per_chunk => {}
            _ => return false,
        }
        self.chunks.remove(&slot);
        self.nonfull.remove(&slot);
        true
    }

    /// Free blocks in chunk `slot` (0 if the chunk is not the class's).
    pub fn free_in_chunk(&self, slot: usize) -> u32 {
        self.chunks.get(&slot).map_or(0, |c| c.free)
    }

    /// Whether chunk `slot` has no allocated block.
    pub fn chunk_is_free(&self, slot: usize) -> bool {
        self.chunks.get(&slot).is_some_and(|c| c.free == self.per_chunk)
    }

    /// Allocate a block: (chunk slot, chunk use id, index in the chunk).
    pub fn alloc(&mut self) -> Option<(usize, u32, u32)> {
        let slot = *self.nonfull.first()?;
        let c = self.chunks.get_mut(&slot).expect("nonfull chunks exist");
        let index = c.bits.first_zero().expect("a nonfull chunk has a free block");
        c.bits.set(index, true);
        c.free -= 1;
        if c.free == 0 {
            self.nonfull.remove(&slot);
        }
        self.allocated += 1;
        Some((slot, c.id, index as u32))
    }

    /// Whether block `index` of chunk `slot` (use `id`) is allocated.
    pub fn is_allocated(&self, slot: usize, id: u32, index: u32) -> bool {
        self.chunks.get(&slot).is_some_and(|c| c.id == id && c.bits.get(index as usize).is_some_and(|b| *b))
    }

    /// Free block `index` of chunk `slot` (use `id`). Returns whether the chunk is now fully free.
    pub fn free_block(&mut self, slot: usize, id: u32, index: u32) -> Result<bool, BlockFreeError> {
        let c = match self.chunks.get_mut(&slot) {
            Some(c) if c.id == id && (index as usize) < c.bits.len() && c.bits[index as usize] => c,
            _ => return Err(BlockFreeError::NotAllocated),
        };
        c.bits.set(index as usize, false);
        c.free += 1;
        self.nonfull.insert(slot);
        self.allocated -= 1;
        Ok(c.free == self.per_chunk)
    }

    /// Check every invariant; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        let mut set = 0;
        for (slot, c) in &self.chunks {
            assert_eq!(c.bits.count_zeros() as u32, c.free);
            assert_eq!(self.nonfull.contains(slot), c.free > 0);
            set += c.bits.count_ones() as u64;
        }
        assert_eq!(set, self.allocated);
        assert!(self.nonfull.iter().all(|s| self.chunks.contains_key(s)));
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
}
