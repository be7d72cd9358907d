//! The soak: an owner with two threads churning a shared pool (variable-size allocations, trims) and a
//! KV pool (blocks, batch frees), while two worker processes attach and detach mirrors over and over,
//! checking the owner's standing data through descriptors and pinning its standing KV blocks. Every
//! byte written is checked before it is freed; the pools' counts must add up at the end; nothing may be
//! left behind. `ACLSHM_SOAK_SECS` sets how long it runs (5 s by default; longer on demand).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aclshm::{
    AllocDesc, KvBlock, KvConfig, KvDesc, KvMirror, KvPool, Mirror, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc,
    raw,
};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 << 10;

fn owner(rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let cfg = PoolConfig {
        chunk_bytes: 2 * MIB,
        reserve_bytes: 256 * MIB,
        trim_watermark: Some(8 * MIB),
        ..PoolConfig::default()
    };
    let pool = Arc::new(Pool::new(rt, 0, cfg.clone()).unwrap());
    let kv = Arc::new(
        KvPool::new(
            rt,
            0,
            KvConfig {
                block_bytes: BLOCK,
                pool: PoolConfig { trim_watermark: None, ..cfg },
                share: ShareConfig::default(),
            },
        )
        .unwrap(),
    );
    // Standing data the workers check.
    let standing: Vec<_> = (0..4).map(|i| pool.alloc(((i + 1) * 700) << 10).unwrap()).collect();
    for (i, a) in standing.iter().enumerate() {
        fill(rt, a.as_ptr(), a.len(), 7000 + i as u64);
    }
    let kv_standing = kv.alloc_many(6).unwrap();
    for b in &kv_standing {
        fill(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id()));
    }
    let share = pool.share(ShareConfig::default()).unwrap();
    say(format!("share {share}"));
    say(format!("descs {}", words(standing.iter().map(|a| pool.descriptor(a).unwrap().to_hex()))));
    say(format!("kv {}", kv.desc()));
    say(format!("blocks {}", words(&kv_standing)));
    let stop = Arc::new(AtomicBool::new(false));
    let (heap_ops, kv_ops, trims) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let heap = {
        let (rt, pool, stop, ops, trims) =
            (rt.clone(), Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&heap_ops), Arc::clone(&trims));
        std::thread::spawn(move || {
            raw::set_device(&rt, 0).unwrap();
            let mut rng = Rng::new(1);
            let mut live: Vec<(aclshm::Allocation, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if live.len() < 24 && !rng.next().is_multiple_of(3) {
                    let size = 4096 + rng.next() % (3 * MIB);
                    let a = pool.alloc(size).unwrap();
                    let s = rng.next();
                    fill(&rt, a.as_ptr(), a.len(), s);
                    live.push((a, s));
                } else if !live.is_empty() {
                    let (a, s) = live.swap_remove((rng.next() % live.len() as u64) as usize);
                    assert!(holds(&rt, a.as_ptr(), a.len(), s), "heap allocation {a:?} changed");
                    pool.free(a).unwrap();
                }
                if ops.fetch_add(1, Ordering::Relaxed) % 200 == 199 {
                    pool.trim().unwrap();
                    trims.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (a, s) in live {
                assert!(holds(&rt, a.as_ptr(), a.len(), s));
                pool.free(a).unwrap();
            }
        })
    };
    let blocks = {
        let (rt, kv, stop, ops) = (rt.clone(), Arc::clone(&kv), Arc::clone(&stop), Arc::clone(&kv_ops));
        std::thread::spawn(move || {
            raw::set_device(&rt, 0).unwrap();
            let mut rng = Rng::new(2);
            while !stop.load(Ordering::Relaxed) {
                let n = 1 + (rng.next() % 16) as usize;
                let bs = kv.alloc_many(n).unwrap();
                for b in &bs {
                    fill(&rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.generation()));
                }
                for b in &bs {
                    assert!(holds(&rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.generation())), "block {b}");
                }
                kv.free_many(&bs).unwrap();
                if ops.fetch_add(1, Ordering::Relaxed) % 50 == 49 {
                    kv.trim().unwrap();
                }
            }
        })
    };
    hear_word("stop");
    stop.store(true, Ordering::Relaxed);
    heap.join().unwrap();
    blocks.join().unwrap();
    for (i, a) in standing.iter().enumerate() {
        assert!(holds(rt, a.as_ptr(), a.len(), 7000 + i as u64), "standing allocation {i}");
    }
    for b in &kv_standing {
        assert!(holds(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id())), "standing block {b}");
    }
    // The counts add up: only the standing data is left.
    assert_eq!(pool.stats().live_allocations, standing.len() as u64);
    assert_eq!(kv.stats().allocated, kv_standing.len() as u32);
    for a in standing {
        pool.free(a).unwrap();
    }
    kv.free_many(&kv_standing).unwrap();
    hear_word("workers gone");
    assert!(kv.wait_unpinned(TIMEOUT).unwrap());
    assert_eq!(kv.stats().deferred, 0);
    pool.close().unwrap();
    kv.close().unwrap();
    say(format!(
        "ok {} {} {}",
        heap_ops.load(Ordering::Relaxed),
        kv_ops.load(Ordering::Relaxed),
        trims.load(Ordering::Relaxed)
    ));
}

fn worker(rt: &Runtime, device: i32) {
    raw::set_device(rt, device).unwrap();
    let share: ShareDesc = hear_as("share");
    let descs: Vec<AllocDesc> =
        hear_word("descs").split_whitespace().map(|d| AllocDesc::from_hex(d).unwrap()).collect();
    let kvd: KvDesc = hear_as("kv");
    let blocks: Vec<KvBlock> = hear_list("blocks");
    let stop = stop_flag();
    let mut cycles = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let m = Mirror::attach(rt, &share, device).unwrap();
        for (i, d) in descs.iter().enumerate() {
            assert!(holds(rt, m.ptr(d).unwrap(), d.len(), 7000 + i as u64), "standing allocation {i}");
        }
        m.close().unwrap();
        let k = KvMirror::attach(rt, &kvd, device).unwrap();
        let pinned = k.pinned(&blocks).unwrap();
        for (b, &p) in blocks.iter().zip(pinned.ptrs()) {
            assert!(holds(rt, p, BLOCK, u64::from(b.id())), "standing block {b}");
        }
        drop(pinned);
        k.close().unwrap();
        cycles += 1;
    }
    say(format!("ok {cycles}"));
}

#[test]
fn threads_and_processes_churn_a_shared_pool_and_every_check_holds() {
    by_role(test_name!(), |rt, role| owner_or_worker(rt, role, owner, worker), soak);
}

/// The parent: start the crew, let it churn, stop it, report.
fn soak(sc: Scenario) {
    let secs: u64 = std::env::var("ACLSHM_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut crew = sc.shared().crew("owner", &["worker0", "worker1"]);
    crew.play("> share, > descs, > kv, > blocks");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    crew.owner.send("stop");
    let mut cycles = 0u64;
    for w in crew.workers.iter_mut() {
        w.send("stop");
        cycles += w.expect("ok").parse::<u64>().unwrap();
    }
    for w in crew.workers.drain(..) {
        w.join();
    }
    crew.owner.send("workers gone");
    let ops = crew.owner.expect("ok");
    crew.join();
    let v: Vec<u64> = ops.split_whitespace().map(|x| x.parse().unwrap()).collect();
    println!(
        "soak: {:.1} s; owner: {} heap operations, {} KV batches, {} trims; workers: {cycles} attach, check, pin, \
         detach cycles; every check held, nothing left",
        start.elapsed().as_secs_f64(),
        v[0],
        v[1],
        v[2]
    );
    assert!(v[0] > 100 && v[1] > 10 && cycles > 4, "too little happened: {ops}, {cycles} cycles");
}
