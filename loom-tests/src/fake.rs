//! A fake ACL runtime for models: just the virtual-memory and export/import calls, on a recording "device" that checks the
//! rules the pool must keep and logs every call, so a model can assert on the order of events.
//!
//! The fake's own state is behind a std mutex that loom does not see: each fake call runs without a
//! scheduling point inside it, so it behaves as one atomic step of the device, which is what the
//! runtime's calls are to their callers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::sync::Mutex;

use aclshm::Runtime;
use aclshm::sys::*;
use aclshm::vmm::DropErrors;

/// One runtime call, as the device saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// aclrtMallocPhysical returned this handle.
    Malloc(usize),
    /// aclrtMapMem of a handle at an address.
    Map(usize, usize),
    /// aclrtUnmapMem of the mapping at an address (and its handle).
    Unmap(usize, usize),
    /// aclrtFreePhysical of a handle.
    Free(usize),
    /// aclrtReleaseMemAddress of a range.
    Release(usize),
    /// aclrtMemExportToShareableHandle of a handle, giving a shareable handle.
    Export(usize, u64),
    /// aclrtMemImportFromShareableHandle of a shareable handle, giving a handle.
    Import(u64, usize),
}

#[derive(Default)]
struct Device {
    next: usize,
    handles: BTreeMap<usize, usize>,
    /// address -> (handle, size)
    mappings: BTreeMap<usize, (usize, usize)>,
    ranges: BTreeMap<usize, usize>,
    /// Live allocations a model registered: (address, length).
    live: BTreeSet<(usize, usize)>,
    /// Handles that came from an import, and the shareable handle each came from.
    imported: BTreeMap<usize, u64>,
    /// Handles exported, and their shareable handles.
    exported: BTreeMap<usize, u64>,
    events: Vec<Event>,
    violations: Vec<String>,
}

static DEVICE: Mutex<Option<Device>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Device) -> T) -> T {
    let mut d = DEVICE.lock().unwrap_or_else(|p| p.into_inner());
    f(d.get_or_insert_with(Device::default))
}

/// Forget everything: call at the start of each model iteration.
pub fn reset() {
    *DEVICE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Device { next: 0x1000, ..Device::default() });
}

/// The start of a model iteration: a fresh device ([`reset`]), a runtime over it, and the record of what
/// drops fail to release.
pub fn fresh() -> (Runtime, loom::sync::Arc<DropErrors>) {
    reset();
    (runtime(), DropErrors::new())
}

/// Fail the model if a rule was broken so far.
#[track_caller]
pub fn assert_no_violations() {
    let v = violations();
    assert!(v.is_empty(), "{v:?}");
}

/// Where, in `events`, the events `pick` picks are.
pub fn positions(events: &[Event], pick: impl Fn(&Event) -> bool) -> Vec<usize> {
    events.iter().enumerate().filter(|(_, e)| pick(e)).map(|(i, _)| i).collect()
}

/// Every call so far.
pub fn events() -> Vec<Event> {
    with(|d| d.events.clone())
}

/// Rules broken so far (empty if none).
pub fn violations() -> Vec<String> {
    with(|d| d.violations.clone())
}

/// Whether `[addr, addr+len)` is entirely inside one mapping.
pub fn is_mapped(addr: usize, len: usize) -> bool {
    with(|d| d.mappings.range(..=addr).next_back().is_some_and(|(&va, &(_, size))| addr + len <= va + size))
}

/// Register a live allocation: unmapping memory under it is a violation.
pub fn live(addr: usize, len: usize) {
    with(|d| d.live.insert((addr, len)));
}

/// Unregister a live allocation (before freeing it).
pub fn dead(addr: usize, len: usize) {
    with(|d| d.live.remove(&(addr, len)));
}

const GRAN: usize = 2 << 20;

unsafe extern "C" fn granularity(
    _prop: *mut aclrtPhysicalMemProp,
    _option: aclrtMemGranularityOptions,
    g: *mut usize,
) -> aclError {
    // SAFETY: aclshm passes a valid out-parameter.
    unsafe { *g = GRAN };
    0
}

unsafe extern "C" fn reserve(p: *mut *mut c_void, size: usize, _a: usize, _e: *mut c_void, _f: u64) -> aclError {
    let base = with(|d| {
        // Far apart, 1 GiB aligned, never dereferenced.
        d.next += 1;
        let base = d.next << 30;
        d.ranges.insert(base, size);
        base
    });
    // SAFETY: aclshm passes a valid out-parameter.
    unsafe { *p = base as *mut c_void };
    0
}

unsafe extern "C" fn release(p: *mut c_void) -> aclError {
    with(|d| {
        let base = p as usize;
        let size = d.ranges.remove(&base).unwrap_or(0);
        if d.mappings.range(base..base + size).next().is_some() {
            d.violations.push(format!("range {base:#x} released while mapped"));
        }
        d.events.push(Event::Release(base));
    });
    0
}

unsafe extern "C" fn malloc(
    h: *mut aclrtDrvMemHandle,
    size: usize,
    _p: *const aclrtPhysicalMemProp,
    _f: u64,
) -> aclError {
    let k = with(|d| {
        d.next += 1;
        let k = d.next;
        d.handles.insert(k, size);
        d.events.push(Event::Malloc(k));
        k
    });
    // SAFETY: aclshm passes a valid out-parameter.
    unsafe { *h = k as aclrtDrvMemHandle };
    0
}

unsafe extern "C" fn free(h: aclrtDrvMemHandle) -> aclError {
    with(|d| {
        let k = h as usize;
        if d.handles.remove(&k).is_none() {
            d.violations.push(format!("handle {k} freed twice or never allocated"));
        }
        d.imported.remove(&k);
        d.exported.remove(&k);
        if d.mappings.values().any(|&(hk, _)| hk == k) {
            d.violations.push(format!("handle {k} freed while mapped"));
        }
        d.events.push(Event::Free(k));
    });
    0
}

unsafe extern "C" fn map(va: *mut c_void, size: usize, _o: usize, h: aclrtDrvMemHandle, _f: u64) -> aclError {
    with(|d| {
        let (va, k) = (va as usize, h as usize);
        if !d.handles.contains_key(&k) {
            d.violations.push(format!("map of unknown handle {k}"));
        }
        d.mappings.insert(va, (k, size));
        d.events.push(Event::Map(k, va));
    });
    0
}

unsafe extern "C" fn unmap(va: *mut c_void) -> aclError {
    with(|d| {
        let va = va as usize;
        let Some((k, size)) = d.mappings.remove(&va) else {
            d.violations.push(format!("unmap of {va:#x}, not mapped"));
            return;
        };
        if let Some(&(a, l)) = d.live.iter().find(|&&(a, l)| a < va + size && va < a + l) {
            d.violations.push(format!("unmapped {va:#x} under a live allocation at {a:#x} ({l} bytes)"));
        }
        d.events.push(Event::Unmap(k, va));
    });
    0
}

unsafe extern "C" fn export(h: aclrtDrvMemHandle, _t: aclrtMemHandleType, _f: u64, s: *mut u64) -> aclError {
    let shareable = with(|d| {
        let k = h as usize;
        if !d.handles.contains_key(&k) {
            d.violations.push(format!("export of unknown handle {k}"));
        }
        if d.exported.contains_key(&k) {
            d.violations.push(format!("handle {k} exported twice"));
        }
        let shareable = 0x5000_0000 + k as u64;
        d.exported.insert(k, shareable);
        d.events.push(Event::Export(k, shareable));
        shareable
    });
    // SAFETY: aclshm passes a valid out-parameter.
    unsafe { *s = shareable };
    0
}

unsafe extern "C" fn import(shareable: u64, _device: i32, h: *mut aclrtDrvMemHandle) -> aclError {
    let k = with(|d| {
        // The rules of one process: a shareable handle is imported at most once at a time, and never
        // by the process that exported it.
        if d.imported.values().any(|&s| s == shareable) {
            d.violations.push(format!("shareable handle {shareable:#x} imported while an import of it lives"));
        }
        if d.exported.values().any(|&s| s == shareable) {
            d.violations.push(format!("shareable handle {shareable:#x} imported by its exporter"));
        }
        d.next += 1;
        let k = d.next;
        d.handles.insert(k, GRAN);
        d.imported.insert(k, shareable);
        d.events.push(Event::Import(shareable, k));
        k
    });
    // SAFETY: aclshm passes a valid out-parameter.
    unsafe { *h = k as aclrtDrvMemHandle };
    0
}

/// Imports alive now.
pub fn live_imports() -> usize {
    with(|d| d.imported.len())
}

/// A runtime whose virtual-memory calls go to the fake device.
pub fn runtime() -> Runtime {
    let fns = AclFns {
        aclrtMemGetAllocationGranularity: Some(granularity),
        aclrtReserveMemAddress: Some(reserve),
        aclrtReleaseMemAddress: Some(release),
        aclrtMallocPhysical: Some(malloc),
        aclrtFreePhysical: Some(free),
        aclrtMapMem: Some(map),
        aclrtUnmapMem: Some(unmap),
        aclrtMemExportToShareableHandle: Some(export),
        aclrtMemImportFromShareableHandle: Some(import),
        ..AclFns::default()
    };
    // SAFETY: each function has its declared signature, is static code, and does what aclshm relies on
    // (returns 0 having done the call's work, on a model of a device).
    unsafe { Runtime::from_table(fns, "loom fake device") }
}
