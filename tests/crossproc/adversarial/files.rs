//! Shared files damaged under live processes: a chunk table truncated, written over, left mid-write by a
//! stray writer or by an owner killed halfway, replaced by a link or a FIFO; a KV block table truncated or
//! scribbled on; a worker's pin file truncated under the owner; files planted in the share directory.
//! The test process is the vandal: it changes the files directly, as another process of the same user
//! could. No process may crash (SIGBUS on a shrunk mapping included), hang, or leave anything behind;
//! the damage reaches the API as typed errors.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aclshm::{Error, KvBlock, KvConfig, KvDesc, KvMirror, KvPool, Mirror, ShareConfig, ShareDesc, raw};

use super::{MIB, Tally, attach_and_check, ensure, owner_with_data, small};
use crate::harness::*;
use crate::test_name;

/// Where a chunk table keeps its sequence word: the shared-file prefix (16 bytes), then slots, device
/// (4 each), chunk size, token and export flags (8 each).
const SEQ_AT: u64 = 48;

fn truncate(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

fn read_u32(path: &Path, at: u64) -> u32 {
    let mut b = [0u8; 4];
    OpenOptions::new().read(true).open(path).unwrap().read_exact_at(&mut b, at).unwrap();
    u32::from_le_bytes(b)
}

/// A child's verdict on one step, as a line: `held` or the reason it did not.
fn verdict(r: Result<(), String>) -> String {
    match r {
        Ok(()) => "held".into(),
        Err(why) => format!("broken {why}"),
    }
}

/// Count a child's verdict line in the tally.
fn count(t: &mut Tally, name: &str, line: String) {
    t.attack(name, || match line.strip_prefix("broken ") {
        None if line == "held" => Ok(()),
        None => Err(format!("unexpected {line:?}")),
        Some(why) => Err(why.to_string()),
    });
}

/// The owner of a shared pool with one allocation filled with a pattern, answering the vandal's steps.
fn owner(rt: &aclshm::Runtime) {
    let (pool, a) = owner_with_data(rt, 9);
    loop {
        match hear().as_str() {
            // Growing publishes into the table, whatever happened to it: the owner must not die of it.
            "grow" => {
                let r = pool
                    .alloc(3 * MIB)
                    .map_err(|e| e.to_string())
                    .and_then(|b| pool.free(b).map_err(|e| e.to_string()));
                say(format!("grew {}", verdict(r)));
            }
            "done" => break,
            other => panic!("owner: {other:?}"),
        }
    }
    pool.free(a).unwrap();
    pool.close().unwrap();
    say("ok");
}

/// A worker attached to the owner's pool, answering the vandal's steps.
fn worker(rt: &aclshm::Runtime) {
    let (m, d) = attach_and_check(rt, 9).unwrap();
    say("attached");
    loop {
        match hear().as_str() {
            // After damage: a sync is a typed error, promptly; what is mapped stays readable.
            "sync" => {
                let start = Instant::now();
                let r = match m.sync() {
                    Err(Error::Protocol(m)) if m.contains("chunk table") => Ok(()),
                    other => Err(format!("sync gave {other:?}")),
                }
                .and_then(|()| {
                    let p = m.ptr(&d).map_err(|e| e.to_string())?;
                    ensure(holds(rt, p, d.len(), 9), || "the mapped bytes changed".into())
                });
                say(format!("synced {} {}", start.elapsed().as_millis(), verdict(r)));
            }
            "done" => break,
            other => panic!("worker: {other:?}"),
        }
    }
    // Closing never waits on the damaged table; it reports what the follower ran into meanwhile.
    match m.close() {
        Ok(()) => {}
        Err(Error::Deferred(errors)) => {
            assert!(errors.iter().all(|e| matches!(e, Error::Protocol(_))), "{errors:?}")
        }
        Err(e) => panic!("close: {e}"),
    }
    say("ok");
}

/// A worker that tries to attach (after the damage): a typed error, promptly.
fn latecomer(rt: &aclshm::Runtime) {
    let desc: ShareDesc = hear_as("share");
    raw::set_device(rt, 1).unwrap();
    let r = match Mirror::attach(rt, &desc, 1) {
        Err(Error::Protocol(_) | Error::Io { .. } | Error::Refused(_)) => Ok(()),
        Err(e) => Err(format!("attach gave {e}")),
        Ok(m) => {
            let _ = m.close();
            Err("attached to a damaged table".into())
        }
    };
    say(format!("tried {}", verdict(r)));
    say("ok");
}

fn roles(rt: &aclshm::Runtime, role: &str) {
    match role {
        "owner" => owner(rt),
        "worker" => worker(rt),
        _ => latecomer(rt),
    }
}

/// An owner and an attached worker; `damage` vandalises the table; then the worker syncs, the owner
/// grows, a latecomer tries to attach, and everyone closes.
fn vandalise(sc: Scenario, t: &mut Tally, what: &str, damage: impl FnOnce(&Path, &mut Peer)) {
    let sc = sc.shared();
    let mut owner = sc.spawn("owner");
    let mut worker = sc.spawn("worker");
    let share = owner.relay("share", &mut worker);
    owner.relay("desc", &mut worker);
    worker.expect("attached");
    let table = aclshm::share::table_path(&share.parse().unwrap());
    damage(&table, &mut owner);
    worker.send("sync");
    let synced = worker.expect("synced");
    let (_ms, v) = synced.split_once(' ').unwrap();
    count(t, &format!("{what}: a worker's sync"), v.to_string());
    if !owner.exited() {
        owner.send("grow");
        count(t, &format!("{what}: the owner grows"), owner.expect("grew"));
    }
    let mut late = sc.spawn("latecomer");
    late.send(format!("share {share}"));
    count(t, &format!("{what}: a new worker attaches"), late.expect("tried"));
    late.expect("ok");
    late.join();
    worker.send("done");
    worker.expect("ok");
    worker.join();
    if !owner.exited() {
        owner.send("done");
        owner.expect("ok");
        owner.join();
    }
    sc.finish();
}

#[test]
fn a_chunk_table_damaged_under_its_readers_is_a_typed_error_for_them() {
    by_role(test_name!(), roles, |sc| {
        let mut t = Tally::default();
        vandalise(sc.another(), &mut t, "truncated to nothing", |table, _| truncate(table, 0));
        vandalise(sc.another(), &mut t, "truncated to its header", |table, _| truncate(table, 64));
        vandalise(sc.another(), &mut t, "magic written over", |table, _| write_at(table, 0, b"NOTATABL"));
        vandalise(sc.another(), &mut t, "token written over", |table, _| write_at(table, 32, &[0xee; 8]));
        // Issue 17 #3: an odd sequence word made readers spin for ever. A stray writer (the owner is alive
        // and not writing): readers give up after a bounded wait.
        vandalise(sc.another(), &mut t, "left odd by a stray writer", |table, _| {
            let seq = read_u32(table, SEQ_AT);
            write_at(table, SEQ_AT, &(seq | 1).to_le_bytes());
        });
        // The owner killed between the two increments of its write: what it leaves. Readers know at once.
        vandalise(sc.another(), &mut t, "left odd by an owner killed mid-write", |table, owner| {
            let seq = read_u32(table, SEQ_AT);
            write_at(table, SEQ_AT, &(seq | 1).to_le_bytes());
            owner.kill();
        });
        t.report("chunk tables");
    });
}

/// The table replaced by something else before a worker attaches: a link, a FIFO, a directory.
#[test]
fn a_chunk_table_replaced_by_a_link_a_fifo_or_a_directory_is_refused() {
    by_role(test_name!(), roles, |sc| {
        let mut t = Tally::default();
        type Replace = fn(&Path);
        let replacements: [(&str, Replace); 3] = [
            ("a link", |p| std::os::unix::fs::symlink("/etc/passwd", p).unwrap()),
            ("a FIFO", |p| {
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                // SAFETY: a valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
            ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ];
        for (what, replace) in replacements {
            let sc = sc.another().shared();
            let mut owner = sc.spawn("owner");
            let share = owner.expect("share");
            owner.expect("desc");
            let table = aclshm::share::table_path(&share.parse().unwrap());
            let moved: PathBuf = table.with_extension("moved");
            std::fs::rename(&table, &moved).unwrap();
            replace(&table);
            let mut late = sc.spawn("latecomer");
            late.send(format!("share {share}"));
            count(&mut t, &format!("the table replaced by {what}"), late.expect("tried"));
            late.expect("ok");
            late.join();
            // Put the real table back for the owner to remove.
            let _ = std::fs::remove_file(&table).or_else(|_| std::fs::remove_dir(&table));
            std::fs::rename(&moved, &table).unwrap();
            owner.send("done");
            owner.expect("ok");
            owner.join();
            sc.finish();
        }
        t.report("replaced tables");
    });
}

/// The KV files: a worker's pin file truncated under the owner, the block table scribbled on and
/// truncated under the worker, files planted in the share directory.
#[test]
fn kv_files_damaged_under_the_scheduler_and_its_worker() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "scheduler" => kv_scheduler(rt),
            _ => kv_worker(rt),
        },
        |sc| {
            let sc = sc.shared();
            let share_dir = sc.share_dir().expect("shared").to_path_buf();
            let mut t = Tally::default();
            let mut sched = sc.spawn("scheduler");
            let mut worker = sc.spawn("worker");
            let kv = sched.relay("kv", &mut worker);
            sched.relay("blocks", &mut worker);
            worker.expect("pinned");
            sched.send("pinned");
            let token = kv.parse::<KvDesc>().unwrap().share().token;
            let blocks_file = share_dir.join(format!("kv-{token:016x}.blocks"));
            let pins: Vec<PathBuf> = std::fs::read_dir(&share_dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pins"))
                .collect();
            assert_eq!(pins.len(), 1, "{pins:?}");
            truncate(&pins[0], 0);
            // Planted in the private directory under names of the pool's own: garbage, a link, a FIFO.
            std::fs::write(share_dir.join(format!("kv-{token:016x}-garbage.pins")), vec![0x5a; 4096]).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", share_dir.join(format!("kv-{token:016x}-link.pins"))).unwrap();
            sched.send("damaged");
            count(&mut t, "a pin file truncated under the scheduler", sched.recv());
            write_at(&blocks_file, 64, &[0x3c; 48]);
            worker.send("scribbled");
            count(&mut t, "block generations written over under a worker", worker.recv());
            truncate(&blocks_file, 0);
            worker.send("truncated");
            count(&mut t, "the block table truncated under a worker", worker.recv());
            worker.send("done");
            worker.expect("ok");
            worker.join();
            sched.send("done");
            sched.expect("ok");
            sched.join();
            // Closing swept what was planted: finish checks the share directory is empty.
            sc.finish();
            t.report("KV files");
        },
    );
}

fn kv_scheduler(rt: &aclshm::Runtime) {
    raw::set_device(rt, 0).unwrap();
    let kv =
        KvPool::new(rt, 0, KvConfig { block_bytes: 256 << 10, pool: small(), share: ShareConfig::default() }).unwrap();
    let blocks = kv.alloc_many(12).unwrap();
    say(format!("kv {}", kv.desc()));
    say(format!("blocks {}", words(&blocks)));
    hear_word("pinned");
    hear_word("damaged");
    // The worker's pin file is gone to pieces: its pins count for nothing, the scheduler goes on.
    let r = kv.free_many(&blocks).map_err(|e| e.to_string()).and_then(|()| {
        let s = kv.stats();
        ensure(s.allocated == 0, || format!("{} blocks still allocated", s.allocated))
    });
    say(verdict(r));
    hear_word("done");
    kv.close().unwrap();
    say("ok");
}

fn kv_worker(rt: &aclshm::Runtime) {
    let desc: KvDesc = hear_as("kv");
    let blocks: Vec<KvBlock> = hear_list("blocks");
    raw::set_device(rt, 1).unwrap();
    let kv = KvMirror::attach(rt, &desc, 1).unwrap();
    kv.pin(&blocks[..4]).unwrap();
    say("pinned");
    hear_word("scribbled");
    // Generations written over: every operation is a typed error or a correct answer.
    let r = blocks.iter().try_for_each(|b| match (kv.ptr(b), kv.pin(&[*b])) {
        (Err(Error::StaleBlock { .. } | Error::BadDescriptor(_)), Err(_)) => Ok(()),
        (Ok(_), Ok(())) => kv.unpin(&[*b]).map_err(|e| e.to_string()),
        other => Err(format!("{b}: {other:?}")),
    });
    say(verdict(r));
    hear_word("truncated");
    let r = match kv.ptr(&blocks[0]) {
        Err(Error::Protocol(m)) if m.contains("truncated") => Ok(()),
        other => Err(format!("{other:?}")),
    };
    say(verdict(r));
    hear_word("done");
    kv.close().unwrap();
    say("ok");
}
