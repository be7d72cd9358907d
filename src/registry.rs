//! The process-wide table of shareable handles: which this process exported, and which it imported.
//!
//! The runtime's rule: "a handle and its shareable handle are one-to-one; within one process, one-to-many
//! or many-to-one is an error" (and export and import may not happen in one process). So:
//!
//! - each physical allocation is exported at most once; its shareable handle is cached on it
//!   ([`PhysicalMem::export`](crate::vmm::PhysicalMem::export)) and listed here while it lives;
//! - each shareable handle is imported at most once per process, however many users want it: the first
//!   [`import`](ImportRegistry::import) calls the runtime, later ones share that import and count as users;
//!   when the last user goes, the handle is freed (once, when its last mapping is gone too), and only after
//!   that free may the same shareable handle be imported again;
//! - importing a handle this process exported is refused here, before the runtime is asked.
//!
//! ```text
//!   import(s):  absent ──> Importing ──runtime ok──> Live{users: n} ──last user──> Releasing ──freed──> absent
//!                  ^            └──runtime failed──> absent                              │
//!                  └──────────── importers arriving during Importing or Releasing wait ─┘
//! ```
//!
//! The bookkeeping is the process's one book of shareable handles (`handles`, kept by `vmm`, which
//! records exports and frees there); this module is the import procedure over it. There is one registry
//! per process ([`ImportRegistry::global`]) and no way to make another, so the one-to-one rule holds by
//! construction: no second registry can import a handle the first one holds.

use std::fmt;

use crate::device::on_device;
use crate::error::{Error, Result};
use crate::handles::Claim;
use crate::raw;
use crate::runtime::Runtime;
use crate::sync::Arc;
use crate::vmm::{DropErrors, PhysicalMem, Shareable, book};

/// Shareable handles this process exported and imported: the process's one registry
/// ([`global`](ImportRegistry::global)).
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::registry::ImportRegistry;
/// use aclshm::vmm::{DropErrors, PageSize, PhysicalMem};
/// use aclshm::{Error, Runtime, raw, sys};
/// let rt = Runtime::simulator();
/// raw::set_device(&rt, 0)?;
/// let errors = DropErrors::new();
/// let phys = PhysicalMem::allocate(&rt, 0, 2 << 20, PageSize::Huge2M, &errors)?;
/// let shareable = phys.export(sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT)?;
/// assert_eq!(phys.export(sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT)?, shareable); // exported once
/// // This process exported it: importing it here is refused before the runtime is asked.
/// let r = ImportRegistry::global().import(&rt, shareable, 0, 2 << 20, &errors);
/// assert!(matches!(r, Err(Error::NotPermitted(_))));
/// assert_eq!(rt.call_count("aclrtMemImportFromShareableHandle"), Some(0));
/// # Ok::<(), aclshm::Error>(())
/// ```
pub struct ImportRegistry {
    _one: (),
}

impl fmt::Debug for ImportRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportRegistry").field("imports", &self.imports()).field("exports", &self.exports()).finish()
    }
}

/// A user's share of an imported handle: the physical memory, kept imported while any user holds one.
pub struct Imported {
    shareable: u64,
    phys: Option<Arc<PhysicalMem>>,
}

impl fmt::Debug for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imported({:#x})", self.shareable)
    }
}

impl Imported {
    /// The imported physical memory (map it with [`Mapping::map`](crate::vmm::Mapping::map)).
    pub fn phys(&self) -> &Arc<PhysicalMem> {
        self.phys.as_ref().expect("held until dropped")
    }

    /// The shareable handle it was imported from.
    pub fn shareable(&self) -> u64 {
        self.shareable
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        // The last user takes the book's own reference too; the handle is freed when the last mapping of it
        // goes, and PhysicalMem's drop tells the book it was released.
        let held = book().unuse(self.shareable);
        // Read after `unuse` (the book's lock orders it against `abandon`'s): one of the two settles the
        // book's entry of an import a failed unmap keeps for good.
        let abandoned = self.phys.as_ref().is_some_and(|p| p.is_abandoned());
        drop(held);
        drop(self.phys.take());
        if abandoned {
            book().released(self.shareable);
        }
    }
}

impl ImportRegistry {
    /// The process's registry.
    pub fn global() -> &'static ImportRegistry {
        static GLOBAL: ImportRegistry = ImportRegistry { _one: () };
        &GLOBAL
    }

    /// Import `shareable` (of `size` bytes) as a handle on `device`, or share the import this process
    /// already has. Refused if this process exported it, or imported it on another device or with another
    /// size.
    pub fn import(
        &self,
        rt: &Runtime,
        shareable: u64,
        device: i32,
        size: usize,
        errors: &Arc<DropErrors>,
    ) -> Result<Imported> {
        self.import_shareable(rt, &Shareable::Plain(shareable), device, size, errors)
    }

    /// [`import`](ImportRegistry::import) of a plain or a fabric handle (a fabric handle is imported with
    /// `aclrtMemImportFromShareableHandleV2`, on `device` made current for the call). The process's book
    /// knows a fabric handle by its [`key`](Shareable::key).
    pub fn import_shareable(
        &self,
        rt: &Runtime,
        shareable: &Shareable,
        device: i32,
        size: usize,
        errors: &Arc<DropErrors>,
    ) -> Result<Imported> {
        let key = shareable.key();
        let compatible = |phys: &Arc<PhysicalMem>| {
            if phys.device() != device || phys.size() != size {
                return Err(Error::NotPermitted(format!(
                    "shareable handle {key:#x} is imported in this process already, as {:#x} bytes on \
                     device {}: a process imports a handle once",
                    phys.size(),
                    phys.device()
                )));
            }
            Ok(())
        };
        match book().claim(key, compatible)? {
            Claim::Shared(phys) => return Ok(Imported { shareable: key, phys: Some(phys) }),
            Claim::Import => {}
        }
        let handle = match shareable {
            Shareable::Plain(v) => raw::mem_import_from_shareable_handle(rt, *v, device),
            Shareable::Fabric(f) => on_device(rt, device, || raw::mem_import_from_fabric_handle(rt, &f.to_raw())),
        };
        let imported = handle.and_then(|h| {
            // SAFETY: h was just imported from `key`'s handle through rt, and only this PhysicalMem frees it.
            unsafe { PhysicalMem::from_import(rt, h, size, device, errors, key) }
        });
        match imported {
            Ok(phys) => {
                let phys = Arc::new(phys);
                book().imported(key, Some(Arc::clone(&phys)));
                Ok(Imported { shareable: key, phys: Some(phys) })
            }
            Err(e) => {
                book().imported(key, None);
                Err(e)
            }
        }
    }

    /// Shareable handles imported and not yet released.
    pub fn imports(&self) -> usize {
        book().imports()
    }

    /// Shareable handles this process exported and still holds.
    pub fn exports(&self) -> usize {
        book().exports()
    }
}
