//! `Notify` and `Stream`: IPC notifies (one process waits, others record) and the streams they queue on.

use aclshm::raw::IpcKey;
use pyo3::prelude::*;

use crate::args::duration;
use crate::err;
use crate::held::{Held, context_manager};
use crate::on_runtime;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Notify>()?;
    m.add_class::<Stream>()?;
    Ok(())
}

/// A stream on a device: work queued on it runs in order. `Stream(device=0)`; a context manager.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Stream {
    pub(crate) stream: Held<aclshm::Stream>,
    /// The device.
    #[pyo3(get)]
    device: i32,
}

#[pymethods]
impl Stream {
    #[new]
    #[pyo3(signature = (device=0))]
    fn new(py: Python<'_>, device: i32) -> PyResult<Stream> {
        let s = on_runtime(py, |rt| aclshm::Stream::new(rt, device))?;
        Ok(Stream { stream: Held::new(s), device })
    }

    /// The runtime's handle (an int, as pyACL's streams are).
    #[getter]
    fn handle(&self, py: Python<'_>) -> PyResult<usize> {
        self.stream.with(py, |s| Ok(s.as_raw() as usize))
    }

    /// Wait for everything queued; a failed task (a notify wait that timed out) raises its error.
    fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        self.stream.with(py, |s| s.synchronize())
    }

    /// Destroy the stream (after its queued work). Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.stream.close(py, aclshm::Stream::close)
    }
}

context_manager!(Stream, close);

/// An IPC notify. The creator (`Notify(device=0)`) exports it (`export()`, a key), whitelists importers
/// (`allow(pid)`) and waits (`wait_host(timeout)`, or `wait(stream)`); importers
/// (`Notify.import_key(key, device)`) record (`signal()`, or `record(stream)`). A context manager;
/// `close()` destroys it in this process.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Notify {
    notify: Held<aclshm::Notify>,
    /// Its device.
    #[pyo3(get)]
    device: i32,
    /// Whether this process created it (and so may wait on it).
    #[pyo3(get, name = "is_creator")]
    creator: bool,
}

impl Notify {
    fn wrap(n: aclshm::Notify) -> Notify {
        Notify { device: n.device(), creator: n.is_creator(), notify: Held::new(n) }
    }
}

#[pymethods]
impl Notify {
    #[new]
    #[pyo3(signature = (device=0))]
    fn new(py: Python<'_>, device: i32) -> PyResult<Notify> {
        on_runtime(py, |rt| aclshm::Notify::new(rt, device)).map(Notify::wrap)
    }

    /// Import the notify another process exported under `key`, on `device` (refused unless that
    /// process whitelisted this one, or exported without validation).
    #[staticmethod]
    #[pyo3(signature = (key, device=0))]
    fn import_key(py: Python<'_>, key: &str, device: i32) -> PyResult<Notify> {
        let k: IpcKey = key.parse().map_err(err)?;
        on_runtime(py, |rt| aclshm::Notify::import(rt, &k, device)).map(Notify::wrap)
    }

    /// The runtime's handle (an int, as pyACL's notifies are).
    #[getter]
    fn handle(&self, py: Python<'_>) -> PyResult<usize> {
        self.notify.with(py, |n| Ok(n.as_raw() as usize))
    }

    /// Export it (once; later calls return the same key). `validate_pids=True`: only processes
    /// whitelisted with `allow` can import it.
    #[pyo3(signature = (*, validate_pids=true))]
    fn export(&self, py: Python<'_>, validate_pids: bool) -> PyResult<String> {
        self.notify.with(py, |n| n.export(validate_pids).map(|k| k.to_string()))
    }

    /// Whitelist a process (its `aclshm.bare_tgid()`) to import the exported notify.
    fn allow(&self, py: Python<'_>, pid: i32) -> PyResult<()> {
        self.notify.with(py, |n| n.allow(pid))
    }

    /// Record from the host: the waiter's wait completes.
    fn signal(&self, py: Python<'_>) -> PyResult<()> {
        self.notify.with(py, |n| n.signal())
    }

    /// Wait from the host (creator only) up to `timeout` seconds (rounded up to whole seconds): True
    /// once recorded (and reset), False if the time passed first.
    fn wait_host(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = duration(timeout)?;
        self.notify.with(py, |n| n.wait_host(t))
    }

    /// Queue a record on `stream`.
    fn record(&self, py: Python<'_>, stream: &Stream) -> PyResult<()> {
        self.notify.with(py, |n| stream.stream.with_detached(|s| n.record(s)))
    }

    /// Queue on `stream` a wait for the next record, then a reset (creator only); `timeout` in seconds,
    /// None for ever. A wait that times out fails the stream's `synchronize`.
    #[pyo3(signature = (stream, timeout=None))]
    fn wait(&self, py: Python<'_>, stream: &Stream, timeout: Option<f64>) -> PyResult<()> {
        let t = timeout.map(duration).transpose()?;
        self.notify.with(py, |n| stream.stream.with_detached(|s| n.wait(s, t)))
    }

    /// Destroy it in this process. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.notify.close(py, aclshm::Notify::close)
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Notify device={} {}>", self.device, if self.creator { "creator" } else { "imported" })
    }
}

context_manager!(Notify, close);
