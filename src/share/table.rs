//! The chunk table an owner publishes for its mirrors: one small shared-memory file per shared pool.
//!
//! ```text
//!   header (a shared file's, see `shm`)          entries, one per chunk slot (152 bytes each)
//!   magic "ACLSHMPT", version, state;            chunk id (0: empty), shareable handle (for a fabric
//!   slots, device, chunk size, pool token,       handle, its key), generation it was published in,
//!   export flags, fabric, seq, generation        the fabric handle (128 bytes; zero for a plain one)
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

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::os;
use crate::shm::{self, ShmFile};
use crate::sync::shm::{AtomicU32, AtomicU64, Ordering, fence};
use crate::vmm::{FabricHandle, Shareable};

/// Most chunk slots a table can have (1 TiB of 20 MiB chunks is 52429).
pub(crate) const MAX_SLOTS: u32 = 1 << 20;

/// How long a reader waits for the owner to finish a write it is in the middle of before it gives up:
/// a write takes microseconds, so only an owner that died mid-write (its seqlock word left odd) or a
/// corrupted table keeps a reader waiting this long.
pub(crate) const WRITE_WAIT: Duration = Duration::from_secs(2);

#[repr(C)]
pub(crate) struct Header {
    slots: AtomicU32,
    device: AtomicU32,
    chunk_bytes: AtomicU64,
    token: AtomicU64,
    export_flags: AtomicU64,
    seq: AtomicU32,
    /// 1: the chunks are exported as fabric handles (read them with `fabric_at`).
    fabric: AtomicU32,
    generation: AtomicU64,
}
// SAFETY: repr(C), atomics only.
unsafe impl shm::Shared for Header {}

#[repr(C)]
pub(crate) struct Entry {
    chunk: AtomicU64,
    shareable: AtomicU64,
    published: AtomicU64,
    fabric: [AtomicU64; 16],
}
// SAFETY: repr(C), atomics only.
unsafe impl shm::Shared for Entry {}

const _: () = assert!(size_of::<Header>() == 48 && size_of::<Entry>() == 152);

shm::kind!(
    /// The chunk table, as a kind of shared file.
    pub(crate) ChunkTable: Header, Entry, b"ACLSHMPT", 3, "chunk table"
);

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
    /// Chunks are exported as fabric handles.
    pub fabric: bool,
}

/// A mapped chunk table.
#[derive(Debug)]
pub(crate) struct Table {
    file: ShmFile<ChunkTable>,
    owner: bool,
    geometry: Geometry,
}

impl Table {
    fn header(&self) -> &Header {
        self.file.header()
    }

    /// Create the table at `path` for a pool of `g.slots` chunks.
    pub(crate) fn create(path: &Path, g: Geometry) -> Result<Table> {
        if g.slots == 0 || g.slots > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!("a shared pool has 1 to {MAX_SLOTS} slots, not {}", g.slots)));
        }
        // Byte 0 stays locked while the owner lives: how mirrors and sweepers tell it died.
        let file = ShmFile::create(path, g.slots as usize, |h: &Header| {
            h.slots.store(g.slots, Ordering::Relaxed);
            h.chunk_bytes.store(g.chunk_bytes, Ordering::Relaxed);
            h.token.store(g.token, Ordering::Relaxed);
            h.device.store(g.device as u32, Ordering::Relaxed);
            h.export_flags.store(g.export_flags, Ordering::Relaxed);
            h.fabric.store(u32::from(g.fabric), Ordering::Relaxed);
        })?;
        Ok(Table { file, owner: true, geometry: g })
    }

    /// Open the table at `path`, which must be of pool `token`.
    pub(crate) fn open(path: &Path, token: u64) -> Result<Table> {
        let (file, geometry) = ShmFile::<ChunkTable>::open(path, |h, entries| {
            let g = Geometry {
                slots: h.slots.load(Ordering::Relaxed),
                chunk_bytes: h.chunk_bytes.load(Ordering::Relaxed),
                token: h.token.load(Ordering::Relaxed),
                device: h.device.load(Ordering::Relaxed) as i32,
                export_flags: h.export_flags.load(Ordering::Relaxed),
                fabric: h.fabric.load(Ordering::Relaxed) == 1,
            };
            if g.token != token {
                return Err("it belongs to another pool".into());
            }
            if g.slots as usize != entries || g.slots == 0 || g.slots > MAX_SLOTS {
                return Err("its size does not match its slot count".into());
            }
            if g.chunk_bytes == 0 || !g.chunk_bytes.is_multiple_of(2 << 20) {
                return Err(format!("chunk size {:#x} is not a multiple of 2 MiB", g.chunk_bytes));
            }
            Ok(g)
        })?;
        Ok(Table { file, owner: false, geometry })
    }

    /// What the table describes.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Where the table lives.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// The current generation (one atomic load).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.header().generation.load(Ordering::Acquire)
    }

    /// The seqlock word (to wait for a change with [`wait_change`](Table::wait_change)).
    pub(crate) fn seq(&self) -> u32 {
        self.header().seq.load(Ordering::Acquire)
    }

    /// Whether the owner closed the table.
    pub(crate) fn is_closed(&self) -> bool {
        self.file.is_closed()
    }

    /// Whether the owner process still lives (it holds a lock on the table while it does; the kernel
    /// drops the lock when the process ends, however it ends).
    pub(crate) fn owner_alive(&self) -> bool {
        self.file.creator_alive()
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
    pub(crate) fn publish(&self, changes: &[(usize, Option<(u64, Shareable)>)]) -> u64 {
        debug_assert!(self.owner);
        let h = self.header();
        let entries = self.file.items();
        let generation = h.generation.load(Ordering::Relaxed) + 1;
        h.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        for &(slot, value) in changes {
            let e = &entries[slot];
            let (chunk, shareable) = value.unwrap_or((0, Shareable::Plain(0)));
            if let Shareable::Fabric(f) = shareable {
                for (w, bytes) in e.fabric.iter().zip(f.0.chunks_exact(8)) {
                    w.store(u64::from_le_bytes(bytes.try_into().expect("8 bytes")), Ordering::Relaxed);
                }
            }
            e.shareable.store(shareable.key(), Ordering::Relaxed);
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
        if self.file.close() {
            self.header().seq.fetch_add(2, Ordering::AcqRel);
            os::futex_wake_all(&self.header().seq);
        }
    }

    /// The chunk id published in `slot` now (0: none); one atomic load.
    #[inline]
    pub(crate) fn chunk_at(&self, slot: usize) -> u64 {
        self.file.items()[slot].chunk.load(Ordering::Acquire)
    }

    /// The fabric handle published in `slot` for chunk `chunk`, read consistently (as a snapshot is); None
    /// if the slot holds another chunk now (the caller syncs again). Only for a table of fabric handles.
    pub(crate) fn fabric_at(&self, slot: usize, chunk: u64) -> Result<Option<FabricHandle>> {
        let h = self.header();
        let e = self.file.items().get(slot).ok_or_else(|| Error::Protocol(format!("no chunk slot {slot}")))?;
        let deadline = std::time::Instant::now() + WRITE_WAIT;
        loop {
            let before = h.seq.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let mut f = [0u8; FabricHandle::LEN];
                for (w, bytes) in e.fabric.iter().zip(f.chunks_exact_mut(8)) {
                    bytes.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                let now = e.chunk.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if h.seq.load(Ordering::Relaxed) == before {
                    return Ok((now == chunk).then_some(FabricHandle(f)));
                }
                if std::time::Instant::now() >= deadline {
                    return Err(changing(self.path()));
                }
            } else if std::time::Instant::now() >= deadline || !self.owner_alive() {
                return Err(Error::Protocol(format!(
                    "chunk table {}: its owner is not finishing a write (sequence {before} is odd)",
                    self.path().display()
                )));
            } else {
                os::futex_wait(&h.seq, before, Duration::from_millis(1));
            }
        }
    }

    /// A consistent copy of every entry. A write that does not finish within [`WRITE_WAIT`] (its owner
    /// died halfway, or the table is corrupt) is [`Error::Protocol`], whatever the owner is doing: a reader
    /// never waits without bound on another process.
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        let h = self.header();
        let entries = self.file.items();
        let mut deadline = None;
        let mut spins = 0u32;
        let mut torn = 0u32;
        loop {
            let before = h.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                // The owner is writing: let it finish. One that died (its lock on the table is free) never
                // will: that is known at once; a live one that does not finish within WRITE_WAIT is broken.
                spins += 1;
                if spins > 64 {
                    let alive = self.owner_alive();
                    let until = *deadline.get_or_insert_with(|| std::time::Instant::now() + WRITE_WAIT);
                    if !alive || std::time::Instant::now() >= until {
                        let why = if alive { "is not finishing" } else { "died" };
                        return Err(Error::Protocol(format!(
                            "chunk table {}: its owner {why} in the middle of a write (sequence {before} is odd)",
                            self.path().display()
                        )));
                    }
                    // Sleep until the word moves (the writer wakes waiters when it finishes).
                    os::futex_wait(&h.seq, before, Duration::from_millis(1));
                }
                continue;
            }
            let copy: Vec<SlotEntry> = entries
                .iter()
                .map(|e| SlotEntry {
                    chunk: e.chunk.load(Ordering::Relaxed),
                    shareable: e.shareable.load(Ordering::Relaxed),
                    published: e.published.load(Ordering::Relaxed),
                })
                .collect();
            let generation = h.generation.load(Ordering::Relaxed);
            let closed = self.file.is_closed();
            fence(Ordering::Acquire);
            if h.seq.load(Ordering::Relaxed) == before {
                // A table truncated or written over under us is no table the owner published.
                self.file.check_intact()?;
                if h.token.load(Ordering::Relaxed) != self.geometry.token
                    || h.slots.load(Ordering::Relaxed) != self.geometry.slots
                {
                    return Err(Error::Protocol(format!(
                        "chunk table {}: its header was written over by another process",
                        self.path().display()
                    )));
                }
                return Ok(Snapshot { generation, closed, entries: copy });
            }
            // Written while we copied: again. A table that changes under every copy for WRITE_WAIT (a
            // writer that never pauses, or another process scribbling on the word) is given up on too.
            torn += 1;
            if torn > 64
                && std::time::Instant::now() >= *deadline.get_or_insert_with(|| std::time::Instant::now() + WRITE_WAIT)
            {
                return Err(changing(self.path()));
            }
        }
    }
}

/// A table whose sequence word moved under every read for [`WRITE_WAIT`].
fn changing(path: &Path) -> Error {
    Error::Protocol(format!(
        "chunk table {}: it changed under every read for {WRITE_WAIT:?} (a writer that never pauses, or a \
         corrupt table)",
        path.display()
    ))
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
        Geometry { slots: 8, chunk_bytes: 2 << 20, token: 0xfeed, device: 1, export_flags: 0, fabric: false }
    }

    /// A table at `<dir>/t` of pool 0xfeed, and a reader of it.
    fn writer_and_reader(what: &str) -> (os::TestDir, Table, Table) {
        let dir = os::TestDir::new(what).unwrap();
        let w = Table::create(&dir.0.join("t"), geometry()).unwrap();
        let r = Table::open(&dir.0.join("t"), 0xfeed).unwrap();
        (dir, w, r)
    }

    #[test]
    fn a_reader_sees_what_the_writer_published() {
        let (dir, w, r) = writer_and_reader("table");
        let path = dir.0.join("t");
        assert_eq!(r.geometry(), geometry());
        assert!(Table::open(&path, 0xbeef).is_err(), "another pool's token");
        let g = w.publish(&[(0, Some((1, Shareable::Plain(100)))), (3, Some((2, Shareable::Plain(200))))]);
        assert_eq!(g, 1);
        let s = r.snapshot().unwrap();
        assert_eq!((s.generation, s.closed), (1, false));
        assert_eq!(s.entries[3], SlotEntry { chunk: 2, shareable: 200, published: 1 });
        assert_eq!(s.entries[1], SlotEntry::default());
        w.publish(&[(0, None)]);
        assert_eq!(r.snapshot().unwrap().entries[0].chunk, 0);
        let seq = r.seq();
        drop(w);
        assert!(r.is_closed());
        assert_ne!(r.seq(), seq, "closing wakes followers");
        assert!(!path.exists());
    }

    #[test]
    fn fabric_handles_are_read_for_the_chunk_they_were_published_with() {
        let dir = os::TestDir::new("table-fabric").unwrap();
        let path = dir.0.join("t");
        let w = Table::create(&path, Geometry { fabric: true, ..geometry() }).unwrap();
        let r = Table::open(&path, 0xfeed).unwrap();
        assert!(r.geometry().fabric);
        let mut bytes = [0u8; FabricHandle::LEN];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let f = FabricHandle(bytes);
        w.publish(&[(2, Some((7, Shareable::Fabric(f))))]);
        let s = r.snapshot().unwrap();
        assert_eq!(s.entries[2].shareable, f.key(), "the entry carries the handle's key");
        assert_eq!(r.fabric_at(2, 7).unwrap(), Some(f));
        assert_eq!(r.fabric_at(2, 8).unwrap(), None, "another chunk now: sync again");
        assert!(r.fabric_at(99, 7).is_err());
    }

    #[test]
    fn a_write_left_halfway_is_an_error_not_a_hang() {
        // An owner killed between the two increments of its seqlock word leaves it odd.
        let (_dir, w, r) = writer_and_reader("table-odd");
        w.header().seq.fetch_add(1, Ordering::AcqRel);
        let e = r.snapshot().unwrap_err();
        assert!(matches!(&e, Error::Protocol(m) if m.contains("in the middle of a write")), "{e}");
        // Once the word is even again, readers read.
        w.header().seq.fetch_add(1, Ordering::AcqRel);
        assert!(r.snapshot().is_ok());
        // An owner that died mid-write is recognised at once: its lock on the table is free.
        w.header().seq.fetch_add(1, Ordering::AcqRel);
        drop(w); // its lock goes, as when the process is killed (closing keeps the word odd)
        let e = r.snapshot().unwrap_err();
        assert!(matches!(&e, Error::Protocol(m) if m.contains("died in the middle of a write")), "{e}");
    }

    #[test]
    fn snapshots_are_never_torn() {
        let (_dir, w, r) = writer_and_reader("table");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let reader = {
            let (stop, seen) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let s = r.snapshot().unwrap();
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
            let all: Vec<_> = (0..8).map(|i| (i, Some((v, Shareable::Plain(v * 10))))).collect();
            w.publish(&all);
            v += 1;
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }
}
