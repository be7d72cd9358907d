//! The crash harness: an owner and two workers share a pool of KV blocks and keep working (the owner
//! allocating, writing, checking and freeing, trimming; the workers writing and checking their blocks
//! through their mirrors) until one of the three is killed with SIGKILL at a random moment. The survivors
//! then check their data one last time and leave; nothing may hang, and once the last process is gone
//! nothing may be left in the simulator or the share directory. Many trials, each with its own seed.
//!
//! Every survivor reports what it did, and the counts say only that: a survivor that checked its data
//! says `verified <checks>` (at least one check), a worker that never attached says `unattached <why>`
//! and has nothing to check. A worker may fail to attach only because the owner was killed first (while
//! the workers attached); any other failure fails the test.
//!
//! `ACLSHM_CRASH_TRIALS` sets the number of trials (200 by default).
//!
//! A second harness kills during sleep and wake: the owner puts its KV pool to sleep and wakes it in a
//! loop (keeping the blocks' contents), a worker reads its blocks through its mirror whenever they are
//! awake, and one of the two is killed at a random moment, often in the middle of a sleep or a wake. The
//! survivor checks its data (an owner after a last wake; a worker whenever its blocks are mapped), leaves,
//! and nothing is left. `ACLSHM_CRASH_SLEEP_TRIALS` sets its number of trials (40 by default).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aclshm::{Error, KvBlock, KvConfig, KvDesc, KvMirror, KvPool, PoolConfig, Runtime, ShareConfig, raw};

use crate::harness::*;
use crate::test_name;

const BLOCK: u64 = 64 << 10;

fn owner(rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let pool =
        PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, trim_watermark: Some(0), ..PoolConfig::default() };
    let kv = KvPool::new(rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }).unwrap();
    say(format!("kv {}", kv.desc()));
    for _ in 0..2 {
        say(format!("blocks {}", words(kv.alloc_many(8).unwrap())));
    }
    // The owner's own blocks, written once and checked every round.
    let mine = kv.alloc_many(4).unwrap();
    for b in &mine {
        fill(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id()));
    }
    hear_word("go");
    let stop = stop_flag();
    let mut rounds = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Churn: grow, write, check, free (and trim back: the watermark is 0).
        let more = kv.alloc_many(12).unwrap();
        for b in &more {
            fill(rt, kv.ptr(b).unwrap(), BLOCK, 1000 + rounds);
        }
        for b in &more {
            assert!(holds(rt, kv.ptr(b).unwrap(), BLOCK, 1000 + rounds), "round {rounds}: block {b}");
        }
        kv.free_many(&more).unwrap();
        kv.reclaim().unwrap();
        rounds += 1;
    }
    for b in &mine {
        assert!(holds(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id())), "the owner's block {b}");
    }
    kv.free_many(&mine).unwrap();
    kv.close().unwrap();
    // Each churn round checked its blocks, and the owner's own blocks were checked once more.
    say(format!("verified {}", rounds + 1));
}

fn worker(rt: &Runtime, device: i32) {
    let desc: KvDesc = hear_as("kv");
    let blocks: Vec<KvBlock> = hear_list("blocks");
    raw::set_device(rt, device).unwrap();
    let m = match KvMirror::attach(rt, &desc, device) {
        Ok(m) => m,
        Err(e) => {
            // No mirror, so no data to check: the parent decides whether that could happen.
            let why = format!("{} ({e})", variant(&e));
            say(format!("unattached {why}"));
            hear_word("go");
            hear_word("stop");
            say(format!("unattached {why}"));
            return;
        }
    };
    // The blocks are this worker's: pinned, so they stay its own whatever happens to the owner.
    let pinned = m.pinned(&blocks).unwrap();
    let ptrs = pinned.ptrs().to_vec();
    say("ready");
    hear_word("go");
    let stop = stop_flag();
    let mut checks = 0u64;
    loop {
        for (b, &p) in blocks.iter().zip(&ptrs) {
            fill(rt, p, BLOCK, (checks << 32) | u64::from(b.id()));
        }
        for (b, &p) in blocks.iter().zip(&ptrs) {
            assert!(holds(rt, p, BLOCK, (checks << 32) | u64::from(b.id())), "round {checks}: block {b}");
        }
        checks += 1;
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    drop(pinned);
    m.close().unwrap();
    say(format!("verified {checks}"));
}

/// The name of an error's variant (`Protocol`, `Io`, `Acl`, ...).
fn variant(e: &aclshm::Error) -> String {
    format!("{e:?}").chars().take_while(char::is_ascii_alphanumeric).collect()
}

/// What the survivors of the trials did.
#[derive(Default)]
struct Tally {
    /// Owners that survived and checked their data.
    owners_verified: u64,
    /// Workers that survived and checked their data.
    workers_verified: u64,
    /// Workers that could not attach because the owner was killed first, by the error's variant.
    unattached: BTreeMap<String, u64>,
}

impl Tally {
    /// Count a survivor's last line (`verified <checks>` or `unattached <why>`); `owner_killed_early`
    /// says whether this trial killed the owner while the workers attached.
    fn count(&mut self, what: &str, name: &str, said: &str, owner_killed_early: bool) {
        if let Some(checks) = said.strip_prefix("verified ") {
            let checks: u64 = checks.parse().unwrap_or_else(|_| panic!("{what}: {name} said {said:?}"));
            assert!(checks >= 1, "{what}: {name} says it verified its data {checks} times");
            if name == "owner" {
                self.owners_verified += 1;
            } else {
                self.workers_verified += 1;
            }
        } else if let Some(why) = said.strip_prefix("unattached ") {
            assert!(name != "owner" && owner_killed_early, "{what}: {name} could not attach: {why}");
            *self.unattached.entry(why.split(' ').next().unwrap_or_default().to_string()).or_default() += 1;
        } else {
            panic!("{what}: {name} said {said:?}");
        }
    }

    fn unattached(&self) -> u64 {
        self.unattached.values().sum()
    }
}

#[test]
fn survivors_of_a_sigkill_keep_their_data_and_nothing_is_left() {
    by_role(test_name!(), |rt, role| owner_or_worker(rt, role, owner, worker), trials);
}

/// The parent: the trials, each in a scenario of its own, and the report.
fn trials(sc: Scenario) {
    let trials: u64 = std::env::var("ACLSHM_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let names = ["owner", "worker0", "worker1"];
    let (mut killed, mut early_kills, mut tally) = ([0u64; 3], 0u64, Tally::default());
    for trial in 0..trials {
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (trial + 1));
        let sc = sc.another().shared();
        let mut peers: Vec<Option<Peer>> = sc.spawn_each(names).map(Some).into();
        let kv = peers[0].as_mut().unwrap().expect("kv");
        for w in 1..3 {
            let blocks = peers[0].as_mut().unwrap().expect("blocks");
            let p = peers[w].as_mut().unwrap();
            p.send(format!("kv {kv}"));
            p.send(format!("blocks {blocks}"));
        }
        // One trial in five kills while the workers attach; the others while everyone works.
        let early = rng.next().is_multiple_of(5);
        let victim = rng.below(3) as usize;
        let what = format!("trial {trial}: {} killed{}", names[victim], if early { " while attaching" } else { "" });
        if early {
            std::thread::sleep(Duration::from_millis(rng.below(5)));
            peers[victim].take().unwrap().kill();
        }
        // A worker that could not attach says so now, and again at the end (what is counted then).
        let mut ready = [true; 3];
        for (i, p) in peers.iter_mut().enumerate().skip(1) {
            if let Some(p) = p {
                let said = p.recv();
                ready[i] = said == "ready";
                assert!(ready[i] || said.starts_with("unattached "), "{what}: {} said {said:?}", names[i]);
            }
        }
        for p in peers.iter_mut().flatten() {
            p.send("go");
        }
        if !early {
            std::thread::sleep(Duration::from_millis(rng.below(60)));
            peers[victim].take().unwrap().kill();
        }
        killed[victim] += 1;
        early_kills += u64::from(early);
        for (i, p) in peers.iter_mut().enumerate() {
            if let Some(p) = p {
                p.send("stop");
                let said = p.recv();
                assert_eq!(ready[i], said.starts_with("verified "), "{what}: {} said {said:?} at the end", names[i]);
                tally.count(&what, names[i], &said, early && victim == 0);
            }
        }
        for p in peers.into_iter().flatten() {
            p.join();
        }
        // Nothing left once everyone is gone: the dead process's objects were reclaimed by the last one
        // out, and its shared files removed by a survivor.
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sc.finish())) {
            panic!("{what}: {}", e.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    let verified = tally.owners_verified + tally.workers_verified;
    let kinds: Vec<String> = tally.unattached.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "crash harness: {trials} trials (owner killed {}, a worker killed {}; {early_kills} while attaching); \
         {verified} survivors verified their data (owners {}, workers {}); {} workers could not attach, the owner \
         having been killed first{}; 0 leftovers",
        killed[0],
        killed[1] + killed[2],
        tally.owners_verified,
        tally.workers_verified,
        tally.unattached(),
        if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) },
    );
    // Every survivor is counted once, as verified or (a worker, when the owner died early) unattached;
    // every owner that was not killed verified its data.
    assert_eq!(verified + tally.unattached(), 2 * trials);
    assert_eq!(tally.owners_verified, trials - killed[0]);
    assert_eq!(tally.workers_verified + tally.unattached(), 2 * trials - (killed[1] + killed[2]));
}

/// The owner of the sleep-and-wake harness: blocks for the worker and its own, written once; then sleep
/// (keeping the blocks) and wake in a loop, checking its own blocks after each wake.
fn sleepy_owner(rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let pool = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 32 << 20, ..PoolConfig::default() };
    let kv = KvPool::new(rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }).unwrap();
    let theirs = kv.alloc_many(16).unwrap();
    let mine = kv.alloc_many(16).unwrap();
    for b in theirs.iter().chain(&mine) {
        fill(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id()) + 7);
    }
    say(format!("kv {} {}", kv.desc(), words(&theirs)));
    hear_word("go");
    let stop = stop_flag();
    let mut rounds = 0u64;
    while !stop.load(Ordering::SeqCst) {
        kv.sleep(false).unwrap();
        kv.wake().unwrap();
        for b in &mine {
            assert!(holds(rt, kv.ptr(b).unwrap(), BLOCK, u64::from(b.id()) + 7), "round {rounds}: block {b}");
        }
        rounds += 1;
    }
    kv.free_many(&theirs).unwrap();
    kv.free_many(&mine).unwrap();
    kv.close().unwrap();
    say(format!("verified {rounds}"));
}

/// The worker of the sleep-and-wake harness: reads its blocks whenever they are mapped, and checks them.
fn sleepy_worker(rt: &Runtime) {
    raw::set_device(rt, 1).unwrap();
    let line = hear_word("kv");
    let mut parts = line.split(' ');
    let desc: KvDesc = parts.next().unwrap().parse().unwrap();
    let blocks: Vec<KvBlock> = parts.map(|b| b.parse().unwrap()).collect();
    let m = KvMirror::attach(rt, &desc, 1).unwrap();
    say("ready");
    hear_word("go");
    let stop = stop_flag();
    let (mut checks, mut asleep) = (0u64, 0u64);
    'work: while !stop.load(Ordering::SeqCst) {
        for b in &blocks {
            match m.ptr(b) {
                // Mapped now; it may go to sleep before the read: then the read fails, and that is all.
                Ok(p) => {
                    if let Ok(ok) = try_holds(rt, p, BLOCK, u64::from(b.id()) + 7) {
                        assert!(ok, "block {b} read back other bytes than its owner wrote");
                        checks += 1;
                    }
                }
                Err(Error::Asleep(_)) => asleep += 1,
                Err(e) => {
                    // Only an owner that died (killed after it published a wake, before this worker imported
                    // the new memory) leaves a block out of reach: the exporter is gone.
                    let gone = (0..300).any(|_| {
                        m.mirror().owner_closed() || {
                            std::thread::sleep(Duration::from_millis(10));
                            false
                        }
                    });
                    assert!(gone, "block {b}: {e}, with its owner alive");
                    break 'work;
                }
            }
        }
    }
    // The rest of the run: the owner is gone, and so are the blocks that were asleep.
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The follower may have failed to import a wake's memory whose exporter was killed meanwhile: the
    // runtime's "unknown handle", and only when the owner is gone.
    let owner_gone = m.mirror().owner_closed();
    match m.close() {
        Ok(()) => {}
        Err(Error::Deferred(errs))
            if owner_gone && errs.iter().all(|e| e.acl_code() == Some(aclshm::AclError::INVALID_HANDLE)) => {}
        Err(e) => panic!("closing the mirror: {e}"),
    }
    say(format!("verified {checks} {asleep}"));
}

#[test]
fn kills_during_sleep_and_wake_keep_data_and_leave_nothing() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => sleepy_owner(rt),
            _ => sleepy_worker(rt),
        },
        |sc| {
            let trials: u64 =
                std::env::var("ACLSHM_CRASH_SLEEP_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
            let (mut owners_killed, mut owner_rounds, mut worker_checks, mut worker_asleep) = (0u64, 0u64, 0u64, 0u64);
            for trial in 0..trials {
                let mut rng = Rng::new(0x5EE9_5EE9 ^ (trial + 1));
                let sc = sc.another().shared();
                let mut owner = Some(sc.spawn("owner"));
                let mut worker = Some(sc.spawn("worker"));
                let kv = owner.as_mut().unwrap().expect("kv");
                worker.as_mut().unwrap().send(format!("kv {kv}"));
                worker.as_mut().unwrap().expect("ready");
                owner.as_mut().unwrap().send("go");
                worker.as_mut().unwrap().send("go");
                std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
                let owner_dies = rng.next().is_multiple_of(2);
                let what = format!("trial {trial}: the {} killed", if owner_dies { "owner" } else { "worker" });
                if owner_dies {
                    owner.take().unwrap().kill();
                    owners_killed += 1;
                } else {
                    worker.take().unwrap().kill();
                }
                if let Some(mut o) = owner {
                    o.send("stop");
                    let said = o.expect("verified");
                    owner_rounds += said.parse::<u64>().unwrap_or_else(|_| panic!("{what}: the owner said {said:?}"));
                    o.join();
                }
                if let Some(mut w) = worker {
                    w.send("stop");
                    let said = w.expect("verified");
                    let (c, a) = said.split_once(' ').unwrap_or_else(|| panic!("{what}: the worker said {said:?}"));
                    worker_checks += c.parse::<u64>().unwrap();
                    worker_asleep += a.parse::<u64>().unwrap();
                    w.join();
                }
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sc.finish())) {
                    panic!("{what}: {}", e.downcast_ref::<String>().cloned().unwrap_or_default());
                }
            }
            println!(
                "crash harness: sleep and wake, {trials} trials (owner killed {owners_killed}, worker killed {}); \
                 surviving owners slept and woke {owner_rounds} times and checked their blocks after each wake; \
                 surviving workers checked {worker_checks} mapped blocks and found {worker_asleep} asleep; 0 leftovers",
                trials - owners_killed
            );
            assert!(owner_rounds > 0 && worker_checks > 0, "the survivors did something to check");
        },
    );
}
