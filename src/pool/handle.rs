//! What a pool hands out: [`Allocation`]s (variable size, from the heap) and [`Block`]s (fixed size, from a
//! block class). Plain `Copy` values: the pool checks each one it is given back, so a double free or a
//! handle of another pool is a typed error, never corruption.

use std::fmt;

use super::heap::HeapBlock;

/// A variable-size allocation: its place in the pool and its device address.
///
/// A plain value: freeing it twice, or in another pool, is refused with a typed error.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allocation {
    pub(crate) pool: u32,
    pub(super) block: HeapBlock,
    pub(super) addr: usize,
    /// Its tag's number in the pool (0: the default tag).
    pub(super) tag: u8,
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

    /// Its length in bytes: the size asked for, rounded up to [`GRANULE`](crate::pool::GRANULE).
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

/// A block size class of a pool (see [`Pool::block_class`](super::Pool::block_class)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockClassId(pub(super) u16);

/// A fixed-size block: its class, chunk, index and device address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub(crate) pool: u32,
    pub(super) class: u16,
    pub(super) slot: u32,
    /// The chunk's id when the block was handed out (a block from before a trim does not match after).
    pub(super) chunk: u32,
    pub(super) index: u32,
    pub(super) offset: u64,
    pub(super) addr: usize,
    pub(super) size: u64,
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

    /// The id of the chunk it was handed out from.
    pub(crate) fn chunk(&self) -> u32 {
        self.chunk
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
