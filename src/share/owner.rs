//! The owner's side of a shared pool: [`Pool::share`] starts a [`Sharing`], which watches the pool's
//! chunks (a chunk observer: every chunk is exported once and published before it can be allocated from,
//! and retired chunks are freed once no mirror can need them), keeps the chunk table, and runs the
//! rendezvous where workers attach. Also the pool's descriptors ([`Pool::descriptor`]).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::device::bare_tgid;
use crate::error::{Error, Result};
use crate::os;
use crate::pool::{Allocation, Block, ChunkObserver, Pool};
use crate::runtime::Runtime;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering as SyncOrdering, StdArc, thread};
use crate::vmm::{DropErrors, PhysicalMem, Shareable};

use super::desc::{AllocDesc, ShareDesc, fingerprint};
use super::files;
use super::table::{Geometry, Table};
use super::wire::{self, Message};

/// How a pool is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// Export with pid validation (the default): only workers that come through the rendezvous, and
    /// that the kernel confirms are who they say, can import. `false` is the opt-out: chunks are exported
    /// with `ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION`, so any process that learns a shareable
    /// handle (from the chunk table, readable by this user) can import it.
    pub validate_pids: bool,
    /// Directory for the rendezvous socket and the chunk table; default `$ACLSHM_SHARE_DIR`, else
    /// `/dev/shm/aclshm-share-<uid>`.
    /// It must be (or is created as) a directory of this user that others cannot write.
    pub dir: Option<PathBuf>,
    /// Most workers attached at once (with pid validation). Every attached worker is whitelisted on
    /// every chunk, and a shareable handle's whitelist is bounded ([`WHITELIST_CAPACITY`] entries in the
    /// simulator; the driver documents no number), so admitting more than a whitelist holds would make
    /// the owner's next grow fail. A worker beyond this is refused ("whitelist full").
    pub max_workers: u32,
    /// Export chunks as fabric handles (`aclrtMemExportToShareableHandleV2`,
    /// `ACL_MEM_SHARE_HANDLE_TYPE_FABRIC`), which mirrors on other servers of a super node (Atlas A3) can
    /// import; off by default (plain handles, one server). A runtime without the V2 calls refuses the
    /// first export with [`Error::Unsupported`]. The rendezvous and the chunk table are files in
    /// [`dir`](ShareConfig::dir): a mirror on another server needs that directory shared with it (on the
    /// simulator, servers are simulator directories of one machine, so it is).
    pub fabric: bool,
}

/// Entries a shareable handle's whitelist holds in the simulator (the driver documents no bound), and
/// the default [`ShareConfig::max_workers`].
pub const WHITELIST_CAPACITY: u32 = 64;

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig { validate_pids: true, dir: None, max_workers: WHITELIST_CAPACITY, fabric: false }
    }
}

/// The state of a shared pool's sharing, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareStats {
    /// Mirrors attached now.
    pub mirrors: u32,
    /// Chunks published in the table.
    pub chunks: u32,
    /// Retired chunks whose handle is not freed yet: waiting for mirrors to acknowledge them, or being
    /// freed now.
    pub retired_pending: u32,
    /// The table's generation.
    pub generation: u64,
}

struct Attached {
    tgid: i32,
    /// The generation the mirror acknowledged (0: none yet).
    ack: u64,
    /// The generation when it attached: chunks retired before that it never saw.
    attached: u64,
}

struct Retired {
    phys: Arc<PhysicalMem>,
    published: u64,
    retired: u64,
    /// Put to sleep rather than trimmed: freed only once every mirror has seen the sleep (unmapped and
    /// released its import), so that the device memory is really given back when the owner frees it.
    /// A trimmed chunk may be freed as soon as every mirror imported it (the runtime's rule: the memory
    /// lives until its last holder frees it).
    slept: bool,
}

/// The shareable handle a chunk table entry carries for a chunk that sleeps (no handle is ever 0).
const ASLEEP: Shareable = Shareable::Plain(0);

#[derive(Default)]
struct State {
    next_chunk: u64,
    next_mirror: u64,
    mirrors: HashMap<u64, Attached>,
    /// Published chunks by slot: (chunk id, shareable handle, generation published).
    live: HashMap<usize, (u64, Shareable, u64)>,
    retired: Vec<Retired>,
    /// Retired chunks a thread took out of `retired` and is freeing now (outside the lock): not freed
    /// yet, so a sleep that waits for the memory to be back waits for these too.
    freeing: usize,
}

/// A pool's sharing, on the owner's side.
pub(crate) struct Sharing {
    rt: Runtime,
    token: u64,
    export_flags: u64,
    /// Chunks are exported as fabric handles.
    fabric: bool,
    chunk_bytes: u64,
    slots: u32,
    device: i32,
    max_workers: u32,
    /// This process's host pid (`aclrtDeviceGetBareTgid`) is not its pid here: we run in a pid
    /// namespace, so workers' host pids cannot be checked against the kernel's.
    namespaced: bool,
    table: Table,
    socket: PathBuf,
    /// Serialises publication (export, whitelist, publish) with attaching (whitelist everything
    /// published), so a worker is whitelisted on every chunk it can see. Held across runtime calls; never
    /// the pool's lock.
    publish: Mutex<()>,
    state: Mutex<State>,
    stop: AtomicBool,
    listener: Mutex<Option<thread::JoinHandle<()>>>,
    errors: Arc<DropErrors>,
}

impl fmt::Debug for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharing").field("token", &self.token).field("socket", &self.socket).finish()
    }
}

impl Sharing {
    /// Start sharing a pool: create the chunk table and the rendezvous socket, start the listener.
    pub(crate) fn start(
        rt: &Runtime,
        device: i32,
        chunk_bytes: u64,
        slots: usize,
        config: &ShareConfig,
        errors: &Arc<DropErrors>,
    ) -> Result<StdArc<Sharing>> {
        let dir = crate::shm::share_dir(config.dir.as_deref())?;
        files::sweep(&dir);
        let token = os::random_u64();
        let export_flags = if config.validate_pids {
            aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT
        } else {
            aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION
        };
        let slots = u32::try_from(slots).map_err(|_| Error::InvalidArgument("too many chunk slots to share".into()))?;
        let namespaced = bare_tgid(rt)? != std::process::id() as i32;
        let geometry = Geometry { slots, chunk_bytes, token, device, export_flags, fabric: config.fabric };
        let table = Table::create(&files::table_file(&dir, token), geometry)?;
        let socket = files::socket_file(&dir, token);
        let listener =
            UnixListener::bind(&socket).map_err(|e| Error::io(format!("rendezvous socket {}", socket.display()), e))?;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
        let sharing = StdArc::new(Sharing {
            rt: rt.clone(),
            token,
            export_flags,
            fabric: config.fabric,
            chunk_bytes,
            slots,
            device,
            max_workers: config.max_workers,
            namespaced,
            table,
            socket,
            publish: Mutex::new(()),
            state: Mutex::new(State { next_chunk: 1, next_mirror: 1, ..State::default() }),
            stop: AtomicBool::new(false),
            listener: Mutex::new(None),
            errors: Arc::clone(errors),
        });
        let s = StdArc::clone(&sharing);
        // A descriptor kept in reserve for the rendezvous (see `listen`), taken now: the process may run
        // out of descriptors before the thread first runs.
        let spare = std::fs::File::open("/dev/null").map_err(|e| Error::io("open /dev/null", e))?;
        let handle = thread::Builder::new()
            .name("aclshm-rendezvous".into())
            .spawn(move || Sharing::listen(s, listener, spare))
            .map_err(|e| Error::io("start the rendezvous thread", e))?;
        *sharing.listener.lock() = Some(handle);
        Ok(sharing)
    }

    /// The descriptor workers attach with.
    pub(crate) fn desc(&self) -> ShareDesc {
        ShareDesc { socket: self.socket.clone(), token: self.token }
    }

    /// Export new chunks, whitelist every attached worker on them, and publish them (in that order, so a
    /// mirror never sees a chunk it cannot import). Nothing is published if any step fails.
    pub(crate) fn publish(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()> {
        let _serial = self.publish.lock();
        let shareables = self.export_and_allow(chunks)?;
        let mut st = self.state.lock();
        let mut changes = Vec::with_capacity(chunks.len());
        let mut ids = Vec::with_capacity(chunks.len());
        for (&(slot, _), &s) in chunks.iter().zip(&shareables) {
            let id = st.next_chunk;
            st.next_chunk += 1;
            changes.push((slot, Some((id, s))));
            ids.push((slot, id, s));
        }
        let generation = self.table.publish(&changes);
        for (slot, id, s) in ids {
            st.live.insert(slot, (id, s, generation));
        }
        Ok(())
    }

    /// Export chunks (once each) and whitelist every attached worker on them; with the publication lock held.
    fn export_and_allow(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<Vec<Shareable>> {
        let mut shareables = Vec::with_capacity(chunks.len());
        for (_, phys) in chunks {
            shareables.push(phys.export_as(self.export_flags, self.fabric)?);
        }
        if self.export_flags == aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT {
            // Never more than `max_workers`, which admission keeps below a whitelist's capacity: a new
            // chunk's whitelist (empty until now) has room for every attached worker. A failure here is the
            // runtime's, and undoes the grow (the caller may retry).
            let tgids: Vec<i32> = self.state.lock().mirrors.values().map(|m| m.tgid).collect();
            // One pid per call: what every runtime accepts (MindSpore found some take only one).
            for s in &shareables {
                for &tgid in &tgids {
                    s.allow(&self.rt, tgid)?;
                }
            }
        }
        Ok(shareables)
    }

    /// Unpublish the chunk in `slot`, whose physical memory the pool no longer maps: its handle is kept
    /// until every attached mirror is done with it, then freed.
    pub(crate) fn retire(&self, slot: usize, phys: Arc<PhysicalMem>) {
        {
            let _serial = self.publish.lock();
            let mut st = self.state.lock();
            let Some((_, _, published)) = st.live.remove(&slot) else {
                // Never published (the pool grew while sharing started): nothing to wait for.
                drop(st);
                drop(phys);
                return;
            };
            let retired = self.table.publish(&[(slot, None)]);
            st.retired.push(Retired { phys, published, retired, slept: false });
        }
        self.release_ready();
    }

    /// Publish the chunk in `slot` as asleep (same chunk id, no handle): mirrors unmap it and release their
    /// import, and its physical memory is freed once all of them acknowledged that.
    fn sleep_slot(&self, slot: usize, phys: Arc<PhysicalMem>) {
        {
            let _serial = self.publish.lock();
            let mut st = self.state.lock();
            let Some(&(id, _, published)) = st.live.get(&slot) else {
                drop(st);
                drop(phys);
                return;
            };
            let retired = self.table.publish(&[(slot, Some((id, ASLEEP)))]);
            st.live.insert(slot, (id, ASLEEP, retired));
            st.retired.push(Retired { phys, published, retired, slept: true });
        }
        self.release_ready();
    }

    /// Export the new memory of sleeping chunks, whitelist every attached worker on it, and publish it
    /// under the chunks' ids (so descriptors made before the sleep name them still).
    fn wake_slots(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()> {
        let _serial = self.publish.lock();
        let shareables = self.export_and_allow(chunks)?;
        let mut st = self.state.lock();
        let mut changes = Vec::with_capacity(chunks.len());
        for (&(slot, _), &s) in chunks.iter().zip(&shareables) {
            let id = match st.live.get(&slot) {
                Some(&(id, _, _)) => id,
                None => {
                    let id = st.next_chunk;
                    st.next_chunk += 1;
                    id
                }
            };
            changes.push((slot, Some((id, s))));
        }
        let generation = self.table.publish(&changes);
        for (slot, v) in changes {
            if let Some((id, s)) = v {
                st.live.insert(slot, (id, s, generation));
            }
        }
        Ok(())
    }

    /// Wait until every retired or slept chunk's memory is freed (mirrors acknowledged), at most `timeout`.
    fn wait_freed(&self, timeout: Duration) -> Result<()> {
        // A timeout too long to add to now (`Duration::MAX`) waits for ever.
        let deadline = Instant::now().checked_add(timeout);
        let mut nap = Duration::from_micros(50);
        // Every mirror must have synced to the table as it is now: then it holds nothing the table no
        // longer lists (slept chunks, and chunks given back for good, which the owner may free as soon
        // as they were imported while a mirror still maps them).
        let target = self.table.generation();
        loop {
            self.release_ready();
            let (pending, slow) = {
                let st = self.state.lock();
                let slow: Vec<String> = st
                    .mirrors
                    .values()
                    .filter(|m| m.ack < target && m.attached < target)
                    .map(|m| m.tgid.to_string())
                    .collect();
                (st.retired.len() + st.freeing, slow)
            };
            if pending == 0 && slow.is_empty() {
                return Ok(());
            }
            if self.stop.load(SyncOrdering::Acquire) {
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout(format!(
                    "mirrors (pids {}) have not let go of the pool's memory ({pending} chunk(s) not freed yet); \
                     it is freed when they do",
                    slow.join(", ")
                )));
            }
            std::thread::sleep(deadline.map_or(nap, |d| nap.min(d - now)));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    /// Free the retired chunks no attached mirror can still need. The frees run outside the lock (they
    /// are runtime calls) and are counted in `freeing` meanwhile: any thread may get here (the rendezvous
    /// thread on an acknowledgement, a sleep waiting), and the one that finds nothing left must not take
    /// another's frees in progress for done.
    fn release_ready(&self) {
        let ready: Vec<Arc<PhysicalMem>> = {
            let mut st = self.state.lock();
            let mirrors: Vec<(u64, u64)> = st.mirrors.values().map(|m| (m.ack, m.attached)).collect();
            let (ready, waiting): (Vec<Retired>, Vec<Retired>) =
                std::mem::take(&mut st.retired).into_iter().partition(|r| {
                    let seen = if r.slept { r.retired } else { r.published };
                    mirrors.iter().all(|&(ack, attached)| ack >= seen || attached >= r.retired)
                });
            st.retired = waiting;
            st.freeing += ready.len();
            ready.into_iter().map(|r| r.phys).collect()
        };
        if ready.is_empty() {
            return;
        }
        let n = ready.len();
        drop(ready);
        self.state.lock().freeing -= n;
    }

    /// The chunk ids of slots `first..=last`, in order, and the table's generation; None if one is not
    /// published.
    pub(crate) fn chunk_ids(&self, first: usize, last: usize) -> Option<(Vec<u64>, u64)> {
        let st = self.state.lock();
        let ids = (first..=last).map(|s| st.live.get(&s).map(|l| l.0)).collect::<Option<Vec<u64>>>()?;
        Some((ids, self.table.generation()))
    }

    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(crate) fn stats(&self) -> ShareStats {
        let st = self.state.lock();
        ShareStats {
            mirrors: st.mirrors.len() as u32,
            chunks: st.live.len() as u32,
            retired_pending: (st.retired.len() + st.freeing) as u32,
            generation: self.table.generation(),
        }
    }

    /// Stop sharing: close the table (mirrors keep what they mapped), stop the listener, free what was
    /// retired.
    pub(crate) fn stop(&self) {
        if self.stop.swap(true, SyncOrdering::AcqRel) {
            return;
        }
        self.table.close();
        // Wake the listener's accept.
        let _ = UnixStream::connect(&self.socket);
        if let Some(h) = self.listener.lock().take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        // The listener hung up on every worker as it ended: nothing waits for their acknowledgements.
        let retired: Vec<Retired> = {
            let mut st = self.state.lock();
            st.mirrors.clear();
            std::mem::take(&mut st.retired)
        };
        drop(retired);
    }

    /// The rendezvous: one thread, polling the listening socket and every worker's connection. A new
    /// connection has `ADMISSION` to say Hello; then it is admitted or refused, and from then on its
    /// acknowledgements are read as they come. A connection that closes, errs or breaks the protocol is
    /// a worker gone: it is forgotten. When sharing stops the thread ends, closing every connection.
    fn listen(this: StdArc<Self>, listener: UnixListener, spare: std::fs::File) {
        const ADMISSION: Duration = Duration::from_secs(10);
        if let Err(e) = listener.set_nonblocking(true) {
            this.errors.record(Error::Protocol(format!("rendezvous socket: {e}")));
            return;
        }
        let mut peers: Vec<Peer> = Vec::new();
        // A descriptor kept in reserve: when the process runs out, it is given up to accept the waiting
        // connection and tell the worker why it is turned away, instead of leaving the connection pending
        // (which would wake every poll at once: a spinning thread).
        let mut spare = Some(spare);
        while !this.stop.load(SyncOrdering::Acquire) {
            let now = Instant::now();
            let wait = peers
                .iter()
                .filter_map(|p| p.admitting_since.map(|t| (t + ADMISSION).saturating_duration_since(now)))
                .min()
                .unwrap_or(Duration::from_secs(1));
            let fds: Vec<_> = std::iter::once(listener.as_fd()).chain(peers.iter().map(|p| p.conn.as_fd())).collect();
            let Ok(ready) = os::poll_readable(&fds, wait) else { continue };
            if this.stop.load(SyncOrdering::Acquire) {
                break;
            }
            // Serve the connections polled (in reverse, so that removing one keeps the others' indices).
            for i in (0..peers.len()).rev() {
                let expired = peers[i].admitting_since.is_some_and(|t| t.elapsed() >= ADMISSION);
                let keep = !expired && (!ready[i + 1] || this.serve(&mut peers[i]));
                if !keep {
                    this.forget(peers.swap_remove(i));
                }
            }
            if ready[0] {
                // At most a turn's worth of new connections (the rest wait for the next turn), so that a
                // stream of connections cannot keep the thread from the admitted workers or a stop.
                for _ in 0..64 {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if conn.set_nonblocking(true).is_ok() {
                                let mut p =
                                    Peer { conn, buf: Vec::new(), admitting_since: Some(Instant::now()), mirror: None };
                                // A worker says Hello as it connects: it is usually here already, and
                                // answering now saves the worker a turn of this loop.
                                if this.serve(&mut p) {
                                    peers.push(p);
                                } else {
                                    this.forget(p);
                                }
                            }
                        }
                        Err(e) if os::out_of_descriptors(&e) => {
                            this.turn_away_for_lack_of_descriptors(&listener, &mut spare);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }

    /// The process has no file descriptor left for the connection waiting on `listener`: accept it with
    /// the spare one, tell the worker why it is refused, close it, and take the spare back. Without a
    /// spare (it could not be had back yet), wait a little before polling the listener again.
    fn turn_away_for_lack_of_descriptors(&self, listener: &UnixListener, spare: &mut Option<std::fs::File>) {
        if spare.take().is_some()
            && let Ok((conn, _)) = listener.accept()
        {
            let reason = "the pool's owner has no file descriptors left (RLIMIT_NOFILE); try again later".to_string();
            let _ = send_blocking(&conn, &Message::Refused { reason });
        }
        *spare = std::fs::File::open("/dev/null").ok();
        if spare.is_none() {
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A worker gone (disconnected, refused, or broke the protocol): if it was attached, nothing waits for
    /// it any more.
    fn forget(&self, p: Peer) {
        if let Some(id) = p.mirror {
            self.state.lock().mirrors.remove(&id);
            self.release_ready();
        }
    }

    /// Read what `p` sent and act on every whole message. False when the worker is gone (or refused, or
    /// broke the protocol).
    fn serve(&self, p: &mut Peer) -> bool {
        // A turn reads at most this many times, so that a worker that never stops sending cannot keep
        // the thread from the others (and from a stop): what is left is read at the next turn.
        const READS_PER_TURN: usize = 64;
        let mut chunk = [0u8; 512];
        for _ in 0..READS_PER_TURN {
            match p.conn.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            // What arrived is acted on as it comes, so a worker that says much (a stream of
            // acknowledgements) is never mistaken for one that floods: only a frame that never ends is.
            if !self.take_frames(p) || p.buf.len() > 4 * wire::MAX_FRAME {
                return false;
            }
        }
        true
    }

    /// Act on every whole message in `p`'s buffer. False when the worker is refused or broke the protocol.
    fn take_frames(&self, p: &mut Peer) -> bool {
        loop {
            let msg = match wire::take_frame(&mut p.buf) {
                Ok(Some(m)) => m,
                Ok(None) => return true,
                Err(_) => return false,
            };
            match (msg, p.mirror) {
                (Message::Hello { tgid, device, .. }, None) => {
                    p.admitting_since = None;
                    match self.admit(&p.conn, tgid, device) {
                        Ok(id) => p.mirror = Some(id),
                        Err(e) => {
                            let _ = send_blocking(&p.conn, &Message::Refused { reason: e.to_string() });
                            return false;
                        }
                    }
                }
                (Message::Ack { generation }, Some(id)) => {
                    if let Some(m) = self.state.lock().mirrors.get_mut(&id) {
                        m.ack = m.ack.max(generation);
                    }
                    self.release_ready();
                }
                // Anything else breaks the protocol.
                _ => return false,
            }
        }
    }

    /// Check a worker that said Hello, whitelist it, list it, welcome it.
    fn admit(&self, conn: &UnixStream, tgid: i32, device: i32) -> Result<u64> {
        let os::PeerCredentials { pid, uid } =
            os::peer_credentials(conn).map_err(|e| Error::io("the worker's peer credentials", e))?;
        if uid != os::euid() {
            return Err(Error::NotPermitted(format!("the worker runs as uid {uid}, the owner as {}", os::euid())));
        }
        // The kernel gives the peer's pid in our pid namespace, the runtime's tgid is the host's. They
        // agree unless we run in a pid namespace of our own (a container), where no host pid can be
        // checked: there the uid check above is the boundary.
        if pid != tgid && !self.namespaced {
            return Err(Error::NotPermitted(format!(
                "the worker says it is pid {tgid}, the kernel says {pid}: refused"
            )));
        }
        if device < 0 {
            return Err(Error::InvalidArgument(format!("device {device}")));
        }
        // Whitelist it on everything published, then list it, under the publication lock: chunks published
        // after this are whitelisted for it by `publish`.
        let _serial = self.publish.lock();
        if self.export_flags == aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT {
            let (attached, shareables) = {
                let st = self.state.lock();
                // A sleeping chunk has no handle: the worker is whitelisted on its new one at the wake.
                let live = st.live.values().map(|l| l.1).filter(|&s| s != ASLEEP);
                (st.mirrors.len() as u32, live.collect::<Vec<Shareable>>())
            };
            if attached >= self.max_workers {
                return Err(Error::NotPermitted(format!(
                    "whitelist full: {attached} workers are attached, at most {} can be (ShareConfig::max_workers)",
                    self.max_workers
                )));
            }
            for s in shareables {
                s.allow(&self.rt, tgid).map_err(|e| match e.acl_code() {
                    Some(code) if code == crate::AclError::DRV_INTERNAL_ERROR => Error::NotPermitted(format!(
                        "whitelist full: a chunk's whitelist takes no more pids (every worker that ever attached \
                         is on it; a chunk that is trimmed and regrown starts afresh): {e}"
                    )),
                    _ => e,
                })?;
            }
        }
        let generation = self.table.generation();
        let id = {
            let mut st = self.state.lock();
            if self.stop.load(SyncOrdering::Acquire) {
                return Err(Error::Closed);
            }
            let id = st.next_mirror;
            st.next_mirror += 1;
            st.mirrors.insert(id, Attached { tgid, ack: 0, attached: generation });
            id
        };
        let welcome = Message::Welcome {
            version: wire::VERSION,
            table: self.table.path().to_path_buf(),
            token: self.token,
            chunk_bytes: self.chunk_bytes,
            slots: self.slots,
            device: self.device,
            export_flags: self.export_flags,
            generation,
        };
        if let Err(e) = send_blocking(conn, &welcome) {
            self.state.lock().mirrors.remove(&id);
            // A chunk retired meanwhile may have waited for it alone.
            self.release_ready();
            return Err(e);
        }
        Ok(id)
    }
}

/// A worker's connection, as the rendezvous thread holds it.
struct Peer {
    conn: UnixStream,
    /// Bytes received and not yet a whole message.
    buf: Vec<u8>,
    /// When it connected, until it said Hello.
    admitting_since: Option<Instant>,
    /// Its mirror, once admitted.
    mirror: Option<u64>,
}

/// Send one small message on a non-blocking socket, waiting (a second at most) if its buffer is full.
fn send_blocking(conn: &UnixStream, m: &Message) -> Result<()> {
    let fail = |e: std::io::Error| Error::Protocol(format!("send: {e}"));
    let frame = m.frame()?;
    let mut c = conn;
    // Nearly always the whole frame fits the socket's buffer at once: one call.
    let sent = loop {
        match c.write(&frame) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 0,
            Err(e) => return Err(fail(e)),
        }
    };
    if sent == frame.len() {
        return Ok(());
    }
    conn.set_nonblocking(false).map_err(fail)?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).map_err(fail)?;
    let rest = c.write_all(&frame[sent..]).map_err(fail);
    conn.set_nonblocking(true).map_err(fail)?;
    rest
}

impl ChunkObserver for Sharing {
    fn grown(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()> {
        self.publish(chunks)
    }

    fn retired(&self, slot: usize, phys: Arc<PhysicalMem>) {
        self.retire(slot, phys);
    }

    fn closed(&self) {
        self.stop();
    }

    fn slept(&self, slot: usize, phys: Arc<PhysicalMem>) {
        self.sleep_slot(slot, phys);
    }

    fn woken(&self, chunks: &[(usize, &Arc<PhysicalMem>)]) -> Result<()> {
        self.wake_slots(chunks)
    }

    fn wait_released(&self, timeout: Duration) -> Result<()> {
        self.wait_freed(timeout)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A pool's sharing: the observer [`Pool::share`] installed, if the pool is shared.
fn sharing_of(pool: &Pool) -> Option<StdArc<dyn ChunkObserver>> {
    pool.observer().filter(|o| o.as_any().is::<Sharing>())
}

fn as_sharing(o: &StdArc<dyn ChunkObserver>) -> &Sharing {
    o.as_any().downcast_ref::<Sharing>().expect("sharing_of checked the type")
}

impl Pool {
    /// Share the pool with other processes (see [`crate::share`]): export every chunk (now and as it
    /// grows), publish the chunk table, open the rendezvous. Returns what workers attach with; calling it
    /// again returns the same.
    ///
    /// ```
    /// # let _dirs = unsafe { aclshm::doc_dirs() };
    /// use aclshm::{AllocDesc, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc};
    /// let rt = Runtime::simulator();
    /// let pool = Pool::new(&rt, 0, PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, ..PoolConfig::default() })?;
    /// let a = pool.alloc(1 << 20)?;
    /// let share = pool.share(ShareConfig::default())?;         // the chunk is exported, the rendezvous opens
    /// let text = share.to_string();                             // for a worker's command line or environment
    /// assert_eq!(text.parse::<ShareDesc>()?, share);
    /// let d = pool.descriptor(&a)?;                             // no runtime call
    /// assert_eq!(AllocDesc::from_hex(&d.to_hex())?, d);        // 64 bytes, 128 hex digits
    /// assert_eq!(pool.share_stats().unwrap().chunks, 1);
    /// // A worker: `Mirror::attach(&rt, &share, device)?.ptr(&d)?` (in another process: see `Mirror`).
    /// pool.free(a)?;
    /// pool.close()?;
    /// # Ok::<(), aclshm::Error>(())
    /// ```
    pub fn share(&self, config: ShareConfig) -> Result<ShareDesc> {
        let observer = self.watch(|chunks| {
            let sh = Sharing::start(
                self.runtime(),
                self.device(),
                self.config().chunk_bytes,
                self.slot_count(),
                &config,
                self.drop_errors(),
            )?;
            if let Err(e) = sh.publish(chunks) {
                // Its threads hold it: stop it explicitly, or it would outlive this call.
                sh.stop();
                return Err(e);
            }
            Ok(sh as StdArc<dyn ChunkObserver>)
        })?;
        match observer.as_any().downcast_ref::<Sharing>() {
            Some(sh) => Ok(sh.desc()),
            None => Err(Error::NotPermitted("the pool is watched by something else than its sharing".into())),
        }
    }

    /// The descriptor of a live allocation of this shared pool, for a mirror to map (64 bytes). No
    /// runtime call.
    pub fn descriptor(&self, a: &Allocation) -> Result<AllocDesc> {
        self.check_mine(a.pool)?;
        let sharing = sharing_of(self).ok_or(Error::NotShared)?;
        self.check_allocated(a)?;
        describe(self, as_sharing(&sharing), a.offset(), a.len())
    }

    /// The descriptor of a live block of this shared pool (as [`descriptor`](Pool::descriptor)).
    pub fn block_descriptor(&self, b: &Block) -> Result<AllocDesc> {
        self.check_mine(b.pool)?;
        let sharing = sharing_of(self).ok_or(Error::NotShared)?;
        self.check_allocated_block(b)?;
        describe(self, as_sharing(&sharing), b.offset(), b.len())
    }

    /// The sharing's state, if the pool is shared.
    pub fn share_stats(&self) -> Option<ShareStats> {
        sharing_of(self).map(|o| as_sharing(&o).stats())
    }
}

/// The descriptor of `len` bytes at `offset` of `pool`, checked live by the caller.
fn describe(pool: &Pool, sharing: &Sharing, offset: u64, len: u64) -> Result<AllocDesc> {
    let chunk = pool.config().chunk_bytes;
    let (first, last) = ((offset / chunk) as usize, ((offset + len - 1) / chunk) as usize);
    // Not published: another thread freed it and the chunk was trimmed meanwhile.
    let (ids, generation) =
        sharing.chunk_ids(first, last).ok_or(Error::NotAllocated { pool: pool.id(), offset, len })?;
    Ok(AllocDesc { pool: sharing.token(), generation, offset, len, fingerprint: fingerprint(ids) })
}

impl Drop for Sharing {
    fn drop(&mut self) {
        // Reached only once the listener and every peer thread ended, which `stop` brings about: the
        // owner calls `stop` (closing the pool does); this is for the error paths of `start`.
        self.stop();
    }
}
