//! Errors: [`AclError`], a runtime status code with its name, and [`Error`], everything aclshm reports.

use std::fmt;
use std::num::NonZeroI32;

use crate::stats::PoolStats;

/// A non-zero ACL status code, as a runtime call returned it.
///
/// `name()` comes from the table of every code declared in `aclshm-sys`; codes added by newer runtimes
/// are kept as they are and shown as unknown.
///
/// ```
/// use aclshm::AclError;
/// let e = AclError::from_code(207001).unwrap();
/// assert_eq!(e, AclError::MEMORY_ALLOCATION);
/// assert_eq!(e.name(), Some("ACL_ERROR_RT_MEMORY_ALLOCATION"));
/// assert_eq!(e.to_string(), "ACL_ERROR_RT_MEMORY_ALLOCATION (207001)");
/// assert!(AclError::from_code(0).is_none());
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AclError(NonZeroI32);

macro_rules! named {
    ($($(#[$m:meta])* $id:ident = $code:path;)*) => {
        impl AclError {
            $(
                $(#[$m])*
                pub const $id: AclError = AclError::known($code);
            )*
        }
    };
}

named! {
    /// `ACL_ERROR_INVALID_PARAM` (100000): the ACL layer refused an argument (a NULL pointer, a zero size).
    INVALID_PARAM = aclshm_sys::ACL_ERROR_INVALID_PARAM;
    /// `ACL_ERROR_RT_PARAM_INVALID` (107000): the runtime refused an argument.
    RT_PARAM_INVALID = aclshm_sys::ACL_ERROR_RT_PARAM_INVALID;
    /// `ACL_ERROR_RT_INVALID_DEVICEID` (107001): no such device.
    INVALID_DEVICE_ID = aclshm_sys::ACL_ERROR_RT_INVALID_DEVICEID;
    /// `ACL_ERROR_RT_CONTEXT_NULL` (107002): the calling thread has no current device.
    CONTEXT_NULL = aclshm_sys::ACL_ERROR_RT_CONTEXT_NULL;
    /// `ACL_ERROR_RT_INVALID_HANDLE` (107017): a stale or unknown handle.
    INVALID_HANDLE = aclshm_sys::ACL_ERROR_RT_INVALID_HANDLE;
    /// `ACL_ERROR_RT_FEATURE_NOT_SUPPORT` (207000): the runtime or device does not support this.
    FEATURE_NOT_SUPPORT = aclshm_sys::ACL_ERROR_RT_FEATURE_NOT_SUPPORT;
    /// `ACL_ERROR_RT_MEMORY_ALLOCATION` (207001): the device is out of memory.
    MEMORY_ALLOCATION = aclshm_sys::ACL_ERROR_RT_MEMORY_ALLOCATION;
    /// `ACL_ERROR_RT_NO_PERMISSION` (207006): not permitted (for example whitelisting a handle exported
    /// without pid validation).
    NO_PERMISSION = aclshm_sys::ACL_ERROR_RT_NO_PERMISSION;
    /// `ACL_ERROR_RT_DRV_INTERNAL_ERROR` (507899): the driver refused (whitelist, mapping rules, double
    /// export, ...).
    DRV_INTERNAL_ERROR = aclshm_sys::ACL_ERROR_RT_DRV_INTERNAL_ERROR;
    /// `ACL_ERROR_RT_TASK_TIMEOUT` (107020): queued work (a notify wait) ran past its timeout.
    TASK_TIMEOUT = aclshm_sys::ACL_ERROR_RT_TASK_TIMEOUT;
    /// `ACL_ERROR_REPEAT_INITIALIZE` (100002): `aclInit` was called before in this process.
    REPEAT_INITIALIZE = aclshm_sys::ACL_ERROR_REPEAT_INITIALIZE;
}

impl AclError {
    const fn known(code: i32) -> AclError {
        match NonZeroI32::new(code) {
            Some(c) => AclError(c),
            None => panic!("an error code is never 0"),
        }
    }

    /// The error for a status code, or None for success (0).
    pub const fn from_code(code: aclshm_sys::aclError) -> Option<AclError> {
        match NonZeroI32::new(code) {
            Some(c) => Some(AclError(c)),
            None => None,
        }
    }

    /// The numeric code.
    pub const fn code(self) -> i32 {
        self.0.get()
    }

    /// The code's name (`ACL_ERROR_...`), if it is one aclshm knows.
    pub fn name(self) -> Option<&'static str> {
        aclshm_sys::error_name(self.code())
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.code()),
            None => write!(f, "unknown ACL error ({})", self.code()),
        }
    }
}

impl fmt::Debug for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AclError({self})")
    }
}

impl std::error::Error for AclError {}

/// Everything that can go wrong in aclshm.
///
/// Each message is complete on its own (`{e}` says what failed and why); where an error has a typed
/// cause (an [`std::io::Error`], the loader's error, an [`AclError`]) it is also its `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A runtime call returned an error. Whether retrying helps depends on the code: out of memory may pass
    /// once memory is freed; argument and permission errors will not.
    #[error("{call} failed: {source}")]
    Acl {
        /// The ACL function that failed.
        call: &'static str,
        /// Its status code.
        #[source]
        source: AclError,
    },
    /// The loaded runtime does not export this function (an older CANN release). Retrying will not help;
    /// a newer runtime will.
    #[error("{call} is not available in this ACL runtime (an older CANN release?)")]
    Unsupported {
        /// The missing ACL function.
        call: &'static str,
    },
    /// No ACL runtime could be set up: the library would not load (`source` says why, path by path), or
    /// the backend configuration (`ACLSHM_BACKEND`, `ACLSHM_ACL_LIB`) is invalid. Fix the installation or
    /// the configuration.
    #[error("no ACL runtime: {reason}")]
    Backend {
        /// What went wrong (the loader's error, when it was that).
        reason: String,
        /// The loader's error, when loading a library failed.
        #[source]
        source: Option<Box<aclshm_sys::LoadError>>,
    },
    /// An operating-system call failed: creating, mapping or locking a shared file, a socket, a
    /// directory, a thread. `context` says what was being done (and on which path). Whether retrying
    /// helps depends on `source`: a full `/dev/shm` (`StorageFull`) or too many open files may pass once
    /// something is freed; permission errors will not.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An argument was invalid before any runtime call was made (for example a key that is not 64
    /// characters). Retrying with the same argument will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A size or alignment is not a multiple of what it must be (`what` is the argument). Will not pass
    /// on retry.
    #[error("{what} {value:#x} is not a multiple of {align:#x}")]
    Misaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What it must be a multiple of.
        align: u64,
    },
    /// The device, or the pool's address space, has no room for the request, even after the pool gave
    /// back the memory it held free. Retrying helps once memory is freed (here or in other processes).
    #[error("out of device memory for {requested:#x} bytes ({stats})")]
    OutOfMemory {
        /// Bytes the pool needed: the request rounded up to the granule (plus room to align it).
        requested: u64,
        /// The pool when it gave up.
        stats: Box<PoolStats>,
    },
    /// What was freed is not a live allocation of this pool: freed already, or never allocated here.
    /// Nothing was changed; retrying the same free will fail the same way.
    #[error("nothing is allocated at offset {offset:#x} ({len:#x} bytes) in pool {pool} (freed twice?)")]
    NotAllocated {
        /// The pool the handle claims.
        pool: u32,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// A handle of one pool was given to another. Nothing was changed.
    #[error("a handle of pool {found} was given to pool {expected}")]
    WrongPool {
        /// The pool called.
        expected: u32,
        /// The pool the handle belongs to.
        found: u32,
    },
    /// The runtime's sharing rules forbid this (import in the exporting process, a second export of one
    /// handle, exporting imported memory, ...); the message says which. Nothing was changed.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A rendezvous peer or a chunk table broke the protocol (malformed, another version, another pool).
    /// The other side is at fault or incompatible; retrying will not help.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The owner turned the worker away; its reason.
    #[error("refused by the pool's owner: {0}")]
    Refused(String),
    /// A descriptor is malformed, of another pool, out of bounds, or from a generation the pool never
    /// reached: it was not made by this pool's owner as it is now. Nothing was mapped.
    #[error("bad descriptor: {0}")]
    BadDescriptor(String),
    /// A descriptor's memory is not what it was made over any more: the allocation was freed and its
    /// chunks given back (and perhaps regrown) since. Ask the owner for a current one.
    #[error("stale descriptor: {len:#x} bytes at {offset:#x} are no longer the allocation it named")]
    StaleDescriptor {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// A wait ran out of time (a notify not recorded, importers that did not close); the message says
    /// what was waited for and what was done about it.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A KV block reference names a block that was freed (and perhaps reallocated) since: its generation
    /// is not the block's now. Nothing was done.
    #[error("stale block: block {id} is no longer generation {generation}")]
    StaleBlock {
        /// The block id.
        id: u32,
        /// The generation the reference carries.
        generation: u32,
    },
    /// An unpin of a block this worker holds no pin on. Nothing was done.
    #[error("block {id} is not pinned by this worker")]
    NotPinned {
        /// The block id.
        id: u32,
    },
    /// The pool is not shared (call `Pool::share` first).
    #[error("the pool is not shared")]
    NotShared,
    /// The pool is asleep ([`Pool::sleep`](crate::Pool::sleep)): its physical memory is given back, so
    /// nothing can be allocated from it and, in a mirror, the asleep memory cannot be reached. Wake it
    /// ([`Pool::wake`](crate::Pool::wake)) and try again; addresses and descriptors stay valid.
    #[error("the pool is asleep: {0}")]
    Asleep(String),
    /// The pool was closed: everything it had is released. Make a new one.
    #[error("the pool is closed")]
    Closed,
    /// Earlier releases (unmap, free, release while dropping, or an automatic trim) failed; reported by
    /// the next fallible call, once. The call itself did nothing.
    #[error("{} earlier release(s) failed; first: {}", .0.len(), .0.first().map_or(String::new(), |e| e.to_string()))]
    Deferred(Vec<Error>),
}

impl Error {
    /// An operating-system failure while doing `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// A backend that cannot be used, for `reason` (not a loader failure).
    pub(crate) fn backend(reason: impl Into<String>) -> Error {
        Error::Backend { reason: reason.into(), source: None }
    }

    /// The ACL status code, if a runtime call failed.
    pub fn acl_code(&self) -> Option<AclError> {
        match self {
            Error::Acl { source, .. } => Some(*source),
            _ => None,
        }
    }
}

/// Run a release call (an unmap, a free, a destroy), and once more if it fails: a driver's transient
/// failure should not leak what one more call releases. The second call's error is what is left.
pub(crate) fn release_retrying<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    f().or_else(|_| f())
}

/// Report a failure nobody can be given any more (a `Drop` whose explicit `close` was not called): the
/// one path every drop-time error takes, the `log` facade at level `error`, target `aclshm`. A program
/// sees these with any logger (`env_logger`, `RUST_LOG=aclshm=warn`, ...); the Python package forwards them
/// to Python's `logging`. Callers that want them as values call `close` and get them as a `Result`.
pub(crate) fn report_drop(what: &str, e: &Error) {
    log::error!(target: "aclshm", "while dropping {what}: {e}");
}

/// `impl Drop` for a type whose drop is its explicit close: `close_on_drop!(Type, method, "a thing")` calls
/// `self.method()` and hands a failure to [`report_drop`], the one reporting path of drop-time failures.
macro_rules! close_on_drop {
    ($ty:ty, $close:ident, $what:literal) => {
        impl Drop for $ty {
            fn drop(&mut self) {
                // Nobody is left to return errors to (the explicit close returns them): report them.
                if let Err(e) = self.$close() {
                    $crate::error::report_drop($what, &e);
                }
            }
        }
    };
}
pub(crate) use close_on_drop;

/// `Result` with aclshm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_are_kept() {
        let e = AclError::from_code(999_999).unwrap();
        assert_eq!(e.name(), None);
        assert_eq!(e.to_string(), "unknown ACL error (999999)");
        assert_eq!(format!("{e:?}"), "AclError(unknown ACL error (999999))");
    }

    #[test]
    fn errors_say_which_call_failed() {
        let e = Error::Acl { call: "aclrtMapMem", source: AclError::DRV_INTERNAL_ERROR };
        assert_eq!(e.to_string(), "aclrtMapMem failed: ACL_ERROR_RT_DRV_INTERNAL_ERROR (507899)");
        assert_eq!(e.acl_code(), Some(AclError::DRV_INTERNAL_ERROR));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(Error::Unsupported { call: "x" }.acl_code(), None);
    }
}
