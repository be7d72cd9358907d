//! Physical objects: the simulator's device memory. Each is a shared-memory file `phys-<serial>` of the
//! simulator directory, accounted on its device in the registry (so capacity holds across processes),
//! and reached by this process through a read-write mapping (its alias). `aclrtMallocPhysical`,
//! `aclrtMalloc` and `aclrtIpcMemImportByKey` make or open them and place them in device address space.
//!
//! Below the entry-point modules that share it (`vmm`, `memory`, `ipc`): it knows the process's tables
//! and the registry, no entry point.

use std::sync::Arc;

use aclshm_os::SharedMapping;
use aclshm_sys::*;

use crate::call::{R, bail, fail};
use crate::config::HOST_PAGE;
use crate::registry;
use crate::state::{Local, Mapping, MemHandle, Origin, Region, RegionKind, Sim};

/// Create a physical object of `size` bytes on device `d`, held by this process.
pub(crate) fn create_phys(s: &Sim, kind: u32, size: u64, page: u64, d: u32) -> R<(usize, u64, SharedMapping)> {
    let (slot, serial) = reserve_phys(s, kind, size, page, d)?;
    let make = || -> R<SharedMapping> {
        let path = s.reg.dir().join(registry::phys_file(serial));
        let fd = aclshm_os::create_file(&path)
            .map_err(|e| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("create {}: {e}", path.display())))?;
        let sized = if s.lazy_commit { aclshm_os::set_len(&fd, size) } else { aclshm_os::allocate(&fd, size) };
        sized.map_err(|e| {
            fail(ACL_ERROR_RT_MEMORY_ALLOCATION, format!("no room for {size} bytes in {}: {e}", s.reg.dir().display()))
        })?;
        SharedMapping::map(&fd, size as usize)
            .map_err(|e| fail(ACL_ERROR_RT_MEMORY_ALLOCATION, format!("map object: {e}")))
    };
    match make() {
        Ok(a) => Ok((slot, serial, a)),
        Err(e) => {
            let _ = s.drop_holder(slot, serial);
            Err(e)
        }
    }
}

/// Open physical object `serial` of `size` bytes of the simulator directory `dir`, which another handle (of any process) holds, and map it
/// read-write: an import's alias.
pub(crate) fn alias_of(dir: &std::path::Path, serial: u64, size: u64) -> R<SharedMapping> {
    let path = dir.join(registry::phys_file(serial));
    let fd = aclshm_os::open_file(&path)
        .map_err(|e| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("open {}: {e}", path.display())))?;
    SharedMapping::map(&fd, size as usize)
        .map_err(|e| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("map object: {e}")))
}

/// Account `size` bytes on device `d` and take a physical object slot, reclaiming what dead processes
/// left once if the device is full.
fn reserve_phys(s: &Sim, kind: u32, size: u64, page: u64, d: u32) -> R<(usize, u64)> {
    for attempt in 0..2 {
        let mut g = s.lock()?;
        let t = g.t();
        let used = t.used[d as usize];
        if used.checked_add(size).is_none_or(|total| total > s.hbm_bytes) {
            if attempt == 0 {
                drop(g);
                s.reclaim()?;
                continue;
            }
            return bail(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("device {d} is full: {used} of {} bytes in use, {size} more asked", s.hbm_bytes),
            );
        }
        let i = t.alloc_phys().map_err(|full| fail(ACL_ERROR_RT_MEMORY_ALLOCATION, full.to_string()))?;
        let serial = t.serial();
        t.used[d as usize] = used + size;
        let slot = &mut t.phys[i];
        slot.serial = serial;
        slot.size = size;
        slot.page = page;
        slot.kind = kind;
        slot.device = d;
        slot.owner = s.me.slot;
        slot.generation = slot.generation.wrapping_add(1);
        slot.holders = Default::default();
        slot.holders.set(s.me.slot as usize);
        slot.token = 0;
        slot.no_pid_check = 0;
        slot.export_open = 0;
        slot.wl_len = 0;
        return Ok((i, serial));
    }
    unreachable!("the loop returns on its second attempt")
}

/// A physical object this process holds.
pub(crate) struct Object {
    pub phys: usize,
    pub serial: u64,
    pub size: u64,
    pub page: u64,
    /// The device the local handle is on.
    pub device: u32,
}

/// Map the first `len` bytes of `obj` (reached through `alias`) into a fresh region of this process,
/// through an internal handle: what `aclrtMalloc` and `aclrtIpcMemImportByKey` return. `kind` makes the
/// region's kind from the handle. Returns the region's base; on failure nothing is left mapped or
/// recorded (the caller still holds the object).
pub(crate) fn map_whole(
    l: &mut Local,
    obj: &Object,
    alias: SharedMapping,
    len: usize,
    imported: bool,
    kind: impl FnOnce(usize) -> RegionKind,
) -> R<usize> {
    let base = reserve_va(len, obj.page as usize, None)?;
    // SAFETY: base is a fresh reservation of len bytes, and len is at most the object's size.
    if let Err(e) = unsafe { alias.mirror_at(base, len) } {
        // SAFETY: our fresh reservation, with nothing in it.
        unsafe { aclshm_os::unreserve(base, len) };
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("map {len:#x} bytes: {e}"));
    }
    let handle = add_handle(l, obj, Origin::Internal, alias, 1);
    let mut region = Region { size: len, kind: kind(handle), maps: Default::default() };
    region.maps.insert(0, Mapping { handle, size: len, imported, access: None });
    l.regions.insert(base, region);
    Ok(base)
}

/// Record a new handle of this process to `obj` (reached through `alias`), already mapped `maps` times;
/// returns its key in the handle table.
pub(crate) fn add_handle(l: &mut Local, obj: &Object, origin: Origin, alias: SharedMapping, maps: u32) -> usize {
    let generation = l.new_generation();
    l.handles.insert(MemHandle {
        generation,
        phys: obj.phys,
        serial: obj.serial,
        size: obj.size,
        page: obj.page,
        device: obj.device,
        origin,
        alias: Arc::new(alias),
        freed: false,
        maps,
        exported: None,
        server: None,
    })
}

/// Reserve an inaccessible range of `len` bytes aligned to `align`.
pub(crate) fn reserve_va(len: usize, align: usize, at: Option<usize>) -> R<usize> {
    aclshm_os::reserve(len, align.max(HOST_PAGE), at)
        .map_err(|e| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("reserve {len:#x} bytes of address space: {e}")))
}
