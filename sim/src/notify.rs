//! Notifies and IPC notifies.
//!
//! A notify's value is a futex word in the registry, so a record in one process wakes a wait in another.
//! Record and wait-and-reset are stream tasks. Only the creating process may wait (the documented rule; the
//! runtime's own check only refuses a different physical device); importers record. The wait's timeout is
//! in seconds (0 or `u32::MAX`: for ever); a wait that times out fails its stream with
//! `ACL_ERROR_RT_TASK_TIMEOUT`, reported by `aclrtSynchronizeStream`. Keys are the driver's format: five
//! 8-digit hex fields (creator pid, device, a serial number, type, notify id).

#![allow(non_snake_case)]

use std::ffi::c_char;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aclshm_sys::*;
use parking_lot::MutexGuard;

use crate::call::{R, bail, fail, not_null, put, read_key, write_key};
use crate::device::stream_for;
use crate::registry::{self, KEY_LEN, NotifySlot};
use crate::state::{Local, LocalNotify, Sim, TAG_NOTIFY, decode, encode, sim, sim_for_task};
use crate::stream::Task;
use crate::sync::AtomicBool;

/// What the entry points on a notify handle start with, once their NULL checks passed: the simulator,
/// this process's tables (locked), and the key in them of the live notify `n` names.
fn local_notify(n: aclrtNotify) -> R<(&'static Sim, MutexGuard<'static, Local>, usize)> {
    let s = sim()?;
    let l = s.local.lock();
    match decode(TAG_NOTIFY, n) {
        Some((k, generation)) if l.notifies.get(k).is_some_and(|x| x.generation == generation) => Ok((s, l, k)),
        _ => bail(ACL_ERROR_RT_INVALID_HANDLE, "not a live notify of this process"),
    }
}

/// The registry slot of a notify this process holds (it lives as long as a holder does).
fn registered<'g>(g: &'g mut registry::Guard<'_>, n: &LocalNotify) -> R<&'g mut NotifySlot> {
    g.t().notify_if(n.slot, n.serial).ok_or_else(|| fail(ACL_ERROR_RT_INTERNAL_ERROR, "the notify vanished"))
}

pub(crate) unsafe fn aclrtCreateNotify(notify: *mut aclrtNotify, flag: u64) -> R {
    not_null(notify, "notify")?;
    if flag > u64::from(ACL_NOTIFY_DEVICE_USE_ONLY) {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("notify flag {flag:#x} is unknown"));
    }
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    let (slot, serial) = {
        let mut g = s.lock()?;
        let t = g.t();
        let serial = t.serial();
        let i = t.alloc_notify().map_err(|full| fail(ACL_ERROR_RT_NO_NOTIFY_RESOURCE, full.to_string()))?;
        let n = &mut t.notifies[i];
        n.serial = serial;
        n.device = d;
        n.creator = s.me.slot;
        n.creator_pid = s.me.pid;
        n.creator_holds = 1;
        n.exported = 0;
        n.no_pid_check = 0;
        n.key = [0; 72];
        n.holders = Default::default();
        n.holders.set(s.me.slot as usize);
        n.wl_len = 0;
        g.words().notify_value[i].store(0, Ordering::Release);
        (i, serial)
    };
    let generation = l.new_generation();
    let k = l.notifies.insert(LocalNotify { generation, slot, serial, device: d, creator: true });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(notify, encode(TAG_NOTIFY, k, generation)) };
    Ok(())
}

pub(crate) unsafe fn aclrtDestroyNotify(notify: aclrtNotify) -> R {
    not_null(notify, "notify")?;
    let (s, mut l, k) = local_notify(notify)?;
    s.current(&l)?;
    let n = l.notifies.remove(k);
    let still_held = l.notifies.iter().any(|(_, o)| o.slot == n.slot && o.serial == n.serial);
    let mut g = s.lock()?;
    if let Some(slot) = g.t().notify_if(n.slot, n.serial) {
        if n.creator {
            slot.creator_holds = 0;
        }
        if !still_held {
            slot.holders.clear(s.me.slot as usize);
        }
    }
    s.sweep(&mut g);
    Ok(())
}

/// Queue a task for notify `notify` on `stream` (NULL: the default stream).
fn enqueue(notify: aclrtNotify, stream: aclrtStream, make: impl FnOnce(&LocalNotify) -> R<Task>) -> R {
    not_null(notify, "notify")?;
    let (s, mut l, k) = local_notify(notify)?;
    let st = stream_for(s, &mut l, stream)?;
    let task = make(&l.notifies[k])?;
    drop(l);
    st.push(task)
}

pub(crate) unsafe fn aclrtRecordNotify(notify: aclrtNotify, stream: aclrtStream) -> R {
    enqueue(notify, stream, |n| {
        let (slot, serial) = (n.slot, n.serial);
        Ok(Box::new(move |_abort| record_now(sim_for_task()?, slot, serial)))
    })
}

pub(crate) unsafe fn aclrtWaitAndResetNotify(notify: aclrtNotify, stream: aclrtStream, timeout: u32) -> R {
    enqueue(notify, stream, |n| {
        if !n.creator {
            return bail(
                ACL_ERROR_RT_PARAM_INVALID,
                "only the process that created a notify may wait on it; an importer records",
            );
        }
        // 0 and u32::MAX wait for ever; the clock starts when the stream reaches the wait.
        let timeout = (timeout != 0 && timeout != u32::MAX).then(|| Duration::from_secs(u64::from(timeout)));
        let (slot, serial) = (n.slot, n.serial);
        Ok(Box::new(move |abort: &AtomicBool| {
            let deadline = timeout.map(|t| Instant::now() + t);
            wait_now(sim_for_task()?, slot, serial, deadline, abort)
        }))
    })
}

pub(crate) unsafe fn aclrtGetNotifyId(notify: aclrtNotify, notify_id: *mut u32) -> R {
    not_null(notify, "notify")?;
    not_null(notify_id, "notifyId")?;
    let (s, l, k) = local_notify(notify)?;
    s.current(&l)?;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(notify_id, l.notifies[k].slot as u32) };
    Ok(())
}

pub(crate) unsafe fn aclrtNotifyGetExportKey(notify: aclrtNotify, key: *mut c_char, len: usize, flags: u64) -> R {
    not_null(notify, "notify")?;
    not_null(key, "key")?;
    let (s, l, k) = local_notify(notify)?;
    if len == 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "len is 0");
    }
    if flags != ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT && flags != ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("export flags {flags:#x}: only 0 and 0x2 exist"));
    }
    let n = &l.notifies[k];
    if !n.creator {
        return bail(ACL_ERROR_RT_INTERNAL_ERROR, "an imported notify cannot be exported");
    }
    let mut g = s.lock()?;
    let slot = registered(&mut g, n)?;
    if slot.exported != 0 {
        return bail(ACL_ERROR_RT_INTERNAL_ERROR, "the notify was exported already");
    }
    if len < KEY_LEN {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("len {len} is below the 65 bytes a key takes"));
    }
    let text = format!("{:08x}{:08x}{:08x}{:08x}{:08x}", s.me.bare_tgid as u32, n.device, n.serial as u32, 0, n.slot);
    slot.key = [0; 72];
    slot.key[..text.len()].copy_from_slice(text.as_bytes());
    slot.exported = 1;
    slot.no_pid_check = u32::from(flags == ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION);
    // SAFETY: key holds len >= 65 bytes (C API contract).
    unsafe { write_key(key, text.as_bytes()) };
    Ok(())
}

pub(crate) unsafe fn aclrtNotifySetImportPid(notify: aclrtNotify, pid: *mut i32, num: usize) -> R {
    not_null(notify, "notify")?;
    not_null(pid, "pid")?;
    let (s, l, k) = local_notify(notify)?;
    if num == 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "num is 0");
    }
    s.current(&l)?;
    if num != 1 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "a notify whitelists one pid per call");
    }
    let n = &l.notifies[k];
    let mut g = s.lock()?;
    let slot = registered(&mut g, n)?;
    if slot.exported == 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "export the notify (aclrtNotifyGetExportKey) before whitelisting");
    }
    if !n.creator {
        return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, "only the creating process may whitelist importers");
    }
    if slot.no_pid_check != 0 {
        return bail(
            ACL_ERROR_RT_NO_PERMISSION,
            "the notify was exported with ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION: it has no whitelist",
        );
    }
    // SAFETY: pid points to one pid (num == 1; C API contract).
    let p = unsafe { pid.read_unaligned() };
    if !registry::whitelist_add(&mut slot.wl, &mut slot.wl_len, p, aclshm_os::now_ticks()) {
        return bail(
            ACL_ERROR_RT_DRV_INTERNAL_ERROR,
            format!("a notify admits at most {} processes besides its creator", registry::WL_NOTIFY),
        );
    }
    Ok(())
}

pub(crate) unsafe fn aclrtNotifyImportByKey(notify: *mut aclrtNotify, key: *const c_char, flags: u64) -> R {
    not_null(notify, "notify")?;
    not_null(key, "key")?;
    // The runtime keeps the low 32 bits; 0x1 (download to device) and 0x2 (enable peer access) exist.
    if (flags as u32) > 3 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("import flags {flags:#x} are unknown"));
    }
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    // SAFETY: key is a NUL-terminated string (C API contract).
    let k = unsafe { read_key(key)? };
    let drv = |why: String| fail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, why);
    let (slot, serial) = {
        let mut g = s.lock()?;
        let creator = {
            let t = g.t();
            t.notify_live
                .iter()
                .find(|&i| t.notifies[i].exported == 1 && registry::key_str(&t.notifies[i].key) == k.as_slice())
                .map(|i| t.notifies[i].creator)
        };
        s.reap_if_dead(&mut g, creator);
        let me = s.me;
        let t = g.t();
        let i = t
            .notify_live
            .iter()
            .find(|&i| t.notifies[i].exported == 1 && registry::key_str(&t.notifies[i].key) == k.as_slice())
            .ok_or_else(|| drv("the notify key is unknown".to_string()))?;
        let n = &mut t.notifies[i];
        if n.creator_holds == 0 {
            return Err(drv("the notify's creator destroyed it".to_string()));
        }
        if n.no_pid_check == 0 && !registry::whitelisted(&n.wl[..n.wl_len as usize], me.bare_tgid, me.start) {
            return Err(drv(format!(
                "pid {} is not on the notify's whitelist (aclrtNotifySetImportPid, before this process imports)",
                me.bare_tgid
            )));
        }
        let others = n.holders.iter().filter(|&p| p != n.creator as usize).count();
        if !n.holders.get(me.slot as usize) && others >= registry::WL_NOTIFY {
            return Err(drv(format!("a notify admits at most {} processes besides its creator", registry::WL_NOTIFY)));
        }
        n.holders.set(me.slot as usize);
        (i, n.serial)
    };
    let generation = l.new_generation();
    let k = l.notifies.insert(LocalNotify { generation, slot, serial, device: d, creator: false });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(notify, encode(TAG_NOTIFY, k, generation)) };
    Ok(())
}

/// Check notify `slot` is still the one a task was queued for.
fn live(s: &Sim, slot: usize, serial: u64) -> R {
    let mut g = s.lock()?;
    if g.t().notify_if(slot, serial).is_none() {
        return bail(ACL_ERROR_RT_INVALID_HANDLE, "the notify was destroyed while a task on it was queued");
    }
    Ok(())
}

/// A record task: set the notify and wake its waiters, in any process.
fn record_now(s: &Sim, slot: usize, serial: u64) -> R {
    live(s, slot, serial)?;
    let w = &s.reg.words().notify_value[slot];
    w.store(1, Ordering::Release);
    aclshm_os::futex_wake_all(w);
    Ok(())
}

/// A wait-and-reset task: wait until the notify is set, then reset it.
fn wait_now(s: &Sim, slot: usize, serial: u64, deadline: Option<Instant>, abort: &AtomicBool) -> R {
    live(s, slot, serial)?;
    let w = &s.reg.words().notify_value[slot];
    loop {
        if w.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Ok(());
        }
        if abort.load(crate::sync::Ordering::Acquire) {
            return bail(ACL_ERROR_RT_STREAM_ABORT, "the stream was destroyed while waiting");
        }
        // Short slices: a forced destroy and a notify destroyed meanwhile are noticed promptly.
        let slice = Duration::from_millis(50);
        let nap = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return bail(ACL_ERROR_RT_TASK_TIMEOUT, "the notify was not recorded before the wait's timeout");
                }
                (d - now).min(slice)
            }
            None => slice,
        };
        // How the wait ended does not matter: the loop looks at the word, the abort flag and the clock.
        let _ = aclshm_os::futex_wait(w, 0, nap);
    }
}
