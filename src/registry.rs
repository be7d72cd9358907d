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
//! One instance serves the process ([`ImportRegistry::global`]); models and tests make their own.

use std::collections::{HashMap, HashSet};
use std::fmt;
#[cfg(not(loom))]
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::raw;
use crate::runtime::Runtime;
use crate::sync::{Arc, Condvar, Mutex};
use crate::vmm::{DropErrors, PhysicalMem};

enum Entry {
    Importing,
    Live { phys: Arc<PhysicalMem>, users: usize },
    Releasing,
}

#[derive(Default)]
struct Tables {
    imports: HashMap<u64, Entry>,
    exports: HashSet<u64>,
}

/// Shareable handles this process exported and imported. A handle to shared state: clones are the same
/// registry.
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
#[derive(Clone)]
pub struct ImportRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    tables: Mutex<Tables>,
    changed: Condvar,
}

impl fmt::Debug for ImportRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.shared.tables.lock();
        f.debug_struct("ImportRegistry").field("imports", &t.imports.len()).field("exports", &t.exports.len()).finish()
    }
}

/// A user's share of an imported handle: the physical memory, kept imported while any user holds one.
pub struct Imported {
    registry: ImportRegistry,
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
        let phys = self.phys.take();
        let mut t = self.registry.shared.tables.lock();
        let last = match t.imports.get_mut(&self.shareable) {
            Some(Entry::Live { users, .. }) => {
                *users -= 1;
                *users == 0
            }
            _ => false,
        };
        if last {
            // The registry's own reference goes now; the handle is freed when the last mapping of it goes,
            // and `released` (from PhysicalMem's drop) clears the entry.
            if let Some(Entry::Live { phys: held, .. }) = t.imports.insert(self.shareable, Entry::Releasing) {
                drop(t);
                drop(held);
            }
        }
        drop(phys);
    }
}

impl Default for ImportRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ImportRegistry {
    /// A fresh registry (the process's is [`global`](ImportRegistry::global)).
    pub fn new() -> ImportRegistry {
        ImportRegistry { shared: Arc::new(Shared { tables: Mutex::new(Tables::default()), changed: Condvar::new() }) }
    }

    /// The process's registry.
    #[cfg(not(loom))]
    pub fn global() -> &'static ImportRegistry {
        static GLOBAL: OnceLock<ImportRegistry> = OnceLock::new();
        GLOBAL.get_or_init(ImportRegistry::new)
    }

    /// The registry this process's objects use by default: [`global`](ImportRegistry::global) (under
    /// `--cfg loom`, where models make their own, a private one).
    pub fn for_process() -> ImportRegistry {
        #[cfg(not(loom))]
        return ImportRegistry::global().clone();
        #[cfg(loom)]
        return ImportRegistry::new();
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
        let mut t = self.shared.tables.lock();
        if t.exports.contains(&shareable) {
            return Err(Error::NotPermitted(format!(
                "shareable handle {shareable:#x} was exported by this process: export and import must be in \
                 different processes"
            )));
        }
        loop {
            match t.imports.get_mut(&shareable) {
                None => break,
                Some(Entry::Live { phys, users }) => {
                    if phys.device() != device || phys.size() != size {
                        return Err(Error::NotPermitted(format!(
                            "shareable handle {shareable:#x} is imported in this process already, as {:#x} bytes on \
                             device {}: a process imports a handle once",
                            phys.size(),
                            phys.device()
                        )));
                    }
                    *users += 1;
                    let phys = Arc::clone(phys);
                    return Ok(Imported { registry: self.clone(), shareable, phys: Some(phys) });
                }
                // Another thread is importing it, or its last import is being freed: wait for that.
                Some(Entry::Importing | Entry::Releasing) => self.shared.changed.wait(&mut t),
            }
        }
        t.imports.insert(shareable, Entry::Importing);
        drop(t);
        let imported = raw::mem_import_from_shareable_handle(rt, shareable, device).and_then(|h| {
            // SAFETY: h was just imported through rt and is ours alone; it is `size` bytes on `device` (the
            // exporter's size, which the caller got from the exporter).
            unsafe { PhysicalMem::from_import(rt, h, size, device, errors, shareable, self.clone()) }
        });
        let mut t = self.shared.tables.lock();
        let result = match imported {
            Ok(phys) => {
                let phys = Arc::new(phys);
                t.imports.insert(shareable, Entry::Live { phys: Arc::clone(&phys), users: 1 });
                Ok(Imported { registry: self.clone(), shareable, phys: Some(phys) })
            }
            Err(e) => {
                t.imports.remove(&shareable);
                Err(e)
            }
        };
        self.shared.changed.notify_all();
        result
    }

    /// The imported handle of `shareable` was freed (called by its drop): it may be imported again.
    pub(crate) fn released(&self, shareable: u64) {
        let mut t = self.shared.tables.lock();
        if matches!(t.imports.get(&shareable), Some(Entry::Releasing)) {
            t.imports.remove(&shareable);
        }
        self.shared.changed.notify_all();
    }

    /// Record that this process exported `shareable` (so it refuses to import it).
    pub(crate) fn exported(&self, shareable: u64) {
        self.shared.tables.lock().exports.insert(shareable);
    }

    /// The exported handle behind `shareable` was freed.
    pub(crate) fn unexported(&self, shareable: u64) {
        self.shared.tables.lock().exports.remove(&shareable);
    }

    /// Shareable handles imported and not yet released.
    pub fn imports(&self) -> usize {
        self.shared.tables.lock().imports.len()
    }

    /// Shareable handles this process exported and still holds.
    pub fn exports(&self) -> usize {
        self.shared.tables.lock().exports.len()
    }
}
