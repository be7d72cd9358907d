//! KV-cache blocks shared between a scheduler and workers in real processes: translation without runtime
//! calls, pins that hold off reuse (and die with their worker), refused references.

use aclshm::{Error, KvBlock, KvConfig, KvMirror, KvPool, PoolConfig, Runtime, ShareConfig, raw};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 256 << 10;

/// A scheduler's pool on device 0: 256 KiB blocks, 2 MiB chunks (8 blocks each), 64 MiB of range.
fn kv_pool(rt: &Runtime) -> KvPool {
    raw::set_device(rt, 0).unwrap();
    let pool = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() };
    KvPool::new(rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }).unwrap()
}

/// The whole of a test of a scheduler and a worker on `device` sharing a KV pool, whose conversation is
/// `script` ([`Crew::run`]): the `scheduler` child makes the pool ([`kv_pool`]), says `kv <desc>`, plays
/// `scheduler` on it and closes it; the `worker` child attaches on `device`, plays `worker` with its
/// mirror and closes it when told `done`.
fn kv_test(
    test: String,
    device: i32,
    script: &str,
    scheduler: impl FnOnce(&Runtime, &KvPool),
    worker: impl FnOnce(&Runtime, &KvMirror),
) {
    by_crew(
        test,
        "scheduler",
        &["worker"],
        |rt| {
            let kv = kv_pool(rt);
            say(format!("kv {}", kv.desc()));
            scheduler(rt, &kv);
            kv.close().unwrap();
        },
        |rt, _| {
            let m = attach_as(rt, "kv", device, KvMirror::attach);
            worker(rt, &m);
            when_done(|| m.close().unwrap());
        },
        |crew| crew.run(script),
    );
}

/// A worker's start in the pin tests: attach on `device` (`kv <desc>`), pin the blocks it is sent
/// (`pin <blocks>`), say `pinned`.
fn attach_and_pin(rt: &Runtime, device: i32) -> (KvMirror, Vec<KvBlock>) {
    let m = attach_as(rt, "kv", device, KvMirror::attach);
    let held = hear_list::<KvBlock>("pin");
    m.pin(&held).unwrap();
    say("pinned");
    (m, held)
}

/// A block's pattern seed: its id and generation.
fn seed(b: &KvBlock) -> u64 {
    (u64::from(b.id()) << 32) | u64::from(b.generation())
}

#[test]
fn workers_read_and_write_blocks_by_reference_with_no_runtime_call() {
    kv_test(
        test_name!(),
        1,
        "> kv, > read, > write, < written",
        |rt, kv| {
            let mine = kv.alloc_many(40).unwrap();
            assert_eq!(kv.stats().pool.chunks, 5, "40 blocks of 8 per chunk");
            for b in &mine {
                fill(rt, kv.ptr(b).unwrap(), BLOCK, seed(b));
            }
            let theirs = kv.alloc_many(8).unwrap();
            say(format!("read {}", words(&mine)));
            say(format!("write {}", words(&theirs)));
            hear_word("written");
            for b in &theirs {
                assert!(holds(rt, kv.ptr(b).unwrap(), BLOCK, !seed(b)), "the worker's bytes in {b}");
            }
            kv.free_many(&mine).unwrap();
            kv.free_many(&theirs).unwrap();
            assert_eq!(kv.stats().allocated, 0);
        },
        |rt, m| {
            assert_eq!(m.block_bytes(), BLOCK);
            let read = hear_list::<KvBlock>("read");
            let write = hear_list::<KvBlock>("write");
            let ptrs = m.ptrs(&read).unwrap();
            for (b, p) in read.iter().zip(&ptrs) {
                assert!(holds(rt, *p, BLOCK, seed(b)), "{b} on device 1");
            }
            // Translation makes no runtime call once the chunks are mapped.
            let before = sim_calls(rt);
            for _ in 0..100 {
                assert_eq!(m.ptrs(&read).unwrap(), ptrs);
            }
            assert!(calls_since(&before, &sim_calls(rt)).is_empty());
            for b in &write {
                fill(rt, m.ptr(b).unwrap(), BLOCK, !seed(b));
            }
            say("written");
        },
    );
}

#[test]
fn pinned_blocks_are_not_reused_until_every_pin_is_gone() {
    kv_test(
        test_name!(),
        1,
        "> kv, > prefix, < pinned, > freed, < unpinned",
        |rt, kv| {
            let shared = kv.alloc_many(4).unwrap();
            for b in &shared {
                fill(rt, kv.ptr(b).unwrap(), BLOCK, seed(b));
            }
            say(format!("prefix {}", words(&shared)));
            hear_word("pinned");
            assert_eq!(kv.pins(&shared[0]).unwrap(), 2, "pinned twice");
            // The request that owned the prefix ends: the blocks are freed, but kept for their pins.
            kv.free_many(&shared).unwrap();
            let st = kv.stats();
            assert_eq!((st.allocated, st.deferred, st.workers), (0, 4, 1));
            let others = kv.alloc_many(8).unwrap();
            let ids: Vec<u32> = shared.iter().map(KvBlock::id).collect();
            assert!(others.iter().all(|b| !ids.contains(&b.id())), "a pinned block was reused");
            say("freed");
            hear_word("unpinned");
            assert!(kv.wait_unpinned(TIMEOUT).unwrap());
            assert_eq!(kv.stats().deferred, 0);
            // Now they are reused (lowest blocks first).
            let again = kv.alloc_many(4).unwrap();
            assert!(again.iter().all(|b| ids.contains(&b.id())), "{again:?} after {ids:?}");
            assert!(again.iter().zip(&shared).all(|(a, s)| a.generation() == s.generation() + 2));
            kv.free_many(&again).unwrap();
            kv.free_many(&others).unwrap();
        },
        |rt, m| {
            let prefix = hear_list::<KvBlock>("prefix");
            // Two requests read the same prefix: two pins each.
            let first = m.pinned(&prefix).unwrap();
            m.pin(&prefix).unwrap();
            let ptrs = m.ptrs(&prefix).unwrap();
            say("pinned");
            hear_word("freed");
            // Freed by the scheduler: no new pins or translations, but the pinned bytes are untouched.
            assert!(matches!(m.ptr(&prefix[0]), Err(Error::StaleBlock { .. })));
            assert!(matches!(m.pin(&prefix[..1]), Err(Error::StaleBlock { .. })));
            assert_eq!(m.pins(&prefix[0]).unwrap(), 2, "a refused pin leaves none behind");
            for (b, p) in prefix.iter().zip(&ptrs) {
                assert!(holds(rt, *p, BLOCK, seed(b)), "{b} changed while pinned");
            }
            drop(first);
            m.unpin(&prefix).unwrap();
            assert!(matches!(m.unpin(&prefix[..1]), Err(Error::NotPinned { .. })));
            say("unpinned");
        },
    );
}

#[test]
fn a_killed_workers_pins_are_released() {
    by_crew(
        test_name!(),
        "scheduler",
        &["worker"],
        |rt| {
            let kv = kv_pool(rt);
            say(format!("kv {}", kv.desc()));
            let held = kv.alloc_many(6).unwrap();
            say(format!("pin {}", words(&held)));
            hear_word("pinned");
            // Half freed while the worker lives: kept.
            kv.free_many(&held[..3]).unwrap();
            assert_eq!(kv.stats().deferred, 3);
            say("freed");
            hear_word("killed");
            // The worker is gone, and its pins with it: the kept half comes back, the rest is freed at once.
            assert_eq!(kv.reclaim().unwrap(), 3);
            kv.free_many(&held[3..]).unwrap();
            let st = kv.stats();
            assert_eq!((st.allocated, st.deferred, st.workers), (0, 0, 0));
            kv.close().unwrap();
        },
        |rt, _| {
            let _held = attach_and_pin(rt, 0);
            hear_word("never");
        },
        |mut crew| {
            crew.play("> kv, > pin, < pinned");
            crew.owner.expect("freed");
            crew.workers.remove(0).kill();
            crew.owner.send("killed");
            crew.finish();
        },
    );
}

/// A free takes no lock while no worker is attached (the block table's epoch has not moved since the
/// scheduler saw no pin file); a worker that attaches after such frees must still hold off reuse.
#[test]
fn a_worker_attaching_after_lock_free_frees_still_holds_off_reuse() {
    by_crew(
        test_name!(),
        "scheduler",
        &["worker"],
        |rt| {
            let kv = kv_pool(rt);
            // Frees with no worker: the first looks for pin files, the next ones know there are none.
            for _ in 0..3 {
                let b = kv.alloc_many(2).unwrap();
                kv.free(b[0]).unwrap();
                kv.free_many(&b[1..]).unwrap();
            }
            let held = kv.alloc_many(4).unwrap();
            say(format!("kv {}", kv.desc()));
            say(format!("pin {}", words(&held)));
            hear_word("pinned");
            // One by one and as a batch: both kept for the worker's pins.
            kv.free(held[0]).unwrap();
            kv.free_many(&held[1..]).unwrap();
            let st = kv.stats();
            assert_eq!((st.allocated, st.deferred, st.workers), (0, 4, 1));
            let others = kv.alloc_many(8).unwrap();
            assert!(others.iter().all(|o| held.iter().all(|h| h.id() != o.id())), "a pinned block was reused");
            say("freed");
            hear_word("unpinned");
            assert!(kv.wait_unpinned(TIMEOUT).unwrap());
            kv.free_many(&others).unwrap();
            let st = kv.stats();
            assert_eq!((st.allocated, st.deferred), (0, 0));
            kv.close().unwrap();
        },
        |rt, _| {
            let (m, held) = attach_and_pin(rt, 1);
            hear_word("freed");
            assert!(matches!(m.pin(&held[..1]), Err(Error::StaleBlock { .. })));
            m.unpin(&held).unwrap();
            say("unpinned");
            when_done(|| m.close().unwrap());
        },
        |crew| crew.run("> kv, > pin, < pinned, > freed, < unpinned"),
    );
}

/// Two threads freeing the same blocks at once (one by one, and as batches in the same order): each block
/// is freed exactly once, the other thread is told it is stale, and the pool's accounting holds.
#[test]
fn two_threads_freeing_the_same_blocks_at_once_free_each_once() {
    solo(test_name!(), |rt| {
        let kv = kv_pool(rt);
        let capacity = kv.stats().capacity as usize;
        let barrier = std::sync::Barrier::new(2);
        for round in 0..20 {
            let blocks = kv.alloc_many(capacity).unwrap();
            let batch = if round % 2 == 0 { 1 } else { 8 };
            let freed: Vec<Vec<u32>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let mut mine = Vec::new();
                            for group in blocks.chunks(batch) {
                                let r = if batch == 1 { kv.free(group[0]) } else { kv.free_many(group) };
                                match r {
                                    Ok(()) => mine.extend(group.iter().map(KvBlock::id)),
                                    Err(Error::StaleBlock { .. }) => {}
                                    Err(e) => panic!("round {round}: {e}"),
                                }
                            }
                            mine
                        })
                    })
                    .collect();
                racers.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let mut all: Vec<u32> = freed.concat();
            all.sort_unstable();
            let want: Vec<u32> = blocks.iter().map(KvBlock::id).collect();
            assert_eq!(all, want, "round {round}: every block freed exactly once");
            assert_eq!(kv.stats().allocated, 0);
        }
        // The pool agrees: every block can be allocated again, and no more.
        let again = kv.alloc_many(capacity).unwrap();
        assert!(matches!(kv.alloc(), Err(Error::OutOfMemory { .. })));
        kv.free_many(&again).unwrap();
        kv.close().unwrap();
    });
}

/// A freed block waits in the freeing thread's magazine, and that thread's next allocation takes it back
/// (a fresh generation: the old reference is stale). What an idle thread's magazine holds is not lost: a
/// trim gives its chunks back, an allocation that finds the device full takes it, a sleep takes it before
/// the memory goes, and nothing is handed out of a magazine while the pool sleeps.
#[test]
fn blocks_in_a_threads_magazine_come_back_to_whoever_needs_them() {
    solo(test_name!(), |rt| {
        let kv = kv_pool(rt);
        let capacity = kv.stats().capacity as usize;
        // Same thread: the block comes straight back.
        let a = kv.alloc().unwrap();
        kv.free(a).unwrap();
        let st = kv.stats();
        assert_eq!((st.allocated, st.cached), (0, 1));
        let b = kv.alloc().unwrap();
        assert_eq!(b.id(), a.id(), "the magazine's block");
        assert_ne!(b.generation(), a.generation());
        assert!(matches!(kv.free(a), Err(Error::StaleBlock { .. })), "the old reference is stale");
        assert!(kv.ptr(&a).is_err());
        assert_eq!((kv.stats().allocated, kv.stats().cached), (1, 0));
        kv.free(b).unwrap();
        // Another thread frees 16 blocks (two chunks' worth) into its magazine and stays idle.
        let (to_idle, idle_hears) = std::sync::mpsc::channel::<&str>();
        let (idle_says, from_idle) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let kv = &kv;
            s.spawn(move || {
                for step in idle_hears {
                    match step {
                        "fill" => kv.free_many(&kv.alloc_many(16).unwrap()).unwrap(),
                        _ => {
                            // Its magazine was drained: allocating still works, from the pool.
                            let again = kv.alloc().unwrap();
                            kv.free(again).unwrap();
                        }
                    }
                    idle_says.send(()).unwrap();
                }
            });
            to_idle.send("fill").unwrap();
            from_idle.recv().unwrap();
            let st = kv.stats();
            assert_eq!((st.allocated, st.cached), (0, 17), "16 in the other thread's magazine, 1 in this one's");
            // A trim from this thread takes them: every chunk goes back.
            let chunks = st.pool.chunks;
            assert!(chunks >= 2);
            assert_eq!(kv.trim().unwrap(), chunks);
            let st = kv.stats();
            assert_eq!((st.allocated, st.cached, st.pool.chunks), (0, 0, 0));
            to_idle.send("use").unwrap();
            from_idle.recv().unwrap();
            to_idle.send("fill").unwrap();
            from_idle.recv().unwrap();
            assert_eq!(kv.stats().cached, 16, "the trim emptied this thread's magazine too");
            // The whole pool, with 16 blocks sitting in another thread's magazine: the full device takes them back.
            let all = kv.alloc_many(capacity).unwrap();
            assert!(matches!(kv.alloc(), Err(Error::OutOfMemory { .. })));
            assert_eq!(kv.stats().cached, 0);
            kv.free_many(&all).unwrap();
            drop(to_idle);
        });
        // A sleep takes what magazines hold; while asleep nothing comes out of one.
        let c = kv.alloc().unwrap();
        let e = kv.alloc().unwrap();
        kv.free(c).unwrap();
        assert!(kv.stats().cached > 0);
        kv.sleep(true).unwrap();
        assert_eq!(kv.stats().cached, 0);
        kv.free(e).unwrap(); // freed while asleep: not into a magazine
        assert_eq!(kv.stats().cached, 0);
        assert!(matches!(kv.alloc(), Err(Error::Asleep(_))), "{:?}", kv.alloc());
        kv.wake().unwrap();
        let d = kv.alloc().unwrap();
        kv.free(d).unwrap();
        assert_eq!(kv.alloc().unwrap().id(), d.id(), "magazines open again after the wake");
        // The pool underneath put to sleep directly: its magazines' blocks are not handed out either.
        let f = kv.alloc().unwrap();
        kv.free(f).unwrap();
        assert_eq!(kv.stats().cached, 1);
        kv.pool().sleep(&aclshm::SleepConfig::default()).unwrap();
        assert!(matches!(kv.alloc(), Err(Error::Asleep(_))), "a block from a magazine while asleep");
        assert!(matches!(kv.alloc_many(1), Err(Error::Asleep(_))));
        kv.pool().wake(None).unwrap();
        assert_eq!(kv.alloc().unwrap().id(), f.id());
        kv.close().unwrap();
    });
}

#[test]
fn block_references_of_other_pools_out_of_range_or_stale_are_refused() {
    kv_test(
        test_name!(),
        1,
        "> kv, > refs, < checked",
        |rt, kv| {
            let other = kv_pool(rt);
            let a = kv.alloc().unwrap();
            let b = other.alloc().unwrap();
            // The scheduler's own checks.
            assert!(matches!(kv.free(b), Err(Error::BadDescriptor(_))), "another pool's block");
            let beyond = KvBlock::from_parts(a.pool(), 1 << 30, 1);
            assert!(matches!(kv.free(beyond), Err(Error::BadDescriptor(_))));
            let c = kv.alloc().unwrap();
            let r = kv.free_many(&[c, c]);
            assert!(matches!(r, Err(Error::StaleBlock { .. })), "listed twice: {r:?}");
            assert_eq!(kv.stats().allocated, 2, "nothing was freed");
            // Out of order, with and without a repeat.
            let more = kv.alloc_many(3).unwrap();
            let r = kv.free_many(&[more[2], more[0], more[1], more[0]]);
            assert!(matches!(r, Err(Error::StaleBlock { .. })), "listed twice, apart: {r:?}");
            assert!(more.iter().all(|m| kv.ptr(m).is_ok()), "nothing was freed");
            kv.free_many(&[more[2], more[0], more[1]]).unwrap();
            assert_eq!(kv.stats().allocated, 2);
            kv.free(c).unwrap();
            assert!(matches!(kv.free(c), Err(Error::StaleBlock { .. })), "freed twice");
            assert!(matches!(kv.ptr(&c), Err(Error::StaleBlock { .. })));
            // `c` is reallocated: the old reference stays stale.
            let c2 = kv.alloc().unwrap();
            assert_eq!((c2.id(), c2.generation()), (c.id(), c.generation() + 2));
            say(format!("refs {}", words([a, b, beyond, c, c2])));
            hear_word("checked");
            kv.free_many(&[a, c2]).unwrap();
            other.free(b).unwrap();
            other.close().unwrap();
        },
        |_, m| {
            let refs = hear_list::<KvBlock>("refs");
            let (a, b, beyond, c, c2) = (refs[0], refs[1], refs[2], refs[3], refs[4]);
            m.ptr(&a).unwrap();
            m.ptr(&c2).unwrap();
            assert!(matches!(m.ptr(&b), Err(Error::BadDescriptor(_))), "another pool's block");
            assert!(matches!(m.ptr(&beyond), Err(Error::BadDescriptor(_))), "out of range");
            assert!(matches!(m.ptr(&c), Err(Error::StaleBlock { .. })), "a stale generation");
            assert!(matches!(m.pin(&[a, c]), Err(Error::StaleBlock { .. })), "all or none");
            assert_eq!(m.pins(&a).unwrap(), 0, "the pin of `a` was undone");
            let forged = KvBlock::from_parts(a.pool(), a.id(), a.generation() + 2);
            assert!(matches!(m.ptr(&forged), Err(Error::StaleBlock { .. })), "a generation not reached");
            say("checked");
        },
    );
}

/// `read_blocks` / `write_blocks`: many blocks to and from one host buffer, one copy per run of blocks side
/// by side (counted), in the order given; a buffer of the wrong size, a stale block and a sleeping pool are
/// typed errors before any copy.
#[test]
fn blocks_move_to_and_from_one_host_buffer_one_copy_per_run() {
    solo(test_name!(), |rt| {
        let kv = kv_pool(rt);
        let blocks = kv.alloc_many(24).unwrap();
        let bytes = (24 * BLOCK) as usize;
        let data = pattern(9, bytes);
        let copies = sim_count(rt, "aclrtMemcpy");
        kv.write_blocks(&blocks, &data).unwrap();
        assert_eq!(sim_count(rt, "aclrtMemcpy") - copies, 1, "24 blocks allocated together: one run, one copy");
        for (i, b) in blocks.iter().enumerate() {
            let at = i * BLOCK as usize;
            assert!(read_dev(rt, kv.ptr(b).unwrap(), BLOCK as usize).unwrap() == data[at..at + BLOCK as usize]);
        }
        // Out of order: each block is its own run, and lands where its place in the list says.
        let mut shuffled = blocks.clone();
        shuffled.reverse();
        let mut out = vec![0u8; bytes];
        let copies = sim_count(rt, "aclrtMemcpy");
        kv.read_blocks(&shuffled, &mut out).unwrap();
        assert_eq!(sim_count(rt, "aclrtMemcpy") - copies, 24);
        for (i, _) in shuffled.iter().enumerate() {
            let (at, from) = (i * BLOCK as usize, (23 - i) * BLOCK as usize);
            assert!(out[at..at + BLOCK as usize] == data[from..from + BLOCK as usize], "block {i}");
        }
        assert!(matches!(kv.read_blocks(&blocks, &mut out[..bytes - 1]), Err(Error::InvalidArgument(_))));
        let stale = blocks[0];
        kv.free(stale).unwrap();
        assert!(matches!(kv.write_blocks(&blocks, &data), Err(Error::StaleBlock { .. })));
        kv.sleep(true).unwrap();
        assert!(matches!(kv.read_blocks(&blocks[1..], &mut out[..bytes - BLOCK as usize]), Err(Error::Asleep(_))));
        kv.wake().unwrap();
        kv.free_many(&blocks[1..]).unwrap();
        kv.close().unwrap();
    });
}
