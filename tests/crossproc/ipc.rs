//! Sharing `aclrtMalloc` memory by key (`aclrtIpcMem*`), across real processes.

use std::ffi::c_void;

use aclshm::raw::{self, IpcKey};
use aclshm::sys::*;

use crate::harness::*;
use crate::{assert_code, test_name};

const DRV: i32 = ACL_ERROR_RT_DRV_INTERNAL_ERROR;
const SIZE: usize = 3 << 20;
const POLICY: aclrtMemMallocPolicy = aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST;

fn at(p: *mut c_void, by: usize) -> *mut c_void {
    p.cast::<u8>().wrapping_add(by).cast()
}

/// Role: a process nobody whitelisted (or one coming after the memory went): it hears the key (`key K`),
/// is refused the import, and says `refused`.
fn refused_importer(rt: &aclshm::Runtime) {
    let key: IpcKey = hear_as("key");
    assert_code!(raw::ipc_mem_import_by_key(rt, &key, 0), DRV);
    say("refused");
}

#[test]
fn key_flow_with_whitelist_and_refusals() {
    by_role(
        test_name!(),
        |rt, role| {
            match role {
                "exporter" => {
                    raw::set_device(rt, 0).unwrap();
                    let p = raw::malloc(rt, SIZE, POLICY).unwrap();
                    write_dev(rt, p, &pattern(21, SIZE)).unwrap();
                    // SAFETY: p is our aclrtMalloc memory; bad arguments are refused.
                    let key = unsafe {
                        assert_code!(raw::ipc_mem_get_export_key(rt, at(p, 4096), SIZE - 4096, 0), DRV);
                        assert_code!(raw::ipc_mem_get_export_key(rt, p, 4096, 0), DRV);
                        assert_code!(raw::ipc_mem_get_export_key(rt, p, SIZE, 2), ACL_ERROR_RT_PARAM_INVALID);
                        assert_code!(raw::ipc_mem_get_export_key(rt, p, 0, 0), ACL_ERROR_RT_PARAM_INVALID);
                        let mut short = [0 as std::ffi::c_char; 16];
                        let f = rt.fns().aclrtIpcMemGetExportKey.unwrap();
                        assert_eq!(f(p, SIZE, short.as_mut_ptr(), short.len(), 0), ACL_ERROR_RT_PARAM_INVALID);
                        raw::ipc_mem_get_export_key(rt, p, SIZE, 0).unwrap()
                    };
                    assert_eq!(key.as_str().len(), 64, "64 characters, NUL-terminated in 65 bytes");
                    assert!(key.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
                    say(format!("key {key}"));
                    let tgid: i32 = hear_as("whitelist");
                    assert_code!(raw::ipc_mem_set_import_pid(rt, &key, &[raw::device_get_bare_tgid(rt).unwrap()]), DRV);
                    assert_code!(raw::ipc_mem_set_import_pid(rt, &key, &[tgid; 32]), ACL_ERROR_RT_PARAM_INVALID);
                    raw::ipc_mem_set_import_pid(rt, &key, &[tgid]).unwrap();
                    say("added");
                    hear_word("wrote");
                    assert_eq!(read_dev(rt, at(p, 1 << 20), 4096).unwrap(), pattern(22, 4096));
                    say("checked");
                    hear_word("closed");
                    // The importer closed: the exporter closes, then frees.
                    // SAFETY: nothing uses the key any more.
                    unsafe { raw::ipc_mem_close(rt, &key) }.unwrap();
                    // SAFETY: as above.
                    assert_code!(unsafe { raw::ipc_mem_close(rt, &key) }, DRV);
                    // SAFETY: our allocation.
                    unsafe { raw::free(rt, p) }.unwrap();
                    say("freed");
                }
                _ => {
                    raw::set_device(rt, 1).unwrap();
                    let key: IpcKey = hear_as("key");
                    assert_code!(raw::ipc_mem_import_by_key(rt, &key, 0), DRV);
                    assert_code!(raw::ipc_mem_set_import_pid(rt, &key, &[1]), DRV);
                    assert_code!(raw::ipc_mem_import_by_key(rt, &key, 2), ACL_ERROR_RT_PARAM_INVALID);
                    let unknown: IpcKey = "0".repeat(64).parse().unwrap();
                    assert_code!(raw::ipc_mem_import_by_key(rt, &unknown, 0), DRV);
                    say(format!("whitelist {}", raw::device_get_bare_tgid(rt).unwrap()));
                    hear_word("added");
                    // Cross-device: exported on device 0, imported on device 1.
                    let p =
                        raw::ipc_mem_import_by_key(rt, &key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS).unwrap();
                    assert_eq!(read_dev(rt, p, SIZE).unwrap(), pattern(21, SIZE));
                    write_dev(rt, at(p, 1 << 20), &pattern(22, 4096)).unwrap();
                    // A second import returns the same address and needs its own close.
                    let again = raw::ipc_mem_import_by_key(rt, &key, 0).unwrap();
                    assert_eq!(again, p);
                    assert_eq!(raw::sim_get_stats(rt).unwrap().localIpcImports, 2);
                    // SAFETY: imported memory is not aclrtFree's to free.
                    assert_code!(unsafe { raw::free(rt, p) }, ACL_ERROR_RT_PARAM_INVALID);
                    say("wrote");
                    hear_word("checked");
                    // SAFETY: nothing uses the imports any more.
                    unsafe {
                        raw::ipc_mem_close(rt, &key).unwrap();
                        assert_eq!(read_dev(rt, p, 16).unwrap(), pattern(21, 16), "one import is still open");
                        raw::ipc_mem_close(rt, &key).unwrap();
                        // More closes than imports: this process is not the exporter.
                        assert_code!(raw::ipc_mem_close(rt, &key), DRV);
                    }
                    assert_code!(read_dev(rt, p, 16), ACL_ERROR_RT_PARAM_INVALID);
                    say("closed");
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            crew.play("> key, < whitelist, > added, < wrote, > checked, < closed");
            crew.owner.expect("freed");
            crew.join();
        },
    );
}

#[test]
fn exporter_closing_first_tears_importers_down() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            match role {
                "exporter" => {
                    let p = raw::malloc(rt, 1 << 20, POLICY).unwrap();
                    // SAFETY: p is our allocation.
                    let key = unsafe {
                        raw::ipc_mem_get_export_key(rt, p, 1 << 20, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                    }
                    .unwrap();
                    assert_code!(raw::ipc_mem_set_import_pid(rt, &key, &[42]), ACL_ERROR_RT_NO_PERMISSION);
                    say(format!("key {key}"));
                    hear_word("imported");
                    // Wrong order: the exporter closes while the importer still holds the key.
                    // SAFETY: we own the key (closing early is the point of the test).
                    unsafe { raw::ipc_mem_close(rt, &key) }.unwrap();
                    // SAFETY: as above.
                    assert_code!(unsafe { raw::ipc_mem_close(rt, &key) }, ACL_ERROR_RT_INVALID_HANDLE);
                    say("closed");
                    hear_word("done");
                    // SAFETY: our allocation.
                    unsafe { raw::free(rt, p) }.unwrap();
                }
                "importer" => {
                    let key: IpcKey = hear_as("key");
                    let p = raw::ipc_mem_import_by_key(rt, &key, 0).unwrap();
                    read_dev(rt, p, 4096).unwrap();
                    say("imported");
                    hear_word("closed");
                    assert_code!(read_dev(rt, p, 4096), ACL_ERROR_RT_DEVICE_MEM_ERROR);
                    // SAFETY: nothing uses the import any more.
                    unsafe { raw::ipc_mem_close(rt, &key) }.unwrap();
                    say("done");
                }
                _ => refused_importer(rt),
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            let key = crew.down("key");
            crew.play("< imported, > closed");
            crew.workers[0].expect("done");
            // The exporter frees its memory only once a late importer was refused.
            crew.scenario().ask("late", format!("key {key}"), "refused");
            crew.owner.send("done");
            crew.owner.wait_ok();
            let stderr = crew.owner.stderr();
            assert!(stderr.contains("importers must close first"), "the wrong order is reported:\n{stderr}");
            crew.join();
        },
    );
}

#[test]
fn freeing_exported_memory_closes_its_keys() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            if role == "exporter" {
                let p = raw::malloc(rt, 4096, POLICY).unwrap();
                // SAFETY: p is our allocation.
                let key = unsafe {
                    raw::ipc_mem_get_export_key(rt, p, 4096, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                }
                .unwrap();
                // SAFETY: our allocation, not used again.
                unsafe { raw::free(rt, p) }.unwrap();
                assert_eq!(raw::sim_get_stats(rt).unwrap().ipcKeys, 0);
                say(format!("key {key}"));
                hear_word("done");
            } else {
                refused_importer(rt);
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            crew.play("> key");
            crew.release_after("refused");
        },
    );
}
