//! `libascendcl.so` built from aclshm's simulator: exports every ACL entry point aclshm declares (and the
//! simulator's extensions) under its C name, so a program written against the ACL headers, or aclshm
//! itself with `ACLSHM_BACKEND=acl ACLSHM_ACL_LIB=<this file>`, runs without an NPU.
//!
//! Build it with `cargo build -p aclshm-ascendcl`; the library is `target/<profile>/libascendcl.so`.

macro_rules! export {
    ($( $(#[doc = $doc:literal])* $group:ident $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        $(
            $(#[doc = $doc])*
            ///
            /// # Safety
            /// 1. As for the simulator's function of the same name: the C API's contract for it.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: forwarded to the caller (precondition 1).
                unsafe { aclshm_sim::$name($($arg),*) }
            }
        )*
    };
}

aclshm_sys::for_each_fn!(export);
