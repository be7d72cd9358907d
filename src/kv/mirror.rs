//! A worker's view of a KV pool: a [`Mirror`] of the pool, the block table, and the worker's pin file.

use std::ffi::c_void;
use std::fmt;

use crate::error::{Error, Result, report_drop};
use crate::runtime::Runtime;
use crate::share::{Mirror, MirrorStats, forget_dead_owner};
use crate::sync::shm::{Ordering, fence};

use super::block::{KvBlock, KvDesc};
use super::table::{BlockTable, Geometry, PinFile, table_path};

/// A worker's mirror of a [`KvPool`](crate::KvPool) (see the [module](super) docs).
///
/// A worker is another process, so this example does not run here; `examples/kv_worker.rs` is the
/// runnable program.
///
/// ```no_run
/// use aclshm::{KvBlock, KvDesc, KvMirror, Runtime, raw};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = Runtime::global()?;
/// let desc: KvDesc = std::env::args().nth(1).ok_or("no KV descriptor")?.parse()?; // kv.desc() of the scheduler
/// let prefix: Vec<KvBlock> = std::env::args().skip(2).map(|b| b.parse()).collect::<aclshm::Result<_>>()?;
/// raw::set_device(rt, 1)?;
/// let kv = KvMirror::attach(rt, &desc, 1)?;
/// let p = kv.ptr(&prefix[0])?; // no runtime call; a freed block is Error::StaleBlock
/// let pinned = kv.pinned(&prefix)?; // not reused by the scheduler until dropped
/// for &q in pinned.ptrs() {
///     // read the prefix through q
/// #   let _ = (p, q);
/// }
/// drop(pinned);
/// kv.close()?;
/// # Ok(())
/// # }
/// ```
pub struct KvMirror {
    /// Taken by `close`.
    mirror: Option<Mirror>,
    table: BlockTable,
    pins: PinFile,
    geometry: Geometry,
}

impl fmt::Debug for KvMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvMirror").field("geometry", &self.geometry).finish()
    }
}

/// Pins held until dropped (from [`KvMirror::pinned`]).
#[must_use = "the pins go when this is dropped"]
pub struct Pinned<'a> {
    mirror: &'a KvMirror,
    blocks: Vec<KvBlock>,
    ptrs: Vec<*mut c_void>,
}

impl fmt::Debug for Pinned<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned").field("blocks", &self.blocks.len()).finish()
    }
}

impl Pinned<'_> {
    /// The blocks pinned.
    pub fn blocks(&self) -> &[KvBlock] {
        &self.blocks
    }

    /// Their local addresses, valid while the pins are held, even once the scheduler has freed the
    /// blocks (it cannot reuse them until they are unpinned).
    pub fn ptrs(&self) -> &[*mut c_void] {
        &self.ptrs
    }

    /// Keep the pins beyond the guard: the blocks and their addresses, for a caller that unpins them
    /// itself with [`KvMirror::unpin`] (a binding whose guard object outlives any Rust borrow).
    pub fn keep(mut self) -> (Vec<KvBlock>, Vec<*mut c_void>) {
        // The guard drops with nothing to unpin.
        (std::mem::take(&mut self.blocks), std::mem::take(&mut self.ptrs))
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.mirror.unpin(&self.blocks) {
            report_drop("pins", &e);
        }
    }
}

impl KvMirror {
    /// Attach to the KV pool `desc` describes, mapping it on `device`: a [`Mirror`] of the pool (through
    /// the owner's rendezvous), the block table, and a pin file of this worker's own.
    pub fn attach(rt: &Runtime, desc: &KvDesc, device: i32) -> Result<KvMirror> {
        let attached = Self::attach_inner(rt, desc, device);
        if let Err(e) = &attached {
            // The scheduler may have died before we were done: then its files are left to us (the pool's,
            // and its block table once its lock is free).
            if forget_dead_owner(desc.share(), matches!(e, Error::Protocol(_) | Error::Io { .. })) {
                let blocks = table_path(&desc.dir(), desc.share().token);
                if crate::os::creator_gone(&blocks) {
                    let _ = std::fs::remove_file(blocks);
                }
            }
        }
        attached
    }

    fn attach_inner(rt: &Runtime, desc: &KvDesc, device: i32) -> Result<KvMirror> {
        let mirror = Mirror::attach(rt, desc.share(), device)?;
        let table = BlockTable::open(&desc.dir(), desc.share().token, mirror.chunk_bytes())?;
        let geometry = table.geometry();
        let pins = PinFile::create(&desc.dir(), geometry.token, geometry.blocks)?;
        table.bump_epoch();
        Ok(KvMirror { mirror: Some(mirror), table, pins, geometry })
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> u64 {
        self.geometry.block_bytes
    }

    /// Check `b` could be a block this pool handed out: of this pool, in range, and of an allocated (odd)
    /// generation. (A freed block's generation is even: a reference made from one by adding one was never
    /// handed out, and must not reach the freed bytes or pin a block the scheduler may reuse.)
    fn check(&self, b: &KvBlock) -> Result<()> {
        if b.pool != self.geometry.token {
            return Err(Error::BadDescriptor(format!("block {b} is of another pool")));
        }
        if b.id >= self.geometry.blocks {
            return Err(Error::BadDescriptor(format!("block {b}: the pool has {} blocks", self.geometry.blocks)));
        }
        if b.generation.is_multiple_of(2) {
            return Err(Error::BadDescriptor(format!(
                "block {b}: generation {} is even, and blocks are handed out in odd generations",
                b.generation
            )));
        }
        Ok(())
    }

    /// The local address of block `b`, if it is allocated as `b` says: no runtime call when its chunk is
    /// mapped here. The answer holds while the scheduler keeps the block; [`pin`](KvMirror::pin) it to be
    /// sure of that while reading a block another request owns.
    pub fn ptr(&self, b: &KvBlock) -> Result<*mut c_void> {
        self.check(b)?;
        if self.table.generation(b.id) != b.generation {
            // A table truncated under us reads zeros: say so rather than call every block stale.
            self.table.check_intact()?;
            return Err(Error::StaleBlock { id: b.id, generation: b.generation });
        }
        self.mirror().resolve(self.geometry.offset(b.id), self.geometry.block_bytes)
    }

    /// The local addresses of many blocks (all, or the first error).
    pub fn ptrs(&self, blocks: &[KvBlock]) -> Result<Vec<*mut c_void>> {
        blocks.iter().map(|b| self.ptr(b)).collect()
    }

    /// Pin blocks: the scheduler will not reuse them until they are unpinned (or this worker dies). All
    /// or none: a block that is not allocated as its reference says ([`Error::StaleBlock`]) unpins what
    /// was pinned and fails. Pins nest (pin twice, unpin twice).
    pub fn pin(&self, blocks: &[KvBlock]) -> Result<()> {
        for (i, b) in blocks.iter().enumerate() {
            let ok = self.check(b).and_then(|()| {
                self.pins.count(b.id).fetch_add(1, Ordering::SeqCst);
                // Pairs with the scheduler's free (generation, then pins): either it sees our pin, or we see
                // its new generation.
                fence(Ordering::SeqCst);
                if self.table.generation(b.id) == b.generation {
                    Ok(())
                } else {
                    // The scheduler's free may have seen this pin and kept the block for it: say it went.
                    if self.pins.count(b.id).fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.table.bump_unpins();
                    }
                    self.table.check_intact()?;
                    Err(Error::StaleBlock { id: b.id, generation: b.generation })
                }
            });
            if let Err(e) = ok {
                // Undo this call's pins; they were all ours.
                let _ = self.unpin(&blocks[..i]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unpin blocks. A block this worker does not pin is [`Error::NotPinned`], and nothing is unpinned.
    pub fn unpin(&self, blocks: &[KvBlock]) -> Result<()> {
        for b in blocks {
            self.check(b)?;
        }
        // Check every count first (a block listed twice needs two pins).
        let short = |id: u32, n: u32| (self.pins.count(id).load(Ordering::SeqCst) < n).then_some(id);
        if let Some(id) = crate::listed::each_count(blocks, |b| b.id, short) {
            return Err(Error::NotPinned { id });
        }
        let mut released = false;
        for b in blocks {
            if self.pins.count(b.id).fetch_sub(1, Ordering::SeqCst) == 1 {
                released = true;
            }
        }
        if released {
            self.table.bump_unpins();
        }
        Ok(())
    }

    /// Pin blocks for as long as the returned guard lives, and resolve their addresses (see
    /// [`Pinned::ptrs`]).
    pub fn pinned(&self, blocks: &[KvBlock]) -> Result<Pinned<'_>> {
        self.pin(blocks)?;
        let ptrs = blocks.iter().map(|b| self.mirror().resolve(self.geometry.offset(b.id), self.geometry.block_bytes));
        match ptrs.collect::<Result<Vec<_>>>() {
            Ok(ptrs) => Ok(Pinned { mirror: self, blocks: blocks.to_vec(), ptrs }),
            Err(e) => {
                let _ = self.unpin(blocks);
                Err(e)
            }
        }
    }

    /// This worker's pins on block `b`.
    pub fn pins(&self, b: &KvBlock) -> Result<u32> {
        self.check(b)?;
        Ok(self.pins.count(b.id).load(Ordering::SeqCst))
    }

    /// The pool mirror underneath.
    pub fn mirror(&self) -> &Mirror {
        self.mirror.as_ref().expect("present until closed")
    }

    /// What the mirror holds.
    pub fn stats(&self) -> MirrorStats {
        self.mirror().stats()
    }

    /// Detach: drop every pin (the scheduler may reuse those blocks), then the mirror. Reports the
    /// mirror's release failures.
    pub fn close(mut self) -> Result<()> {
        self.leave();
        self.mirror.take().map_or(Ok(()), Mirror::close)
    }

    /// Let the scheduler know this worker's pins are gone.
    fn leave(&mut self) {
        // Zero every count, so an owner still holding the file open sees no pins; then say so.
        for id in 0..self.geometry.blocks {
            self.pins.count(id).store(0, Ordering::SeqCst);
        }
        self.pins.remove();
        self.table.bump_epoch();
        self.table.bump_unpins();
        if !self.table.owner_alive() {
            // The scheduler died: its table is ours to remove.
            let _ = std::fs::remove_file(self.table.path());
        }
    }
}

impl Drop for KvMirror {
    fn drop(&mut self) {
        if self.mirror.is_some() {
            self.leave();
        }
    }
}
