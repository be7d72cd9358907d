//! Choosing a runtime: what `ACLSHM_BACKEND` and `ACLSHM_ACL_LIB` ask for ([`Runtime::from_env`],
//! behind the process-wide [`Runtime::global`]).
//!
//! | `ACLSHM_BACKEND` | runtime |
//! |---|---|
//! | `acl` | a `libascendcl.so`: `ACLSHM_ACL_LIB` if set, else `$ASCEND_HOME_PATH/lib64`, `$ASCEND_TOOLKIT_HOME/lib64`, the loader path; an error if none loads |
//! | `sim` | the embedded simulator |
//! | unset or `auto` | real CANN if one loads and reports a device, else the embedded simulator (a simulator drop-in found by the search is skipped; one named by `ACLSHM_ACL_LIB` is used) |
//!
//! It sits above [`raw`](crate::raw): probing a library means asking it for its devices.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::raw;
use crate::runtime::Runtime;
#[cfg(not(feature = "sim"))]
use {crate::runtime::Backend, aclshm_sys::AclFns};

impl Runtime {
    /// The runtime the environment asks for: [`select`](Runtime::select) with `ACLSHM_BACKEND` and
    /// `ACLSHM_ACL_LIB`.
    pub fn from_env() -> Result<Runtime> {
        let backend = std::env::var("ACLSHM_BACKEND").unwrap_or_default();
        let lib = std::env::var_os("ACLSHM_ACL_LIB").filter(|v| !v.is_empty()).map(PathBuf::from);
        Runtime::select(&backend, lib.as_deref())
    }

    /// The runtime `backend` names (`acl`, `sim`, or `auto` / empty; see the module docs), with `lib` the
    /// library to load for `acl` (and to probe for `auto`).
    pub fn select(backend: &str, lib: Option<&Path>) -> Result<Runtime> {
        match backend.trim() {
            "acl" => Runtime::load(lib),
            "sim" => Self::embedded(),
            "" | "auto" => Ok(Self::auto(lib)),
            other => Err(Error::backend(format!("backend {other:?} is not one of acl, sim, auto (ACLSHM_BACKEND)"))),
        }
    }

    #[cfg(feature = "sim")]
    fn embedded() -> Result<Runtime> {
        Ok(Runtime::simulator())
    }

    #[cfg(not(feature = "sim"))]
    fn embedded() -> Result<Runtime> {
        Err(Error::backend("this build of aclshm has no embedded simulator (feature `sim` is off)"))
    }

    /// A real runtime if one loads and reports at least one device, else the embedded simulator.
    #[cfg(feature = "sim")]
    fn auto(lib: Option<&Path>) -> Runtime {
        Self::probe(lib).unwrap_or_else(Runtime::simulator)
    }

    #[cfg(not(feature = "sim"))]
    fn auto(lib: Option<&Path>) -> Runtime {
        // Without a simulator there is nothing to fall back to; keep what loaded, even without devices,
        // so the caller's first call reports the problem.
        Self::probe(lib).unwrap_or_else(|| Runtime::new(AclFns::default(), Backend::EmbeddedSimulator))
    }

    /// The runtime `lib` (or the search) loads, if it reports a device. A simulator drop-in found by the
    /// search (cargo puts `target/debug` on the loader path, for one) is not taken for CANN, and is not even
    /// asked for its devices; one named explicitly is used like any library.
    fn probe(lib: Option<&Path>) -> Option<Runtime> {
        let rt = Runtime::load(lib).ok()?;
        if lib.is_none() && rt.is_simulator() {
            return None;
        }
        (raw::get_device_count(&rt).ok()? > 0).then_some(rt)
    }

    /// The process-wide runtime, chosen by [`from_env`](Runtime::from_env) on first use.
    pub fn global() -> Result<&'static Runtime> {
        static GLOBAL: OnceLock<Result<Runtime>> = OnceLock::new();
        match GLOBAL.get_or_init(Runtime::from_env) {
            Ok(rt) => Ok(rt),
            // Each caller gets its own copy of the one failure.
            Err(Error::Backend { reason, source }) => {
                Err(Error::Backend { reason: reason.clone(), source: source.clone() })
            }
            Err(other) => Err(Error::backend(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_backends_are_refused() {
        let e = Runtime::select("gpu", None).unwrap_err();
        assert!(e.to_string().contains("\"gpu\" is not one of acl, sim, auto"), "{e}");
    }
}
