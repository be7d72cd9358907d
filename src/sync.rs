//! The one place aclshm takes its synchronisation primitives from, so that a `--cfg loom` build can swap
//! in loom's models of them (see `loom-tests/`). Nothing else in the crate names `parking_lot`,
//! `std::sync::atomic` or `std::thread` directly.
//!
//! The interface is parking_lot's (a guard straight from `lock`, `Condvar::wait(&mut guard)`); under loom,
//! thin wrappers give loom's types the same shape.

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
pub(crate) use loom_shims::{Condvar, Mutex};

/// Shared trait objects (a pool's chunk observer): std's `Arc` even under loom, whose `Arc` cannot hold a
/// `dyn` value; nothing a model exercises is shared this way.
pub(crate) use std::sync::Arc as StdArc;

/// Threads: always std's (the sharing layer's background threads are not part of any model).
pub(crate) use std::thread;

/// Atomics in memory shared with other processes (chunk tables, importer files): always std's, since a
/// model cannot see the other processes. They order what those processes see, so they are real atomics
/// with real orderings.
pub(crate) mod shm {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

/// Counters for statistics and ids: std atomics even under loom, since they order nothing and modelling
/// them would only multiply the interleavings.
pub(crate) mod stat {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

/// A mutex usable in a `static` (loom's have no const constructor); for process-wide state, and state
/// that no model exercises (per-thread magazines, which loom builds turn off).
pub(crate) type StaticMutex<T> = parking_lot::Mutex<T>;

/// A mutex and condition variable for process-wide state that a forked child must find usable: std's,
/// whose waiters are the kernel's alone. parking_lot keeps its waiting threads in a process-wide table,
/// which a child of `fork` inherits with threads it does not have, so a notification there can go to a
/// thread that is not in the child.
pub(crate) use std::sync::{Condvar as ForkSafeCondvar, Mutex as ForkSafeMutex};

/// loom's mutex and condition variable behind parking_lot's interface (no poisoning).
#[cfg(loom)]
mod loom_shims {
    use std::ops::{Deref, DerefMut};

    /// A mutex modelled by loom.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// Its guard; the `Option` lets `Condvar::wait` hand it to loom and take it back.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("held")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("held")
        }
    }

    /// A condition variable modelled by loom.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        pub(crate) fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            let inner = g.0.take().expect("held");
            g.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
