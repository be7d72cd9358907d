//! The pool's teardown and trimming under concurrency, on a fake device that checks the rules.
#![cfg(loom)]

use aclshm::vmm::{Mapping, PageSize, PhysicalMem, VaRange};
use aclshm::{Pool, PoolConfig};
use aclshm_loom_tests::fake::{self, Event};
use aclshm_loom_tests::model;
use loom::sync::Arc;
use loom::thread;

const MIB: usize = 1 << 20;

/// A pool of 2 MiB chunks on a fresh device, for threads to share.
fn shared_pool() -> Arc<Pool> {
    let (rt, _) = fake::fresh();
    Arc::new(
        Pool::new(&rt, 0, PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 8 << 20, ..PoolConfig::default() })
            .unwrap(),
    )
}

/// Close the pool once every thread let go of it; no rule may have been broken.
fn close(pool: Arc<Pool>) {
    Arc::try_unwrap(pool).expect("the last reference").close().unwrap();
    fake::assert_no_violations();
}

/// (a) Physical memory mapped twice, its mappings dropped by two threads while a third drops the owner's
/// reference (as a trim does): freed exactly once, after both unmaps; the range released after both too.
#[test]
fn physical_memory_is_freed_once_after_its_last_unmap() {
    model(|| {
        let (rt, errors) = fake::fresh();
        let range = VaRange::reserve(&rt, 4 * MIB, &errors).unwrap();
        let phys = PhysicalMem::allocate(&rt, 0, 2 * MIB, PageSize::Huge2M, &errors).unwrap();
        let m1 = Mapping::map(&range, 0, &phys).unwrap();
        let m2 = Mapping::map(&range, 2 * MIB, &phys).unwrap();
        let h = phys.as_raw() as usize;
        let t1 = thread::spawn(move || drop(m1));
        let t2 = thread::spawn(move || drop(m2));
        drop(phys);
        drop(range);
        t1.join().unwrap();
        t2.join().unwrap();
        fake::assert_no_violations();
        let ev = fake::events();
        let frees = ev.iter().filter(|e| matches!(e, Event::Free(_))).count();
        assert_eq!(frees, 1, "{ev:?}");
        let free = ev.iter().position(|x| *x == Event::Free(h)).unwrap();
        let releases = fake::positions(&ev, |e| matches!(e, Event::Release(_)));
        assert_eq!(releases.len(), 1, "{ev:?}");
        let unmaps = fake::positions(&ev, |e| matches!(e, Event::Unmap(..)));
        assert_eq!(unmaps.len(), 2);
        assert!(unmaps.iter().all(|&u| u < free && u < releases[0]), "free and release after both unmaps: {ev:?}");
        assert!(errors.take().is_empty());
    });
}

/// (b) A trim racing an allocation from the chunk it would retire: the allocation never lands in memory
/// being unmapped (the fake device flags an unmap under a live allocation), and both finish.
#[test]
fn no_allocation_lands_in_a_chunk_being_trimmed() {
    model(|| {
        let pool = shared_pool();
        let warm = pool.alloc(4096).unwrap();
        pool.free(warm).unwrap();
        let p = Arc::clone(&pool);
        let allocator = thread::spawn(move || {
            let a = p.alloc(4096).unwrap();
            let addr = a.as_ptr() as usize;
            fake::live(addr, a.len() as usize);
            assert!(fake::is_mapped(addr, a.len() as usize), "allocated from unmapped memory");
            // Hold it across a scheduling point: a trim that unmaps under it now is flagged by the device.
            thread::yield_now();
            assert!(fake::is_mapped(addr, a.len() as usize), "unmapped while allocated");
            fake::dead(addr, a.len() as usize);
            p.free(a).unwrap();
        });
        let trimmed = pool.trim().unwrap();
        allocator.join().unwrap();
        assert!(trimmed <= 1);
        fake::assert_no_violations();
        let st = pool.stats();
        assert_eq!((st.live_allocations, st.allocated_bytes), (0, 0));
        close(pool);
    });
}

/// (c) Blocks freed while a trim runs and another thread allocates: no block is lost (every one can be
/// allocated again) and none is handed out twice.
#[test]
fn block_frees_racing_a_trim_lose_nothing() {
    model(|| {
        let pool = shared_pool();
        let class = pool.block_class(MIB as u64).unwrap();
        let b0 = pool.alloc_block(class).unwrap();
        let b1 = pool.alloc_block(class).unwrap();
        let p = Arc::clone(&pool);
        let freer = thread::spawn(move || {
            p.free_block(b0).unwrap();
            p.free_block(b1).unwrap();
        });
        let p = Arc::clone(&pool);
        let allocator = thread::spawn(move || {
            let b = p.alloc_block(class).unwrap();
            fake::live(b.as_ptr() as usize, b.len() as usize);
            assert!(fake::is_mapped(b.as_ptr() as usize, b.len() as usize));
            b
        });
        pool.trim().unwrap();
        freer.join().unwrap();
        let held = allocator.join().unwrap();
        // Fill the pool's blocks again: all distinct, all mapped, the one held among none of them.
        let more: Vec<_> = (0..3).map(|_| pool.alloc_block(class).unwrap()).collect();
        let mut addrs: Vec<usize> = more.iter().chain([&held]).map(|b| b.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 4, "a block was handed out twice");
        assert!(more.iter().all(|b| fake::is_mapped(b.as_ptr() as usize, b.len() as usize)));
        assert_eq!(pool.stats().live_blocks, 4, "no block lost");
        fake::dead(held.as_ptr() as usize, held.len() as usize);
        for b in more.into_iter().chain([held]) {
            pool.free_block(b).unwrap();
        }
        fake::assert_no_violations();
        close(pool);
    });
}

/// (d) A close racing a trim of the pool's free chunk: the close waits for the trim under way (it used
/// to refuse, having already shut the pool's caches), every chunk is freed exactly once, and the trim
/// either gave the chunk back or found the pool closing.
#[test]
fn a_close_racing_a_trim_waits_for_it() {
    model(|| {
        let pool = shared_pool();
        let warm = pool.alloc(4096).unwrap();
        pool.free(warm).unwrap();
        let p = Arc::clone(&pool);
        let trimmer = thread::spawn(move || match p.trim() {
            Ok(n) => assert!(n <= 1),
            Err(e) => assert!(matches!(e, aclshm::Error::Closed), "{e}"),
        });
        pool.close().unwrap();
        trimmer.join().unwrap();
        assert!(matches!(pool.alloc(4096), Err(aclshm::Error::Closed)));
        fake::assert_no_violations();
    });
}

/// (e) A close racing an allocation that grows the pool: the grow either finishes first (and the close
/// frees its chunk) or finds the pool closing and undoes its claim; the close never waits for a claim
/// nobody will finish, and every chunk is freed exactly once.
#[test]
fn a_close_racing_a_grow_frees_everything_once() {
    model(|| {
        let pool = shared_pool();
        let p = Arc::clone(&pool);
        let allocator = thread::spawn(move || match p.alloc(4096) {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, aclshm::Error::Closed), "{e}"),
        });
        pool.close().unwrap();
        allocator.join().unwrap();
        fake::assert_no_violations();
    });
}
