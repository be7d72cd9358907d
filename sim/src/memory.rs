//! Device and host memory, copies and memset.
//!
//! Device memory is never host-accessible: an address from `aclrtMalloc` or a mapping lies in a
//! `PROT_NONE` range, so code that dereferences it on the host faults, as on an NPU. Data moves only
//! through `aclrtMemcpy*` and `aclrtMemset`, which resolve each device address through the process's
//! tables to the physical object behind it and copy through the simulator's private read-write alias of
//! that object. A copy may span several mappings laid side by side in one reservation.

#![allow(non_snake_case)]

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aclshm_os::{AnonymousMapping, SharedMapping};
use aclshm_sys::*;

use crate::call::{R, bail, fail, not_null, put};
use crate::config::{GRANULARITY, GRANULARITY_1G, HOST_PAGE};
use crate::device::stream_for;
use crate::ipc::close_keys_of;
use crate::object::{Object, create_phys, map_whole};
use crate::registry::{PHYS_MALLOC, PHYS_REVOKED};
use crate::state::{Local, RegionKind, Sim, sim, sim_for_task};

pub(crate) unsafe fn aclrtMalloc(dev_ptr: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) -> R {
    not_null(dev_ptr, "devPtr")?;
    if size == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "size is 0");
    }
    // Unknown policies fall back to the default, as in the runtime; the high bits are type modifiers.
    let page: u64 = match policy.0 & 0xFF {
        1 | 4 => GRANULARITY,
        2 | 5 => HOST_PAGE as u64,
        6 | 7 => GRANULARITY_1G,
        _ if size > 1 << 20 => GRANULARITY,
        _ => HOST_PAGE as u64,
    };
    // The runtime pads every allocation: 32-byte aligned plus 32 bytes (none for 1 GiB pages).
    let padded = if page == GRANULARITY_1G {
        Some(size as u64)
    } else {
        (size as u64).checked_next_multiple_of(32).and_then(|v| v.checked_add(32))
    };
    let phys_size = padded
        .and_then(|v| v.checked_next_multiple_of(page))
        .filter(|&v| v <= isize::MAX as u64)
        .ok_or_else(|| fail(ACL_ERROR_INVALID_PARAM, format!("size {size:#x} overflows")))?;
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    let (phys, serial, alias) = create_phys(s, PHYS_MALLOC, phys_size, page, d)?;
    let obj = Object { phys, serial, size: phys_size, page, device: d };
    let kind = |handle| RegionKind::Malloc { handle, requested: size };
    let base = map_whole(&mut l, &obj, alias, phys_size as usize, false, kind).inspect_err(|_| {
        let _ = s.drop_holder(phys, serial);
    })?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(dev_ptr, base as *mut c_void) };
    Ok(())
}

pub(crate) unsafe fn aclrtFree(dev_ptr: *mut c_void) -> R {
    not_null(dev_ptr, "devPtr")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let base = dev_ptr as usize;
    let handle = match l.regions.get(&base).map(|r| &r.kind) {
        Some(RegionKind::Malloc { handle, .. }) => *handle,
        Some(RegionKind::IpcImport { .. }) => {
            return bail(
                ACL_ERROR_RT_PARAM_INVALID,
                "this address was imported with aclrtIpcMemImportByKey: release it with aclrtIpcMemClose",
            );
        }
        _ => {
            return bail(ACL_ERROR_RT_PARAM_INVALID, "not the start of a live aclrtMalloc allocation of this process");
        }
    };
    let region = l.regions.remove(&base).expect("looked up above");
    let (phys, serial) = {
        let m = &mut l.handles[handle];
        m.maps = 0;
        m.freed = true;
        (m.phys, m.serial)
    };
    // Freeing exported memory closes its keys; importers that still hold them lose their pages.
    close_keys_of(s, phys, serial)?;
    s.release_if_done(&mut l, handle)?;
    drop(l);
    // SAFETY: the region is gone from the tables, so nothing reaches its range any more.
    unsafe { aclshm_os::unreserve(base, region.size) };
    Ok(())
}

pub(crate) unsafe fn aclrtMallocHost(host_ptr: *mut *mut c_void, size: usize) -> R {
    not_null(host_ptr, "hostPtr")?;
    if size == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "size is 0");
    }
    let s = sim()?;
    let mut l = s.local.lock();
    s.current(&l)?;
    let len =
        size.checked_next_multiple_of(HOST_PAGE).ok_or_else(|| fail(ACL_ERROR_INVALID_PARAM, "size overflows"))?;
    let m = AnonymousMapping::new(len)
        .map_err(|e| fail(ACL_ERROR_RT_MEMORY_ALLOCATION, format!("no host memory for aclrtMallocHost: {e}")))?;
    let p = m.ptr();
    l.host.insert(p as usize, m);
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(host_ptr, p.cast()) };
    Ok(())
}

pub(crate) unsafe fn aclrtFreeHost(host_ptr: *mut c_void) -> R {
    not_null(host_ptr, "hostPtr")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let Some(m) = l.host.remove(&(host_ptr as usize)) else {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "not memory from aclrtMallocHost of this process");
    };
    drop(l);
    // Unmapped here, out of the table and outside the lock.
    drop(m);
    Ok(())
}

/// A contiguous piece of a copy: bytes reachable through an alias (device) or directly (host).
struct Piece {
    ptr: *mut u8,
    len: usize,
    /// Keeps the alias mapped while the copy runs, even if the memory is unmapped meanwhile.
    _alias: Option<Arc<SharedMapping>>,
}

/// Where an address lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Device,
    /// aclrtMallocHost memory.
    PinnedHost,
    Host,
}

pub(crate) fn place(l: &Local, addr: usize) -> Place {
    if l.region_at(addr).is_some() {
        Place::Device
    } else if l.host.range(..=addr).next_back().is_some_and(|(&b, m)| addr < b + m.len()) {
        Place::PinnedHost
    } else {
        Place::Host
    }
}

/// The pieces behind `[addr, addr+len)` of device memory, or None if `addr` is not device memory.
/// `device`: whether the caller knows the address to be device memory (a copy queued when it was), in
/// which case not finding it is an error rather than a host address.
fn resolve(s: &Sim, l: &Local, addr: usize, len: usize, device: bool) -> R<Option<Vec<Piece>>> {
    let Some((base, region)) = l.region_at(addr) else {
        if device {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                format!("device address {addr:#x} is no longer mapped (freed before the copy ran?)"),
            );
        }
        return Ok(None);
    };
    let end = addr.checked_add(len).filter(|&e| e <= base + region.size).ok_or_else(|| {
        fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("{len:#x} bytes at {addr:#x} run past the end of their range"))
    })?;
    let mut pieces = Vec::new();
    let mut off = addr - base;
    let stop = end - base;
    while off < stop {
        let (&moff, m) =
            region.maps.range(..=off).next_back().filter(|(mo, m)| off < **mo + m.size).ok_or_else(|| {
                fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("device address {:#x} is not mapped", base + off))
            })?;
        let h = &l.handles[m.handle];
        if h.server.is_none() && s.reg.words().phys_flags[h.phys].load(Ordering::Acquire) & PHYS_REVOKED != 0 {
            return bail(
                ACL_ERROR_RT_DEVICE_MEM_ERROR,
                format!(
                    "device address {:#x} is IPC memory its exporter closed or freed while it was imported",
                    base + off
                ),
            );
        }
        let n = (moff + m.size).min(stop) - off;
        // SAFETY: off - moff < m.size <= the alias length, so the offset stays inside the alias.
        let ptr = unsafe { h.alias.ptr().add(off - moff) };
        pieces.push(Piece { ptr, len: n, _alias: Some(Arc::clone(&h.alias)) });
        off += n;
    }
    Ok(Some(pieces))
}

/// Copy `count` bytes from `src` to `dst` now. `dst_dev` and `src_dev` say which are device memory (as
/// found when the copy was asked for); the others are host addresses.
fn copy(s: &Sim, dst: usize, src: usize, count: usize, dst_dev: bool, src_dev: bool) -> R {
    let (d, sp) = {
        let l = s.local.lock();
        (resolve(s, &l, dst, count, dst_dev)?, resolve(s, &l, src, count, src_dev)?)
    };
    let host = |addr: usize| vec![Piece { ptr: addr as *mut u8, len: count, _alias: None }];
    let d = d.unwrap_or_else(|| host(dst));
    let sp = sp.unwrap_or_else(|| host(src));
    let (mut di, mut si, mut doff, mut soff) = (0, 0, 0, 0);
    while di < d.len() && si < sp.len() {
        let n = (d[di].len - doff).min(sp[si].len - soff);
        // SAFETY: device pieces lie inside live aliases (kept mapped by the pieces); host addresses are the
        // caller's, valid for count bytes (C API contract). copy tolerates overlap.
        unsafe { std::ptr::copy(sp[si].ptr.add(soff), d[di].ptr.add(doff), n) };
        doff += n;
        soff += n;
        if doff == d[di].len {
            di += 1;
            doff = 0;
        }
        if soff == sp[si].len {
            si += 1;
            soff = 0;
        }
    }
    Ok(())
}

/// The kinds aclrtMemcpy accepts: HOST_TO_HOST through HOST_TO_BUF_TO_DEVICE.
fn check_kind(kind: aclrtMemcpyKind) -> R {
    if kind.0 > aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE.0 {
        return bail(ACL_ERROR_INVALID_PARAM, format!("copy kind {} is not supported", kind.0));
    }
    Ok(())
}

/// The kind the locations of `dst` and `src` call for.
fn kind_of(dst: Place, src: Place) -> aclrtMemcpyKind {
    match (src == Place::Device, dst == Place::Device) {
        (false, false) => aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST,
        (false, true) => aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        (true, false) => aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
        (true, true) => aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE,
    }
}

fn kind_name(k: aclrtMemcpyKind) -> &'static str {
    ["host to host", "host to device", "device to host", "device to device"]
        .get(k.0 as usize)
        .copied()
        .unwrap_or("other")
}

/// The start of aclrtMemcpy and aclrtMemcpyAsync: their common checks, in the runtime's order, then the
/// simulator. None: nothing to copy.
fn start_copy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> R<Option<&'static Sim>> {
    if count == 0 {
        return Ok(None);
    }
    not_null(dst, "dst")?;
    not_null(src, "src")?;
    check_kind(kind)?;
    if dest_max == 0 || count > dest_max {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("count {count} exceeds destMax {dest_max}"));
    }
    if std::ptr::eq(dst.cast_const(), src) {
        return Ok(None);
    }
    sim().map(Some)
}

/// Refuse a copy whose `kind` contradicts the direction its pointers call for (`want`). DEFAULT matches
/// any direction; HOST_TO_BUF_TO_DEVICE is a copy from host to device.
fn check_direction(kind: aclrtMemcpyKind, want: aclrtMemcpyKind) -> R {
    let given = if kind == aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE {
        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE
    } else {
        kind
    };
    if given != aclrtMemcpyKind::ACL_MEMCPY_DEFAULT && given != want {
        return bail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("the copy is {} but the pointers are {}", kind_name(given), kind_name(want)),
        );
    }
    Ok(())
}

pub(crate) unsafe fn aclrtMemcpy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> R {
    let Some(s) = start_copy(dst, dest_max, src, count, kind)? else {
        return Ok(());
    };
    let (pd, ps) = {
        let l = s.local.lock();
        s.current(&l)?;
        (place(&l, dst as usize), place(&l, src as usize))
    };
    check_direction(kind, kind_of(pd, ps))?;
    copy(s, dst as usize, src as usize, count, pd == Place::Device, ps == Place::Device)
}

pub(crate) unsafe fn aclrtMemcpyAsync(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> R {
    let Some(s) = start_copy(dst, dest_max, src, count, kind)? else {
        return Ok(());
    };
    let mut l = s.local.lock();
    let st = stream_for(s, &mut l, stream)?;
    let (pd, ps) = (place(&l, dst as usize), place(&l, src as usize));
    let want = kind_of(pd, ps);
    if want == aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST {
        return bail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "an asynchronous copy from host to host is not supported");
    }
    // The runtime corrects the kind when both ends are device or pinned host memory; with pageable host
    // memory involved it refuses a kind that contradicts the pointers.
    if pd == Place::Host || ps == Place::Host {
        check_direction(kind, want)?;
    }
    // Catch addresses that are not mapped now; the task resolves them again when it runs.
    let (dst_dev, src_dev) = (pd == Place::Device, ps == Place::Device);
    resolve(s, &l, dst as usize, count, dst_dev)?;
    resolve(s, &l, src as usize, count, src_dev)?;
    drop(l);
    let (dst, src) = (dst as usize, src as usize);
    st.push(Box::new(move |_abort| copy(sim_for_task()?, dst, src, count, dst_dev, src_dev)))
}

pub(crate) unsafe fn aclrtMemset(dev_ptr: *mut c_void, max_count: usize, value: i32, count: usize) -> R {
    if count == 0 {
        return Ok(());
    }
    not_null(dev_ptr, "devPtr")?;
    let s = sim()?;
    let pieces = {
        let l = s.local.lock();
        s.current(&l)?;
        if count > max_count {
            return bail(ACL_ERROR_RT_PARAM_INVALID, format!("count {count} exceeds maxCount {max_count}"));
        }
        resolve(s, &l, dev_ptr as usize, count, false)?
            .ok_or_else(|| fail(ACL_ERROR_RT_PARAM_INVALID, "devPtr is not device memory"))?
    };
    for p in &pieces {
        // SAFETY: each piece lies inside a live alias, kept mapped by the piece.
        unsafe { std::ptr::write_bytes(p.ptr, value as u8, p.len) };
    }
    Ok(())
}

pub(crate) unsafe fn aclrtGetMemInfo(attr: aclrtMemAttr, free: *mut usize, total: *mut usize) -> R {
    not_null(free, "free")?;
    not_null(total, "total")?;
    if attr.0 > aclrtMemAttr::ACL_MEM_P2P_HUGE1G.0 {
        return bail(ACL_ERROR_RT_INVALID_MEMORY_TYPE, format!("memory attribute {} is unknown", attr.0));
    }
    let s = sim()?;
    let d = {
        let l = s.local.lock();
        s.current(&l)?
    };
    // The simulated devices have device memory (HBM) only; DDR attributes report none.
    let ddr = matches!(attr.0, 0 | 2 | 3 | 6 | 7);
    let (f, t) = if ddr {
        (0, 0)
    } else {
        // What dead processes held is released first: the driver frees a process's memory when it ends.
        let mut g = s.lock()?;
        s.reap(&mut g);
        let used = g.t().used[d as usize];
        (s.hbm_bytes.saturating_sub(used), s.hbm_bytes)
    };
    // SAFETY: non-null out-parameters (C API contract).
    unsafe {
        put(free, f as usize);
        put(total, t as usize);
    }
    Ok(())
}

/// Where device address `addr` of region-holding tables `l` lives: its device and page size. A reserved
/// address with nothing mapped at it reports the device its range is bound to (or the current one) and
/// the huge page.
fn device_of(s: &Sim, l: &Local, addr: usize) -> Option<(u32, u64)> {
    let (base, region) = l.region_at(addr)?;
    let off = addr - base;
    if let Some((_, m)) = region.maps.range(..=off).next_back().filter(|(mo, m)| off < **mo + m.size) {
        let h = &l.handles[m.handle];
        return Some((h.device, h.page));
    }
    let d = match region.kind {
        RegionKind::Reserved { bound: Some(d) } => d,
        _ => s.current(l).unwrap_or(0),
    };
    Some((d, GRANULARITY))
}

pub(crate) unsafe fn aclrtPointerGetAttributes(ptr: *const c_void, attributes: *mut aclrtPtrAttributes) -> R {
    not_null(ptr, "ptr")?;
    not_null(attributes, "attributes")?;
    let s = sim()?;
    let l = s.local.lock();
    let (kind, id, page) = match place(&l, ptr as usize) {
        Place::Device => {
            let (d, page) = device_of(s, &l, ptr as usize).expect("a device address lies in a region");
            (aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE, d, page)
        }
        Place::PinnedHost => (aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST, 0, HOST_PAGE as u64),
        Place::Host => (aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_UNREGISTERED, 0, HOST_PAGE as u64),
    };
    let a = aclrtPtrAttributes {
        location: aclrtMemLocation { id, type_: kind },
        pageSize: u32::try_from(page).unwrap_or(u32::MAX),
        rsv: [0; 4],
    };
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(attributes, a) };
    Ok(())
}

/// The 64-bit word of device memory at `addr`, for aclrtValueWrite and aclrtValueWait: checked to be
/// device memory (107000 otherwise) and 8-byte aligned (documented; stricter than the runtime, which does
/// not check), resolved through the alias behind it.
fn value_word(s: &Sim, l: &Local, addr: usize) -> R<Piece> {
    if place(l, addr) != Place::Device {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("{addr:#x} is not device memory"));
    }
    if !addr.is_multiple_of(8) {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("{addr:#x} is not 8-byte aligned"));
    }
    let mut pieces = resolve(s, l, addr, 8, true)?.expect("device memory resolves");
    // 8 aligned bytes never straddle two mappings (mappings are 2 MiB aligned).
    Ok(pieces.swap_remove(0))
}

/// The 64-bit word behind a piece, as an atomic. The piece keeps its alias mapped.
fn atomic(p: &Piece) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: the piece is 8 bytes of a live shared mapping, 8-byte aligned (value_word checked the device
    // address, and aliases are page aligned with the same offset); other processes reach it only
    // atomically through these calls or by copies, as on a device.
    unsafe { std::sync::atomic::AtomicU64::from_ptr(p.ptr.cast()) }
}

/// The two 32-bit halves of a word, for futexes.
fn halves(w: &std::sync::atomic::AtomicU64) -> [&std::sync::atomic::AtomicU32; 2] {
    let p = w.as_ptr().cast::<u32>();
    // SAFETY: a u64 is two aligned u32s; the AtomicU64 outlives the references.
    unsafe { [std::sync::atomic::AtomicU32::from_ptr(p), std::sync::atomic::AtomicU32::from_ptr(p.add(1))] }
}

/// Whether `v` meets the condition of aclrtValueWait flag `flag` against `value`.
fn value_met(v: u64, value: u64, flag: u32) -> bool {
    match flag {
        ACL_STREAM_WAIT_VALUE_GEQ => v.wrapping_sub(value) as i64 >= 0,
        ACL_STREAM_WAIT_VALUE_EQ => v == value,
        ACL_STREAM_WAIT_VALUE_AND => v & value != 0,
        _ => !(v | value) != 0,
    }
}

/// Queue `task` on `stream` (NULL: the default stream) for the word at `dev_addr`, checked now and
/// resolved again when the stream runs the task (the memory may be gone by then: the task fails).
fn queue_on_word(
    dev_addr: *mut c_void,
    stream: aclrtStream,
    task: impl FnOnce(&std::sync::atomic::AtomicU64, &crate::sync::AtomicBool) -> R + Send + 'static,
) -> R {
    let s = sim()?;
    let mut l = s.local.lock();
    let st = stream_for(s, &mut l, stream)?;
    value_word(s, &l, dev_addr as usize)?;
    drop(l);
    let addr = dev_addr as usize;
    st.push(Box::new(move |abort| {
        let s = sim_for_task()?;
        let p = value_word(s, &s.local.lock(), addr)?;
        task(atomic(&p), abort)
    }))
}

pub(crate) unsafe fn aclrtValueWrite(dev_addr: *mut c_void, value: u64, flag: u32, stream: aclrtStream) -> R {
    not_null(dev_addr, "devAddr")?;
    if flag != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("flag {flag:#x}: it is reserved and must be 0"));
    }
    queue_on_word(dev_addr, stream, move |w, _abort| {
        w.store(value, std::sync::atomic::Ordering::Release);
        for h in halves(w) {
            aclshm_os::futex_wake_all(h);
        }
        Ok(())
    })
}

pub(crate) unsafe fn aclrtValueWait(dev_addr: *mut c_void, value: u64, flag: u32, stream: aclrtStream) -> R {
    not_null(dev_addr, "devAddr")?;
    if flag > ACL_STREAM_WAIT_VALUE_NOR {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("wait flag {flag:#x} is unknown"));
    }
    queue_on_word(dev_addr, stream, move |w, abort| {
        loop {
            let v = w.load(std::sync::atomic::Ordering::Acquire);
            if value_met(v, value, flag) {
                return Ok(());
            }
            if abort.load(crate::sync::Ordering::Acquire) {
                return bail(ACL_ERROR_RT_STREAM_ABORT, "the stream was destroyed while waiting for a value");
            }
            // A write wakes both halves; the slice bounds a missed wake (and notices an abort).
            let _ = aclshm_os::futex_wait(halves(w)[0], v as u32, std::time::Duration::from_millis(50));
        }
    })
}

/// The most copies one aclrtMemcpyBatch takes (the driver's limit).
const BATCH_MAX: usize = 4096;

/// Whether location `loc` describes an address found at `place` (on device `dev`, if device memory):
/// UNREGISTERED and HOST_NUMA count as host memory, as in the runtime.
fn location_matches(loc: aclrtMemLocation, place: Place, dev: Option<u32>) -> bool {
    let host = matches!(
        loc.type_,
        aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST
            | aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_UNREGISTERED
            | aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST_NUMA
    );
    match place {
        Place::Device => loc.type_ == aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE && dev == Some(loc.id),
        Place::PinnedHost | Place::Host => host,
    }
}

/// aclrtMemcpyBatch's arguments, read from the caller's arrays.
struct Batch {
    dsts: Vec<usize>,
    srcs: Vec<usize>,
    sizes: Vec<usize>,
}

#[allow(clippy::too_many_arguments)] // the C prototype's
pub(crate) unsafe fn aclrtMemcpyBatch(
    dsts: *mut *mut c_void,
    dest_maxs: *mut usize,
    srcs: *mut *mut c_void,
    sizes: *mut usize,
    num_batches: usize,
    attrs: *mut aclrtMemcpyBatchAttr,
    attrs_indexes: *mut usize,
    num_attrs: usize,
    fail_index: *mut usize,
) -> R {
    not_null(fail_index, "failIndex")?;
    // SAFETY: non-null out-parameter (C API contract); every failure below keeps SIZE_MAX unless it names a copy.
    unsafe { put(fail_index, usize::MAX) };
    for (p, what) in [
        (dsts as *const c_void, "dsts"),
        (dest_maxs.cast_const().cast(), "destMaxs"),
        (srcs.cast_const().cast(), "srcs"),
        (sizes.cast_const().cast(), "sizes"),
        (attrs.cast_const().cast(), "attrs"),
        (attrs_indexes.cast_const().cast(), "attrsIndexes"),
    ] {
        not_null(p, what)?;
    }
    if num_batches == 0 || num_attrs == 0 || num_attrs > num_batches || num_batches > BATCH_MAX {
        return bail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "{num_batches} copies and {num_attrs} attributes (1 to {BATCH_MAX} copies, 1 to that many attributes)"
            ),
        );
    }
    // SAFETY: the caller's arrays hold num_batches (num_attrs) elements (C API contract).
    let (b, maxes, attrs, idx) = unsafe {
        let v = |p: *mut *mut c_void| std::slice::from_raw_parts(p, num_batches).iter().map(|&x| x as usize).collect();
        (
            Batch { dsts: v(dsts), srcs: v(srcs), sizes: std::slice::from_raw_parts(sizes, num_batches).to_vec() },
            std::slice::from_raw_parts(dest_maxs, num_batches).to_vec(),
            std::slice::from_raw_parts(attrs, num_attrs).to_vec(),
            std::slice::from_raw_parts(attrs_indexes, num_attrs).to_vec(),
        )
    };
    if b.sizes.iter().all(|&n| n == 0) {
        return Ok(());
    }
    if let Some(i) = (0..num_batches).find(|&i| maxes[i] < b.sizes[i]) {
        return bail(ACL_ERROR_INVALID_PARAM, format!("copy {i}: size {} exceeds destMax {}", b.sizes[i], maxes[i]));
    }
    if attrs.iter().any(|a| a.rsv.iter().any(|&x| x != 0)) {
        return bail(ACL_ERROR_INVALID_PARAM, "the reserved bytes of an attribute are not 0");
    }
    if idx[0] != 0 || idx.windows(2).any(|w| w[1] <= w[0]) || idx[num_attrs - 1] >= num_batches {
        return bail(
            ACL_ERROR_RT_PARAM_INVALID,
            "attrsIndexes must start at 0 and increase strictly, each below numBatches",
        );
    }
    let s = sim()?;
    {
        let l = s.local.lock();
        s.current(&l)?;
        for i in 0..num_batches {
            let a = attrs[idx.partition_point(|&x| x <= i) - 1];
            let (pd, ps) = (place(&l, b.dsts[i]), place(&l, b.srcs[i]));
            let dev =
                |addr: usize, p: Place| (p == Place::Device).then(|| device_of(s, &l, addr).map(|x| x.0)).flatten();
            let why = if (pd == Place::Device) == (ps == Place::Device) {
                Some("a batch copies between host and device memory only")
            } else if !location_matches(a.dstLoc, pd, dev(b.dsts[i], pd))
                || !location_matches(a.srcLoc, ps, dev(b.srcs[i], ps))
            {
                Some("the attribute's locations do not describe the pointers")
            } else {
                None
            };
            if let Some(why) = why {
                // SAFETY: non-null out-parameter (C API contract).
                unsafe { put(fail_index, i) };
                return bail(ACL_ERROR_RT_PARAM_INVALID, format!("copy {i}: {why}"));
            }
        }
    }
    for i in 0..num_batches {
        if b.sizes[i] == 0 {
            continue;
        }
        let (dd, sd) = {
            let l = s.local.lock();
            (place(&l, b.dsts[i]) == Place::Device, place(&l, b.srcs[i]) == Place::Device)
        };
        if let Err(e) = copy(s, b.dsts[i], b.srcs[i], b.sizes[i], dd, sd) {
            // SAFETY: non-null out-parameter (C API contract).
            unsafe { put(fail_index, i) };
            return Err(e);
        }
    }
    Ok(())
}
