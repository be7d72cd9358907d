//! Virtual memory management and sharing physical memory between processes.
//!
//! Reserving gives an inaccessible, 2 MiB-aligned range of this process's address space (1 GiB-aligned
//! above 512 MiB). Physical memory is a shared-memory object of the directory; mapping places it into a
//! reserved range (still inaccessible to the host). Exporting gives a 64-bit shareable handle,
//! `share_id | exporter device << 32` as the driver encodes it; another process imports it as a handle of
//! its own on any device and maps it into its own reservation, so both reach the same pages.
//!
//! Rules enforced, each with the code the runtime or driver gives (see `docs/simulator.md`): whole
//! handles only (offset 0, size equal to the handle's), 2 MiB-aligned addresses, one device per
//! reservation for good, no local and imported handles mapped side by side, release only when nothing is
//! mapped, free while mapped deferred to the unmap, export once per handle, whitelist by pid and start
//! time unless validation was disabled, no import after the exporter freed. Stricter than the driver, as
//! the documentation asks: import in the exporting process is refused on any device (the driver refuses
//! it on the same device only), and importing one shareable handle twice in a process is refused (the
//! driver returns the same handle again).

#![allow(non_snake_case)]

use std::ffi::c_void;

use aclshm_os::SharedMapping;
use aclshm_sys::*;

use crate::call::{R, bail, fail, not_null, put};
use crate::config::{GRANULARITY, GRANULARITY_1G};
use crate::object::{Object, add_handle, alias_of, create_phys, reserve_va};
use crate::registry::{self, PHYS_VMM};
use crate::state::{Local, Mapping, Origin, Region, RegionKind, Sim, TAG_MEM, decode, encode, sim};

/// Reservations larger than this are aligned to 1 GiB, so 1 GiB pages can be mapped into them.
const BIG_RESERVATION: u64 = 512 << 20;

pub(crate) unsafe fn aclrtReserveMemAddress(
    vir_ptr: *mut *mut c_void,
    size: usize,
    alignment: usize,
    expect_ptr: *mut c_void,
    flags: u64,
) -> R {
    not_null(vir_ptr, "virPtr")?;
    if size == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "size is 0");
    }
    if flags > 1 {
        return bail(ACL_ERROR_INVALID_PARAM, "flags of page type must be 0 or 1");
    }
    if alignment != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "alignment is reserved and must be 0");
    }
    let len = (size as u64)
        .max(GRANULARITY)
        .checked_next_multiple_of(GRANULARITY)
        .filter(|&v| v <= isize::MAX as u64 / 2)
        .ok_or_else(|| fail(ACL_ERROR_INVALID_PARAM, format!("size {size:#x} is too large")))?;
    let align = if len > BIG_RESERVATION { GRANULARITY_1G } else { GRANULARITY };
    let at = if expect_ptr.is_null() {
        None
    } else {
        let want = if len > BIG_RESERVATION { GRANULARITY_1G } else { len.next_power_of_two().max(GRANULARITY) };
        if !(expect_ptr as u64).is_multiple_of(want) {
            return bail(ACL_ERROR_RT_PARAM_INVALID, format!("expectPtr {expect_ptr:p} is not aligned to {want:#x}"));
        }
        Some(expect_ptr as usize)
    };
    let s = sim()?;
    let base = reserve_va(len as usize, align as usize, at)?;
    s.local.lock().regions.insert(
        base,
        Region { size: len as usize, kind: RegionKind::Reserved { bound: None }, maps: Default::default() },
    );
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(vir_ptr, base as *mut c_void) };
    Ok(())
}

pub(crate) unsafe fn aclrtReleaseMemAddress(vir_ptr: *mut c_void) -> R {
    not_null(vir_ptr, "virPtr")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let base = vir_ptr as usize;
    match l.regions.get(&base) {
        Some(r @ Region { kind: RegionKind::Reserved { .. }, .. }) => {
            if !r.maps.is_empty() {
                return bail(
                    ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                    format!("{} mapping(s) remain in the range: unmap them first", r.maps.len()),
                );
            }
        }
        _ => {
            return bail(
                ACL_ERROR_RT_PARAM_INVALID,
                "not the start of a range from aclrtReserveMemAddress of this process",
            );
        }
    }
    let r = l.regions.remove(&base).expect("looked up above");
    drop(l);
    // SAFETY: the range is out of the tables and has nothing mapped.
    unsafe { aclshm_os::unreserve(base, r.size) };
    Ok(())
}

/// The ACL layer's checks of the size and the (reserved) flags that aclrtMallocPhysical and aclrtMapMem
/// both take.
fn check_size_flags(size: usize, flags: u64) -> R {
    if size == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "size is 0");
    }
    if flags != 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "flags must be 0");
    }
    Ok(())
}

/// The page size of a memAttr for device memory, or the ACL layer's refusal.
fn device_page(attr: aclrtMemAttr) -> R<u64> {
    match attr.0 {
        // HBM_MEM_HUGE, HBM_MEM_NORMAL (promoted to huge pages), MEM_NORMAL, MEM_HUGE, MEM_P2P_NORMAL,
        // MEM_P2P_HUGE
        4 | 5 | 12 | 13 | 15 | 16 => Ok(GRANULARITY),
        // HBM_MEM_HUGE1G, MEM_HUGE1G, MEM_P2P_HUGE1G
        10 | 14 | 17 => Ok(GRANULARITY_1G),
        // DDR kinds need a host location.
        2 | 3 | 6 | 7 => bail(
            ACL_ERROR_INVALID_PARAM,
            format!("memAttr {} is host (DDR) memory but the location is a device", attr.0),
        ),
        other => bail(ACL_ERROR_INVALID_PARAM, format!("memAttr {other} cannot be allocated physically")),
    }
}

/// Check an aclrtPhysicalMemProp as aclrtMallocPhysical does; returns (device, page size).
fn check_prop(s: &Sim, p: &aclrtPhysicalMemProp) -> R<(u32, u64)> {
    if p.handleType != aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE {
        return bail(ACL_ERROR_INVALID_PARAM, "handleType must be ACL_MEM_HANDLE_TYPE_NONE");
    }
    if p.allocationType != aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED {
        return bail(ACL_ERROR_INVALID_PARAM, "allocationType must be ACL_MEM_ALLOCATION_TYPE_PINNED");
    }
    let loc = p.location.type_.0;
    if loc == aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_UNREGISTERED.0 || loc == 3 {
        return bail(ACL_ERROR_INVALID_PARAM, format!("location type {loc} cannot hold physical memory"));
    }
    let host = loc == aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST.0
        || loc == aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST_NUMA.0;
    if !host {
        device_page(p.memAttr)?;
    }
    if p.reserve != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "reserve must be 0");
    }
    if loc > aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST_NUMA.0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("location type {loc} is unknown"));
    }
    if host {
        return bail(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            "the simulator has no host physical memory: use a device location",
        );
    }
    let d = s.device(p.location.id as i32)?;
    Ok((d, device_page(p.memAttr)?))
}

pub(crate) unsafe fn aclrtMallocPhysical(
    handle: *mut aclrtDrvMemHandle,
    size: usize,
    prop: *const aclrtPhysicalMemProp,
    flags: u64,
) -> R {
    not_null(handle, "handle")?;
    not_null(prop, "prop")?;
    check_size_flags(size, flags)?;
    // SAFETY: non-null pointer to a prop (C API contract); read unaligned to be safe with any caller.
    let p = unsafe { prop.read_unaligned() };
    let s = sim()?;
    let (d, page) = check_prop(s, &p)?;
    let size = size as u64;
    let size = if page == GRANULARITY_1G {
        size.checked_next_multiple_of(GRANULARITY_1G).ok_or_else(|| fail(ACL_ERROR_INVALID_PARAM, "size overflows"))?
    } else {
        size
    };
    if size % GRANULARITY != 0 {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            format!("size {size:#x} is not a multiple of the 2 MiB granularity"),
        );
    }
    let mut l = s.local.lock();
    let (phys, serial, alias) = create_phys(s, PHYS_VMM, size, page, d)?;
    let obj = Object { phys, serial, size, page, device: d };
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(handle, new_handle(&mut l, &obj, Origin::Allocated, alias)) };
    Ok(())
}

pub(crate) unsafe fn aclrtFreePhysical(handle: aclrtDrvMemHandle) -> R {
    not_null(handle, "handle")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let key = l.mem_handle(handle)?;
    let m = &mut l.handles[key];
    m.freed = true;
    // The exporter freeing its handle ends the export: no import can follow (importers keep theirs).
    if m.exported.is_some() {
        let (phys, serial) = (m.phys, m.serial);
        let mut g = s.lock()?;
        if let Some(slot) = g.t().phys_if(phys, serial) {
            slot.export_open = 0;
        }
    }
    s.release_if_done(&mut l, key)?;
    Ok(())
}

pub(crate) unsafe fn aclrtMapMem(
    vir_ptr: *mut c_void,
    size: usize,
    offset: usize,
    handle: aclrtDrvMemHandle,
    flags: u64,
) -> R {
    not_null(vir_ptr, "virPtr")?;
    not_null(handle, "handle")?;
    check_size_flags(size, flags)?;
    if offset != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "offset must be 0: a handle is mapped whole");
    }
    let s = sim()?;
    let mut l = s.local.lock();
    let key = l.mem_handle(handle)?;
    let va = vir_ptr as usize;
    let drv = |why: String| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, why);
    let (base, region) = l
        .region_at(va)
        .filter(|(_, r)| matches!(r.kind, RegionKind::Reserved { .. }))
        .ok_or_else(|| drv(format!("{va:#x} is not in a range from aclrtReserveMemAddress")))?;
    let h = &l.handles[key];
    if !(va as u64).is_multiple_of(GRANULARITY) || !(size as u64).is_multiple_of(GRANULARITY) {
        return Err(drv(format!("address {va:#x} and size {size:#x} must be 2 MiB aligned")));
    }
    if size as u64 != h.size {
        return Err(drv(format!("size {size:#x} differs from the handle's {:#x}: a handle is mapped whole", h.size)));
    }
    if h.page == GRANULARITY_1G && !(va as u64).is_multiple_of(GRANULARITY_1G) {
        return Err(drv(format!("a 1 GiB-page handle needs a 1 GiB-aligned address, not {va:#x}")));
    }
    let off = va - base;
    if off + size > region.size {
        return Err(drv(format!("{size:#x} bytes at {va:#x} run past the end of the reservation")));
    }
    if let RegionKind::Reserved { bound: Some(b) } = region.kind
        && b != h.device
    {
        return Err(drv(format!(
            "the reservation is bound to device {b}; a handle on device {} cannot be mapped into it",
            h.device
        )));
    }
    let imported = matches!(h.origin, Origin::Imported(_));
    if region.maps.values().any(|m| m.imported != imported) {
        return Err(drv(
            "a reservation may not hold local (aclrtMallocPhysical) and imported handles at once".to_string()
        ));
    }
    let overlaps = region.maps.range(..off + size).next_back().is_some_and(|(&mo, m)| mo + m.size > off);
    if overlaps {
        return Err(drv(format!("{va:#x} is already mapped")));
    }
    let device = h.device;
    // SAFETY: [va, va+size) lies in our reservation with nothing mapped (checked above).
    unsafe { h.alias.mirror_at(va, size) }.map_err(|e| drv(format!("map at {va:#x}: {e}")))?;
    let r = l.regions.get_mut(&base).expect("found above");
    r.maps.insert(off, Mapping { handle: key, size, imported, access: None });
    r.kind = RegionKind::Reserved { bound: Some(device) };
    l.handles[key].maps += 1;
    Ok(())
}

/// A new caller-visible physical memory handle of this process to `obj`, not yet mapped.
fn new_handle(l: &mut Local, obj: &Object, origin: Origin, alias: SharedMapping) -> aclrtDrvMemHandle {
    let key = add_handle(l, obj, origin, alias, 0);
    encode(TAG_MEM, key, l.handles[key].generation)
}

/// The region base and mapping offset of the mapping that starts exactly at `va`.
fn mapping_at(l: &Local, va: usize) -> Option<(usize, usize)> {
    let (base, r) = l.region_at(va)?;
    matches!(r.kind, RegionKind::Reserved { .. }).then_some(())?;
    r.maps.contains_key(&(va - base)).then_some((base, va - base))
}

pub(crate) unsafe fn aclrtUnmapMem(vir_ptr: *mut c_void) -> R {
    not_null(vir_ptr, "virPtr")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let va = vir_ptr as usize;
    let (base, off) = mapping_at(&l, va)
        .ok_or_else(|| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("nothing is mapped at exactly {va:#x}")))?;
    let m = l.regions.get_mut(&base).expect("found above").maps.remove(&off).expect("found above");
    // SAFETY: the range was our mapping, now out of the tables.
    unsafe { aclshm_os::rereserve(va, m.size) }
        .map_err(|e| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("unmap {va:#x}: {e}")))?;
    l.handles[m.handle].maps -= 1;
    s.release_if_done(&mut l, m.handle)?;
    Ok(())
}

pub(crate) unsafe fn aclrtMemSetAccess(
    vir_ptr: *mut c_void,
    size: usize,
    desc: *mut aclrtMemAccessDesc,
    count: usize,
) -> R {
    if vir_ptr.is_null() || desc.is_null() {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "virPtr or desc is NULL");
    }
    if count == 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "count is 0");
    }
    let s = sim()?;
    let mut flags = None;
    for i in 0..count {
        // SAFETY: desc points to count descriptors (C API contract).
        let d = unsafe { desc.add(i).read_unaligned() };
        let f = d.flags.0;
        if !matches!(f, 0 | 1 | 3) {
            return bail(ACL_ERROR_RT_PARAM_INVALID, format!("access flags {f:#x} are unknown"));
        }
        let loc_ok = match d.location.type_ {
            aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE => d.location.id < s.devices,
            aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST => d.location.id == 0,
            _ => false,
        };
        if !loc_ok {
            return bail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("location (type {}, id {}) is not a device or the host", d.location.type_.0, d.location.id),
            );
        }
        if f != aclrtMemAccessFlags::ACL_RT_MEM_ACCESS_FLAGS_READWRITE.0 {
            return bail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "only ACL_RT_MEM_ACCESS_FLAGS_READWRITE is supported");
        }
        flags = Some(f);
    }
    let mut l = s.local.lock();
    let va = vir_ptr as usize;
    let (base, off) = mapping_at(&l, va).ok_or_else(|| {
        fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("{va:#x} is not where aclrtMapMem mapped a handle"))
    })?;
    let m = l.regions.get_mut(&base).expect("found").maps.get_mut(&off).expect("found");
    if m.size != size {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            format!("size {size:#x} differs from the mapping's {:#x}", m.size),
        );
    }
    if m.access.is_some_and(|a| Some(a) != flags) {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "access was already set with other flags");
    }
    m.access = flags;
    Ok(())
}

pub(crate) unsafe fn aclrtMemGetAllocationGranularity(
    prop: *mut aclrtPhysicalMemProp,
    option: aclrtMemGranularityOptions,
    granularity: *mut usize,
) -> R {
    not_null(prop, "prop")?;
    not_null(granularity, "granularity")?;
    // SAFETY: non-null pointer to a prop (C API contract).
    let p = unsafe { prop.read_unaligned() };
    let page = device_page(p.memAttr)?;
    let s = sim()?;
    s.device(p.location.id as i32)?;
    if option.0 > aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED.0 {
        return bail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, format!("granularity option {:#x} is not supported", option.0));
    }
    if p.reserve != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "reserve must be 0");
    }
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(granularity, page as usize) };
    Ok(())
}

/// share_id bits that name the slot (slot + 1; 0 is never a valid handle).
const SLOT_BITS: u32 = 14;

fn make_token(slot: usize, generation: u32, device: u32) -> u64 {
    let share_id = ((u64::from(generation) & ((1 << (32 - SLOT_BITS)) - 1)) << SLOT_BITS) | (slot as u64 + 1);
    share_id | (u64::from(device) << 32)
}

/// The slot a shareable handle names, if it is live and was exported with this very value.
fn token_slot(g: &mut registry::Guard<'_>, token: u64) -> Option<usize> {
    let slot = ((token & ((1 << SLOT_BITS) - 1)) as usize).checked_sub(1)?;
    let t = g.t();
    (slot < registry::MAX_PHYS && t.phys_live.get(slot) && t.phys[slot].token == token).then_some(slot)
}

pub(crate) unsafe fn aclrtMemExportToShareableHandle(
    handle: aclrtDrvMemHandle,
    handle_type: aclrtMemHandleType,
    flags: u64,
    shareable_handle: *mut u64,
) -> R {
    not_null(handle, "handle")?;
    if handle_type != aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE {
        return bail(ACL_ERROR_INVALID_PARAM, "handleType must be ACL_MEM_HANDLE_TYPE_NONE");
    }
    not_null(shareable_handle, "shareableHandle")?;
    let token = export(handle, flags)?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(shareable_handle, token) };
    Ok(())
}

/// Export physical memory handle `handle` (both versions): its shareable handle.
fn export(handle: aclrtDrvMemHandle, flags: u64) -> R<u64> {
    if flags > ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("export flags {flags:#x} are unknown"));
    }
    let s = sim()?;
    let mut l = s.local.lock();
    let key = l.mem_handle(handle)?;
    let m = &l.handles[key];
    if matches!(m.origin, Origin::Imported(_)) {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "an imported handle cannot be exported again");
    }
    if m.exported.is_some() {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            "this handle was exported already: a handle and its shareable handle are one-to-one",
        );
    }
    let (phys, serial) = (m.phys, m.serial);
    let token = {
        let mut g = s.lock()?;
        let slot = g
            .t()
            .phys_if(phys, serial)
            .ok_or_else(|| fail(ACL_ERROR_RT_INTERNAL_ERROR, "the physical object vanished"))?;
        let token = make_token(phys, slot.generation, slot.device);
        slot.token = token;
        slot.no_pid_check = u32::from(flags & ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION != 0);
        slot.export_open = 1;
        slot.wl_len = 0;
        token
    };
    l.handles[key].exported = Some(token);
    Ok(token)
}

pub(crate) unsafe fn aclrtMemImportFromShareableHandle(
    shareable_handle: u64,
    device_id: i32,
    handle: *mut aclrtDrvMemHandle,
) -> R {
    not_null(handle, "handle")?;
    let s = sim()?;
    let d = s.device(device_id)?;
    let h = import(s, shareable_handle, d, None)?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(handle, h) };
    Ok(())
}

/// Import shareable handle `shareable_handle` on device `d`, from this server's registry or (`server`)
/// from the registry of another server this process joined.
fn import(s: &Sim, shareable_handle: u64, d: u32, server: Option<usize>) -> R<aclrtDrvMemHandle> {
    let foreign = server.map(|i| s.foreign(i)).transpose()?;
    let reg = foreign.as_ref().map_or(&s.reg, |f| &f.reg);
    let my_slot = foreign.as_ref().map_or(s.me.slot, |f| f.slot);
    let mut l = s.local.lock();
    let unknown = || {
        fail(
            ACL_ERROR_RT_INVALID_HANDLE,
            format!("shareable handle {shareable_handle:#x} is unknown, or its exporter freed it"),
        )
    };
    let (phys, serial, size, page) = {
        let mut g = reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
        if foreign.is_none() {
            let exporter = token_slot(&mut g, shareable_handle).map(|slot| g.t().phys[slot].owner);
            s.reap_if_dead(&mut g, exporter);
        }
        let slot = token_slot(&mut g, shareable_handle).ok_or_else(unknown)?;
        let me = s.me;
        let t = g.t();
        let exporter_pid = t.procs[t.phys[slot].owner as usize].pid;
        let p = &t.phys[slot];
        if p.export_open == 0 {
            return Err(unknown());
        }
        s.current(&l)?;
        if exporter_pid == me.pid {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                "import in the exporting process is not supported: export and import must be in different processes",
            );
        }
        if p.no_pid_check == 0 && !registry::whitelisted(&p.wl[..p.wl_len as usize], me.bare_tgid, me.start) {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                format!(
                    "pid {} is not on the whitelist of shareable handle {shareable_handle:#x} \
                     (aclrtMemSetPidToShareableHandle, before this process imports)",
                    me.bare_tgid
                ),
            );
        }
        if p.holders.get(my_slot as usize) {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                "this process has imported this shareable handle already: import it once and share the handle",
            );
        }
        let (phys, serial, size, page) = (slot, p.serial, p.size, p.page);
        t.phys[slot].holders.set(my_slot as usize);
        (phys, serial, size, page)
    };
    let release = || match server {
        Some(i) => s.drop_foreign_holder(i, phys, serial),
        None => s.drop_holder(phys, serial),
    };
    let alias = match alias_of(reg.dir(), serial, size) {
        Ok(a) => a,
        Err(e) => {
            let _ = release();
            return Err(e);
        }
    };
    let obj = Object { phys, serial, size, page, device: d };
    let h = new_handle(&mut l, &obj, Origin::Imported(shareable_handle), alias);
    if let Some((k, _)) = decode(TAG_MEM, h) {
        l.handles[k].server = server;
    }
    Ok(h)
}

pub(crate) unsafe fn aclrtMemSetPidToShareableHandle(shareable_handle: u64, pid: *mut i32, pid_num: usize) -> R {
    not_null(pid, "pid")?;
    if pid_num == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "pidNum is 0");
    }
    if pid_num > 65535 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("pidNum {pid_num} exceeds 65535"));
    }
    // SAFETY: pid points to pidNum pids (C API contract).
    let pids: Vec<i32> = (0..pid_num).map(|i| unsafe { pid.add(i).read_unaligned() }).collect();
    set_pids(shareable_handle, &pids)
}

/// Whitelist `pids` for shareable handle `shareable_handle` (both versions).
fn set_pids(shareable_handle: u64, pids: &[i32]) -> R {
    let s = sim()?;
    let mut g = s.lock()?;
    let slot = token_slot(&mut g, shareable_handle).ok_or_else(|| {
        fail(ACL_ERROR_RT_INVALID_HANDLE, format!("shareable handle {shareable_handle:#x} is unknown"))
    })?;
    let t = g.t();
    if t.procs[t.phys[slot].owner as usize].pid != s.me.pid || t.phys[slot].export_open == 0 {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            "only the exporting process may whitelist importers, while its handle is alive",
        );
    }
    let p = &mut t.phys[slot];
    if p.no_pid_check != 0 {
        return bail(
            ACL_ERROR_RT_NO_PERMISSION,
            "the handle was exported with ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION: it has no whitelist",
        );
    }
    if pids.iter().all(|&p| p == 0) {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "every pid given is 0");
    }
    let now = aclshm_os::now_ticks();
    for &pid in pids.iter().filter(|&&p| p != 0) {
        if !registry::whitelist_add(&mut p.wl, &mut p.wl_len, pid, now) {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                format!("the simulator whitelists at most {} pids per shareable handle", registry::WL_VMM),
            );
        }
    }
    Ok(())
}

/// First bytes of a fabric handle made by the simulator.
const FABRIC_MAGIC: [u8; 8] = *b"ACLSHMFB";
/// Where a fabric handle keeps the exporter's simulator directory (NUL-terminated).
const FABRIC_DIR: std::ops::Range<usize> = 24..128;

/// A fabric handle: the shareable handle, the exporting server's identity and its directory (how a
/// simulated server reaches another: on A3 the fabric does).
fn fabric_pack(token: u64, server_id: u64, dir: &std::path::Path) -> R<aclrtMemFabricHandle> {
    use std::os::unix::ffi::OsStrExt;
    let d = dir.as_os_str().as_bytes();
    if d.len() >= FABRIC_DIR.len() || d.contains(&0) {
        return bail(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            format!(
                "the simulator directory {} is too long for a fabric handle (at most {} bytes)",
                dir.display(),
                FABRIC_DIR.len() - 1
            ),
        );
    }
    let mut h = aclrtMemFabricHandle { data: [0; 128] };
    h.data[..8].copy_from_slice(&FABRIC_MAGIC);
    h.data[8..16].copy_from_slice(&token.to_le_bytes());
    h.data[16..24].copy_from_slice(&server_id.to_le_bytes());
    h.data[FABRIC_DIR.start..FABRIC_DIR.start + d.len()].copy_from_slice(d);
    Ok(h)
}

/// The shareable handle, server identity and directory a fabric handle names.
fn fabric_unpack(h: &aclrtMemFabricHandle) -> Option<(u64, u64, std::path::PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    if h.data[..8] != FABRIC_MAGIC {
        return None;
    }
    let token = u64::from_le_bytes(h.data[8..16].try_into().ok()?);
    let server = u64::from_le_bytes(h.data[16..24].try_into().ok()?);
    let dir = &h.data[FABRIC_DIR];
    let n = dir.iter().position(|&b| b == 0)?;
    if n == 0 || dir[n..].iter().any(|&b| b != 0) {
        return None;
    }
    Some((token, server, std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&dir[..n]))))
}

/// Check a V2 share type: DEFAULT or FABRIC.
fn share_type(t: aclrtMemSharedHandleType) -> R<bool> {
    match t {
        aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT => Ok(false),
        aclrtMemSharedHandleType::ACL_MEM_SHARE_HANDLE_TYPE_FABRIC => Ok(true),
        other => bail(ACL_ERROR_RT_PARAM_INVALID, format!("share type {:#x} is unknown", other.0)),
    }
}

/// The token a V2 shareable handle carries (a `uint64_t` for DEFAULT, a fabric handle for FABRIC), with
/// the server and directory of a fabric handle.
///
/// # Safety
/// 1. `p` is non-null and points to a `uint64_t` (DEFAULT) or an `aclrtMemFabricHandle` (FABRIC).
unsafe fn read_v2(p: *const c_void, fabric: bool) -> R<(u64, Option<(u64, std::path::PathBuf)>)> {
    if !fabric {
        // SAFETY: precondition 1.
        return Ok((unsafe { p.cast::<u64>().read_unaligned() }, None));
    }
    // SAFETY: precondition 1.
    let h = unsafe { p.cast::<aclrtMemFabricHandle>().read_unaligned() };
    let (token, server, dir) = fabric_unpack(&h)
        .ok_or_else(|| fail(ACL_ERROR_RT_INVALID_HANDLE, "not a fabric handle (aclrtMemExportToShareableHandleV2)"))?;
    Ok((token, Some((server, dir))))
}

pub(crate) unsafe fn aclrtMemExportToShareableHandleV2(
    handle: aclrtDrvMemHandle,
    flags: u64,
    share: aclrtMemSharedHandleType,
    shareable_handle: *mut c_void,
) -> R {
    not_null(handle, "handle")?;
    not_null(shareable_handle, "shareableHandle")?;
    let fabric = share_type(share)?;
    if fabric {
        // Check the handle fits before exporting: a failed export must leave the handle unexported.
        let s = sim()?;
        let server = s.lock()?.t().server_id;
        fabric_pack(0, server, s.reg.dir())?;
        let token = export(handle, flags)?;
        let h = fabric_pack(token, server, s.reg.dir())?;
        // SAFETY: a FABRIC shareable handle points to an aclrtMemFabricHandle (C API contract).
        unsafe { put(shareable_handle.cast::<aclrtMemFabricHandle>(), h) };
    } else {
        let token = export(handle, flags)?;
        // SAFETY: a DEFAULT shareable handle points to a uint64_t (C API contract).
        unsafe { put(shareable_handle.cast::<u64>(), token) };
    }
    Ok(())
}

pub(crate) unsafe fn aclrtMemImportFromShareableHandleV2(
    shareable_handle: *mut c_void,
    share: aclrtMemSharedHandleType,
    flags: u64,
    handle: *mut aclrtDrvMemHandle,
) -> R {
    not_null(shareable_handle, "shareableHandle")?;
    not_null(handle, "handle")?;
    if flags != 0 {
        return bail(ACL_ERROR_INVALID_PARAM, format!("flags {flags:#x}: they are reserved and must be 0"));
    }
    let fabric = share_type(share)?;
    // SAFETY: shareableHandle points to what its type says (C API contract).
    let (token, origin) = unsafe { read_v2(shareable_handle, fabric)? };
    let s = sim()?;
    let d = {
        let l = s.local.lock();
        s.current(&l)?
    };
    let here = s.lock()?.t().server_id;
    let server = match origin {
        Some((server, dir)) if server != here => Some(s.join_foreign(&dir, server)?.ok_or_else(|| {
            fail(
                ACL_ERROR_RT_INVALID_HANDLE,
                format!("the fabric handle's server ({}) is gone, or runs another simulator now", dir.display()),
            )
        })?),
        _ => None,
    };
    let h = import(s, token, d, server)?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(handle, h) };
    Ok(())
}

pub(crate) unsafe fn aclrtMemSetPidToShareableHandleV2(
    shareable_handle: *mut c_void,
    share: aclrtMemSharedHandleType,
    pid: *mut i32,
    pid_num: usize,
) -> R {
    not_null(shareable_handle, "shareableHandle")?;
    not_null(pid, "pid")?;
    if pid_num == 0 {
        return bail(ACL_ERROR_INVALID_PARAM, "pidNum is 0");
    }
    let fabric = share_type(share)?;
    // SAFETY: shareableHandle points to what its type says (C API contract).
    let (token, _) = unsafe { read_v2(shareable_handle, fabric)? };
    if pid_num > 65535 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("pidNum {pid_num} exceeds 65535"));
    }
    // SAFETY: pid points to pidNum pids (C API contract).
    let pids: Vec<i32> = (0..pid_num).map(|i| unsafe { pid.add(i).read_unaligned() }).collect();
    set_pids(token, &pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_slot_and_device() {
        let t = make_token(5, 3, 1);
        assert_eq!(t >> 32, 1);
        assert_eq!((t & ((1 << SLOT_BITS) - 1)) - 1, 5);
        assert_ne!(make_token(5, 4, 1), t, "a reused slot gives another token");
        assert_ne!(make_token(0, 0, 0), 0);
    }

    #[test]
    fn fabric_handles_round_trip_and_forgeries_are_refused() {
        let dir = std::path::Path::new("/dev/shm/aclshm-server-b");
        let h = fabric_pack(0xABCD, 77, dir).unwrap();
        assert_eq!(fabric_unpack(&h), Some((0xABCD, 77, dir.to_path_buf())));
        let mut bad = h;
        bad.data[0] ^= 1;
        assert_eq!(fabric_unpack(&bad), None);
        let mut tail = h;
        tail.data[127] = b'x';
        assert_eq!(fabric_unpack(&tail), None, "a directory that is not NUL-terminated");
        let long = std::path::PathBuf::from(format!("/{}", "d".repeat(120)));
        assert_eq!(fabric_pack(1, 1, &long).unwrap_err().code, ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
    }
}
