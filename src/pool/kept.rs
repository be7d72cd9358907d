//! What a sleep keeps: the pieces of the kept allocations and the page-locked host buffer that holds
//! them until the wake copies them back. Held in the pool's state; below `state` and `sleep`.

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::raw;
use crate::runtime::Runtime;
use crate::sync::Arc;
use crate::vmm::DropErrors;

/// Part of a kept allocation: its place in one chunk and in the host buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    pub slot: usize,
    pub offset: u64,
    pub len: u64,
    pub host: u64,
}

/// Page-locked host memory from the runtime, freed when dropped.
pub(super) struct HostBuffer {
    pub rt: Runtime,
    pub ptr: NonNull<c_void>,
    pub len: u64,
    pub errors: Arc<DropErrors>,
}

// SAFETY: host memory of the runtime, usable from any thread; only its address is shared.
unsafe impl Send for HostBuffer {}
// SAFETY: as above.
unsafe impl Sync for HostBuffer {}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: our allocation from aclrtMallocHost; no copy of it is under way (they are synchronous).
        if let Err(e) = unsafe { raw::free_host(&self.rt, self.ptr.as_ptr()) } {
            self.errors.record(e);
        }
    }
}

/// What a sleep kept, until the wake copies it back.
pub(crate) struct Kept {
    pub(super) buf: Option<HostBuffer>,
    pub(super) pieces: Vec<Piece>,
}

impl Kept {
    /// Bytes of host memory held.
    pub(crate) fn bytes(&self) -> u64 {
        self.buf.as_ref().map_or(0, |b| b.len)
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("bytes", &self.bytes()).field("pieces", &self.pieces.len()).finish()
    }
}
