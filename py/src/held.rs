//! What a Python object owns until `close()`, the lock discipline around it, and the context-manager
//! methods of every class that closes.
//!
//! - [`Held`]: a Rust object that goes at `close()` (a mirror, a stream, a notify).
//! - [`Gate`]: open or shut, for an object whose Rust parts stay after `close()` (a pool keeps its
//!   address and statistics; `Pinned` its blocks).
//!
//! Calls take the lock for reading and `close()` takes it for writing, always with the interpreter
//! released (inside `Python::detach`, errors still Rust errors): a thread holding the lock never waits
//! for the interpreter, so the two cannot deadlock. The methods taking `py` release it themselves and
//! raise the error as its exception; the others are for code that released it already.

use aclshm::Error;
use parking_lot::{RwLock, RwLockReadGuard};
use pyo3::prelude::*;

use crate::err;

/// An object held until closed.
pub(crate) struct Held<T>(RwLock<Option<T>>);

impl<T: Send + Sync> Held<T> {
    pub(crate) fn new(t: T) -> Held<T> {
        Held(RwLock::new(Some(t)))
    }

    /// Run `f` on the object, the interpreter released; `ClosedError` once closed.
    pub(crate) fn with<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&T) -> aclshm::Result<R> + Send) -> PyResult<R> {
        py.detach(|| self.with_detached(f)).map_err(err)
    }

    /// Run `f` on the object, for code that already released the interpreter; `Closed` once closed.
    pub(crate) fn with_detached<R>(&self, f: impl FnOnce(&T) -> aclshm::Result<R>) -> aclshm::Result<R> {
        f(self.0.read().as_ref().ok_or(Error::Closed)?)
    }

    /// The object for reading (None once closed), for code that already released the interpreter.
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

/// Open until shut: calls run under it (many at once, or one alone), and shutting waits for them.
pub(crate) struct Gate(RwLock<bool>);

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate(RwLock::new(true))
    }

    /// Run `f` while the gate stays open (many at once), the interpreter released; `ClosedError` if it
    /// is shut.
    pub(crate) fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce() -> aclshm::Result<T> + Send) -> PyResult<T> {
        py.detach(|| self.read(f)).map_err(err)
    }

    /// Run `f` alone (nothing else under the gate) while it stays open, the interpreter released;
    /// `ClosedError` if it is shut.
    pub(crate) fn alone<T: Send>(&self, py: Python<'_>, f: impl FnOnce() -> aclshm::Result<T> + Send) -> PyResult<T> {
        py.detach(|| self.write(f)).map_err(err)
    }

    /// Shut the gate once nothing runs under it, running `close` then, the interpreter released; nothing
    /// if it was shut already.
    pub(crate) fn close(&self, py: Python<'_>, close: impl FnOnce() -> aclshm::Result<()> + Send) -> PyResult<()> {
        py.detach(|| self.shut(close)).map(|_| ()).map_err(err)
    }

    /// [`Gate::with`] for code that already released the interpreter.
    pub(crate) fn read<T>(&self, f: impl FnOnce() -> aclshm::Result<T>) -> aclshm::Result<T> {
        let g = self.0.read();
        if !*g {
            return Err(Error::Closed);
        }
        f()
    }

    /// [`Gate::alone`] for code that already released the interpreter.
    fn write<T>(&self, f: impl FnOnce() -> aclshm::Result<T>) -> aclshm::Result<T> {
        let g = self.0.write();
        if !*g {
            return Err(Error::Closed);
        }
        f()
    }

    /// Shut the gate once nothing runs under it, running `close` then; false if it was shut already.
    fn shut(&self, close: impl FnOnce() -> aclshm::Result<()>) -> aclshm::Result<bool> {
        let mut g = self.0.write();
        if !*g {
            return Ok(false);
        }
        *g = false;
        close().map(|()| true)
    }

    /// Shut it now, from a destructor (nothing else can hold it); whether it was open.
    pub(crate) fn shut_mut(&mut self) -> bool {
        std::mem::replace(self.0.get_mut(), false)
    }

    pub(crate) fn is_open(&self) -> bool {
        *self.0.read()
    }
}

/// `__enter__` (the object itself) and `__exit__` (calls `$close(py)`, lets the exception through) for a
/// `#[pyclass]`: `context_manager!(Pool, close)`. A `#[pymethods]` block of its own (PyO3's
/// `multiple-pymethods`), since macros cannot expand inside one.
macro_rules! context_manager {
    ($class:ty, $close:ident) => {
        #[::pyo3::pymethods]
        impl $class {
            fn __enter__(slf: ::pyo3::Py<Self>) -> ::pyo3::Py<Self> {
                slf
            }

            #[pyo3(signature = (*_exc))]
            fn __exit__(
                &self,
                py: ::pyo3::Python<'_>,
                _exc: &::pyo3::Bound<'_, ::pyo3::types::PyTuple>,
            ) -> ::pyo3::PyResult<bool> {
                self.$close(py)?;
                Ok(false)
            }
        }
    };
}
pub(crate) use context_manager;
