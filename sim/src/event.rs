//! Events and IPC events.
//!
//! An event counts the records queued on it and the records its streams have reached. A record
//! (`aclrtRecordEvent`) takes the next number when it is called and completes when its stream reaches it;
//! a wait (`aclrtStreamWaitEvent` on a stream, `aclrtSynchronizeEvent` on the host) waits for the number the
//! event had when the wait was asked for, so later records do not move it. An event never recorded is
//! complete. The counters of an event created with `ACL_EVENT_IPC` live in the registry (futex words), so
//! a record in one process completes a wait in another; those of other events live in the process.
//!
//! A record dropped without running (its stream failed earlier, or was destroyed with
//! `aclrtDestroyStreamForce`) completes all the same, so nothing waits for ever on work that will never run.
//! An IPC event is exported by its creator (`aclrtIpcGetEventHandle`, any number of times: the handle is
//! the same) and opened by other processes (`aclrtIpcOpenEventHandle`; not the creator's, and only while
//! the creator holds it). Every process records, waits, queries and synchronises; each destroys its handle.

#![allow(non_snake_case)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use aclshm_sys::*;
use parking_lot::MutexGuard;

use crate::call::{R, bail, fail, not_null, put};
use crate::device::stream_for;
use crate::state::{
    EventCore, EventCounters, Local, LocalEvent, Sim, TAG_EVENT, decode, encode, sim, sim_for_task, sim_if_attached,
};
use crate::sync::AtomicBool;

/// The runtime's own "device to device sync" bit, set in the events aclrtCreateEvent makes and accepted
/// by aclrtCreateEventExWithFlag; it has no ACL macro.
const DDSYNC: u32 = 0x4;
/// The flags aclrtCreateEvent gives an event: sync, time line and stream mark (the runtime's default).
const DEFAULT_FLAGS: u32 = DDSYNC | ACL_EVENT_TIME_LINE | ACL_EVENT_CAPTURE_STREAM_PROGRESS;
/// The flags aclrtCreateEventWithFlag accepts.
const WITH_FLAG_MASK: u32 = 0x3F;
/// The flags aclrtCreateEventExWithFlag accepts.
const EX_MASK: u32 = ACL_EVENT_SYNC | ACL_EVENT_CAPTURE_STREAM_PROGRESS | DDSYNC | ACL_EVENT_TIME_LINE | ACL_EVENT_IPC;
/// Flags that must stand alone.
const ALONE: u32 = ACL_EVENT_DEVICE_USE_ONLY | ACL_EVENT_EXTERNAL | ACL_EVENT_IPC;

/// First bytes of an IPC event handle made by the simulator.
const HANDLE_MAGIC: [u8; 8] = *b"ACLSHMEV";

/// An event's counters as a task holds them: owned for a local event, by slot for an IPC event (checked
/// against its serial whenever they are reached, since the slot may be reused once everyone let go).
#[derive(Debug, Clone)]
enum EventRef {
    Local(Arc<EventCounters>),
    Ipc { slot: usize, serial: u64 },
}

/// The three words of an event.
struct Words<'a> {
    recorded: &'a AtomicU32,
    done: &'a AtomicU32,
    stamp: &'a AtomicU64,
}

impl EventRef {
    fn of(core: &EventCore) -> EventRef {
        match core {
            EventCore::Local(c) => EventRef::Local(Arc::clone(c)),
            EventCore::Ipc { slot, serial, .. } => EventRef::Ipc { slot: *slot, serial: *serial },
        }
    }

    /// The event's words; for an IPC event, only if it is still the one this reference names.
    fn words<'a>(&'a self, s: &'a Sim) -> R<Words<'a>> {
        match self {
            EventRef::Local(c) => Ok(Words { recorded: &c.recorded, done: &c.done, stamp: &c.stamp }),
            EventRef::Ipc { slot, serial } => {
                if s.lock()?.t().event_if(*slot, *serial).is_none() {
                    return bail(
                        ACL_ERROR_RT_INVALID_HANDLE,
                        "the IPC event was destroyed by every process holding it",
                    );
                }
                let w = s.reg.words();
                Ok(Words {
                    recorded: &w.event_recorded[*slot],
                    done: &w.event_done[*slot],
                    stamp: &w.event_stamp[*slot],
                })
            }
        }
    }
}

/// Whether record number `done` has reached record number `target` (counters wrap).
fn reached(done: u32, target: u32) -> bool {
    done.wrapping_sub(target) as i32 >= 0
}

/// Mark record `target` complete (and every record before it), stamp the time and wake the waiters.
fn complete(w: &Words<'_>, target: u32) {
    let mut cur = w.done.load(Ordering::Acquire);
    while !reached(cur, target) {
        match w.done.compare_exchange_weak(cur, target, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                w.stamp.store(aclshm_os::monotonic_ns(), Ordering::Release);
                break;
            }
            Err(now) => cur = now,
        }
    }
    aclshm_os::futex_wake_all(w.done);
}

/// A queued record: completes its event when its stream runs it, or when it is dropped without running.
struct Record {
    event: EventRef,
    target: u32,
    finished: bool,
}

impl Record {
    fn finish(&mut self, s: &Sim) -> R {
        self.finished = true;
        let w = self.event.words(s)?;
        complete(&w, self.target);
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.finished
            && let Some(s) = sim_if_attached()
        {
            let _ = self.finish(s);
        }
    }
}

/// Wait until `w.done` reaches `target`, in slices, giving up when `stop` says so.
fn wait_for(w: &Words<'_>, target: u32, mut stop: impl FnMut() -> R) -> R {
    loop {
        let done = w.done.load(Ordering::Acquire);
        if reached(done, target) {
            return Ok(());
        }
        stop()?;
        // How the wait ended does not matter: the loop looks at the word and asks `stop` again.
        let _ = aclshm_os::futex_wait(w.done, done, Duration::from_millis(50));
    }
}

/// What the entry points on an event handle start with, once their NULL checks passed: the simulator,
/// this process's tables (locked), and the key in them of the live event `e` names.
fn local_event(e: aclrtEvent) -> R<(&'static Sim, MutexGuard<'static, Local>, usize)> {
    let s = sim()?;
    let l = s.local.lock();
    match decode(TAG_EVENT, e) {
        Some((k, generation)) if l.events.get(k).is_some_and(|x| x.generation == generation) => Ok((s, l, k)),
        _ => bail(ACL_ERROR_RT_INVALID_HANDLE, "not a live event of this process"),
    }
}

/// Check the flags of aclrtCreateEventWithFlag (`ex` false) or aclrtCreateEventExWithFlag, as the runtime
/// does: some known flag, nothing unknown, and DEVICE_USE_ONLY, EXTERNAL and IPC alone.
fn check_flags(flag: u32, ex: bool) -> R {
    let (mask, call) =
        if ex { (EX_MASK, "aclrtCreateEventExWithFlag") } else { (WITH_FLAG_MASK, "aclrtCreateEventWithFlag") };
    if flag & mask == 0 || flag & !mask != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, format!("event flag {flag:#x} is not one {call} accepts"));
    }
    if flag & ALONE != 0 && flag.count_ones() > 1 {
        return bail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "event flag {flag:#x}: ACL_EVENT_DEVICE_USE_ONLY, ACL_EVENT_EXTERNAL and ACL_EVENT_IPC stand alone"
            ),
        );
    }
    Ok(())
}

/// Whether a stream can wait for an event with these flags.
fn waitable(flags: u32) -> bool {
    flags & (ACL_EVENT_SYNC | DDSYNC | ACL_EVENT_EXTERNAL | ACL_EVENT_IPC) != 0
}

fn create(event: *mut aclrtEvent, flag: u32, ex: bool) -> R {
    not_null(event, "event")?;
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    let core = if flag & ACL_EVENT_IPC != 0 {
        let mut g = s.lock()?;
        let t = g.t();
        let serial = t.serial();
        let i = t.alloc_event().map_err(|full| fail(ACL_ERROR_RT_RESOURCE_ALLOC_FAIL, full.to_string()))?;
        let e = &mut t.events[i];
        e.serial = serial;
        e.device = d;
        e.creator = s.me.slot;
        e.creator_pid = s.me.pid;
        e.creator_holds = 1;
        e.flags = flag;
        e.exported = 0;
        e.holders = Default::default();
        e.holders.set(s.me.slot as usize);
        let w = g.words();
        w.event_recorded[i].store(0, Ordering::Release);
        w.event_done[i].store(0, Ordering::Release);
        w.event_stamp[i].store(0, Ordering::Release);
        EventCore::Ipc { slot: i, serial, creator: true }
    } else {
        EventCore::Local(Arc::default())
    };
    let generation = l.new_generation();
    let k = l.events.insert(LocalEvent { generation, device: d, flags: flag, ex, core });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(event, encode(TAG_EVENT, k, generation)) };
    Ok(())
}

pub(crate) unsafe fn aclrtCreateEvent(event: *mut aclrtEvent) -> R {
    create(event, DEFAULT_FLAGS, false)
}

pub(crate) unsafe fn aclrtCreateEventWithFlag(event: *mut aclrtEvent, flag: u32) -> R {
    not_null(event, "event")?;
    check_flags(flag, false)?;
    create(event, flag, false)
}

pub(crate) unsafe fn aclrtCreateEventExWithFlag(event: *mut aclrtEvent, flag: u32) -> R {
    not_null(event, "event")?;
    check_flags(flag, true)?;
    create(event, flag, true)
}

pub(crate) unsafe fn aclrtDestroyEvent(event: aclrtEvent) -> R {
    not_null(event, "event")?;
    let (s, mut l, k) = local_event(event)?;
    let e = l.events.remove(k);
    if let EventCore::Ipc { slot, serial, creator } = e.core {
        let still_held = l
            .events
            .iter()
            .any(|(_, o)| matches!(o.core, EventCore::Ipc { slot: os, serial: se, .. } if os == slot && se == serial));
        drop(l);
        let mut g = s.lock()?;
        if let Some(ev) = g.t().event_if(slot, serial) {
            if creator {
                ev.creator_holds = 0;
            }
            if !still_held {
                ev.holders.clear(s.me.slot as usize);
            }
        }
        s.sweep(&mut g);
    }
    Ok(())
}

pub(crate) unsafe fn aclrtRecordEvent(event: aclrtEvent, stream: aclrtStream) -> R {
    not_null(event, "event")?;
    let (s, mut l, k) = local_event(event)?;
    if l.events[k].flags & ACL_EVENT_DEVICE_USE_ONLY != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "an ACL_EVENT_DEVICE_USE_ONLY event is recorded on the device only");
    }
    let st = stream_for(s, &mut l, stream)?;
    let r = EventRef::of(&l.events[k].core);
    drop(l);
    let target = r.words(s)?.recorded.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    let mut record = Record { event: r, target, finished: false };
    st.push(Box::new(move |_abort| record.finish(sim_for_task()?)))
}

pub(crate) unsafe fn aclrtStreamWaitEvent(stream: aclrtStream, event: aclrtEvent) -> R {
    not_null(event, "event")?;
    let (s, mut l, k) = local_event(event)?;
    let flags = l.events[k].flags;
    if flags & ACL_EVENT_DEVICE_USE_ONLY != 0 {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "an ACL_EVENT_DEVICE_USE_ONLY event is waited for on the device only");
    }
    if !waitable(flags) {
        return bail(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            format!("a stream cannot wait for an event created with flags {flags:#x} (no ACL_EVENT_SYNC)"),
        );
    }
    let st = stream_for(s, &mut l, stream)?;
    let r = EventRef::of(&l.events[k].core);
    drop(l);
    let target = r.words(s)?.recorded.load(Ordering::Acquire);
    if target == 0 {
        // Never recorded: nothing to wait for.
        return Ok(());
    }
    st.push(Box::new(move |abort: &AtomicBool| {
        let s = sim_for_task()?;
        let w = r.words(s)?;
        wait_for(&w, target, || {
            if abort.load(crate::sync::Ordering::Acquire) {
                return bail(ACL_ERROR_RT_STREAM_ABORT, "the stream was destroyed while waiting for an event");
            }
            Ok(())
        })
    }))
}

pub(crate) unsafe fn aclrtSynchronizeEvent(event: aclrtEvent) -> R {
    not_null(event, "event")?;
    let (s, l, k) = local_event(event)?;
    external_unsupported(l.events[k].flags)?;
    let r = EventRef::of(&l.events[k].core);
    drop(l);
    let w = r.words(s)?;
    // Never recorded (target 0): complete at once. An IPC event stays valid while this process holds it.
    let target = w.recorded.load(Ordering::Acquire);
    wait_for(&w, target, || Ok(()))
}

/// Refuse host synchronisation and queries on an ACL_EVENT_EXTERNAL event, as the runtime does.
fn external_unsupported(flags: u32) -> R {
    if flags & ACL_EVENT_EXTERNAL != 0 {
        return bail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "not supported on an ACL_EVENT_EXTERNAL event");
    }
    Ok(())
}

pub(crate) unsafe fn aclrtQueryEventStatus(event: aclrtEvent, status: *mut aclrtEventRecordedStatus) -> R {
    not_null(event, "event")?;
    not_null(status, "status")?;
    let (s, l, k) = local_event(event)?;
    external_unsupported(l.events[k].flags)?;
    // An event of aclrtCreateEvent(WithFlag) that was never recorded is not ready; one of
    // aclrtCreateEventExWithFlag (IPC events too) is complete.
    let ex = l.events[k].ex;
    let r = EventRef::of(&l.events[k].core);
    drop(l);
    let w = r.words(s)?;
    let recorded = w.recorded.load(Ordering::Acquire);
    let done = if recorded == 0 { ex } else { reached(w.done.load(Ordering::Acquire), recorded) };
    let v = if done {
        aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_COMPLETE
    } else {
        aclrtEventRecordedStatus::ACL_EVENT_RECORDED_STATUS_NOT_READY
    };
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(status, v) };
    Ok(())
}

pub(crate) unsafe fn aclrtEventElapsedTime(ms: *mut f32, start: aclrtEvent, end: aclrtEvent) -> R {
    not_null(ms, "ms")?;
    not_null(start, "startEvent")?;
    not_null(end, "endEvent")?;
    let stamp = |e: aclrtEvent| -> R<u64> {
        let (s, l, k) = local_event(e)?;
        let ev = &l.events[k];
        if ev.flags & (ACL_EVENT_IPC | ACL_EVENT_EXTERNAL) != 0 {
            return bail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "IPC and external events record no time");
        }
        let timed = ev.flags & ACL_EVENT_TIME_LINE != 0;
        let r = EventRef::of(&ev.core);
        drop(l);
        let w = r.words(s)?;
        let recorded = w.recorded.load(Ordering::Acquire);
        if recorded == 0 {
            return bail(ACL_ERROR_RT_INTERNAL_ERROR, "the event was never recorded");
        }
        if !timed {
            return bail(ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID, "the event was created without ACL_EVENT_TIME_LINE");
        }
        if !reached(w.done.load(Ordering::Acquire), recorded) {
            return bail(ACL_ERROR_RT_EVENT_NOT_COMPLETE, "the event's latest record has not completed");
        }
        Ok(w.stamp.load(Ordering::Acquire))
    };
    let (a, b) = (stamp(start)?, stamp(end)?);
    let v = (b as i128 - a as i128) as f64 / 1e6;
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(ms, v as f32) };
    Ok(())
}

/// The fields of an IPC event handle the simulator writes after its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HandleFields {
    slot: u32,
    serial: u64,
    creator_pid: i32,
    device: u32,
}

fn pack(f: HandleFields) -> aclrtIpcEventHandle {
    let mut b = [0u8; ACL_IPC_EVENT_HANDLE_SIZE as usize];
    b[..8].copy_from_slice(&HANDLE_MAGIC);
    b[8..12].copy_from_slice(&f.slot.to_le_bytes());
    b[12..16].copy_from_slice(&f.device.to_le_bytes());
    b[16..24].copy_from_slice(&f.serial.to_le_bytes());
    b[24..28].copy_from_slice(&f.creator_pid.to_le_bytes());
    aclrtIpcEventHandle { reserved: b.map(|x| x as std::ffi::c_char) }
}

fn unpack(h: &aclrtIpcEventHandle) -> Option<HandleFields> {
    let b = h.reserved.map(|x| x as u8);
    if b[..8] != HANDLE_MAGIC || b[28..].iter().any(|&x| x != 0) {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    Some(HandleFields {
        slot: u32_at(8),
        device: u32_at(12),
        serial: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        creator_pid: u32_at(24) as i32,
    })
}

pub(crate) unsafe fn aclrtIpcGetEventHandle(event: aclrtEvent, handle: *mut aclrtIpcEventHandle) -> R {
    not_null(event, "event")?;
    not_null(handle, "handle")?;
    let (s, l, k) = local_event(event)?;
    let ev = &l.events[k];
    let EventCore::Ipc { slot, serial, creator } = ev.core else {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "the event was not created with ACL_EVENT_IPC");
    };
    if !creator {
        return bail(ACL_ERROR_RT_PARAM_INVALID, "only the process that created an IPC event exports it");
    }
    let device = ev.device;
    drop(l);
    let mut g = s.lock()?;
    let e = g.t().event_if(slot, serial).ok_or_else(|| fail(ACL_ERROR_RT_INTERNAL_ERROR, "the IPC event vanished"))?;
    e.exported = 1;
    let h = pack(HandleFields { slot: slot as u32, serial, creator_pid: s.me.pid, device });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(handle, h) };
    Ok(())
}

pub(crate) unsafe fn aclrtIpcOpenEventHandle(handle: aclrtIpcEventHandle, event: *mut aclrtEvent) -> R {
    not_null(event, "event")?;
    let f = unpack(&handle)
        .ok_or_else(|| fail(ACL_ERROR_RT_PARAM_INVALID, "not an IPC event handle (aclrtIpcGetEventHandle)"))?;
    let s = sim()?;
    let mut l = s.local.lock();
    let d = s.current(&l)?;
    let slot = f.slot as usize;
    {
        let mut g = s.lock()?;
        s.reap(&mut g);
        let me = s.me.slot;
        let e =
            g.t().event_if(slot, f.serial).filter(|e| e.exported == 1).ok_or_else(|| {
                fail(ACL_ERROR_RT_INVALID_HANDLE, "the IPC event handle names no live exported event")
            })?;
        if e.creator_holds == 0 {
            return bail(ACL_ERROR_RT_INVALID_HANDLE, "the IPC event's creator destroyed it");
        }
        if e.creator == me {
            return bail(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                "the process that created an IPC event cannot open it (export and import are across processes)",
            );
        }
        e.holders.set(me as usize);
    }
    let generation = l.new_generation();
    let core = EventCore::Ipc { slot, serial: f.serial, creator: false };
    let k = l.events.insert(LocalEvent { generation, device: d, flags: ACL_EVENT_IPC, ex: true, core });
    // SAFETY: non-null out-parameter (C API contract).
    unsafe { put(event, encode(TAG_EVENT, k, generation)) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_numbers_wrap() {
        assert!(reached(5, 5));
        assert!(reached(6, 5));
        assert!(!reached(4, 5));
        assert!(reached(1, u32::MAX), "past the wrap");
        assert!(!reached(u32::MAX, 1));
    }

    #[test]
    fn handles_round_trip_and_forgeries_are_refused() {
        let f = HandleFields { slot: 7, serial: 0x1234_5678_9abc, creator_pid: 4242, device: 1 };
        let h = pack(f);
        assert_eq!(unpack(&h), Some(f));
        let mut bad = h;
        bad.reserved[0] = b'X' as std::ffi::c_char;
        assert_eq!(unpack(&bad), None);
        let mut tail = h;
        tail.reserved[63] = 1;
        assert_eq!(unpack(&tail), None, "the reserved tail must be zero");
    }
}
