//! `Event`: events and IPC events (a point in one stream's work that other streams, the host and, for an
//! IPC event, other processes wait for).

use aclshm::IpcEventHandle;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::args::duration;
use crate::err;
use crate::held::{Held, context_manager};
use crate::notify::Stream;
use crate::on_runtime;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Event>()
}

/// An event. `Event(device=0)` is a process-local one that records time; `Event.ipc(device=0)` one
/// that other processes open: its creator exports it (`export()`, 64 bytes) and they open it
/// (`Event.open(handle, device)`). Any of them records (`record(stream)`, `signal()`) and waits
/// (`wait(stream)`, `synchronize()`, `wait_host(timeout)`); there is no pid whitelist. A context manager;
/// `close()` destroys it in this process.
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Event {
    event: Held<aclshm::Event>,
    /// Its device.
    #[pyo3(get)]
    device: i32,
    /// Whether it is an IPC event (created with `Event.ipc` or opened with `Event.open`).
    #[pyo3(get)]
    is_ipc: bool,
}

impl Event {
    fn wrap(e: aclshm::Event) -> Event {
        Event { device: e.device(), is_ipc: e.is_ipc(), event: Held::new(e) }
    }
}

/// An exported event handle as Python holds it: its 64 bytes, or the 128 hex digits of them.
#[derive(FromPyObject)]
enum Handle {
    Bytes(Vec<u8>),
    Hex(String),
}

#[pymethods]
impl Event {
    #[new]
    #[pyo3(signature = (device=0))]
    fn new(py: Python<'_>, device: i32) -> PyResult<Event> {
        on_runtime(py, |rt| aclshm::Event::new(rt, device)).map(Event::wrap)
    }

    /// An IPC event on `device`, for other processes to open (`export()`, then `Event.open` there).
    #[staticmethod]
    #[pyo3(signature = (device=0))]
    fn ipc(py: Python<'_>, device: i32) -> PyResult<Event> {
        on_runtime(py, |rt| aclshm::Event::ipc(rt, device)).map(Event::wrap)
    }

    /// Open, on `device`, the IPC event another process exported: `handle` is what its `export()`
    /// returned (64 bytes, or their 128 hex digits). Refused in the creating process, and once the
    /// creator destroyed it.
    #[staticmethod]
    #[pyo3(signature = (handle, device=0))]
    fn open(py: Python<'_>, handle: Handle, device: i32) -> PyResult<Event> {
        let h = match handle {
            Handle::Bytes(b) => IpcEventHandle::from_bytes(&b),
            Handle::Hex(s) => s.parse(),
        }
        .map_err(err)?;
        on_runtime(py, |rt| aclshm::Event::open(rt, &h, device)).map(Event::wrap)
    }

    /// The runtime's handle (an int, as pyACL's events are).
    #[getter]
    fn handle(&self, py: Python<'_>) -> PyResult<usize> {
        self.event.with(py, |e| Ok(e.as_raw() as usize))
    }

    /// The 64 bytes other processes open it with (`Event.open`); the same each time. Only for an IPC
    /// event this process created (`NotPermittedError` otherwise).
    fn export<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let h = self.event.with(py, |e| e.export())?;
        Ok(PyBytes::new(py, &h.0))
    }

    /// Queue a record on `stream`: the event completes when the stream reaches it.
    fn record(&self, py: Python<'_>, stream: &Stream) -> PyResult<()> {
        self.event.with(py, |e| stream.stream.with_detached(|s| e.record(s)))
    }

    /// Queue on `stream` a wait for the latest record made so far.
    fn wait(&self, py: Python<'_>, stream: &Stream) -> PyResult<()> {
        self.event.with(py, |e| stream.stream.with_detached(|s| e.wait(s)))
    }

    /// Block until the latest record made so far has completed (at once if there is none).
    fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        self.event.with(py, |e| e.synchronize())
    }

    /// Whether the latest record made so far has completed.
    fn is_complete(&self, py: Python<'_>) -> PyResult<bool> {
        self.event.with(py, |e| e.is_complete())
    }

    /// Wait from the host up to `timeout` seconds: True once the latest record has completed, False if
    /// the time passed first.
    fn wait_host(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = duration(timeout)?;
        self.event.with(py, |e| e.wait_host(t))
    }

    /// Record from the host (on a stream of the event's own) and wait for that record.
    fn signal(&self, py: Python<'_>) -> PyResult<()> {
        self.event.with(py, |e| e.signal())
    }

    /// Milliseconds from this event's latest record to `end`'s (both local events, recorded and
    /// complete; `NotPermittedError` for IPC events, which record no time).
    fn elapsed_ms(slf: &Bound<'_, Self>, end: &Bound<'_, Event>) -> PyResult<f32> {
        let (py, this) = (slf.py(), slf.get());
        if slf.is(end) {
            // One lock, taken once: the same event at both ends.
            return this.event.with(py, |e| e.elapsed_ms(e));
        }
        let end = end.get();
        this.event.with(py, |a| end.event.with_detached(|b| a.elapsed_ms(b)))
    }

    /// Destroy it in this process (other processes' handles of an IPC event stay). Closing twice does
    /// nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.event.close(py, aclshm::Event::close)
    }

    fn __repr__(&self) -> String {
        let closed = if self.event.is_closed() { " closed" } else { "" };
        format!("<aclshm.Event device={} {}{closed}>", self.device, if self.is_ipc { "ipc" } else { "local" })
    }
}

context_manager!(Event, close);
