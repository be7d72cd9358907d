//! The one place aclshm takes its synchronisation primitives from, so that a `--cfg loom` build can swap
//! in loom's models of them (see `loom-tests/`). Nothing else in the crate names `parking_lot`,
//! `std::sync::atomic` or `std::thread` directly.

#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
pub(crate) use loom_mutex::Mutex;

/// Counters for statistics and ids: std atomics even under loom, since they order nothing and modelling
/// them would only multiply the interleavings.
pub(crate) mod stat {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
}

/// A mutex usable in a `static` (loom's have no const constructor); for process-wide state that no model
/// exercises.
pub(crate) type StaticMutex<T> = parking_lot::Mutex<T>;

/// loom's mutex behind parking_lot's interface (no poisoning), so code reads the same under both.
#[cfg(loom)]
mod loom_mutex {
    /// A mutex modelled by loom.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}
