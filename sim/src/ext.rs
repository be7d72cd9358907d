//! The simulator's own entry points (`aclshm_sim.h`): what tests and tools ask of it.

#![allow(non_snake_case)]

use std::ffi::{CStr, c_char};
use std::os::unix::ffi::OsStrExt;

use aclshm_sys::*;

use crate::call::{R, bail, fail, not_null, put, write_key};
use crate::config::GRANULARITY;
use crate::state::sim;

/// This crate's version, reported by aclshmSimGetInfo.
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) unsafe fn aclshmSimGetInfo(info: *mut aclshmSimInfo) -> R {
    not_null(info, "info")?;
    let s = sim()?;
    let mut out = aclshmSimInfo {
        abiVersion: ACLSHM_SIM_ABI_VERSION,
        deviceCount: s.devices,
        hbmBytes: s.hbm_bytes,
        granularity: GRANULARITY,
        version: [0; 32],
    };
    for (dst, &b) in out.version.iter_mut().zip(VERSION.as_bytes().iter().take(31)) {
        *dst = b as c_char;
    }
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(info, out) };
    Ok(())
}

pub(crate) unsafe fn aclshmSimGetDir(buf: *mut c_char, len: usize, needed: *mut usize) -> R {
    not_null(needed, "needed")?;
    let dir = crate::state::dir()?;
    let path = dir.as_os_str().as_bytes();
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(needed, path.len() + 1) };
    if buf.is_null() || len < path.len() + 1 {
        return bail(ACL_ERROR_INVALID_PARAM, "the buffer is too small for the path (see needed)");
    }
    // SAFETY: buf holds len >= path.len() + 1 bytes (C API contract).
    unsafe { write_key(buf, path) };
    Ok(())
}

pub(crate) unsafe fn aclshmSimGetStats(stats: *mut aclshmSimStats) -> R {
    not_null(stats, "stats")?;
    let s = sim()?;
    let l = s.local.lock();
    let mut out = aclshmSimStats {
        localHandles: l.handles.iter().filter(|(_, m)| m.origin != crate::state::Origin::Internal).count() as u32,
        localReservations: l
            .regions
            .values()
            .filter(|r| matches!(r.kind, crate::state::RegionKind::Reserved { .. }))
            .count() as u32,
        localMappings: l
            .regions
            .values()
            .filter(|r| matches!(r.kind, crate::state::RegionKind::Reserved { .. }))
            .map(|r| r.maps.len() as u32)
            .sum(),
        localDeviceAllocs: l
            .regions
            .values()
            .filter(|r| matches!(r.kind, crate::state::RegionKind::Malloc { .. }))
            .count() as u32,
        localHostAllocs: l.host.len() as u32,
        localStreams: l.streams.len() as u32,
        localNotifies: l.notifies.len() as u32,
        localIpcImports: l.ipc_imports.values().map(|i| i.refs).sum(),
        localEvents: l.events.len() as u32,
        localContexts: l.contexts.len() as u32,
        ..Default::default()
    };
    drop(l);
    let mut g = s.lock()?;
    s.reap(&mut g);
    let t = g.t();
    out.processes = t.proc_live.count();
    out.physObjects = t.phys_live.count();
    out.ipcKeys = t.key_live.iter().filter(|&i| t.keys[i].open == 1).count() as u32;
    out.notifies = t.notify_live.count();
    out.ipcEvents = t.event_live.count();
    let n = out.deviceBytesUsed.len().min(t.used.len());
    out.deviceBytesUsed[..n].copy_from_slice(&t.used[..n]);
    drop(g);
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(stats, out) };
    Ok(())
}

/// A function name the caller passed.
///
/// # Safety
/// 1. `func` is non-null and NUL-terminated, and stays valid and unchanged for `'a`.
unsafe fn name<'a>(func: *const c_char) -> R<&'a str> {
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe { CStr::from_ptr(func) }
        .to_str()
        .map_err(|_| fail(ACL_ERROR_INVALID_PARAM, "the function name is not UTF-8"))
}

pub(crate) unsafe fn aclshmSimGetCallCount(func: *const c_char, count: *mut u64) -> R {
    not_null(func, "func")?;
    not_null(count, "count")?;
    // SAFETY: func is NUL-terminated (C API contract).
    let f = unsafe { name(func)? };
    let n =
        crate::fault::count(f).ok_or_else(|| fail(ACL_ERROR_INVALID_PARAM, format!("{f} is not an entry point")))?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(count, n) };
    Ok(())
}

pub(crate) unsafe fn aclshmSimInjectFault(func: *const c_char, nth: u64, times: u64, code: aclError) -> R {
    not_null(func, "func")?;
    // SAFETY: func is NUL-terminated (C API contract).
    let f = unsafe { name(func)? };
    crate::fault::inject(f, nth, times, code).map_err(|e| fail(ACL_ERROR_INVALID_PARAM, e))
}

pub(crate) unsafe fn aclshmSimClearFaults() -> R {
    crate::fault::clear();
    Ok(())
}

pub(crate) unsafe fn aclshmSimReclaim(reclaimed: *mut u32) -> R {
    let n = crate::state::reclaim_observed()?;
    if !reclaimed.is_null() {
        // SAFETY: a non-null out-parameter (C API contract; NULL means not wanted).
        unsafe { put(reclaimed, n) };
    }
    Ok(())
}

pub(crate) unsafe fn aclshmSimListProcesses(procs: *mut aclshmSimProcess, cap: usize, count: *mut usize) -> R {
    not_null(count, "count")?;
    if cap > 0 {
        not_null(procs, "procs")?;
    }
    let Some(obs) = crate::state::observe()? else {
        // SAFETY: non-null out-parameter (C API contract).
        unsafe { put(count, 0) };
        return Ok(());
    };
    let reg = obs.reg();
    let mut g = reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
    let t = g.t();
    let list: Vec<aclshmSimProcess> = if reg.retired() {
        Vec::new()
    } else {
        t.proc_live
            .iter()
            .map(|p| {
                let slot = &t.procs[p];
                let owned = || t.phys_live.iter().map(|i| &t.phys[i]).filter(move |ph| ph.owner as usize == p);
                aclshmSimProcess {
                    pid: slot.pid,
                    bareTgid: slot.bare_tgid,
                    alive: u32::from(aclshm_os::alive(slot.pid, slot.start)),
                    physAllocated: owned().count() as u32,
                    physHeld: t.phys_live.iter().filter(|&i| t.phys[i].holders.get(p)).count() as u32,
                    exports: owned().filter(|ph| ph.export_open == 1).count() as u32,
                    ipcKeys: t
                        .key_live
                        .iter()
                        .filter(|&i| t.keys[i].exporter as usize == p && t.keys[i].open == 1)
                        .count() as u32,
                    ipcImports: t.key_live.iter().filter(|&i| t.keys[i].importers.get(p)).count() as u32,
                    notifies: t.notify_live.iter().filter(|&i| t.notifies[i].holders.get(p)).count() as u32,
                    reserved: 0,
                    bytesAllocated: owned().map(|ph| ph.size).sum(),
                }
            })
            .collect()
    };
    drop(g);
    for (i, e) in list.iter().take(cap).enumerate() {
        // SAFETY: procs holds cap entries (C API contract), and i < cap.
        unsafe { put(procs.add(i), *e) };
    }
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(count, list.len()) };
    Ok(())
}
