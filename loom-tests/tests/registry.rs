//! The import registry under concurrent import and release, on a fake device that flags a second live
//! import of one shareable handle, an import by its exporter, and a free under a mapping.
#![cfg(loom)]

use aclshm::Error;
use aclshm::registry::ImportRegistry;
use aclshm::vmm::{Mapping, PageSize, PhysicalMem, VaRange};
use aclshm_loom_tests::fake::{self, Event};
use aclshm_loom_tests::model;
use loom::thread;

const GRAN: usize = 2 << 20;
const SHAREABLE: u64 = 0xabc0;

fn imports_and_frees(ev: &[Event]) -> (Vec<usize>, usize) {
    let imported: Vec<usize> =
        ev.iter().filter_map(|e| if let Event::Import(_, k) = e { Some(*k) } else { None }).collect();
    let freed = ev.iter().filter(|e| matches!(e, Event::Free(k) if imported.contains(k))).count();
    (imported, freed)
}

/// (a) Three users import one handle at once and let it go: the runtime imports it once per overlap (never
/// twice at a time), and each import is freed exactly once, when its last user goes.
#[test]
fn concurrent_users_share_one_import_which_is_freed_once() {
    model(|| {
        let (rt, errors) = fake::fresh();
        let registry = ImportRegistry::global();
        let users: Vec<_> = (0..2)
            .map(|_| {
                let (rt, errors, registry) = (rt.clone(), errors.clone(), registry);
                thread::spawn(move || {
                    let i = registry.import(&rt, SHAREABLE, 0, GRAN, &errors).unwrap();
                    assert_eq!(i.shareable(), SHAREABLE);
                    drop(i);
                })
            })
            .collect();
        let mine = registry.import(&rt, SHAREABLE, 0, GRAN, &errors).unwrap();
        drop(mine);
        for u in users {
            u.join().unwrap();
        }
        fake::assert_no_violations();
        let ev = fake::events();
        let (imported, freed) = imports_and_frees(&ev);
        assert!((1..=3).contains(&imported.len()), "{ev:?}");
        assert_eq!(freed, imported.len(), "each import freed exactly once: {ev:?}");
        assert_eq!((fake::live_imports(), registry.imports()), (0, 0));
        assert!(errors.take().is_empty());
    });
}

/// (b) The last user goes while its memory is still mapped: the handle is freed only after the unmap, and
/// an importer arriving meanwhile waits for that free instead of importing a second time.
#[test]
fn an_import_waits_for_a_release_that_waits_for_an_unmap() {
    model(|| {
        let (rt, errors) = fake::fresh();
        let registry = ImportRegistry::global();
        let range = VaRange::reserve(&rt, GRAN, &errors).unwrap();
        let first = registry.import(&rt, SHAREABLE, 0, GRAN, &errors).unwrap();
        let mapping = Mapping::map(&range, 0, first.phys()).unwrap();
        let unmapper = thread::spawn(move || {
            drop(first);
            drop(mapping);
        });
        let (rt2, errors2, registry2) = (rt.clone(), errors.clone(), registry);
        let importer = thread::spawn(move || {
            let again = registry2.import(&rt2, SHAREABLE, 0, GRAN, &errors2).unwrap();
            drop(again);
        });
        unmapper.join().unwrap();
        importer.join().unwrap();
        drop(range);
        fake::assert_no_violations();
        let ev = fake::events();
        let (imported, freed) = imports_and_frees(&ev);
        assert_eq!(freed, imported.len(), "{ev:?}");
        let unmap = ev.iter().position(|e| matches!(e, Event::Unmap(..))).unwrap();
        let first_free = ev.iter().position(|e| matches!(e, Event::Free(k) if *k == imported[0])).unwrap();
        assert!(unmap < first_free, "freed under its mapping: {ev:?}");
        assert_eq!((fake::live_imports(), registry.imports()), (0, 0));
    });
}

/// (c) Importing what this process exported is refused before the runtime is asked, while the export
/// lives; once the exporter freed it, the registry no longer claims it.
#[test]
fn the_exporting_process_never_imports_its_own_export() {
    model(|| {
        let (rt, errors) = fake::fresh();
        let registry = ImportRegistry::global();
        let phys = PhysicalMem::allocate(&rt, 0, GRAN, PageSize::Huge2M, &errors).unwrap();
        let s = phys.export(0).unwrap();
        assert_eq!(phys.export(0).unwrap(), s, "exported once, cached");
        assert_eq!(registry.exports(), 1);
        let freer = thread::spawn(move || drop(phys));
        let tried = registry.import(&rt, s, 0, GRAN, &errors);
        freer.join().unwrap();
        let ev = fake::events();
        match tried {
            Err(Error::NotPermitted(_)) => {
                assert!(!ev.iter().any(|e| matches!(e, Event::Import(..))), "the runtime was asked: {ev:?}");
            }
            // Only possible once the export was freed (the runtime itself would refuse a freed handle).
            Ok(i) => {
                let freed = ev.iter().position(|e| matches!(e, Event::Free(_))).unwrap();
                let imported = ev.iter().position(|e| matches!(e, Event::Import(..))).unwrap();
                assert!(freed < imported, "{ev:?}");
                drop(i);
            }
            Err(e) => panic!("{e}"),
        }
        fake::assert_no_violations();
        assert_eq!(registry.exports(), 0);
    });
}
