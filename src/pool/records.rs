//! What the heap's block records say of their allocations, readable without the pool's lock: per record
//! key, a state word (free, live, or kept in a thread's magazine, with the record's generation) and the
//! offset of the allocation. The heap changes them under the pool's lock; a free into a magazine claims a
//! live allocation with one compare-and-swap on its word (so two frees of one allocation, in any threads,
//! have one winner), and the thread that takes it back out of its magazine, its one taker, makes it live
//! again with a plain store.
//!
//! ```text
//!   word = generation << 2 | state        FREE --heap alloc--> LIVE(g+1) --heap free--> FREE
//!                                                              LIVE(g) --free to magazine (CAS)--> CACHED(g)
//!                                          CACHED(g) --taken from the magazine--> LIVE(g+1)
//!                                          CACHED(g) --drained to the heap--> FREE
//! ```
//!
//! Records live in segments of doubling size (1024, 2048, ... records), made once under the pool's lock
//! and never moved, so a reference to a record stays valid while the pool lives.

use std::sync::OnceLock;

use crate::sync::stat::{AtomicU64, Ordering};

/// A record's states (the low two bits of its word).
pub(super) const FREE: u64 = 0;
pub(super) const LIVE: u64 = 1;
pub(super) const CACHED: u64 = 2;

const FIRST_LOG2: u32 = 10;
/// Segments: enough for every `u32` key.
const SEGMENTS: usize = 33 - FIRST_LOG2 as usize;

/// One record.
#[derive(Debug, Default)]
pub(super) struct Record {
    word: AtomicU64,
    offset: AtomicU64,
}

/// The word of `state` at `generation`.
#[inline]
pub(super) fn word(generation: u32, state: u64) -> u64 {
    u64::from(generation) << 2 | state
}

impl Record {
    /// The record's generation and state.
    #[inline]
    pub(super) fn load(&self) -> (u32, u64) {
        let w = self.word.load(Ordering::Acquire);
        ((w >> 2) as u32, w & 3)
    }

    /// Set the word (under the pool's lock, or by the one taker of a kept allocation).
    #[inline]
    pub(super) fn store(&self, generation: u32, state: u64) {
        self.word.store(word(generation, state), Ordering::Release);
    }

    /// From `from` to `to` at `generation`, if the word is `from` there; whether it was.
    #[inline]
    pub(super) fn change(&self, generation: u32, from: u64, to: u64) -> bool {
        self.word
            .compare_exchange(word(generation, from), word(generation, to), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The offset of the allocation (set when it was made live by the heap).
    #[inline]
    pub(super) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    pub(super) fn set_offset(&self, offset: u64) {
        self.offset.store(offset, Ordering::Relaxed);
    }
}

/// Every record, by key.
#[derive(Debug)]
pub(super) struct Records {
    segments: [OnceLock<Box<[Record]>>; SEGMENTS],
}

impl Default for Records {
    fn default() -> Self {
        Records { segments: std::array::from_fn(|_| OnceLock::new()) }
    }
}

/// The segment of `key` and its place there.
#[inline]
fn locate(key: u32) -> (usize, usize) {
    let v = u64::from(key) + (1 << FIRST_LOG2);
    let msb = 63 - v.leading_zeros();
    ((msb - FIRST_LOG2) as usize, (v - (1 << msb)) as usize)
}

impl Records {
    /// Record `key`, if its segment was made.
    #[inline]
    pub(super) fn get(&self, key: u32) -> Option<&Record> {
        let (s, i) = locate(key);
        self.segments[s].get().map(|seg| &seg[i])
    }

    /// Record `key`, its segment made if need be (under the pool's lock).
    pub(super) fn make(&self, key: u32) -> &Record {
        let (s, i) = locate(key);
        &self.segments[s].get_or_init(|| (0..1usize << (s as u32 + FIRST_LOG2)).map(|_| Record::default()).collect())[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_distinct_places_across_segments() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(3071), (1, 2047));
        assert_eq!(locate(3072), (2, 0));
        assert_eq!(locate(u32::MAX).0, SEGMENTS - 1);
        let r = Records::default();
        assert!(r.get(5000).is_none());
        r.make(5000).store(7, LIVE);
        assert_eq!(r.get(5000).unwrap().load(), (7, LIVE));
        assert_eq!(r.get(4999).unwrap().load(), (0, FREE), "same segment, made with it");
        assert!(r.get(0).is_none(), "other segments are made when needed");
        assert!(r.get(5000).unwrap().change(7, LIVE, CACHED));
        assert!(!r.get(5000).unwrap().change(7, LIVE, CACHED), "one winner");
    }
}
