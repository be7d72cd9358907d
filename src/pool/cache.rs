//! Heap allocations through threads' magazines ([`crate::magazine`]): a free of an untagged allocation
//! of at most [`max_size`] bytes claims it with one compare-and-swap on its record's word (live to
//! cached: a second free of it, in any thread, finds it not live) and leaves it in the freeing thread's
//! magazine for its size; that thread's next allocation of the size takes it back with no lock and a
//! plain store (cached to live at the next generation). The heap holds a cached allocation as allocated
//! all along; [`take_back_all`] gives what every thread's magazines hold to the heap, before the pool
//! grows, trims or sleeps.

use super::config::PoolConfig;
use super::handle::Allocation;
use super::heap::HeapBlock;
use super::inner::Inner;
use super::records::{CACHED, LIVE, Records};
use crate::magazine::Pushed;

/// The largest allocation a magazine keeps: an eighth of a chunk, at most 1 MiB (larger allocations
/// are rarer, and do enough with their memory that the heap's lock is little of their cost). None unless
/// the pool asks for a thread cache, and none in a pool with a trim watermark, whose frees give memory
/// back as they go.
pub(super) fn max_size(config: &PoolConfig) -> u64 {
    if !config.thread_cache || config.trim_watermark.is_some() { 0 } else { (config.chunk_bytes / 8).min(MAX_SIZE) }
}
const MAX_SIZE: u64 = 1 << 20;
/// A thread's magazine of one size holds at most this many allocations, and at most [`MAGAZINE_BYTES`]
/// (so a thread holds at most 16 MiB of a pool: little against the chunks, and never more than the pool
/// could place elsewhere).
const MAGAZINE_ENTRIES: u64 = 64;
const MAGAZINE_BYTES: u64 = 4 << 20;
/// Sizes a thread keeps magazines of, per pool.
pub(super) const SIZES_PER_THREAD: usize = 4;

/// Entries of a magazine of allocations of `size` bytes.
pub(super) fn entries(size: u64) -> usize {
    if size == 0 || size > MAX_SIZE { 0 } else { (MAGAZINE_BYTES / size).min(MAGAZINE_ENTRIES) as usize }
}

/// The records of a pool with magazines (only such a pool has anything in them).
#[inline]
fn records(inner: &Inner) -> &Records {
    inner.records.as_deref().expect("a pool with magazines has records")
}

/// A magazine's entry for `b`: its record's key and generation.
#[inline]
fn entry(b: &HeapBlock) -> u64 {
    u64::from(b.key) << 32 | u64::from(b.generation)
}

/// An allocation of `size` bytes (a multiple of the granule) this thread freed into its magazine, live
/// again, if it has one.
#[inline]
pub(super) fn take(inner: &Inner, size: u64) -> Option<Allocation> {
    let e = inner.cache.pop(size)?;
    let (key, cached) = ((e >> 32) as u32, e as u32);
    let rec = records(inner).get(key).expect("a cached allocation's record was made");
    // This thread is the one taker of the entry: nobody else changes a cached word it holds.
    let generation = cached.wrapping_add(1);
    rec.store(generation, LIVE);
    let offset = rec.offset();
    let g = &inner.geometry;
    Some(Allocation {
        pool: g.pool,
        block: HeapBlock { key, generation, offset, size },
        addr: g.base + offset as usize,
        tag: 0,
    })
}

/// Whether `a` is of the kind magazines keep (untagged, small enough): a free of it may go to one.
#[inline]
pub(super) fn claimable(inner: &Inner, a: &Allocation) -> bool {
    a.tag == 0 && a.block.size <= inner.cache_max
}

/// Free `a`, [`claimable`], into this thread's magazine; false if not (magazines closed, full or none for
/// the size, or `a` not live: the heap's free says why), and nothing was done.
#[inline]
pub(super) fn keep(inner: &Inner, a: &Allocation) -> bool {
    debug_assert!(claimable(inner, a), "the caller checks");
    let claim = || records(inner).get(a.block.key).is_some_and(|r| r.change(a.block.generation, LIVE, CACHED));
    inner.cache.push(a.block.size, entry(&a.block), claim) == Pushed::Kept
}

/// The heap's block of a magazine's entry.
fn block(inner: &Inner, size: u64, e: u64) -> HeapBlock {
    let (key, generation) = ((e >> 32) as u32, e as u32);
    let offset = records(inner).get(key).expect("a cached allocation's record was made").offset();
    HeapBlock { key, generation, offset, size }
}

/// Give the heap every allocation threads' magazines hold. Returns how many.
pub(super) fn take_back_all(inner: &Inner) -> usize {
    let entries = inner.cache.drain();
    if entries.is_empty() {
        return 0;
    }
    let mut st = inner.state.lock();
    entries.into_iter().filter(|&(size, e)| st.free_cached(block(inner, size, e))).count()
}
