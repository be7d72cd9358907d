//! Sleep and wake: a pool gives its physical memory back and takes it again at the same addresses,
//! keeping what its tags say; mirrors in other processes follow.

use std::time::Duration;

use aclshm::raw;
use aclshm::sys::aclrtMemAttr;
use aclshm::{
    AllocDesc, Error, KvBlock, KvConfig, KvMirror, KvPool, Mirror, Pool, PoolConfig, ShareConfig, ShareDesc,
    SleepConfig,
};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;

fn offload(tags: &[&str]) -> SleepConfig {
    SleepConfig { offload_tags: tags.iter().map(|t| t.to_string()).collect(), ..SleepConfig::default() }
}

/// One process: weights kept, the rest discarded, free chunks given back; allocation refused while
/// asleep, frees allowed; addresses unchanged; every kept byte back after the wake; a partial wake by tag.
#[test]
fn a_pool_sleeps_and_wakes_keeping_what_its_tags_say() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() };
        let pool = Pool::new(rt, 0, cfg).unwrap();
        let weights = pool.alloc_tagged(5 * MIB, "weights").unwrap();
        let scratch = pool.alloc(3 * MIB).unwrap();
        let kv = pool.block_class(MIB).unwrap();
        pool.tag_block_class(kv, "kv_cache").unwrap();
        let blocks = pool.alloc_blocks(kv, 3).unwrap();
        // A chunk that ends up free: given back by the sleep rather than put to sleep.
        let gone = pool.alloc(2 * MIB).unwrap();
        fill(rt, weights.as_ptr(), weights.len(), 1);
        fill(rt, scratch.as_ptr(), scratch.len(), 2);
        for (i, b) in blocks.iter().enumerate() {
            fill(rt, b.as_ptr(), b.len(), 10 + i as u64);
        }
        pool.free(gone).unwrap();
        let before = pool.stats();
        let mapped = before.mapped_bytes;
        let free_before = free_bytes(rt, 0);

        let report = pool.sleep(&offload(&["weights", "kv_cache"])).unwrap();
        assert!(pool.is_asleep());
        let st = pool.stats();
        assert_eq!(st.mapped_bytes, 0, "{st}");
        assert_eq!(report.released_bytes, mapped);
        assert_eq!(report.kept_bytes, weights.len() + 3 * MIB, "weights and the KV blocks");
        assert_eq!(st.host_bytes, report.kept_bytes);
        assert_eq!(st.sleeping_chunks, report.slept_chunks);
        assert!(report.trimmed_chunks >= 1, "the free chunk went for good: {report:?}");
        assert_eq!(free_bytes(rt, 0), free_before + mapped, "the device got every mapped byte back");
        assert!(matches!(pool.alloc(MIB), Err(Error::Asleep(_))));
        assert!(matches!(pool.alloc_block(kv), Err(Error::Asleep(_))));
        assert!(matches!(pool.sleep(&SleepConfig::default()), Err(Error::Asleep(_))));
        assert_eq!(pool.trim().unwrap(), 0, "nothing to trim while asleep");
        // A free needs no runtime call: fine while asleep.
        pool.free(scratch).unwrap();

        // Wake the KV chunks only: the weights' chunks keep sleeping, the pool too.
        pool.wake(Some(&["kv_cache"])).unwrap();
        assert!(pool.is_asleep());
        for (i, b) in blocks.iter().enumerate() {
            assert!(holds(rt, b.as_ptr(), b.len(), 10 + i as u64), "block {i} kept");
        }
        let chunks = u64::from(pool.stats().sleeping_chunks);
        assert_eq!(chunks, 4, "the weights' three chunks and the scratch's last one still sleep");
        let calls = sim_calls(rt);
        pool.wake(None).unwrap();
        let woken = calls_since(&calls, &sim_calls(rt));
        assert!(!pool.is_asleep());
        let st = pool.stats();
        assert_eq!(st.host_bytes, 0, "the host copy is freed once everything is awake");
        assert_eq!(st.sleeping_chunks, 0);
        assert!(
            woken.contains(&("aclrtMallocPhysical", chunks)) && woken.contains(&("aclrtMapMem", chunks)),
            "one allocation and one mapping per sleeping chunk: {woken:?}"
        );
        assert!(woken.contains(&("aclrtMemcpyBatch", 1)), "the weights come back in one batch: {woken:?}");
        assert!(holds(rt, weights.as_ptr(), weights.len(), 1), "every kept byte, at the same address");
        // Allocating works again.
        let again = pool.alloc(MIB).unwrap();
        pool.free(again).unwrap();
        pool.free(weights).unwrap();
        pool.free_blocks(&blocks).unwrap();
        pool.close().unwrap();
    });
}

/// The scenario: an owner with two workers on two devices sleeps (weights offloaded, KV
/// discarded); the device gets the pool's mapped bytes back; it wakes; the workers read the weights
/// through the pointers and descriptors they had, and every byte verifies. One export per chunk in the
/// owner, one import per chunk in each worker, per wake.
#[test]
fn a_shared_pool_sleeps_and_wakes_and_its_workers_follow() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                raw::set_device(rt, 0).unwrap();
                let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() };
                let pool = Pool::new(rt, 0, cfg).unwrap();
                let weights = pool.alloc_tagged(7 * MIB, "weights").unwrap();
                fill(rt, weights.as_ptr(), weights.len(), 77);
                let kv = pool.block_class(MIB).unwrap();
                pool.tag_block_class(kv, "kv_cache").unwrap();
                let blocks = pool.alloc_blocks(kv, 4).unwrap();
                for b in &blocks {
                    fill(rt, b.as_ptr(), b.len(), 5);
                }
                let share = pool.share(ShareConfig::default()).unwrap();
                let d = pool.descriptor(&weights).unwrap();
                say(format!("share {share} {}", d.to_hex()));
                hear_word("attached");
                hear_word("attached");
                let mapped = pool.mapped_bytes();
                let chunks = mapped / (2 * MIB);
                let free_before = free_bytes(rt, 0);
                pool.sleep(&offload(&["weights"])).unwrap();
                // Every worker released its imports before the owner freed: the memory is really back.
                assert_eq!(free_bytes(rt, 0), free_before + mapped, "the device got the pool's mapped bytes back");
                assert_eq!(pool.share_stats().unwrap().retired_pending, 0);
                say("asleep");
                hear_word("checked");
                hear_word("checked");
                let calls = sim_calls(rt);
                pool.wake(None).unwrap();
                let woken = calls_since(&calls, &sim_calls(rt));
                let exports = woken.iter().find(|c| c.0 == "aclrtMemExportToShareableHandle").map_or(0, |c| c.1);
                assert_eq!(exports, chunks, "one export per chunk per wake: {woken:?}");
                assert!(holds(rt, weights.as_ptr(), weights.len(), 77));
                say("awake");
                hear_word("verified");
                hear_word("verified");
                pool.free(weights).unwrap();
                pool.free_blocks(&blocks).unwrap();
                pool.close().unwrap();
            }
            "w0" | "w1" => {
                let device = if role == "w0" { 0 } else { 1 };
                raw::set_device(rt, device).unwrap();
                let line = hear_word("share");
                let (share, d) = line.split_once(' ').unwrap();
                let share: ShareDesc = share.parse().unwrap();
                let d = AllocDesc::from_hex(d).unwrap();
                let m = Mirror::attach(rt, &share, device).unwrap();
                let p = m.ptr(&d).unwrap();
                assert!(holds(rt, p, d.len(), 77));
                let chunks = m.stats().chunks as u64;
                say("attached");
                hear_word("asleep");
                // The sleep waited for this mirror: its chunks are unmapped already.
                assert_eq!(m.stats().chunks, 0, "asleep: nothing mapped here");
                assert!(matches!(m.ptr(&d), Err(Error::Asleep(_))), "a typed error while asleep");
                assert!(read_dev(rt, p, 8).is_err(), "the address is not mapped while asleep");
                let calls = sim_calls(rt);
                say("checked");
                hear_word("awake");
                if role == "w0" {
                    m.sync().unwrap();
                }
                // (w1 does not sync: its lookup, which saw the chunks asleep, must find them awake again.)
                assert_eq!(m.ptr(&d).unwrap(), p, "the same address");
                let imports = calls_since(&calls, &sim_calls(rt))
                    .iter()
                    .find(|c| c.0 == "aclrtMemImportFromShareableHandle")
                    .map_or(0, |c| c.1);
                assert_eq!(imports, chunks, "one import per chunk per wake");
                assert!(holds(rt, p, d.len(), 77), "every weight byte, through the old pointer");
                m.close().unwrap();
                say("verified");
            }
            _ => unreachable!(),
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let mut w0 = sc.spawn("w0");
            let mut w1 = sc.spawn("w1");
            let share = owner.expect("share");
            w0.send(format!("share {share}"));
            w1.send(format!("share {share}"));
            w0.relay("attached", &mut owner);
            w1.relay("attached", &mut owner);
            let a = owner.expect("asleep");
            w0.send(format!("asleep {a}"));
            w1.send(format!("asleep {a}"));
            w0.relay("checked", &mut owner);
            w1.relay("checked", &mut owner);
            let a = owner.expect("awake");
            w0.send(format!("awake {a}"));
            w1.send(format!("awake {a}"));
            w0.relay("verified", &mut owner);
            w1.relay("verified", &mut owner);
            owner.join();
            w0.join();
            w1.join();
            sc.finish();
        },
    );
}

/// A shared pool's sleep returns only once the device has every byte back, whoever frees it: the last
/// acknowledgement reaches the owner's rendezvous thread, which frees the chunks it releases (a sleep
/// that saw nothing left waiting must still wait for those frees); chunks with nothing allocated are given
/// back for good, which the owner may free as soon as mirrors imported them, while the mirror still maps
/// them; so are chunks a trim gave back just before. Many chunks make the frees long enough for a sleep
/// that did not wait to be seen (it was, once in a few hundred runs of the test above on a loaded
/// machine).
#[test]
fn a_shared_sleep_returns_with_every_chunk_freed() {
    const KEPT: u64 = 40;
    const SPARE: u64 = 8;
    const ROUNDS: usize = 8;
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                raw::set_device(rt, 0).unwrap();
                let cfg = PoolConfig {
                    chunk_bytes: 2 * MIB,
                    reserve_bytes: 2 * (KEPT + SPARE) * MIB,
                    ..PoolConfig::default()
                };
                let pool = Pool::new(rt, 0, cfg).unwrap();
                let a = pool.alloc(2 * KEPT * MIB).unwrap();
                let share = pool.share(ShareConfig::default()).unwrap();
                say(format!("share {share}"));
                hear_word("attached");
                for round in 0..ROUNDS {
                    // Chunks that end up free: given back by a trim just before the sleep (odd rounds) or
                    // by the sleep itself (even rounds).
                    let b = pool.alloc(2 * SPARE * MIB).unwrap();
                    pool.free(b).unwrap();
                    let mapped = pool.mapped_bytes();
                    assert_eq!(mapped, 2 * (KEPT + SPARE) * MIB);
                    let free_before = free_bytes(rt, 0);
                    if round % 2 == 1 {
                        assert_eq!(pool.trim().unwrap() as u64, SPARE);
                    }
                    let report = pool.sleep(&SleepConfig::default()).unwrap();
                    assert_eq!(report.slept_chunks as u64, KEPT);
                    assert_eq!(
                        free_bytes(rt, 0),
                        free_before + mapped,
                        "round {round}: the sleep returned before the device had the pool's bytes back"
                    );
                    assert_eq!(pool.share_stats().unwrap().retired_pending, 0);
                    pool.wake(None).unwrap();
                }
                // Last, nothing allocated: every chunk is given back for good, and the owner may free its
                // handles at once (the mirror imported them long ago); the sleep still returns only once
                // the mirror let go of them too (`share.rs` holds a mirror back to show it waits).
                pool.free(a).unwrap();
                let mapped = pool.mapped_bytes();
                let free_before = free_bytes(rt, 0);
                let report = pool.sleep(&SleepConfig::default()).unwrap();
                assert_eq!((report.slept_chunks, report.trimmed_chunks as u64), (0, mapped / (2 * MIB)));
                assert_eq!(free_bytes(rt, 0), free_before + mapped, "every chunk given back, none left mapped");
                pool.wake(None).unwrap();
                say("slept");
                hear_word("closed");
                pool.close().unwrap();
            }
            "worker" => {
                raw::set_device(rt, 0).unwrap();
                let share: ShareDesc = hear_word("share").parse().unwrap();
                // Its follower thread keeps up with every growth, trim, sleep and wake on its own.
                let m = Mirror::attach(rt, &share, 0).unwrap();
                assert_eq!(m.stats().chunks as u64, KEPT);
                say("attached");
                hear_word("slept");
                m.close().unwrap();
                say("closed");
            }
            _ => unreachable!(),
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let mut worker = sc.spawn("worker");
            let share = owner.expect("share");
            worker.send(format!("share {share}"));
            worker.relay("attached", &mut owner);
            owner.relay("slept", &mut worker);
            worker.relay("closed", &mut owner);
            owner.join();
            worker.join();
            sc.finish();
        },
    );
}

/// Grows and trims under way in another thread when a sleep begins finish before it plans: no chunk
/// stays mapped through the sleep (one a grow was still mapping), none reaches the device after the sleep
/// returned (one a trim was still giving back); the other thread's allocations are refused while asleep,
/// never wrong. Then a close with the same thread still busy waits for what is under way and tears
/// everything down (it used to refuse, having already shut the pool's caches).
#[test]
fn grows_and_trims_under_way_finish_before_a_sleep_or_a_close() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let total = rt.on_device(0, || Ok(raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM)?.1 as u64)).unwrap();
        let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() };
        let pool = std::sync::Arc::new(Pool::new(rt, 0, cfg).unwrap());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let busy = {
            let (pool, done, rt) = (std::sync::Arc::clone(&pool), std::sync::Arc::clone(&done), rt.clone());
            std::thread::spawn(move || {
                raw::set_device(&rt, 0).unwrap();
                loop {
                    // Each allocation grows the pool by 3 chunks, each trim gives them back.
                    match pool.alloc(5 * MIB) {
                        Ok(a) => pool.free(a).unwrap(),
                        Err(Error::Asleep(_)) => {}
                        Err(Error::Closed) => return,
                        Err(e) => panic!("allocation: {e}"),
                    }
                    match pool.trim() {
                        Ok(_) => {}
                        Err(Error::Closed) => return,
                        Err(e) => panic!("trim: {e}"),
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let progress = |round: usize| {
            // Let the other thread go round at least once more, so that it is busy as the next step begins.
            let at = done.load(std::sync::atomic::Ordering::Relaxed);
            while done.load(std::sync::atomic::Ordering::Relaxed) == at {
                assert!(!busy.is_finished(), "round {round}: the other thread ended");
                std::thread::yield_now();
            }
        };
        for round in 0..200 {
            progress(round);
            match pool.sleep(&SleepConfig::default()) {
                Ok(_) => {}
                Err(e) => panic!("round {round}: sleep: {e}"),
            }
            assert_eq!(pool.mapped_bytes(), 0, "round {round}: a chunk stayed mapped through the sleep");
            assert_eq!(free_bytes(rt, 0), total, "round {round}: the device is short after the sleep");
            pool.wake(None).unwrap();
        }
        // The close, with the other thread still allocating and trimming.
        progress(200);
        pool.close().unwrap();
        assert_eq!(free_bytes(rt, 0), total, "the close gave everything back");
        busy.join().unwrap();
        assert!(matches!(pool.alloc(MIB), Err(Error::Closed)));
    });
}

/// A worker killed while its pool sleeps holds nothing up: the owner's sleep finishes (the dead worker
/// is forgotten), the memory is freed, the wake works; a worker that attaches while the pool sleeps maps
/// the chunks at the wake.
#[test]
fn a_killed_worker_holds_up_no_sleep_and_a_late_one_follows_the_wake() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                raw::set_device(rt, 0).unwrap();
                let kv = KvPool::new(
                    rt,
                    0,
                    KvConfig {
                        block_bytes: MIB,
                        pool: PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 32 * MIB, ..PoolConfig::default() },
                        share: ShareConfig::default(),
                    },
                )
                .unwrap();
                let blocks = kv.alloc_many(6).unwrap();
                for b in &blocks {
                    fill(rt, kv.ptr(b).unwrap(), MIB, u64::from(b.id()) + 1);
                }
                say(format!("kv {} {}", kv.desc(), words(&blocks)));
                hear_word("attached");
                hear_word("killed");
                let mapped = kv.pool().mapped_bytes();
                let free_before = free_bytes(rt, 0);
                // Keep the KV contents this time.
                kv.sleep(false).unwrap();
                assert_eq!(free_bytes(rt, 0), free_before + mapped);
                assert!(matches!(kv.alloc(), Err(Error::Asleep(_))));
                say("asleep");
                hear_word("attached");
                kv.wake().unwrap();
                for b in &blocks {
                    assert!(holds(rt, kv.ptr(b).unwrap(), MIB, u64::from(b.id()) + 1), "block {} kept", b.id());
                }
                say("awake");
                hear_word("verified");
                kv.free_many(&blocks).unwrap();
                kv.close().unwrap();
            }
            "doomed" | "late" => {
                raw::set_device(rt, 1).unwrap();
                let line = hear_word("kv");
                let mut parts = line.split(' ');
                let desc = parts.next().unwrap().parse().unwrap();
                let blocks: Vec<KvBlock> = parts.map(|b| b.parse().unwrap()).collect();
                if role == "late" {
                    hear_word("asleep");
                }
                let m = KvMirror::attach(rt, &desc, 1).unwrap();
                if role == "doomed" {
                    let p = m.ptr(&blocks[0]).unwrap();
                    assert!(holds(rt, p, MIB, u64::from(blocks[0].id()) + 1));
                    say("attached");
                    // Killed by the parent here, holding its imports.
                    std::thread::sleep(Duration::from_secs(60));
                    unreachable!("killed");
                }
                assert!(matches!(m.ptr(&blocks[0]), Err(Error::Asleep(_))), "attached while asleep");
                say("attached");
                hear_word("awake");
                for b in &blocks {
                    assert!(holds(rt, m.ptr(b).unwrap(), MIB, u64::from(b.id()) + 1), "block {}", b.id());
                }
                m.close().unwrap();
                say("verified");
            }
            _ => unreachable!(),
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let mut doomed = sc.spawn("doomed");
            let kv = owner.expect("kv");
            doomed.send(format!("kv {kv}"));
            doomed.relay("attached", &mut owner);
            doomed.kill();
            owner.send("killed");
            let mut late = sc.spawn("late");
            late.send(format!("kv {kv}"));
            owner.relay("asleep", &mut late);
            late.relay("attached", &mut owner);
            owner.relay("awake", &mut late);
            late.relay("verified", &mut owner);
            owner.join();
            late.join();
            doomed.join();
            sc.finish();
        },
    );
}
