//! The crash harness: an owner and two workers share a pool of KV blocks and keep working (the owner
//! allocating, writing, checking and freeing, trimming; the workers writing and checking their blocks
//! through their mirrors) until one of the three is killed with SIGKILL at a random moment. The survivors
//! then check their data one last time and leave; nothing may hang, and once the last process is gone
//! nothing may be left in the simulator or the share directory. Many trials, each with its own seed.
//!
//! `ACLSHM_CRASH_TRIALS` sets the number of trials (200 by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aclshm::{KvBlock, KvConfig, KvDesc, KvMirror, KvPool, PoolConfig, Runtime, ShareConfig, raw};

use crate::harness::*;
use crate::test_name;

const BLOCK: u64 = 64 << 10;

/// Reads stdin in the background: true once the parent says stop (or goes away).
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, Ordering::SeqCst);
    });
    stop
}

fn fill(rt: &Runtime, p: *mut std::ffi::c_void, seed: u64) {
    write_dev(rt, p, &pattern(seed, BLOCK as usize)).unwrap();
}

fn holds(rt: &Runtime, p: *mut std::ffi::c_void, seed: u64) -> bool {
    read_dev(rt, p, BLOCK as usize).unwrap() == pattern(seed, BLOCK as usize)
}

fn owner() {
    let rt = runtime();
    raw::set_device(&rt, 0).unwrap();
    let pool =
        PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, trim_watermark: Some(0), ..PoolConfig::default() };
    let kv = KvPool::new(&rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }).unwrap();
    say(format!("kv {}", kv.desc()));
    for _ in 0..2 {
        let blocks = kv.alloc_many(8).unwrap();
        say(format!("blocks {}", blocks.iter().map(KvBlock::to_string).collect::<Vec<_>>().join(" ")));
    }
    // The owner's own blocks, written once and checked every round.
    let mine = kv.alloc_many(4).unwrap();
    for b in &mine {
        fill(&rt, kv.ptr(b).unwrap(), u64::from(b.id()));
    }
    hear_word("go");
    let stop = stop_flag();
    let mut rounds = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Churn: grow, write, check, free (and trim back: the watermark is 0).
        let more = kv.alloc_many(12).unwrap();
        for b in &more {
            fill(&rt, kv.ptr(b).unwrap(), 1000 + rounds);
        }
        for b in &more {
            assert!(holds(&rt, kv.ptr(b).unwrap(), 1000 + rounds), "round {rounds}: block {b}");
        }
        kv.free_many(&more).unwrap();
        kv.reclaim().unwrap();
        rounds += 1;
    }
    for b in &mine {
        assert!(holds(&rt, kv.ptr(b).unwrap(), u64::from(b.id())), "the owner's block {b}");
    }
    kv.free_many(&mine).unwrap();
    kv.close().unwrap();
    say(format!("ok {rounds}"));
}

fn worker(device: i32) {
    let rt = runtime();
    let desc: KvDesc = hear_word("kv").parse().unwrap();
    let blocks: Vec<KvBlock> = hear_word("blocks").split_whitespace().map(|b| b.parse().unwrap()).collect();
    raw::set_device(&rt, device).unwrap();
    let m = match KvMirror::attach(&rt, &desc, device) {
        Ok(m) => m,
        Err(e) => {
            // The owner was killed before we attached: a typed error, and nothing to do.
            say(format!("ready without the owner: {e}"));
            hear_word("go");
            hear_word("stop");
            say("ok 0");
            return;
        }
    };
    // The blocks are this worker's: pinned, so they stay its own whatever happens to the owner.
    let pinned = m.pinned(&blocks).unwrap();
    let ptrs = pinned.ptrs().to_vec();
    say("ready");
    hear_word("go");
    let stop = stop_flag();
    let mut round = 0u64;
    loop {
        for (b, &p) in blocks.iter().zip(&ptrs) {
            fill(&rt, p, (round << 32) | u64::from(b.id()));
        }
        for (b, &p) in blocks.iter().zip(&ptrs) {
            assert!(holds(&rt, p, (round << 32) | u64::from(b.id())), "round {round}: block {b}");
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        round += 1;
    }
    drop(pinned);
    m.close().unwrap();
    say(format!("ok {round}"));
}

/// A small deterministic generator for the trials' choices.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn survivors_of_a_sigkill_keep_their_data_and_nothing_is_left() {
    match role().as_deref() {
        Some("owner") => return owner(),
        Some("worker0") => return worker(0),
        Some("worker1") => return worker(1),
        _ => {}
    }
    let trials: u64 = std::env::var("ACLSHM_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let names = ["owner", "worker0", "worker1"];
    let (mut killed, mut survivors, mut early_kills) = ([0u64; 3], 0u64, 0u64);
    for trial in 0..trials {
        let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (trial + 1);
        let sc = Scenario::new(test_name!()).shared();
        let mut peers: Vec<Option<Peer>> = names.iter().map(|n| Some(sc.spawn(n))).collect();
        let kv = peers[0].as_mut().unwrap().expect("kv");
        for w in 1..3 {
            let blocks = peers[0].as_mut().unwrap().expect("blocks");
            let p = peers[w].as_mut().unwrap();
            p.send(format!("kv {kv}"));
            p.send(format!("blocks {blocks}"));
        }
        // One trial in five kills while the workers attach; the others while everyone works.
        let early = next(&mut seed).is_multiple_of(5);
        let victim = (next(&mut seed) % 3) as usize;
        if early {
            std::thread::sleep(Duration::from_millis(next(&mut seed) % 5));
            peers[victim].take().unwrap().kill();
        }
        for p in peers.iter_mut().skip(1).flatten() {
            p.expect("ready");
        }
        for p in peers.iter_mut().flatten() {
            p.send("go");
        }
        if !early {
            std::thread::sleep(Duration::from_millis(next(&mut seed) % 60));
            peers[victim].take().unwrap().kill();
        }
        killed[victim] += 1;
        early_kills += u64::from(early);
        for (i, p) in peers.iter_mut().enumerate() {
            if let Some(p) = p {
                p.send("stop");
                let rounds = p.expect("ok");
                assert!(rounds.parse::<u64>().is_ok(), "trial {trial}: {} said {rounds:?}", names[i]);
                survivors += 1;
            }
        }
        for p in peers.into_iter().flatten() {
            p.join();
        }
        // Nothing left once everyone is gone: the dead process's objects were reclaimed by the last one
        // out, and its shared files removed by a survivor.
        let what = format!("trial {trial}: {} killed{}", names[victim], if early { " while attaching" } else { "" });
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sc.finish())) {
            panic!("{what}: {}", e.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    println!(
        "crash harness: {trials} trials (owner killed {}, a worker killed {}; {early_kills} while attaching); \
         {survivors} survivors verified their data; 0 leftovers",
        killed[0],
        killed[1] + killed[2]
    );
    assert_eq!(survivors, 2 * trials);
}
