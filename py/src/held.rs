//! [`Held`]: a Rust object a Python object owns until `close()`, and the lock discipline around it.

use aclshm::Error;
use parking_lot::{RwLock, RwLockReadGuard};
use pyo3::prelude::*;

use crate::err;

/// An object held until closed. Calls take it for reading and close takes it for writing, always with the
/// interpreter released (inside `Python::detach`, errors still Rust errors): a thread holding the lock
/// never waits for the interpreter, so the two cannot deadlock.
pub(crate) struct Held<T>(RwLock<Option<T>>);

impl<T: Send + Sync> Held<T> {
    pub(crate) fn new(t: T) -> Held<T> {
        Held(RwLock::new(Some(t)))
    }

    /// Run `f` on the object, the interpreter released; `ClosedError` once closed.
    pub(crate) fn with<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&T) -> aclshm::Result<R> + Send) -> PyResult<R> {
        py.detach(|| f(self.0.read().as_ref().ok_or(Error::Closed)?)).map_err(err)
    }

    /// The object for reading, for code that already released the interpreter.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Option<T>> {
        self.0.read()
    }

    /// The object for reading, if that can be had without waiting (for destructors).
    pub(crate) fn try_read(&self) -> Option<RwLockReadGuard<'_, Option<T>>> {
        self.0.try_read()
    }

    /// Take the object and `close` it, once calls under way are done; nothing if it is closed already.
    pub(crate) fn close(&self, py: Python<'_>, close: impl FnOnce(T) -> aclshm::Result<()> + Send) -> PyResult<()> {
        py.detach(|| self.0.write().take().map_or(Ok(()), close)).map_err(err)
    }

    /// Whether it is closed, if that can be told without waiting (for `repr`).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.try_read().is_some_and(|g| g.is_none())
    }
}
