//! What a pool is made of: its runtime, configuration and geometry, its state under one lock, its chunk
//! observer, and the lock that makes sleeps and wakes one at a time. Below the modules that work on it
//! (`mod.rs`, `sleep`), so that neither needs the other.

use std::time::{Duration, Instant};

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
    /// Sleeps, wakes and closes, one at a time (each makes runtime calls outside the state's lock). The
    /// gates below open and close only under it, so a wake that finishes cannot reopen what a sleep
    /// that follows it closed.
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

impl Inner {
    /// Wait until no grow, wake, trim or repair is under way (with `retiring_only`: no trim or repair),
    /// at most `timeout`; whether that came. Each runs outside the state's lock for the runtime calls
    /// it makes (microseconds to milliseconds), so a sleep, a close or an out-of-memory retry that must
    /// see its outcome waits for it rather than taking its slots for settled. Whoever waits has stopped
    /// new ones from starting (a sleep or a close refuses new grows and trims).
    pub(super) fn wait_settled(&self, retiring_only: bool, timeout: Duration) -> bool {
        // A timeout too long to add to now (`Duration::MAX`) waits for ever.
        let deadline = Instant::now().checked_add(timeout);
        let mut nap = Duration::from_micros(20);
        loop {
            if !self.state.lock().in_flight(retiring_only) {
                return true;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            std::thread::sleep(deadline.map_or(nap, |d| nap.min(d - now)));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }
}
