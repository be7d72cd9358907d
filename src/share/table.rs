//! The chunk table an owner publishes for its mirrors: one small shared-memory file per shared pool.
//!
//! ```text
//!   header (64 bytes)                     entries, one per chunk slot (24 bytes each)
//!   magic "ACLSHMPT", version, slots,      chunk id (0: empty), shareable handle,
//!   chunk size, pool token, device,        generation it was published in
//!   export flags, state, seq, generation
//! ```
//!
//! One writer (the owner, under its sharing lock) updates entries inside a seqlock: `seq` is odd while it
//! writes and bumped to the next even value after, then every waiter on `seq` (a futex, so in any process)
//! is woken. Readers copy the entries and retry if `seq` was odd or changed meanwhile. Every field is an
//! atomic, so a reader racing the writer reads stale values, never torn ones. `generation` counts changes;
//! a mirror acknowledges the generation it has synced to, and descriptors carry the generation they were
//! made in.
//!
//! The file is private to the user (0600, in a 0700 directory) and removed when the owner stops sharing.

use crate::sync::shm::{AtomicU32, AtomicU64, Ordering, fence};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::os::{self, SharedMap};

const MAGIC: u64 = u64::from_le_bytes(*b"ACLSHMPT");
/// Bumped whenever the layout changes.
pub(crate) const VERSION: u32 = 1;
/// Most chunk slots a table can have (1 TiB of 20 MiB chunks is 52429).
pub(crate) const MAX_SLOTS: u32 = 1 << 20;

/// `Header::state`.
const OPEN: u32 = 1;
const CLOSED: u32 = 2;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    slots: AtomicU32,
    chunk_bytes: AtomicU64,
    token: AtomicU64,
    device: AtomicU32,
    state: AtomicU32,
    export_flags: AtomicU64,
    seq: AtomicU32,
    _pad: AtomicU32,
    generation: AtomicU64,
}

#[repr(C)]
struct Entry {
    chunk: AtomicU64,
    shareable: AtomicU64,
    published: AtomicU64,
}

const _: () = assert!(size_of::<Header>() == 64 && size_of::<Entry>() == 24);

/// What a table says about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SlotEntry {
    /// Chunk id (unique in the pool, never 0); 0 when the slot holds no chunk.
    pub chunk: u64,
    /// The chunk's shareable handle.
    pub shareable: u64,
    /// The generation it was published in.
    pub published: u64,
}

/// A consistent copy of a table.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub generation: u64,
    pub closed: bool,
    pub entries: Vec<SlotEntry>,
}

/// What a table describes, fixed for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub slots: u32,
    pub chunk_bytes: u64,
    pub token: u64,
    pub device: i32,
    pub export_flags: u64,
}

/// A mapped chunk table.
#[derive(Debug)]
pub(crate) struct Table {
    map: SharedMap,
    path: PathBuf,
    owner: bool,
    geometry: Geometry,
}

fn len_for(slots: u32) -> usize {
    size_of::<Header>() + slots as usize * size_of::<Entry>()
}

impl Table {
    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (checked length), every field of which is an atomic.
        unsafe { &*self.map.ptr().cast::<Header>() }
    }

    fn entry(&self, slot: usize) -> &Entry {
        assert!(slot < self.geometry.slots as usize);
        // SAFETY: slot is in bounds of the mapping (checked length), and Entry is all atomics.
        unsafe { &*self.map.ptr().add(size_of::<Header>() + slot * size_of::<Entry>()).cast::<Entry>() }
    }

    /// Create the table at `path` for a pool of `g.slots` chunks.
    pub(crate) fn create(path: &Path, g: Geometry) -> Result<Table> {
        if g.slots == 0 || g.slots > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!("a shared pool has 1 to {MAX_SLOTS} slots, not {}", g.slots)));
        }
        // Byte 0 stays locked while the owner lives: how mirrors and sweepers tell it died.
        let map = SharedMap::create_locked(path, len_for(g.slots))
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let t = Table { map, path: path.to_path_buf(), owner: true, geometry: g };
        let h = t.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(g.slots, Ordering::Relaxed);
        h.chunk_bytes.store(g.chunk_bytes, Ordering::Relaxed);
        h.token.store(g.token, Ordering::Relaxed);
        h.device.store(g.device as u32, Ordering::Relaxed);
        h.export_flags.store(g.export_flags, Ordering::Relaxed);
        h.state.store(OPEN, Ordering::Relaxed);
        // Written last: a reader that sees the magic sees the rest.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(t)
    }

    /// Open the table at `path`, which must be of pool `token`.
    pub(crate) fn open(path: &Path, token: u64) -> Result<Table> {
        let bad = |why: String| Error::Protocol(format!("chunk table {}: {why}", path.display()));
        let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len() as usize;
        if len < size_of::<Header>() || !(len - size_of::<Header>()).is_multiple_of(size_of::<Entry>()) {
            return Err(bad(format!("{len} bytes is not a table")));
        }
        let slots =
            u32::try_from((len - size_of::<Header>()) / size_of::<Entry>()).map_err(|_| bad("too large".into()))?;
        let map = SharedMap::open(path, len).map_err(|e| bad(e.to_string()))?;
        let mut t = Table {
            map,
            path: path.to_path_buf(),
            owner: false,
            geometry: Geometry { slots, chunk_bytes: 0, token: 0, device: 0, export_flags: 0 },
        };
        let h = t.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("not an aclshm chunk table".into()));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(bad(format!("layout version {version}; this aclshm reads version {VERSION}")));
        }
        if h.slots.load(Ordering::Relaxed) != slots || slots == 0 || slots > MAX_SLOTS {
            return Err(bad("its size does not match its slot count".into()));
        }
        let g = Geometry {
            slots,
            chunk_bytes: h.chunk_bytes.load(Ordering::Relaxed),
            token: h.token.load(Ordering::Relaxed),
            device: h.device.load(Ordering::Relaxed) as i32,
            export_flags: h.export_flags.load(Ordering::Relaxed),
        };
        if g.token != token {
            return Err(bad("it belongs to another pool".into()));
        }
        if g.chunk_bytes == 0 || !g.chunk_bytes.is_multiple_of(2 << 20) {
            return Err(bad(format!("chunk size {:#x} is not a multiple of 2 MiB", g.chunk_bytes)));
        }
        t.geometry = g;
        Ok(t)
    }

    /// What the table describes.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Where the table lives.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current generation (one atomic load).
    pub(crate) fn generation(&self) -> u64 {
        self.header().generation.load(Ordering::Acquire)
    }

    /// The seqlock word (to wait for a change with [`wait_change`](Table::wait_change)).
    pub(crate) fn seq(&self) -> u32 {
        self.header().seq.load(Ordering::Acquire)
    }

    /// Whether the owner closed the table.
    pub(crate) fn is_closed(&self) -> bool {
        self.header().state.load(Ordering::Acquire) == CLOSED
    }

    /// Whether the owner process still lives (it holds a lock on the table while it does; the kernel
    /// drops the lock when the process ends, however it ends).
    pub(crate) fn owner_alive(&self) -> bool {
        self.map.creator_alive()
    }

    /// Sleep until the table changes from `seq` (or `timeout` passes).
    pub(crate) fn wait_change(&self, seq: u32, timeout: Duration) {
        os::futex_wait(&self.header().seq, seq, timeout);
    }

    /// Wake everyone waiting for a change, without changing anything (to stop a follower).
    pub(crate) fn wake(&self) {
        os::futex_wake_all(&self.header().seq);
    }

    /// Set slots (`None`: empty) and bump the generation, in one seqlock write; wakes every waiter.
    /// Returns the new generation. Only the owner writes, one writer at a time (the caller's lock).
    pub(crate) fn publish(&self, changes: &[(usize, Option<(u64, u64)>)]) -> u64 {
        debug_assert!(self.owner);
        let h = self.header();
        let generation = h.generation.load(Ordering::Relaxed) + 1;
        h.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        for &(slot, value) in changes {
            let e = self.entry(slot);
            let (chunk, shareable) = value.unwrap_or((0, 0));
            e.shareable.store(shareable, Ordering::Relaxed);
            e.published.store(generation, Ordering::Relaxed);
            e.chunk.store(chunk, Ordering::Relaxed);
        }
        h.generation.store(generation, Ordering::Release);
        h.seq.fetch_add(1, Ordering::AcqRel);
        os::futex_wake_all(&h.seq);
        generation
    }

    /// Mark the table closed (the owner stopped sharing), wake every waiter, and remove its file (mirrors
    /// keep their mappings of it). Idempotent.
    pub(crate) fn close(&self) {
        debug_assert!(self.owner);
        let h = self.header();
        if h.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            h.seq.fetch_add(2, Ordering::AcqRel);
            os::futex_wake_all(&h.seq);
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The chunk id published in `slot` now (0: none); one atomic load.
    pub(crate) fn chunk_at(&self, slot: usize) -> u64 {
        self.entry(slot).chunk.load(Ordering::Acquire)
    }

    /// A consistent copy of every entry.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let h = self.header();
        let mut spins = 0u32;
        loop {
            let before = h.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                // The owner is writing: let it finish.
                spins += 1;
                if spins > 64 {
                    crate::sync::thread::yield_now();
                }
                continue;
            }
            let entries: Vec<SlotEntry> = (0..self.geometry.slots as usize)
                .map(|i| {
                    let e = self.entry(i);
                    SlotEntry {
                        chunk: e.chunk.load(Ordering::Relaxed),
                        shareable: e.shareable.load(Ordering::Relaxed),
                        published: e.published.load(Ordering::Relaxed),
                    }
                })
                .collect();
            let generation = h.generation.load(Ordering::Relaxed);
            let closed = h.state.load(Ordering::Relaxed) == CLOSED;
            fence(Ordering::Acquire);
            if h.seq.load(Ordering::Relaxed) == before {
                return Snapshot { generation, closed, entries };
            }
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.owner {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry { slots: 8, chunk_bytes: 2 << 20, token: 0xfeed, device: 1, export_flags: 0 }
    }

    #[test]
    fn a_reader_sees_what_the_writer_published() {
        let dir = os::TestDir::new("table");
        let path = dir.0.join("t");
        let w = Table::create(&path, geometry()).unwrap();
        let r = Table::open(&path, 0xfeed).unwrap();
        assert_eq!(r.geometry(), geometry());
        assert!(Table::open(&path, 0xbeef).is_err(), "another pool's token");
        let g = w.publish(&[(0, Some((1, 100))), (3, Some((2, 200)))]);
        assert_eq!(g, 1);
        let s = r.snapshot();
        assert_eq!((s.generation, s.closed), (1, false));
        assert_eq!(s.entries[3], SlotEntry { chunk: 2, shareable: 200, published: 1 });
        assert_eq!(s.entries[1], SlotEntry::default());
        w.publish(&[(0, None)]);
        assert_eq!(r.snapshot().entries[0].chunk, 0);
        let seq = r.seq();
        drop(w);
        assert!(r.is_closed());
        assert_ne!(r.seq(), seq, "closing wakes followers");
        assert!(!path.exists());
    }

    #[test]
    fn snapshots_are_never_torn() {
        let dir = os::TestDir::new("table");
        let path = dir.0.join("t");
        let w = Table::create(&path, geometry()).unwrap();
        let r = Table::open(&path, 0xfeed).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let reader = {
            let (stop, seen) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let s = r.snapshot();
                    // The writer always publishes all slots with one value: a torn copy would mix two.
                    let c = s.entries[0].chunk;
                    assert!(s.entries.iter().all(|e| e.chunk == c && e.shareable == c * 10), "torn: {s:?}");
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Publish until the reader has taken many snapshots while the writer was busy.
        let mut v = 1u64;
        while v < 2000 || seen.load(Ordering::Relaxed) < 1000 {
            let all: Vec<_> = (0..8).map(|i| (i, Some((v, v * 10)))).collect();
            w.publish(&all);
            v += 1;
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }
}
