//! Extreme sizes and counts through every entry point of the library, an owner out of file descriptors,
//! and more workers than a chunk's whitelist holds.

use std::time::Duration;

use aclshm::{
    Error, IpcMemConfig, IpcMemory, KvBlock, KvConfig, KvMirror, KvPool, Mirror, Notify, Pool, PoolConfig, ShareConfig,
    ShareDesc, Stream, raw,
};

use super::{MIB, Tally, answer_attach, attach_and_check, ensure, owner_with_data, small, try_worker};
use crate::harness::*;
use crate::test_name;

/// What an extreme request must get: a typed refusal of the kinds listed (or success), and the pool
/// unchanged by a refusal: no chunk mapped, nothing allocated.
fn refused<T: std::fmt::Debug>(
    pool: &Pool,
    call: impl FnOnce() -> aclshm::Result<T>,
    ok: impl Fn(&Error) -> bool,
) -> Result<(), String> {
    let before = (pool.stats().chunks, pool.stats().allocated_bytes);
    match call() {
        Err(e) if ok(&e) => {
            let after = (pool.stats().chunks, pool.stats().allocated_bytes);
            ensure(after == before, || format!("refused ({e}) but the pool changed: {before:?} -> {after:?}"))
        }
        other => Err(format!("got {other:?}")),
    }
}

fn no_room(e: &Error) -> bool {
    matches!(e, Error::OutOfMemory { .. })
}

fn bad_arg(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_) | Error::Misaligned { .. })
}

/// Every public entry point that takes a size, a count or a timeout, at its extremes, in one process.
#[test]
fn extreme_sizes_and_counts_are_typed_errors_and_change_nothing() {
    by_role(
        test_name!(),
        |rt, _| {
            raw::set_device(rt, 0).unwrap();
            let mut t = Tally::default();
            let pool = Pool::new(rt, 0, small()).unwrap();
            let reserved = pool.reserved_bytes();
            // Issue 17 #1: sizes whose rounding or alignment wrapped made the allocation retry for ever.
            for size in [u64::MAX, u64::MAX - 511, u64::MAX - 4096, 1 << 63, reserved + 1, reserved * 4] {
                t.attack(&format!("alloc({size:#x})"), || refused(&pool, || pool.alloc(size), no_room));
            }
            for (size, align) in [(1, 1 << 63), (u64::MAX, 2 * MIB), (reserved, 2 * MIB), (4096, 3), (4096, 0)] {
                t.attack(&format!("alloc_aligned({size:#x}, {align:#x})"), || {
                    refused(&pool, || pool.alloc_aligned(size, align), |e| no_room(e) || bad_arg(e))
                });
            }
            t.attack("alloc(0)", || refused(&pool, || pool.alloc(0), bad_arg));
            for size in [0, 3, u64::MAX, 4 * MIB, u64::MAX - 511] {
                t.attack(&format!("block_class({size:#x})"), || refused(&pool, || pool.block_class(size), bad_arg));
            }
            let class = pool.block_class(256 << 10).unwrap();
            // Issue 17 #4: a count beyond the range panicked (capacity overflow) or aborted (48 GB).
            for n in [usize::MAX, usize::MAX / 2, 1_000_000_000, pool.block_capacity(class).unwrap() as usize + 1] {
                t.attack(&format!("alloc_blocks({n})"), || refused(&pool, || pool.alloc_blocks(class, n), no_room));
            }
            t.attack("alloc_blocks(0)", || {
                let v = pool.alloc_blocks(class, 0).map_err(|e| e.to_string())?;
                ensure(v.is_empty(), || format!("{} blocks for none", v.len()))
            });
            t.attack("free_blocks of one block a million times", || {
                let b = pool.alloc_block(class).map_err(|e| e.to_string())?;
                let r = pool.free_blocks(&vec![b; 1_000_000]);
                ensure(matches!(r, Err(Error::NotAllocated { .. })), || format!("{r:?}"))?;
                pool.free_block(b).map_err(|e| e.to_string())
            });
            // Configurations.
            let configs = [
                ("chunk_bytes u64::MAX", PoolConfig { chunk_bytes: u64::MAX, ..small() }),
                ("chunk_bytes 0", PoolConfig { chunk_bytes: 0, ..small() }),
                ("reserve_bytes u64::MAX", PoolConfig { reserve_bytes: u64::MAX, ..small() }),
                ("reserve_chunks u32::MAX", PoolConfig { reserve_chunks: u32::MAX, ..small() }),
                (
                    "reserve_bytes u64::MAX - 1 of 1 GiB chunks",
                    PoolConfig { chunk_bytes: 1 << 30, reserve_bytes: u64::MAX - 1, ..small() },
                ),
            ];
            for (what, config) in configs {
                t.attack(&format!("Pool::new({what})"), || match Pool::new(rt, 0, config) {
                    Err(Error::InvalidArgument(_) | Error::Misaligned { .. } | Error::Acl { .. }) => Ok(()),
                    other => Err(format!("{other:?}")),
                });
            }
            for block in [0, 1, u64::MAX, 4 * MIB] {
                t.attack(&format!("KvPool::new(block_bytes {block:#x})"), || {
                    let r = KvPool::new(
                        rt,
                        0,
                        KvConfig { block_bytes: block, pool: small(), share: ShareConfig::default() },
                    );
                    ensure(matches!(&r, Err(e) if bad_arg(e)), || format!("{:?}", r.as_ref().err()))
                });
            }
            let kv =
                KvPool::new(rt, 0, KvConfig { block_bytes: 256 << 10, pool: small(), share: ShareConfig::default() })
                    .unwrap();
            for n in [usize::MAX, 1_000_000_000, kv.stats().capacity as usize + 1] {
                t.attack(&format!("KvPool::alloc_many({n})"), || {
                    let r = kv.alloc_many(n);
                    ensure(matches!(&r, Err(Error::OutOfMemory { .. })), || format!("{:?}", r.as_ref().err()))?;
                    ensure(kv.stats().allocated == 0 && kv.stats().pool.chunks == 0, || "it allocated".into())
                });
            }
            t.attack("KvPool::free_many of one block a million times", || {
                let b = kv.alloc().map_err(|e| e.to_string())?;
                let r = kv.free_many(&vec![b; 1_000_000]);
                ensure(matches!(r, Err(Error::StaleBlock { .. })), || format!("{r:?}"))?;
                kv.free(b).map_err(|e| e.to_string())
            });
            t.attack("KvPool::wait_unpinned(Duration::MAX) with nothing pinned", || {
                let r = kv.wait_unpinned(Duration::MAX);
                ensure(matches!(r, Ok(true)), || format!("{r:?}"))
            });
            for b in [KvBlock::from_parts(0, u32::MAX, u32::MAX), KvBlock::from_parts(u64::MAX, 0, 1)] {
                t.attack(&format!("KvPool::free({b})"), || {
                    let r = kv.free(b);
                    ensure(matches!(r, Err(Error::BadDescriptor(_) | Error::StaleBlock { .. })), || format!("{r:?}"))
                });
            }
            kv.close().unwrap();
            for size in [0, usize::MAX, usize::MAX - (1 << 20), isize::MAX as usize] {
                t.attack(&format!("IpcMemory::new({size:#x})"), || {
                    let r = IpcMemory::new(rt, 0, size, IpcMemConfig::default());
                    ensure(matches!(&r, Err(Error::InvalidArgument(_) | Error::Acl { .. })), || {
                        format!("{:?}", r.as_ref().err())
                    })
                });
            }
            t.attack("IpcMemory closed with a timeout of Duration::MAX, nothing imported", || {
                let config = IpcMemConfig { close_timeout: Duration::MAX, ..IpcMemConfig::default() };
                let m = IpcMemory::new(rt, 0, 1, config).map_err(|e| e.to_string())?;
                m.close().map_err(|e| e.to_string())
            });
            for device in [-1, 64, i32::MAX, i32::MIN] {
                t.attack(&format!("Stream::new(device {device})"), || {
                    ensure(Stream::new(rt, device).is_err(), || "a stream on no device".into())
                });
                t.attack(&format!("Notify::new(device {device})"), || {
                    ensure(Notify::new(rt, device).is_err(), || "a notify on no device".into())
                });
                t.attack(&format!("Pool::new(device {device})"), || {
                    ensure(Pool::new(rt, device, small()).is_err(), || "a pool on no device".into())
                });
            }
            t.attack("a notify waited on from the host with a timeout of Duration::MAX, already signalled", || {
                let n = Notify::new(rt, 0).map_err(|e| e.to_string())?;
                n.signal().map_err(|e| e.to_string())?;
                let r = n.wait_host(Duration::MAX);
                ensure(matches!(r, Ok(true)), || format!("{r:?}"))?;
                n.close().map_err(|e| e.to_string())
            });
            t.attack("a mirror of a share descriptor naming no socket", || {
                let desc = ShareDesc { socket: "/nonexistent/aclshm/pool.sock".into(), token: 7 };
                let r = Mirror::attach(rt, &desc, 0);
                ensure(matches!(&r, Err(Error::Io { .. })), || format!("{:?}", r.as_ref().err()))
            });
            t.attack("a KV mirror of a descriptor naming no socket", || {
                let desc =
                    "aclshm-kv:1:00000000000000ab:/nonexistent/pool.sock".parse().map_err(|e: Error| e.to_string())?;
                let r = KvMirror::attach(rt, &desc, 0);
                ensure(matches!(&r, Err(Error::Io { .. })), || format!("{:?}", r.as_ref().err()))
            });
            pool.close().unwrap();
            t.say_tally();
        },
        |sc| {
            let sc = sc.shared();
            let mut c = sc.spawn("child");
            let mut t = Tally::default();
            t.absorb(&c.expect("tally"));
            c.join();
            sc.finish();
            t.report("extremes");
        },
    );
}

/// Issue 17 #2: more workers than a chunk's whitelist holds (the simulator's 64), attached while the pool
/// had no chunk, cut the owner off from growing. Admission stops at `ShareConfig::max_workers`; the
/// owner's allocations never depend on its workers.
#[test]
fn workers_beyond_the_whitelist_are_refused_and_the_owner_still_grows() {
    const WORKERS: usize = aclshm::share::WHITELIST_CAPACITY as usize + 1;
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                raw::set_device(rt, 0).unwrap();
                let pool = Pool::new(rt, 0, small()).unwrap();
                say(format!("share {}", pool.share(ShareConfig::default()).unwrap()));
                hear_word("attached");
                // Every worker came (or was turned away) while the pool had no chunk; now it grows, and each
                // new chunk is whitelisted for every attached worker.
                let mut t = Tally::default();
                t.attack("the owner grows with a full house of workers", || {
                    let a = pool.alloc(3 * MIB).map_err(|e| e.to_string())?;
                    let mirrors = pool.share_stats().map(|s| s.mirrors).unwrap_or(0) as usize;
                    ensure(mirrors == WORKERS - 1, || format!("{mirrors} mirrors attached"))?;
                    pool.free(a).map_err(|e| e.to_string())
                });
                t.say_tally();
                hear_word("done");
                pool.close().unwrap();
                say("ok");
            }
            _ => {
                let desc: ShareDesc = hear_as("share");
                raw::set_device(rt, 1).unwrap();
                answer_attach(Mirror::attach(rt, &desc, 1), true);
            }
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let share = owner.expect("share");
            let mut workers: Vec<Peer> = (0..WORKERS).map(|_| sc.spawn("worker")).collect();
            let mut attached = Vec::new();
            let mut refusals = Vec::new();
            for (i, w) in workers.iter_mut().enumerate() {
                w.send(format!("share {share}"));
                let answer = w.recv();
                if answer == "attached" {
                    attached.push(i);
                } else {
                    refusals.push(answer);
                }
            }
            let mut t = Tally::default();
            t.attack("admission stops at the whitelist's capacity", || {
                ensure(attached.len() == WORKERS - 1, || format!("{} of {WORKERS} attached", attached.len()))?;
                ensure(refusals.len() == 1 && refusals[0].contains("whitelist full"), || format!("{refusals:?}"))
            });
            owner.send("attached");
            t.absorb(&owner.expect("tally"));
            for &i in &attached {
                workers[i].send("done");
            }
            for mut w in workers {
                w.expect("ok");
                w.join();
            }
            owner.send("done");
            owner.expect("ok");
            owner.join();
            sc.finish();
            t.report("whitelist");
        },
    );
}

/// Lower this process's limit of open files to `n` (so that running out of them is quick).
fn lower_descriptor_limit(n: u64) {
    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: a valid rlimit for the call to read.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "setrlimit");
}

/// An owner with no file descriptor left turns a worker away with its reason, promptly, instead of
/// spinning on a connection it cannot accept; once it has descriptors again, workers attach.
#[test]
fn an_owner_out_of_file_descriptors_turns_workers_away_and_recovers() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                lower_descriptor_limit(256);
                let (pool, a) = owner_with_data(rt, 5);
                // Use up every descriptor this process may have.
                let mut hog = Vec::new();
                while let Ok(f) = std::fs::File::open("/dev/null") {
                    hog.push(f);
                }
                say("exhausted");
                hear_word("refused");
                drop(hog);
                say("recovered");
                hear_word("done");
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            _ => answer_attach(attach_and_check(rt, 5).map(|(m, _)| m), false),
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let share = owner.expect("share");
            let desc = owner.expect("desc");
            owner.expect("exhausted");
            let mut t = Tally::default();
            let answer = try_worker(&sc, &share, &desc);
            t.attack("a worker is turned away with the reason", || {
                ensure(answer.contains("no file descriptors left"), || answer.clone())
            });
            owner.send("refused");
            owner.expect("recovered");
            let answer = try_worker(&sc, &share, &desc);
            t.attack("with descriptors back, a worker attaches and reads", || {
                ensure(answer == "attached", || answer.clone())
            });
            owner.send("done");
            owner.expect("ok");
            owner.join();
            sc.finish();
            t.report("file descriptors");
        },
    );
}
