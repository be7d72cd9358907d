//! The simulator's C entry points with arbitrary arguments: sizes, flags, devices, enum values, handles,
//! shareable handles, keys, device addresses. Each input is a program of calls; what the calls create is
//! released at the end, and then the simulator must hold nothing for this process.
//!
//! Arguments are arbitrary except where the C API makes the caller vouch for memory: out-parameters are
//! valid or NULL, host buffers are ours and large enough, key strings are NUL-terminated in 65 bytes, and
//! device addresses handed to copies lie inside regions the program reserved or allocated (an address
//! outside device memory is host memory to the runtime, which it would read). Handles and shareable
//! handles are passed as any bit pattern: the simulator never dereferences them.
#![no_main]

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

use aclshm::sys::*;
use aclshm::{Runtime, raw};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..8 {
            v = v << 8 | u64::from(self.u8()?);
        }
        Some(v)
    }
    /// A size: usually small and round, sometimes anything.
    fn size(&mut self) -> Option<usize> {
        let k = self.u8()?;
        Some(match k % 4 {
            0 => 2 << 20,
            1 => (usize::from(self.u8()?) + 1) << 20,
            2 => usize::from(self.u8()?) * 4096,
            _ => self.u64()? as usize,
        })
    }
    fn device(&mut self) -> Option<i32> {
        Some(i32::from(self.u8()? % 4) - 1)
    }
    /// One of `items`, or (one time in four) an arbitrary value.
    fn pick(&mut self, items: &[u64]) -> Option<u64> {
        let k = self.u8()?;
        if items.is_empty() || k % 4 == 0 { self.u64() } else { Some(items[usize::from(k) % items.len()]) }
    }
}

#[derive(Default)]
struct Made {
    handles: Vec<u64>,
    ranges: Vec<(u64, usize)>,
    maps: Vec<u64>,
    mallocs: Vec<(u64, usize)>,
    streams: Vec<u64>,
    notifies: Vec<u64>,
    keys: Vec<[u8; 65]>,
    shareables: Vec<u64>,
    events: Vec<u64>,
    contexts: Vec<u64>,
    fabric: Vec<[u8; 128]>,
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aclshm-fuzz-{}", std::process::id()));
        // SAFETY: the first thing the process does with the runtime, before the simulator starts any thread.
        unsafe { std::env::set_var("ACLSHM_SIM_DIR", &dir) };
        Runtime::simulator()
    })
}

fn prop(device: i32, attr: u32) -> aclrtPhysicalMemProp {
    aclrtPhysicalMemProp {
        handleType: aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
        allocationType: aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED,
        memAttr: aclrtMemAttr(attr % 16),
        location: aclrtMemLocation { id: device as u32, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
        reserve: 0,
    }
}

/// A device address inside something the program made, at an offset from the input.
fn device_addr(inp: &mut Input, m: &Made, count: usize) -> Option<u64> {
    let regions: Vec<(u64, usize)> = m.ranges.iter().chain(&m.mallocs).copied().collect();
    if regions.is_empty() {
        return None;
    }
    let (base, len) = regions[usize::from(inp.u8()?) % regions.len()];
    let room = len.saturating_sub(count);
    Some(base + (inp.u64()? as usize % (room + 1)) as u64)
}

fuzz_target!(|data: &[u8]| {
    let rt = runtime();
    let f = rt.fns();
    let mut inp = Input(data);
    let mut m = Made::default();
    let mut host = vec![0u8; 1 << 16];
    let mut steps = 0;
    // SAFETY (every call below): out-parameters are our locals; host buffers are `host` (64 KiB) with
    // counts at most its size; keys are 65-byte NUL-terminated arrays; device addresses given to copies
    // and memset lie inside a region this program reserved or allocated (see `device_addr`); everything
    // else is a value the runtime looks up, never dereferences.
    unsafe {
        while let Some(op) = inp.u8() {
            steps += 1;
            if steps > 64 {
                break;
            }
            match op % 34 {
                0 => {
                    let _ = (f.aclrtSetDevice.unwrap())(inp.device().unwrap_or(0));
                }
                1 => {
                    let _ = (f.aclrtResetDevice.unwrap())(inp.device().unwrap_or(0));
                }
                2 => {
                    let (size, d, attr) = (inp.size().unwrap_or(0), inp.device().unwrap_or(0), inp.u8().unwrap_or(0));
                    let mut h = std::ptr::null_mut();
                    let p = prop(d, u32::from(attr));
                    if (f.aclrtMallocPhysical.unwrap())(&mut h, size, &p, inp.u8().unwrap_or(0) as u64 % 2) == 0 {
                        m.handles.push(h as u64);
                    }
                }
                3 => {
                    let h = inp.pick(&m.handles).unwrap_or(0);
                    if (f.aclrtFreePhysical.unwrap())(h as aclrtDrvMemHandle) == 0 {
                        m.handles.retain(|&x| x != h);
                    }
                }
                4 => {
                    let size = inp.size().unwrap_or(0);
                    let mut va = std::ptr::null_mut();
                    let flags = inp.u8().unwrap_or(0) as u64 % 3;
                    if (f.aclrtReserveMemAddress.unwrap())(&mut va, size, 0, std::ptr::null_mut(), flags) == 0 {
                        m.ranges.push((va as u64, size));
                    }
                }
                5 => {
                    let va = inp.pick(&m.ranges.iter().map(|r| r.0).collect::<Vec<_>>()).unwrap_or(0);
                    if (f.aclrtReleaseMemAddress.unwrap())(va as *mut c_void) == 0 {
                        m.ranges.retain(|r| r.0 != va);
                    }
                }
                6 => {
                    let Some(va) = device_addr(&mut inp, &m, 0) else { continue };
                    let va = va & !((2 << 20) - 1);
                    let (size, h) = (inp.size().unwrap_or(0), inp.pick(&m.handles).unwrap_or(0));
                    if (f.aclrtMapMem.unwrap())(va as *mut c_void, size, 0, h as aclrtDrvMemHandle, 0) == 0 {
                        m.maps.push(va);
                    }
                }
                7 => {
                    let va = inp.pick(&m.maps).unwrap_or(0);
                    if (f.aclrtUnmapMem.unwrap())(va as *mut c_void) == 0 {
                        m.maps.retain(|&x| x != va);
                    }
                }
                8 => {
                    let h = inp.pick(&m.handles).unwrap_or(0);
                    let mut s = 0u64;
                    let flags = inp.u8().unwrap_or(0) as u64 % 3;
                    let t = aclrtMemHandleType(u32::from(inp.u8().unwrap_or(0) % 3));
                    if (f.aclrtMemExportToShareableHandle.unwrap())(h as aclrtDrvMemHandle, t, flags, &mut s) == 0 {
                        m.shareables.push(s);
                    }
                }
                9 => {
                    let s = inp.pick(&m.shareables).unwrap_or(0);
                    let mut h = std::ptr::null_mut();
                    if (f.aclrtMemImportFromShareableHandle.unwrap())(s, inp.device().unwrap_or(0), &mut h) == 0 {
                        m.handles.push(h as u64);
                    }
                }
                10 => {
                    let s = inp.pick(&m.shareables).unwrap_or(0);
                    let mut pids = [inp.u64().unwrap_or(0) as i32, std::process::id() as i32];
                    let n = usize::from(inp.u8().unwrap_or(0) % 3);
                    let _ = (f.aclrtMemSetPidToShareableHandle.unwrap())(s, pids.as_mut_ptr(), n);
                }
                11 => {
                    let size = inp.size().unwrap_or(0);
                    let policy = aclrtMemMallocPolicy(u32::from(inp.u8().unwrap_or(0) % 8));
                    let mut p = std::ptr::null_mut();
                    if (f.aclrtMalloc.unwrap())(&mut p, size, policy) == 0 {
                        m.mallocs.push((p as u64, size));
                    }
                }
                12 => {
                    let p = inp.pick(&m.mallocs.iter().map(|r| r.0).collect::<Vec<_>>()).unwrap_or(0);
                    if (f.aclrtFree.unwrap())(p as *mut c_void) == 0 {
                        m.mallocs.retain(|r| r.0 != p);
                        m.keys.clear();
                    }
                }
                13 => {
                    // A copy between our host buffer and device memory, either way, or device to device.
                    let count = usize::from(inp.u8().unwrap_or(0)) * 256;
                    let Some(d) = device_addr(&mut inp, &m, count) else { continue };
                    let kind = aclrtMemcpyKind(u32::from(inp.u8().unwrap_or(0) % 6));
                    let h = host.as_mut_ptr().cast::<c_void>();
                    let (dst, src) = match inp.u8().unwrap_or(0) % 3 {
                        0 => (d as *mut c_void, h.cast_const()),
                        1 => (h, d as *const c_void),
                        _ => match device_addr(&mut inp, &m, count) {
                            Some(s) => (d as *mut c_void, s as *const c_void),
                            None => continue,
                        },
                    };
                    let _ = (f.aclrtMemcpy.unwrap())(dst, host.len(), src, count, kind);
                }
                14 => {
                    let count = usize::from(inp.u8().unwrap_or(0)) * 256;
                    let Some(d) = device_addr(&mut inp, &m, count) else { continue };
                    let _ = (f.aclrtMemset.unwrap())(d as *mut c_void, count, i32::from(inp.u8().unwrap_or(0)), count);
                }
                15 => {
                    let p = inp.pick(&m.mallocs.iter().map(|r| r.0).collect::<Vec<_>>()).unwrap_or(0);
                    let (size, flags) = (inp.size().unwrap_or(0), inp.u8().unwrap_or(0) as u64 % 3);
                    let mut key = [0u8; 65];
                    if (f.aclrtIpcMemGetExportKey.unwrap())(p as *mut c_void, size, key.as_mut_ptr().cast(), 65, flags)
                        == 0
                    {
                        m.keys.push(key);
                    }
                }
                16 => {
                    let mut key = [0u8; 65];
                    match m.keys.first() {
                        Some(k) if inp.u8().unwrap_or(0) % 2 == 0 => key = *k,
                        _ => {
                            for b in key.iter_mut().take(64) {
                                *b = inp.u8().unwrap_or(0) | 1;
                            }
                        }
                    }
                    let mut p = std::ptr::null_mut();
                    if (f.aclrtIpcMemImportByKey.unwrap())(
                        &mut p,
                        key.as_ptr().cast::<c_char>(),
                        inp.u8().unwrap_or(0) as u64 % 3,
                    ) == 0
                    {
                        // Our own export: refused in the exporting process. Close it if the runtime took it.
                        let _ = (f.aclrtIpcMemClose.unwrap())(key.as_ptr().cast());
                    }
                }
                17 => {
                    if let Some(k) = m.keys.pop() {
                        let _ = (f.aclrtIpcMemClose.unwrap())(k.as_ptr().cast());
                    }
                }
                18 => {
                    let mut s = std::ptr::null_mut();
                    if (f.aclrtCreateStream.unwrap())(&mut s) == 0 {
                        m.streams.push(s as u64);
                    }
                }
                19 => {
                    let s = inp.pick(&m.streams).unwrap_or(0);
                    let _ = (f.aclrtSynchronizeStream.unwrap())(s as aclrtStream);
                }
                20 => {
                    let mut n = std::ptr::null_mut();
                    if (f.aclrtCreateNotify.unwrap())(&mut n, inp.u8().unwrap_or(0) as u64 % 3) == 0 {
                        m.notifies.push(n as u64);
                    }
                }
                21 => {
                    // Records only: a wait could wait for ever, which is the program's choice, not a bug.
                    let (n, s) = (inp.pick(&m.notifies).unwrap_or(0), inp.pick(&m.streams).unwrap_or(0));
                    let _ = (f.aclrtRecordNotify.unwrap())(n as aclrtNotify, s as aclrtStream);
                }
                22 => {
                    let n = inp.pick(&m.notifies).unwrap_or(0);
                    let mut key = [0u8; 65];
                    let _ = (f.aclrtNotifyGetExportKey.unwrap())(
                        n as aclrtNotify,
                        key.as_mut_ptr().cast(),
                        65,
                        inp.u8().unwrap_or(0) as u64 % 4,
                    );
                }
                24 => {
                    // Any flags, either call.
                    let mut e = std::ptr::null_mut();
                    let flag = inp.pick(&[1, 2, 8, 9, 0x10, 0x20, 0x40, 0x0E]).unwrap_or(0) as u32;
                    let ok = if inp.u8().unwrap_or(0) % 2 == 0 {
                        (f.aclrtCreateEventWithFlag.unwrap())(&mut e, flag)
                    } else {
                        (f.aclrtCreateEventExWithFlag.unwrap())(&mut e, flag)
                    };
                    if ok == 0 {
                        m.events.push(e as u64);
                    }
                }
                25 => {
                    let (e, st) = (inp.pick(&m.events).unwrap_or(0), inp.pick(&m.streams).unwrap_or(0));
                    let _ = (f.aclrtRecordEvent.unwrap())(e as aclrtEvent, st as aclrtStream);
                }
                26 => {
                    // A wait waits only for records queued before it, so waits never wait for each other in a
                    // cycle: with no notify or value waits in these programs, every stream finishes.
                    let (e, st) = (inp.pick(&m.events).unwrap_or(0), inp.pick(&m.streams).unwrap_or(0));
                    let _ = (f.aclrtStreamWaitEvent.unwrap())(st as aclrtStream, e as aclrtEvent);
                    let mut status = aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_NOT_READY;
                    let _ = (f.aclrtQueryEventStatus.unwrap())(e as aclrtEvent, &mut status);
                    let mut ms = 0f32;
                    let e2 = inp.pick(&m.events).unwrap_or(0);
                    let _ = (f.aclrtEventElapsedTime.unwrap())(&mut ms, e as aclrtEvent, e2 as aclrtEvent);
                }
                27 => {
                    let e = inp.pick(&m.events).unwrap_or(0);
                    let mut h = aclrtIpcEventHandle { reserved: [0; 64] };
                    let _ = (f.aclrtIpcGetEventHandle.unwrap())(e as aclrtEvent, &mut h);
                    if inp.u8().unwrap_or(0) % 2 == 0 {
                        for b in h.reserved.iter_mut().take(32) {
                            *b = inp.u8().unwrap_or(0) as c_char;
                        }
                    }
                    let mut opened = std::ptr::null_mut();
                    if (f.aclrtIpcOpenEventHandle.unwrap())(h, &mut opened) == 0 {
                        m.events.push(opened as u64);
                    }
                }
                28 => {
                    let e = inp.pick(&m.events).unwrap_or(0);
                    if (f.aclrtDestroyEvent.unwrap())(e as aclrtEvent) == 0 {
                        m.events.retain(|&x| x != e);
                    }
                }
                29 => {
                    let mut c = std::ptr::null_mut();
                    match inp.u8().unwrap_or(0) % 4 {
                        0 => {
                            if (f.aclrtCreateContext.unwrap())(&mut c, inp.device().unwrap_or(0)) == 0 {
                                m.contexts.push(c as u64);
                            }
                        }
                        1 => {
                            let c = inp.pick(&m.contexts).unwrap_or(0);
                            if (f.aclrtDestroyContext.unwrap())(c as aclrtContext) == 0 {
                                m.contexts.retain(|&x| x != c);
                            }
                        }
                        2 => {
                            let _ =
                                (f.aclrtSetCurrentContext.unwrap())(inp.pick(&m.contexts).unwrap_or(0) as aclrtContext);
                        }
                        _ => {
                            let _ = (f.aclrtGetCurrentContext.unwrap())(&mut c);
                            let mut mode = aclrtRunMode::ACL_DEVICE;
                            let _ = (f.aclrtGetRunMode.unwrap())(&mut mode);
                            let _ = (f.aclrtSynchronizeDevice.unwrap())();
                        }
                    }
                }
                30 => {
                    // Any address: the runtime looks it up, never reads it.
                    let p = match device_addr(&mut inp, &m, 0) {
                        Some(a) if inp.u8().unwrap_or(0) % 2 == 0 => a,
                        _ => inp.u64().unwrap_or(0),
                    };
                    let mut a = aclrtPtrAttributes::default();
                    let _ = (f.aclrtPointerGetAttributes.unwrap())(p as *const c_void, &mut a);
                }
                31 => {
                    // Value writes, and waits with arguments the runtime refuses at once (a valid wait could
                    // wait for ever).
                    let Some(d) = device_addr(&mut inp, &m, 8) else { continue };
                    let st = inp.pick(&m.streams).unwrap_or(0) as aclrtStream;
                    let v = inp.u64().unwrap_or(0);
                    let _ = (f.aclrtValueWrite.unwrap())(d as *mut c_void, v, u32::from(inp.u8().unwrap_or(0) % 2), st);
                    let bad_flag = 4 + u32::from(inp.u8().unwrap_or(0));
                    let _ = (f.aclrtValueWait.unwrap())(d as *mut c_void, v, bad_flag, st);
                    let _ = (f.aclrtValueWait.unwrap())(host.as_mut_ptr().cast(), v, 0, st);
                }
                32 => {
                    // A batch of up to 4 copies between our host buffer and device memory, attributes from the input.
                    let n = usize::from(inp.u8().unwrap_or(0) % 5);
                    let mut dsts = Vec::new();
                    let mut srcs = Vec::new();
                    let mut sizes = Vec::new();
                    for i in 0..n {
                        let count = usize::from(inp.u8().unwrap_or(0)) * 64;
                        let Some(d) = device_addr(&mut inp, &m, count) else { break };
                        let h = host.as_mut_ptr().wrapping_add(i * 4096).cast::<c_void>();
                        if inp.u8().unwrap_or(0) % 2 == 0 {
                            dsts.push(d as *mut c_void);
                            srcs.push(h);
                        } else {
                            dsts.push(h);
                            srcs.push(d as *mut c_void);
                        }
                        sizes.push(count);
                    }
                    let mut maxes: Vec<usize> = sizes.iter().map(|&s| s.max(4096)).collect();
                    let loc = |inp: &mut Input| aclrtMemLocation {
                        id: u32::from(inp.u8().unwrap_or(0) % 3),
                        type_: aclrtMemLocationType(u32::from(inp.u8().unwrap_or(0) % 5)),
                    };
                    let mut attrs =
                        vec![aclrtMemcpyBatchAttr { dstLoc: loc(&mut inp), srcLoc: loc(&mut inp), rsv: [0; 16] }];
                    let mut idx = vec![0usize];
                    let mut fail = 0usize;
                    let _ = (f.aclrtMemcpyBatch.unwrap())(
                        dsts.as_mut_ptr(),
                        maxes.as_mut_ptr(),
                        srcs.as_mut_ptr(),
                        sizes.as_mut_ptr(),
                        dsts.len(),
                        attrs.as_mut_ptr(),
                        idx.as_mut_ptr(),
                        1,
                        &mut fail,
                    );
                }
                33 => {
                    // V2 export into a 128-byte buffer (either kind), import of it or of bytes from the input.
                    let h = inp.pick(&m.handles).unwrap_or(0);
                    let kind = aclrtMemSharedHandleType(u32::from(inp.u8().unwrap_or(0) % 4));
                    let mut buf = [0u8; 128];
                    let flags = inp.u8().unwrap_or(0) as u64 % 3;
                    if (f.aclrtMemExportToShareableHandleV2.unwrap())(
                        h as aclrtDrvMemHandle,
                        flags,
                        kind,
                        buf.as_mut_ptr().cast(),
                    ) == 0
                    {
                        m.fabric.push(buf);
                    }
                    let mut b = m.fabric.last().copied().unwrap_or([0; 128]);
                    if inp.u8().unwrap_or(0) % 2 == 0 {
                        for x in b.iter_mut().take(24) {
                            *x = inp.u8().unwrap_or(0);
                        }
                    }
                    let kind = aclrtMemSharedHandleType(u32::from(inp.u8().unwrap_or(0) % 4));
                    let mut pid = std::process::id() as i32;
                    let _ = (f.aclrtMemSetPidToShareableHandleV2.unwrap())(b.as_mut_ptr().cast(), kind, &mut pid, 1);
                    let mut out = std::ptr::null_mut();
                    if (f.aclrtMemImportFromShareableHandleV2.unwrap())(b.as_mut_ptr().cast(), kind, 0, &mut out) == 0 {
                        m.handles.push(out as u64);
                    }
                }
                _ => {
                    let (mut free, mut total) = (0usize, 0usize);
                    let _ = (f.aclrtGetMemInfo.unwrap())(
                        aclrtMemAttr(u32::from(inp.u8().unwrap_or(0) % 10)),
                        &mut free,
                        &mut total,
                    );
                    let mut g = 0usize;
                    let mut p = prop(inp.device().unwrap_or(0), u32::from(inp.u8().unwrap_or(0)));
                    let o = aclrtMemGranularityOptions(u32::from(inp.u8().unwrap_or(0) % 3));
                    let _ = (f.aclrtMemGetAllocationGranularity.unwrap())(&mut p, o, &mut g);
                }
            }
        }
        // Release everything, in the documented order, with a device current (the program may have reset
        // its devices or destroyed its current context; destroying a notify needs one, as in the runtime).
        let _ = (f.aclrtSetDevice.unwrap())(0);
        for k in m.keys.drain(..) {
            let _ = (f.aclrtIpcMemClose.unwrap())(k.as_ptr().cast());
        }
        for s in m.streams.drain(..) {
            let _ = (f.aclrtDestroyStreamForce.unwrap())(s as aclrtStream);
        }
        for e in m.events.drain(..) {
            let _ = (f.aclrtDestroyEvent.unwrap())(e as aclrtEvent);
        }
        for n in m.notifies.drain(..) {
            let _ = (f.aclrtDestroyNotify.unwrap())(n as aclrtNotify);
        }
        for va in m.maps.drain(..) {
            let _ = (f.aclrtUnmapMem.unwrap())(va as *mut c_void);
        }
        for h in m.handles.drain(..) {
            let _ = (f.aclrtFreePhysical.unwrap())(h as aclrtDrvMemHandle);
        }
        for (va, _) in m.ranges.drain(..) {
            let _ = (f.aclrtReleaseMemAddress.unwrap())(va as *mut c_void);
        }
        for (p, _) in m.mallocs.drain(..) {
            let _ = (f.aclrtFree.unwrap())(p as *mut c_void);
        }
        for c in m.contexts.drain(..) {
            let _ = (f.aclrtDestroyContext.unwrap())(c as aclrtContext);
        }
    }
    // Nothing of this process is left in the simulator (the device set for the release is reset after).
    // SAFETY: a plain value.
    let _ = unsafe { (f.aclrtResetDeviceForce.unwrap())(0) };
    let st = raw::sim_get_stats(rt).unwrap();
    assert_eq!(
        (
            st.localHandles,
            st.localMappings,
            st.localReservations,
            st.localDeviceAllocs,
            st.localNotifies,
            st.localIpcImports,
            st.localEvents,
            st.localContexts
        ),
        (0, 0, 0, 0, 0, 0, 0, 0),
        "left in the simulator: {st:?}"
    );
});
