//! Events and IPC events, stream memory operations (value write and wait), contexts, pointer
//! attributes, batch copies and V2 fabric handles across simulated servers: each allowed and refused,
//! across real processes where the call is about other processes.

use std::ffi::c_void;
use std::time::Duration;

use aclshm::raw::{self, BatchCopy, IpcKey};
use aclshm::sys::*;
use aclshm::{Context, Event, IpcEventHandle, Place, Runtime, Stream};

use crate::harness::*;
use crate::{assert_code, test_name};

const DRV: i32 = ACL_ERROR_RT_DRV_INTERNAL_ERROR;
const PARAM: i32 = ACL_ERROR_RT_PARAM_INVALID;

fn put_u64(rt: &Runtime, p: *mut c_void, v: u64) {
    write_dev(rt, p, &v.to_le_bytes()).unwrap();
}

fn get_u64(rt: &Runtime, p: *const c_void) -> u64 {
    u64::from_le_bytes(read_dev(rt, p, 8).unwrap().try_into().unwrap())
}

/// IPC events between two processes on two devices, both ways: A records after writing, B's stream waits
/// and reads; then B records and A waits. Every refusal on the way.
#[test]
fn ipc_events_between_two_processes_on_two_devices() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "a" => {
                raw::set_device(rt, 0).unwrap();
                // Only aclrtCreateEventExWithFlag makes IPC events, and ACL_EVENT_IPC stands alone.
                assert_code!(raw::create_event_with_flag(rt, ACL_EVENT_IPC), PARAM);
                assert_code!(raw::create_event_ex_with_flag(rt, ACL_EVENT_IPC | ACL_EVENT_SYNC), PARAM);
                assert_code!(raw::create_event_ex_with_flag(rt, 0), PARAM);
                assert_code!(raw::create_event_ex_with_flag(rt, ACL_EVENT_EXTERNAL), PARAM);
                let local = raw::create_event(rt).unwrap();
                // SAFETY: our live event, not an IPC one.
                assert_code!(unsafe { raw::ipc_get_event_handle(rt, local) }, PARAM);
                // SAFETY: as above.
                unsafe { raw::destroy_event(rt, local) }.unwrap();

                let stream = Stream::new(rt, 0).unwrap();
                let ev = Event::ipc(rt, 0).unwrap();
                let h = ev.export().unwrap();
                assert_eq!(ev.export().unwrap(), h, "exported once; the handle is cached");
                // The raw call gives the same handle again.
                // SAFETY: our live event.
                let again = unsafe { raw::ipc_get_event_handle(rt, ev.as_raw()) }.unwrap();
                assert_eq!(IpcEventHandle(again.reserved.map(|b| b as u8)), h);
                // The creating process cannot open its own export.
                assert_code!(raw::ipc_open_event_handle(rt, again), DRV);
                assert!(ev.is_complete().unwrap(), "an IPC event never recorded is complete");
                assert!(matches!(ev.elapsed_ms(&ev), Err(aclshm::Error::NotPermitted(_))));
                // SAFETY: our live event; the runtime refuses time on an IPC event.
                let timed = unsafe { raw::event_elapsed_time(rt, ev.as_raw(), ev.as_raw()) };
                assert_code!(timed, ACL_ERROR_RT_FEATURE_NOT_SUPPORT);

                let mem = raw::malloc(rt, 4096, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST).unwrap();
                // SAFETY: our allocation.
                let key = unsafe {
                    raw::ipc_mem_get_export_key(rt, mem, 4096, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                }
                .unwrap();
                say(format!("handle {h} {key}"));
                hear_word("opened");
                for round in 1..=20u64 {
                    put_u64(rt, mem, round);
                    ev.record(&stream).unwrap();
                    say(format!("recorded {round}"));
                    hear_word("answered");
                    // B recorded the same event after writing its answer: wait for that record here.
                    ev.wait(&stream).unwrap();
                    stream.synchronize().unwrap();
                    assert!(ev.wait_host(Duration::from_secs(30)).unwrap());
                    assert_eq!(get_u64(rt, mem.cast::<u8>().wrapping_add(8).cast()), round * 1000, "round {round}");
                }
                say("bye");
                hear_word("closed");
                ev.close().unwrap();
                // SAFETY: importers closed first; nothing queued uses the memory.
                unsafe {
                    raw::ipc_mem_close(rt, &key).unwrap();
                    raw::free(rt, mem).unwrap();
                }
                stream.close().unwrap();
            }
            "b" => {
                raw::set_device(rt, 1).unwrap();
                let (h, key) =
                    hear_word("handle").split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
                let h: IpcEventHandle = h.parse().unwrap();
                let key: IpcKey = key.parse().unwrap();
                // A forged handle is refused.
                let mut forged = h;
                forged.0[0] ^= 0xFF;
                assert!(Event::open(rt, &forged, 1).is_err());
                let ev = Event::open(rt, &h, 1).unwrap();
                assert!(ev.is_ipc());
                assert!(matches!(ev.export(), Err(aclshm::Error::NotPermitted(_))));
                // SAFETY: our live (opened) event: only its creator exports it.
                assert_code!(unsafe { raw::ipc_get_event_handle(rt, ev.as_raw()) }, PARAM);
                let mem = raw::ipc_mem_import_by_key(rt, &key, 0).unwrap();
                let stream = Stream::new(rt, 1).unwrap();
                say("opened");
                for round in 1..=20u64 {
                    hear_word("recorded");
                    // The stream waits for A's record, then the host reads what A wrote before it.
                    ev.wait(&stream).unwrap();
                    stream.synchronize().unwrap();
                    ev.synchronize().unwrap();
                    assert_eq!(get_u64(rt, mem), round, "round {round}");
                    put_u64(rt, mem.cast::<u8>().wrapping_add(8).cast(), round * 1000);
                    ev.record(&stream).unwrap();
                    stream.synchronize().unwrap();
                    say("answered");
                }
                hear_word("bye");
                ev.close().unwrap();
                // SAFETY: nothing uses the imported memory any more.
                unsafe { raw::ipc_mem_close(rt, &key) }.unwrap();
                stream.close().unwrap();
                say("closed");
            }
            _ => unreachable!(),
        },
        |sc| {
            let [mut a, mut b] = sc.spawn_each(["a", "b"]);
            a.relay("handle", &mut b);
            b.relay("opened", &mut a);
            for _ in 1..=20 {
                a.relay("recorded", &mut b);
                b.relay("answered", &mut a);
            }
            a.relay("bye", &mut b);
            b.relay("closed", &mut a);
            a.join();
            b.join();
            sc.finish();
        },
    );
}

/// An IPC event whose creator destroyed it cannot be opened; one opened before stays usable.
#[test]
fn an_ipc_event_outlives_its_creator_only_for_those_who_opened_it() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "a" => {
                let ev = Event::ipc(rt, 0).unwrap();
                say(format!("handle {}", ev.export().unwrap()));
                hear_word("opened");
                ev.close().unwrap();
                say("destroyed");
                hear_word("bye");
            }
            "b" | "c" => {
                raw::set_device(rt, 0).unwrap();
                let h: IpcEventHandle = hear_word("handle").parse().unwrap();
                if role == "b" {
                    let ev = Event::open(rt, &h, 0).unwrap();
                    say("opened");
                    hear_word("destroyed");
                    // Still ours: record, wait, query.
                    ev.signal().unwrap();
                    assert!(ev.is_complete().unwrap());
                    ev.close().unwrap();
                } else {
                    hear_word("destroyed");
                    assert_code!(Event::open(rt, &h, 0), ACL_ERROR_RT_INVALID_HANDLE);
                }
                say("done");
            }
            _ => unreachable!(),
        },
        |sc| {
            let [mut a, mut b, mut c] = sc.spawn_each(["a", "b", "c"]);
            let h = a.expect("handle");
            b.send(format!("handle {h}"));
            c.send(format!("handle {h}"));
            b.relay("opened", &mut a);
            let d = a.expect("destroyed");
            b.send(format!("destroyed {d}"));
            c.send(format!("destroyed {d}"));
            b.expect("done");
            c.expect("done");
            a.send("bye");
            for p in [a, b, c] {
                p.join();
            }
            sc.finish();
        },
    );
}

/// Events inside one process: ordering between streams, the status of an event never recorded (not ready
/// for aclrtCreateEvent, complete for the Ex kind), timing, and each documented refusal.
#[test]
fn events_order_streams_and_keep_the_documented_rules() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        assert_code!(raw::create_event_with_flag(rt, 0), PARAM);
        assert_code!(raw::create_event_with_flag(rt, 0x80), PARAM);
        assert_code!(raw::create_event_with_flag(rt, ACL_EVENT_EXTERNAL | ACL_EVENT_SYNC), PARAM);
        assert_code!(raw::create_event_ex_with_flag(rt, ACL_EVENT_DEVICE_USE_ONLY), PARAM);

        let old = raw::create_event(rt).unwrap();
        // SAFETY: our live events and streams throughout.
        unsafe {
            assert!(!raw::query_event_status(rt, old).unwrap(), "aclrtCreateEvent: not ready before a record");
            raw::synchronize_event(rt, old).unwrap();
            assert_code!(raw::event_elapsed_time(rt, old, old), ACL_ERROR_RT_INTERNAL_ERROR);
            let no_sync = raw::create_event_with_flag(rt, ACL_EVENT_TIME_LINE).unwrap();
            assert_code!(raw::stream_wait_event(rt, std::ptr::null_mut(), no_sync), ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
            let device_only = raw::create_event_with_flag(rt, ACL_EVENT_DEVICE_USE_ONLY).unwrap();
            assert_code!(raw::record_event(rt, device_only, std::ptr::null_mut()), PARAM);
            let untimed = raw::create_event_ex_with_flag(rt, ACL_EVENT_SYNC).unwrap();
            raw::record_event(rt, untimed, std::ptr::null_mut()).unwrap();
            raw::synchronize_event(rt, untimed).unwrap();
            assert_code!(raw::event_elapsed_time(rt, untimed, untimed), ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID);
            for e in [old, no_sync, device_only, untimed] {
                raw::destroy_event(rt, e).unwrap();
            }
            assert_code!(raw::destroy_event(rt, old), ACL_ERROR_RT_INVALID_HANDLE);
            assert_code!(raw::record_event(rt, std::ptr::null_mut(), std::ptr::null_mut()), ACL_ERROR_INVALID_PARAM);
        }

        // Stream b waits for stream a's record, which comes after a value wait that only the host releases:
        // b's copy cannot run before the host writes.
        let (a, b) = (Stream::new(rt, 0).unwrap(), Stream::new(rt, 0).unwrap());
        let mem = raw::malloc(rt, 4096, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST).unwrap();
        put_u64(rt, mem, 0);
        let ev = Event::new(rt, 0).unwrap();
        assert!(ev.is_complete().unwrap(), "an Ex event never recorded is complete");
        let start = Event::new(rt, 0).unwrap();
        start.record(&a).unwrap();
        // SAFETY: device memory of ours, a live stream.
        unsafe { raw::value_wait(rt, mem, 7, ACL_STREAM_WAIT_VALUE_EQ, a.as_raw()) }.unwrap();
        ev.record(&a).unwrap();
        ev.wait(&b).unwrap();
        let copy_to = mem.cast::<u8>().wrapping_add(8).cast::<c_void>();
        // SAFETY: both ranges are ours, 8 bytes.
        unsafe { raw::memcpy_async(rt, copy_to, 8, mem, 8, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE, b.as_raw()) }
            .unwrap();
        assert!(!ev.wait_host(Duration::from_millis(100)).unwrap(), "the record waits behind the value wait");
        assert!(!ev.is_complete().unwrap());
        put_u64(rt, mem, 7);
        b.synchronize().unwrap();
        assert_eq!(get_u64(rt, copy_to), 7, "b's copy ran after a's record");
        let ms = start.elapsed_ms(&ev).unwrap();
        assert!(ms >= 0.0, "elapsed {ms} ms");
        // A record made after a wait does not move it.
        ev.wait(&b).unwrap();
        b.synchronize().unwrap();
        drop((ev, start, a, b));
        // SAFETY: our allocation, nothing queued on it.
        unsafe { raw::free(rt, mem) }.unwrap();
        raw::synchronize_device(rt).unwrap();
    });
}

/// aclrtValueWrite in one process releases aclrtValueWait in another, through IPC memory; every
/// comparison mode; the refusals.
#[test]
fn value_write_in_one_process_releases_value_wait_in_another() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "waiter" => {
                raw::set_device(rt, 0).unwrap();
                let mem = raw::malloc(rt, 4096, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST).unwrap();
                put_u64(rt, mem, 0);
                // SAFETY: our allocation and streams, throughout.
                unsafe {
                    assert_code!(raw::value_write(rt, mem, 1, 1, std::ptr::null_mut()), PARAM);
                    assert_code!(raw::value_wait(rt, mem, 1, 4, std::ptr::null_mut()), PARAM);
                    let unaligned = mem.cast::<u8>().wrapping_add(4).cast();
                    assert_code!(raw::value_write(rt, unaligned, 1, 0, std::ptr::null_mut()), PARAM);
                    let mut host = 0u64;
                    let host_ptr: *mut c_void = (&raw mut host).cast();
                    assert_code!(raw::value_write(rt, host_ptr, 1, 0, std::ptr::null_mut()), PARAM);
                    assert_code!(
                        raw::value_wait(rt, std::ptr::null_mut(), 1, 0, std::ptr::null_mut()),
                        ACL_ERROR_INVALID_PARAM
                    );
                }
                // SAFETY: our allocation.
                let key = unsafe {
                    raw::ipc_mem_get_export_key(rt, mem, 4096, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
                }
                .unwrap();
                let stream = Stream::new(rt, 0).unwrap();
                // Four waits in a row, one per mode, each released by one of the writer's values in turn:
                // GEQ 10 by 10 (not 9), EQ 11 by 11 (not 10), AND 0b100 by 12 = 0b1100 (not 11 = 0b1011), and
                // NOR: !(v | !12) != 0, false for v = 12 and v = u64::MAX, true for v = 1.
                // SAFETY: our allocation and stream.
                unsafe {
                    raw::value_wait(rt, mem, 10, ACL_STREAM_WAIT_VALUE_GEQ, stream.as_raw()).unwrap();
                    raw::value_wait(rt, mem, 11, ACL_STREAM_WAIT_VALUE_EQ, stream.as_raw()).unwrap();
                    raw::value_wait(rt, mem, 0b100, ACL_STREAM_WAIT_VALUE_AND, stream.as_raw()).unwrap();
                    raw::value_wait(rt, mem, !12, ACL_STREAM_WAIT_VALUE_NOR, stream.as_raw()).unwrap();
                }
                let done = Event::new(rt, 0).unwrap();
                done.record(&stream).unwrap();
                say(format!("key {key}"));
                for (stage, v) in [(1, 9u64), (2, 10), (3, 11), (4, 12), (5, u64::MAX), (6, 1)] {
                    hear_word("wrote");
                    let complete =
                        done.wait_host(Duration::from_millis(if stage == 6 { 30_000 } else { 150 })).unwrap();
                    assert_eq!(complete, stage == 6, "after the writer wrote {v:#x} (stage {stage})");
                    say("checked");
                }
                stream.synchronize().unwrap();
                hear_word("closed");
                done.close().unwrap();
                stream.close().unwrap();
                // SAFETY: the importer closed first.
                unsafe {
                    raw::ipc_mem_close(rt, &key).unwrap();
                    raw::free(rt, mem).unwrap();
                }
            }
            "writer" => {
                raw::set_device(rt, 1).unwrap();
                let key: IpcKey = hear_word("key").parse().unwrap();
                let mem = raw::ipc_mem_import_by_key(rt, &key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS).unwrap();
                let stream = Stream::new(rt, 1).unwrap();
                for v in [9u64, 10, 11, 12, u64::MAX, 1] {
                    // SAFETY: imported device memory and our stream.
                    unsafe { raw::value_write(rt, mem, v, 0, stream.as_raw()) }.unwrap();
                    stream.synchronize().unwrap();
                    assert_eq!(get_u64(rt, mem), v);
                    say("wrote");
                    hear_word("checked");
                }
                stream.close().unwrap();
                // SAFETY: nothing uses the imported memory any more.
                unsafe { raw::ipc_mem_close(rt, &key) }.unwrap();
                say("closed");
            }
            _ => unreachable!(),
        },
        |sc| {
            let [mut w, mut x] = sc.spawn_each(["waiter", "writer"]);
            w.relay("key", &mut x);
            for _ in 0..6 {
                x.relay("wrote", &mut w);
                w.relay("checked", &mut x);
            }
            x.relay("closed", &mut w);
            w.join();
            x.join();
            sc.finish();
        },
    );
}

/// Contexts: creating one makes it (and its device) current; the default context of a device; what can
/// and cannot be destroyed or made current.
#[test]
fn contexts_follow_the_documented_rules() {
    solo(test_name!(), |rt| {
        // A thread with no device has no context.
        assert_code!(raw::get_current_context(rt), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::synchronize_device(rt), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::create_context(rt, 99), ACL_ERROR_RT_INVALID_DEVICEID);
        assert_eq!(raw::get_run_mode(rt).unwrap(), aclrtRunMode::ACL_HOST);
        raw::set_device(rt, 0).unwrap();
        let default0 = raw::get_current_context(rt).unwrap();
        assert_eq!(raw::get_current_context(rt).unwrap(), default0, "the same default context");
        // SAFETY: a device's default context is refused.
        assert_code!(unsafe { raw::destroy_context(rt, default0) }, ACL_ERROR_RT_CONTEXT_NULL);
        let ctx = Context::new(rt, 1).unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 1);
        assert_eq!(raw::get_current_context(rt).unwrap(), ctx.as_raw());
        // Work happens on the context's device.
        let s = raw::create_stream(rt).unwrap();
        // SAFETY: our stream.
        unsafe { raw::destroy_stream(rt, s) }.unwrap();
        // SAFETY: our live default context.
        unsafe { raw::set_current_context(rt, default0) }.unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 0);
        ctx.make_current().unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 1);
        // Another thread sees none until it sets one; then it shares the context.
        let raw_ctx = ctx.as_raw() as usize;
        std::thread::scope(|t| {
            t.spawn(|| {
                assert_code!(raw::get_current_context(rt), ACL_ERROR_RT_CONTEXT_NULL);
                // SAFETY: a live context of this process.
                unsafe { raw::set_current_context(rt, raw_ctx as aclrtContext) }.unwrap();
                assert_eq!(raw::get_device(rt).unwrap(), 1);
            });
        });
        let stale = ctx.as_raw();
        ctx.close().unwrap();
        // Destroying the current context leaves the thread without one.
        assert_code!(raw::get_current_context(rt), ACL_ERROR_RT_CONTEXT_NULL);
        // SAFETY: a destroyed context is refused.
        unsafe {
            assert_code!(raw::set_current_context(rt, stale), ACL_ERROR_RT_CONTEXT_NULL);
            assert_code!(raw::destroy_context(rt, stale), ACL_ERROR_RT_CONTEXT_NULL);
            assert_code!(raw::set_current_context(rt, std::ptr::null_mut()), ACL_ERROR_INVALID_PARAM);
        }
        raw::set_device(rt, 0).unwrap();
        raw::reset_device(rt, 0).unwrap();
        raw::reset_device(rt, 0).unwrap();
    });
}

/// `Runtime::on_device` returns what its function made even when the thread's previous device cannot be
/// made current again after (it used to drop it for that error, leaking what only the result can free:
/// here a stream), and says which device the thread is left on.
#[test]
fn on_device_keeps_its_result_when_the_previous_device_cannot_come_back() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        // The switch to device 1 succeeds, the switch back fails.
        raw::sim_inject_fault(rt, "aclrtSetDevice", 2, 1, aclshm::AclError::DRV_INTERNAL_ERROR).unwrap();
        let s = rt.on_device(1, || raw::create_stream(rt)).expect("the stream made on device 1");
        raw::sim_clear_faults(rt).unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 1, "left on device 1");
        // SAFETY: the stream just made, on the device current now.
        unsafe { raw::destroy_stream(rt, s) }.unwrap();
        raw::set_device(rt, 0).unwrap();
        // Without a fault the previous device comes back.
        let s = rt.on_device(1, || raw::create_stream(rt)).unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 0);
        rt.on_device(1, || {
            // SAFETY: the stream made on device 1 above.
            unsafe { raw::destroy_stream(rt, s) }
        })
        .unwrap();
    });
}

/// aclrtPointerGetAttributes tells device memory (and its device) from page-locked and other host memory;
/// aclrtMemcpyBatch copies between them and names the copy it refuses.
#[test]
fn pointer_attributes_and_batch_copies() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 1).unwrap();
        let dev = raw::malloc(rt, 1 << 20, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_ONLY).unwrap();
        let small = raw::malloc(rt, 4096, aclrtMemMallocPolicy::ACL_MEM_MALLOC_NORMAL_ONLY).unwrap();
        assert_eq!(rt.locate(small).unwrap(), aclshm::Location { place: Place::Device(1), page_size: 4096 });
        let pinned = raw::malloc_host(rt, 4096).unwrap();
        let mut plain = vec![0u8; 4096];
        let loc = rt.locate(dev).unwrap();
        assert_eq!(loc.place, Place::Device(1));
        assert_eq!(loc.page_size, 2 << 20);
        assert_eq!(rt.locate(pinned).unwrap().place, Place::PinnedHost);
        assert_eq!(rt.locate(plain.as_ptr().cast()).unwrap().place, Place::Host);
        assert_code!(rt.locate(std::ptr::null()), ACL_ERROR_INVALID_PARAM);

        let src = pattern(5, 4096);
        // SAFETY: pinned is 4096 bytes of host memory of ours.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), pinned.cast::<u8>(), 4096) };
        let host_loc = aclrtMemLocation { id: 0, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST };
        let dev_loc = aclrtMemLocation { id: 1, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE };
        let h2d = aclrtMemcpyBatchAttr { dstLoc: dev_loc, srcLoc: host_loc, rsv: [0; 16] };
        let d2h = aclrtMemcpyBatchAttr { dstLoc: host_loc, srcLoc: dev_loc, rsv: [0; 16] };
        let at = |off: usize| dev.cast::<u8>().wrapping_add(off).cast::<c_void>();
        let up = [
            BatchCopy { dst: at(0), dest_max: 2048, src: pinned, size: 2048 },
            BatchCopy { dst: at(8192), dest_max: 2048, src: pinned.cast::<u8>().wrapping_add(2048).cast(), size: 2048 },
        ];
        // SAFETY: every pointer is ours, for the sizes given.
        unsafe { raw::memcpy_batch(rt, &up, &[h2d], &[0]) }.unwrap();
        let down = [
            BatchCopy { dst: plain.as_mut_ptr().cast(), dest_max: 2048, src: at(0), size: 2048 },
            BatchCopy { dst: plain.as_mut_ptr().wrapping_add(2048).cast(), dest_max: 2048, src: at(8192), size: 2048 },
        ];
        // SAFETY: as above.
        unsafe { raw::memcpy_batch(rt, &down, &[d2h], &[0]) }.unwrap();
        assert_eq!(plain, src, "up to the device and back");

        // A device-to-device copy in a batch is refused, naming it.
        let mixed = [up[0], BatchCopy { dst: at(16384), dest_max: 8, src: at(0), size: 8 }];
        let dd = aclrtMemcpyBatchAttr { dstLoc: dev_loc, srcLoc: dev_loc, rsv: [0; 16] };
        // SAFETY: as above.
        let (e, at_copy) = unsafe { raw::memcpy_batch(rt, &mixed, &[h2d, dd], &[0, 1]) }.unwrap_err();
        assert_eq!(e.acl_code().map(|c| c.code()), Some(PARAM));
        assert_eq!(at_copy, Some(1));
        // Attributes that do not describe the pointers (device 0, where the memory is on device 1).
        let wrong = aclrtMemcpyBatchAttr {
            dstLoc: aclrtMemLocation { id: 0, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
            srcLoc: host_loc,
            rsv: [0; 16],
        };
        // SAFETY: as above.
        let (_, at_copy) = unsafe { raw::memcpy_batch(rt, &up, &[wrong], &[0]) }.unwrap_err();
        assert_eq!(at_copy, Some(0));
        // Malformed attribute indexes, reserved bytes, a size past destMax: refused, no copy named.
        // SAFETY: as above.
        unsafe {
            let (e, i) = raw::memcpy_batch(rt, &up, &[h2d, h2d], &[0, 0]).unwrap_err();
            assert_eq!((e.acl_code().map(|c| c.code()), i), (Some(PARAM), None));
            let mut rsv = h2d;
            rsv.rsv[3] = 1;
            let (e, _) = raw::memcpy_batch(rt, &up, &[rsv], &[0]).unwrap_err();
            assert_eq!(e.acl_code().map(|c| c.code()), Some(ACL_ERROR_INVALID_PARAM));
            let big = [BatchCopy { dest_max: 1, ..up[0] }];
            let (e, _) = raw::memcpy_batch(rt, &big, &[h2d], &[0]).unwrap_err();
            assert_eq!(e.acl_code().map(|c| c.code()), Some(ACL_ERROR_INVALID_PARAM));
            let (e, _) = raw::memcpy_batch(rt, &[], &[h2d], &[0]).unwrap_err();
            assert_eq!(e.acl_code().map(|c| c.code()), Some(PARAM));
        }
        // SAFETY: our allocations.
        unsafe {
            raw::free(rt, dev).unwrap();
            raw::free(rt, small).unwrap();
            raw::free_host(rt, pinned).unwrap();
        }
    });
}

/// Two simulated servers (two simulator directories): memory exported as a fabric handle on server A is
/// imported on server B, mapped, written and read back on both sides; a plain (one-server) handle is
/// refused across servers; the whitelist applies to fabric handles too.
#[test]
fn fabric_handles_cross_simulated_servers_and_plain_handles_do_not() {
    const SIZE: usize = MIB2;
    by_role(
        test_name!(),
        |rt, role| match role {
            "a" => {
                raw::set_device(rt, 0).unwrap();
                let p = prop(0, aclrtMemAttr::ACL_HBM_MEM_HUGE);
                let fabric_h = raw::malloc_physical(rt, SIZE, &p, 0).unwrap();
                let plain_h = raw::malloc_physical(rt, SIZE, &p, 0).unwrap();
                // SAFETY: our live handles throughout.
                unsafe {
                    let bad = aclrtMemSharedHandleType(3);
                    let mut out = [0u8; 128];
                    let f = rt.fns().aclrtMemExportToShareableHandleV2.unwrap();
                    assert_eq!(f(fabric_h, 0, bad, out.as_mut_ptr().cast()), PARAM);
                    assert_eq!(
                        f(
                            fabric_h,
                            2,
                            aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC,
                            out.as_mut_ptr().cast()
                        ),
                        PARAM
                    );
                }
                // SAFETY: our live handles.
                let fabric = unsafe { raw::mem_export_to_fabric_handle(rt, fabric_h, 0) }.unwrap();
                // One-to-one: the handle is exported; a second export (of any kind) is refused.
                // SAFETY: as above.
                assert_code!(unsafe { raw::mem_export_to_fabric_handle(rt, fabric_h, 0) }, DRV);
                // SAFETY: as above.
                let plain = unsafe { raw::mem_export_to_shareable_handle_v2(rt, plain_h, 1) }.unwrap();
                // SAFETY: no expected address: the runtime picks one.
                let va = unsafe { raw::reserve_mem_address(rt, SIZE, 0, std::ptr::null_mut(), 0) }.unwrap();
                // SAFETY: our reservation and handle.
                unsafe { raw::map_mem(rt, va, SIZE, 0, fabric_h, 0) }.unwrap();
                fill(rt, va, SIZE as u64, 11);
                let hex: String = fabric.data.iter().map(|b| format!("{b:02x}")).collect();
                say(format!("handles {hex} {plain}"));
                let tgid: i32 = hear_as("tgid");
                raw::mem_set_pid_to_fabric_handle(rt, &fabric, &[tgid]).unwrap();
                say("whitelisted");
                hear_word("written");
                assert!(holds(rt, va, (SIZE / 2) as u64, 22), "server B's write is visible on server A");
                say("checked");
                hear_word("bye");
                // SAFETY: our mapping, reservation and handles.
                unsafe {
                    raw::unmap_mem(rt, va).unwrap();
                    raw::release_mem_address(rt, va).unwrap();
                    raw::free_physical(rt, fabric_h).unwrap();
                    raw::free_physical(rt, plain_h).unwrap();
                }
            }
            "b" => {
                raw::set_device(rt, 1).unwrap();
                let msg = hear_word("handles");
                let (hex, plain) = msg.split_once(' ').unwrap();
                let mut fabric = aclrtMemFabricHandle { data: [0; 128] };
                for (i, b) in fabric.data.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
                }
                let plain: u64 = plain.parse().unwrap();
                // A plain handle means nothing on another server, V1 or V2.
                assert_code!(raw::mem_import_from_shareable_handle_v2(rt, plain), ACL_ERROR_RT_INVALID_HANDLE);
                assert_code!(raw::mem_import_from_shareable_handle(rt, plain, 1), ACL_ERROR_RT_INVALID_HANDLE);
                // Not whitelisted yet.
                assert_code!(raw::mem_import_from_fabric_handle(rt, &fabric), DRV);
                let mut forged = fabric;
                forged.data[0] ^= 1;
                assert_code!(raw::mem_import_from_fabric_handle(rt, &forged), ACL_ERROR_RT_INVALID_HANDLE);
                say(format!("tgid {}", raw::device_get_bare_tgid(rt).unwrap()));
                hear_word("whitelisted");
                let h = raw::mem_import_from_fabric_handle(rt, &fabric).unwrap();
                assert_code!(raw::mem_import_from_fabric_handle(rt, &fabric), DRV);
                // SAFETY: no expected address: the runtime picks one.
                let va = unsafe { raw::reserve_mem_address(rt, SIZE, 0, std::ptr::null_mut(), 0) }.unwrap();
                // SAFETY: our reservation and imported handle.
                unsafe { raw::map_mem(rt, va, SIZE, 0, h, 0) }.unwrap();
                assert!(holds(rt, va, SIZE as u64, 11), "server A's bytes, read on server B");
                assert_eq!(rt.locate(va).unwrap().place, Place::Device(1));
                fill(rt, va, (SIZE / 2) as u64, 22);
                say("written");
                hear_word("checked");
                // SAFETY: our mapping, reservation and handle.
                unsafe {
                    raw::unmap_mem(rt, va).unwrap();
                    raw::release_mem_address(rt, va).unwrap();
                    raw::free_physical(rt, h).unwrap();
                }
                say("bye");
            }
            _ => unreachable!(),
        },
        |sc| {
            let server_b = sc.another();
            let mut a = sc.spawn("a");
            let mut b = server_b.spawn("b");
            a.relay("handles", &mut b);
            b.relay("tgid", &mut a);
            a.relay("whitelisted", &mut b);
            b.relay("written", &mut a);
            a.relay("checked", &mut b);
            b.relay("bye", &mut a);
            a.join();
            b.join();
            sc.finish();
            server_b.finish();
        },
    );
}

/// A pool shared with fabric handles: a worker on another simulated server attaches, reads what the
/// owner wrote, follows a grow and a trim, and detaches; a pool shared with plain handles cannot be
/// attached from the other server (a typed error, nothing left behind); a runtime without the V2 calls
/// refuses fabric sharing with `Unsupported`.
#[test]
fn a_pool_shared_with_fabric_handles_is_attached_from_another_server() {
    use aclshm::{AllocDesc, Mirror, Pool, PoolConfig, ShareConfig, ShareDesc};
    const MIB: u64 = 1 << 20;
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                raw::set_device(rt, 0).unwrap();
                let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 32 * MIB, ..PoolConfig::default() };
                let pool = Pool::new(rt, 0, cfg.clone()).unwrap();
                let a = pool.alloc(3 * MIB).unwrap();
                fill(rt, a.as_ptr(), a.len(), 31);
                let share = pool.share(ShareConfig { fabric: true, ..ShareConfig::default() }).unwrap();
                // A plain pool next to it: its handles mean nothing on the other server.
                let plain = Pool::new(rt, 0, cfg).unwrap();
                let p = plain.alloc(MIB).unwrap();
                let plain_share = plain.share(ShareConfig::default()).unwrap();
                say(format!("share {share} {} {plain_share}", pool.descriptor(&a).unwrap().to_hex()));
                hear_word("attached");
                let b = pool.alloc(4 * MIB).unwrap();
                fill(rt, b.as_ptr(), b.len(), 32);
                say(format!("b {}", pool.descriptor(&b).unwrap().to_hex()));
                hear_word("read b");
                pool.free(b).unwrap();
                pool.trim().unwrap();
                say("trimmed");
                hear_word("synced");
                assert!(holds(rt, a.as_ptr(), MIB, 33), "the worker's write on the other server");
                pool.free(a).unwrap();
                pool.close().unwrap();
                plain.free(p).unwrap();
                plain.close().unwrap();
                // A runtime whose library lacks the V2 calls: fabric sharing is Unsupported.
                let mut fns = *rt.fns();
                fns.aclrtMemExportToShareableHandleV2 = None;
                // SAFETY: the functions left are the runtime's own, of their declared signatures.
                let old = unsafe { Runtime::from_table(fns, "no V2") };
                let pool = Pool::new(
                    &old,
                    0,
                    PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 8 * MIB, ..PoolConfig::default() },
                )
                .unwrap();
                let c = pool.alloc(MIB).unwrap();
                let e = pool.share(ShareConfig { fabric: true, ..ShareConfig::default() }).unwrap_err();
                assert!(matches!(e, aclshm::Error::Unsupported { call: "aclrtMemExportToShareableHandleV2" }), "{e}");
                pool.free(c).unwrap();
                pool.close().unwrap();
            }
            "worker" => {
                raw::set_device(rt, 1).unwrap();
                let line = hear_word("share");
                let parts: Vec<&str> = line.split(' ').collect();
                let (share, da, plain): (ShareDesc, AllocDesc, ShareDesc) =
                    (parts[0].parse().unwrap(), AllocDesc::from_hex(parts[1]).unwrap(), parts[2].parse().unwrap());
                let e = Mirror::attach(rt, &plain, 1).unwrap_err();
                assert_eq!(e.acl_code().map(|c| c.code()), Some(ACL_ERROR_RT_INVALID_HANDLE), "{e}");
                let m = Mirror::attach(rt, &share, 1).unwrap();
                let pa = m.ptr(&da).unwrap();
                assert!(holds(rt, pa, MIB, 31), "the owner's bytes, on the other server");
                assert_eq!(rt.locate(pa).unwrap().place, Place::Device(1));
                say("attached");
                let db = AllocDesc::from_hex(&hear_word("b")).unwrap();
                let pb = m.ptr(&db).unwrap();
                assert!(holds(rt, pb, db.len(), 32), "a chunk grown after the attach");
                say("read b");
                hear_word("trimmed");
                m.sync().unwrap();
                assert!(m.ptr(&db).is_err(), "b was freed and its chunk trimmed");
                fill(rt, m.ptr(&da).unwrap(), MIB, 33);
                m.close().unwrap();
                say("synced");
            }
            _ => unreachable!(),
        },
        |sc| {
            let sc = sc.shared();
            let share_dir = sc.share_dir().unwrap().to_str().unwrap().to_string();
            let server_b = sc.another().env("ACLSHM_SHARE_DIR", &share_dir);
            let mut owner = sc.spawn("owner");
            let mut worker = server_b.spawn("worker");
            owner.relay("share", &mut worker);
            worker.relay("attached", &mut owner);
            owner.relay("b", &mut worker);
            worker.relay("read b", &mut owner);
            owner.relay("trimmed", &mut worker);
            worker.relay("synced", &mut owner);
            owner.join();
            worker.join();
            sc.finish();
            server_b.finish();
        },
    );
}
