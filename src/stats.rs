//! What a pool holds, and what it cost: [`PoolStats`]. Its own module, below everything, because errors
//! carry it too ([`Error::OutOfMemory`](crate::Error::OutOfMemory) says what the pool held when it gave up).

use std::fmt;

/// What a pool holds, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    /// The device.
    pub device: i32,
    /// Chunk size in bytes.
    pub chunk_bytes: u64,
    /// Virtual address space reserved.
    pub reserved_bytes: u64,
    /// Physical memory mapped (chunks times chunk size).
    pub mapped_bytes: u64,
    /// Bytes handed out: heap allocations (rounded to the granule) and blocks.
    pub allocated_bytes: u64,
    /// Mapped chunks.
    pub chunks: u32,
    /// Mapped chunks with nothing allocated in them.
    pub free_chunks: u32,
    /// Chunks whose unmap or free failed, kept aside until [`Pool::repair`](crate::Pool::repair).
    pub unknown_chunks: u32,
    /// The largest allocation the heap could make without growing.
    pub largest_free_extent: u64,
    /// `allocated_bytes / mapped_bytes` (0 when nothing is mapped).
    pub utilization: f64,
    /// Live heap allocations.
    pub live_allocations: u64,
    /// Bytes of heap allocations freed into threads' magazines and kept for those threads' next
    /// allocations of the same sizes: free (not in `allocated_bytes` or `live_allocations`), but not in
    /// the heap's free extents until the pool takes them back (it does before growing, trimming or
    /// sleeping).
    pub cached_bytes: u64,
    /// Live blocks, all classes.
    pub live_blocks: u64,
    /// Free blocks in the classes' chunks, all classes (more can be had by growing).
    pub free_blocks: u64,
    /// Chunks mapped so far.
    pub chunks_grown: u64,
    /// Chunks given back so far.
    pub chunks_trimmed: u64,
    /// Bumped whenever a chunk is mapped or unmapped.
    pub generation: u64,
    /// Chunks put to sleep ([`Pool::sleep`](crate::Pool::sleep)): their allocations stay, their physical
    /// memory is given back until [`Pool::wake`](crate::Pool::wake).
    pub sleeping_chunks: u32,
    /// Bytes of page-locked host memory holding what a sleep kept (offloaded) until the wake copies it back.
    pub host_bytes: u64,
    /// ACL calls made through the pool's runtime, by function.
    pub runtime_calls: Vec<(&'static str, u64)>,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {}: {} of {} MiB mapped in {} chunk(s) ({} free, {} unknown, {} asleep), {} MiB allocated ({:.1}%), largest free extent {} KiB",
            self.device,
            self.mapped_bytes >> 20,
            self.reserved_bytes >> 20,
            self.chunks,
            self.free_chunks,
            self.unknown_chunks,
            self.sleeping_chunks,
            self.allocated_bytes >> 20,
            self.utilization * 100.0,
            self.largest_free_extent >> 10
        )
    }
}
