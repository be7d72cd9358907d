//! The KV pool's shared files: the block table (the owner writes, every worker reads) and one pin file per
//! worker (the worker writes, the owner reads).
//!
//! ```text
//!   kv-<token>.blocks        header (64 bytes): magic "ACLSHMKB", version, state, pool token, block bytes,
//!                            chunk bytes, blocks per chunk, blocks, epoch, unpins
//!                            then one u32 generation per block: even = free, odd = allocated
//!   kv-<token>-<rand>.pins   header (64 bytes): magic "ACLSHMKP", version, blocks, pool token
//!                            then one u32 pin count per block, this worker's pins
//! ```
//!
//! Each file's creator holds a lock on its byte 0 for as long as it lives, so the other side learns from
//! the kernel that it died. Workers bump `epoch` when they add or remove a pin file (the owner rescans
//! then) and `unpins` (a futex word) when a pin count drops to zero (the owner may reuse a block then).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::os::{self, SharedMap};
use crate::sync::shm::{AtomicU32, AtomicU64, Ordering};

const BLOCKS_MAGIC: u64 = u64::from_le_bytes(*b"ACLSHMKB");
const PINS_MAGIC: u64 = u64::from_le_bytes(*b"ACLSHMKP");
const VERSION: u32 = 1;
const HEADER: usize = 64;
const OPEN: u32 = 1;
const CLOSED: u32 = 2;

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
    pub(crate) fn offset(&self, id: u32) -> u64 {
        u64::from(id / self.per_chunk) * self.chunk_bytes + u64::from(id % self.per_chunk) * self.block_bytes
    }
}

#[repr(C)]
struct BlockHeader {
    magic: AtomicU64,
    version: AtomicU32,
    state: AtomicU32,
    token: AtomicU64,
    block_bytes: AtomicU64,
    chunk_bytes: AtomicU64,
    per_chunk: AtomicU32,
    blocks: AtomicU32,
    epoch: AtomicU32,
    unpins: AtomicU32,
    _pad: AtomicU64,
}

#[repr(C)]
struct PinHeader {
    magic: AtomicU64,
    version: AtomicU32,
    blocks: AtomicU32,
    token: AtomicU64,
    _pad: [AtomicU64; 5],
}

const _: () = assert!(size_of::<BlockHeader>() == HEADER && size_of::<PinHeader>() == HEADER);

/// The path of pool `token`'s block table in `dir`.
pub(crate) fn table_path(dir: &Path, token: u64) -> PathBuf {
    dir.join(format!("kv-{token:016x}.blocks"))
}

fn pins_prefix(token: u64) -> String {
    format!("kv-{token:016x}-")
}

fn u32_at(map: &SharedMap, i: usize) -> &AtomicU32 {
    // SAFETY: callers check `i` against the block count the file was sized for; the words after the header
    // are 4-byte aligned atomics.
    unsafe { &*map.ptr().add(HEADER + 4 * i).cast::<AtomicU32>() }
}

/// A mapped block table.
#[derive(Debug)]
pub(crate) struct BlockTable {
    map: SharedMap,
    path: PathBuf,
    owner: bool,
    geometry: Geometry,
}

impl BlockTable {
    fn header(&self) -> &BlockHeader {
        // SAFETY: the mapping is at least HEADER bytes and starts with a BlockHeader, all atomics.
        unsafe { &*self.map.ptr().cast::<BlockHeader>() }
    }

    /// Create the table of a pool (every block free, generation 0).
    pub(crate) fn create(dir: &Path, g: Geometry) -> Result<BlockTable> {
        let path = table_path(dir, g.token);
        let map = SharedMap::create_locked(&path, HEADER + 4 * g.blocks as usize)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let t = BlockTable { map, path, owner: true, geometry: g };
        let h = t.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.state.store(OPEN, Ordering::Relaxed);
        h.token.store(g.token, Ordering::Relaxed);
        h.block_bytes.store(g.block_bytes, Ordering::Relaxed);
        h.chunk_bytes.store(g.chunk_bytes, Ordering::Relaxed);
        h.per_chunk.store(g.per_chunk, Ordering::Relaxed);
        h.blocks.store(g.blocks, Ordering::Relaxed);
        h.magic.store(BLOCKS_MAGIC, Ordering::Release);
        Ok(t)
    }

    /// Open pool `token`'s table in `dir`, checking it describes a pool of `chunk_bytes` chunks.
    pub(crate) fn open(dir: &Path, token: u64, chunk_bytes: u64) -> Result<BlockTable> {
        let path = table_path(dir, token);
        let bad = |why: String| Error::Protocol(format!("block table {}: {why}", path.display()));
        let len = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?.len() as usize;
        if len < HEADER || !(len - HEADER).is_multiple_of(4) {
            return Err(bad(format!("{len} bytes is not a block table")));
        }
        let map = SharedMap::open(&path, len).map_err(|e| bad(e.to_string()))?;
        let blocks = ((len - HEADER) / 4) as u32;
        let mut t = BlockTable {
            map,
            path: path.clone(),
            owner: false,
            geometry: Geometry { token, block_bytes: 0, chunk_bytes, per_chunk: 0, blocks },
        };
        let h = t.header();
        if h.magic.load(Ordering::Acquire) != BLOCKS_MAGIC || h.version.load(Ordering::Relaxed) != VERSION {
            return Err(bad("not an aclshm block table of this version".into()));
        }
        let g = Geometry {
            token: h.token.load(Ordering::Relaxed),
            block_bytes: h.block_bytes.load(Ordering::Relaxed),
            chunk_bytes: h.chunk_bytes.load(Ordering::Relaxed),
            per_chunk: h.per_chunk.load(Ordering::Relaxed),
            blocks: h.blocks.load(Ordering::Relaxed),
        };
        if g.token != token || g.chunk_bytes != chunk_bytes || g.blocks != blocks {
            return Err(bad("it belongs to another pool, or its size does not match its header".into()));
        }
        if g.block_bytes == 0 || g.per_chunk == 0 || u64::from(g.per_chunk) * g.block_bytes > g.chunk_bytes {
            return Err(bad(format!("{} blocks of {:#x} bytes do not fit a chunk", g.per_chunk, g.block_bytes)));
        }
        if !blocks.is_multiple_of(g.per_chunk) {
            return Err(bad("the block count is not a whole number of chunks".into()));
        }
        t.geometry = g;
        Ok(t)
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Block `id`'s generation now (odd: allocated).
    pub(crate) fn generation(&self, id: u32) -> u32 {
        assert!(id < self.geometry.blocks, "block {id} of {}", self.geometry.blocks);
        u32_at(&self.map, id as usize).load(Ordering::SeqCst)
    }

    /// Set block `id`'s generation (the owner, under its lock).
    pub(crate) fn set_generation(&self, id: u32, generation: u32) {
        debug_assert!(self.owner);
        assert!(id < self.geometry.blocks, "block {id} of {}", self.geometry.blocks);
        u32_at(&self.map, id as usize).store(generation, Ordering::SeqCst);
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

    /// A pin count dropped to zero: wake an owner waiting to reuse a block.
    pub(crate) fn bump_unpins(&self) {
        let h = self.header();
        h.unpins.fetch_add(1, Ordering::SeqCst);
        os::futex_wake_all(&h.unpins);
    }

    /// Sleep until `unpins` moves from `seen` (or `timeout` passes).
    pub(crate) fn wait_unpins(&self, seen: u32, timeout: Duration) {
        os::futex_wait(&self.header().unpins, seen, timeout);
    }

    /// Whether the owner still lives (it holds a lock on the table while it does).
    pub(crate) fn owner_alive(&self) -> bool {
        self.map.creator_alive()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Mark it closed and remove the file (workers keep their mappings of it). Idempotent; owner only.
    pub(crate) fn close(&self) {
        if self.owner && self.header().state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            let _ = std::fs::remove_file(&self.path);
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
    map: SharedMap,
    path: PathBuf,
    /// The worker's own (removes the file when dropped).
    mine: bool,
    blocks: u32,
}

impl PinFile {
    fn header(&self) -> &PinHeader {
        // SAFETY: the mapping is at least HEADER bytes and starts with a PinHeader, all atomics.
        unsafe { &*self.map.ptr().cast::<PinHeader>() }
    }

    fn len(blocks: u32) -> usize {
        HEADER + 4 * blocks as usize
    }

    /// A worker's new pin file for pool `token` of `blocks` blocks, in `dir`.
    pub(crate) fn create(dir: &Path, token: u64, blocks: u32) -> Result<PinFile> {
        let path = dir.join(format!("{}{:016x}.pins", pins_prefix(token), os::random_u64()));
        let map = SharedMap::create_locked(&path, Self::len(blocks))
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let f = PinFile { map, path, mine: true, blocks };
        let h = f.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.blocks.store(blocks, Ordering::Relaxed);
        h.token.store(token, Ordering::Relaxed);
        h.magic.store(PINS_MAGIC, Ordering::Release);
        Ok(f)
    }

    /// Open a worker's pin file (the owner's view); None if it is not one of pool `token`'s.
    pub(crate) fn open(path: &Path, token: u64, blocks: u32) -> Option<PinFile> {
        let map = SharedMap::open(path, Self::len(blocks)).ok()?;
        let f = PinFile { map, path: path.to_path_buf(), mine: false, blocks };
        let h = f.header();
        let ok = h.magic.load(Ordering::Acquire) == PINS_MAGIC
            && h.version.load(Ordering::Relaxed) == VERSION
            && h.token.load(Ordering::Relaxed) == token
            && h.blocks.load(Ordering::Relaxed) == blocks;
        ok.then_some(f)
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

    /// Block `id`'s pin count.
    pub(crate) fn count(&self, id: u32) -> &AtomicU32 {
        assert!(id < self.blocks, "block {id} of {}", self.blocks);
        u32_at(&self.map, id as usize)
    }

    /// Whether the worker that made the file still lives.
    pub(crate) fn holder_alive(&self) -> bool {
        self.map.creator_alive()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file (the owner, of a worker that died).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for PinFile {
    fn drop(&mut self) {
        if self.mine {
            let _ = std::fs::remove_file(&self.path);
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
        let dir = os::TestDir::new("kv");
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

    #[test]
    fn half_made_pin_files_of_dead_workers_are_swept_and_live_ones_kept() {
        let dir = os::TestDir::new("kv-sweep");
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
