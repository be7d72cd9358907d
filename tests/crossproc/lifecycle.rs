//! Process lifetimes and the simulator's environment: a killed process leaves nothing behind, capacity is
//! shared by every process, configuration, device memory is not host memory, fault injection, and the
//! directory's permissions.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;

use aclshm::raw::{self, IpcKey};
use aclshm::sys::*;

use crate::harness::*;
use crate::{assert_code, test_name};

/// The files in a simulator directory.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A process that holds one of everything: mapped physical memory (exported), aclrtMalloc memory (exported
/// by key), a notify (exported), a stream with a wait queued on it.
fn hold_everything(rt: &aclshm::Runtime) -> (u64, IpcKey) {
    raw::set_device(rt, 0).unwrap();
    let h = raw::malloc_physical(rt, MIB2, &prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
    // SAFETY: the test owns what it passes.
    let token = unsafe {
        let va = raw::reserve_mem_address(rt, MIB2, 0, std::ptr::null_mut(), 0).unwrap();
        raw::map_mem(rt, va, MIB2, 0, h, 0).unwrap();
        write_dev(rt, va, &pattern(9, MIB2)).unwrap();
        raw::mem_export_to_shareable_handle(
            rt,
            h,
            aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
            ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION,
        )
        .unwrap()
    };
    let p = raw::malloc(rt, 1 << 20, aclrtMemMallocPolicy(0)).unwrap();
    // SAFETY: our allocation.
    let key = unsafe { raw::ipc_mem_get_export_key(rt, p, 1 << 20, 1) }.unwrap();
    let n = raw::create_notify(rt, 0).unwrap();
    let s = raw::create_stream(rt).unwrap();
    // SAFETY: live notify and stream.
    unsafe {
        raw::notify_get_export_key(rt, n, 0).unwrap();
        raw::wait_and_reset_notify(rt, n, s, 0).unwrap();
    }
    (token, key)
}

#[test]
fn a_killed_process_leaves_nothing_behind() {
    by_role(
        test_name!(),
        |rt, role| {
            match role {
                "victim" => {
                    let (token, key) = hold_everything(rt);
                    say(format!("holding {token} {key}"));
                    hear_word("never");
                }
                "importer" => {
                    raw::set_device(rt, 1).unwrap();
                    let (token, key) =
                        hear_word("holding").split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
                    let h = raw::mem_import_from_shareable_handle(rt, token.parse().unwrap(), 1).unwrap();
                    let key: IpcKey = key.parse().unwrap();
                    raw::ipc_mem_import_by_key(rt, &key, 0).unwrap();
                    // SAFETY: our reservation and handle.
                    let va = unsafe {
                        let va = raw::reserve_mem_address(rt, MIB2, 0, std::ptr::null_mut(), 0).unwrap();
                        raw::map_mem(rt, va, MIB2, 0, h, 0).unwrap();
                        va
                    };
                    say("imported");
                    hear_word("killed");
                    // The exporter is dead; our mapping of its memory stays valid until we release it.
                    assert_eq!(read_dev(rt, va, MIB2).unwrap(), pattern(9, MIB2));
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!(st.processes, 1, "the dead process was reclaimed");
                    assert_eq!(st.physObjects, 2, "what we hold survives: the VMM import and the IPC import");
                    assert_eq!(st.notifies, 0, "the dead creator's notify is gone");
                    // SAFETY: ours, used no more.
                    unsafe {
                        raw::unmap_mem(rt, va).unwrap();
                        raw::free_physical(rt, h).unwrap();
                        raw::release_mem_address(rt, va).unwrap();
                        raw::ipc_mem_close(rt, &key).unwrap();
                    }
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!((st.physObjects, st.deviceBytesUsed[0]), (0, 0));
                    say("released");
                }
                _ => {
                    // Attaching reclaims what dead processes left.
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!((st.processes, st.physObjects, st.ipcKeys, st.notifies), (1, 0, 0, 0));
                    assert_eq!(st.deviceBytesUsed[0], 0);
                    say("clean");
                    // Stay attached while the parent looks at the directory.
                    hear_word("done");
                }
            }
        },
        |sc| {
            let alone = sc.another();
            // With a survivor holding imports of the victim's memory.
            let mut crew = sc.crew("victim", &["importer"]);
            crew.play("> holding");
            crew.workers[0].expect("imported");
            crew.owner.kill();
            assert_eq!(crew.owner.wait().signal(), Some(libc::SIGKILL));
            crew.workers[0].send("killed");
            crew.workers[0].expect("released");
            crew.join();

            // Alone: the next process to open the simulator finds and removes everything.
            let sc = alone;
            let mut victim = sc.spawn("victim");
            victim.expect("holding");
            let before = files(sc.dir());
            assert!(before.iter().filter(|f| f.starts_with("phys-")).count() == 2, "{before:?}");
            victim.kill();
            assert!(files(sc.dir()).len() > 1, "a killed process cannot clean up itself");
            let mut next = sc.spawn("next");
            next.expect("clean");
            assert_eq!(files(sc.dir()), vec!["registry".to_string()], "only the live process's registry is left");
            next.send("done");
            next.join();
            sc.finish();
        },
    );
}

#[test]
fn capacity_is_enforced_across_processes() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            let p0 = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE);
            if role == "holder" {
                let h = raw::malloc_physical(rt, 3 * MIB2, &p0, 0).unwrap();
                say("holding");
                hear_word("release");
                // SAFETY: our handle.
                unsafe { raw::free_physical(rt, h) }.unwrap();
                say("released");
            } else {
                let (free, total) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM).unwrap();
                assert_eq!((free, total), (MIB2, 4 * MIB2), "the other process's 6 MiB counts here");
                assert_code!(raw::malloc_physical(rt, 2 * MIB2, &p0, 0), ACL_ERROR_RT_MEMORY_ALLOCATION);
                assert_code!(raw::malloc(rt, 3 << 20, aclrtMemMallocPolicy(0)), ACL_ERROR_RT_MEMORY_ALLOCATION);
                // Device 1 has its own capacity.
                let h1 = raw::malloc_physical(rt, 4 * MIB2, &prop(1, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
                assert_code!(
                    raw::malloc_physical(rt, MIB2, &prop(1, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0),
                    ACL_ERROR_RT_MEMORY_ALLOCATION
                );
                say("refused");
                hear_word("released");
                let h = raw::malloc_physical(rt, 4 * MIB2, &p0, 0).unwrap();
                // SAFETY: our handles.
                unsafe {
                    raw::free_physical(rt, h).unwrap();
                    raw::free_physical(rt, h1).unwrap();
                }
                say("ok");
            }
        },
        |sc| {
            let sc = sc.env("ACLSHM_SIM_HBM_BYTES", "8M");
            let mut a = sc.spawn("holder");
            a.expect("holding");
            let mut b = sc.spawn("asker");
            b.expect("refused");
            a.send("release");
            a.expect("released");
            a.join();
            b.send("released");
            b.expect("ok");
            b.join();
            sc.finish();
        },
    );
}

#[test]
fn devices_are_configurable_and_shared_by_every_process() {
    by_role(
        test_name!(),
        |rt, role| {
            match role {
                "three" => {
                    assert_eq!(raw::get_device_count(rt).unwrap(), 3);
                    raw::set_device(rt, 2).unwrap();
                    assert_code!(raw::set_device(rt, 3), ACL_ERROR_RT_INVALID_DEVICEID);
                    assert_eq!(raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM).unwrap().1, 64 << 20);
                    say("ready");
                    hear_word("done");
                }
                "conflicting" => {
                    // Asks for 2 devices while the directory is in use with 3: refused, with a reason.
                    assert_code!(raw::get_device_count(rt), ACL_ERROR_RT_DEV_SETUP_ERROR);
                    say("refused");
                }
                _ => {
                    // Asks for nothing: adopts the directory's configuration.
                    assert_eq!(raw::get_device_count(rt).unwrap(), 3);
                    say("adopted");
                }
            }
        },
        |sc| {
            let mut a = sc.spawn_with("three", &[("ACLSHM_SIM_DEVICES", "3"), ("ACLSHM_SIM_HBM_BYTES", "64M")]);
            a.expect("ready");
            let mut b = sc.spawn_with("conflicting", &[("ACLSHM_SIM_DEVICES", "2")]);
            b.expect("refused");
            b.join();
            let mut c = sc.spawn("adopting");
            c.expect("adopted");
            c.join();
            a.send("done");
            a.join();
            sc.finish();
        },
    );
}

#[test]
fn device_memory_is_not_host_memory() {
    by_role(
        test_name!(),
        |rt, role| {
            if role == "cleaner" {
                let st = raw::sim_get_stats(rt).unwrap();
                assert_eq!((st.processes, st.physObjects), (1, 0), "the crashed processes were reclaimed");
                say("clean");
                return;
            }
            raw::set_device(rt, 0).unwrap();
            let p = if role == "malloc" {
                raw::malloc(rt, 4096, aclrtMemMallocPolicy(0)).unwrap()
            } else {
                let h = raw::malloc_physical(rt, MIB2, &prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
                // SAFETY: our reservation and handle.
                unsafe {
                    let va = raw::reserve_mem_address(rt, MIB2, 0, std::ptr::null_mut(), 0).unwrap();
                    raw::map_mem(rt, va, MIB2, 0, h, 0).unwrap();
                    va
                }
            };
            write_dev(rt, p, &[1, 2, 3, 4]).unwrap();
            say("mapped");
            // What a program that takes device memory for host memory does. On an NPU this faults; so here.
            // SAFETY: deliberately not: the test checks the process dies of it.
            let v = unsafe { std::ptr::read_volatile(p.cast::<u8>()) };
            say(format!("read {v}"));
        },
        |sc| {
            for role in ["malloc", "mapped"] {
                let mut a = sc.spawn(role);
                a.expect("mapped");
                let st = a.wait();
                assert_eq!(
                    st.signal(),
                    Some(libc::SIGSEGV),
                    "{role}: dereferencing device memory must fault, got {st}"
                );
            }
            // The crashed children left their objects; the next process to attach reclaims them.
            let mut c = sc.spawn("cleaner");
            c.expect("clean");
            c.join();
            sc.finish();
        },
    );
}

#[test]
fn injected_faults_fail_the_nth_call() {
    by_role(
        test_name!(),
        |rt, role| {
            let p0 = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE);
            match role {
                "env" => {
                    // ACLSHM_SIM_FAULTS=aclrtMallocPhysical@2=207001,aclrtMapMem@1x2=ACL_ERROR_RT_DRV_INTERNAL_ERROR
                    let a = raw::malloc_physical(rt, MIB2, &p0, 0).unwrap();
                    assert_code!(raw::malloc_physical(rt, MIB2, &p0, 0), ACL_ERROR_RT_MEMORY_ALLOCATION);
                    let b = raw::malloc_physical(rt, MIB2, &p0, 0).unwrap();
                    assert_eq!(raw::sim_get_stats(rt).unwrap().physObjects, 2, "a failed call creates nothing");
                    // SAFETY: the test owns what it passes.
                    unsafe {
                        let va = raw::reserve_mem_address(rt, MIB2, 0, std::ptr::null_mut(), 0).unwrap();
                        assert_code!(raw::map_mem(rt, va, MIB2, 0, a, 0), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
                        assert_code!(raw::map_mem(rt, va, MIB2, 0, a, 0), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
                        raw::map_mem(rt, va, MIB2, 0, a, 0).unwrap();
                        // Programmatic faults, and the simulator's call counters.
                        raw::sim_inject_fault(rt, "aclrtUnmapMem", 1, 1, aclshm::AclError::RT_PARAM_INVALID).unwrap();
                        assert_code!(raw::unmap_mem(rt, va), ACL_ERROR_RT_PARAM_INVALID);
                        raw::unmap_mem(rt, va).unwrap();
                        raw::sim_inject_fault(rt, "aclrtFreePhysical", 1, 5, aclshm::AclError::MEMORY_ALLOCATION)
                            .unwrap();
                        raw::sim_clear_faults(rt).unwrap();
                        raw::free_physical(rt, a).unwrap();
                        raw::free_physical(rt, b).unwrap();
                        raw::release_mem_address(rt, va).unwrap();
                    }
                    assert_eq!(raw::sim_get_call_count(rt, "aclrtMallocPhysical").unwrap(), 3);
                    assert_eq!(raw::sim_get_call_count(rt, "aclrtMapMem").unwrap(), 3);
                    assert_eq!(rt.call_count("aclrtMapMem"), Some(3), "the library counts the same calls");
                    assert!(
                        raw::sim_inject_fault(rt, "aclshmSimGetStats", 1, 1, aclshm::AclError::RT_PARAM_INVALID)
                            .is_err()
                    );
                    assert!(raw::sim_inject_fault(rt, "nope", 1, 1, aclshm::AclError::RT_PARAM_INVALID).is_err());
                    assert!(raw::sim_get_call_count(rt, "nope").is_err());
                    assert_eq!(raw::sim_get_stats(rt).unwrap().physObjects, 0);
                    say("ok");
                }
                _ => {
                    // A malformed fault list: nothing works, and the reason is on stderr.
                    assert_code!(raw::get_device_count(rt), ACL_ERROR_RT_DEV_SETUP_ERROR);
                    say("refused");
                }
            }
        },
        |sc| {
            let mut a = sc.spawn_with(
                "env",
                &[(
                    "ACLSHM_SIM_FAULTS",
                    "aclrtMallocPhysical@2=207001, aclrtMapMem@1x2=ACL_ERROR_RT_DRV_INTERNAL_ERROR",
                )],
            );
            a.expect("ok");
            a.join();
            let mut b = sc.spawn_with("malformed", &[("ACLSHM_SIM_FAULTS", "aclrtMapMem@first=1")]);
            b.expect("refused");
            assert!(b.wait().success());
            assert!(b.stderr().contains("ACLSHM_SIM_FAULTS"), "{}", b.stderr());
            sc.finish();
        },
    );
}

#[test]
fn the_directory_must_be_private() {
    by_role(
        test_name!(),
        |rt, _| {
            assert_code!(raw::get_device_count(rt), ACL_ERROR_RT_DEV_SETUP_ERROR);
            say("refused");
        },
        |sc| {
            std::fs::create_dir_all(sc.dir()).unwrap();
            std::fs::set_permissions(sc.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let mut a = sc.spawn("child");
            a.expect("refused");
            assert!(a.wait().success());
            assert!(a.stderr().contains("writable by others"), "{}", a.stderr());
            assert!(files(sc.dir()).is_empty(), "nothing was created in it");
            std::fs::remove_dir(sc.dir()).unwrap();
            sc.finish();
        },
    );
}

#[test]
fn processes_attaching_and_leaving_at_once() {
    const ROUNDS: usize = 4;
    const AT_ONCE: usize = 6;
    by_role(
        test_name!(),
        |rt, _| {
            // Attach, hold something, leave: the first of a round creates the registry, the last retires it,
            // and the others race with both.
            let h = raw::malloc_physical(rt, MIB2, &prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
            let st = raw::sim_get_stats(rt).unwrap();
            assert!(st.processes >= 1 && st.physObjects >= 1);
            // SAFETY: our handle.
            unsafe { raw::free_physical(rt, h) }.unwrap();
            say("ok");
        },
        |sc| {
            for _ in 0..ROUNDS {
                let mut peers: Vec<Peer> = (0..AT_ONCE).map(|_| sc.spawn("brief")).collect();
                for p in &mut peers {
                    p.expect("ok");
                }
                for p in peers {
                    p.join();
                }
                assert_dir_gone(sc.dir());
            }
            sc.finish();
        },
    );
}
