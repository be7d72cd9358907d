//! IPC notify across real processes: a ping-pong with data checked at each round, and every refusal.

use std::ffi::{c_char, c_void};
use std::time::{Duration, Instant};

use aclshm::raw::{self, IpcKey};
use aclshm::sys::*;

use crate::harness::*;
use crate::{assert_code, test_name};

const DRV: i32 = ACL_ERROR_RT_DRV_INTERNAL_ERROR;
const ROUNDS: u64 = 50;

fn put_u64(rt: &aclshm::Runtime, p: *mut c_void, v: u64) {
    write_dev(rt, p, &v.to_le_bytes()).unwrap();
}

fn get_u64(rt: &aclshm::Runtime, p: *const c_void) -> u64 {
    u64::from_le_bytes(read_dev(rt, p, 8).unwrap().try_into().unwrap())
}

#[test]
fn ping_pong_between_two_processes() {
    by_role(
        test_name!(),
        |rt, role| {
            match role {
                "a" => {
                    raw::set_device(rt, 0).unwrap();
                    let stream = raw::create_stream(rt).unwrap();
                    let mine = raw::create_notify(rt, ACL_NOTIFY_DEFAULT as u64).unwrap();
                    // SAFETY: our live notify.
                    let key = unsafe { raw::notify_get_export_key(rt, mine, 0) }.unwrap();
                    assert_eq!(key.as_str().len(), 40, "five 8-digit fields");
                    // SAFETY: our live notify; these are refused.
                    unsafe {
                        assert_code!(raw::notify_get_export_key(rt, mine, 0), ACL_ERROR_RT_INTERNAL_ERROR);
                        assert_code!(raw::notify_set_import_pid(rt, mine, &[1, 2]), ACL_ERROR_RT_PARAM_INVALID);
                        assert_code!(raw::notify_set_import_pid(rt, mine, &[]), ACL_ERROR_RT_PARAM_INVALID);
                    }
                    let mem = raw::malloc(rt, 4096, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST).unwrap();
                    // SAFETY: our allocation.
                    let mem_key = unsafe {
                        raw::ipc_mem_get_export_key(rt, mem, 4096, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                    }
                    .unwrap();
                    say(format!("keys {key} {mem_key}"));
                    let (tgid, theirs) =
                        hear_word("tgid-key").split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
                    // SAFETY: our live notify.
                    unsafe { raw::notify_set_import_pid(rt, mine, &[tgid.parse().unwrap()]) }.unwrap();
                    let theirs: IpcKey = theirs.parse().unwrap();
                    let peer =
                        raw::notify_import_by_key(rt, &theirs, ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS).unwrap();
                    assert_code!(
                        // SAFETY: an imported notify: only its creator may wait on it.
                        unsafe { raw::wait_and_reset_notify(rt, peer, stream, 1) },
                        ACL_ERROR_RT_PARAM_INVALID
                    );
                    say("ready");
                    hear_word("go");
                    let pong = mem.cast::<u8>().wrapping_add(8).cast::<c_void>();
                    for r in 1..=ROUNDS {
                        put_u64(rt, mem, r);
                        // SAFETY: live notifies and stream.
                        unsafe {
                            raw::record_notify(rt, peer, stream).unwrap();
                            raw::wait_and_reset_notify(rt, mine, stream, 30).unwrap();
                            raw::synchronize_stream(rt, stream).unwrap();
                        }
                        assert_eq!(get_u64(rt, pong), r + 1000, "round {r}");
                    }
                    // A wait nobody answers times out, reported by the synchronisation.
                    let t = Instant::now();
                    // SAFETY: live notify and stream.
                    unsafe {
                        raw::wait_and_reset_notify(rt, mine, stream, 1).unwrap();
                        assert_code!(raw::synchronize_stream(rt, stream), ACL_ERROR_RT_TASK_TIMEOUT);
                        // The stream works again after reporting.
                        raw::synchronize_stream(rt, stream).unwrap();
                    }
                    assert!(t.elapsed() >= Duration::from_millis(900), "waited {:?}", t.elapsed());
                    say("done");
                    hear_word("bye");
                    // SAFETY: nothing is queued on them any more.
                    unsafe {
                        raw::destroy_notify(rt, peer).unwrap();
                        raw::destroy_notify(rt, mine).unwrap();
                        assert_code!(raw::destroy_notify(rt, mine), ACL_ERROR_RT_INVALID_HANDLE);
                        raw::ipc_mem_close(rt, &mem_key).unwrap();
                        raw::free(rt, mem).unwrap();
                        raw::destroy_stream(rt, stream).unwrap();
                    }
                }
                "b" => {
                    raw::set_device(rt, 1).unwrap();
                    let stream = raw::create_stream(rt).unwrap();
                    let mine = raw::create_notify(rt, ACL_NOTIFY_DEFAULT as u64).unwrap();
                    // Exported with validation off: anyone may import, and there is no whitelist to set.
                    // SAFETY: our live notify.
                    let key = unsafe {
                        raw::notify_get_export_key(rt, mine, ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                    }
                    .unwrap();
                    // SAFETY: as above.
                    assert_code!(unsafe { raw::notify_set_import_pid(rt, mine, &[1]) }, ACL_ERROR_RT_NO_PERMISSION);
                    let keys = hear_word("keys");
                    let (theirs, mem_key) = keys.split_once(' ').unwrap();
                    let theirs: IpcKey = theirs.parse().unwrap();
                    let mem_key: IpcKey = mem_key.parse().unwrap();
                    // Not whitelisted yet.
                    assert_code!(raw::notify_import_by_key(rt, &theirs, 0), DRV);
                    assert_code!(raw::notify_import_by_key(rt, &theirs, 4), ACL_ERROR_RT_PARAM_INVALID);
                    say(format!("tgid-key {} {key}", raw::device_get_bare_tgid(rt).unwrap()));
                    hear_word("ready");
                    let peer = raw::notify_import_by_key(rt, &theirs, 0).unwrap();
                    // SAFETY: an imported notify: not ours to export or whitelist.
                    unsafe {
                        assert_code!(raw::notify_get_export_key(rt, peer, 0), ACL_ERROR_RT_INTERNAL_ERROR);
                        assert_code!(raw::notify_set_import_pid(rt, peer, &[1]), DRV);
                    }
                    let mem = raw::ipc_mem_import_by_key(rt, &mem_key, 0).unwrap();
                    let pong = mem.cast::<u8>().wrapping_add(8).cast::<c_void>();
                    say("go");
                    for r in 1..=ROUNDS {
                        // SAFETY: live notifies and stream.
                        unsafe {
                            raw::wait_and_reset_notify(rt, mine, stream, 30).unwrap();
                            raw::synchronize_stream(rt, stream).unwrap();
                        }
                        assert_eq!(get_u64(rt, mem), r, "round {r}");
                        put_u64(rt, pong, r + 1000);
                        // SAFETY: live notify and stream.
                        unsafe {
                            raw::record_notify(rt, peer, stream).unwrap();
                            raw::synchronize_stream(rt, stream).unwrap();
                        }
                    }
                    hear_word("done");
                    // SAFETY: nothing is queued on them any more.
                    unsafe {
                        raw::destroy_notify(rt, peer).unwrap();
                        raw::destroy_notify(rt, mine).unwrap();
                        raw::ipc_mem_close(rt, &mem_key).unwrap();
                        raw::destroy_stream(rt, stream).unwrap();
                    }
                }
                _ => {
                    // A third process that nobody whitelisted.
                    raw::set_device(rt, 0).unwrap();
                    let key: IpcKey = hear_as("key");
                    assert_code!(raw::notify_import_by_key(rt, &key, 0), DRV);
                    say("refused");
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("a", &["b"]);
            let keys = crew.down("keys");
            crew.play("< tgid-key");
            crew.owner.expect("ready");
            crew.scenario().ask("stranger", format!("key {}", keys.split(' ').next().unwrap()), "refused");
            crew.workers[0].send("ready");
            crew.play("< go, > done");
            crew.owner.send("bye");
            crew.join();
        },
    );
}

#[test]
fn notify_argument_and_lifetime_rules() {
    by_role(
        test_name!(),
        |rt, role| {
            if role == "creator" {
                // Creating needs a current device.
                assert_code!(raw::create_notify(rt, 0), ACL_ERROR_RT_CONTEXT_NULL);
                raw::set_device(rt, 0).unwrap();
                assert_code!(raw::create_notify(rt, 2), ACL_ERROR_RT_PARAM_INVALID);
                let n = raw::create_notify(rt, ACL_NOTIFY_DEVICE_USE_ONLY as u64).unwrap();
                // SAFETY: n is our live notify; bad arguments are refused.
                unsafe {
                    assert_code!(raw::notify_set_import_pid(rt, n, &[1]), ACL_ERROR_RT_PARAM_INVALID);
                    let f = rt.fns().aclrtNotifyGetExportKey.unwrap();
                    let mut buf = [0 as c_char; 65];
                    assert_eq!(f(n, buf.as_mut_ptr(), 10, 0), ACL_ERROR_RT_PARAM_INVALID);
                    assert_eq!(f(n, buf.as_mut_ptr(), 0, 0), ACL_ERROR_RT_PARAM_INVALID);
                    assert_eq!(f(n, buf.as_mut_ptr(), 65, 1), ACL_ERROR_RT_PARAM_INVALID);
                    assert_eq!(f(n, std::ptr::null_mut(), 65, 0), ACL_ERROR_INVALID_PARAM);
                    let key = raw::notify_get_export_key(rt, n, 0).unwrap();
                    assert!(raw::get_notify_id(rt, n).is_ok());
                    say(format!("key {key}"));
                    let tgid: i32 = hear_as("tgid");
                    raw::notify_set_import_pid(rt, n, &[tgid]).unwrap();
                    say("added");
                    hear_word("imported");
                    // The creator destroys: the notify lives on for the importer, but no new import.
                    raw::destroy_notify(rt, n).unwrap();
                    say("destroyed");
                    hear_word("done");
                }
            } else {
                raw::set_device(rt, 0).unwrap();
                let key: IpcKey = hear_as("key");
                say(format!("tgid {}", raw::device_get_bare_tgid(rt).unwrap()));
                hear_word("added");
                let n = raw::notify_import_by_key(rt, &key, 0).unwrap();
                // Importing again gives another handle; each is destroyed.
                let n2 = raw::notify_import_by_key(rt, &key, 0).unwrap();
                assert_ne!(n, n2);
                let stream = raw::create_stream(rt).unwrap();
                say("imported");
                hear_word("destroyed");
                assert_code!(raw::notify_import_by_key(rt, &key, 0), DRV);
                // SAFETY: live handles; a stale notify handle is refused.
                unsafe {
                    raw::record_notify(rt, n, stream).unwrap();
                    raw::synchronize_stream(rt, stream).unwrap();
                    raw::destroy_notify(rt, n).unwrap();
                    assert_code!(raw::record_notify(rt, n, stream), ACL_ERROR_RT_INVALID_HANDLE);
                    assert_code!(raw::get_notify_id(rt, n), ACL_ERROR_RT_INVALID_HANDLE);
                    raw::destroy_notify(rt, n2).unwrap();
                    raw::destroy_stream(rt, stream).unwrap();
                }
                assert_eq!(raw::sim_get_stats(rt).unwrap().notifies, 0, "released after every process destroyed it");
                say("done");
            }
        },
        |sc| {
            let mut crew = sc.crew("creator", &["importer"]);
            crew.play("> key, < tgid, > added, < imported, > destroyed, < done");
            crew.join();
        },
    );
}
