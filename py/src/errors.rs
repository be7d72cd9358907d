//! aclshm's errors as Python exceptions.
//!
//! The classes live in `aclshm/errors.py` (Python, so that they can also derive from the builtin they
//! refine: `InvalidArgumentError` is a `ValueError`, `TimeoutError` the builtin `TimeoutError`, ...);
//! this module picks the class for each [`aclshm::Error`] variant and fills in what the error carries:
//! `code` and `name` (the ACL status, when a runtime call failed), `call` (the ACL function), `kind`
//! (the Rust variant's name) and the variant's fields.

use aclshm::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};

/// The exception class names of `aclshm.errors`, with the Rust variant each stands for.
const CLASSES: &[(&str, &str)] = &[
    ("Acl", "AclError"),
    ("Unsupported", "UnsupportedError"),
    ("Backend", "BackendError"),
    ("Io", "IoError"),
    ("InvalidArgument", "InvalidArgumentError"),
    ("Misaligned", "MisalignedError"),
    ("OutOfMemory", "OutOfMemoryError"),
    ("NotAllocated", "NotAllocatedError"),
    ("WrongPool", "WrongPoolError"),
    ("NotPermitted", "NotPermittedError"),
    ("Protocol", "ProtocolError"),
    ("Refused", "RefusedError"),
    ("BadDescriptor", "BadDescriptorError"),
    ("StaleDescriptor", "StaleDescriptorError"),
    ("Timeout", "TimeoutError"),
    ("StaleBlock", "StaleBlockError"),
    ("NotPinned", "NotPinnedError"),
    ("NotShared", "NotSharedError"),
    ("Closed", "ClosedError"),
    ("Deferred", "DeferredError"),
    ("Asleep", "AsleepError"),
];

/// The variant's name (the `kind` attribute).
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Acl { .. } => "Acl",
        Error::Unsupported { .. } => "Unsupported",
        Error::Backend { .. } => "Backend",
        Error::Io { .. } => "Io",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::Misaligned { .. } => "Misaligned",
        Error::OutOfMemory { .. } => "OutOfMemory",
        Error::NotAllocated { .. } => "NotAllocated",
        Error::WrongPool { .. } => "WrongPool",
        Error::NotPermitted(_) => "NotPermitted",
        Error::Protocol(_) => "Protocol",
        Error::Refused(_) => "Refused",
        Error::BadDescriptor(_) => "BadDescriptor",
        Error::StaleDescriptor { .. } => "StaleDescriptor",
        Error::Timeout(_) => "Timeout",
        Error::StaleBlock { .. } => "StaleBlock",
        Error::NotPinned { .. } => "NotPinned",
        Error::NotShared => "NotShared",
        Error::Closed => "Closed",
        Error::Deferred(_) => "Deferred",
        Error::Asleep(_) => "Asleep",
        // A variant added to the library later: the base class, with its message.
        _ => "Error",
    }
}

/// The ACL status behind an error: its own, or for deferred errors the first one that has one.
fn acl_code(e: &Error) -> Option<aclshm::AclError> {
    match e {
        Error::Deferred(v) => v.iter().find_map(acl_code),
        e => e.acl_code(),
    }
}

/// `aclshm.errors`, imported once.
fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(MODULE.get_or_try_init(py, || py.import("aclshm.errors").map(Bound::unbind))?.bind(py))
}

fn build(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let kind = kind(e);
    let class = CLASSES.iter().find(|(k, _)| *k == kind).map_or("Error", |(_, c)| c);
    let exc = errors_module(py)?.getattr(class)?.call1((e.to_string(),))?;
    exc.setattr("kind", kind)?;
    if let Some(code) = acl_code(e) {
        exc.setattr("code", code.code())?;
        exc.setattr("name", code.name())?;
    }
    let fields = PyDict::new(py);
    match e {
        Error::Acl { call, .. } | Error::Unsupported { call } => exc.setattr("call", *call)?,
        Error::Misaligned { what, value, align } => {
            fields.set_item("what", *what)?;
            fields.set_item("value", value)?;
            fields.set_item("align", align)?;
        }
        Error::OutOfMemory { requested, .. } => fields.set_item("requested", requested)?,
        Error::NotAllocated { pool, offset, len } => {
            fields.set_item("pool", pool)?;
            fields.set_item("offset", offset)?;
            fields.set_item("len", len)?;
        }
        Error::WrongPool { expected, found } => {
            fields.set_item("expected", expected)?;
            fields.set_item("found", found)?;
        }
        Error::StaleDescriptor { offset, len } => {
            fields.set_item("offset", offset)?;
            fields.set_item("len", len)?;
        }
        Error::StaleBlock { id, generation } => {
            fields.set_item("id", id)?;
            fields.set_item("generation", generation)?;
        }
        Error::NotPinned { id } => fields.set_item("id", id)?,
        Error::Io { source, .. } => {
            if let Some(errno) = source.raw_os_error() {
                fields.set_item("errno", errno)?;
            }
        }
        Error::Deferred(v) => {
            let inner = v.iter().map(|e| build(py, e).map(|e| e.into_value(py))).collect::<PyResult<Vec<_>>>()?;
            exc.setattr("errors", inner)?;
        }
        _ => {}
    }
    for (k, v) in fields.iter() {
        exc.setattr(k.cast::<pyo3::types::PyString>()?, v)?;
    }
    Ok(PyErr::from_value(exc))
}

/// The Python exception for an aclshm error.
pub(crate) fn err(e: Error) -> PyErr {
    Python::attach(|py| build(py, &e).unwrap_or_else(|failed| failed))
}

/// Raise the exception of a variant, for tests of the mapping from
/// Python (every class must be reachable, with the attributes its variant carries).
#[pyfunction]
fn _error_for_test(kind: &str, message: String) -> PyResult<()> {
    let e = match kind {
        "Acl" => Error::Acl { call: "aclrtMapMem", source: aclshm::AclError::DRV_INTERNAL_ERROR },
        "Unsupported" => Error::Unsupported { call: "aclrtMemSetAccess" },
        "Backend" => Error::Backend { reason: message, source: None },
        "Io" => Error::Io { context: message, source: std::io::Error::from_raw_os_error(28) },
        "InvalidArgument" => Error::InvalidArgument(message),
        "Misaligned" => Error::Misaligned { what: "size", value: 3, align: 512 },
        "NotAllocated" => Error::NotAllocated { pool: 1, offset: 0x200, len: 0x400 },
        "WrongPool" => Error::WrongPool { expected: 1, found: 2 },
        "NotPermitted" => Error::NotPermitted(message),
        "Protocol" => Error::Protocol(message),
        "Refused" => Error::Refused(message),
        "BadDescriptor" => Error::BadDescriptor(message),
        "StaleDescriptor" => Error::StaleDescriptor { offset: 0, len: 512 },
        "Timeout" => Error::Timeout(message),
        "StaleBlock" => Error::StaleBlock { id: 7, generation: 3 },
        "NotPinned" => Error::NotPinned { id: 7 },
        "NotShared" => Error::NotShared,
        "Closed" => Error::Closed,
        "Deferred" => Error::Deferred(vec![
            Error::Acl { call: "aclrtUnmapMem", source: aclshm::AclError::INVALID_HANDLE },
            Error::Timeout(message),
        ]),
        "Asleep" => Error::Asleep(message),
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("no variant {other:?}"))),
    };
    Err(err(e))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_error_for_test, m)?)?;
    m.add("_ERROR_KINDS", CLASSES.iter().map(|(k, _)| *k).collect::<Vec<_>>())?;
    Ok(())
}
