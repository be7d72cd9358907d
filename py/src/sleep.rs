//! Sleep mode (vLLM's): what `Pool.sleep` and `KvPool.sleep` report, the tag arguments they take, and
//! `Sleeping`, the context manager of `Pool.sleeping` / `KvPool.sleeping` (asleep inside the block,
//! woken when it ends, even by an exception).

use aclshm::SleepReport;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Sleeping>()?;
    Ok(())
}

/// Tag names from one str or an iterable of them (a str is one tag, not its characters).
pub(crate) fn tag_list(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_owned()]);
    }
    obj.try_iter()?.map(|t| t?.extract::<String>()).collect()
}

/// A sleep's report as a dict: `slept_chunks`, `trimmed_chunks`, `released_bytes`, `kept_bytes`.
pub(crate) fn report<'py>(py: Python<'py>, r: &SleepReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("slept_chunks", r.slept_chunks)?;
    d.set_item("trimmed_chunks", r.trimmed_chunks)?;
    d.set_item("released_bytes", r.released_bytes)?;
    d.set_item("kept_bytes", r.kept_bytes)?;
    Ok(d)
}

/// What a `Sleeping` puts to sleep, and how: a pool or a KV pool with the arguments of its sleep (the
/// classes implement it, so this module names neither).
pub(crate) trait Sleeper: Send + Sync {
    /// Whether it is asleep now.
    fn is_asleep(&self) -> bool;
    /// Put it to sleep with the arguments given.
    fn sleep(&self, py: Python<'_>) -> PyResult<SleepReport>;
    /// Wake all of it.
    fn wake(&self, py: Python<'_>) -> PyResult<()>;
    /// What it is, for `repr`.
    fn describe(&self) -> String;
}

/// The context manager of `Pool.sleeping(offload_tags)` and `KvPool.sleeping(discard_kv)`: entering puts
/// the pool to sleep and gives the sleep's report (`with pool.sleeping(("weights",)) as report:`), leaving
/// wakes all of it, whether the block ended or raised. A sleep that fails on entering wakes again what
/// it put to sleep, then raises (a pool asleep already raises `AsleepError` and stays asleep).
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Sleeping {
    target: Box<dyn Sleeper>,
}

impl Sleeping {
    pub(crate) fn new(target: impl Sleeper + 'static) -> Sleeping {
        Sleeping { target: Box::new(target) }
    }
}

#[pymethods]
impl Sleeping {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let was_asleep = self.target.is_asleep();
        match self.target.sleep(py) {
            Ok(r) => report(py, &r),
            Err(e) => {
                // The block will not run, nor `__exit__`: leave the pool as it was (awake), as far as it goes.
                if !was_asleep && self.target.is_asleep() {
                    let _ = self.target.wake(py);
                }
                Err(e)
            }
        }
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.target.wake(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<aclshm.Sleeping {}>", self.target.describe())
    }
}

/// Python's spelling of a bool, for `repr`.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
