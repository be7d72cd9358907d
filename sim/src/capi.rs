//! The C surface: one `extern "C"` function per entry point of `aclshm_sys::for_each_fn!`, with the
//! declared C signature.
//!
//! Each counts its call, fails at once if an injected fault says so, then runs the implementation inside
//! `catch_unwind`: no panic crosses the C ABI (one becomes `ACL_ERROR_RT_INTERNAL_ERROR`). The
//! implementations validate every pointer and handle they are given and answer bad ones with the code the
//! runtime documents; out-parameters are written only on success.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use aclshm_sys::*;

use crate::call::R;
use crate::state::log_enabled;

/// Run one call of entry point `func` (`name`).
#[inline]
fn entry(func: usize, name: &'static str, f: impl FnOnce() -> R) -> aclError {
    if let Err(e) = crate::fault::load_env() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| eprintln!("aclshm-sim: {e}"));
        return ACL_ERROR_RT_DEV_SETUP_ERROR;
    }
    if let Some(code) = crate::fault::on_call(func) {
        if log_enabled() {
            eprintln!("aclshm-sim: {name}: injected fault {code}");
        }
        return code;
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ACL_SUCCESS,
        Ok(Err(e)) => {
            if log_enabled() {
                eprintln!(
                    "aclshm-sim: {name} failed with {} ({}): {}",
                    e.code,
                    aclshm_sys::error_name(e.code).unwrap_or("unknown"),
                    e.why
                );
            }
            e.code
        }
        Err(_) => {
            eprintln!("aclshm-sim: internal error: {name} panicked; returning ACL_ERROR_RT_INTERNAL_ERROR");
            ACL_ERROR_RT_INTERNAL_ERROR
        }
    }
}

/// The implementations, under the entry points' names.
mod imp {
    pub(crate) use crate::device::*;
    pub(crate) use crate::event::*;
    pub(crate) use crate::ext::*;
    pub(crate) use crate::ipc::{
        aclrtIpcMemClose, aclrtIpcMemGetExportKey, aclrtIpcMemImportByKey, aclrtIpcMemSetImportPid,
    };
    pub(crate) use crate::memory::{
        aclrtFree, aclrtFreeHost, aclrtGetMemInfo, aclrtMalloc, aclrtMallocHost, aclrtMemcpy, aclrtMemcpyAsync,
        aclrtMemcpyBatch, aclrtMemset, aclrtPointerGetAttributes, aclrtValueWait, aclrtValueWrite,
    };
    pub(crate) use crate::notify::{
        aclrtCreateNotify, aclrtDestroyNotify, aclrtGetNotifyId, aclrtNotifyGetExportKey, aclrtNotifyImportByKey,
        aclrtNotifySetImportPid, aclrtRecordNotify, aclrtWaitAndResetNotify,
    };
    pub(crate) use crate::vmm::*;
}

macro_rules! exports {
    ($( $(#[doc = $doc:literal])* $group:ident $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        $(
            $(#[doc = $doc])*
            ///
            /// # Safety
            /// 1. The caller keeps the C API's contract for this function: pointer arguments are NULL or valid
            ///    for what the function reads and writes through them (the simulator checks everything else).
            #[allow(non_snake_case)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                entry(Entry::$name as usize, stringify!($name), || {
                    // SAFETY: forwarded to the caller (precondition 1).
                    unsafe { imp::$name($($arg),*) }
                })
            }
        )*

        /// The simulator's function table: every entry point present, pointing at this crate's functions.
        pub fn fns() -> AclFns {
            AclFns { $( $name: Some($name as pfn::$name), )* }
        }
    };
}

aclshm_sys::for_each_fn!(exports);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_code() {
        // An entry point no other unit test counts or injects faults into.
        let (i, name) = (Entry::aclrtDeviceDisablePeerAccess as usize, "aclrtDeviceDisablePeerAccess");
        let code = entry(i, name, || panic!("a bug in an implementation"));
        assert_eq!(code, ACL_ERROR_RT_INTERNAL_ERROR);
        assert_eq!(entry(i, name, || Ok(())), ACL_SUCCESS);
        assert_eq!(
            entry(i, name, || Err(crate::call::fail(ACL_ERROR_RT_PARAM_INVALID, "x"))),
            ACL_ERROR_RT_PARAM_INVALID
        );
    }

    #[test]
    fn the_table_is_complete() {
        let t = super::fns();
        assert!(t.is_simulator());
        assert!(t.missing(aclshm_sys::Group::Acl).is_empty());
    }
}
