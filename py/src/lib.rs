//! The native half of the `aclshm` Python package (`aclshm._aclshm`).
//!
//! Two levels, as the Python package presents them:
//!
//! - `acl`: pyACL's calling convention (`acl.rt.*`, `(value, ret)` tuples, pointers and handles as
//!   ints) over [`aclshm::raw`], one runtime call per function, on the runtime the library selected
//!   ([`Runtime::global`]: CANN when an NPU is there, else the embedded simulator).
//! - `pool`, `kv`, `notify`, `event`: the safe API (pools, mirrors, descriptors, KV blocks with pins,
//!   notifies, events and streams), errors raised as the exceptions of `aclshm.errors` (module `errors`).
//!
//! Blocking calls (attaching through the rendezvous, waits, copies, synchronisation) release the
//! interpreter, so other Python threads run meanwhile.

mod acl;
mod args;
mod buffer;
mod errors;
mod event;
mod held;
mod kv;
mod notify;
mod pool;
mod sleep;

use aclshm::Runtime;
use pyo3::prelude::*;

pub(crate) use errors::err;

/// The process's runtime, chosen on first use from `ACLSHM_BACKEND` / `ACLSHM_ACL_LIB`.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    Runtime::global().map_err(err)
}

/// Run `f` on the process's runtime with the interpreter released (creating, attaching and closing can
/// wait); its error raised as its exception.
pub(crate) fn on_runtime<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&'static Runtime) -> aclshm::Result<T> + Send,
) -> PyResult<T> {
    let rt = runtime()?;
    py.detach(|| f(rt)).map_err(err)
}

/// Which runtime the library uses: `"simulator (embedded)"`, `"CANN (<path>)"`, ...
#[pyfunction]
fn backend() -> PyResult<String> {
    Ok(runtime()?.backend().to_string())
}

/// Whether the runtime is aclshm's simulator (embedded or drop-in) rather than CANN.
#[pyfunction]
fn is_simulator() -> PyResult<bool> {
    Ok(runtime()?.is_simulator())
}

/// Make `device` the calling thread's current device (`aclrtSetDevice`; pair with `reset_device`).
#[pyfunction]
fn set_device(device: i32) -> PyResult<()> {
    aclshm::raw::set_device(runtime()?, device).map_err(err)
}

/// Drop one `set_device` reference of `device` (`aclrtResetDevice`).
#[pyfunction]
fn reset_device(device: i32) -> PyResult<()> {
    aclshm::raw::reset_device(runtime()?, device).map_err(err)
}

/// Devices the runtime has.
#[pyfunction]
fn device_count() -> PyResult<u32> {
    aclshm::raw::get_device_count(runtime()?).map_err(err)
}

/// The number `device_get_bare_tgid` reports for this process: what owners whitelist.
#[pyfunction]
fn bare_tgid() -> PyResult<i32> {
    aclshm::raw::device_get_bare_tgid(runtime()?).map_err(err)
}

/// The name of an ACL status code (`"ACL_ERROR_RT_DRV_INTERNAL_ERROR"` for 507899), None for one aclshm does
/// not know (0 is `"ACL_SUCCESS"`): for pyACL-style code that gets `ret` ints.
#[pyfunction]
fn error_name(code: i32) -> Option<&'static str> {
    if code == 0 { Some("ACL_SUCCESS") } else { aclshm::sys::error_name(code) }
}

/// Objects the simulator holds in this process's directory, by kind (`{}` on a real runtime, which does
/// not say): what tests check is back to nothing.
#[pyfunction]
fn simulator_stats(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let d = pyo3::types::PyDict::new(py);
    let rt = runtime()?;
    if rt.is_simulator() {
        let s = aclshm::raw::sim_get_stats(rt).map_err(err)?;
        d.set_item("processes", s.processes)?;
        d.set_item("physical_objects", s.physObjects)?;
        d.set_item("ipc_keys", s.ipcKeys)?;
        d.set_item("notifies", s.notifies)?;
        d.set_item("device_bytes_used", s.deviceBytesUsed.iter().sum::<u64>())?;
        d.set_item("local_handles", s.localHandles)?;
        d.set_item("local_reservations", s.localReservations)?;
        d.set_item("local_mappings", s.localMappings)?;
        d.set_item("local_device_allocs", s.localDeviceAllocs)?;
        d.set_item("local_host_allocs", s.localHostAllocs)?;
        d.set_item("local_notifies", s.localNotifies)?;
        d.set_item("local_ipc_imports", s.localIpcImports)?;
        d.set_item("ipc_events", s.ipcEvents)?;
        d.set_item("local_events", s.localEvents)?;
        d.set_item("local_contexts", s.localContexts)?;
    }
    Ok(d.into_any().unbind())
}

#[pymodule]
fn _aclshm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The library's log records (drop-time failures, workers let go) go to Python's `logging`, unless the
    // program installed a logger of its own first.
    let _ = pyo3_log::try_init();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(is_simulator, m)?)?;
    m.add_function(wrap_pyfunction!(set_device, m)?)?;
    m.add_function(wrap_pyfunction!(reset_device, m)?)?;
    m.add_function(wrap_pyfunction!(device_count, m)?)?;
    m.add_function(wrap_pyfunction!(bare_tgid, m)?)?;
    m.add_function(wrap_pyfunction!(simulator_stats, m)?)?;
    m.add_function(wrap_pyfunction!(error_name, m)?)?;
    errors::register(m)?;
    pool::register(m)?;
    kv::register(m)?;
    sleep::register(m)?;
    notify::register(m)?;
    event::register(m)?;
    acl::register(m)?;
    Ok(())
}
