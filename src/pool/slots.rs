//! The life of one chunk slot, and who else is told about it.
//!
//! ```text
//!   Empty ──claim──> Growing ──mapped + published──> Mapped{owner} ──trim takes it──> Retiring ──> Empty
//!     ^                 └──grow failed (undone)──> Empty                                  │ unmap or free failed
//!     └──────────────────────────── repair (released) ◄── Unknown(leftover) ◄────────────┘
//!
//!   Mapped{owner} ──sleep (unmapped, memory freed)──> Asleep{owner} ──wake──> Growing ──> Mapped{owner}
//!                                                        ^                       └──wake failed (undone)──┘
//! ```
//!
//! A slot is in an explicit state, never guessed: after a failed unmap or free, what the device holds is
//! uncertain, so the slot is `Unknown` and holds what is left (the mapping, or the unmapped memory) until
//! [`Pool::repair`](super::Pool::repair) releases it.
//!
//! A [`ChunkObserver`] (the pool's sharing, when the pool is shared) is told about every chunk the pool
//! maps and gives back, so the pool need not know who watches.

use std::any::Any;

use crate::error::{Error, Result};
use crate::sync::Arc;
use crate::vmm::{Mapping, PhysicalMem};

/// Who a mapped chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// The variable-size heap.
    Heap,
    /// The block class of this index.
    Class(u16),
}

/// What is left of a chunk whose teardown failed.
#[derive(Debug)]
pub(super) enum Leftover {
    /// The unmap failed: it may still be mapped.
    Mapped(Mapping),
    /// The unmap worked, the free failed (boxed: errors stay small).
    Unmapped(Box<PhysicalMem>),
}

/// A chunk slot of the pool's range.
#[derive(Debug)]
pub(super) enum Slot {
    /// Reserved, nothing mapped.
    Empty,
    /// Claimed by a grow whose runtime calls are under way.
    Growing,
    /// In an allocator.
    Mapped { owner: Owner, mapping: Mapping },
    /// Taken out of the allocators, being unmapped.
    Retiring,
    /// An unmap or free failed: kept aside until repaired.
    Unknown(Leftover),
    /// Put to sleep: still its owner's (its allocations stay), its physical memory given back. A free
    /// that failed after the unmap leaves the memory here, to be freed at the wake or the close.
    Asleep { owner: Owner, tags: u64, leftover: Option<Box<PhysicalMem>> },
}

/// Told about every chunk a pool maps or gives back, from when it starts watching until the pool closes:
/// how sharing follows a pool without the pool knowing about sharing.
pub(crate) trait ChunkObserver: Send + Sync {
    /// Chunks just mapped (slot, physical memory), not allocatable yet: an error undoes their grow, so a
    /// chunk is never allocated from before the observer has it.
    fn grown(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()>;
    /// The pool unmapped the chunk of `slot`: the observer takes its physical memory, to free once it may.
    fn retired(&self, slot: usize, phys: Arc<PhysicalMem>);
    /// The pool is closing: stop watching (what was retired may be freed now).
    fn closed(&self);
    /// The pool put the chunk of `slot` to sleep (unmapped it, keeping its place and allocations): the
    /// observer takes its physical memory, to free once it may, and keeps the chunk's identity for the
    /// wake.
    fn slept(&self, slot: usize, phys: Arc<PhysicalMem>);
    /// Chunks of sleeping slots just mapped again (new physical memory), not usable yet: an error undoes
    /// the wake of these chunks.
    fn woken(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()>;
    /// Wait until the physical memory of slept (and retired) chunks is freed, and nobody else maps a
    /// chunk the pool gave up, at most `timeout`: the observer frees it once nobody else can still use it.
    fn wait_released(&self, timeout: std::time::Duration) -> Result<()>;
    /// The observer as its concrete type, for the module that installed it.
    fn as_any(&self) -> &dyn Any;
}

/// How a chunk's teardown went: released, or the error and what is left.
pub(super) type Teardown = Result<(), (Error, Leftover)>;

/// Unmap, then free: a chunk's teardown. A watched chunk (`retire`: the observer and the slot) is handed to
/// the observer instead of freed. On failure, what is left.
pub(super) fn teardown(m: Mapping, retire: Option<(&dyn ChunkObserver, usize)>) -> Teardown {
    finish(Leftover::Mapped(m), retire)
}

/// Carry a leftover's teardown on from where it stopped.
pub(super) fn finish(l: Leftover, retire: Option<(&dyn ChunkObserver, usize)>) -> Teardown {
    let phys = match l {
        Leftover::Mapped(m) => match m.unmap() {
            Ok(phys) => phys,
            Err((e, m)) => return Err((e, Leftover::Mapped(m))),
        },
        Leftover::Unmapped(p) => Arc::new(*p),
    };
    if let Some((observer, slot)) = retire {
        observer.retired(slot, phys);
        return Ok(());
    }
    match Arc::try_unwrap(phys) {
        Ok(p) => p.free().map_err(|(e, p)| (e, Leftover::Unmapped(Box::new(p)))),
        // Someone else holds the physical memory too: it is freed with their reference.
        Err(_) => Ok(()),
    }
}
