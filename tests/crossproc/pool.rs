//! The pool on the simulator. Each test runs in a child process of its own, so that the simulator's
//! live-object counts (the oracle for "nothing leaked") and call counters are the test's alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use aclshm::pool::GRANULE;
use aclshm::raw;
use aclshm::{AclError, Allocation, Error, Pool, PoolConfig, Runtime};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;

/// A small pool: 2 MiB chunks, 64 MiB of address space.
fn small(rt: &Runtime) -> Pool {
    Pool::new(rt, 0, PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() }).unwrap()
}

/// [`small`] with per-thread magazines in front of its heap.
fn small_cached(rt: &Runtime) -> Pool {
    let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, thread_cache: true, ..PoolConfig::default() };
    Pool::new(rt, 0, cfg).unwrap()
}

/// Nothing of the simulator is held by this process (and nothing at all, if alone).
fn assert_nothing_held(rt: &Runtime) {
    let st = raw::sim_get_stats(rt).unwrap();
    assert_eq!(
        (st.localHandles, st.localMappings, st.localReservations, st.physObjects),
        (0, 0, 0, 0),
        "simulator objects left: {st:?}"
    );
}

/// Close `pool`; then nothing of the simulator may be held.
fn close_clean(rt: &Runtime, pool: &Pool) {
    pool.close().unwrap();
    assert_nothing_held(rt);
}

fn fill_alloc(rt: &Runtime, a: &Allocation, seed: u64) {
    fill(rt, a.as_ptr(), a.len(), seed);
}

fn verify(rt: &Runtime, a: &Allocation, seed: u64) {
    assert_eq!(read_dev(rt, a.as_ptr(), a.len() as usize).unwrap(), pattern(seed, a.len() as usize), "{a:?}");
}

#[test]
fn growth_spans_chunks_and_keeps_every_byte() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let pool = small(rt);
        let sizes = [100 << 10, 3 * MIB / 2, 3 * MIB, 5 * MIB, 512, 7 * MIB + 1, 64 << 10, 2 * MIB];
        let mut live: Vec<(Allocation, u64)> = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let a = pool.alloc(size).unwrap();
            assert!(a.len() >= size && a.len().is_multiple_of(GRANULE));
            fill_alloc(rt, &a, i as u64);
            live.push((a, i as u64));
        }
        let spanning = live.iter().filter(|(a, _)| a.offset() / (2 * MIB) != (a.offset() + a.len() - 1) / (2 * MIB));
        assert!(spanning.count() >= 3, "allocations larger than a chunk span chunks");
        for (a, seed) in &live {
            verify(rt, a, *seed);
        }
        // Free every other one, allocate into the holes, and check everything again.
        for (a, _) in live.iter().step_by(2) {
            pool.free(*a).unwrap();
        }
        let mut kept: Vec<(Allocation, u64)> = live.iter().skip(1).step_by(2).copied().collect();
        for i in 0..6u64 {
            let a = pool.alloc(((i + 1) * 700) << 10).unwrap();
            fill_alloc(rt, &a, 100 + i);
            kept.push((a, 100 + i));
        }
        for (a, seed) in &kept {
            verify(rt, a, *seed);
        }
        for (i, (a, _)) in kept.iter().enumerate() {
            for (b, _) in &kept[i + 1..] {
                assert!(a.offset() + a.len() <= b.offset() || b.offset() + b.len() <= a.offset(), "{a:?} {b:?}");
            }
        }
        let st = pool.stats();
        assert_eq!(st.live_allocations, kept.len() as u64);
        assert!(st.utilization > 0.0 && st.utilization <= 1.0);
        for (a, _) in kept {
            pool.free(a).unwrap();
        }
        close_clean(rt, &pool);
    });
}

#[test]
fn runtime_calls_per_thousand_allocations_equal_the_chunks_grown() {
    solo(test_name!(), |rt| {
        let pool =
            Pool::new(rt, 0, PoolConfig { chunk_bytes: 4 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() })
                .unwrap();
        let before = sim_calls(rt);
        let lib = |f: &str| rt.call_count(f).unwrap();
        let (lib_malloc, lib_map) = (lib("aclrtMallocPhysical"), lib("aclrtMapMem"));
        let live: Vec<Allocation> = (0..1000).map(|i| pool.alloc((8 << 10) + (i % 7) * 1024).unwrap()).collect();
        let grown = pool.stats().chunks_grown;
        assert!(grown >= 3, "{grown} chunks for ~11 MiB of 4 MiB chunks");
        let calls = calls_since(&before, &sim_calls(rt));
        assert_eq!(
            calls,
            vec![("aclrtMallocPhysical", grown), ("aclrtMapMem", grown)],
            "one allocation and one map per chunk, nothing else"
        );
        // The library's own counters say the same.
        assert_eq!((lib("aclrtMallocPhysical") - lib_malloc, lib("aclrtMapMem") - lib_map), (grown, grown));
        let before = sim_calls(rt);
        for a in live {
            pool.free(a).unwrap();
        }
        assert!(calls_since(&before, &sim_calls(rt)).is_empty(), "frees make no runtime call");
        close_clean(rt, &pool);
    });
}

#[test]
fn trim_regrow_watermark_and_reserve() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let pool = small(rt);
        let live: Vec<Allocation> = (0..5).map(|_| pool.alloc(2 * MIB).unwrap()).collect();
        assert_eq!(pool.stats().chunks, 5);
        for a in live {
            pool.free(a).unwrap();
        }
        assert_eq!(pool.stats().free_chunks, 5, "caching: freed chunks stay mapped");
        assert_eq!(pool.trim().unwrap(), 5);
        let st = pool.stats();
        assert_eq!((st.chunks, st.mapped_bytes, st.chunks_trimmed), (0, 0, 5));
        assert_eq!(raw::sim_get_stats(rt).unwrap().physObjects, 0, "given back to the device");
        // Regrowth refills the lowest addresses.
        let a = pool.alloc(MIB).unwrap();
        assert_eq!(a.offset(), 0);
        fill_alloc(rt, &a, 9);
        verify(rt, &a, 9);
        pool.free(a).unwrap();
        pool.close().unwrap();

        // With a watermark, frees trim down to it by themselves.
        let cfg = PoolConfig {
            chunk_bytes: 2 * MIB,
            reserve_bytes: 64 * MIB,
            trim_watermark: Some(4 * MIB),
            ..PoolConfig::default()
        };
        let pool = Pool::new(rt, 0, cfg).unwrap();
        let live: Vec<Allocation> = (0..6).map(|_| pool.alloc(2 * MIB).unwrap()).collect();
        for a in live {
            pool.free(a).unwrap();
        }
        let st = pool.stats();
        assert_eq!((st.chunks, st.free_chunks), (2, 2), "4 MiB of free chunks kept");
        pool.close().unwrap();

        // Reserve chunks are mapped up front and never trimmed.
        let cfg =
            PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, reserve_chunks: 3, ..PoolConfig::default() };
        let pool = Pool::new(rt, 0, cfg).unwrap();
        assert_eq!(pool.stats().chunks, 3);
        let before = sim_calls(rt);
        let a = pool.alloc(5 * MIB).unwrap();
        assert!(calls_since(&before, &sim_calls(rt)).is_empty(), "served from the reserve");
        pool.free(a).unwrap();
        let b = pool.alloc(8 * MIB).unwrap();
        pool.free(b).unwrap();
        assert_eq!(pool.trim().unwrap(), 1);
        assert_eq!(pool.stats().chunks, 3);
        close_clean(rt, &pool);
    });
}

#[test]
fn out_of_memory_at_the_device_capacity_and_still_usable() {
    solo_with(test_name!(), &[("ACLSHM_SIM_HBM_BYTES", "16M")], |rt| {
        raw::set_device(rt, 0).unwrap();
        let pool = small(rt);
        let mut live = Vec::new();
        let err = loop {
            match pool.alloc(MIB) {
                Ok(a) => live.push(a),
                Err(e) => break e,
            }
        };
        match &err {
            Error::OutOfMemory { requested, stats } => {
                assert_eq!(*requested, MIB);
                assert_eq!(stats.mapped_bytes, 16 * MIB, "the whole (simulated) device");
                assert_eq!(stats.live_allocations, 16);
            }
            other => panic!("expected OutOfMemory, got {other}"),
        }
        assert!(err.to_string().contains("out of device memory"), "{err}");
        assert_eq!(live.len(), 16);
        // Still usable: free one, allocate again.
        pool.free(live.pop().unwrap()).unwrap();
        live.push(pool.alloc(MIB).unwrap());
        for a in live.drain(..) {
            pool.free(a).unwrap();
        }
        // The heap's chunks are free but mapped; blocks need the device: the pool trims and retries.
        let class = pool.block_class(2 * MIB).unwrap();
        let blocks: Vec<_> = (0..8).map(|_| pool.alloc_block(class).unwrap()).collect();
        assert!(matches!(pool.alloc_block(class), Err(Error::OutOfMemory { .. })));
        for b in blocks {
            pool.free_block(b).unwrap();
        }
        // And the other way round: block chunks are given back for a heap allocation.
        let big = pool.alloc(12 * MIB).unwrap();
        assert!(matches!(pool.alloc(8 * MIB), Err(Error::OutOfMemory { .. })));
        pool.free(big).unwrap();
        close_clean(rt, &pool);
    });
}

/// The reserved range full (the device has room): an allocation that needs another chunk is OutOfMemory,
/// also with free but scattered chunks, and the pool stays usable. (The out-of-memory error once took the
/// pool's lock for its statistics while the claim still held it: a deadlock.)
#[test]
fn a_full_range_is_out_of_memory_not_a_hang() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let pool =
            Pool::new(rt, 0, PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 8 * MIB, ..PoolConfig::default() })
                .unwrap();
        let mut live: Vec<_> = (0..4).map(|_| pool.alloc(2 * MIB).unwrap()).collect();
        match pool.alloc(MIB) {
            Err(Error::OutOfMemory { requested, stats }) => {
                assert_eq!(requested, MIB);
                assert_eq!((stats.reserved_bytes, stats.mapped_bytes), (8 * MIB, 8 * MIB));
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        // Chunks 0 and 2 free again: 4 MiB free, but no two chunks side by side.
        let third = live.remove(2);
        let first = live.remove(0);
        pool.free(first).unwrap();
        pool.free(third).unwrap();
        assert!(matches!(pool.alloc(4 * MIB), Err(Error::OutOfMemory { .. })));
        // Still usable.
        live.push(pool.alloc(2 * MIB).unwrap());
        for a in live {
            pool.free(a).unwrap();
        }
        close_clean(rt, &pool);
    });
}

#[test]
fn a_fault_at_any_call_of_grow_trim_close_or_drop_leaks_nothing() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let fault = |f: &str, nth: u64| raw::sim_inject_fault(rt, f, nth, 1, AclError::DRV_INTERNAL_ERROR).unwrap();
        let failed_with_fault = |e: &Error| e.acl_code() == Some(AclError::DRV_INTERNAL_ERROR);
        let mut sites = 0;

        // Making a pool.
        for f in ["aclrtMemGetAllocationGranularity", "aclrtReserveMemAddress"] {
            fault(f, 1);
            let e =
                Pool::new(rt, 0, PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() })
                    .unwrap_err();
            assert!(failed_with_fault(&e), "{f}: {e}");
            assert_nothing_held(rt);
            sites += 1;
        }

        // Growing by three chunks at once (6 MiB, of which the first chunk's free 1 MiB tail is one): a
        // fault at each of the six calls rolls the whole grow back.
        for f in ["aclrtMallocPhysical", "aclrtMapMem"] {
            for nth in 1..=3 {
                let pool = small(rt);
                let keep = pool.alloc(MIB).unwrap();
                fill_alloc(rt, &keep, 1);
                fault(f, nth);
                let e = pool.alloc(6 * MIB).unwrap_err();
                raw::sim_clear_faults(rt).unwrap();
                assert!(failed_with_fault(&e), "{f}@{nth}: {e}");
                let st = pool.stats();
                assert_eq!((st.chunks, st.unknown_chunks), (1, 0), "{f}@{nth}: nothing half-mapped");
                assert_eq!(raw::sim_get_stats(rt).unwrap().physObjects, 1, "{f}@{nth}: rolled back");
                verify(rt, &keep, 1);
                let big = pool.alloc(6 * MIB).unwrap();
                assert_eq!(pool.stats().chunks, 4, "{f}@{nth}: the grow works once the fault is gone");
                pool.free(big).unwrap();
                pool.free(keep).unwrap();
                pool.close().unwrap();
                assert_nothing_held(rt);
                sites += 1;
            }
        }

        // Trimming: the chunk is kept aside as unknown, repair releases it.
        // A pool whose chunks (`bytes` of them) are free, and whose next call of `f` fails.
        let armed = |bytes: u64, f: &str| {
            let pool = small(rt);
            let a = pool.alloc(bytes).unwrap();
            pool.free(a).unwrap();
            fault(f, 1);
            pool
        };
        for f in ["aclrtUnmapMem", "aclrtFreePhysical"] {
            let pool = armed(3 * MIB, f);
            let e = pool.trim().unwrap_err();
            assert!(failed_with_fault(&e), "{f}: {e}");
            let st = pool.stats();
            assert_eq!((st.chunks, st.unknown_chunks), (0, 1), "{f}: one chunk trimmed, one kept aside");
            assert_eq!(pool.repair().unwrap(), 1);
            assert_eq!(pool.stats().unknown_chunks, 0);
            let b = pool.alloc(3 * MIB).unwrap();
            pool.free(b).unwrap();
            close_clean(rt, &pool);
            sites += 1;
        }

        // Closing: what fails is kept; closing again finishes.
        for f in ["aclrtUnmapMem", "aclrtFreePhysical", "aclrtReleaseMemAddress"] {
            let pool = armed(MIB, f);
            let e = pool.close().unwrap_err();
            assert!(matches!(&e, Error::Deferred(v) if v.iter().any(failed_with_fault)), "{f}: {e}");
            let b = pool.alloc(MIB).unwrap();
            pool.free(b).unwrap();
            pool.close().unwrap();
            assert!(matches!(pool.alloc(MIB), Err(Error::Closed)));
            assert_nothing_held(rt);
            sites += 1;
        }

        // Dropping: a failed unmap is retried when the pool's last records go, so nothing stays.
        for f in ["aclrtUnmapMem", "aclrtFreePhysical", "aclrtReleaseMemAddress"] {
            drop(armed(MIB, f));
            assert_nothing_held(rt);
            sites += 1;
        }
        raw::sim_clear_faults(rt).unwrap();
        assert_eq!(sites, 16, "call sites covered");
    });
}

#[test]
fn foreign_double_and_stale_frees_are_refused() {
    solo(test_name!(), |rt| {
        let p1 = small(rt);
        let p2 = small(rt);
        let a = p1.alloc(4096).unwrap();
        assert!(matches!(p2.free(a), Err(Error::WrongPool { .. })));
        p1.free(a).unwrap();
        assert!(matches!(p1.free(a), Err(Error::NotAllocated { .. })), "double free");
        // A stale copy of a block whose chunk was trimmed and reused.
        let c = p1.block_class(MIB).unwrap();
        assert_eq!(p1.blocks_per_chunk(c).unwrap(), 2);
        let b = p1.alloc_block(c).unwrap();
        p1.free_block(b).unwrap();
        assert!(matches!(p1.free_block(b), Err(Error::NotAllocated { .. })));
        assert_eq!(p1.trim().unwrap(), 2);
        let h = p1.alloc(4096).unwrap();
        let b2 = p1.alloc_block(c).unwrap();
        assert_eq!(b2.offset(), b.offset(), "the same place again, in a new chunk");
        assert!(matches!(p1.free_block(b), Err(Error::NotAllocated { .. })), "a stale block id");
        p1.free_block(b2).unwrap();
        p1.free(h).unwrap();
        assert!(matches!(p2.free_block(b2), Err(Error::WrongPool { .. })));
        // Batches: a block listed twice, next to itself or not, refuses the whole batch; any order is fine.
        let batch = p1.alloc_blocks(c, 4).unwrap();
        let [w, x, y, z] = batch[..] else { unreachable!() };
        for twice in [vec![w, w], vec![w, x, y, w], vec![z, y, x, y], vec![x, w, z, y, z]] {
            assert!(matches!(p1.free_blocks(&twice), Err(Error::NotAllocated { .. })), "{twice:?}");
            assert_eq!(p1.blocks_allocated(c).unwrap(), 4, "nothing freed by {twice:?}");
        }
        p1.free_blocks(&[z, x]).unwrap();
        p1.free_blocks(&[y, w]).unwrap();
        assert_eq!(p1.blocks_allocated(c).unwrap(), 0);
        // Bad arguments.
        assert!(matches!(p1.alloc(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(p1.alloc_aligned(64, 3), Err(Error::InvalidArgument(m)) if m.contains("not a power of two")));
        let too_big = p1.alloc_aligned(64, 4 * MIB);
        assert!(
            matches!(&too_big, Err(Error::InvalidArgument(m)) if m.contains("0x400000 is larger than the pool's chunks (0x200000")),
            "{too_big:?}"
        );
        assert!(matches!(p1.block_class(1000), Err(Error::Misaligned { .. })));
        assert!(matches!(p1.block_class(4 * MIB), Err(Error::InvalidArgument(_))));
        let bad = PoolConfig { chunk_bytes: 3 * MIB, ..PoolConfig::default() };
        assert!(matches!(Pool::new(rt, 0, bad), Err(Error::Misaligned { what: "chunk_bytes", .. })));
        let aligned = p1.alloc_aligned(4096, MIB).unwrap();
        assert_eq!(aligned.offset() % MIB, 0);
        p1.free(aligned).unwrap();
        p1.close().unwrap();
        p2.close().unwrap();
        assert_nothing_held(rt);
    });
}

/// A free of a small untagged allocation waits in the freeing thread's magazine, and that thread's next
/// allocation of the size takes it back: the same place, a fresh handle; the old handle, and a second free
/// of it while it waits, are refused; statistics count it as free (`cached_bytes`).
#[test]
fn a_freed_allocation_waits_in_its_threads_magazine_and_comes_back_with_a_fresh_handle() {
    solo(test_name!(), |rt| {
        // Without a thread cache (the default) a free goes straight to the heap.
        let plain = small(rt);
        let a = plain.alloc(60 << 10).unwrap();
        plain.free(a).unwrap();
        assert_eq!(plain.stats().cached_bytes, 0);
        plain.close().unwrap();
        let pool = small_cached(rt);
        let a = pool.alloc(60 << 10).unwrap();
        pool.free(a).unwrap();
        let st = pool.stats();
        assert_eq!((st.live_allocations, st.allocated_bytes, st.cached_bytes), (0, 0, 60 << 10));
        assert!(matches!(pool.free(a), Err(Error::NotAllocated { .. })), "freed twice while in the magazine");
        let b = pool.alloc(60 << 10).unwrap();
        assert_eq!(b.offset(), a.offset(), "the magazine's allocation");
        assert_ne!(a, b, "a fresh handle");
        assert!(matches!(pool.free(a), Err(Error::NotAllocated { .. })), "the old handle");
        let st = pool.stats();
        assert_eq!((st.live_allocations, st.allocated_bytes, st.cached_bytes), (1, 60 << 10, 0));
        // Another size and an aligned request do not take it.
        pool.free(b).unwrap();
        let c = pool.alloc(61 << 10).unwrap();
        assert_ne!(c.offset(), a.offset());
        let d = pool.alloc_aligned(60 << 10, 1 << 20).unwrap();
        assert_ne!(d.offset(), a.offset());
        // A tagged allocation may, but is freed to the heap (the heap keeps its tag).
        let e = pool.alloc_tagged(60 << 10, "weights").unwrap();
        assert_eq!(pool.stats().cached_bytes, 0);
        for x in [c, d, e] {
            pool.free(x).unwrap();
        }
        assert_eq!(pool.stats().cached_bytes, (61 << 10) + (60 << 10), "c and d in magazines, e in the heap");
        close_clean(rt, &pool);
    });
}

/// What idle threads' magazines hold is not lost: an allocation that needs it (the range is full) takes
/// it back rather than fail, a trim gives its chunks back, a sleep takes it before the memory goes, and
/// nothing comes out of a magazine while the pool sleeps.
#[test]
fn what_threads_magazines_hold_comes_back_to_whoever_needs_it() {
    solo(test_name!(), |rt| {
        let cfg =
            PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 8 * MIB, thread_cache: true, ..PoolConfig::default() };
        let pool = Pool::new(rt, 0, cfg).unwrap();
        let (to_idle, idle_hears) = std::sync::mpsc::channel::<()>();
        let (idle_says, from_idle) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pool = &pool;
            s.spawn(move || {
                raw::set_device(rt, 0).unwrap();
                // Two chunks' worth of 64 KiB allocations, freed into this thread's magazine.
                for () in idle_hears {
                    let held: Vec<_> = (0..64).map(|_| pool.alloc(64 << 10).unwrap()).collect();
                    for a in held {
                        pool.free(a).unwrap();
                    }
                    idle_says.send(()).unwrap();
                }
            });
            let fill = || {
                to_idle.send(()).unwrap();
                from_idle.recv().unwrap();
                assert_eq!(pool.stats().cached_bytes, 4 * MIB);
            };
            // The whole range at once: only with what the magazine holds.
            fill();
            let all = pool.alloc(8 * MIB).unwrap();
            assert_eq!(pool.stats().cached_bytes, 0);
            pool.free(all).unwrap();
            // A trim gives back every chunk, those the magazine held too.
            fill();
            let chunks = pool.stats().chunks;
            assert_eq!(pool.trim().unwrap(), chunks);
            assert_eq!((pool.stats().chunks, pool.stats().cached_bytes), (0, 0));
            // A sleep takes them first.
            fill();
            let kept = pool.alloc(4096).unwrap();
            pool.sleep(&aclshm::SleepConfig::default()).unwrap();
            assert_eq!(pool.stats().cached_bytes, 0);
            pool.free(kept).unwrap(); // freed while asleep: not into a magazine
            assert!(matches!(pool.alloc(4096), Err(Error::Asleep(_))));
            pool.wake(None).unwrap();
            let again = pool.alloc(4096).unwrap();
            pool.free(again).unwrap();
            assert_eq!(pool.alloc(4096).unwrap().offset(), again.offset(), "magazines open again after the wake");
            drop(to_idle);
        });
        close_clean(rt, &pool);
    });
}

/// Two threads freeing the same allocations at once: each is freed exactly once (into a magazine or the
/// heap), the other thread told it is not allocated, and the pool's accounting holds.
#[test]
fn two_threads_freeing_the_same_allocations_at_once_free_each_once() {
    solo(test_name!(), |rt| {
        let pool = small_cached(rt);
        let barrier = Barrier::new(2);
        for round in 0..50 {
            // More than a magazine holds (64 of 64 KiB), so some frees go to the heap.
            let held: Vec<Allocation> = (0..100).map(|_| pool.alloc(64 << 10).unwrap()).collect();
            let freed: usize = std::thread::scope(|s| {
                let racers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let mut mine = 0;
                            for a in &held {
                                match pool.free(*a) {
                                    Ok(()) => mine += 1,
                                    Err(Error::NotAllocated { .. }) => {}
                                    Err(e) => panic!("round {round}: {e}"),
                                }
                            }
                            mine
                        })
                    })
                    .collect();
                racers.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(freed, held.len(), "round {round}: every allocation freed exactly once");
            let st = pool.stats();
            assert_eq!((st.live_allocations, st.allocated_bytes), (0, 0), "round {round}");
        }
        // The heap agrees: the whole range fits again.
        let all = pool.alloc(64 * MIB).unwrap();
        pool.free(all).unwrap();
        close_clean(rt, &pool);
    });
}

#[test]
fn many_threads_allocating_freeing_and_trimming_keep_every_invariant() {
    // Sizes of 1 byte to 3 MiB, frees trimming past a watermark (no magazines).
    solo(test_name!(), |rt| threads_allocating_freeing_and_trimming(rt, Some(8 * MIB), false, |r| 1 + r % (3 * MIB)));
}

#[test]
fn many_threads_through_magazines_allocating_freeing_and_trimming_keep_every_invariant() {
    // Sizes that repeat (most kept in magazines), and some that do not; a thread trimming throughout
    // takes back what the magazines hold.
    solo(test_name!(), |rt| {
        threads_allocating_freeing_and_trimming(rt, None, true, |r| match r % 4 {
            0 => 4096,
            1 => 64 << 10,
            2 => 200 << 10,
            _ => 1 + (r >> 2) % (3 * MIB),
        })
    });
}

/// Four threads allocating and freeing (heap allocations of `size(random)` bytes, and blocks) while a
/// fifth trims: no two allocations overlap (both ends of each are tagged and checked before its free),
/// and at the end nothing is allocated and everything can be given back.
fn threads_allocating_freeing_and_trimming(
    rt: &Runtime,
    watermark: Option<u64>,
    thread_cache: bool,
    size: fn(u64) -> u64,
) {
    const THREADS: usize = 4;
    const ITERS: usize = 1500;
    {
        let pool = Arc::new(
            Pool::new(
                rt,
                0,
                PoolConfig {
                    chunk_bytes: 2 * MIB,
                    reserve_bytes: 256 * MIB,
                    trim_watermark: watermark,
                    thread_cache,
                    ..PoolConfig::default()
                },
            )
            .unwrap(),
        );
        let class = pool.block_class(512 << 10).unwrap();
        let start = Arc::new(Barrier::new(THREADS + 1));
        let stop = Arc::new(AtomicBool::new(false));
        // Chunks the trimmer gave back so far: the workers go on until it has (so the trims certainly
        // run among their allocations, however the threads are scheduled), or ten times their count.
        let trimmed = Arc::new(AtomicU64::new(0));
        let trimmer = {
            let (pool, stop, trimmed) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&trimmed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    trimmed.fetch_add(u64::from(pool.trim().unwrap()), Ordering::Relaxed);
                    std::thread::yield_now();
                }
                trimmed.load(Ordering::Relaxed)
            })
        };
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, rt, start, trimmed) =
                    (Arc::clone(&pool), rt.clone(), Arc::clone(&start), Arc::clone(&trimmed));
                std::thread::spawn(move || {
                    raw::set_device(&rt, 0).unwrap();
                    start.wait();
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                    let mut rnd = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let mut live: Vec<(Allocation, Vec<u8>)> = Vec::new();
                    let mut blocks = Vec::new();
                    for i in 0..10 * ITERS {
                        if i >= ITERS && (watermark.is_some() || trimmed.load(Ordering::Relaxed) > 0) {
                            break;
                        }
                        // Bounded live sets: at most 12 allocations and 32 blocks per thread.
                        let op = match rnd() % 4 {
                            0 if live.len() >= 12 => 1,
                            2 if blocks.len() >= 32 => 3,
                            op => op,
                        };
                        match op {
                            0 => {
                                let a = pool.alloc(size(rnd())).unwrap();
                                // Tag both ends: an overlap with another thread's allocation shows up.
                                let tag = pattern(t as u64 * 1_000_000 + i as u64, 64);
                                write_dev(&rt, a.as_ptr(), &tag).unwrap();
                                let end = a.as_ptr().cast::<u8>().wrapping_add(a.len() as usize - 64).cast();
                                write_dev(&rt, end, &tag).unwrap();
                                live.push((a, tag));
                            }
                            1 if !live.is_empty() => {
                                let (a, tag) = live.swap_remove(rnd() as usize % live.len());
                                assert_eq!(read_dev(&rt, a.as_ptr(), 64).unwrap(), tag);
                                let end = a.as_ptr().cast::<u8>().wrapping_add(a.len() as usize - 64).cast();
                                assert_eq!(read_dev(&rt, end, 64).unwrap(), tag);
                                pool.free(a).unwrap();
                            }
                            2 => blocks.push(pool.alloc_block(class).unwrap()),
                            3 if !blocks.is_empty() => {
                                pool.free_block(blocks.swap_remove(rnd() as usize % blocks.len())).unwrap()
                            }
                            _ => {}
                        }
                    }
                    for (a, tag) in live {
                        assert_eq!(read_dev(&rt, a.as_ptr(), 64).unwrap(), tag);
                        pool.free(a).unwrap();
                    }
                    for b in blocks {
                        pool.free_block(b).unwrap();
                    }
                })
            })
            .collect();
        start.wait();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let trimmed_by_thread = trimmer.join().unwrap();
        let st = pool.stats();
        assert_eq!((st.live_allocations, st.live_blocks, st.allocated_bytes), (0, 0, 0), "{st}");
        if watermark.is_some() {
            assert_eq!(st.free_chunks, st.chunks, "every mapped chunk is free");
        }
        assert!(
            st.chunks_grown > 10 && st.chunks_trimmed > 0,
            "{st}: grown and trimmed along the way ({trimmed_by_thread} by the trimmer)"
        );
        assert_eq!(u64::from(st.chunks), st.chunks_grown - st.chunks_trimmed);
        pool.trim().unwrap();
        let st = pool.stats();
        assert_eq!((st.chunks, st.cached_bytes), (0, 0), "{st}");
        assert_eq!(raw::sim_get_stats(rt).unwrap().physObjects, 0);
        Arc::into_inner(pool).unwrap().close().unwrap();
        assert_nothing_held(rt);
    }
}
