//! # aclshm-sys: the AscendCL runtime C API subset aclshm uses, as data
//!
//! - [`include/aclshm_acl.h`](https://github.com/aclshm/aclshm/blob/main/ffi/include/aclshm_acl.h): our own
//!   C declarations of the ACL functions, types, flags and error codes aclshm needs, written from the
//!   documented API (the official headers may not be redistributed). `ffi/gen` checks them against the
//!   official headers of a CANN release.
//! - `include/aclshm_sim.h`: the few extra entry points only aclshm's simulator exports (fault injection,
//!   call counters, live-object counts), optional everywhere.
//! - This crate: the bindgen output of both (committed; `cargo run -p aclshm-sys-gen -- generate`
//!   regenerates it), the [`AclFns`] table with one optional function pointer per entry point, and the
//!   [`Library`] loader that fills that table from a `libascendcl.so` at run time. Nothing links against
//!   the runtime at build time, so everything builds on a machine without CANN.
//!
//! Every entry point is optional in the table: older CANN releases lack some (the VMM sharing, IPC and
//! notify export functions appeared over several releases), and calling a missing one is the caller's
//! typed error, never a crash. [`for_each_fn!`] lists them all, so the table, the loader, the simulator and
//! its drop-in library are all derived from the one list bindgen made of the header.
//!
//! C enums are `#[repr(transparent)]` newtypes over `u32` with associated constants
//! (`aclrtMemAttr::ACL_HBM_MEM_HUGE`), since runtimes add values over time.

#[allow(
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
#[rustfmt::skip]
#[macro_use]
mod generated;
pub use generated::*;

mod loader;
mod table;

pub use loader::{LIBRARY_NAME, Library, LoadError, REQUIRED_SYMBOLS};
pub use table::{AclFns, ENTRY_POINTS, Entry, EntryPoint, Group, pfn};

/// The name of an error code from the table in `aclshm_acl.h`, if it is one we know.
///
/// ```
/// assert_eq!(aclshm_sys::error_name(207001), Some("ACL_ERROR_RT_MEMORY_ALLOCATION"));
/// assert_eq!(aclshm_sys::error_name(0), Some("ACL_SUCCESS"));
/// assert_eq!(aclshm_sys::error_name(42), None);
/// ```
pub fn error_name(code: aclError) -> Option<&'static str> {
    ERROR_CODES.binary_search_by_key(&code, |&(c, _)| c).ok().map(|i| ERROR_CODES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_table_is_sorted_and_unique() {
        assert!(ERROR_CODES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(error_name(ACL_ERROR_INVALID_PARAM), Some("ACL_ERROR_INVALID_PARAM"));
        assert_eq!(error_name(ACL_ERROR_RT_PARAM_INVALID), Some("ACL_ERROR_RT_PARAM_INVALID"));
        assert_eq!(error_name(ACL_ERROR_RT_DRV_INTERNAL_ERROR), Some("ACL_ERROR_RT_DRV_INTERNAL_ERROR"));
    }

    #[test]
    fn layouts_match_the_documented_abi() {
        assert_eq!(size_of::<aclrtPhysicalMemProp>(), 32);
        assert_eq!(std::mem::offset_of!(aclrtPhysicalMemProp, location), 12);
        assert_eq!(size_of::<aclrtMemAccessDesc>(), 24);
        assert_eq!(size_of::<aclrtMemLocation>(), 8);
        assert_eq!(aclrtMemAttr::ACL_HBM_MEM_HUGE1G.0, 10);
        assert_eq!(ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION, 2);
    }
}
