//! What a pool is made of: its runtime, configuration and geometry, its state under one lock, its chunk
//! observer, and the lock that makes sleeps and wakes one at a time. Below the modules that work on it
//! (`mod.rs`, `sleep`), so that neither needs the other.

use super::config::PoolConfig;
use super::records::Records;
use super::slots::ChunkObserver;
use super::state::{Geometry, State};
use crate::magazine::{Gate, Magazines};
use crate::runtime::Runtime;
use crate::sync::{Arc, Mutex, StdArc};
use crate::vmm::DropErrors;

/// A pool's parts.
pub(super) struct Inner {
    pub(super) rt: Runtime,
    pub(super) device: i32,
    pub(super) config: PoolConfig,
    pub(super) geometry: Geometry,
    pub(super) reserved: u64,
    pub(super) errors: Arc<DropErrors>,
    pub(super) state: Mutex<State>,
    /// Who watches the pool's chunks (its sharing), once someone does. Its lock is taken before the
    /// state's (never after) and held across a grow's publication and commit, so a chunk is published
    /// exactly once whether it was mapped before the watching started or during it. (A std `Arc`: loom's
    /// cannot hold a trait object, and no model watches.)
    pub(super) observer: Mutex<Option<StdArc<dyn ChunkObserver>>>,
    /// Sleeps and wakes, one at a time (each makes runtime calls outside the state's lock).
    pub(super) sleep_wake: Mutex<()>,
    /// The heap's records' words, read and claimed without the state's lock by frees into magazines (in
    /// a pool with magazines).
    pub(super) records: Option<StdArc<Records>>,
    /// Heap allocations freed and kept per thread and size for that thread's next allocations of the
    /// size (entries: the record's key and generation). Open while the pool is awake and not closed.
    pub(super) cache: Magazines,
    /// The largest allocation the magazines keep (0: none).
    pub(super) cache_max: u64,
    /// Open while the pool can allocate (not asleep, not closed): what caches in front of it (a KV
    /// pool's magazines) read before handing out what they hold, without the state's lock.
    pub(super) awake: Gate,
}
