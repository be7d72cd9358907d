//! Sleep and wake: give a pool's physical memory back and take it again, keeping every address.
//!
//! ```text
//!   awake ──sleep──> copy what is kept (tags to offload) to page-locked host memory
//!                    unmap every chunk: free ones go back for good (Empty), the others go to sleep
//!                    (Asleep: still their allocator's, allocations and block ids unchanged)
//!                    the observer (a shared pool) publishes them asleep; mirrors unmap, acknowledge;
//!                    then the physical memory is freed ──> asleep (nothing can be allocated)
//!   asleep ──wake(tags)──> new physical memory mapped at the same places, kept bytes copied back, then
//!                    handed to the observer (exported once, whitelisted, published under the same
//!                    chunk ids: mirrors map it at their own unchanged addresses) ──> awake once no
//!                    chunk sleeps
//! ```
//!
//! What is kept is chosen by tag: every heap allocation has one (`default` unless made with
//! [`Pool::alloc_tagged`]), every block class has one ([`Pool::tag_block_class`]). The bytes of
//! allocations whose tag is not offloaded are undefined after the wake. A wake of some tags wakes the
//! chunks that held allocations of those tags when the pool went to sleep (a chunk holding several tags
//! wakes with the first of them). Frees are allowed while asleep (they make no runtime call); allocations
//! are refused with [`Error::Asleep`].
//!
//! Failures leave a pool that can be woken or closed: a sleep whose copies fail changes nothing; a chunk
//! whose unmap fails stays mapped (awake); a free that fails after the unmap leaves the memory with the
//! sleeping chunk, freed at the wake or the close. A wake whose allocation, mapping, copy or publication
//! fails undoes itself for the chunks of that wake: they stay asleep, their kept bytes too.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::time::Duration;

use aclshm_sys::{aclrtMemLocation, aclrtMemLocationType, aclrtMemcpyBatchAttr, aclrtMemcpyKind};

use super::inner::Inner;
use super::kept::{HostBuffer, Kept, Piece};
use super::slots::{ChunkObserver, Leftover, Owner, Slot};
use super::state::{DEFAULT_TAG, State};
use crate::device::on_device;
use crate::error::{AclError, Error, Result};
use crate::raw::{self, BatchCopy};
use crate::runtime::Runtime;
use crate::sync::Arc;
use crate::vmm::{DropErrors, Mapping, PhysicalMem};

/// How to put a pool to sleep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepConfig {
    /// The tags whose allocations are kept (copied to host memory and back at the wake). Allocations of
    /// other tags read as undefined after the wake. vLLM's `offload_tags`.
    pub offload_tags: Vec<String>,
    /// How long a shared pool's sleep waits for its mirrors to let go of the physical memory before it
    /// reports [`Error::Timeout`] (the pool is asleep all the same; the memory is freed when they do).
    pub release_timeout: Duration,
}

impl Default for SleepConfig {
    fn default() -> Self {
        SleepConfig { offload_tags: Vec::new(), release_timeout: Duration::from_secs(30) }
    }
}

/// What a sleep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepReport {
    /// Chunks put to sleep (they held allocations).
    pub slept_chunks: u32,
    /// Free chunks given back for good.
    pub trimmed_chunks: u32,
    /// Bytes of device memory given back.
    pub released_bytes: u64,
    /// Bytes copied to host memory (what was kept).
    pub kept_bytes: u64,
}

/// Which way a batch of copies goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToHost,
    ToDevice,
}

/// The most copies one `aclrtMemcpyBatch` takes.
const BATCH: usize = 4096;

/// Copy `pieces` between device memory (at `base` + offset) and `host`, in batches where the runtime has
/// `aclrtMemcpyBatch` (one copy at a time where it does not), with `device` current.
fn copy(rt: &Runtime, device: i32, base: usize, host: &HostBuffer, pieces: &[Piece], dir: Direction) -> Result<()> {
    if pieces.is_empty() {
        return Ok(());
    }
    // Pieces side by side on the device and in the buffer are one copy (a large allocation is one piece
    // per chunk it spans).
    let mut runs: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match runs.last_mut() {
            Some(r) if r.offset + r.len == p.offset && r.host + r.len == p.host => r.len += p.len,
            _ => runs.push(*p),
        }
    }
    let pieces = &runs[..];
    on_device(rt, device, || {
        let dev_loc = aclrtMemLocation { id: device as u32, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE };
        let host_loc = aclrtMemLocation { id: 0, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_HOST };
        let (dst_loc, src_loc) = match dir {
            Direction::ToHost => (host_loc, dev_loc),
            Direction::ToDevice => (dev_loc, host_loc),
        };
        let attr = aclrtMemcpyBatchAttr { dstLoc: dst_loc, srcLoc: src_loc, rsv: [0; 16] };
        let ends = |p: &Piece| {
            let d = (base + p.offset as usize) as *mut c_void;
            // SAFETY: within the host buffer: the pieces were laid out in it.
            let h = unsafe { host.ptr.as_ptr().cast::<u8>().add(p.host as usize) }.cast::<c_void>();
            match dir {
                Direction::ToHost => (h, d.cast_const()),
                Direction::ToDevice => (d, h.cast_const()),
            }
        };
        let mut batched = true;
        for group in pieces.chunks(BATCH) {
            if batched {
                let copies: Vec<BatchCopy> = group
                    .iter()
                    .map(|p| {
                        let (dst, src) = ends(p);
                        BatchCopy { dst, dest_max: p.len as usize, src, size: p.len as usize }
                    })
                    .collect();
                // SAFETY: device addresses of the pool's mapped chunks, host addresses inside our buffer,
                // each for its piece's length.
                match unsafe { raw::memcpy_batch(rt, &copies, &[attr], &[0]) } {
                    Ok(()) => continue,
                    Err((e, _))
                        if matches!(e, Error::Unsupported { .. })
                            || e.acl_code() == Some(AclError::FEATURE_NOT_SUPPORT) =>
                    {
                        batched = false;
                    }
                    Err((e, _)) => return Err(e),
                }
            }
            for p in group {
                let (dst, src) = ends(p);
                let kind = match dir {
                    Direction::ToHost => aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                    Direction::ToDevice => aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                };
                // SAFETY: as for the batch.
                unsafe { raw::memcpy(rt, dst, p.len as usize, src, p.len as usize, kind)? };
            }
        }
        Ok(())
    })
}

/// A chunk a sleep takes out: its slot, owner, tags, and what to do with it.
struct Sleeper {
    slot: usize,
    owner: Owner,
    tags: u64,
    /// Nothing allocated in it: given back for good rather than put to sleep.
    free: bool,
}

impl State {
    /// The pieces of what a sleep keeps (allocations of the tags in `keep`, a bitmask) in each chunk that
    /// is mapped, and each chunk's tags; chunks with nothing allocated are marked free.
    fn plan_sleep(&self, chunk: u64, keep: u64) -> (Vec<Sleeper>, Vec<Piece>) {
        let mut sleepers = Vec::new();
        let mut pieces = Vec::new();
        let mut host = 0u64;
        for (slot, s) in self.slots.iter().enumerate() {
            let Slot::Mapped { owner, .. } = s else { continue };
            let (lo, hi) = (slot as u64 * chunk, (slot as u64 + 1) * chunk);
            let mut tags = 0u64;
            let mut take = |offset: u64, len: u64, tag: u8, pieces: &mut Vec<Piece>| {
                tags |= 1 << tag;
                if keep & (1 << tag) != 0 {
                    // The part of it in this chunk (an allocation may span chunks).
                    let (a, b) = (offset.max(lo), (offset + len).min(hi));
                    pieces.push(Piece { slot, offset: a, len: b - a, host });
                    host += b - a;
                }
            };
            match owner {
                Owner::Heap => {
                    for (offset, len) in self.heap_allocated_in(lo, hi) {
                        let tag = self.tagged.get(&offset).map_or(0, |&(_, t)| t);
                        take(offset, len, tag, &mut pieces);
                    }
                }
                Owner::Class(c) => {
                    let tag = self.class_tags[*c as usize];
                    let (size, indices) = self.class_allocated_in(*c, slot);
                    for index in indices {
                        take(lo + u64::from(index) * size, size, tag, &mut pieces);
                    }
                }
            }
            sleepers.push(Sleeper { slot, owner: *owner, tags, free: tags == 0 });
        }
        (sleepers, pieces)
    }
}

/// See [`Pool::sleep`](super::Pool::sleep); the caller holds `sleep_wake`. `close_gates` stops the
/// magazines handing anything out and takes back what they hold, once allocations have stopped.
pub(super) fn sleep(inner: &Inner, config: &SleepConfig, close_gates: impl FnOnce()) -> Result<SleepReport> {
    let chunk = inner.geometry.chunk;
    {
        let mut st = inner.state.lock();
        st.check_open()?;
        if st.asleep {
            return Err(Error::Asleep("it is asleep already (wake it first)".into()));
        }
        // From here nothing is allocated, and no grow or trim starts.
        st.asleep = true;
    }
    // One under way finishes first: a chunk still being mapped would stay mapped through the sleep, one
    // being given back might reach the device only after the sleep returned.
    if !inner.wait_settled(false, config.release_timeout) {
        inner.state.lock().asleep = false;
        return Err(Error::Timeout(format!(
            "a grow or trim under way did not finish within {:?}; the pool is awake",
            config.release_timeout
        )));
    }
    close_gates();
    // Plan under the lock: from here nothing new lands in the chunks.
    let (sleepers, pieces) = {
        let st = inner.state.lock();
        let mut keep = 0u64;
        for t in &config.offload_tags {
            if let Some(i) = st.tags.iter().position(|x| x == t) {
                keep |= 1 << i;
            }
        }
        st.plan_sleep(chunk, keep)
    };
    // Keep what is kept: copied while every chunk is still mapped. A failure changes nothing.
    let kept = match keep(inner, &pieces) {
        Ok(k) => k,
        Err(e) => {
            inner.state.lock().asleep = false;
            return Err(e);
        }
    };
    let kept_bytes = kept.bytes();
    // Take the chunks out (unmapped outside the lock).
    let taken: Vec<(Sleeper, Mapping)> = {
        let mut st = inner.state.lock();
        st.kept = Some(kept);
        sleepers
            .into_iter()
            .filter_map(|sl| {
                if sl.free && !st.remove_from_allocator(sl.slot, sl.owner, chunk) {
                    // It is not free after all (or not wholly in the heap's hands): leave it be.
                    return None;
                }
                let Slot::Mapped { mapping, .. } = std::mem::replace(&mut st.slots[sl.slot], Slot::Retiring) else {
                    unreachable!("planned from a mapped slot, under the lock held since")
                };
                st.mapped_chunks -= 1;
                if sl.free {
                    st.free_chunks -= 1;
                }
                Some((sl, mapping))
            })
            .collect()
    };
    let observer = inner.observer.lock().clone();
    let mut report = SleepReport { kept_bytes, ..SleepReport::default() };
    let mut errors = Vec::new();
    let mut settled = Vec::new();
    for (sl, m) in taken {
        let slot = sl.slot;
        let state = if sl.free {
            // Given back for good, as a trim does.
            match super::slots::teardown(m, observer.as_deref().map(|o| (o, slot))) {
                Ok(()) => {
                    report.trimmed_chunks += 1;
                    report.released_bytes += chunk;
                    Slot::Empty
                }
                Err((e, left)) => {
                    errors.push(e);
                    Slot::Unknown(left)
                }
            }
        } else {
            match sleep_chunk(m, observer.as_deref(), slot, &inner.errors) {
                Ok(leftover) => {
                    report.slept_chunks += 1;
                    report.released_bytes += chunk;
                    Slot::Asleep { owner: sl.owner, tags: sl.tags, leftover }
                }
                Err((e, m)) => {
                    // Still mapped: it stays awake (and its kept pieces are not needed).
                    errors.push(e);
                    Slot::Mapped { owner: sl.owner, mapping: m }
                }
            }
        };
        settled.push((slot, state));
    }
    {
        let mut st = inner.state.lock();
        for (slot, state) in settled {
            if matches!(state, Slot::Mapped { .. }) {
                st.mapped_chunks += 1;
                if let Some(k) = st.kept.as_mut() {
                    k.pieces.retain(|p| p.slot != slot);
                }
            }
            st.slots[slot] = state;
        }
        if report.trimmed_chunks > 0 {
            st.trimmed(report.trimmed_chunks);
        }
        st.bump_generation();
    }
    if let (Some(o), None) = (observer.as_deref(), errors.first()) {
        o.wait_released(config.release_timeout)?;
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Copy the kept pieces to a new host buffer (none for nothing kept).
fn keep(inner: &Inner, pieces: &[Piece]) -> Result<Kept> {
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    if total == 0 {
        return Ok(Kept { buf: None, pieces: Vec::new() });
    }
    let rt = &inner.rt;
    let ptr = on_device(rt, inner.device, || raw::malloc_host(rt, total as usize))?;
    let ptr = NonNull::new(ptr).ok_or_else(|| Error::InvalidArgument("aclrtMallocHost returned NULL".into()))?;
    let buf = HostBuffer { rt: rt.clone(), ptr, len: total, errors: Arc::clone(&inner.errors) };
    copy(rt, inner.device, inner.geometry.base, &buf, pieces, Direction::ToHost)?;
    Ok(Kept { buf: Some(buf), pieces: pieces.to_vec() })
}

/// See [`Pool::wake`](super::Pool::wake); the caller holds `sleep_wake`.
pub(super) fn wake(inner: &Inner, tags: Option<&[&str]>) -> Result<()> {
    let chunk = inner.geometry.chunk;
    let picked: Vec<(usize, Owner, u64, Option<Box<PhysicalMem>>)> = {
        let mut st = inner.state.lock();
        st.check_open()?;
        let want = match tags {
            None => u64::MAX,
            Some(names) => {
                names.iter().filter_map(|n| st.tags.iter().position(|t| t == n)).fold(0u64, |m, i| m | 1 << i)
            }
        };
        let mut picked = Vec::new();
        for s in 0..st.slots.len() {
            if let Slot::Asleep { tags, .. } = st.slots[s]
                && tags & want != 0
            {
                let Slot::Asleep { owner, tags, leftover } = std::mem::replace(&mut st.slots[s], Slot::Growing) else {
                    unreachable!("matched above")
                };
                picked.push((s, owner, tags, leftover));
            }
        }
        if picked.is_empty() {
            st.asleep = st.slots.iter().any(|s| matches!(s, Slot::Asleep { .. }));
            return Ok(());
        }
        picked
    };
    let mut wake = Wake { inner, picked, mapped: Vec::new(), kept: None, done: false };
    wake.run(chunk)
}

/// Unmap a chunk going to sleep; hand its memory to the observer, or free it. On an unmap failure, the
/// error and the mapping (still there); a failed free leaves the memory with the sleeping chunk.
fn sleep_chunk(
    m: Mapping,
    observer: Option<&dyn ChunkObserver>,
    slot: usize,
    errors: &DropErrors,
) -> std::result::Result<Option<Box<PhysicalMem>>, (Error, Mapping)> {
    let phys = m.unmap()?;
    if let Some(o) = observer {
        o.slept(slot, phys);
        return Ok(None);
    }
    match Arc::try_unwrap(phys) {
        Ok(p) => match p.free() {
            Ok(()) => Ok(None),
            Err((e, p)) => {
                // Reported by the next call; the memory is freed at the wake or the close.
                errors.record(e);
                Ok(Some(Box::new(p)))
            }
        },
        // Someone else holds the physical memory too: it is freed with their reference.
        Err(_) => Ok(None),
    }
}

/// A wake in progress: the slots it took (now `Growing`), the chunks mapped so far. Dropped without
/// finishing, it undoes itself: what it mapped is unmapped and freed, and the slots sleep again.
struct Wake<'a> {
    inner: &'a Inner,
    picked: Vec<(usize, Owner, u64, Option<Box<PhysicalMem>>)>,
    mapped: Vec<(usize, Mapping)>,
    /// What the sleep kept, taken out of the state while the wake copies it back (put back either way).
    kept: Option<Kept>,
    done: bool,
}

impl Wake<'_> {
    fn run(&mut self, chunk: u64) -> Result<()> {
        let inner = self.inner;
        let range = inner.state.lock().range.clone().ok_or(Error::Closed)?;
        // Memory a failed free left behind goes first: its slot is about to get new memory.
        for (_, _, _, leftover) in &mut self.picked {
            if let Some(p) = leftover.take()
                && let Err((e, p)) = p.free()
            {
                *leftover = Some(Box::new(p));
                return Err(e);
            }
        }
        let slots: Vec<usize> = self.picked.iter().map(|p| p.0).collect();
        for &s in &slots {
            let phys =
                PhysicalMem::allocate(&inner.rt, inner.device, chunk as usize, inner.config.page, &inner.errors)?;
            let m = Mapping::map(&range, s * chunk as usize, &phys)?;
            drop(phys);
            self.mapped.push((s, m));
        }
        // The kept bytes go back before anyone else can see the chunks. The copy happens outside the
        // state lock, with the kept buffer taken out (sleeps and wakes are one at a time).
        self.kept = inner.state.lock().kept.take();
        if let Some(Kept { buf: Some(buf), pieces }) = self.kept.as_ref() {
            let mine: Vec<Piece> = pieces.iter().filter(|p| slots.contains(&p.slot)).copied().collect();
            copy(&inner.rt, inner.device, inner.geometry.base, buf, &mine, Direction::ToDevice)?;
        }
        let observer = inner.observer.lock();
        if let Some(o) = observer.as_ref() {
            let chunks: Vec<(usize, &Arc<PhysicalMem>)> = self.mapped.iter().map(|(s, m)| (*s, m.phys())).collect();
            o.woken(&chunks)?;
        }
        let mut st = inner.state.lock();
        for ((s, owner, _, _), (s2, m)) in self.picked.drain(..).zip(self.mapped.drain(..)) {
            debug_assert_eq!(s, s2);
            st.slots[s] = Slot::Mapped { owner, mapping: m };
            st.mapped_chunks += 1;
        }
        let still = st.slots.iter().any(|s| matches!(s, Slot::Asleep { .. }));
        let mut kept = self.kept.take();
        if let Some(k) = kept.as_mut() {
            k.pieces.retain(|p| !slots.contains(&p.slot));
        }
        // Once every chunk is awake, the kept copy goes (freed after the lock is let go).
        let done_with = if still {
            st.kept = kept;
            None
        } else {
            kept
        };
        st.asleep = still;
        st.bump_generation();
        drop(st);
        drop(observer);
        drop(done_with);
        self.done = true;
        Ok(())
    }
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let inner = self.inner;
        let results: Vec<_> = self.mapped.drain(..).map(|(s, m)| (s, super::slots::teardown(m, None))).collect();
        let mut st = inner.state.lock();
        if let Some(k) = self.kept.take() {
            st.kept = Some(k);
        }
        for (s, owner, tags, leftover) in self.picked.drain(..) {
            st.slots[s] = Slot::Asleep { owner, tags, leftover };
        }
        for (s, r) in results {
            let Err((e, left)) = r else { continue };
            inner.errors.record(e);
            let Slot::Asleep { owner, leftover, .. } = &mut st.slots[s] else { continue };
            match left {
                // Unmapped, not freed: kept with the sleeping chunk, to free at the wake or the close.
                Leftover::Unmapped(p) => *leftover = Some(p),
                // Still mapped: the chunk stays awake (its memory is valid, if not what was kept).
                Leftover::Mapped(m) => {
                    let owner = *owner;
                    st.slots[s] = Slot::Mapped { owner, mapping: m };
                    st.mapped_chunks += 1;
                }
            }
        }
        st.asleep = st.slots.iter().any(|x| matches!(x, Slot::Asleep { .. }));
    }
}

/// The default tag's name (the tag of [`Pool::alloc`](super::Pool::alloc)).
pub const DEFAULT: &str = DEFAULT_TAG;
