//! The scheduler's side: a [`KvPool`] allocates and frees blocks of a shared pool, keeps the block table,
//! and honours workers' pins (see the [module](super) docs).

use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, close_on_drop};
use crate::magazine::{Magazines, Pushed};
use crate::pool::{Block, BlockClassId, Divisor, Pool, PoolConfig, PoolStats};
use crate::runtime::Runtime;
use crate::share::ShareConfig;
use crate::sync::Mutex;
use crate::sync::shm::Ordering;
use crate::sync::stat::{AtomicU32, AtomicU64, AtomicUsize, Ordering as StatOrdering};

use super::block::{KvBlock, KvDesc};
use super::table::{BlockTable, Geometry, PinFile};

/// The tag of KV blocks in their pool ([`Pool::alloc_tagged`](crate::Pool::alloc_tagged)): what
/// [`KvPool::sleep`] keeps or discards.
pub const KV_TAG: &str = "kv_cache";

/// How a [`KvPool`] is made.
#[derive(Debug, Clone, PartialEq)]
pub struct KvConfig {
    /// Bytes per block (a multiple of 512, at most the chunk size); see [`KvLayout::block_bytes`](crate::KvLayout::block_bytes).
    pub block_bytes: u64,
    /// The pool under the blocks. Its chunk size should be a multiple of the block size, or the tail of
    /// each chunk that does not hold a whole block is wasted. `reserve_chunks` must be 0 (pre-mapped
    /// chunks serve variable-size allocations, not blocks).
    pub pool: PoolConfig,
    /// How the pool is shared.
    pub share: ShareConfig,
}

impl KvConfig {
    /// Read a configuration file (what `aclshm tune` writes for a KV trace): the pool's keys and
    /// `kv_block_bytes`, which must be there. Sharing is as `share` says.
    pub fn load(path: impl AsRef<std::path::Path>, share: ShareConfig) -> Result<KvConfig> {
        let f = crate::pool::ConfigFile::load(path.as_ref())?;
        let block_bytes = f.kv_block_bytes.ok_or_else(|| {
            Error::InvalidArgument(format!("{}: no kv_block_bytes: not a KV configuration", path.as_ref().display()))
        })?;
        Ok(KvConfig { block_bytes, pool: f.pool, share })
    }
}

/// What a KV pool holds.
#[derive(Debug, Clone, PartialEq)]
pub struct KvStats {
    /// Bytes per block.
    pub block_bytes: u64,
    /// Blocks per chunk.
    pub blocks_per_chunk: u32,
    /// Blocks the pool's range can hold.
    pub capacity: u32,
    /// Blocks allocated now.
    pub allocated: u32,
    /// Blocks freed while pinned, kept until their pins are gone.
    pub deferred: u32,
    /// Free blocks kept in threads' magazines for their next allocations (see [`KvPool::free`]): free in
    /// the block table, still the pool's; trims, sleeps and a full device take them back.
    pub cached: u32,
    /// Workers with a pin file now (attached KV mirrors).
    pub workers: u32,
    /// The pool underneath.
    pub pool: PoolStats,
}

/// Block ids are small distinct integers: they hash to themselves (spread by a multiply).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// What the KV pool changes under its lock: what workers pin (allocation and free do not need it while no
/// worker is attached).
struct Owner {
    /// Blocks freed while some worker pinned them.
    deferred: IdMap<Block>,
    /// Blocks taken out of `deferred` (their pins gone) that a thread is giving back to the pool now,
    /// outside the lock: not back yet, so `wait_unpinned` waits for them too.
    reclaiming: usize,
    /// Workers' pin files.
    workers: Vec<PinFile>,
    epoch_seen: Option<u32>,
    unpins_seen: u32,
}

/// A scheduler's pool of KV-cache blocks, shared with workers (see the [module](crate::kv) docs).
pub struct KvPool {
    pool: Pool,
    class: BlockClassId,
    table: BlockTable,
    desc: KvDesc,
    dir: PathBuf,
    geometry: Geometry,
    /// Block id to (chunk slot, index in the chunk).
    per_chunk: Divisor,
    /// Per chunk slot, the id of the chunk its blocks were handed out from (a chunk with a live block is
    /// not given back, so this holds for every live block): what makes a block's handle from its id.
    chunks: Box<[AtomicU32]>,
    owner: Mutex<Owner>,
    /// Blocks kept for pins (a copy of `deferred.len()`, read without the lock).
    deferred: AtomicUsize,
    /// `epoch + 1` when the owner last looked and found no pin file at that epoch of the block table, 0
    /// otherwise. While the table's epoch is still that one, no worker can hold a pin (a worker adds its
    /// pin file, then bumps the epoch, then pins), so a free need not take the lock to look for pins.
    unwatched: AtomicU64,
    /// Ids of free blocks (even generation, still allocated in the pool) kept per thread for its next
    /// allocations: no lock, no shared line in either direction.
    cache: Magazines,
}

/// The most a thread's magazine of a KV pool holds: 64 blocks, or fewer large ones (128 MiB of them: 64
/// of the 2 MiB blocks of a paged KV cache of 16 tokens; with 32 MiB, 16 of them, the built-in KV trace
/// overflowed the magazine in its bursts and took 4.1 ms against 3.2 ms, the pool's own block class 3.3).
const MAGAZINE_BLOCKS: u64 = 64;
const MAGAZINE_BYTES: u64 = 128 << 20;

impl fmt::Debug for KvPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvPool").field("desc", &self.desc).field("geometry", &self.geometry).finish()
    }
}

impl KvPool {
    /// A KV pool on `device`: the pool, its block class, sharing, the block table.
    ///
    /// ```
    /// # let _dirs = unsafe { aclshm::doc_dirs() };
    /// use aclshm::{KvConfig, KvPool, PoolConfig, Runtime, ShareConfig};
    /// let rt = Runtime::simulator();
    /// let pool = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, ..PoolConfig::default() };
    /// let kv = KvPool::new(&rt, 0, KvConfig { block_bytes: 256 << 10, pool, share: ShareConfig::default() })?;
    /// let blocks = kv.alloc_many(20)?;                 // 8 blocks per chunk: 3 chunks
    /// assert_eq!(kv.stats().pool.chunks, 3);
    /// let workers_see = kv.desc().to_string();         // "aclshm-kv:1:...": what workers attach with
    /// # assert!(workers_see.starts_with("aclshm-kv:1:"));
    /// kv.free_many(&blocks)?;
    /// kv.close()?;
    /// # Ok::<(), aclshm::Error>(())
    /// ```
    pub fn new(rt: &Runtime, device: i32, config: KvConfig) -> Result<KvPool> {
        if config.pool.reserve_chunks > 0 {
            return Err(Error::InvalidArgument(
                "reserve_chunks pre-maps chunks for variable-size allocations, which KV blocks do not use: set it to 0"
                    .into(),
            ));
        }
        let magazines = config.pool.trim_watermark.is_none();
        let pool = Pool::new(rt, device, config.pool)?;
        let class = pool.block_class(config.block_bytes)?;
        pool.tag_block_class(class, KV_TAG)?;
        let per_chunk = pool.blocks_per_chunk(class)?;
        let chunk_bytes = pool.config().chunk_bytes;
        let slots = pool.stats().reserved_bytes / chunk_bytes;
        let blocks = u32::try_from(slots * u64::from(per_chunk))
            .map_err(|_| Error::InvalidArgument(format!("{slots} chunks of {per_chunk} blocks: too many blocks")))?;
        let share = pool.share(config.share.clone())?;
        let dir = share.socket.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let geometry = Geometry { token: share.token, block_bytes: config.block_bytes, chunk_bytes, per_chunk, blocks };
        let table = BlockTable::create(&dir, geometry)?;
        Ok(KvPool {
            pool,
            class,
            table,
            desc: KvDesc { share },
            dir,
            geometry,
            per_chunk: Divisor::new(u64::from(per_chunk)),
            chunks: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            owner: Mutex::new(Owner {
                deferred: IdMap::default(),
                reclaiming: 0,
                workers: Vec::new(),
                epoch_seen: None,
                unpins_seen: 0,
            }),
            deferred: AtomicUsize::new(0),
            unwatched: AtomicU64::new(0),
            // A watermark asks for memory back as it is freed: no magazine holds it back.
            cache: Magazines::new(usize::from(magazines), |block_bytes| {
                (MAGAZINE_BYTES / block_bytes).min(MAGAZINE_BLOCKS) as usize
            }),
        })
    }

    /// What workers attach with.
    pub fn desc(&self) -> &KvDesc {
        &self.desc
    }

    /// The pool underneath (statistics, sharing statistics).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> u64 {
        self.geometry.block_bytes
    }

    /// Allocate one block: the one this thread freed last if its magazine holds it, else from the pool.
    #[inline]
    pub fn alloc(&self) -> Result<KvBlock> {
        // Not while the pool sleeps, whoever put it to sleep (this pool, or its `pool()` directly).
        if self.pool.is_awake()
            && let Some(id) = self.cache.pop(self.geometry.block_bytes)
        {
            return Ok(self.revive(id as u32));
        }
        self.alloc_from_pool()
    }

    /// [`alloc`](KvPool::alloc) from the pool.
    #[inline(never)]
    fn alloc_from_pool(&self) -> Result<KvBlock> {
        self.reclaim_if_unpinned()?;
        let b = match self.pool.alloc_block(self.class) {
            Err(Error::OutOfMemory { .. }) if self.take_back_for_retry()? => self.pool.alloc_block(self.class)?,
            r => r?,
        };
        Ok(self.register(b))
    }

    /// The pool is full: take back what threads' magazines hold and what pins no longer hold. Returns
    /// whether anything may have come back (worth trying again).
    #[cold]
    fn take_back_for_retry(&self) -> Result<bool> {
        let cached = self.take_back_cached()?;
        if self.deferred.load(StatOrdering::Relaxed) > 0 {
            self.reclaim()?;
            return Ok(true);
        }
        Ok(cached > 0)
    }

    /// Give the pool every block threads' magazines hold. Returns how many.
    fn take_back_cached(&self) -> Result<usize> {
        let ids = self.cache.drain();
        if !ids.is_empty() {
            let handles: Vec<Block> = ids.iter().map(|&(_, id)| self.handle(id as u32)).collect();
            self.pool.free_blocks(&handles)?;
        }
        Ok(ids.len())
    }

    /// Reclaim blocks kept for pins if a worker let go of some since the last look.
    fn reclaim_if_unpinned(&self) -> Result<()> {
        if self.deferred.load(StatOrdering::Relaxed) > 0 {
            let mut st = self.owner.lock();
            if self.table.unpins() != st.unpins_seen {
                let free = self.reclaim_locked(&mut st);
                drop(st);
                self.give_back_reclaimed(&free)?;
            }
        }
        Ok(())
    }

    /// A block the pool just handed out becomes allocated: its generation goes odd. The pool hands a block
    /// to one caller, so no lock is needed.
    fn register(&self, b: Block) -> KvBlock {
        let id = b.slot() * self.geometry.per_chunk + b.index();
        // Stored only when it changed, so that threads allocating from one chunk do not keep taking the
        // line from each other. Either way whoever frees the block after reading its generation reads this
        // chunk id or a later one (read-read coherence), and the chunk is not replaced while it is live.
        let noted = &self.chunks[b.slot() as usize];
        if noted.load(StatOrdering::Relaxed) != b.chunk() {
            noted.store(b.chunk(), StatOrdering::Relaxed);
        }
        self.revive(id)
    }

    /// Free block `id`, still the pool's (just handed out, or from a magazine, whose one taker this
    /// thread is), becomes allocated: its generation goes odd.
    #[inline]
    fn revive(&self, id: u32) -> KvBlock {
        let generation = self.table.generation(id).wrapping_add(1);
        debug_assert!(generation % 2 == 1, "block {id} was free");
        // Publishes the chunk id above to whoever frees the block (it reads the generation first).
        self.table.set_generation(id, generation);
        KvBlock { pool: self.geometry.token, id, generation }
    }

    /// The pool's handle of block `id`, allocated (its chunk is the one `register` noted).
    #[inline]
    fn handle(&self, id: u32) -> Block {
        let slot = self.per_chunk.div(u64::from(id)) as u32;
        let index = id - slot * self.geometry.per_chunk;
        let chunk = self.chunks[slot as usize].load(StatOrdering::Relaxed);
        self.pool.block_handle(self.class, self.geometry.block_bytes, slot, chunk, index)
    }

    /// Allocate `n` blocks: all or none. Blocks freed while pinned are reused once their pins are gone;
    /// when the device is full, those are looked at again (and workers that died are forgotten) before
    /// giving up with [`Error::OutOfMemory`].
    pub fn alloc_many(&self, n: usize) -> Result<Vec<KvBlock>> {
        // This thread's magazine first, the rest from the pool.
        let mut cached = Vec::new();
        if self.pool.is_awake() {
            self.cache.pop_many(self.geometry.block_bytes, n, &mut cached);
        }
        let rest = n - cached.len();
        let blocks = if rest == 0 { Ok(Vec::new()) } else { self.alloc_many_from_pool(rest) };
        let blocks = match blocks {
            Ok(b) => b,
            Err(e) => {
                // All or none: what the magazine gave goes back to it (or, full, to the pool).
                let kept = self.cache.push_many(self.geometry.block_bytes, &cached);
                let handles: Vec<Block> = cached[kept..].iter().map(|&id| self.handle(id as u32)).collect();
                self.pool.free_blocks(&handles)?;
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(n);
        out.extend(cached.into_iter().map(|id| self.revive(id as u32)));
        out.extend(blocks.into_iter().map(|b| self.register(b)));
        Ok(out)
    }

    fn alloc_many_from_pool(&self, n: usize) -> Result<Vec<Block>> {
        self.reclaim_if_unpinned()?;
        match self.pool.alloc_blocks(self.class, n) {
            Err(Error::OutOfMemory { .. }) if self.take_back_for_retry()? => self.pool.alloc_blocks(self.class, n),
            r => r,
        }
    }

    /// Check `b` names a block of this pool (not whether it is allocated).
    #[inline]
    fn check_ref(&self, b: &KvBlock) -> Result<()> {
        if b.pool != self.geometry.token {
            return Err(Error::BadDescriptor(format!("block {b} is of another pool")));
        }
        if b.id >= self.geometry.blocks {
            return Err(Error::BadDescriptor(format!("block {b}: the pool has {} blocks", self.geometry.blocks)));
        }
        Ok(())
    }

    /// Check `b` names a live block of this pool: its generation in the table, odd, is the reference's.
    #[inline]
    fn check_live(&self, b: &KvBlock) -> Result<()> {
        self.check_ref(b)?;
        if b.generation % 2 == 1 && self.table.generation(b.id) == b.generation {
            Ok(())
        } else {
            Err(Error::StaleBlock { id: b.id, generation: b.generation })
        }
    }

    /// [`check_live`](KvPool::check_live), and the pool's handle of the block.
    fn check(&self, b: &KvBlock) -> Result<Block> {
        self.check_live(b).map(|()| self.handle(b.id))
    }

    /// Whether no worker can hold a pin now (see `unwatched`). Called after retiring blocks: the epoch's
    /// read is sequentially consistent, after the retire in their total order.
    #[inline]
    fn unwatched(&self) -> bool {
        let seen = self.unwatched.load(StatOrdering::Relaxed);
        seen != 0 && u64::from(self.table.epoch()) + 1 == seen
    }

    /// Free one block (see [`free_many`](KvPool::free_many)). A block no worker pins goes to the calling
    /// thread's magazine (up to 64 blocks, at most 128 MiB of them; beyond, to the pool), and that thread's
    /// next [`alloc`](KvPool::alloc) takes it back without a lock; [`trim`](KvPool::trim),
    /// [`sleep`](KvPool::sleep) and an allocation that finds the device full take back what every
    /// thread's magazine holds ([`KvStats::cached`]).
    pub fn free(&self, b: KvBlock) -> Result<()> {
        self.check_ref(&b)?;
        // The generation goes even: from then on no worker can pin the block, and a second free of the
        // same reference (here or in another thread) is stale.
        if !self.table.retire(b.id, b.generation) {
            return Err(Error::StaleBlock { id: b.id, generation: b.generation });
        }
        // The retire pairs with the workers' pin-then-check (see `BlockTable::retire`): either they see the
        // new generation, or the look for pins below (`unwatched`, or the pin counts) sees their pin.
        if self.unwatched() {
            return self.give_back(b.id);
        }
        self.free_watched(b.id)
    }

    /// A block freed and unpinned: to this thread's magazine, or to the pool if that is full.
    #[inline]
    fn give_back(&self, id: u32) -> Result<()> {
        match self.cache.push(self.geometry.block_bytes, u64::from(id), || true) {
            Pushed::Kept => Ok(()),
            // The handle is made where the pool reads it (moving it about cost more than the rest here).
            Pushed::Refused | Pushed::Unclaimed => self.pool.free_blocks(std::slice::from_ref(&self.handle(id))),
        }
    }

    /// Blocks freed and unpinned: to this thread's magazine as far as it has room, the rest to the pool.
    fn give_back_many(&self, ids: &[u64], handles: &[Block]) -> Result<()> {
        let kept = self.cache.push_many(self.geometry.block_bytes, ids);
        self.pool.free_blocks(&handles[kept..])
    }

    /// The rest of [`free`](KvPool::free) when a worker may pin the block (out of line: it is the path of
    /// a pool with workers, but not one to inline into the path without).
    #[inline(never)]
    fn free_watched(&self, id: u32) -> Result<()> {
        let back = {
            let mut st = self.owner.lock();
            self.refresh_workers(&mut st);
            self.settle_locked(&mut st, id, self.handle(id))
        };
        back.map_or(Ok(()), |_| self.give_back(id))
    }

    /// After the table retired block `id`: `blk` for the pool to take back, unless a worker
    /// pins it; then it is kept until its pins are gone.
    fn settle_locked(&self, st: &mut Owner, id: u32, blk: Block) -> Option<Block> {
        if self.pins_locked(st, id) == 0 {
            Some(blk)
        } else {
            st.deferred.insert(id, blk);
            self.deferred.store(st.deferred.len(), StatOrdering::Relaxed);
            None
        }
    }

    /// Free blocks. Every reference is checked first (another pool, out of range, stale, listed twice: an
    /// error, and nothing is freed). A block a worker pins is not reused until every pin on it is gone.
    pub fn free_many(&self, blocks: &[KvBlock]) -> Result<()> {
        for b in blocks {
            self.check_live(b)?;
        }
        // Made after the checks, straight into place (a handle moved about costs as much as the checks).
        let handles: Vec<Block> = blocks.iter().map(|b| self.handle(b.id)).collect();
        // Listed twice: the second is a double free. Found before anything is retired, so that workers
        // never see a block freed and then not.
        if let Some(twice) = crate::listed::repeated(blocks, |b| b.id) {
            let b = blocks.iter().find(|b| b.id == twice).expect("listed");
            return Err(Error::StaleBlock { id: b.id, generation: b.generation });
        }
        for (i, b) in blocks.iter().enumerate() {
            if !self.table.retire(b.id, b.generation) {
                // Freed by another thread since the check: undo ours, all or nothing.
                for done in &blocks[..i] {
                    self.table.unretire(done.id, done.generation);
                }
                return Err(Error::StaleBlock { id: b.id, generation: b.generation });
            }
        }
        // The retires pair with the workers' pin-then-check, as in `free`.
        if self.unwatched() {
            let ids: Vec<u64> = blocks.iter().map(|b| u64::from(b.id)).collect();
            return self.give_back_many(&ids, &handles);
        }
        let (ids, to_pool): (Vec<u64>, Vec<Block>) = {
            let mut st = self.owner.lock();
            self.refresh_workers(&mut st);
            let settled = blocks
                .iter()
                .zip(handles)
                .filter_map(|(b, blk)| self.settle_locked(&mut st, b.id, blk).map(|blk| (u64::from(b.id), blk)));
            settled.unzip()
        };
        self.give_back_many(&ids, &to_pool)
    }

    /// Pins on block `b` now, over every live worker.
    pub fn pins(&self, b: &KvBlock) -> Result<u32> {
        let mut st = self.owner.lock();
        if b.pool != self.geometry.token || b.id >= self.geometry.blocks {
            return Err(Error::BadDescriptor(format!("block {b} is not of this pool")));
        }
        self.refresh_workers(&mut st);
        Ok(self.pins_locked(&mut st, b.id))
    }

    /// Sum block `id`'s pins over the workers, forgetting workers that died (their pins with them).
    fn pins_locked(&self, st: &mut Owner, id: u32) -> u32 {
        let mut total = 0u32;
        let mut dead = Vec::new();
        for (i, w) in st.workers.iter().enumerate() {
            let n = w.count(id).load(Ordering::SeqCst);
            if n > 0 {
                if w.holder_alive() {
                    total = total.saturating_add(n);
                } else {
                    dead.push(i);
                }
            }
        }
        for i in dead.into_iter().rev() {
            let w = st.workers.swap_remove(i);
            w.remove();
        }
        total
    }

    /// Pick up pin files workers added or removed since the last look.
    fn refresh_workers(&self, st: &mut Owner) {
        let epoch = self.table.epoch();
        if st.epoch_seen == Some(epoch) {
            return;
        }
        st.epoch_seen = Some(epoch);
        // Until the list below is made, a free takes the lock.
        self.unwatched.store(0, StatOrdering::Relaxed);
        let now = PinFile::list(&self.dir, self.geometry.token);
        st.workers.retain(|w| now.iter().any(|p| p == w.path()));
        for p in now {
            if !st.workers.iter().any(|w| w.path() == p)
                && let Some(f) = PinFile::open(&p, self.geometry.token, self.geometry.blocks)
            {
                st.workers.push(f);
            }
        }
        if st.workers.is_empty() {
            self.unwatched.store(u64::from(epoch) + 1, StatOrdering::Relaxed);
        }
    }

    fn reclaim_locked(&self, st: &mut Owner) -> Vec<Block> {
        st.unpins_seen = self.table.unpins();
        self.refresh_workers(st);
        // Workers that died go, pinned or not.
        let mut i = 0;
        while i < st.workers.len() {
            if st.workers[i].holder_alive() {
                i += 1;
            } else {
                st.workers.swap_remove(i).remove();
            }
        }
        let ids: Vec<u32> = st.deferred.keys().copied().collect();
        let mut free = Vec::new();
        for id in ids {
            if self.pins_locked(st, id) == 0 {
                free.extend(st.deferred.remove(&id));
            }
        }
        self.deferred.store(st.deferred.len(), StatOrdering::Relaxed);
        st.reclaiming += free.len();
        free
    }

    /// Give the pool blocks [`reclaim_locked`](KvPool::reclaim_locked) took (with the lock not held),
    /// then count them as back.
    fn give_back_reclaimed(&self, free: &[Block]) -> Result<()> {
        if free.is_empty() {
            return Ok(());
        }
        let r = self.pool.free_blocks(free);
        self.owner.lock().reclaiming -= free.len();
        r
    }

    /// Give back the blocks freed while pinned whose pins are gone (workers that died count as gone).
    /// Returns how many went back. Allocation does this by itself when it needs to.
    pub fn reclaim(&self) -> Result<u32> {
        let free = {
            let mut st = self.owner.lock();
            self.reclaim_locked(&mut st)
        };
        self.give_back_reclaimed(&free)?;
        Ok(free.len() as u32)
    }

    /// Wait until no block is kept for its pins (reclaiming as pins go), at most `timeout` (one too long
    /// to add to now, such as `Duration::MAX`, waits for ever). Returns whether none is left.
    pub fn wait_unpinned(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let seen = self.table.unpins();
            self.reclaim()?;
            // Blocks another thread's reclaim is still giving back count as kept until they are back.
            let st = self.owner.lock();
            if st.deferred.is_empty() && st.reclaiming == 0 {
                return Ok(true);
            }
            drop(st);
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(false);
            }
            // Woken by an unpin; the bound catches a worker that dies holding pins.
            let left = deadline.map_or(Duration::MAX, |d| d - now);
            self.table.wait_unpins(seen, left.min(Duration::from_millis(50)));
        }
    }

    /// The scheduler's own address of block `b`.
    pub fn ptr(&self, b: &KvBlock) -> Result<*mut c_void> {
        Ok(self.check(b)?.as_ptr())
    }

    /// Copy `blocks`, in order, into `out` (block after block: `blocks.len()` times the block size), with
    /// one copy per run of blocks that lie side by side in the pool (a batch of blocks allocated together
    /// is usually one run): how a transfer stages blocks through host memory.
    pub fn read_blocks(&self, blocks: &[KvBlock], out: &mut [u8]) -> Result<()> {
        let runs = self.runs(blocks, out.len())?;
        // SAFETY: `out` is ours, writable, exactly as long as the runs lay out.
        unsafe { self.copy_runs(&runs, out.as_mut_ptr(), aclshm_sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST) }
    }

    /// Copy `data` (block after block) into `blocks`, in order: [`read_blocks`](KvPool::read_blocks) the
    /// other way.
    pub fn write_blocks(&self, blocks: &[KvBlock], data: &[u8]) -> Result<()> {
        let runs = self.runs(blocks, data.len())?;
        // SAFETY: `data` is exactly as long as the runs lay out, and only read (HOST_TO_DEVICE).
        unsafe {
            self.copy_runs(&runs, data.as_ptr().cast_mut(), aclshm_sys::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE)
        }
    }

    /// One `aclrtMemcpy` per run, between the device and `host` (+ each run's offset), `kind`'s way.
    ///
    /// # Safety
    /// 1. `host` is valid for the runs' bytes: written for DEVICE_TO_HOST, read for HOST_TO_DEVICE.
    unsafe fn copy_runs(
        &self,
        runs: &[(usize, usize, usize)],
        host: *mut u8,
        kind: aclshm_sys::aclrtMemcpyKind,
    ) -> Result<()> {
        let rt = self.pool.runtime();
        let to_host = kind == aclshm_sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST;
        crate::device::on_device(rt, self.pool.device(), || {
            for &(dev, at, len) in runs {
                // SAFETY: `dev` is `len` bytes of live blocks of this pool (checked by `runs`); `host + at`
                // the part of the caller's buffer laid out for them (precondition 1).
                let h = unsafe { host.add(at) }.cast::<c_void>();
                let (dst, src) = if to_host { (h, dev as *const c_void) } else { (dev as *mut c_void, h.cast_const()) };
                // SAFETY: as above.
                unsafe { crate::raw::memcpy(rt, dst, len, src, len, kind)? };
            }
            Ok(())
        })
    }

    /// The device runs of `blocks` (address, offset in the host buffer, length), every block checked live,
    /// for a host buffer of `host_len` bytes that must be exactly their size.
    fn runs(&self, blocks: &[KvBlock], host_len: usize) -> Result<Vec<(usize, usize, usize)>> {
        let size = self.geometry.block_bytes as usize;
        if blocks.len().checked_mul(size) != Some(host_len) {
            return Err(Error::InvalidArgument(format!(
                "{} blocks of {size} bytes need a host buffer of that many bytes, not {host_len}",
                blocks.len()
            )));
        }
        if self.pool.is_asleep() {
            return Err(Error::Asleep("the KV pool sleeps: its blocks' memory is given back until it wakes".into()));
        }
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let dev = self.check(b)?.as_ptr() as usize;
            match runs.last_mut() {
                Some((d, _, len)) if *d + *len == dev => *len += size,
                _ => runs.push((dev, i * size, size)),
            }
        }
        Ok(runs)
    }

    /// Put the pool to sleep (see [`Pool::sleep`]): its chunks' physical memory goes back to the device,
    /// with workers following (they unmap, the memory is freed once they did). Block ids, generations and
    /// pins stay valid; allocating is refused until [`wake`](KvPool::wake). With `discard_kv` the blocks'
    /// contents are dropped (they read as undefined after the wake); without, they are kept in host memory
    /// and copied back.
    pub fn sleep(&self, discard_kv: bool) -> Result<crate::pool::SleepReport> {
        // Magazines close until the wake (a block they handed out now would be asleep), their blocks go
        // back to the pool first (nothing of theirs is kept).
        self.cache.set_open(false);
        let offload_tags = if discard_kv { Vec::new() } else { vec![KV_TAG.to_string()] };
        let slept = self.take_back_cached().and_then(|_| {
            self.pool.sleep(&crate::pool::SleepConfig { offload_tags, ..crate::pool::SleepConfig::default() })
        });
        if slept.is_err() && self.pool.is_awake() {
            // Nothing slept (the pool can allocate): the magazines serve again.
            self.cache.set_open(true);
        }
        slept
    }

    /// Wake the pool: new physical memory at the same addresses (workers map it at theirs), kept contents
    /// copied back.
    pub fn wake(&self) -> Result<()> {
        self.pool.wake(None)?;
        self.cache.set_open(true);
        Ok(())
    }

    /// Give fully free chunks back to the device (after reclaiming what pins no longer hold).
    pub fn trim(&self) -> Result<u32> {
        self.take_back_cached()?;
        self.reclaim()?;
        self.pool.trim()
    }

    /// What the pool holds.
    pub fn stats(&self) -> KvStats {
        let mut st = self.owner.lock();
        self.refresh_workers(&mut st);
        // Blocks kept for pins are still the pool's; those being freed now count until they are back.
        let in_pool = self.pool.blocks_allocated(self.class).unwrap_or(0);
        let cached = self.cache.held().0;
        KvStats {
            block_bytes: self.geometry.block_bytes,
            blocks_per_chunk: self.geometry.per_chunk,
            capacity: self.geometry.blocks,
            allocated: in_pool.saturating_sub((st.deferred.len() + st.reclaiming) as u64 + cached) as u32,
            deferred: st.deferred.len() as u32,
            cached: cached as u32,
            workers: st.workers.len() as u32,
            pool: self.pool.stats(),
        }
    }

    /// Close: the block table goes (workers keep what they mapped), then the pool. Pin files of workers
    /// that died are removed.
    pub fn close(&self) -> Result<()> {
        // What magazines hold goes with the pool.
        self.cache.seal();
        {
            let mut st = self.owner.lock();
            st.epoch_seen = None;
            self.refresh_workers(&mut st);
            for w in std::mem::take(&mut st.workers) {
                if !w.holder_alive() {
                    w.remove();
                }
            }
            PinFile::sweep_abandoned(&self.dir, self.geometry.token);
        }
        self.table.close();
        self.pool.close()
    }
}

close_on_drop!(KvPool, close, "a KV pool");
