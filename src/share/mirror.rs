//! A worker's view of a shared pool: every chunk imported once and mapped at its pool offset in a
//! reservation of the worker's own, on the worker's device.
//!
//! A follower thread sleeps on the chunk table's futex and syncs when it changes: it unmaps and releases
//! chunks the owner retired, imports and maps chunks it added, and acknowledges the generation it reached
//! (so the owner may free retired chunks). Followers are kept between mirrors (`followers.rs`): a close
//! does not wait for its thread, and makes sure it calls the runtime no more for the mirror.
//! [`Mirror::ptr`] turns a descriptor into a local address with no runtime call when the chunks it lies in
//! are mapped, and syncs first only when the descriptor is newer than what the mirror has.

use std::ffi::c_void;
use std::fmt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::device::{bare_tgid, on_device};
use crate::error::{Error, Result, report_drop};
use crate::registry::{ImportRegistry, Imported};
use crate::runtime::Runtime;
use crate::sync::stat::{AtomicU64, Ordering};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering as SyncOrdering};
use crate::vmm::{DropErrors, Mapping, Shareable, VaRange};

use super::desc::{AllocDesc, ShareDesc, fingerprint};
use super::files::forget_dead_owner;
use super::followers;
use super::table::Table;
use super::wire::{self, Message};

/// One chunk as the mirror has it. Dropped: unmapped, then the import released.
struct Chunk {
    id: u64,
    /// The shareable handle (key) it was imported from; 0 while the chunk sleeps.
    shareable: u64,
    // Field order is teardown order: the mapping goes before the import it maps. None while asleep.
    _mapped: Option<(Mapping, Imported)>,
}

/// Set in an entry of `ids` for a chunk that sleeps (its owner put the pool to sleep): the id is known,
/// nothing is mapped.
const ASLEEP_BIT: u64 = 1 << 63;

struct Inner {
    rt: Runtime,
    device: i32,
    token: u64,
    chunk: u64,
    table: Table,
    /// The reservation's base address and size (the reservation itself is in `held`).
    base: usize,
    size: usize,
    errors: Arc<DropErrors>,
    /// The chunk ids mapped, by slot (0: none): what `ptr` reads, with no lock. A sync clears a slot's id
    /// before it unmaps the slot and sets it (a release) once the new memory is mapped, so an id read (an
    /// acquire) that matches the table's says the memory is there.
    ids: Box<[AtomicU64]>,
    /// The chunks and the reservation; the lock serialises syncs (held across runtime calls, never by
    /// `ptr`). A close empties it, and no sync calls the runtime once `stop` is set: so the follower,
    /// which may still hold `Inner` a while after the close, never does.
    held: Mutex<Held>,
    synced: AtomicU64,
    imports: AtomicU64,
    conn: Mutex<Option<UnixStream>>,
    /// The generation last acknowledged to the owner: an acknowledgement goes only when it grows (a worker
    /// asking for asleep memory in a loop syncs in a loop; the owner needs to hear each generation once).
    acked: AtomicU64,
    /// The owner's rendezvous socket (removed with the table if the owner dies).
    socket: std::path::PathBuf,
    stop: AtomicBool,
    /// The owner died without closing the table.
    owner_lost: AtomicBool,
}

/// What a sync works on, under [`Inner::held`]'s lock.
struct Held {
    chunks: Vec<Option<Chunk>>,
    /// None once the mirror closed.
    range: Option<Arc<VaRange>>,
}

/// A worker's mirror of a shared pool (see the [module](super) docs).
///
/// A worker is another process (export and import may not happen in one process), so this example does
/// not run here; `examples/serving_worker.rs` is the runnable program.
///
/// ```no_run
/// use aclshm::{AllocDesc, Mirror, Runtime, ShareDesc, raw};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = Runtime::global()?;
/// // What the owner printed: `pool.share(..)` and `pool.descriptor(&allocation)`.
/// let share: ShareDesc = std::env::args().nth(1).ok_or("no share descriptor")?.parse()?;
/// let desc = AllocDesc::from_hex(&std::env::args().nth(2).ok_or("no allocation descriptor")?)?;
/// raw::set_device(rt, 1)?;
/// let mirror = Mirror::attach(rt, &share, 1)?; // checked and whitelisted by the owner; chunks imported
/// let p = mirror.ptr(&desc)?; // the allocation in this process: no runtime call
/// # let _ = p;
/// mirror.close()?;
/// # Ok(())
/// # }
/// ```
pub struct Mirror {
    inner: Arc<Inner>,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror").field("token", &self.inner.token).field("device", &self.inner.device).finish()
    }
}

/// What a mirror holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorStats {
    /// Chunks mapped (a chunk its owner put to sleep is not).
    pub chunks: u32,
    /// The table generation the mirror has synced to.
    pub generation: u64,
    /// Chunks imported so far (one runtime import each).
    pub imports: u64,
}

impl Mirror {
    /// Attach to the pool `desc` describes, mapping it on `device` (any device: cross-device imports are
    /// what the runtime supports). Goes through the owner's rendezvous, which whitelists this process.
    pub fn attach(rt: &Runtime, desc: &ShareDesc, device: i32) -> Result<Mirror> {
        let attached = Self::attach_inner(rt, desc, device);
        if let Err(e) = &attached {
            // The owner may have died before we were done: then its files are left to us.
            forget_dead_owner(desc, matches!(e, Error::Protocol(_) | Error::Io { .. }));
        }
        attached
    }

    fn attach_inner(rt: &Runtime, desc: &ShareDesc, device: i32) -> Result<Mirror> {
        let tgid = bare_tgid(rt)?;
        let mut conn = UnixStream::connect(&desc.socket)
            .map_err(|e| Error::io(format!("connect to the rendezvous {}", desc.socket.display()), e))?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        // An acknowledgement waits at most this long for room in the socket (an owner that stopped reading
        // for that long is hung up on, below): a mirror's close and its syncs never wait longer for it.
        let _ = conn.set_write_timeout(Some(ACK_WAIT));
        // An owner that turns us away at once (out of descriptors, say) may have answered and hung up
        // before our Hello went out: its answer says more than the broken pipe.
        let sent = Message::Hello { version: wire::VERSION, tgid, device }.send(&mut conn);
        // While the owner checks (and whitelists) us: open the table next to its socket and reserve the
        // address space it needs. The answer confirms both (or names another table: then that one).
        let early = sent.is_ok().then(|| Self::prepare(rt, &super::table_path(desc), desc.token));
        let answer = match (sent, Message::recv(&mut conn)) {
            (Ok(()), answer) => answer?,
            (Err(_), Ok(Some(said))) => Some(said),
            (Err(e), _) => return Err(e),
        };
        let (path, token, chunk, slots, welcomed) = match answer {
            Some(Message::Welcome { table, token, chunk_bytes, slots, generation, .. }) => {
                (table, token, chunk_bytes, slots, generation)
            }
            Some(Message::Refused { reason }) => return Err(Error::Refused(reason)),
            Some(other) => return Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
            None => return Err(Error::Protocol("the owner closed the rendezvous".into())),
        };
        if token != desc.token {
            return Err(Error::Protocol("the rendezvous answered for another pool".into()));
        }
        let (table, range, errors) = match early {
            Some(Ok(early)) if early.0.path() == path => early,
            _ => Self::prepare(rt, &path, token)?,
        };
        let g = table.geometry();
        if g.chunk_bytes != chunk || g.slots != slots {
            return Err(Error::Protocol("the chunk table does not match the rendezvous".into()));
        }
        let inner = Arc::new(Inner {
            rt: rt.clone(),
            device,
            token,
            chunk,
            table,
            base: range.base(),
            size: range.size(),
            errors,
            ids: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            held: Mutex::new(Held { chunks: (0..slots).map(|_| None).collect(), range: Some(range) }),
            synced: AtomicU64::new(0),
            imports: AtomicU64::new(0),
            conn: Mutex::new(Some(conn)),
            // The owner counts us as having seen what was published when it welcomed us: the first sync
            // acknowledges only a generation beyond that (sparing the owner a wake-up per attach).
            acked: AtomicU64::new(welcomed),
            socket: desc.socket.clone(),
            stop: AtomicBool::new(false),
            owner_lost: AtomicBool::new(false),
        });
        // From here on, dropping the mirror undoes everything (and stops a follower it started).
        let mirror = Mirror { inner };
        mirror.inner.sync()?;
        let following = Arc::clone(&mirror.inner);
        followers::follow(Box::new(move || following.follow()))
            .map_err(|e| Error::io("start the mirror's follower", e))?;
        Ok(mirror)
    }

    /// Open the chunk table at `path` and reserve the address space its chunks need.
    fn prepare(rt: &Runtime, path: &std::path::Path, token: u64) -> Result<(Table, Arc<VaRange>, Arc<DropErrors>)> {
        let table = Table::open(path, token)?;
        let g = table.geometry();
        let bytes = u64::from(g.slots).checked_mul(g.chunk_bytes).filter(|&b| b <= isize::MAX as u64 / 2);
        let bytes = bytes.ok_or_else(|| {
            Error::Protocol(format!("{} chunks of {:#x} bytes do not fit an address space", g.slots, g.chunk_bytes))
        })?;
        let errors = DropErrors::new();
        let range = VaRange::reserve(rt, bytes as usize, &errors)?;
        Ok((table, range, errors))
    }

    /// Bring the mirror up to the owner's table now (the follower does this by itself too).
    pub fn sync(&self) -> Result<u64> {
        self.inner.sync()
    }

    /// The local address of an allocation of the shared pool. No runtime call when the chunks it lies in
    /// are mapped already; a descriptor newer than the mirror makes it sync first. Refused: a descriptor
    /// of another pool, out of bounds, from a generation the pool never reached, or stale (its chunks are
    /// not the ones it was made over).
    pub fn ptr(&self, d: &AllocDesc) -> Result<*mut c_void> {
        let i = &self.inner;
        if d.pool != i.token {
            return Err(Error::BadDescriptor("the descriptor is of another pool".into()));
        }
        let end = d.offset.checked_add(d.len).filter(|&e| e <= i.size as u64);
        if end.is_none() || d.len == 0 {
            return Err(Error::BadDescriptor(format!(
                "{:#x} bytes at offset {:#x} are outside the pool ({:#x} bytes)",
                d.len, d.offset, i.size
            )));
        }
        if d.generation <= i.synced.load(Ordering::Acquire)
            && let Ok(Some(p)) = self.lookup(d)
        {
            return Ok(p);
        }
        // Newer than us, not mapped yet, or asleep as far as we know (the owner may have woken it since, and
        // the follower not caught up yet): sync, and try again.
        self.sync()?;
        if d.generation > i.synced.load(Ordering::Acquire) {
            return Err(Error::BadDescriptor(format!(
                "generation {} is beyond the pool's ({})",
                d.generation,
                i.synced.load(Ordering::Acquire)
            )));
        }
        // Read what the sync left with no other sync half-way (the follower's may run meanwhile: it clears a
        // slot before it maps the slot's new memory).
        let _settled = i.held.lock();
        self.lookup(d)?.ok_or(Error::StaleDescriptor { offset: d.offset, len: d.len })
    }

    /// The local address of `len` bytes at pool `offset`, if the chunks they lie in are mapped here as the
    /// owner publishes them now (syncing once if not). For callers that validated the range themselves
    /// (the KV block pool checks a block's generation). No runtime call when mapped.
    pub(crate) fn resolve(&self, offset: u64, len: u64) -> Result<*mut c_void> {
        let i = &self.inner;
        let end = offset.checked_add(len).filter(|&e| e <= i.size as u64 && len > 0);
        if end.is_none() {
            return Err(Error::BadDescriptor(format!("{len:#x} bytes at offset {offset:#x} are outside the pool")));
        }
        let (first, last) = ((offset / i.chunk) as usize, ((offset + len - 1) / i.chunk) as usize);
        let current = || {
            (first..=last).all(|s| {
                let id = i.id(s);
                id != 0 && id == i.table.chunk_at(s)
            })
        };
        if current() {
            return Ok((i.base + offset as usize) as *mut c_void);
        }
        self.sync()?;
        // As in `ptr`: with no other sync half-way.
        let _settled = i.held.lock();
        if current() {
            Ok((i.base + offset as usize) as *mut c_void)
        } else if (first..=last).any(|s| {
            let id = i.id(s);
            id & ASLEEP_BIT != 0 && id & !ASLEEP_BIT == i.table.chunk_at(s)
        }) {
            Err(asleep(offset, len))
        } else {
            Err(Error::StaleDescriptor { offset, len })
        }
    }

    /// The address of `d` if the chunks it spans are mapped here as it names them; an error if they are
    /// those chunks but asleep.
    fn lookup(&self, d: &AllocDesc) -> Result<Option<*mut c_void>> {
        let i = &self.inner;
        let first = (d.offset / i.chunk) as usize;
        let last = ((d.offset + d.len - 1) / i.chunk) as usize;
        // Each slot read once. A sync under way may show some slots before and some after it: then the
        // fingerprint does not match, and `ptr` syncs and looks again with no sync half-way.
        let (mut unmapped, mut sleeping) = (false, false);
        let seen = fingerprint((first..=last).map(|s| {
            let id = i.id(s);
            unmapped |= id == 0;
            sleeping |= id & ASLEEP_BIT != 0;
            id & !ASLEEP_BIT
        }));
        if unmapped || seen != d.fingerprint {
            return Ok(None);
        }
        if sleeping {
            return Err(asleep(d.offset, d.len));
        }
        Ok(Some((i.base + d.offset as usize) as *mut c_void))
    }

    /// What the mirror holds.
    pub fn stats(&self) -> MirrorStats {
        let ids = self.inner.ids.iter().map(|id| id.load(Ordering::Acquire));
        MirrorStats {
            chunks: ids.filter(|&id| id != 0 && id & ASLEEP_BIT == 0).count() as u32,
            generation: self.inner.synced.load(Ordering::Acquire),
            imports: self.inner.imports.load(Ordering::Relaxed),
        }
    }

    /// The pool's chunk size.
    pub fn chunk_bytes(&self) -> u64 {
        self.inner.chunk
    }

    /// The mirror's base address (a pool offset maps to base + offset).
    pub fn base(&self) -> usize {
        self.inner.base
    }

    /// Whether the owner has stopped sharing, or died (what is mapped stays valid until the mirror
    /// closes either way).
    pub fn owner_closed(&self) -> bool {
        self.inner.table.is_closed() || self.inner.owner_lost.load(SyncOrdering::Acquire)
    }

    /// Detach: stop following, unmap and release every chunk, release the range, leave the rendezvous.
    /// Reports every failure. Every runtime call for the mirror is made by the time it returns; its
    /// follower thread is not waited for (it lets the mirror go and waits for the next one to follow).
    pub fn close(mut self) -> Result<()> {
        self.shut_down();
        let errors = self.inner.errors.take();
        if errors.is_empty() { Ok(()) } else { Err(Error::Deferred(errors)) }
    }

    fn shut_down(&mut self) {
        if self.inner.stop.swap(true, SyncOrdering::AcqRel) {
            return;
        }
        // Wake the follower out of its futex wait: it sees `stop` and lets the mirror go. Not waited for:
        // a sync under way holds `held`, taken below; any later one sees `stop` before a runtime call.
        self.inner.table.wake();
        let (chunks, range) = {
            let mut held = self.inner.held.lock();
            (std::mem::take(&mut held.chunks), held.range.take())
        };
        self.inner.ids.iter().for_each(|id| id.store(0, Ordering::Release));
        // Unmap and release every chunk (each Chunk unmaps, then releases its import), then the range.
        drop(chunks);
        drop(range);
        // Closing the socket tells the owner we are gone.
        drop(self.inner.conn.lock().take());
        if !self.inner.table.is_closed() && !self.inner.table.owner_alive() {
            // The owner died (perhaps before the follower noticed): its files are ours to remove.
            self.inner.owner_lost.store(true, SyncOrdering::Release);
            let _ = std::fs::remove_file(self.inner.table.path());
            let _ = std::fs::remove_file(&self.inner.socket);
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.shut_down();
        for e in self.inner.errors.take() {
            report_drop("a mirror", &e);
        }
    }
}

impl Inner {
    /// The chunk id mapped in `slot` now (0: none; with `ASLEEP_BIT`: known, asleep).
    #[inline]
    fn id(&self, slot: usize) -> u64 {
        self.ids[slot].load(Ordering::Acquire)
    }

    /// Follow the table until told to stop or the owner closes it.
    fn follow(&self) {
        // Whether the last wait ended with the table unchanged (its timeout): only then is the owner's
        // liveness worth a look (a read of /proc). A change is the owner's doing, and the attach that
        // handed us the mirror has just heard from it.
        let mut quiet = false;
        loop {
            let seq = self.table.seq();
            if self.stop.load(SyncOrdering::Acquire) {
                return;
            }
            // The device is made current for each sync (once, in practice: it stays current), so a failure
            // to set it is reported and tried again at the next change, never a follower that stopped.
            if self.table.generation() != self.synced.load(Ordering::Acquire)
                && let Err(e) = self.sync()
            {
                self.errors.record(e);
            }
            if self.table.is_closed() {
                return;
            }
            if quiet && !self.table.owner_alive() {
                // The owner died: nothing will change any more. Its files are left to us to remove (the
                // names are its alone); what we mapped stays valid until we release it.
                self.owner_lost.store(true, SyncOrdering::Release);
                let _ = std::fs::remove_file(self.table.path());
                let _ = std::fs::remove_file(&self.socket);
                return;
            }
            self.table.wait_change(seq, Duration::from_millis(200));
            quiet = self.table.seq() == seq;
        }
    }

    /// Reconcile the mapped chunks with the table on the mirror's device, then acknowledge the generation
    /// reached. Nothing (no runtime call) once the mirror is closing.
    fn sync(&self) -> Result<u64> {
        let mut held = self.held.lock();
        if self.stop.load(SyncOrdering::Acquire) {
            return Ok(self.synced.load(Ordering::Acquire));
        }
        let synced = on_device(&self.rt, self.device, || self.reconcile(&mut held));
        drop(held);
        let (generation, failed) = synced?;
        let mut conn = self.conn.lock();
        if let Some(c) = conn.as_mut()
            && self.acked.fetch_max(generation, Ordering::AcqRel) < generation
            && (Message::Ack { generation }).send(c).is_err()
        {
            // The owner is gone (nobody to tell), or did not read for ACK_WAIT: a frame may be half sent,
            // so hang up. The owner forgets this mirror (it no longer waits for it to let go of chunks;
            // their memory is freed when this process frees its imports too); the table is still followed.
            *conn = None;
        }
        drop(conn);
        match failed {
            Some(e) => Err(e),
            None => Ok(generation),
        }
    }

    /// [`sync`](Inner::sync)'s work, with the lock held and the device current: the generation reached
    /// (recorded, and acknowledged, even when a chunk failed) and the first chunk's failure.
    fn reconcile(&self, held: &mut Held) -> Result<(u64, Option<Error>)> {
        let Held { chunks, range } = held;
        let Some(range) = range.as_ref() else { return Ok((self.synced.load(Ordering::Acquire), None)) };
        let snap = self.table.snapshot()?;
        let mut first_error = None;
        for (slot, e) in snap.entries.iter().enumerate() {
            let have = chunks[slot].as_ref().map_or((0, 0), |c| (c.id, c.shareable));
            if have == (e.chunk, e.shareable) {
                continue;
            }
            if have.0 != 0 {
                // Retired, put to sleep, or woken with new memory by the owner: unmap, release the import.
                self.ids[slot].store(0, Ordering::Release);
                chunks[slot] = None;
            }
            if e.chunk == 0 || snap.closed {
                continue;
            }
            if e.shareable == 0 {
                // Asleep: known, not mapped (its memory is given back until the owner wakes the pool).
                chunks[slot] = Some(Chunk { id: e.chunk, shareable: 0, _mapped: None });
                self.ids[slot].store(e.chunk | ASLEEP_BIT, Ordering::Release);
                continue;
            }
            match self.map_chunk(range, slot, e.chunk, e.shareable) {
                Ok(mapped) => {
                    chunks[slot] = Some(Chunk { id: e.chunk, shareable: e.shareable, _mapped: Some(mapped) });
                    self.ids[slot].store(e.chunk, Ordering::Release);
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        // Acknowledge even after a failure: the chunks we have are what we have.
        self.synced.store(snap.generation, Ordering::Release);
        Ok((snap.generation, first_error))
    }

    /// Import and map chunk `chunk` of `slot` (its shareable handle, or the key of its fabric handle).
    fn map_chunk(&self, range: &Arc<VaRange>, slot: usize, chunk: u64, shareable: u64) -> Result<(Mapping, Imported)> {
        let shareable = if self.table.geometry().fabric {
            // Published with the chunk, read for it; if the slot moved on meanwhile, the next sync sees it.
            let f = self.table.fabric_at(slot, chunk)?.ok_or_else(|| {
                Error::Protocol(format!("chunk slot {slot} changed while it was being read; sync again"))
            })?;
            if f.key() != shareable {
                return Err(Error::Protocol(format!("chunk slot {slot}: its fabric handle does not match its key")));
            }
            Shareable::Fabric(f)
        } else {
            Shareable::Plain(shareable)
        };
        let import = ImportRegistry::global().import_shareable(
            &self.rt,
            &shareable,
            self.device,
            self.chunk as usize,
            &self.errors,
        )?;
        self.imports.fetch_add(1, Ordering::Relaxed);
        let mapping = Mapping::map(range, slot * self.chunk as usize, import.phys())?;
        Ok((mapping, import))
    }
}

/// How long an acknowledgement waits for room in the rendezvous socket.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The error for memory of chunks that sleep.
fn asleep(offset: u64, len: u64) -> Error {
    Error::Asleep(format!(
        "{len:#x} bytes at offset {offset:#x} lie in chunks its owner put to sleep; they map again when it wakes"
    ))
}
