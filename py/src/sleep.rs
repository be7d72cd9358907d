//! Sleep mode (vLLM's): what `Pool.sleep` and `KvPool.sleep` report, the tag arguments they take, and
//! `Sleeping`, the context manager of `Pool.sleeping` / `KvPool.sleeping` (asleep inside the block,
//! woken when it ends, even by an exception).

use std::time::Duration;

use aclshm::SleepReport;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::kv::KvPool;
use crate::pool::Pool;

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

/// What a `Sleeping` puts to sleep, and how.
enum Target {
    Pool { pool: Py<Pool>, offload_tags: Vec<String>, release_timeout: Option<Duration> },
    Kv { kv: Py<KvPool>, discard_kv: bool },
}

/// The context manager of `Pool.sleeping(offload_tags)` and `KvPool.sleeping(discard_kv)`: entering puts
/// the pool to sleep and gives the sleep's report (`with pool.sleeping(("weights",)) as report:`), leaving
/// wakes all of it, whether the block ended or raised. A sleep that fails on entering wakes again what
/// it put to sleep, then raises (a pool asleep already raises `AsleepError` and stays asleep).
#[pyclass(module = "aclshm", frozen)]
pub(crate) struct Sleeping {
    target: Target,
}

impl Sleeping {
    pub(crate) fn pool(pool: Py<Pool>, offload_tags: Vec<String>, release_timeout: Option<Duration>) -> Sleeping {
        Sleeping { target: Target::Pool { pool, offload_tags, release_timeout } }
    }

    pub(crate) fn kv(kv: Py<KvPool>, discard_kv: bool) -> Sleeping {
        Sleeping { target: Target::Kv { kv, discard_kv } }
    }

    fn is_asleep(&self) -> bool {
        match &self.target {
            Target::Pool { pool, .. } => pool.get().asleep(),
            Target::Kv { kv, .. } => kv.get().asleep(),
        }
    }

    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        match &self.target {
            Target::Pool { pool, .. } => pool.get().wake_now(py, None),
            Target::Kv { kv, .. } => kv.get().wake_now(py),
        }
    }
}

#[pymethods]
impl Sleeping {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let was_asleep = self.is_asleep();
        let r = match &self.target {
            Target::Pool { pool, offload_tags, release_timeout } => {
                pool.get().sleep_now(py, offload_tags.clone(), *release_timeout)
            }
            Target::Kv { kv, discard_kv } => kv.get().sleep_now(py, *discard_kv),
        };
        match r {
            Ok(r) => report(py, &r),
            Err(e) => {
                // The block will not run, nor `__exit__`: leave the pool as it was (awake), as far as it goes.
                if !was_asleep && self.is_asleep() {
                    let _ = self.wake(py);
                }
                Err(e)
            }
        }
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.wake(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &self.target {
            Target::Pool { offload_tags, .. } => format!("<aclshm.Sleeping Pool offload_tags={offload_tags:?}>"),
            Target::Kv { discard_kv, .. } => format!("<aclshm.Sleeping KvPool discard_kv={}>", py_bool(*discard_kv)),
        }
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
