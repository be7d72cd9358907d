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
    write_dev(rt, m.as_ptr(), &pattern(seed, m.len())).unwrap();
    m
}

fn holds(rt: &Runtime, p: *mut std::ffi::c_void, len: usize, seed: u64) -> bool {
    read_dev(rt, p, len).unwrap() == pattern(seed, len)
}

#[test]
fn ipc_memory_by_key_closes_importers_first_and_refuses_what_it_must() {
    match role().as_deref() {
        Some("exporter") => {
            let rt = runtime();
            raw::set_device(&rt, 0).unwrap();
            let long = Duration::from_secs(60);
            assert!(matches!(IpcMemory::new(&rt, 0, 0, IpcMemConfig::default()), Err(Error::InvalidArgument(_))));
            // Whole allocations, rounded up to 2 MiB pages.
            let main = export(&rt, 3 * MIB, 1, config(true, long));
            assert_eq!(main.len(), 4 * MIB);
            let stubborn = export(&rt, MIB, 2, config(true, Duration::from_millis(300)));
            let open = export(&rt, MIB, 3, config(false, long));
            let victim = export(&rt, MIB, 4, config(true, long));
            let r = open.allow(1);
            assert!(matches!(r, Err(Error::NotPermitted(_))), "no whitelist without pid validation: {r:?}");
            for m in [&main, &stubborn, &open, &victim] {
                say(format!("desc {}", m.desc()));
            }
            let tgid: i32 = hear_word("tgid").parse().unwrap();
            let doomed: i32 = hear_word("doomed").parse().unwrap();
            for m in [&main, &stubborn] {
                m.allow(tgid).unwrap();
            }
            victim.allow(doomed).unwrap();
            say("allowed");
            hear_word("written");
            assert!(holds(&rt, main.as_ptr(), main.len(), 11), "the exporter reads what the importer wrote");
            assert_eq!(main.open_imports().unwrap(), 1);
            // An importer still has `stubborn` open: closing it times out and keeps the memory.
            let keys_before = raw::sim_get_stats(&rt).unwrap().ipcKeys;
            let r = stubborn.close();
            assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
            assert_eq!(raw::sim_get_stats(&rt).unwrap().ipcKeys, keys_before, "the key stays open");
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
            let st = raw::sim_get_stats(&rt).unwrap();
            assert_eq!((st.ipcKeys, st.localDeviceAllocs), (1, 1), "only the timed-out export is kept");
            say("ok");
        }
        Some("doomed") => {
            let rt = runtime();
            raw::set_device(&rt, 1).unwrap();
            say(format!("tgid {}", raw::device_get_bare_tgid(&rt).unwrap()));
            let d: IpcMemDesc = hear_word("desc").parse().unwrap();
            hear_word("allowed");
            let m = IpcMemImport::open(&rt, &d, 1).unwrap();
            assert!(holds(&rt, m.as_ptr(), m.len(), 4));
            say("imported");
            hear_word("never");
        }
        Some(_) => {
            let rt = runtime();
            raw::set_device(&rt, 1).unwrap();
            let main: IpcMemDesc = hear_word("desc").parse().unwrap();
            let stubborn: IpcMemDesc = hear_word("desc").parse().unwrap();
            let open: IpcMemDesc = hear_word("desc").parse().unwrap();
            // Not whitelisted yet: the runtime refuses, and the refused import holds no slot.
            let r = IpcMemImport::open(&rt, &main, 1);
            assert_eq!(code(r), DRV, "imported before being whitelisted");
            // The opt-out needs no whitelist.
            let o = IpcMemImport::open(&rt, &open, 1).unwrap();
            assert!(holds(&rt, o.as_ptr(), o.len(), 3));
            o.close().unwrap();
            // A key that was never exported.
            let mut fake = main.clone();
            fake.key = "0".repeat(64).parse().unwrap();
            assert!(IpcMemImport::open(&rt, &fake, 1).is_err());
            say(format!("tgid {}", raw::device_get_bare_tgid(&rt).unwrap()));
            hear_word("allowed");
            let m = IpcMemImport::open(&rt, &main, 1).unwrap();
            assert_eq!(m.len(), 4 * MIB);
            assert!(holds(&rt, m.as_ptr(), m.len(), 1), "the importer on device 1 reads the exporter's bytes");
            // Importing a key twice in a process is two imports (the runtime counts them).
            let again = IpcMemImport::open(&rt, &main, 1).unwrap();
            assert_eq!(again.as_ptr(), m.as_ptr());
            again.close().unwrap();
            let s = IpcMemImport::open(&rt, &stubborn, 1).unwrap();
            write_dev(&rt, m.as_ptr(), &pattern(11, m.len())).unwrap();
            say("written");
            hear_word("stubborn");
            // The exporter gave up closing: the memory is intact, and nobody new may import it.
            assert!(holds(&rt, s.as_ptr(), s.len(), 2));
            assert!(matches!(IpcMemImport::open(&rt, &stubborn, 1), Err(Error::Closed)));
            s.close().unwrap();
            hear_word("closing");
            // The exporter is closing: new imports are refused, the open one still works.
            assert!(matches!(IpcMemImport::open(&rt, &main, 1), Err(Error::Closed)));
            assert!(holds(&rt, m.as_ptr(), m.len(), 11));
            say("about to close");
            hear_word("go");
            m.close().unwrap();
            say("closed");
            say("ok");
        }
        None => {
            let sc = Scenario::new(test_name!()).shared();
            let mut exporter = sc.spawn("exporter");
            let mut importer = sc.spawn("importer");
            let mut doomed = sc.spawn("doomed");
            let descs: Vec<String> = (0..4).map(|_| exporter.expect("desc")).collect();
            for d in &descs[..3] {
                importer.send(format!("desc {d}"));
            }
            doomed.send(format!("desc {}", descs[3]));
            importer.relay("tgid", &mut exporter);
            exporter.send(format!("doomed {}", doomed.expect("tgid")));
            exporter.expect("allowed");
            importer.send("allowed");
            doomed.send("allowed");
            doomed.expect("imported");
            importer.relay("written", &mut exporter);
            exporter.relay("stubborn", &mut importer);
            doomed.kill();
            exporter.send("killed");
            exporter.relay("closing", &mut importer);
            importer.relay("about to close", &mut exporter);
            exporter.relay("go", &mut importer);
            importer.relay("closed", &mut exporter);
            importer.expect("ok");
            exporter.expect("ok");
            importer.join();
            exporter.join();
            sc.finish();
        }
    }
}

const ROUNDS: u64 = 50;

fn put(rt: &Runtime, p: *mut std::ffi::c_void, v: u64) {
    write_dev(rt, p, &v.to_le_bytes()).unwrap();
}

fn get(rt: &Runtime, p: *mut std::ffi::c_void) -> u64 {
    u64::from_le_bytes(read_dev(rt, p, 8).unwrap().try_into().unwrap())
}

#[test]
fn notify_ping_pong_with_creator_only_waits_and_whitelists() {
    match role().as_deref() {
        Some("a") => {
            let rt = runtime();
            let ping = Notify::new(&rt, 0).unwrap();
            assert!(matches!(ping.allow(1), Err(Error::NotPermitted(_))), "whitelisting before exporting");
            let key = ping.export(true).unwrap();
            assert_eq!(ping.export(true).unwrap(), key, "one key, cached");
            assert_eq!(raw::sim_get_call_count(&rt, "aclrtNotifyGetExportKey").unwrap(), 1);
            assert!(matches!(ping.export(false), Err(Error::NotPermitted(_))), "other flags");
            let buf =
                IpcMemory::new(&rt, 0, 8, IpcMemConfig { validate_pids: false, ..IpcMemConfig::default() }).unwrap();
            say(format!("key {key}"));
            say(format!("buf {}", buf.desc()));
            let tgid: i32 = hear_word("tgid").parse().unwrap();
            ping.allow(tgid).unwrap();
            say("allowed");
            // b's notify, exported without pid validation: no whitelist needed.
            let pong = Notify::import(&rt, &hear_word("pong").parse().unwrap(), 0).unwrap();
            let stream = Stream::new(&rt, 0).unwrap();
            assert!(matches!(pong.wait(&stream, None), Err(Error::NotPermitted(_))), "a waits on an import");
            for round in 0..ROUNDS {
                put(&rt, buf.as_ptr(), round);
                pong.record(&stream).unwrap();
                ping.wait(&stream, Some(Duration::from_secs(30))).unwrap();
                stream.synchronize().unwrap();
                assert_eq!(get(&rt, buf.as_ptr()), round + 1000, "b answered round {round}");
            }
            // Nobody records: a host-side wait times out.
            assert!(!ping.wait_host(Duration::from_millis(10)).unwrap());
            say("ready");
            assert!(ping.wait_host(Duration::from_secs(30)).unwrap(), "b signalled from the host");
            say("done");
            hear_word("bye");
            drop(stream);
            drop(pong);
            drop(ping);
            buf.close().unwrap();
            say("ok");
        }
        Some(_) => {
            let rt = runtime();
            let key = hear_word("key").parse().unwrap();
            let desc: IpcMemDesc = hear_word("buf").parse().unwrap();
            // Not whitelisted yet: refused.
            assert_eq!(code(Notify::import(&rt, &key, 1)), DRV);
            say(format!("tgid {}", raw::device_get_bare_tgid(&rt).unwrap()));
            hear_word("allowed");
            let ping = Notify::import(&rt, &key, 1).unwrap();
            assert!(!ping.is_creator());
            assert!(matches!(ping.export(true), Err(Error::NotPermitted(_))), "re-exporting an import");
            let stream = Stream::new(&rt, 1).unwrap();
            assert!(matches!(ping.wait(&stream, None), Err(Error::NotPermitted(_))), "an importer waits");
            assert!(matches!(ping.wait_host(Duration::from_secs(1)), Err(Error::NotPermitted(_))));
            let pong = Notify::new(&rt, 1).unwrap();
            say(format!("pong {}", pong.export(false).unwrap()));
            let buf = IpcMemImport::open(&rt, &desc, 1).unwrap();
            for round in 0..ROUNDS {
                pong.wait(&stream, Some(Duration::from_secs(30))).unwrap();
                stream.synchronize().unwrap();
                assert_eq!(get(&rt, buf.as_ptr()), round, "a's round {round}");
                put(&rt, buf.as_ptr(), round + 1000);
                ping.record(&stream).unwrap();
                stream.synchronize().unwrap();
            }
            hear_word("signal");
            ping.signal().unwrap();
            hear_word("done");
            buf.close().unwrap();
            drop(stream);
            drop(ping);
            drop(pong);
            assert_eq!(raw::sim_get_stats(&rt).unwrap().localNotifies, 0, "destroyed in this process");
            say("ok");
        }
        None => {
            let sc = Scenario::new(test_name!()).shared();
            let mut a = sc.spawn("a");
            let mut b = sc.spawn("b");
            a.relay("key", &mut b);
            a.relay("buf", &mut b);
            b.relay("tgid", &mut a);
            a.relay("allowed", &mut b);
            b.relay("pong", &mut a);
            a.expect("ready");
            b.send("signal");
            a.relay("done", &mut b);
            b.expect("ok");
            b.join();
            a.send("bye");
            a.expect("ok");
            a.join();
            sc.finish();
        }
    }
}
