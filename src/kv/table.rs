//! The KV pool's shared files: the block table (the owner writes, every worker reads) and one pin file per
//! worker (the worker writes, the owner reads).
//!
//! ```text
//!   kv-<token>.blocks        a shared file (see `shm`), magic "ACLSHMKB"; header: pool token, block bytes,
//!                            chunk bytes, blocks per chunk, blocks, epoch, unpins, waiters
//!                            then one u32 generation per block: even = free, odd = allocated
//!   kv-<token>-<rand>.pins   a shared file, magic "ACLSHMKP"; header: pool token, blocks
//!                            then one u32 pin count per block, this worker's pins
//! ```
//!
//! Each file's creator holds a lock on its byte 0 for as long as it lives, so the other side learns from
//! the kernel that it died. Workers bump `epoch` when they add or remove a pin file (the owner rescans
//! then) and `unpins` (a futex word) when a pin count drops to zero (the owner may reuse a block then);
//! they wake the owner only while `waiters` says it sleeps on `unpins`, so an unpin is no system call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Result;
use crate::os;
use crate::shm::{self, Names, ShmFile};
use crate::sync::shm::{AtomicU32, AtomicU64, Ordering};

/// The KV files of a share directory: block tables (locked by their scheduler) and pin files (locked by
/// their worker).
pub(crate) const NAMES: &[Names] = &[
    Names { prefix: "kv-", suffix: ".blocks", companion: None },
    Names { prefix: "kv-", suffix: ".pins", companion: None },
];

/// What a KV pool's blocks look like, fixed for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub token: u64,
    pub block_bytes: u64,
    pub chunk_bytes: u64,
    pub per_chunk: u32,
    pub blocks: u32,
}

impl Geometry {
    /// The pool offset of block `id`.
    #[inline]
    pub(crate) fn offset(&self, id: u32) -> u64 {
        u64::from(id / self.per_chunk) * self.chunk_bytes + u64::from(id % self.per_chunk) * self.block_bytes
    }
}

#[repr(C)]
pub(crate) struct BlockHeader {
    token: AtomicU64,
    block_bytes: AtomicU64,
    chunk_bytes: AtomicU64,
    per_chunk: AtomicU32,
    blocks: AtomicU32,
    epoch: AtomicU32,
    unpins: AtomicU32,
    /// Owner threads asleep on `unpins` (or about to be).
    waiters: AtomicU32,
    _pad: AtomicU32,
}
// SAFETY: repr(C), atomics only.
unsafe impl shm::Shared for BlockHeader {}

#[repr(C)]
pub(crate) struct PinHeader {
    token: AtomicU64,
    blocks: AtomicU32,
    _pad: AtomicU32,
}
// SAFETY: repr(C), atomics only.
unsafe impl shm::Shared for PinHeader {}

shm::kind!(
    /// A KV pool's block table, as a kind of shared file.
    pub(crate) Blocks: BlockHeader, AtomicU32, b"ACLSHMKB", 3, "block table"
);
shm::kind!(
    /// A worker's pin file, as a kind of shared file.
    pub(crate) Pins: PinHeader, AtomicU32, b"ACLSHMKP", 2, "pin file"
);

/// The path of pool `token`'s block table in `dir`.
pub(crate) fn table_path(dir: &Path, token: u64) -> PathBuf {
    dir.join(format!("kv-{token:016x}.blocks"))
}

fn pins_prefix(token: u64) -> String {
    format!("kv-{token:016x}-")
}

/// A mapped block table.
#[derive(Debug)]
pub(crate) struct BlockTable {
    file: ShmFile<Blocks>,
    owner: bool,
    geometry: Geometry,
}

impl BlockTable {
    fn header(&self) -> &BlockHeader {
        self.file.header()
    }

    /// Create the table of a pool (every block free, generation 0).
    pub(crate) fn create(dir: &Path, g: Geometry) -> Result<BlockTable> {
        let file = ShmFile::create(&table_path(dir, g.token), g.blocks as usize, |h: &BlockHeader| {
            h.token.store(g.token, Ordering::Relaxed);
            h.block_bytes.store(g.block_bytes, Ordering::Relaxed);
            h.chunk_bytes.store(g.chunk_bytes, Ordering::Relaxed);
            h.per_chunk.store(g.per_chunk, Ordering::Relaxed);
            h.blocks.store(g.blocks, Ordering::Relaxed);
        })?;
        Ok(BlockTable { file, owner: true, geometry: g })
    }

    /// Open pool `token`'s table in `dir`, checking it describes a pool of `chunk_bytes` chunks.
    pub(crate) fn open(dir: &Path, token: u64, chunk_bytes: u64) -> Result<BlockTable> {
        let (file, geometry) = ShmFile::<Blocks>::open(&table_path(dir, token), |h, blocks| {
            let g = Geometry {
                token: h.token.load(Ordering::Relaxed),
                block_bytes: h.block_bytes.load(Ordering::Relaxed),
                chunk_bytes: h.chunk_bytes.load(Ordering::Relaxed),
                per_chunk: h.per_chunk.load(Ordering::Relaxed),
                blocks: h.blocks.load(Ordering::Relaxed),
            };
            if g.token != token || g.chunk_bytes != chunk_bytes || g.blocks as usize != blocks {
                return Err("it belongs to another pool, or its size does not match its header".into());
            }
            if g.block_bytes == 0 || g.per_chunk == 0 || u64::from(g.per_chunk) * g.block_bytes > g.chunk_bytes {
                return Err(format!("{} blocks of {:#x} bytes do not fit a chunk", g.per_chunk, g.block_bytes));
            }
            if !g.blocks.is_multiple_of(g.per_chunk) {
                return Err("the block count is not a whole number of chunks".into());
            }
            Ok(g)
        })?;
        Ok(BlockTable { file, owner: false, geometry })
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Block `id`'s generation now (odd: allocated). `id` must be below the block count (callers check
    /// references first).
    #[inline]
    pub(crate) fn generation(&self, id: u32) -> u32 {
        self.file.items()[id as usize].load(Ordering::SeqCst)
    }

    /// Set block `id`'s generation (the owner, for a block the pool just handed it: no other thread
    /// can be freeing it, since its generation is even and frees expect an odd one). A release store: it
    /// publishes what the owner noted of the block to whoever frees it; no pin needs more (a pin checks
    /// for equality with the generation it was given, which a block being allocated never has).
    pub(crate) fn set_generation(&self, id: u32, generation: u32) {
        debug_assert!(self.owner);
        self.file.items()[id as usize].store(generation, Ordering::Release);
    }

    /// Free block `id` in the table if its generation is `generation` and odd (allocated): it goes one up
    /// (even) at once, so of two threads freeing the same block, one wins and the other is told. False
    /// when it was not (a stale reference, or a free that lost the race). Owner only.
    ///
    /// Sequentially consistent, as the owner's reads of pin counts and of the epoch after it are: with the
    /// workers' pin (a sequentially consistent increment, a fence, a read of the generation), either the
    /// owner sees the pin or the worker sees the new generation (all of them are in the one total order of
    /// sequentially consistent operations, so no fence is needed on this side).
    #[inline]
    pub(crate) fn retire(&self, id: u32, generation: u32) -> bool {
        debug_assert!(self.owner);
        generation % 2 == 1
            && self.file.items()[id as usize]
                .compare_exchange(generation, generation.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// Undo [`retire`](BlockTable::retire) of a block that is not to be freed after all (a batch that
    /// failed halfway). Owner only.
    pub(crate) fn unretire(&self, id: u32, generation: u32) {
        debug_assert!(self.owner);
        let _ = self.file.items()[id as usize].compare_exchange(
            generation.wrapping_add(1),
            generation,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.header().epoch.load(Ordering::SeqCst)
    }

    /// A worker added or removed its pin file.
    pub(crate) fn bump_epoch(&self) {
        self.header().epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn unpins(&self) -> u32 {
        self.header().unpins.load(Ordering::SeqCst)
    }

    /// A pin count dropped to zero: wake an owner waiting to reuse a block, if one is.
    ///
    /// The owner counts itself in `waiters` before it sleeps on `unpins`, and the kernel compares `unpins`
    /// with what the owner saw only after that (the futex call orders it with a full barrier); here the
    /// increment comes before the look at `waiters`, both sequentially consistent. So either the owner's
    /// wait sees the new count and does not sleep, or this sees the owner and wakes it: no wake is lost,
    /// and an unpin that nobody waits for makes no system call.
    pub(crate) fn bump_unpins(&self) {
        let h = self.header();
        h.unpins.fetch_add(1, Ordering::SeqCst);
        if h.waiters.load(Ordering::SeqCst) > 0 {
            os::futex_wake_all(&h.unpins);
        }
    }

    /// Sleep until `unpins` moves from `seen` (or `timeout` passes). Owner only.
    pub(crate) fn wait_unpins(&self, seen: u32, timeout: Duration) {
        let h = self.header();
        h.waiters.fetch_add(1, Ordering::SeqCst);
        os::futex_wait(&h.unpins, seen, timeout);
        h.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Owner threads asleep on `unpins` now.
    #[cfg(test)]
    fn waiters(&self) -> u32 {
        self.header().waiters.load(Ordering::SeqCst)
    }

    /// An error if the table was truncated under this process (see `shm`).
    pub(crate) fn check_intact(&self) -> Result<()> {
        self.file.check_intact()
    }

    /// Whether the owner still lives (it holds a lock on the table while it does).
    pub(crate) fn owner_alive(&self) -> bool {
        self.file.creator_alive()
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Mark it closed and remove the file (workers keep their mappings of it). Idempotent; owner only.
    pub(crate) fn close(&self) {
        if self.owner {
            self.file.close();
        }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.close();
    }
}

/// A worker's pin counts.
#[derive(Debug)]
pub(crate) struct PinFile {
    file: ShmFile<Pins>,
    /// The worker's own (removes the file when dropped).
    mine: bool,
}

impl PinFile {
    /// A worker's new pin file for pool `token` of `blocks` blocks, in `dir`.
    pub(crate) fn create(dir: &Path, token: u64, blocks: u32) -> Result<PinFile> {
        let path = dir.join(format!("{}{:016x}.pins", pins_prefix(token), os::random_u64()));
        let file = ShmFile::create(&path, blocks as usize, |h: &PinHeader| {
            h.blocks.store(blocks, Ordering::Relaxed);
            h.token.store(token, Ordering::Relaxed);
        })?;
        Ok(PinFile { file, mine: true })
    }

    /// Open a worker's pin file (the owner's view); None if it is not one of pool `token`'s.
    pub(crate) fn open(path: &Path, token: u64, blocks: u32) -> Option<PinFile> {
        let (file, ()) = ShmFile::<Pins>::open(path, |h, n| {
            let ok = h.token.load(Ordering::Relaxed) == token
                && h.blocks.load(Ordering::Relaxed) == blocks
                && n == blocks as usize;
            if ok { Ok(()) } else { Err("not a pin file of this pool".into()) }
        })
        .ok()?;
        Some(PinFile { file, mine: false })
    }

    /// Remove the pin files of pool `token` in `dir` whose worker is gone, whole or not: one killed while
    /// it made its file leaves one that [`open`](PinFile::open) does not take (not yet locked, sized or
    /// stamped), which only the lock tells apart. For the owner's close, when no worker may join.
    pub(crate) fn sweep_abandoned(dir: &Path, token: u64) {
        let prefix = pins_prefix(token);
        os::sweep_orphans(dir, |n| n.starts_with(&prefix) && n.ends_with(".pins"), Duration::ZERO, |_| {});
    }

    /// The pin files of pool `token` in `dir`.
    pub(crate) fn list(dir: &Path, token: u64) -> Vec<PathBuf> {
        let prefix = pins_prefix(token);
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".pins")))
            .map(|e| e.path())
            .collect()
    }

    /// Block `id`'s pin count. `id` must be below the block count (callers check references first).
    #[inline]
    pub(crate) fn count(&self, id: u32) -> &AtomicU32 {
        &self.file.items()[id as usize]
    }

    /// Whether the worker that made the file still lives (and its file is whole: a pin file truncated
    /// under the owner says nothing any more, and counts as its worker gone).
    pub(crate) fn holder_alive(&self) -> bool {
        self.file.creator_alive() && self.file.check_intact().is_ok()
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Remove the file (the owner, of a worker that died).
    pub(crate) fn remove(&self) {
        self.file.remove();
    }
}

impl Drop for PinFile {
    fn drop(&mut self) {
        if self.mine {
            self.file.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry { token: 0xabc, block_bytes: 512 << 10, chunk_bytes: 2 << 20, per_chunk: 4, blocks: 16 }
    }

    #[test]
    fn workers_read_what_the_owner_writes_and_the_owner_reads_their_pins() {
        let dir = os::TestDir::new("kv").unwrap();
        let g = geometry();
        assert_eq!(g.offset(5), (2 << 20) + (512 << 10));
        let owner = BlockTable::create(&dir.0, g).unwrap();
        let worker = BlockTable::open(&dir.0, g.token, g.chunk_bytes).unwrap();
        assert_eq!(worker.geometry(), g);
        assert!(BlockTable::open(&dir.0, g.token, 4 << 20).is_err(), "another chunk size");
        assert!(BlockTable::open(&dir.0, 0xdef, g.chunk_bytes).is_err(), "another pool");
        owner.set_generation(3, 1);
        assert_eq!(worker.generation(3), 1);
        assert!(worker.owner_alive());
        let pins = PinFile::create(&dir.0, g.token, g.blocks).unwrap();
        let listed = PinFile::list(&dir.0, g.token);
        assert_eq!(listed, vec![pins.path().to_path_buf()]);
        let seen = PinFile::open(&listed[0], g.token, g.blocks).unwrap();
        assert!(PinFile::open(&listed[0], 0xdef, g.blocks).is_none());
        pins.count(3).fetch_add(2, Ordering::SeqCst);
        assert_eq!(seen.count(3).load(Ordering::SeqCst), 2);
        assert!(seen.holder_alive());
        drop(pins);
        assert!(!seen.holder_alive(), "the worker's file closed: its lock is gone");
        assert!(PinFile::list(&dir.0, g.token).is_empty(), "the worker removed its file");
        let path = owner.path().to_path_buf();
        drop(owner);
        assert!(!worker.owner_alive());
        assert!(!path.exists());
    }

    /// A worker's unpin wakes the owner asleep on `unpins`, whether it comes after the owner went to sleep
    /// or races its way there; a lost wake would leave the owner asleep for its whole minute.
    #[test]
    fn an_unpin_wakes_the_owner_asleep_on_it_and_no_wake_is_lost() {
        let dir = os::TestDir::new("kv-wake").unwrap();
        let g = geometry();
        let owner = std::sync::Arc::new(BlockTable::create(&dir.0, g).unwrap());
        let worker = BlockTable::open(&dir.0, g.token, g.chunk_bytes).unwrap();
        let (go, rounds) = std::sync::mpsc::channel::<u32>();
        let (done, woken) = std::sync::mpsc::channel();
        let sleeper = {
            let owner = std::sync::Arc::clone(&owner);
            std::thread::spawn(move || {
                while let Ok(seen) = rounds.recv() {
                    while owner.unpins() == seen {
                        owner.wait_unpins(seen, Duration::from_secs(60));
                    }
                    done.send(()).unwrap();
                }
            })
        };
        for round in 0..200 {
            go.send(owner.unpins()).unwrap();
            if round % 2 == 0 {
                // The owner counted itself first (it is asleep, or about to be).
                while owner.waiters() == 0 {
                    std::thread::yield_now();
                }
            }
            worker.bump_unpins();
            woken.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("round {round}: the wake was lost"));
        }
        drop(go);
        sleeper.join().unwrap();
        assert_eq!(owner.waiters(), 0);
    }

    #[test]
    fn half_made_pin_files_of_dead_workers_are_swept_and_live_ones_kept() {
        let dir = os::TestDir::new("kv-sweep").unwrap();
        let g = geometry();
        let live = PinFile::create(&dir.0, g.token, g.blocks).unwrap();
        // What a worker killed between creating its file and locking, sizing or stamping it leaves.
        let half = dir.0.join(format!("{}{:016x}.pins", pins_prefix(g.token), 7));
        drop(aclshm_os::create_file(&half).unwrap());
        assert!(PinFile::open(&half, g.token, g.blocks).is_none(), "not a pin file the owner can read");
        let other_pool = PinFile::create(&dir.0, 0xdef, g.blocks).unwrap();
        PinFile::sweep_abandoned(&dir.0, g.token);
        assert!(!half.exists(), "the dead worker's half-made file is gone");
        assert!(live.path().exists() && other_pool.path().exists(), "live workers' files stay");
    }
}
