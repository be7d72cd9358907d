//! Sharing physical memory between processes (VMM shareable handles): every rule, allowed and refused,
//! with real processes.

use std::ffi::c_void;

use aclshm::raw;
use aclshm::sys::*;

use crate::harness::*;
use crate::{assert_code, test_name};

const DRV: i32 = ACL_ERROR_RT_DRV_INTERNAL_ERROR;

/// A physical allocation mapped into a reservation of its own.
struct Mapped {
    handle: aclrtDrvMemHandle,
    va: *mut c_void,
}

fn alloc_map(rt: &aclshm::Runtime, device: u32, size: usize) -> Mapped {
    let handle = raw::malloc_physical(rt, size, &prop(device, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
    // SAFETY: no expected address.
    let va = unsafe { raw::reserve_mem_address(rt, size, 0, std::ptr::null_mut(), 0) }.unwrap();
    // SAFETY: va is our reservation, handle our live handle.
    unsafe { raw::map_mem(rt, va, size, 0, handle, 0) }.unwrap();
    Mapped { handle, va }
}

fn import_map(rt: &aclshm::Runtime, token: u64, device: i32, size: usize) -> Mapped {
    let handle = raw::mem_import_from_shareable_handle(rt, token, device).unwrap();
    // SAFETY: no expected address.
    let va = unsafe { raw::reserve_mem_address(rt, size, 0, std::ptr::null_mut(), 0) }.unwrap();
    // SAFETY: va is our reservation, handle our live handle.
    unsafe { raw::map_mem(rt, va, size, 0, handle, 0) }.unwrap();
    Mapped { handle, va }
}

/// Export the physical memory behind `m` (handle type NONE) with `flags`: its shareable handle.
fn export(rt: &aclshm::Runtime, m: &Mapped, flags: u64) -> aclshm::Result<u64> {
    // SAFETY: `m` holds a live handle until `teardown` consumes it.
    unsafe { raw::mem_export_to_shareable_handle(rt, m.handle, aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE, flags) }
}

/// A mapping of `size` bytes of device 0's memory and its shareable handle, exported with `flags`.
fn exported(rt: &aclshm::Runtime, size: usize, flags: u64) -> (Mapped, u64) {
    let m = alloc_map(rt, 0, size);
    let token = export(rt, &m, flags).unwrap();
    (m, token)
}

/// Unmap, free and release, in the documented order.
fn teardown(rt: &aclshm::Runtime, m: Mapped) {
    // SAFETY: our mapping, handle and reservation, used no more.
    unsafe {
        raw::unmap_mem(rt, m.va).unwrap();
        raw::free_physical(rt, m.handle).unwrap();
        raw::release_mem_address(rt, m.va).unwrap();
    }
}

fn offset(p: *mut c_void, by: usize) -> *mut c_void {
    p.cast::<u8>().wrapping_add(by).cast()
}

/// Role: export one 2 MiB allocation on device 0 with pid validation off, tell the parent the shareable
/// handle (`token T`), and keep it until the parent says `done`.
fn serve_one_export(rt: &aclshm::Runtime) {
    raw::set_device(rt, 0).unwrap();
    let (m, token) = exported(rt, MIB2, ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION);
    say(format!("token {token}"));
    hear_word("done");
    teardown(rt, m);
}

/// Parent: an `exporter` child serving one export, and a `peer` child that gets the token and says `ok`.
fn with_one_export(sc: Scenario, peer: &str) {
    let mut crew = sc.crew("exporter", &[peer]);
    crew.play("> token");
    crew.release_after("ok");
}

#[test]
fn data_crosses_processes_on_device_0_and_device_1() {
    const SIZE: usize = 2 * MIB2;
    by_role(
        test_name!(),
        |rt, role| {
            match role {
                "exporter" => {
                    raw::set_device(rt, 0).unwrap();
                    let (m, token) = exported(rt, SIZE, 0);
                    write_dev(rt, m.va, &pattern(1, SIZE)).unwrap();
                    let pids: Vec<i32> = hear_list("whitelist");
                    raw::mem_set_pid_to_shareable_handle(rt, token, &pids).unwrap();
                    say(format!("token {token}"));
                    hear_word("wrote");
                    // Each importer wrote its own 64 KiB at 1 MiB + 64 KiB * device.
                    for d in 0..2 {
                        let at = (1 << 20) + d * 65536;
                        assert_eq!(read_dev(rt, offset(m.va, at), 65536).unwrap(), pattern(10 + d as u64, 65536));
                    }
                    say("checked");
                    hear_word("done");
                    teardown(rt, m);
                }
                importer => {
                    let device: i32 = importer.trim_start_matches("importer").parse().unwrap();
                    raw::set_device(rt, device).unwrap();
                    say(format!("whitelist {}", raw::device_get_bare_tgid(rt).unwrap()));
                    let token: u64 = hear_as("token");
                    let m = import_map(rt, token, device, SIZE);
                    assert_eq!(read_dev(rt, m.va, SIZE).unwrap(), pattern(1, SIZE), "what the exporter wrote");
                    let at = (1 << 20) + device as usize * 65536;
                    write_dev(rt, offset(m.va, at), &pattern(10 + device as u64, 65536)).unwrap();
                    say("wrote");
                    hear_word("checked");
                    teardown(rt, m);
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer0", "importer1"]);
            let tgids = crew.up("whitelist");
            assert_eq!(
                tgids.split(' ').next(),
                Some(crew.workers[0].pid().to_string().as_str()),
                "the bare tgid is the host pid"
            );
            crew.play("> token, < wrote, > checked");
            crew.release();
        },
    );
}

#[test]
fn memory_lives_until_every_process_has_freed_it() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            match role {
                "exporter" => {
                    let (m, token) = exported(rt, MIB2, ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION);
                    write_dev(rt, m.va, &pattern(7, MIB2)).unwrap();
                    say(format!("token {token}"));
                    hear_word("imported");
                    teardown(rt, m);
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!((st.physObjects, st.localHandles), (1, 0), "the importer still holds it");
                    assert_eq!(st.deviceBytesUsed[0], MIB2 as u64);
                    say("freed");
                }
                _ => {
                    let token: u64 = hear_as("token");
                    let m = import_map(rt, token, 0, MIB2);
                    say("imported");
                    hear_word("check");
                    // The exporter freed everything and exited; the memory is still there for us.
                    assert_eq!(read_dev(rt, m.va, MIB2).unwrap(), pattern(7, MIB2));
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!((st.processes, st.physObjects), (1, 1));
                    teardown(rt, m);
                    let st = raw::sim_get_stats(rt).unwrap();
                    assert_eq!((st.physObjects, st.deviceBytesUsed[0]), (0, 0), "released with its last holder");
                    say("released");
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            crew.play("> token, < imported");
            crew.owner.expect("freed");
            // The importer checks once the exporter is gone.
            crew.owner.wait_ok();
            crew.workers[0].send("check");
            crew.workers[0].expect("released");
            crew.join();
        },
    );
}

#[test]
fn whitelist_refuses_then_admits_and_the_opt_out_admits_anyone() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            match role {
                "exporter" => {
                    let (guarded, tg) = exported(rt, MIB2, 0);
                    let (open, to) = exported(rt, MIB2, ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION);
                    assert_code!(raw::mem_set_pid_to_shareable_handle(rt, to, &[12345]), ACL_ERROR_RT_NO_PERMISSION);
                    assert_code!(raw::mem_set_pid_to_shareable_handle(rt, tg, &[0]), DRV);
                    assert_code!(raw::mem_set_pid_to_shareable_handle(rt, tg, &[]), ACL_ERROR_INVALID_PARAM);
                    assert_code!(
                        raw::mem_set_pid_to_shareable_handle(rt, 0xdead_0000_0001, &[1]),
                        ACL_ERROR_RT_INVALID_HANDLE
                    );
                    say(format!("tokens {tg} {to}"));
                    let tgid: i32 = hear_as("whitelist");
                    raw::mem_set_pid_to_shareable_handle(rt, tg, &[tgid]).unwrap();
                    say("added");
                    hear_word("done");
                    teardown(rt, guarded);
                    teardown(rt, open);
                }
                _ => {
                    let tokens = hear_word("tokens");
                    let (tg, to) = tokens.split_once(' ').unwrap();
                    let (tg, to): (u64, u64) = (tg.parse().unwrap(), to.parse().unwrap());
                    assert_code!(raw::mem_import_from_shareable_handle(rt, tg, 0), DRV);
                    assert_code!(raw::mem_set_pid_to_shareable_handle(rt, tg, &[std::process::id() as i32]), DRV);
                    let o = import_map(rt, to, 0, MIB2);
                    say(format!("whitelist {}", raw::device_get_bare_tgid(rt).unwrap()));
                    hear_word("added");
                    let g = import_map(rt, tg, 0, MIB2);
                    teardown(rt, g);
                    teardown(rt, o);
                    say("imported");
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            crew.play("> tokens, < whitelist, > added");
            crew.release_after("imported");
        },
    );
}

#[test]
fn a_handle_and_its_shareable_handle_are_one_to_one() {
    by_role(
        test_name!(),
        |rt, role| {
            raw::set_device(rt, 0).unwrap();
            let none = aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE;
            let opt_out = ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION;
            match role {
                "exporter" => {
                    let (m, token) = exported(rt, MIB2, opt_out);
                    assert_code!(export(rt, &m, opt_out), DRV);
                    // Export and import may not happen in one process, on any device.
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 0), DRV);
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 1), DRV);
                    // SAFETY: our live handle (bad type and flags are refused).
                    unsafe {
                        assert_code!(
                            raw::mem_export_to_shareable_handle(
                                rt,
                                m.handle,
                                aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_POSIX,
                                0
                            ),
                            ACL_ERROR_INVALID_PARAM
                        );
                        assert_code!(
                            raw::mem_export_to_shareable_handle(rt, m.handle, none, 2),
                            ACL_ERROR_RT_PARAM_INVALID
                        );
                    }
                    say(format!("token {token}"));
                    hear_word("imported");
                    // The exporter frees while the importer holds it: no new import may follow.
                    teardown(rt, m);
                    say("freed");
                    hear_word("done");
                }
                "importer" => {
                    let token: u64 = hear_as("token");
                    let m = import_map(rt, token, 1, MIB2);
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 1), DRV);
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 0), DRV);
                    assert_code!(export(rt, &m, opt_out), DRV);
                    say("imported");
                    hear_word("done");
                    teardown(rt, m);
                }
                _ => {
                    // A third process, after the exporter freed.
                    let token: u64 = hear_as("token");
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 0), ACL_ERROR_RT_INVALID_HANDLE);
                    assert_code!(
                        raw::mem_import_from_shareable_handle(rt, token ^ 0x40, 0),
                        ACL_ERROR_RT_INVALID_HANDLE
                    );
                    assert_code!(raw::mem_import_from_shareable_handle(rt, token, 9), ACL_ERROR_RT_INVALID_DEVICEID);
                    say("refused");
                }
            }
        },
        |sc| {
            let mut crew = sc.crew("exporter", &["importer"]);
            let token = crew.down("token");
            crew.play("< imported");
            crew.owner.expect("freed");
            crew.scenario().ask("late", format!("token {token}"), "refused");
            crew.workers[0].send("done");
            crew.release();
        },
    );
}

#[test]
fn import_needs_a_current_device() {
    by_role(
        test_name!(),
        |rt, role| {
            if role == "exporter" {
                serve_one_export(rt);
                return;
            }
            let token: u64 = hear_as("token");
            assert_code!(raw::mem_import_from_shareable_handle(rt, token, 0), ACL_ERROR_RT_CONTEXT_NULL);
            raw::set_device(rt, 1).unwrap();
            let h = raw::mem_import_from_shareable_handle(rt, token, 0).unwrap();
            // SAFETY: our live handle.
            unsafe { raw::free_physical(rt, h) }.unwrap();
            say("ok");
        },
        |sc| with_one_export(sc, "importer"),
    );
}

#[test]
fn mapping_rules() {
    by_role(
        test_name!(),
        |rt, role| {
            if role == "exporter" {
                serve_one_export(rt);
                return;
            }
            raw::set_device(rt, 0).unwrap();
            let token: u64 = hear_as("token");
            let p0 = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE);
            let h1 = raw::malloc_physical(rt, MIB2, &p0, 0).unwrap();
            let h2 = raw::malloc_physical(rt, MIB2, &p0, 0).unwrap();
            let big = raw::malloc_physical(rt, 2 * MIB2, &p0, 0).unwrap();
            let on1 = raw::malloc_physical(rt, MIB2, &prop(1, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0).unwrap();
            let imported = raw::mem_import_from_shareable_handle(rt, token, 0).unwrap();
            // SAFETY: the test owns every range and handle it passes below; bad ones are refused.
            unsafe {
                let va = raw::reserve_mem_address(rt, 8 * MIB2, 0, std::ptr::null_mut(), 0).unwrap();
                assert_eq!(va as usize % MIB2, 0, "reservations are 2 MiB aligned");
                // Argument checks of the ACL layer, the driver's rules, and what the documentation forbids.
                assert_code!(raw::map_mem(rt, va, MIB2, 0, h1, 1), ACL_ERROR_INVALID_PARAM);
                assert_code!(raw::map_mem(rt, va, 0, 0, h1, 0), ACL_ERROR_INVALID_PARAM);
                assert_code!(raw::map_mem(rt, std::ptr::null_mut(), MIB2, 0, h1, 0), ACL_ERROR_INVALID_PARAM);
                assert_code!(raw::map_mem(rt, va, MIB2, 4096, h1, 0), ACL_ERROR_RT_PARAM_INVALID);
                assert_code!(raw::map_mem(rt, va, MIB2, 0, 0x1234 as aclrtDrvMemHandle, 0), ACL_ERROR_RT_PARAM_INVALID);
                assert_code!(raw::map_mem(rt, offset(va, 4096), MIB2, 0, h1, 0), DRV);
                assert_code!(raw::map_mem(rt, va, MIB2, 0, big, 0), DRV);
                assert_code!(raw::map_mem(rt, offset(va, 7 * MIB2), 2 * MIB2, 0, big, 0), DRV);
                let mut host = [0u8; 64];
                assert_code!(raw::map_mem(rt, host.as_mut_ptr().cast(), MIB2, 0, h1, 0), DRV);
                // Two handles side by side: a copy may span them.
                raw::map_mem(rt, va, MIB2, 0, h1, 0).unwrap();
                raw::map_mem(rt, offset(va, MIB2), MIB2, 0, h2, 0).unwrap();
                assert_code!(raw::map_mem(rt, va, MIB2, 0, h2, 0), DRV);
                let span = pattern(3, 65536);
                write_dev(rt, offset(va, MIB2 - 32768), &span).unwrap();
                assert_eq!(read_dev(rt, offset(va, MIB2 - 32768), 65536).unwrap(), span);
                // ... but not into an unmapped part.
                assert_code!(read_dev(rt, offset(va, 2 * MIB2 - 4096), 8192), DRV);
                // A reservation is bound to one device, even after its mappings are gone.
                assert_code!(raw::map_mem(rt, offset(va, 2 * MIB2), MIB2, 0, on1, 0), DRV);
                // Local and imported handles may not share a reservation.
                assert_code!(raw::map_mem(rt, offset(va, 4 * MIB2), MIB2, 0, imported, 0), DRV);
                // Release only when nothing is mapped; unmap only at a mapping's start.
                assert_code!(raw::release_mem_address(rt, va), DRV);
                assert_code!(raw::unmap_mem(rt, offset(va, 4096)), DRV);
                assert_code!(raw::release_mem_address(rt, offset(va, MIB2)), ACL_ERROR_RT_PARAM_INVALID);
                // Access: read-write only, on the whole mapping, the same flags when repeated.
                let desc = |flags: u32| aclrtMemAccessDesc {
                    flags: aclrtMemAccessFlags(flags),
                    location: aclrtMemLocation { id: 0, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
                    rsv: [0; 12],
                };
                raw::mem_set_access(rt, va, MIB2, &[desc(3)]).unwrap();
                raw::mem_set_access(rt, va, MIB2, &[desc(3)]).unwrap();
                assert_code!(raw::mem_set_access(rt, va, MIB2, &[desc(1)]), ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
                assert_code!(raw::mem_set_access(rt, va, MIB2, &[desc(2)]), ACL_ERROR_RT_PARAM_INVALID);
                assert_code!(raw::mem_set_access(rt, va, MIB2, &[]), ACL_ERROR_RT_PARAM_INVALID);
                assert_code!(raw::mem_set_access(rt, va, 2 * MIB2, &[desc(3)]), DRV);
                assert_code!(raw::mem_set_access(rt, offset(va, 4 * MIB2), MIB2, &[desc(3)]), DRV);
                // Free while mapped: the free succeeds, the release waits for the unmap.
                raw::free_physical(rt, h1).unwrap();
                assert_code!(raw::free_physical(rt, h1), ACL_ERROR_RT_PARAM_INVALID);
                assert_code!(raw::map_mem(rt, offset(va, 6 * MIB2), MIB2, 0, h1, 0), ACL_ERROR_RT_PARAM_INVALID);
                let before = raw::sim_get_stats(rt).unwrap();
                assert_eq!(read_dev(rt, offset(va, MIB2 - 32768), 32768).unwrap(), span[..32768], "still mapped");
                raw::unmap_mem(rt, va).unwrap();
                let after = raw::sim_get_stats(rt).unwrap();
                assert_eq!(after.physObjects + 1, before.physObjects, "released at the unmap");
                assert_code!(raw::unmap_mem(rt, va), DRV);
                raw::unmap_mem(rt, offset(va, MIB2)).unwrap();
                raw::release_mem_address(rt, va).unwrap();
                assert_code!(raw::release_mem_address(rt, va), ACL_ERROR_RT_PARAM_INVALID);
                // An imported handle has its own reservation; it maps there.
                let vi = raw::reserve_mem_address(rt, MIB2, 0, std::ptr::null_mut(), 0).unwrap();
                raw::map_mem(rt, vi, MIB2, 0, imported, 0).unwrap();
                assert_code!(raw::map_mem(rt, vi, MIB2, 0, h2, 0), DRV);
                raw::unmap_mem(rt, vi).unwrap();
                raw::release_mem_address(rt, vi).unwrap();
                for h in [h2, big, on1, imported] {
                    raw::free_physical(rt, h).unwrap();
                }
            }
            let st = raw::sim_get_stats(rt).unwrap();
            assert_eq!((st.localHandles, st.localReservations, st.localMappings), (0, 0, 0));
            say("ok");
        },
        |sc| with_one_export(sc, "mapper"),
    );
}

#[test]
fn allocation_and_reservation_arguments() {
    solo(test_name!(), |rt| {
        let min = aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM;
        let rec = aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED;
        let huge = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE);
        assert_eq!(raw::mem_get_allocation_granularity(rt, &huge, min).unwrap(), MIB2);
        assert_eq!(raw::mem_get_allocation_granularity(rt, &huge, rec).unwrap(), MIB2);
        let normal = prop(1, aclrtMemAttr::ACL_HBM_MEM_NORMAL);
        assert_eq!(raw::mem_get_allocation_granularity(rt, &normal, min).unwrap(), MIB2);
        let g1 = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE1G);
        assert_eq!(raw::mem_get_allocation_granularity(rt, &g1, min).unwrap(), 1 << 30);
        let undef = aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_UNDEF;
        assert_code!(raw::mem_get_allocation_granularity(rt, &huge, undef), ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
        assert_code!(
            raw::mem_get_allocation_granularity(rt, &prop(5, aclrtMemAttr::ACL_HBM_MEM_HUGE), min),
            ACL_ERROR_RT_INVALID_DEVICEID
        );
        assert_code!(
            raw::mem_get_allocation_granularity(rt, &prop(0, aclrtMemAttr::ACL_DDR_MEM_HUGE), min),
            ACL_ERROR_INVALID_PARAM
        );

        // Physical allocation needs no current device, only a valid location.
        let mut p = huge;
        assert_code!(raw::malloc_physical(rt, MIB2, &p, 1), ACL_ERROR_INVALID_PARAM);
        assert_code!(raw::malloc_physical(rt, 0, &p, 0), ACL_ERROR_INVALID_PARAM);
        assert_code!(raw::malloc_physical(rt, MIB2 + 4096, &p, 0), DRV);
        p.handleType = aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_POSIX;
        assert_code!(raw::malloc_physical(rt, MIB2, &p, 0), ACL_ERROR_INVALID_PARAM);
        for attr in [0, 1, 8, 9, 11, 18, 2, 3] {
            let p = prop(0, aclrtMemAttr(attr));
            assert_code!(raw::malloc_physical(rt, MIB2, &p, 0), ACL_ERROR_INVALID_PARAM);
        }
        let mut p = huge;
        p.reserve = 1;
        assert_code!(raw::malloc_physical(rt, MIB2, &p, 0), ACL_ERROR_RT_PARAM_INVALID);
        let mut p = huge;
        p.location.type_ = aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_UNREGISTERED;
        assert_code!(raw::malloc_physical(rt, MIB2, &p, 0), ACL_ERROR_INVALID_PARAM);
        p.location.type_ = aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST;
        assert_code!(raw::malloc_physical(rt, MIB2, &p, 0), ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
        assert_code!(
            raw::malloc_physical(rt, MIB2, &prop(2, aclrtMemAttr::ACL_HBM_MEM_HUGE), 0),
            ACL_ERROR_RT_INVALID_DEVICEID
        );
        for attr in [aclrtMemAttr::ACL_HBM_MEM_NORMAL, aclrtMemAttr::ACL_MEM_HUGE, aclrtMemAttr::ACL_MEM_P2P_HUGE] {
            let h = raw::malloc_physical(rt, MIB2, &prop(1, attr), 0).unwrap();
            // SAFETY: our live handle.
            unsafe { raw::free_physical(rt, h) }.unwrap();
        }
        // SAFETY: the test owns what it passes; bad arguments are refused.
        unsafe {
            assert_code!(raw::free_physical(rt, std::ptr::null_mut()), ACL_ERROR_INVALID_PARAM);
            let null = std::ptr::null_mut();
            assert_code!(raw::reserve_mem_address(rt, 0, 0, null, 0), ACL_ERROR_INVALID_PARAM);
            assert_code!(raw::reserve_mem_address(rt, MIB2, 0, null, 2), ACL_ERROR_INVALID_PARAM);
            assert_code!(raw::reserve_mem_address(rt, MIB2, 4096, null, 0), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(
                raw::reserve_mem_address(rt, MIB2, 0, 0x7000_0000_1000 as *mut c_void, 0),
                ACL_ERROR_RT_PARAM_INVALID
            );
            // Small reservations are rounded up to the granularity; big ones are 1 GiB aligned.
            let small = raw::reserve_mem_address(rt, 4096, 0, null, 1).unwrap();
            let h = raw::malloc_physical(rt, MIB2, &huge, 0).unwrap();
            raw::map_mem(rt, small, MIB2, 0, h, 0).unwrap();
            raw::unmap_mem(rt, small).unwrap();
            raw::free_physical(rt, h).unwrap();
            raw::release_mem_address(rt, small).unwrap();
            let large = raw::reserve_mem_address(rt, 3 << 30, 0, null, 0).unwrap();
            assert_eq!(large as usize % (1 << 30), 0);
            raw::release_mem_address(rt, large).unwrap();
        }
        let st = raw::sim_get_stats(rt).unwrap();
        assert_eq!((st.physObjects, st.localReservations), (0, 0));
    });
}
