//! Synchronisation primitives for the simulator's in-process concurrency (the stream queue), from std or,
//! under `--cfg loom`, from loom so that `loom-tests/` can model them. Shared-memory state is not here: it
//! lives in the registry, guarded by a process-shared mutex and real atomics that loom cannot model.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
