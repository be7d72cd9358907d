//! The function table: one optional pointer per entry point of [`for_each_fn!`](crate::for_each_fn).

use core::fmt;

/// Which header declares an entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// An ACL runtime function (`aclshm_acl.h`), exported by every `libascendcl.so` recent enough.
    Acl,
    /// A simulator extension (`aclshm_sim.h`), exported only by aclshm's simulator.
    Sim,
}

/// An entry point's name and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryPoint {
    /// The C symbol name.
    pub name: &'static str,
    /// The header that declares it.
    pub group: Group,
}

macro_rules! define_table {
    ($( $(#[doc = $doc:literal])* $group:ident $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        /// Function pointer types, one per entry point, named after it.
        #[allow(non_camel_case_types)]
        pub mod pfn {
            $(
                $(#[doc = $doc])*
                pub type $name = unsafe extern "C" fn($($arg: $ty),*) -> $ret;
            )*
        }

        /// Every entry point aclshm knows, each `None` where the runtime does not export it.
        ///
        /// A table holds plain function pointers: whoever fills it (the [`Library`](crate::Library)
        /// loader, or a statically linked implementation) keeps the code they point to alive.
        #[allow(non_snake_case)]
        #[derive(Clone, Copy, Default)]
        pub struct AclFns {
            $(
                $(#[doc = $doc])*
                pub $name: Option<pfn::$name>,
            )*
        }

        /// Every entry point by name; `Entry::x as usize` is its index in [`ENTRY_POINTS`].
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Entry {
            $(
                $(#[doc = $doc])*
                $name,
            )*
        }

        /// Every entry point, in declaration order.
        pub const ENTRY_POINTS: &[EntryPoint] = &[
            $( EntryPoint { name: stringify!($name), group: Group::$group }, )*
        ];

        impl AclFns {
            /// Resolve every entry point with `lookup`, which returns the address of a symbol or null.
            ///
            /// # Safety
            /// 1. Each non-null address `lookup` returns for a name must be a function with the C signature
            ///    that name has in `aclshm_acl.h` / `aclshm_sim.h`.
            /// 2. That code must stay loaded while the table, or a copy of it, is used.
            pub unsafe fn resolve(mut lookup: impl FnMut(&'static str) -> *const core::ffi::c_void) -> Self {
                Self {
                    $(
                        $name: {
                            let addr = lookup(stringify!($name));
                            if addr.is_null() {
                                None
                            } else {
                                // SAFETY: a non-null address for this name is a function of this signature
                                // (precondition 1); fn pointers and data pointers have one size on the
                                // platforms dlsym serves.
                                Some(unsafe { core::mem::transmute::<*const core::ffi::c_void, pfn::$name>(addr) })
                            }
                        },
                    )*
                }
            }

            /// Whether the named entry point is present (false for names the table does not know).
            pub fn has(&self, name: &str) -> bool {
                $( if name == stringify!($name) { return self.$name.is_some(); } )*
                false
            }
        }
    };
}

for_each_fn!(define_table);

impl AclFns {
    /// The entry points of `group` this table lacks.
    pub fn missing(&self, group: Group) -> Vec<&'static str> {
        ENTRY_POINTS.iter().filter(|e| e.group == group && !self.has(e.name)).map(|e| e.name).collect()
    }

    /// Whether this table comes from aclshm's simulator (it exports the simulator extensions).
    pub fn is_simulator(&self) -> bool {
        self.aclshmSimGetInfo.is_some()
    }
}

impl fmt::Debug for AclFns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let present = ENTRY_POINTS.iter().filter(|e| self.has(e.name)).count();
        f.debug_struct("AclFns")
            .field("present", &present)
            .field("of", &ENTRY_POINTS.len())
            .field("missing_acl", &self.missing(Group::Acl))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_lacks_everything() {
        let t = AclFns::default();
        assert_eq!(t.missing(Group::Acl).len(), ENTRY_POINTS.iter().filter(|e| e.group == Group::Acl).count());
        assert!(!t.has("aclrtMapMem"));
        assert!(!t.has("notAnEntryPoint"));
        assert!(!t.is_simulator());
    }

    #[test]
    fn resolve_fills_only_what_lookup_finds() {
        unsafe extern "C" fn fake_count(count: *mut u32) -> crate::aclError {
            // SAFETY: the test passes a valid pointer.
            unsafe { *count = 3 };
            0
        }
        // SAFETY: the one address returned has the signature of aclrtGetDeviceCount and is static code.
        let t = unsafe {
            AclFns::resolve(|name| {
                if name == "aclrtGetDeviceCount" { fake_count as *const core::ffi::c_void } else { core::ptr::null() }
            })
        };
        assert!(t.has("aclrtGetDeviceCount"));
        assert!(!t.has("aclrtMapMem"));
        let mut n = 0;
        // SAFETY: n is a valid out-pointer.
        assert_eq!(unsafe { (t.aclrtGetDeviceCount.unwrap())(&mut n) }, 0);
        assert_eq!(n, 3);
    }

    #[test]
    fn entry_indices_match_the_list() {
        assert_eq!(ENTRY_POINTS[Entry::aclInit as usize].name, "aclInit");
        assert_eq!(ENTRY_POINTS[Entry::aclrtMapMem as usize].name, "aclrtMapMem");
        assert_eq!(ENTRY_POINTS[Entry::aclshmSimReclaim as usize].name, "aclshmSimReclaim");
    }

    #[test]
    fn entry_points_are_grouped_and_unique() {
        let mut names: Vec<_> = ENTRY_POINTS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENTRY_POINTS.len());
        assert!(ENTRY_POINTS.iter().all(|e| (e.group == Group::Sim) == e.name.starts_with("aclshmSim")));
    }
}
