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

fn fill(rt: &Runtime, p: *mut std::ffi::c_void, seed: u64, len: u64) {
    write_dev(rt, p, &pattern(seed, len as usize)).unwrap();
}

fn holds(rt: &Runtime, p: *mut std::ffi::c_void, seed: u64, len: u64) -> bool {
    read_dev(rt, p, len as usize).unwrap() == pattern(seed, len as usize)
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn owner() {
    let rt = runtime();
    raw::set_device(&rt, 0).unwrap();
    let cfg = PoolConfig {
        chunk_bytes: 2 * MIB,
        reserve_bytes: 256 * MIB,
        trim_watermark: Some(8 * MIB),
        ..PoolConfig::default()
    };
    let pool = Arc::new(Pool::new(&rt, 0, cfg.clone()).unwrap());
    let kv = Arc::new(
        KvPool::new(
            &rt,
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
        fill(&rt, a.as_ptr(), 7000 + i as u64, a.len());
    }
    let kv_standing = kv.alloc_many(6).unwrap();
    for b in &kv_standing {
        fill(&rt, kv.ptr(b).unwrap(), u64::from(b.id()), BLOCK);
    }
    let share = pool.share(ShareConfig::default()).unwrap();
    say(format!("share {share}"));
    say(format!(
        "descs {}",
        standing.iter().map(|a| pool.descriptor(a).unwrap().to_hex()).collect::<Vec<_>>().join(" ")
    ));
    say(format!("kv {}", kv.desc()));
    say(format!("blocks {}", kv_standing.iter().map(KvBlock::to_string).collect::<Vec<_>>().join(" ")));
    let stop = Arc::new(AtomicBool::new(false));
    let (heap_ops, kv_ops, trims) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let heap = {
        let (rt, pool, stop, ops, trims) =
            (rt.clone(), Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&heap_ops), Arc::clone(&trims));
        std::thread::spawn(move || {
            raw::set_device(&rt, 0).unwrap();
            let mut seed = 1u64;
            let mut live: Vec<(aclshm::Allocation, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if live.len() < 24 && !next(&mut seed).is_multiple_of(3) {
                    let size = 4096 + next(&mut seed) % (3 * MIB);
                    let a = pool.alloc(size).unwrap();
                    let s = next(&mut seed);
                    fill(&rt, a.as_ptr(), s, a.len());
                    live.push((a, s));
                } else if !live.is_empty() {
                    let (a, s) = live.swap_remove((next(&mut seed) % live.len() as u64) as usize);
                    assert!(holds(&rt, a.as_ptr(), s, a.len()), "heap allocation {a:?} changed");
                    pool.free(a).unwrap();
                }
                if ops.fetch_add(1, Ordering::Relaxed) % 200 == 199 {
                    pool.trim().unwrap();
                    trims.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (a, s) in live {
                assert!(holds(&rt, a.as_ptr(), s, a.len()));
                pool.free(a).unwrap();
            }
        })
    };
    let blocks = {
        let (rt, kv, stop, ops) = (rt.clone(), Arc::clone(&kv), Arc::clone(&stop), Arc::clone(&kv_ops));
        std::thread::spawn(move || {
            raw::set_device(&rt, 0).unwrap();
            let mut seed = 2u64;
            while !stop.load(Ordering::Relaxed) {
                let n = 1 + (next(&mut seed) % 16) as usize;
                let bs = kv.alloc_many(n).unwrap();
                for b in &bs {
                    fill(&rt, kv.ptr(b).unwrap(), u64::from(b.generation()), BLOCK);
                }
                for b in &bs {
                    assert!(holds(&rt, kv.ptr(b).unwrap(), u64::from(b.generation()), BLOCK), "block {b}");
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
        assert!(holds(&rt, a.as_ptr(), 7000 + i as u64, a.len()), "standing allocation {i}");
    }
    for b in &kv_standing {
        assert!(holds(&rt, kv.ptr(b).unwrap(), u64::from(b.id()), BLOCK), "standing block {b}");
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

fn worker(device: i32) {
    let rt = runtime();
    raw::set_device(&rt, device).unwrap();
    let share: ShareDesc = hear_word("share").parse().unwrap();
    let descs: Vec<AllocDesc> =
        hear_word("descs").split_whitespace().map(|d| AllocDesc::from_hex(d).unwrap()).collect();
    let kvd: KvDesc = hear_word("kv").parse().unwrap();
    let blocks: Vec<KvBlock> = hear_word("blocks").split_whitespace().map(|b| b.parse().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, Ordering::Relaxed);
    });
    let mut cycles = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let m = Mirror::attach(&rt, &share, device).unwrap();
        for (i, d) in descs.iter().enumerate() {
            assert!(holds(&rt, m.ptr(d).unwrap(), 7000 + i as u64, d.len()), "standing allocation {i}");
        }
        m.close().unwrap();
        let k = KvMirror::attach(&rt, &kvd, device).unwrap();
        let pinned = k.pinned(&blocks).unwrap();
        for (b, &p) in blocks.iter().zip(pinned.ptrs()) {
            assert!(holds(&rt, p, u64::from(b.id()), BLOCK), "standing block {b}");
        }
        drop(pinned);
        k.close().unwrap();
        cycles += 1;
    }
    say(format!("ok {cycles}"));
}

#[test]
fn threads_and_processes_churn_a_shared_pool_and_every_check_holds() {
    match role().as_deref() {
        Some("owner") => return owner(),
        Some("worker0") => return worker(0),
        Some("worker1") => return worker(1),
        _ => {}
    }
    let secs: u64 = std::env::var("ACLSHM_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let sc = Scenario::new(test_name!()).shared();
    let mut owner = sc.spawn("owner");
    let mut workers = [sc.spawn("worker0"), sc.spawn("worker1")];
    for word in ["share", "descs", "kv", "blocks"] {
        let line = owner.expect(word);
        for w in workers.iter_mut() {
            w.send(format!("{word} {line}"));
        }
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    owner.send("stop");
    let mut cycles = 0u64;
    for w in workers.iter_mut() {
        w.send("stop");
        cycles += w.expect("ok").parse::<u64>().unwrap();
    }
    for w in workers {
        w.join();
    }
    owner.send("workers gone");
    let ops = owner.expect("ok");
    owner.join();
    sc.finish();
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
