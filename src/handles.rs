//! The book of this process's shareable handles: which it exported, which it imported, and how far each
//! import has got. Pure bookkeeping, no runtime call: `vmm` records exports and frees in the process's
//! book ([`vmm::book`](crate::vmm)), and `registry` drives imports through it.
//!
//! The runtime's rule it serves: "a handle and its shareable handle are one-to-one; within one process,
//! one-to-many or many-to-one is an error", and export and import may not happen in one process. So a
//! shareable handle is imported at most once at a time, however many users want it; a handle the
//! process exported is never imported by it.
//!
//! ```text
//!   import(s):  absent ──claim──> Importing ──imported(Some)──> Live{value, users: n} ──unuse (last)──> Releasing
//!                  ^                  └──imported(None)──> absent                                        │
//!                  └───────────────────────────── released (the import's handle was freed) ◄─────────────┘
//!   a claim arriving while the entry is Importing or Releasing waits for it to settle
//! ```
//!
//! Generic over what a live import holds (`T`: the imported physical memory, in the library), so that the
//! book sits below the types it keeps.

#![deny(unsafe_code)]

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::sync::{Condvar, Mutex};

enum Entry<T> {
    Importing,
    Live { value: T, users: usize },
    Releasing,
}

struct Tables<T> {
    imports: HashMap<u64, Entry<T>>,
    exports: HashSet<u64>,
}

/// What a [`claim`](HandleBook::claim) got.
pub(crate) enum Claim<T> {
    /// The live import, with one more user.
    Shared(T),
    /// Nobody has it: the caller imports it now and reports with [`imported`](HandleBook::imported).
    Import,
}

/// A process's shareable handles (see the module docs).
pub(crate) struct HandleBook<T> {
    tables: Mutex<Tables<T>>,
    changed: Condvar,
}

impl<T: Clone> HandleBook<T> {
    /// An empty book.
    pub(crate) fn new() -> Self {
        HandleBook {
            tables: Mutex::new(Tables { imports: HashMap::new(), exports: HashSet::new() }),
            changed: Condvar::new(),
        }
    }

    /// Use the import of `shareable`: the live one, if `compatible` accepts it (one more user), or the
    /// caller's to make ([`Claim::Import`]: the entry is `Importing` until [`imported`](HandleBook::imported)
    /// says how it went). Waits while another thread imports or releases it. Refused if this process
    /// exported it.
    pub(crate) fn claim(&self, shareable: u64, compatible: impl Fn(&T) -> Result<()>) -> Result<Claim<T>> {
        let mut t = self.tables.lock();
        if t.exports.contains(&shareable) {
            return Err(Error::NotPermitted(format!(
                "shareable handle {shareable:#x} was exported by this process: export and import must be in \
                 different processes"
            )));
        }
        loop {
            match t.imports.get_mut(&shareable) {
                None => break,
                Some(Entry::Live { value, users }) => {
                    compatible(value)?;
                    *users += 1;
                    return Ok(Claim::Shared(value.clone()));
                }
                // Another thread is importing it, or its last import is being freed: wait for that.
                Some(Entry::Importing | Entry::Releasing) => self.changed.wait(&mut t),
            }
        }
        t.imports.insert(shareable, Entry::Importing);
        Ok(Claim::Import)
    }

    /// How the import a [`Claim::Import`] asked for went: `Some(value)` live with one user, `None` failed
    /// (the handle may be claimed again).
    pub(crate) fn imported(&self, shareable: u64, value: Option<T>) {
        let mut t = self.tables.lock();
        match value {
            Some(value) => t.imports.insert(shareable, Entry::Live { value, users: 1 }),
            None => t.imports.remove(&shareable),
        };
        self.changed.notify_all();
    }

    /// One user of `shareable` is done. The last one gets the book's own value back (the entry is
    /// `Releasing` from then on), to drop once no lock is held: dropping it may free the import, which
    /// reports [`released`](HandleBook::released).
    pub(crate) fn unuse(&self, shareable: u64) -> Option<T> {
        let mut t = self.tables.lock();
        let last = match t.imports.get_mut(&shareable) {
            Some(Entry::Live { users, .. }) => {
                *users -= 1;
                *users == 0
            }
            _ => false,
        };
        if !last {
            return None;
        }
        match t.imports.insert(shareable, Entry::Releasing) {
            Some(Entry::Live { value, .. }) => Some(value),
            _ => None,
        }
    }

    /// The imported handle of `shareable` was freed: it may be imported again.
    pub(crate) fn released(&self, shareable: u64) {
        let mut t = self.tables.lock();
        if matches!(t.imports.get(&shareable), Some(Entry::Releasing)) {
            t.imports.remove(&shareable);
        }
        self.changed.notify_all();
    }

    /// This process exported `shareable` (so it refuses to import it).
    pub(crate) fn exported(&self, shareable: u64) {
        self.tables.lock().exports.insert(shareable);
    }

    /// The exported handle behind `shareable` was freed.
    pub(crate) fn unexported(&self, shareable: u64) {
        self.tables.lock().exports.remove(&shareable);
    }

    /// Shareable handles imported (or being imported, or released) now.
    pub(crate) fn imports(&self) -> usize {
        self.tables.lock().imports.len()
    }

    /// Shareable handles this process exported and still holds.
    pub(crate) fn exports(&self) -> usize {
        self.tables.lock().exports.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn any(_: &u32) -> Result<()> {
        Ok(())
    }

    #[test]
    fn one_import_is_shared_by_its_users_and_released_after_the_last() {
        let book = HandleBook::<u32>::new();
        assert!(matches!(book.claim(7, any), Ok(Claim::Import)));
        book.imported(7, Some(70));
        assert!(matches!(book.claim(7, any), Ok(Claim::Shared(70))));
        assert_eq!(book.imports(), 1);
        assert_eq!(book.unuse(7), None, "one user is left");
        assert_eq!(book.unuse(7), Some(70), "the last user gets the book's value to drop");
        assert_eq!(book.imports(), 1, "releasing until the handle is freed");
        book.released(7);
        assert_eq!(book.imports(), 0);
        assert!(matches!(book.claim(7, any), Ok(Claim::Import)), "imported afresh after the release");
    }

    #[test]
    fn a_failed_import_leaves_nothing_and_incompatible_users_are_refused() {
        let book = HandleBook::<u32>::new();
        assert!(matches!(book.claim(1, any), Ok(Claim::Import)));
        book.imported(1, None);
        assert_eq!(book.imports(), 0);
        assert!(matches!(book.claim(1, any), Ok(Claim::Import)));
        book.imported(1, Some(5));
        let refuse = |v: &u32| if *v == 5 { Err(Error::NotPermitted("another size".into())) } else { Ok(()) };
        assert!(matches!(book.claim(1, refuse), Err(Error::NotPermitted(_))));
        assert_eq!(book.unuse(1), Some(5), "the refused claim took no use");
    }

    #[test]
    fn the_exporting_process_may_not_import() {
        let book = HandleBook::<u32>::new();
        book.exported(9);
        assert_eq!(book.exports(), 1);
        assert!(matches!(book.claim(9, any), Err(Error::NotPermitted(_))));
        book.unexported(9);
        assert_eq!(book.exports(), 0);
        assert!(matches!(book.claim(9, any), Ok(Claim::Import)));
    }

    #[test]
    fn a_claim_waits_for_an_import_in_progress() {
        let book = std::sync::Arc::new(HandleBook::<u32>::new());
        assert!(matches!(book.claim(3, any), Ok(Claim::Import)));
        let waiter = {
            let book = std::sync::Arc::clone(&book);
            std::thread::spawn(move || match book.claim(3, any) {
                Ok(Claim::Shared(v)) => v,
                _ => panic!("the waiter should share the import"),
            })
        };
        book.imported(3, Some(30));
        assert_eq!(waiter.join().unwrap(), 30);
    }
}
