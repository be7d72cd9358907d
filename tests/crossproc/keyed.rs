//! aclshm's safe types for keyed sharing, across real processes: IPC memory by key (close order
//! enforced) and IPC notifies (creator-only waits), each with its refused cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aclshm::raw;
use aclshm::{Error, IpcMemConfig, IpcMemDesc, IpcMemImport, IpcMemory, Notify, Runtime, Stream};

use crate::harness::*;
use crate::test_name;

const MIB: usize = 1 << 20;
const DRV: i32 = aclshm::sys::ACL_ERROR_RT_DRV_INTERNAL_ERROR;

fn config(validate_pids: bool, close_timeout: Duration) -> IpcMemConfig {
    IpcMemConfig { validate_pids, close_timeout, ..IpcMemConfig::default() }
}

fn export(rt: &Runtime, size: usize, seed: u64, cfg: IpcMemConfig) -> IpcMemory {
    let m = IpcMemory::new(rt, 0, size, cfg).unwrap();
    fill(rt, m.as_ptr(), m.len() as u64, seed);
    m
}

#[test]
fn ipc_memory_by_key_closes_importers_first_and_refuses_what_it_must() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "exporter" => {
                raw::set_device(rt, 0).unwrap();
                let long = Duration::from_secs(60);
                assert!(matches!(IpcMemory::new(rt, 0, 0, IpcMemConfig::default()), Err(Error::InvalidArgument(_))));
                // Whole allocations, rounded up to 2 MiB pages.
                let main = export(rt, 3 * MIB, 1, config(true, long));
                assert_eq!(main.len(), 4 * MIB);
                let stubborn = export(rt, MIB, 2, config(true, Duration::from_millis(300)));
                let open = export(rt, MIB, 3, config(false, long));
                let victim = export(rt, MIB, 4, config(true, long));
                let r = open.allow(1);
                assert!(matches!(r, Err(Error::NotPermitted(_))), "no whitelist without pid validation: {r:?}");
                for m in [&main, &stubborn, &open, &victim] {
                    say(format!("desc {}", m.desc()));
                }
                let tgid: i32 = hear_as("tgid");
                let doomed: i32 = hear_as("doomed");
                for m in [&main, &stubborn] {
                    m.allow(tgid).unwrap();
                }
                victim.allow(doomed).unwrap();
                say("allowed");
                hear_word("written");
                assert!(holds(rt, main.as_ptr(), main.len() as u64, 11), "the exporter reads what the importer wrote");
                assert_eq!(main.open_imports().unwrap(), 1);
                // An importer still has `stubborn` open: closing it times out and keeps the memory.
                let keys_before = raw::sim_get_stats(rt).unwrap().ipcKeys;
                let r = stubborn.close();
                assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
                assert_eq!(raw::sim_get_stats(rt).unwrap().ipcKeys, keys_before, "the key stays open");
                say("stubborn");
                // A killed importer does not hold the exporter up.
                hear_word("killed");
                victim.close().unwrap();
                // `main`: close in the background; it may not finish before the importer closed.
                let done = Arc::new(AtomicBool::new(false));
                let closing = {
                    let done = Arc::clone(&done);
                    std::thread::spawn(move || {
                        let r = main.close();
                        done.store(true, Ordering::SeqCst);
                        r
                    })
                };
                say("closing");
                hear_word("about to close");
                assert!(!done.load(Ordering::SeqCst), "the exporter closed before its importer");
                say("go");
                hear_word("closed");
                closing.join().unwrap().unwrap();
                open.close().unwrap();
                let st = raw::sim_get_stats(rt).unwrap();
                assert_eq!((st.ipcKeys, st.localDeviceAllocs), (1, 1), "only the timed-out export is kept");
                say("ok");
            }
            "doomed" => {
                raw::set_device(rt, 1).unwrap();
                say(format!("tgid {}", raw::device_get_bare_tgid(rt).unwrap()));
                let d: IpcMemDesc = hear_as("desc");
                hear_word("allowed");
                let m = IpcMemImport::open(rt, &d, 1).unwrap();
                assert!(holds(rt, m.as_ptr(), m.len() as u64, 4));
                say("imported");
                hear_word("never");
            }
            _ => {
                raw::set_device(rt, 1).unwrap();
                let main: IpcMemDesc = hear_as("desc");
                let stubborn: IpcMemDesc = hear_as("desc");
                let open: IpcMemDesc = hear_as("desc");
                // Not whitelisted yet: the runtime refuses, and the refused import holds no slot.
                let r = IpcMemImport::open(rt, &main, 1);
                assert_eq!(code(r), DRV, "imported before being whitelisted");
                // The opt-out needs no whitelist.
                let o = IpcMemImport::open(rt, &open, 1).unwrap();
                assert!(holds(rt, o.as_ptr(), o.len() as u64, 3));
                o.close().unwrap();
                // A key that was never exported.
                let mut fake = main.clone();
                fake.key = "0".repeat(64).parse().unwrap();
                assert!(IpcMemImport::open(rt, &fake, 1).is_err());
                say(format!("tgid {}", raw::device_get_bare_tgid(rt).unwrap()));
                hear_word("allowed");
                let m = IpcMemImport::open(rt, &main, 1).unwrap();
                assert_eq!(m.len(), 4 * MIB);
                assert!(
                    holds(rt, m.as_ptr(), m.len() as u64, 1),
                    "the importer on device 1 reads the exporter's bytes"
                );
                // Importing a key twice in a process is two imports (the runtime counts them).
                let again = IpcMemImport::open(rt, &main, 1).unwrap();
                assert_eq!(again.as_ptr(), m.as_ptr());
                again.close().unwrap();
                let s = IpcMemImport::open(rt, &stubborn, 1).unwrap();
                fill(rt, m.as_ptr(), m.len() as u64, 11);
                say("written");
                hear_word("stubborn");
                // The exporter gave up closing: the memory is intact, and nobody new may import it.
                assert!(holds(rt, s.as_ptr(), s.len() as u64, 2));
                assert!(matches!(IpcMemImport::open(rt, &stubborn, 1), Err(Error::Closed)));
                s.close().unwrap();
                hear_word("closing");
                // The exporter is closing (its thread started to, that is: it cannot say when the close
                // began): new imports are refused, the open one still works.
                eventually("the exporter refuses new imports", || match IpcMemImport::open(rt, &main, 1) {
                    Err(Error::Closed) => true,
                    Ok(early) => {
                        early.close().unwrap();
                        false
                    }
                    Err(e) => panic!("an import while the exporter closes: {e}"),
                });
                assert!(holds(rt, m.as_ptr(), m.len() as u64, 11));
                say("about to close");
                hear_word("go");
                m.close().unwrap();
                say("closed");
                when_done(|| ());
            }
        },
        |sc| {
            let mut crew = sc.shared().crew("exporter", &["importer"]);
            let mut doomed = crew.scenario().spawn("doomed");
            crew.play("> desc, > desc, > desc");
            crew.owner.relay("desc", &mut doomed);
            crew.play("< tgid");
            crew.owner.send(format!("doomed {}", doomed.expect("tgid")));
            crew.play("> allowed");
            doomed.send("allowed");
            doomed.expect("imported");
            crew.play("< written, > stubborn");
            doomed.kill();
            crew.owner.send("killed");
            crew.play("> closing, < about to close, > go, < closed");
            crew.finish();
        },
    );
}

const ROUNDS: u64 = 50;

/// An import whose close cannot make its device current (the runtime refuses aclrtSetDevice once) has
/// not closed: the close says so, and the drop that follows tries again, which closes it (it used to
/// count as closed, its slot gone, the runtime's import left open for good).
#[test]
fn an_import_whose_close_could_not_run_is_closed_by_its_drop() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "exporter" => {
                raw::set_device(rt, 0).unwrap();
                let m = export(rt, MIB, 5, config(false, Duration::from_secs(60)));
                say(format!("desc {}", m.desc()));
                hear_word("closed");
                assert_eq!(m.open_imports().unwrap(), 0);
                m.close().unwrap();
            }
            "importer" => {
                let desc: IpcMemDesc = hear_as("desc");
                raw::set_device(rt, 0).unwrap();
                let imp = IpcMemImport::open(rt, &desc, 1).unwrap();
                assert_eq!(raw::sim_get_stats(rt).unwrap().localIpcImports, 1);
                raw::sim_inject_fault(rt, "aclrtSetDevice", 1, 1, aclshm::AclError::DRV_INTERNAL_ERROR).unwrap();
                let r = imp.close();
                assert!(r.as_ref().is_err_and(|e| e.to_string().contains("aclrtSetDevice")), "{r:?}");
                raw::sim_clear_faults(rt).unwrap();
                assert_eq!(raw::sim_get_stats(rt).unwrap().localIpcImports, 0, "closed by the drop's second try");
                say("closed");
            }
            _ => unreachable!(),
        },
        |sc| {
            let sc = sc.shared();
            let mut exporter = sc.spawn("exporter");
            let mut importer = sc.spawn("importer");
            let desc = exporter.expect("desc");
            importer.send(format!("desc {desc}"));
            importer.relay("closed", &mut exporter);
            importer.join();
            exporter.join();
            sc.finish();
        },
    );
}

/// A notify signalled from the process that waits on it, from another thread: the signal ends the wait
/// (it used to wait for the waiting thread's stream and lock, so the wait could only time out).
#[test]
fn a_notify_signalled_by_another_thread_of_its_process_ends_the_wait() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let n = Notify::new(rt, 0).unwrap();
        std::thread::scope(|t| {
            let waiter = t.spawn(|| {
                raw::set_device(rt, 0).unwrap();
                n.wait_host(Duration::from_secs(20)).unwrap()
            });
            // Into its wait first (a signal before it would be seen by it as well).
            std::thread::sleep(Duration::from_millis(200));
            n.signal().unwrap();
            assert!(waiter.join().unwrap(), "the wait ended with the signal, not its timeout");
        });
        n.close().unwrap();
    });
}

fn put(rt: &Runtime, p: *mut std::ffi::c_void, v: u64) {
    write_dev(rt, p, &v.to_le_bytes()).unwrap();
}

fn get(rt: &Runtime, p: *mut std::ffi::c_void) -> u64 {
    u64::from_le_bytes(read_dev(rt, p, 8).unwrap().try_into().unwrap())
}

#[test]
fn notify_ping_pong_with_creator_only_waits_and_whitelists() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "a" => {
                let ping = Notify::new(rt, 0).unwrap();
                assert!(matches!(ping.allow(1), Err(Error::NotPermitted(_))), "whitelisting before exporting");
                let key = ping.export(true).unwrap();
                assert_eq!(ping.export(true).unwrap(), key, "one key, cached");
                assert_eq!(raw::sim_get_call_count(rt, "aclrtNotifyGetExportKey").unwrap(), 1);
                assert!(matches!(ping.export(false), Err(Error::NotPermitted(_))), "other flags");
                let buf =
                    IpcMemory::new(rt, 0, 8, IpcMemConfig { validate_pids: false, ..IpcMemConfig::default() }).unwrap();
                say(format!("key {key}"));
                say(format!("buf {}", buf.desc()));
                let tgid: i32 = hear_as("tgid");
                ping.allow(tgid).unwrap();
                say("allowed");
                // b's notify, exported without pid validation: no whitelist needed.
                let pong = Notify::import(rt, &hear_as("pong"), 0).unwrap();
                let stream = Stream::new(rt, 0).unwrap();
                assert!(matches!(pong.wait(&stream, None), Err(Error::NotPermitted(_))), "a waits on an import");
                for round in 0..ROUNDS {
                    put(rt, buf.as_ptr(), round);
                    pong.record(&stream).unwrap();
                    ping.wait(&stream, Some(Duration::from_secs(30))).unwrap();
                    stream.synchronize().unwrap();
                    assert_eq!(get(rt, buf.as_ptr()), round + 1000, "b answered round {round}");
                }
                // Nobody records: a host-side wait times out.
                assert!(!ping.wait_host(Duration::from_millis(10)).unwrap());
                say("ready");
                assert!(ping.wait_host(Duration::from_secs(30)).unwrap(), "b signalled from the host");
                say("done");
                hear_word("closed");
                drop(stream);
                drop(pong);
                drop(ping);
                buf.close().unwrap();
                say("ok");
            }
            _ => {
                let key = hear_as("key");
                let desc: IpcMemDesc = hear_as("buf");
                // Not whitelisted yet: refused.
                assert_eq!(code(Notify::import(rt, &key, 1)), DRV);
                say(format!("tgid {}", raw::device_get_bare_tgid(rt).unwrap()));
                hear_word("allowed");
                let ping = Notify::import(rt, &key, 1).unwrap();
                assert!(!ping.is_creator());
                assert!(matches!(ping.export(true), Err(Error::NotPermitted(_))), "re-exporting an import");
                let stream = Stream::new(rt, 1).unwrap();
                assert!(matches!(ping.wait(&stream, None), Err(Error::NotPermitted(_))), "an importer waits");
                assert!(matches!(ping.wait_host(Duration::from_secs(1)), Err(Error::NotPermitted(_))));
                let pong = Notify::new(rt, 1).unwrap();
                say(format!("pong {}", pong.export(false).unwrap()));
                let buf = IpcMemImport::open(rt, &desc, 1).unwrap();
                for round in 0..ROUNDS {
                    pong.wait(&stream, Some(Duration::from_secs(30))).unwrap();
                    stream.synchronize().unwrap();
                    assert_eq!(get(rt, buf.as_ptr()), round, "a's round {round}");
                    put(rt, buf.as_ptr(), round + 1000);
                    ping.record(&stream).unwrap();
                    stream.synchronize().unwrap();
                }
                hear_word("ready");
                ping.signal().unwrap();
                hear_word("done");
                buf.close().unwrap();
                drop(stream);
                drop(ping);
                drop(pong);
                assert_eq!(raw::sim_get_stats(rt).unwrap().localNotifies, 0, "destroyed in this process");
                say("closed");
                when_done(|| ());
            }
        },
        |sc| {
            sc.shared().crew("a", &["b"]).run("> key, > buf, < tgid, > allowed, < pong, > ready, > done, < closed");
        },
    );
}
