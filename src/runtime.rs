//! The seam: a [`Runtime`] is the one table of ACL entry points everything in aclshm calls through.
//!
//! The table comes from a `libascendcl.so` loaded at run time (real CANN, or the simulator's drop-in
//! library) or from the simulator linked into this crate (feature `sim`, on by default). Either way the
//! code above it is the same, so what the tests run is what runs on an NPU.
//!
//! This module is the table and where it comes from, nothing more; what needs to *call* through it sits
//! above `raw`: choosing a runtime from the environment ([`Runtime::select`], [`Runtime::global`], in
//! `backend`) probes a library for devices, and [`Runtime::on_device`] (in `device`) sets the current
//! device.
//!
//! Loaded libraries are never unloaded: the runtime keeps per-process state that outlives any one
//! [`Runtime`] value, and dlopen of one path twice yields one library anyway.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aclshm_sys::{AclFns, ENTRY_POINTS, Library};

use crate::error::{Error, Result};
use crate::sync::StaticMutex;
use crate::sync::stat::{AtomicU64, Ordering};

/// Where a runtime's entry points come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The simulator linked into this program.
    EmbeddedSimulator,
    /// A `libascendcl.so` loaded at run time.
    Library {
        /// The file loaded.
        path: PathBuf,
        /// Whether it is aclshm's simulator drop-in rather than CANN.
        simulator: bool,
    },
    /// A table the program built itself ([`Runtime::from_table`]), named by it.
    Custom(&'static str),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::EmbeddedSimulator => write!(f, "simulator (embedded)"),
            Backend::Library { path, simulator: true } => write!(f, "simulator (drop-in {})", path.display()),
            Backend::Library { path, simulator: false } => write!(f, "CANN ({})", path.display()),
            Backend::Custom(name) => write!(f, "custom table ({name})"),
        }
    }
}

struct Inner {
    fns: AclFns,
    backend: Backend,
    /// Calls made through this runtime, per entry point (indexed like `ENTRY_POINTS`).
    calls: Vec<AtomicU64>,
}

/// A handle to an ACL runtime: its entry points and where they come from. Cheap to clone.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("backend", &self.0.backend).finish()
    }
}

/// Libraries loaded so far, by the path asked for. Leaked on purpose: see the module docs.
static LOADED: StaticMutex<Vec<(Option<PathBuf>, &'static Library)>> = StaticMutex::new(Vec::new());

fn load_library(explicit: Option<&Path>) -> Result<&'static Library> {
    let mut loaded = LOADED.lock();
    if let Some((_, lib)) = loaded.iter().find(|(p, _)| p.as_deref() == explicit) {
        return Ok(lib);
    }
    // SAFETY: the library found is taken to be an ACL runtime, which is what this function is for; its
    // exports then have the signatures of aclshm-sys's declarations.
    let lib = unsafe { Library::find(explicit) }
        .map_err(|e| Error::Backend { reason: e.to_string(), source: Some(Box::new(e)) })?;
    let lib: &'static Library = Box::leak(Box::new(lib));
    loaded.push((explicit.map(Path::to_path_buf), lib));
    Ok(lib)
}

impl Runtime {
    pub(crate) fn new(fns: AclFns, backend: Backend) -> Runtime {
        Runtime(Arc::new(Inner { fns, backend, calls: ENTRY_POINTS.iter().map(|_| AtomicU64::new(0)).collect() }))
    }

    /// A runtime over a table of entry points the program provides: to interpose on calls, count or
    /// fail them, or model a runtime in tests. Missing entries are [`Error::Unsupported`] as usual.
    ///
    /// # Safety
    /// 1. Every function in `fns` has the C signature its name has in `aclshm_acl.h`, and stays callable
    ///    while this runtime or a clone of it is used.
    /// 2. Each behaves as the ACL function of its name as far as aclshm relies on it: it returns 0 only
    ///    when it did what that function does, and writes its out-parameters then.
    pub unsafe fn from_table(fns: AclFns, name: &'static str) -> Runtime {
        Runtime::new(fns, Backend::Custom(name))
    }

    /// The simulator linked into this program.
    #[cfg(feature = "sim")]
    pub fn simulator() -> Runtime {
        Runtime::new(aclshm_sim::fns(), Backend::EmbeddedSimulator)
    }

    /// Load `libascendcl.so` from `path`, or search for it (see the module docs) when `path` is None.
    ///
    /// The library must be an ACL runtime (CANN, or the simulator's drop-in): its initialisers run and its
    /// functions are called with the ACL signatures.
    pub fn load(path: Option<&Path>) -> Result<Runtime> {
        let lib = load_library(path)?;
        Ok(Runtime::new(
            *lib.fns(),
            Backend::Library { path: lib.path().to_path_buf(), simulator: lib.fns().is_simulator() },
        ))
    }

    /// The entry points.
    pub fn fns(&self) -> &AclFns {
        &self.0.fns
    }

    /// Whether `other` reaches the same runtime (two handles of one table, or two tables of one library):
    /// objects of one runtime mean nothing to another.
    pub fn is_same(&self, other: &Runtime) -> bool {
        let map = |rt: &Runtime| rt.fns().aclrtMapMem.map(|f| f as usize);
        Arc::ptr_eq(&self.0, &other.0) || (map(self).is_some() && map(self) == map(other))
    }

    /// Where they come from.
    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }

    /// Whether this runtime is aclshm's simulator (embedded or drop-in).
    pub fn is_simulator(&self) -> bool {
        self.0.fns.is_simulator()
    }

    /// Count a call of entry point `index` (of `ENTRY_POINTS`).
    pub(crate) fn count_call(&self, index: usize) {
        self.0.calls[index].fetch_add(1, Ordering::Relaxed);
    }

    /// How many calls aclshm made through this runtime value (and its clones) to the named function.
    pub fn call_count(&self, name: &str) -> Option<u64> {
        let i = ENTRY_POINTS.iter().position(|e| e.name == name)?;
        Some(self.0.calls[i].load(Ordering::Relaxed))
    }

    /// The functions called so far through this runtime value, with their counts.
    pub fn call_counts(&self) -> Vec<(&'static str, u64)> {
        ENTRY_POINTS
            .iter()
            .zip(&self.0.calls)
            .map(|(e, c)| (e.name, c.load(Ordering::Relaxed)))
            .filter(|&(_, c)| c > 0)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A runtime with no entry points at all.
    pub(crate) fn empty() -> Runtime {
        Runtime::new(AclFns::default(), Backend::EmbeddedSimulator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_backend_error() {
        let e = Runtime::load(Some(Path::new("/nonexistent/libascendcl.so"))).unwrap_err();
        assert!(matches!(e, Error::Backend { source: Some(_), .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the loader's error is the source");
        assert!(e.to_string().contains("/nonexistent/libascendcl.so"));
    }

    #[cfg(feature = "sim")]
    #[test]
    fn the_embedded_simulator_is_a_simulator() {
        let rt = Runtime::simulator();
        assert!(rt.is_simulator());
        assert_eq!(rt.backend(), &Backend::EmbeddedSimulator);
        assert_eq!(rt.call_count("aclrtMapMem"), Some(0));
        assert_eq!(rt.call_count("notAFunction"), None);
        assert_eq!(rt.backend().to_string(), "simulator (embedded)");
    }
}
