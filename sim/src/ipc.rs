//! Sharing `aclrtMalloc` memory by key (`aclrtIpcMem*`).
//!
//! The exporter gets a 65-byte key (64 characters and a NUL, in the driver's format: exporter pid, a
//! serial number, device, padded with '0'); an importer maps the same pages at a new address of its own,
//! on its current device. As in the driver: the export starts at an allocation's start (the simulator
//! also wants its whole length, as the documentation does), each export is a new key, importing a key
//! twice in a process returns the same address and takes two closes, `aclrtIpcMemClose` closes one
//! import in an importer and destroys the key in the exporter. Importers must close before the exporter
//! does (or frees the memory): if the exporter goes first, the driver tears the importers' pages down, and
//! so does the simulator (their copies then fail, and a warning says why).

#![allow(non_snake_case)]

use std::ffi::{c_char, c_void};
use std::sync::atomic::Ordering;

use aclshm_sys::*;

use crate::call::{R, bail, fail, not_null, put, read_key, write_key};
use crate::object::{Object, alias_of, map_whole};
use crate::registry::{self, KEY_LEN, PHYS_REVOKED};
use crate::state::{IpcImport, Region, RegionKind, Sim, sim};

pub(crate) unsafe fn aclrtIpcMemGetExportKey(
    dev_ptr: *mut c_void,
    size: usize,
    key: *mut c_char,
    len: usize,
    flags: u64,
) -> R {
    not_null(dev_ptr, "devPtr")?;
    not_null(key, "key")?;
    if size == 0 || len == 0 || flags > ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION {
        return bail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("size {size}, len {len} and flags {flags:#x}: size and len must be non-zero, flags 0 or 1"),
        );
    }
    let s = sim()?;
    let l = s.local.lock();
    let d = s.current(&l)?;
    if len < KEY_LEN {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("len {len} is below the 65 bytes a key takes"));
    }
    let drv = |why: &'static str| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, why);
    let (handle, requested, whole) = match l.regions.get(&(dev_ptr as usize)) {
        Some(Region { kind: RegionKind::Malloc { handle, requested }, size, .. }) => (*handle, *requested, *size),
        Some(_) => return Err(drv("only aclrtMalloc memory can be exported by key")),
        None => {
            return Err(drv(
                "devPtr is not the start of an aclrtMalloc allocation of this process (keys share whole allocations)",
            ));
        }
    };
    if size != requested && size != whole {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            format!("size {size:#x} is not the allocation's whole size ({requested:#x})"),
        );
    }
    let m = &l.handles[handle];
    let (phys, serial) = (m.phys, m.serial);
    let mut g = s.lock()?;
    let t = g.t();
    let number = t.serial();
    let i = t.alloc_key().map_err(|full| fail(ACL_ERROR_RT_RESOURCE_ALLOC_FAIL, full.to_string()))?;
    let mut text = format!("{:08x}{:016x}{:02x}{:02x}", s.me.bare_tgid as u32, number, d, 0).into_bytes();
    text.resize(KEY_LEN - 1, b'0');
    let slot = &mut t.keys[i];
    slot.key = [0; 72];
    slot.key[..text.len()].copy_from_slice(&text);
    slot.phys = phys as u32;
    slot.device = d;
    slot.phys_serial = serial;
    slot.size = size as u64;
    slot.exporter = s.me.slot;
    slot.open = 1;
    slot.importers = Default::default();
    slot.no_pid_check = u32::from(flags != 0);
    slot.wl_len = 0;
    // SAFETY: key holds at least len >= 65 bytes (checked above; C API contract for len).
    unsafe { write_key(key, &text) };
    Ok(())
}

pub(crate) unsafe fn aclrtIpcMemSetImportPid(key: *const c_char, pid: *mut i32, num: usize) -> R {
    not_null(key, "key")?;
    not_null(pid, "pid")?;
    if num == 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "num is 0");
    }
    let s = sim()?;
    s.current(&s.local.lock())?;
    if num > 31 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("num {num} exceeds the 31 pids one call may add"));
    }
    // SAFETY: key is a NUL-terminated string (C API contract).
    let k = unsafe { read_key(key)? };
    // SAFETY: pid points to num pids (C API contract).
    let pids: Vec<i32> = (0..num).map(|i| unsafe { pid.add(i).read_unaligned() }).collect();
    let mut g = s.lock()?;
    let t = g.t();
    let i = t
        .find_key(&k)
        .filter(|&i| t.keys[i].open == 1)
        .ok_or_else(|| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "the key is unknown or closed"))?;
    if t.procs[t.keys[i].exporter as usize].pid != s.me.pid {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "only the exporting process may whitelist importers");
    }
    let slot = &mut t.keys[i];
    if slot.no_pid_check != 0 {
        return bail(
            ACL_ERROR_RT_NO_PERMISSION,
            "the key was exported with ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION: it has no whitelist",
        );
    }
    let own = s.me.bare_tgid;
    let others: Vec<i32> = pids.into_iter().filter(|&p| p != 0 && p != own).collect();
    if others.is_empty() {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "no pid to add: every pid given is 0 or the exporter's own");
    }
    let now = aclshm_os::now_ticks();
    for p in others {
        if !registry::whitelist_add(&mut slot.wl, &mut slot.wl_len, p, now) {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                format!("the simulator whitelists at most {} pids per key", registry::WL_IPC),
            );
        }
    }
    Ok(())
}

pub(crate) unsafe fn aclrtIpcMemImportByKey(dev_ptr: *mut *mut c_void, key: *const c_char, flags: u64) -> R {
    not_null(dev_ptr, "devPtr")?;
    not_null(key, "key")?;
    if flags > ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("import flags {flags:#x} are unknown"));
    }
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    // SAFETY: key is a NUL-terminated string (C API contract).
    let k = unsafe { read_key(key)? };
    if let Some(imp) = l.ipc_imports.get_mut(&k) {
        imp.refs += 1;
        let base = imp.base;
        // SAFETY: non-null out-parameter (C API contract).
        unsafe { put(dev_ptr, base as *mut c_void) };
        return Ok(());
    }
    let drv = |why: String| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, why);
    let (key_slot, phys, serial, size, obj_size, page) = {
        let mut g = s.lock()?;
        let exporter = g.t().find_key(&k).map(|i| g.t().keys[i].exporter);
        s.reap_if_dead(&mut g, exporter);
        let me = s.me;
        let t = g.t();
        let i = t.find_key(&k).ok_or_else(|| drv("the key is unknown".to_string()))?;
        let ks = t.keys[i];
        if ks.open == 0 {
            return Err(drv("the exporter closed the key or freed its memory".to_string()));
        }
        let p = t
            .phys_if(ks.phys as usize, ks.phys_serial)
            .ok_or_else(|| drv("the exported memory was freed".to_string()))?;
        if ks.no_pid_check == 0 && !registry::whitelisted(&ks.wl[..ks.wl_len as usize], me.bare_tgid, me.start) {
            return Err(drv(format!(
                "pid {} is not on the key's whitelist (aclrtIpcMemSetImportPid, before this process imports)",
                me.bare_tgid
            )));
        }
        p.holders.set(me.slot as usize);
        let (obj_size, page) = (p.size, p.page);
        t.keys[i].importers.set(me.slot as usize);
        (i, ks.phys as usize, ks.phys_serial, ks.size, obj_size, page)
    };
    let undo = |s: &Sim| {
        if let Ok(mut g) = s.lock() {
            g.t().keys[key_slot].importers.clear(s.me.slot as usize);
        }
        let _ = s.drop_holder(phys, serial);
    };
    let alias = match alias_of(s.reg.dir(), serial, obj_size) {
        Ok(a) => a,
        Err(e) => {
            undo(s);
            return Err(e);
        }
    };
    let len = (size.next_multiple_of(page)).min(obj_size) as usize;
    let obj = Object { phys, serial, size: obj_size, page, device: d };
    let base = map_whole(&mut l, &obj, alias, len, true, |handle| RegionKind::IpcImport { handle })
        .inspect_err(|_| undo(s))?;
    l.ipc_imports.insert(k, IpcImport { base, refs: 1, key_slot });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(dev_ptr, base as *mut c_void) };
    Ok(())
}

pub(crate) unsafe fn aclrtIpcMemClose(key: *const c_char) -> R {
    not_null(key, "key")?;
    let s = sim()?;
    let mut l = s.local.lock();
    s.current(&l)?;
    // SAFETY: key is a NUL-terminated string (C API contract).
    let k = unsafe { read_key(key)? };
    if let Some(imp) = l.ipc_imports.get_mut(&k) {
        imp.refs -= 1;
        if imp.refs > 0 {
            return Ok(());
        }
        let imp = l.ipc_imports.remove(&k).expect("found above");
        let region = l.regions.remove(&imp.base).expect("an import has its region");
        let RegionKind::IpcImport { handle, .. } = region.kind else {
            unreachable!("an import's region is an IpcImport")
        };
        let m = &mut l.handles[handle];
        m.maps = 0;
        m.freed = true;
        let (phys, serial) = (m.phys, m.serial);
        l.handles.remove(handle);
        drop(l);
        // SAFETY: the region is out of the tables.
        unsafe { aclshm_os::unreserve(imp.base, region.size) };
        let mut g = s.lock()?;
        let t = g.t();
        if t.key_live.get(imp.key_slot) {
            t.keys[imp.key_slot].importers.clear(s.me.slot as usize);
        }
        if let Some(p) = t.phys_if(phys, serial) {
            p.holders.clear(s.me.slot as usize);
        }
        s.sweep(&mut g);
        return Ok(());
    }
    drop(l);
    // Not imported here: this is the exporter destroying its key.
    let mut g = s.lock()?;
    let t = g.t();
    let Some(i) = t.find_key(&k) else {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "the key is unknown (closed already, or never exported)");
    };
    if t.procs[t.keys[i].exporter as usize].pid != s.me.pid {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            "this process neither imported the key nor exported it (more closes than imports?)",
        );
    }
    if t.keys[i].open == 0 {
        return bail(ACL_ERROR_RT_INVALID_HANDLE, "the key was closed already; importers still hold it");
    }
    revoke(&mut g, i);
    s.sweep(&mut g);
    Ok(())
}

/// Close key slot `i` on its exporter's behalf; importers still holding it lose their pages.
fn revoke(g: &mut registry::Guard<'_>, i: usize) {
    let t = g.t();
    let k = &mut t.keys[i];
    k.open = 0;
    let holders = k.importers.count();
    if holders > 0 {
        let phys = k.phys as usize;
        let name = String::from_utf8_lossy(registry::key_str(&k.key)).into_owned();
        g.words().phys_flags[phys].fetch_or(PHYS_REVOKED, Ordering::AcqRel);
        eprintln!(
            "aclshm-sim: warning: the exporter closed IPC key {name} (or freed its memory) while {holders} \
             importer(s) still hold it; importers must close first. As on an NPU, their memory is torn down."
        );
    }
}

/// The exporter freed the memory behind physical object `phys`: close every key of it.
pub(crate) fn close_keys_of(s: &Sim, phys: usize, serial: u64) -> R {
    let mut g = s.lock()?;
    let t = g.t();
    let open: Vec<usize> = t
        .key_live
        .iter()
        .filter(|&i| {
            let k = &t.keys[i];
            k.phys as usize == phys && k.phys_serial == serial && k.open == 1
        })
        .collect();
    for i in open {
        revoke(&mut g, i);
    }
    Ok(())
}
