//! The one place aclshm takes its synchronisation primitives from, so that a `--cfg loom` build can swap
//! in loom's models of them (see `loom-tests/`). Nothing else in the crate names `parking_lot`,
//! `std::sync::atomic` or `std::thread` directly.

#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom_mutex::Mutex;

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
