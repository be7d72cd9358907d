//! Sharing a pool between real processes: mirrors, descriptors, whitelisting, crashes.
//!
//! Children relay through the parent: the owner prints its share descriptor and allocation descriptors,
//! the parent hands them to workers. Every scenario uses a share directory of its own and checks, at the
//! end, that the simulator and the share directory are both empty.

use std::io::Write;
use std::os::unix::net::UnixStream;

use aclshm::raw;
use aclshm::registry::ImportRegistry;
use aclshm::share::{Message, PROTOCOL_VERSION, published_handles};
use aclshm::{AllocDesc, Allocation, Error, Mirror, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;

/// A pool of 2 MiB chunks, 64 MiB of address space, on `device`.
fn small(rt: &Runtime, device: i32) -> Pool {
    raw::set_device(rt, device).unwrap();
    Pool::new(rt, device, PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 64 * MIB, ..PoolConfig::default() })
        .unwrap()
}

fn desc_of(pool: &Pool, a: &Allocation) -> String {
    pool.descriptor(a).unwrap().to_hex()
}

fn parse(hex: &str) -> AllocDesc {
    AllocDesc::from_hex(hex).unwrap()
}

fn attach(rt: &Runtime, device: i32) -> Mirror {
    let desc: ShareDesc = hear_as("share");
    raw::set_device(rt, device).unwrap();
    Mirror::attach(rt, &desc, device).unwrap()
}

#[test]
fn a_mirror_on_another_device_reads_and_writes_the_owners_memory() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                let a = pool.alloc(3 * MIB).unwrap();
                fill(rt, a.as_ptr(), a.len(), 1);
                let desc = pool.share(ShareConfig::default()).unwrap();
                say(format!("share {desc}"));
                say(format!("alloc {}", desc_of(&pool, &a)));
                // The worker wrote its pattern: we read it.
                hear_word("written");
                assert!(holds(rt, a.as_ptr(), a.len(), 2), "the owner reads what the worker wrote");
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            "worker" => {
                let m = attach(rt, 1);
                let d = parse(&hear_word("alloc"));
                let p = m.ptr(&d).unwrap();
                assert_eq!(p as usize, m.base() + d.offset() as usize);
                assert!(holds(rt, p, d.len(), 1), "the worker on device 1 reads what the owner wrote on device 0");
                fill(rt, p, d.len(), 2);
                say("written");
                when_done(|| m.close().unwrap());
            }
            other => panic!("no role {other:?}"),
        },
        |sc| {
            sc.shared().crew("owner", &["worker"]).run("> share, > alloc, < written");
        },
    );
}

/// Descriptors with the seed of the data behind each, as one line.
fn encode_descs(descs: &[(AllocDesc, u64)]) -> String {
    descs.iter().map(|(d, seed)| format!("{seed}:{}", d.to_hex())).collect::<Vec<_>>().join(",")
}

fn decode_descs(line: &str) -> Vec<(AllocDesc, u64)> {
    line.split(',')
        .map(|item| {
            let (seed, hex) = item.split_once(':').unwrap();
            (parse(hex), seed.parse().unwrap())
        })
        .collect()
}

const IMPORT: &str = "aclrtMemImportFromShareableHandle";
const EXPORT: &str = "aclrtMemExportToShareableHandle";

#[test]
fn mirrors_follow_growth_and_trim_with_one_export_per_chunk_and_one_import_per_chunk_per_mirror() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                let desc = pool.share(ShareConfig::default()).unwrap();
                say(format!("share {desc}"));
                hear_word("attached");
                assert_eq!(pool.share_stats().unwrap().mirrors, 2);
                let before = sim_calls(rt);
                let mut live: Vec<Allocation> =
                    (0..1000).map(|i| pool.alloc((8 << 10) + (i % 7) * 1024).unwrap()).collect();
                live.push(pool.alloc(5 * MIB).unwrap());
                let grown = pool.stats().chunks_grown;
                assert!(grown >= 8, "{grown} chunks");
                // Per chunk: allocate, map, export once, whitelist each of the two mirrors. Nothing per allocation.
                assert_eq!(
                    calls_since(&before, &sim_calls(rt)),
                    vec![
                        ("aclrtMallocPhysical", grown),
                        ("aclrtMapMem", grown),
                        (EXPORT, grown),
                        ("aclrtMemSetPidToShareableHandle", 2 * grown),
                    ]
                );
                // Descriptors cost no runtime call.
                let before = sim_calls(rt);
                let descs: Vec<(AllocDesc, u64)> = live
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 100 == 0 || *i == 1000)
                    .map(|(i, a)| (pool.descriptor(a).unwrap(), i as u64))
                    .collect();
                assert!(calls_since(&before, &sim_calls(rt)).is_empty());
                for (d, seed) in &descs {
                    let a = live.iter().find(|a| a.offset() == d.offset()).unwrap();
                    fill(rt, a.as_ptr(), a.len(), *seed);
                }
                say(format!("descs {}", encode_descs(&descs)));
                hear_word("verified");
                // Everything goes, and every chunk is trimmed: the mirrors let them go, then the owner frees them.
                for a in live {
                    pool.free(a).unwrap();
                }
                assert_eq!(u64::from(pool.trim().unwrap()), grown);
                eventually("both mirrors acknowledged the trim", || pool.share_stats().unwrap().retired_pending == 0);
                assert_eq!(sim_count(rt, "aclrtFreePhysical"), grown);
                eventually("no physical memory is left anywhere", || raw::sim_get_stats(rt).unwrap().physObjects == 0);
                say(format!("trimmed {grown}"));
                hear_word("checked");
                let a = pool.alloc(MIB).unwrap();
                assert_eq!(a.offset(), 0, "regrown where the old chunks were");
                fill(rt, a.as_ptr(), a.len(), 77);
                say(format!("regrown {}", encode_descs(&[(pool.descriptor(&a).unwrap(), 77)])));
                hear_word("seen");
                assert_eq!(sim_count(rt, EXPORT), grown + 1, "one export per chunk, ever");
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            w => {
                let device = if w == "worker1" { 1 } else { 0 };
                let m = attach(rt, device);
                say("attached");
                let descs = decode_descs(&hear_word("descs"));
                for (d, seed) in &descs {
                    let p = m.ptr(d).unwrap();
                    assert!(holds(rt, p, d.len(), *seed), "{d:?}");
                }
                let chunks = u64::from(m.stats().chunks);
                // One import and one map per chunk, however many allocations and descriptors.
                assert_eq!((sim_count(rt, IMPORT), sim_count(rt, "aclrtMapMem")), (chunks, chunks));
                assert_eq!(m.stats().imports, chunks);
                // Once mapped, a descriptor is a pointer with no runtime call.
                let before = sim_calls(rt);
                for _ in 0..100 {
                    for (d, _) in &descs {
                        m.ptr(d).unwrap();
                    }
                }
                assert!(calls_since(&before, &sim_calls(rt)).is_empty());
                say("verified");
                let grown: u64 = hear_word("trimmed").parse().unwrap();
                assert_eq!(chunks, grown, "the mirror had every chunk");
                eventually("the mirror let every chunk go", || m.stats().chunks == 0);
                for (d, _) in &descs {
                    assert!(matches!(m.ptr(d), Err(Error::StaleDescriptor { .. })), "{d:?} after trim");
                }
                assert_eq!((sim_count(rt, "aclrtUnmapMem"), sim_count(rt, "aclrtFreePhysical")), (grown, grown));
                assert_eq!(ImportRegistry::global().imports(), 0);
                say("checked");
                let (d, seed) = decode_descs(&hear_word("regrown"))[0];
                // Newer than the mirror: ptr syncs first.
                let p = m.ptr(&d).unwrap();
                assert!(holds(rt, p, d.len(), seed));
                assert_eq!(sim_count(rt, IMPORT), grown + 1);
                for (old, _) in &descs {
                    assert!(m.ptr(old).is_err(), "an old descriptor never names the new chunk");
                }
                say("seen");
                when_done(|| m.close().unwrap());
            }
        },
        |sc| {
            sc.shared()
                .crew("owner", &["worker1", "worker0"])
                .run("> share, < attached, > descs, < verified, > trimmed, < checked, > regrown, < seen");
        },
    );
}

#[test]
fn descriptors_of_other_pools_out_of_bounds_from_the_future_stale_or_forged_are_refused() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let p1 = small(rt, 0);
                let p2 = small(rt, 0);
                let a = p1.alloc(3 * MIB).unwrap();
                let b = p2.alloc(MIB).unwrap();
                assert!(matches!(p1.descriptor(&a), Err(Error::NotShared)));
                let s1 = p1.share(ShareConfig::default()).unwrap();
                let s2 = p2.share(ShareConfig::default()).unwrap();
                assert_eq!(p1.share(ShareConfig::default()).unwrap(), s1, "sharing again returns the same");
                assert!(matches!(p1.descriptor(&b), Err(Error::WrongPool { .. })));
                fill(rt, a.as_ptr(), a.len(), 3);
                say(format!("share {s1}"));
                say(format!(
                    "descs {}",
                    encode_descs(&[(p1.descriptor(&a).unwrap(), 3), (p2.descriptor(&b).unwrap(), 0)])
                ));
                hear_word("checked");
                // Free, trim, regrow over the same addresses.
                p1.free(a).unwrap();
                assert!(matches!(p1.descriptor(&a), Err(Error::NotAllocated { .. })));
                p1.trim().unwrap();
                let a2 = p1.alloc(3 * MIB).unwrap();
                assert_eq!(a2.offset(), a.offset());
                fill(rt, a2.as_ptr(), a2.len(), 4);
                say(format!("regrown {}", encode_descs(&[(p1.descriptor(&a2).unwrap(), 4)])));
                hear_word("seen");
                p1.free(a2).unwrap();
                p2.free(b).unwrap();
                p1.close().unwrap();
                p2.close().unwrap();
                drop(s2);
                say("ok");
            }
            _ => {
                let m = attach(rt, 1);
                let descs = decode_descs(&hear_word("descs"));
                let (a, other) = (descs[0].0, descs[1].0);
                assert!(holds(rt, m.ptr(&a).unwrap(), a.len(), 3));
                let bad = |d: AllocDesc, what: &str| {
                    let r = m.ptr(&d);
                    assert!(matches!(r, Err(Error::BadDescriptor(_))), "{what}: {r:?}");
                };
                bad(other, "another pool's descriptor");
                let forge = |offset: u64, len: u64, generation: u64, fp: u64| {
                    AllocDesc::from_parts(a.pool(), generation, offset, len, fp)
                };
                bad(forge(1 << 40, 4096, a.generation(), a.fingerprint()), "an offset beyond the pool");
                bad(forge(64 * MIB - 4096, 8192, a.generation(), a.fingerprint()), "a length past the pool's end");
                bad(forge(a.offset(), 0, a.generation(), a.fingerprint()), "no length");
                bad(forge(a.offset(), a.len(), a.generation() + 1000, a.fingerprint()), "a generation never reached");
                let r = m.ptr(&forge(a.offset(), a.len(), a.generation(), a.fingerprint() ^ 1));
                assert!(matches!(r, Err(Error::StaleDescriptor { .. })), "a forged fingerprint: {r:?}");
                // A chunk that is not mapped at all.
                let r = m.ptr(&forge(40 * MIB, 4096, a.generation(), a.fingerprint()));
                assert!(matches!(r, Err(Error::StaleDescriptor { .. })), "an unmapped chunk: {r:?}");
                let mut bytes = a.to_bytes();
                bytes[30] ^= 1;
                assert!(matches!(AllocDesc::from_bytes(&bytes), Err(Error::BadDescriptor(_))), "a damaged byte");
                say("checked");
                let (a2, seed) = decode_descs(&hear_word("regrown"))[0];
                let p = m.ptr(&a2).unwrap();
                assert!(holds(rt, p, a2.len(), seed));
                let r = m.ptr(&a);
                assert!(matches!(r, Err(Error::StaleDescriptor { .. })), "freed, trimmed and regrown: {r:?}");
                say("seen");
                when_done(|| m.close().unwrap());
            }
        },
        |sc| {
            sc.shared().crew("owner", &["worker"]).run("> share, > descs, < checked, > regrown, < seen");
        },
    );
}

#[test]
fn a_process_imports_a_chunk_once_for_all_its_mirrors_and_never_its_own_export() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                let a = pool.alloc(5 * MIB).unwrap();
                fill(rt, a.as_ptr(), a.len(), 8);
                let desc = pool.share(ShareConfig::default()).unwrap();
                // The exporting process may not import what it exported: refused before the runtime is asked.
                let r = Mirror::attach(rt, &desc, 1);
                assert!(matches!(r, Err(Error::NotPermitted(_))), "{r:?}");
                assert_eq!(sim_count(rt, IMPORT), 0);
                eventually("the refused mirror is forgotten", || pool.share_stats().unwrap().mirrors == 0);
                say(format!("share {desc}"));
                say(format!("descs {}", encode_descs(&[(pool.descriptor(&a).unwrap(), 8)])));
                hear_word("done");
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            _ => {
                let m1 = attach(rt, 1);
                let (d, seed) = decode_descs(&hear_word("descs"))[0];
                let desc: ShareDesc = hear_as("share");
                let m2 = Mirror::attach(rt, &desc, 1).unwrap();
                let chunks = u64::from(m1.stats().chunks);
                assert_eq!(chunks, 3);
                assert_eq!(sim_count(rt, IMPORT), chunks, "two mirrors, one import per chunk");
                assert_eq!(ImportRegistry::global().imports(), 3);
                let (p1, p2) = (m1.ptr(&d).unwrap(), m2.ptr(&d).unwrap());
                assert_ne!(p1, p2, "each mirror maps at its own addresses");
                assert!(holds(rt, p1, d.len(), seed) && holds(rt, p2, d.len(), seed));
                fill(rt, p1, d.len(), 9);
                assert!(holds(rt, p2, d.len(), 9), "one memory behind both");
                // A handle is imported once per process: a mirror on another device of this process is refused.
                let r = Mirror::attach(rt, &desc, 0);
                assert!(matches!(r, Err(Error::NotPermitted(_))), "{r:?}");
                assert_eq!(sim_count(rt, IMPORT), chunks);
                m1.close().unwrap();
                assert_eq!(ImportRegistry::global().imports(), 3, "still imported for the other mirror");
                assert!(holds(rt, m2.ptr(&d).unwrap(), d.len(), 9));
                m2.close().unwrap();
                assert_eq!(ImportRegistry::global().imports(), 0);
                assert_eq!(sim_count(rt, "aclrtFreePhysical"), chunks, "freed once each, by the last user");
                say("ok");
            }
        },
        |sc| {
            // The worker hears the share twice: once for each of its mirrors.
            let mut crew = sc.shared().crew("owner", &["worker"]);
            let desc = crew.down("share");
            crew.down("descs");
            crew.workers[0].send(format!("share {desc}"));
            crew.workers[0].expect("ok");
            crew.owner.send("done");
            crew.owner.expect("ok");
            crew.join();
        },
    );
}

/// Speak the rendezvous protocol by hand: Hello with `tgid`, return the answer (and the connection).
fn hello(desc: &ShareDesc, tgid: i32) -> (Message, UnixStream) {
    let mut conn = UnixStream::connect(&desc.socket).unwrap();
    Message::Hello { version: PROTOCOL_VERSION, tgid, device: 1 }.send(&mut conn).unwrap();
    conn.flush().unwrap();
    (Message::recv(&mut conn).unwrap().expect("an answer"), conn)
}

#[test]
fn only_whitelisted_processes_import_unless_pid_validation_is_turned_off() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let checked = small(rt, 0);
                let open = small(rt, 0);
                let a = checked.alloc(MIB).unwrap();
                let b = open.alloc(MIB).unwrap();
                say(format!("share {}", checked.share(ShareConfig::default()).unwrap()));
                let off = ShareConfig { validate_pids: false, ..ShareConfig::default() };
                say(format!("open {}", open.share(off).unwrap()));
                hear_word("done");
                assert_eq!(sim_count(rt, "aclrtMemSetPidToShareableHandle"), 0, "nobody was admitted");
                checked.free(a).unwrap();
                open.free(b).unwrap();
                checked.close().unwrap();
                open.close().unwrap();
                say("ok");
            }
            _ => {
                raw::set_device(rt, 1).unwrap();
                let me = raw::device_get_bare_tgid(rt).unwrap();
                let checked: ShareDesc = hear_as("share");
                let open: ShareDesc = hear_as("open");
                // The table is readable by this user: learning a shareable handle is easy. Importing it is not.
                let handles = published_handles(&checked).unwrap();
                assert_eq!(handles.len(), 1);
                let r = raw::mem_import_from_shareable_handle(rt, handles[0], 1);
                assert_eq!(code(r), aclshm::sys::ACL_ERROR_RT_DRV_INTERNAL_ERROR, "not whitelisted");
                // Claiming to be another process is refused by the rendezvous (the kernel says who we are).
                match hello(&checked, me + 1).0 {
                    Message::Refused { reason } => assert!(reason.contains("kernel"), "{reason}"),
                    other => panic!("a lie was answered with {other:?}"),
                }
                let r = raw::mem_import_from_shareable_handle(rt, handles[0], 1);
                assert_eq!(code(r), aclshm::sys::ACL_ERROR_RT_DRV_INTERNAL_ERROR, "still not whitelisted");
                // Without pid validation (the explicit opt-out), knowing the handle is enough.
                let handles = published_handles(&open).unwrap();
                let h = raw::mem_import_from_shareable_handle(rt, handles[0], 1).unwrap();
                // SAFETY: just imported, not mapped.
                unsafe { raw::free_physical(rt, h) }.unwrap();
                say("ok");
            }
        },
        |sc| {
            let mut crew = sc.shared().crew("owner", &["outsider"]);
            crew.play("> share, > open");
            crew.workers[0].expect("ok");
            crew.owner.send("done");
            crew.owner.expect("ok");
            crew.join();
        },
    );
}

#[test]
fn a_retired_chunk_is_kept_until_every_attached_mirror_acknowledged_it() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                say(format!("share {}", pool.share(ShareConfig::default()).unwrap()));
                hear_word("admitted");
                let a = pool.alloc(MIB).unwrap();
                say("grown");
                hear_word("read");
                pool.free(a).unwrap();
                assert_eq!(pool.trim().unwrap(), 1);
                // The worker has not acknowledged the generation the chunk was published in: it may still
                // import it, so the handle is kept.
                let st = pool.share_stats().unwrap();
                assert_eq!((st.retired_pending, st.mirrors), (1, 1));
                assert_eq!(sim_count(rt, "aclrtFreePhysical"), 0);
                say(format!("trimmed {}", st.generation));
                hear_word("acked");
                eventually("the acknowledged chunk is freed", || pool.share_stats().unwrap().retired_pending == 0);
                assert_eq!(sim_count(rt, "aclrtFreePhysical"), 1);
                pool.close().unwrap();
                say("ok");
            }
            _ => {
                raw::set_device(rt, 1).unwrap();
                let desc: ShareDesc = hear_as("share");
                // A slow worker: admitted, but it acknowledges nothing until told to.
                let (welcome, mut conn) = hello(&desc, raw::device_get_bare_tgid(rt).unwrap());
                assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
                say("admitted");
                hear_word("grown");
                let handles = published_handles(&desc).unwrap();
                assert_eq!(handles.len(), 1);
                say("read");
                let generation: u64 = hear_word("trimmed").parse().unwrap();
                // Retired, but not freed: the import still works.
                let h = raw::mem_import_from_shareable_handle(rt, handles[0], 1).unwrap();
                // SAFETY: just imported, not mapped.
                unsafe { raw::free_physical(rt, h) }.unwrap();
                Message::Ack { generation }.send(&mut conn).unwrap();
                say("acked");
                hear_word("done");
                drop(conn);
                say("ok");
            }
        },
        |sc| {
            sc.shared().crew("owner", &["worker"]).run("> share, < admitted, > grown, < read, > trimmed, < acked");
        },
    );
}

#[test]
fn a_killed_worker_holds_nothing_up_and_the_others_carry_on() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                say(format!("share {}", pool.share(ShareConfig::default()).unwrap()));
                hear_word("attached");
                let live: Vec<Allocation> = (0..4).map(|_| pool.alloc(3 * MIB).unwrap()).collect();
                for (i, a) in live.iter().enumerate() {
                    fill(rt, a.as_ptr(), a.len(), i as u64);
                }
                let descs: Vec<(AllocDesc, u64)> =
                    live.iter().enumerate().map(|(i, a)| (pool.descriptor(a).unwrap(), i as u64)).collect();
                say(format!("descs {}", encode_descs(&descs)));
                hear_word("killed");
                // The dead worker's connection closed: it is forgotten, and nothing waits for it.
                eventually("the dead worker is forgotten", || pool.share_stats().unwrap().mirrors == 1);
                let mut live = live.into_iter();
                let keep = live.next().unwrap();
                for a in live {
                    pool.free(a).unwrap();
                }
                assert!(pool.trim().unwrap() >= 3);
                eventually("the trimmed chunks are freed", || pool.share_stats().unwrap().retired_pending == 0);
                let c = pool.alloc(3 * MIB).unwrap();
                fill(rt, c.as_ptr(), c.len(), 50);
                say(format!("more {}", encode_descs(&[(pool.descriptor(&c).unwrap(), 50)])));
                hear_word("read");
                assert!(holds(rt, keep.as_ptr(), keep.len(), 60), "the surviving worker's write");
                pool.free(keep).unwrap();
                pool.free(c).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            w => {
                let m = attach(rt, if w == "doomed" { 1 } else { 0 });
                say("attached");
                let descs = decode_descs(&hear_word("descs"));
                if w == "doomed" {
                    // Busy writing into allocation 1 when it is killed.
                    let (d, _) = descs[1];
                    let p = m.ptr(&d).unwrap() as usize;
                    say("busy");
                    for i in 0.. {
                        fill(rt, p as *mut _, d.len(), 1000 + i);
                    }
                    unreachable!();
                }
                let (d, seed) = descs[0];
                let p = m.ptr(&d).unwrap();
                assert!(holds(rt, p, d.len(), seed));
                say("ready");
                let (more, seed) = decode_descs(&hear_word("more"))[0];
                assert!(holds(rt, m.ptr(&more).unwrap(), more.len(), seed), "new memory after the crash");
                assert!(holds(rt, p, d.len(), 0), "untouched by the crash");
                fill(rt, p, d.len(), 60);
                say("read");
                when_done(|| m.close().unwrap());
            }
        },
        |sc| {
            let mut crew = sc.shared().crew("owner", &["doomed", "survivor"]);
            crew.play("> share, < attached, > descs");
            crew.workers[0].expect("busy");
            crew.workers[1].expect("ready");
            crew.workers.remove(0).kill();
            crew.owner.send("killed");
            crew.play("> more, < read");
            crew.finish();
        },
    );
}

#[test]
fn a_killed_owner_leaves_workers_their_mappings_until_they_release() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                let a = pool.alloc(3 * MIB).unwrap();
                fill(rt, a.as_ptr(), a.len(), 5);
                say(format!("share {}", pool.share(ShareConfig::default()).unwrap()));
                say(format!("descs {}", encode_descs(&[(pool.descriptor(&a).unwrap(), 5)])));
                // Wait to be killed.
                hear_word("never");
            }
            _ => {
                let m = attach(rt, 1);
                let (d, seed) = decode_descs(&hear_word("descs"))[0];
                let p = m.ptr(&d).unwrap();
                assert!(holds(rt, p, d.len(), seed));
                say("mapped");
                hear_word("killed");
                eventually("the mirror notices its owner died", || m.owner_closed());
                assert!(holds(rt, p, d.len(), seed), "still mapped, still the same bytes");
                fill(rt, p, d.len(), 6);
                assert!(holds(rt, m.ptr(&d).unwrap(), d.len(), 6));
                assert!(raw::sim_get_stats(rt).unwrap().physObjects >= 2, "the memory lives while we map it");
                m.close().unwrap();
                let st = raw::sim_get_stats(rt).unwrap();
                assert_eq!((st.physObjects, st.localHandles, st.localMappings), (0, 0, 0), "released with the mirror");
                say("ok");
            }
        },
        |sc| {
            let mut crew = sc.shared().crew("owner", &["worker"]);
            crew.play("> share, > descs");
            crew.workers[0].expect("mapped");
            crew.owner.kill();
            crew.workers[0].send("killed");
            crew.workers[0].expect("ok");
            crew.join();
        },
    );
}

/// The share directory's entries.
fn share_files() -> Vec<String> {
    let dir = std::env::var("ACLSHM_SHARE_DIR").unwrap();
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether `r` failed with the fault the tests inject.
fn injected<T>(r: &aclshm::Result<T>) -> bool {
    matches!(r, Err(e) if e.acl_code() == Some(aclshm::AclError::DRV_INTERNAL_ERROR))
}

#[test]
fn failures_while_sharing_roll_back_and_leave_nothing_behind() {
    use aclshm::AclError;
    let fault = |rt: &Runtime, f: &str| raw::sim_inject_fault(rt, f, 1, 1, AclError::DRV_INTERNAL_ERROR).unwrap();
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let pool = small(rt, 0);
                let a = pool.alloc(MIB).unwrap();
                // The export of the existing chunk fails: no sharing, no files.
                fault(rt, EXPORT);
                let r = pool.share(ShareConfig::default());
                assert!(injected(&r), "{r:?}");
                assert!(pool.share_stats().is_none());
                assert_eq!(share_files(), Vec::<String>::new());
                let desc = pool.share(ShareConfig::default()).unwrap();
                assert_eq!(share_files().len(), 2, "a table and a socket: {:?}", share_files());
                say(format!("share {desc}"));
                hear_word("attached");
                // A chunk whose export or whitelisting fails is rolled back: not mapped, not published.
                for f in [EXPORT, "aclrtMemSetPidToShareableHandle"] {
                    let before = (pool.stats().chunks, pool.share_stats().unwrap());
                    fault(rt, f);
                    let r = pool.alloc(2 * MIB);
                    assert!(injected(&r), "{f}: {r:?}");
                    assert_eq!((pool.stats().chunks, pool.share_stats().unwrap()), before, "{f}");
                }
                let b = pool.alloc(2 * MIB).unwrap();
                fill(rt, b.as_ptr(), b.len(), 12);
                say(format!("descs {}", encode_descs(&[(pool.descriptor(&b).unwrap(), 12)])));
                hear_word("read");
                pool.free(a).unwrap();
                pool.free(b).unwrap();
                pool.close().unwrap();
                assert_eq!(share_files(), Vec::<String>::new(), "closing removes the table and the socket");
                say("ok");
            }
            _ => {
                let desc: ShareDesc = hear_as("share");
                raw::set_device(rt, 1).unwrap();
                // The first import fails: no mirror, nothing imported, and attaching again works.
                fault(rt, IMPORT);
                let r = Mirror::attach(rt, &desc, 1);
                assert!(injected(&r), "{r:?}");
                assert_eq!(ImportRegistry::global().imports(), 0);
                let st = raw::sim_get_stats(rt).unwrap();
                assert_eq!((st.localHandles, st.localMappings, st.localReservations), (0, 0, 0));
                let m = Mirror::attach(rt, &desc, 1).unwrap();
                say("attached");
                let (d, seed) = decode_descs(&hear_word("descs"))[0];
                assert!(holds(rt, m.ptr(&d).unwrap(), d.len(), seed));
                say("read");
                when_done(|| m.close().unwrap());
            }
        },
        |sc| {
            sc.shared().crew("owner", &["worker"]).run("> share, < attached, > descs, < read");
        },
    );
}
