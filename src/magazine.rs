//! Per-thread magazines: a small cache, one per thread and bin, of things freed to a shared allocator (a
//! KV pool's block ids, one bin; a pool's heap allocations, a bin per size), so that a thread freeing and
//! allocating again touches neither the allocator's lock nor its shared cache lines, as the per-thread
//! caches of tcmalloc, jemalloc and mimalloc do.
//!
//! ```text
//!   thread A's magazine, bin 64 KiB   [ 17 | 90 | 4  | -- | -- ]   len 3 (A's own count, in A's thread-local)
//!   thread B's magazine, bin 64 KiB   [ 12 | -- | -- | -- | -- ]
//!                            ^ pushed by the thread with a plain store; taken by it, or by anyone
//!                              draining, with one atomic swap to EMPTY: exactly one of them gets it
//! ```
//!
//! - Only the owning thread writes an entry into a slot, always above its own count, where every slot is
//!   empty; anyone may take an entry (swap it for [`EMPTY`]). So a thread's push is one plain store and
//!   its pop one swap, and [`Magazines::drain`] (a trim, an out-of-memory retry, a sleep, a close) can take
//!   back what every thread holds, also threads that are idle or gone, without their help.
//! - A magazine holds at most the entries its owner says for its bin, and a thread has at most `max_bins`
//!   bins of one owner: a free that finds no room goes to the allocator, as does every free while the
//!   magazines are closed ([`Magazines::set_open`]; an allocation then finds nothing).
//! - The magazines of a thread live as long as their owner ([`Magazines`]) keeps them; a thread's exit
//!   leaves its entries to the next drain.
//! - Under `--cfg loom` magazines are always closed: the models check the allocators' own paths, which
//!   a closed magazine leaves unchanged.

use std::cell::RefCell;

use crate::sync::StaticMutex;
use crate::sync::stat::{AtomicU64, Ordering};

/// A slot with nothing in it (no entry is `u64::MAX`).
pub(crate) const EMPTY: u64 = u64::MAX;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const SHUT: u64 = 2;

/// Ids of [`Magazines`], never reused in a process, so a thread's stale record of one never matches another.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One thread's magazine of one bin: its slots, shared with whoever drains.
struct Magazine {
    bin: u64,
    slots: Box<[AtomicU64]>,
}

/// A thread's record of one owner's magazine: which owner and bin, the magazine, how many slots it filled.
struct Local {
    owner: u64,
    bin: u64,
    mag: std::sync::Arc<Magazine>,
    /// Slots below this may hold entries; every slot at or above it is empty.
    len: usize,
}

thread_local! {
    /// This thread's magazines, one per owner it freed into (usually one).
    static MINE: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Open, closed, or shut for good: whether something may be handed out now, read without a lock.
#[derive(Debug)]
pub(crate) struct Gate(AtomicU64);

impl Gate {
    pub(crate) fn new(open: bool) -> Gate {
        Gate(AtomicU64::new(if open { OPEN } else { CLOSED }))
    }

    /// Open or close it, unless it was shut.
    pub(crate) fn set_open(&self, open: bool) {
        let to = if open { OPEN } else { CLOSED };
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| (now != SHUT).then_some(to));
    }

    /// Close it for good.
    pub(crate) fn shut(&self) {
        self.0.store(SHUT, Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed) == OPEN
    }
}

/// What a [`push`](Magazines::push) did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Kept.
    Kept,
    /// Not kept, the claim not tried: closed, full, or the thread has no magazine for the bin (nor room
    /// for one).
    Refused,
    /// Not kept: the claim said no.
    Unclaimed,
}

/// The magazines of one owner (a KV pool, a pool): every thread's, so that they can be drained.
pub(crate) struct Magazines {
    id: u64,
    /// Entries per magazine of a bin (0: that bin is not kept).
    cap: fn(u64) -> usize,
    max_bins: usize,
    /// Open while entries may be pushed and popped; shut for good once sealed.
    open: Gate,
    all: StaticMutex<Vec<std::sync::Arc<Magazine>>>,
}

impl std::fmt::Debug for Magazines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Magazines").field("id", &self.id).field("max_bins", &self.max_bins).finish()
    }
}

impl Magazines {
    /// Magazines of `cap(bin)` entries, at most `max_bins` bins per thread (0: none, every free goes to
    /// the allocator), open.
    pub(crate) fn new(max_bins: usize, cap: fn(u64) -> usize) -> Magazines {
        let max_bins = if cfg!(loom) { 0 } else { max_bins };
        Magazines {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cap,
            max_bins,
            open: if max_bins > 0 { Gate::new(true) } else { Gate(AtomicU64::new(SHUT)) },
            all: StaticMutex::new(Vec::new()),
        }
    }

    /// Open or close the magazines (closed: pushes are refused, pops find nothing). Closing does not
    /// drain: [`drain`](Magazines::drain) after it takes what they hold, and a push that raced the close
    /// is left for the next drain.
    pub(crate) fn set_open(&self, open: bool) {
        self.open.set_open(open);
    }

    /// Close the magazines for good: [`set_open`](Magazines::set_open) no longer opens them (their owner
    /// is closing).
    pub(crate) fn seal(&self) {
        self.open.shut();
    }

    /// Whether entries may be pushed and popped now.
    #[inline]
    fn is_open(&self) -> bool {
        self.open.is_open()
    }

    /// Run `f` on this thread's magazine of this owner's `bin`, made if `make` and there is none yet (and
    /// the thread has fewer than `max_bins` of this owner, and the bin is kept).
    #[inline]
    fn with_mine<R>(&self, bin: u64, make: bool, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
        MINE.try_with(|m| {
            let mut m = m.try_borrow_mut().ok()?;
            let mut mine = 0;
            for l in m.iter_mut() {
                if l.owner == self.id {
                    if l.bin == bin {
                        return Some(f(l));
                    }
                    mine += 1;
                }
            }
            if !make || mine >= self.max_bins {
                return None;
            }
            self.make_mine(&mut m, bin).map(f)
        })
        .ok()
        .flatten()
    }

    /// This thread's first push into this owner's `bin`: a magazine, registered for draining. Records of
    /// owners that are gone (their registry held the only other reference) are dropped on the way.
    #[cold]
    fn make_mine<'a>(&self, m: &'a mut Vec<Local>, bin: u64) -> Option<&'a mut Local> {
        let cap = (self.cap)(bin);
        if cap == 0 {
            return None;
        }
        m.retain(|l| std::sync::Arc::strong_count(&l.mag) > 1);
        let mag = std::sync::Arc::new(Magazine { bin, slots: (0..cap).map(|_| AtomicU64::new(EMPTY)).collect() });
        self.all.lock().push(mag.clone());
        m.push(Local { owner: self.id, bin, mag, len: 0 });
        m.last_mut()
    }

    /// An entry of `bin` this thread pushed and nobody drained since, if any.
    #[inline]
    pub(crate) fn pop(&self, bin: u64) -> Option<u64> {
        if !self.is_open() {
            return None;
        }
        self.with_mine(bin, false, |l| {
            while l.len > 0 {
                l.len -= 1;
                let e = l.mag.slots[l.len].swap(EMPTY, Ordering::Acquire);
                if e != EMPTY {
                    return Some(e);
                }
            }
            None
        })
        .flatten()
    }

    /// Up to `n` entries of `bin` into `out` (see [`pop`](Magazines::pop)).
    pub(crate) fn pop_many(&self, bin: u64, n: usize, out: &mut Vec<u64>) {
        if n == 0 || !self.is_open() {
            return;
        }
        self.with_mine(bin, false, |l| {
            let want = out.len().saturating_add(n);
            while l.len > 0 && out.len() < want {
                l.len -= 1;
                let e = l.mag.slots[l.len].swap(EMPTY, Ordering::Acquire);
                if e != EMPTY {
                    out.push(e);
                }
            }
        });
    }

    /// Keep `e` (not [`EMPTY`]) in this thread's magazine of `bin`, once `claim` says it may (a free's
    /// check that what it frees is live, made only when there is room for it). A full magazine refuses:
    /// a burst of frees beyond it goes to the allocator as if there were no magazine.
    #[inline]
    pub(crate) fn push(&self, bin: u64, e: u64, claim: impl FnOnce() -> bool) -> Pushed {
        debug_assert_ne!(e, EMPTY);
        if !self.is_open() {
            return Pushed::Refused;
        }
        self.with_mine(bin, true, |l| {
            if l.len == l.mag.slots.len() {
                return Pushed::Refused;
            }
            if !claim() {
                return Pushed::Unclaimed;
            }
            l.mag.slots[l.len].store(e, Ordering::Release);
            l.len += 1;
            Pushed::Kept
        })
        .unwrap_or(Pushed::Refused)
    }

    /// Keep as many of `es` in `bin` as fit; returns how many (a prefix of `es`).
    pub(crate) fn push_many(&self, bin: u64, es: &[u64]) -> usize {
        if es.is_empty() || !self.is_open() {
            return 0;
        }
        self.with_mine(bin, true, |l| {
            let room = l.mag.slots.len() - l.len;
            let n = room.min(es.len());
            for &e in &es[..n] {
                debug_assert_ne!(e, EMPTY);
                l.mag.slots[l.len].store(e, Ordering::Release);
                l.len += 1;
            }
            n
        })
        .unwrap_or(0)
    }

    /// Take every entry every thread holds, with its bin (cold: walks every slot of every magazine).
    /// Magazines of threads that are gone, and now empty, are forgotten.
    pub(crate) fn drain(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut all = self.all.lock();
        for m in all.iter() {
            for s in m.slots.iter() {
                if s.load(Ordering::Relaxed) != EMPTY {
                    let e = s.swap(EMPTY, Ordering::Acquire);
                    if e != EMPTY {
                        out.push((m.bin, e));
                    }
                }
            }
        }
        // A magazine only this registry holds belongs to a thread that exited; it was just emptied.
        all.retain(|m| std::sync::Arc::strong_count(m) > 1);
        out
    }

    /// How many entries all threads hold now, and the sum of their bins (a pool's: their bytes). Cold; a
    /// count of a moving target.
    pub(crate) fn held(&self) -> (u64, u64) {
        let all = self.all.lock();
        all.iter().fold((0, 0), |(n, sum), m| {
            let k = m.slots.iter().filter(|s| s.load(Ordering::Relaxed) != EMPTY).count() as u64;
            (n + k, sum + k * m.bin)
        })
    }
}

impl Drop for Magazines {
    fn drop(&mut self) {
        // Threads' records of these magazines see the registry's reference gone and drop theirs.
        self.all.get_mut().clear();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_back_what_it_pushed_last_first() {
        let m = Magazines::new(1, |_| 4);
        assert_eq!(m.pop(0), None);
        assert!(m.push(0, 1, || true) == Pushed::Kept && m.push(0, 2, || true) == Pushed::Kept);
        assert_eq!(m.held(), (2, 0));
        assert_eq!(m.pop(0), Some(2));
        assert_eq!(m.pop(0), Some(1));
        assert_eq!(m.pop(0), None);
    }

    #[test]
    fn a_full_or_closed_magazine_refuses() {
        let m = Magazines::new(1, |_| 2);
        assert!(m.push(0, 1, || true) == Pushed::Kept && m.push(0, 2, || true) == Pushed::Kept);
        assert_eq!(m.push(0, 3, || panic!("no claim when full")), Pushed::Refused, "full");
        assert_eq!(m.push_many(0, &[4, 5]), 0);
        assert_eq!(m.pop(0), Some(2));
        assert_eq!(m.push(0, 4, || false), Pushed::Unclaimed);
        assert_eq!(m.push_many(0, &[6, 7, 8]), 1);
        m.set_open(false);
        assert_eq!(m.pop(0), None, "closed: nothing to pop");
        assert_eq!(m.push(0, 9, || true), Pushed::Refused);
        assert_eq!(m.drain().len(), 2, "a closed magazine still drains");
        m.set_open(true);
        assert_eq!(m.pop(0), None, "drained");
        m.seal();
        m.set_open(true);
        assert_eq!(m.push(0, 1, || true), Pushed::Refused, "sealed for good");
        let none = Magazines::new(0, |_| 2);
        assert_eq!(none.push(0, 1, || true), Pushed::Refused, "no magazines at all");
    }

    #[test]
    fn owners_and_bins_have_separate_magazines_in_one_thread() {
        let (a, b) = (Magazines::new(1, |_| 2), Magazines::new(2, |bin| if bin > 100 { 0 } else { 2 }));
        assert!(a.push(0, 1, || true) == Pushed::Kept && b.push(0, 2, || true) == Pushed::Kept);
        assert_eq!((a.pop(0), b.pop(0)), (Some(1), Some(2)));
        assert_eq!(a.push(5, 1, || true), Pushed::Refused, "one bin per thread for a");
        assert!(b.push(5, 3, || true) == Pushed::Kept && b.push(5, 4, || true) == Pushed::Kept);
        assert_eq!(b.push(6, 5, || true), Pushed::Refused, "two bins per thread for b");
        assert_eq!(b.push(101, 5, || true), Pushed::Refused, "b keeps no bin over 100");
        assert_eq!(b.held(), (2, 10));
        assert_eq!((b.pop(0), b.pop(5)), (None, Some(4)));
        let mut drained = b.drain();
        drained.sort();
        assert_eq!(drained, [(5, 3)]);
    }

    #[test]
    fn a_drain_takes_from_other_threads_and_from_threads_that_exited() {
        let m = std::sync::Arc::new(Magazines::new(1, |_| 8));
        let m2 = m.clone();
        std::thread::spawn(move || assert_eq!(m2.push_many(0, &[1, 2, 3]), 3)).join().unwrap();
        assert!(m.push(0, 4, || true) == Pushed::Kept);
        let mut got: Vec<u64> = m.drain().into_iter().map(|(_, e)| e).collect();
        got.sort();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(m.all.lock().len(), 1, "the exited thread's magazine is forgotten, this one's kept");
        assert_eq!(m.pop(0), None);
        assert!(m.push(0, 5, || true) == Pushed::Kept);
        assert_eq!(m.pop(0), Some(5), "this thread's count is right after a drain");
    }

    /// A thread popping while another drains: every entry comes out exactly once.
    #[test]
    fn pops_racing_a_drain_take_each_entry_once() {
        for round in 0..200u64 {
            let m = std::sync::Arc::new(Magazines::new(1, |_| 64));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let (m2, b2) = (m.clone(), barrier.clone());
            let owner = std::thread::spawn(move || {
                let base = round * 1000;
                let pushed: Vec<u64> = (base..base + 64).collect();
                assert_eq!(m2.push_many(0, &pushed), 64);
                b2.wait();
                let mut popped = Vec::new();
                while let Some(e) = m2.pop(0) {
                    popped.push(e);
                }
                popped
            });
            barrier.wait();
            let drained = m.drain().into_iter().map(|(_, e)| e);
            let mut all = owner.join().unwrap();
            all.extend(drained);
            all.sort();
            assert_eq!(all, (round * 1000..round * 1000 + 64).collect::<Vec<_>>(), "round {round}");
        }
    }
}
