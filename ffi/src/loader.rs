//! Loading a `libascendcl.so` at run time and filling an [`AclFns`] table from it.

use std::ffi::{CStr, OsString, c_void};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libloading::os::unix::{Library as DlLibrary, RTLD_LOCAL, RTLD_NOW};

use crate::table::{AclFns, Group};

/// Entry points every ACL runtime exports; a library without them is not one.
pub const REQUIRED_SYMBOLS: &[&str] = &["aclInit", "aclFinalize", "aclrtSetDevice", "aclrtGetDeviceCount"];

/// The file name of the ACL runtime library.
pub const LIBRARY_NAME: &str = "libascendcl.so";

/// Why no ACL runtime library could be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// `dlopen` failed for every candidate, each with its message.
    NotFound {
        /// Each path tried, with `dlerror`'s message.
        tried: Vec<(PathBuf, String)>,
    },
    /// A library loaded but lacks entry points every ACL runtime has.
    NotAcl {
        /// The library.
        path: PathBuf,
        /// The required symbols it lacks.
        missing: Vec<&'static str>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound { tried } => {
                write!(f, "no ACL runtime library could be loaded")?;
                for (p, e) in tried {
                    write!(f, "; {}: {e}", p.display())?;
                }
                Ok(())
            }
            LoadError::NotAcl { path, missing } => {
                write!(f, "{} is not an ACL runtime: it lacks {}", path.display(), missing.join(", "))
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded ACL runtime library and the table of its entry points.
///
/// The table's pointers are valid while the `Library` lives; dropping it unloads the library.
pub struct Library {
    fns: AclFns,
    path: PathBuf,
    // Declared last: dropped (dlclose) after everything that could use the table.
    _lib: DlLibrary,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library").field("path", &self.path).field("fns", &self.fns).finish()
    }
}

impl Library {
    /// Where [`find`](Library::find) looks, in order: `explicit` if given (and then nowhere else), else
    /// `$ASCEND_HOME_PATH/lib64`, `$ASCEND_TOOLKIT_HOME/lib64`, and the dynamic loader's search path
    /// (`LD_LIBRARY_PATH`, the ld.so cache) under the bare name `libascendcl.so`.
    pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
        if let Some(p) = explicit {
            return vec![p.to_path_buf()];
        }
        let mut out = Vec::new();
        for var in ["ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"] {
            if let Some(home) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                let p = Path::new(&home).join("lib64").join(LIBRARY_NAME);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out.push(PathBuf::from(LIBRARY_NAME));
        out
    }

    /// Load the first candidate that opens (see [`candidates`](Library::candidates)).
    ///
    /// # Safety
    /// 1. Loading runs the library's initialisers and, later, its finalisers: the library found must be a
    ///    genuine ACL runtime (or aclshm's drop-in simulator), whose exports have the C signatures of
    ///    `aclshm_acl.h` / `aclshm_sim.h`.
    pub unsafe fn find(explicit: Option<&Path>) -> Result<Library, LoadError> {
        let mut tried = Vec::new();
        for path in Self::candidates(explicit) {
            // SAFETY: forwarded to the caller (precondition 1).
            match unsafe { Self::open(&path) } {
                Ok(lib) => return Ok(lib),
                Err(LoadError::NotFound { tried: t }) => tried.extend(t),
                Err(e @ LoadError::NotAcl { .. }) => return Err(e),
            }
        }
        Err(LoadError::NotFound { tried })
    }

    /// Load the library at `path` (a bare file name searches the loader path) with `RTLD_NOW | RTLD_LOCAL`.
    ///
    /// # Safety
    /// 1. As for [`find`](Library::find): the library must be an ACL runtime whose exports have the C
    ///    signatures of our declarations.
    pub unsafe fn open(path: &Path) -> Result<Library, LoadError> {
        // SAFETY: running the initialisers of an ACL runtime is what the caller vouched for (precondition 1).
        let lib = unsafe { DlLibrary::open(Some(path.as_os_str()), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
            // dlerror's text is the error's source; the error itself only says "dlopen failed".
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            LoadError::NotFound { tried: vec![(path.to_path_buf(), why)] }
        })?;
        let lookup = |name: &'static str| -> *const c_void {
            // SAFETY: we only read the symbol's address; its type is asserted by resolve's caller below.
            match unsafe { lib.get::<*const c_void>(name) } {
                Ok(sym) => *sym,
                Err(_) => std::ptr::null(),
            }
        };
        // SAFETY: each symbol has the signature of its declaration (precondition 1), and the table is stored
        // beside the library, which stays loaded as long as the table is reachable through `self`.
        let fns = unsafe { AclFns::resolve(lookup) };
        let missing: Vec<&'static str> = REQUIRED_SYMBOLS.iter().copied().filter(|n| !fns.has(n)).collect();
        if !missing.is_empty() {
            return Err(LoadError::NotAcl { path: path.to_path_buf(), missing });
        }
        let path = resolved_path(&fns).unwrap_or_else(|| path.to_path_buf());
        Ok(Library { fns, path, _lib: lib })
    }

    /// The table of this library's entry points.
    pub fn fns(&self) -> &AclFns {
        &self.fns
    }

    /// The file the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// ACL entry points this library lacks (older CANN releases lack the newer ones).
    pub fn missing(&self) -> Vec<&'static str> {
        self.fns.missing(Group::Acl)
    }
}

/// The file that holds `aclrtGetDeviceCount`, as the dynamic loader knows it.
fn resolved_path(fns: &AclFns) -> Option<PathBuf> {
    let addr = fns.aclrtGetDeviceCount? as *const c_void;
    // SAFETY: Dl_info is plain C data (pointers and integers), for which all-zero bytes are a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads loader state; info is a valid out-parameter.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path owned by the loader, valid while the library is loaded.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let p = PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(name.to_bytes())));
    std::fs::canonicalize(&p).ok().or(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_is_the_only_candidate() {
        assert_eq!(Library::candidates(Some(Path::new("/x/libascendcl.so"))), vec![PathBuf::from("/x/libascendcl.so")]);
        assert_eq!(Library::candidates(None).last(), Some(&PathBuf::from(LIBRARY_NAME)));
    }

    #[test]
    fn missing_library_is_a_typed_error() {
        // SAFETY: the path does not exist, so nothing is loaded.
        let err = unsafe { Library::open(Path::new("/nonexistent/libascendcl.so")) }.unwrap_err();
        match &err {
            LoadError::NotFound { tried } => assert_eq!(tried.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("/nonexistent/libascendcl.so"));
    }

    #[test]
    fn a_library_that_is_not_acl_is_refused() {
        // libc is loaded in every process and exports none of the ACL symbols.
        // SAFETY: libc's initialisers have already run in this process; loading it again only bumps a count.
        let err = unsafe { Library::open(Path::new("libc.so.6")) }.unwrap_err();
        match err {
            LoadError::NotAcl { missing, .. } => assert_eq!(missing, REQUIRED_SYMBOLS),
            other => panic!("unexpected {other:?}"),
        }
    }
}
