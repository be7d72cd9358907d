//! Sharing a pool across processes: the owner exports each chunk once and publishes a chunk table;
//! workers attach [`Mirror`]s, on any device, that import and map each chunk into address space of their
//! own and follow the pool as it grows and trims.
//!
//! ```text
//!   owner process                                       worker process (any device)
//!   Pool ──grow──> export chunk (once) ─┐               Mirror
//!     │                                 ├─> chunk table ──> import (once per process), map at the
//!     │  whitelist every attached       │   (shm, seqlock,    same offset in its own reservation;
//!     │  worker's pid on every chunk    │    futex wakeups)    ptr(descriptor): no runtime call
//!     └──trim──> unpublish; free its   ─┘
//!                handle once every mirror acked         ack(generation) ──┐
//!   rendezvous thread <── Unix socket: Hello{tgid} ─── attach ────────────┘ (Welcome{table, token, ..})
//! ```
//!
//! **Secure by default.** Chunks are exported with pid validation on. A worker attaches through the
//! rendezvous socket (a path in a 0700 directory, the socket 0600): it sends its pid as the host sees it
//! (`aclrtDeviceGetBareTgid`); the owner checks it against the socket's peer credentials (the kernel's
//! word, same user) and whitelists it on every chunk, and on each chunk added later, before answering.
//! (An owner inside a pid namespace, a container, sees workers' pids as its namespace numbers them, while
//! the runtime whitelists host pids: there the pid cannot be cross-checked, and the same-user check is
//! what stands; owners on the host, or sharing the host's pid namespace, check both.)
//! On an NPU the driver also ties each whitelist entry to the time it was added, so a pid recycled by a
//! later process is refused. [`ShareConfig::validate_pids`]` = false` exports without pid validation: any
//! process that learns a shareable handle can import it (the explicit, documented opt-out).
//!
//! **Lifetimes.** The owner never frees a chunk an attached mirror may still import: a retired chunk's
//! handle is kept until every attached mirror has acknowledged a generation in which it had the chunk, or
//! attached after it was gone. Mirrors that imported it keep its memory until they unmap it (the runtime
//! frees memory when every process has freed it). A worker that disconnects (or dies: its socket closes)
//! is forgotten at once, so nothing waits on it; its whitelist entries no longer matter (a recycled pid
//! fails the driver's time check). If the owner dies, mirrors keep what they mapped until they release it.

mod desc;
mod mirror;
mod table;
pub(crate) mod wire;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use desc::AllocDesc;
pub(crate) use desc::fingerprint;
pub use mirror::{Mirror, MirrorStats};
pub use wire::Message;

/// The rendezvous protocol's version (see [`Message`]).
pub const PROTOCOL_VERSION: u16 = wire::VERSION;

use crate::error::{Error, Result};
use crate::os;
use crate::raw;
use crate::runtime::Runtime;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering as SyncOrdering, thread};
use crate::vmm::{DropErrors, PhysicalMem};

use table::{Geometry, Table};

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
}

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig { validate_pids: true, dir: None }
    }
}

/// What a worker needs to attach a mirror: the owner's rendezvous socket and the pool's token. Its text
/// form, `aclshm-share:1:<token in hex>:<socket path>`, travels in an environment variable or a command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareDesc {
    /// The rendezvous socket.
    pub socket: PathBuf,
    /// The pool's token.
    pub token: u64,
}

const DESC_PREFIX: &str = "aclshm-share:1:";

impl fmt::Display for ShareDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DESC_PREFIX}{:016x}:{}", self.token, self.socket.display())
    }
}

impl FromStr for ShareDesc {
    type Err = Error;
    fn from_str(s: &str) -> Result<ShareDesc> {
        let bad = |why: &str| Error::BadDescriptor(format!("share descriptor {s:?}: {why}"));
        let rest = s.strip_prefix(DESC_PREFIX).ok_or_else(|| bad("expected aclshm-share:1:<token>:<socket>"))?;
        let (token, socket) = rest.split_once(':').ok_or_else(|| bad("no socket path"))?;
        let token = u64::from_str_radix(token, 16).map_err(|_| bad("the token is not hex"))?;
        let socket = PathBuf::from(socket);
        if token == 0 || !socket.is_absolute() {
            return Err(bad("a zero token or a relative socket path"));
        }
        Ok(ShareDesc { socket, token })
    }
}

/// The state of a shared pool's sharing, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareStats {
    /// Mirrors attached now.
    pub mirrors: u32,
    /// Chunks published in the table.
    pub chunks: u32,
    /// Retired chunks whose handle waits for mirrors to acknowledge them.
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
}

#[derive(Default)]
struct State {
    next_chunk: u64,
    next_mirror: u64,
    mirrors: HashMap<u64, Attached>,
    /// Published chunks by slot: (chunk id, shareable handle, generation published).
    live: HashMap<usize, (u64, u64, u64)>,
    retired: Vec<Retired>,
}

/// A pool's sharing, on the owner's side.
pub(crate) struct Sharing {
    rt: Runtime,
    token: u64,
    export_flags: u64,
    chunk_bytes: u64,
    slots: u32,
    device: i32,
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
    ) -> Result<Arc<Sharing>> {
        let dir = config.dir.clone().unwrap_or_else(os::default_share_dir);
        os::private_dir(&dir).map_err(|e| Error::io(format!("share directory {}", dir.display()), e))?;
        sweep(&dir);
        let token = os::random_u64();
        let export_flags = if config.validate_pids {
            aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT
        } else {
            aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION
        };
        let slots = u32::try_from(slots).map_err(|_| Error::InvalidArgument("too many chunk slots to share".into()))?;
        let namespaced = raw::device_get_bare_tgid(rt)? != std::process::id() as i32;
        let geometry = Geometry { slots, chunk_bytes, token, device, export_flags };
        let table = Table::create(&dir.join(format!("pool-{token:016x}.table")), geometry)?;
        let socket = dir.join(format!("pool-{token:016x}.sock"));
        let listener =
            UnixListener::bind(&socket).map_err(|e| Error::io(format!("rendezvous socket {}", socket.display()), e))?;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
        let sharing = Arc::new(Sharing {
            rt: rt.clone(),
            token,
            export_flags,
            chunk_bytes,
            slots,
            device,
            namespaced,
            table,
            socket,
            publish: Mutex::new(()),
            state: Mutex::new(State { next_chunk: 1, next_mirror: 1, ..State::default() }),
            stop: AtomicBool::new(false),
            listener: Mutex::new(None),
            errors: Arc::clone(errors),
        });
        let s = Arc::clone(&sharing);
        let handle = thread::Builder::new()
            .name("aclshm-rendezvous".into())
            .spawn(move || Sharing::listen(s, listener))
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
        let mut shareables = Vec::with_capacity(chunks.len());
        for (_, phys) in chunks {
            shareables.push(phys.export(self.export_flags)?);
        }
        if self.export_flags == aclshm_sys::ACL_RT_VMM_EXPORT_FLAG_DEFAULT {
            let tgids: Vec<i32> = self.state.lock().mirrors.values().map(|m| m.tgid).collect();
            // One pid per call: what every runtime accepts (MindSpore found some take only one).
            for &s in &shareables {
                for &tgid in &tgids {
                    raw::mem_set_pid_to_shareable_handle(&self.rt, s, &[tgid])?;
                }
            }
        }
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
            st.retired.push(Retired { phys, published, retired });
        }
        self.release_ready();
    }

    /// Free the retired chunks no attached mirror can still need.
    fn release_ready(&self) {
        let ready: Vec<Arc<PhysicalMem>> = {
            let mut st = self.state.lock();
            let mirrors: Vec<(u64, u64)> = st.mirrors.values().map(|m| (m.ack, m.attached)).collect();
            let (ready, waiting): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut st.retired)
                .into_iter()
                .partition(|r| mirrors.iter().all(|&(ack, attached)| ack >= r.published || attached >= r.retired));
            st.retired = waiting;
            ready.into_iter().map(|r| r.phys).collect()
        };
        drop(ready);
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
            retired_pending: st.retired.len() as u32,
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
    // (`this` rather than `self: Arc<Self>`: loom's Arc, under `--cfg loom`, cannot be a receiver.)
    fn listen(this: Arc<Self>, listener: UnixListener) {
        const ADMISSION: Duration = Duration::from_secs(10);
        if let Err(e) = listener.set_nonblocking(true) {
            this.errors.record(Error::Protocol(format!("rendezvous socket: {e}")));
            return;
        }
        let mut peers: Vec<Peer> = Vec::new();
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
                    let p = peers.swap_remove(i);
                    if let Some(id) = p.mirror {
                        this.state.lock().mirrors.remove(&id);
                        this.release_ready();
                    }
                }
            }
            if ready[0] {
                while let Ok((conn, _)) = listener.accept() {
                    if conn.set_nonblocking(true).is_ok() {
                        peers.push(Peer { conn, buf: Vec::new(), admitting_since: Some(Instant::now()), mirror: None });
                    }
                }
            }
        }
    }

    /// Read what `p` sent and act on every whole message. False when the worker is gone (or refused, or
    /// broke the protocol).
    fn serve(&self, p: &mut Peer) -> bool {
        let mut chunk = [0u8; 512];
        loop {
            match p.conn.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if p.buf.len() > 4 * wire::MAX_FRAME {
                return false;
            }
        }
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
            os::peer_credentials(conn).map_err(|e| Error::Protocol(format!("peer credentials: {e}")))?;
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
            let shareables: Vec<u64> = self.state.lock().live.values().map(|l| l.1).collect();
            for s in shareables {
                raw::mem_set_pid_to_shareable_handle(&self.rt, s, &[tgid])?;
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
    conn.set_nonblocking(false).map_err(fail)?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).map_err(fail)?;
    let mut c = conn;
    let sent = m.send(&mut c).and_then(|()| c.flush().map_err(|e| Error::Protocol(e.to_string())));
    conn.set_nonblocking(true).map_err(fail)?;
    sent
}

impl Drop for Sharing {
    fn drop(&mut self) {
        // Reached only once the listener and every peer thread ended, which `stop` brings about: the
        // owner calls `stop` (closing the pool does); this is for the error paths of `start`.
        self.stop();
    }
}

/// Remove what owners and exporters that died left in a share directory: files at least a minute old
/// whose creator no longer holds its lock on them (pool tables with their sockets, importer files, KV block
/// tables and pin files).
pub(crate) fn sweep(dir: &std::path::Path) {
    sweep_older_than(dir, Duration::from_secs(60));
}

/// As the automatic sweep, for files at least `min_age` old (what `aclshm sim clean` runs, with a second).
/// Returns how many files it removed.
pub fn sweep_older_than(dir: &std::path::Path, min_age: Duration) -> usize {
    let ours = |n: &str| {
        (n.starts_with("pool-") && n.ends_with(".table"))
            || (n.starts_with("ipcmem-") && n.ends_with(".importers"))
            || (n.starts_with("kv-") && (n.ends_with(".blocks") || n.ends_with(".pins")))
    };
    let removed = std::cell::Cell::new(0usize);
    os::sweep_orphans(dir, ours, min_age, |p| {
        removed.set(removed.get() + 1);
        if p.extension().is_some_and(|e| e == "table") {
            let _ = std::fs::remove_file(p.with_extension("sock"));
        }
    });
    removed.get()
}

/// The share directory this process uses by default (`$ACLSHM_SHARE_DIR`, else
/// `/dev/shm/aclshm-share-<uid>`).
pub fn default_dir() -> PathBuf {
    os::default_share_dir()
}

/// A worker could not reach the owner of `desc`: if the owner is gone (its table's lock is free), remove
/// what it left (the table, the socket, a KV pool's block table), which no one else may notice.
///
/// `lost`: the owner's connection broke. A process being killed closes its files one after another, so
/// the socket can close before the table's lock goes: then wait for it a little (half a second at most).
pub(crate) fn forget_dead_owner(desc: &ShareDesc, lost: bool) {
    let table = table_path(desc);
    let deadline = Instant::now() + if lost { Duration::from_millis(500) } else { Duration::ZERO };
    let mut gone = os::creator_gone(&table);
    while !gone && table.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        gone = os::creator_gone(&table);
    }
    if gone {
        let _ = std::fs::remove_file(&table);
        let _ = std::fs::remove_file(&desc.socket);
        if let Some(dir) = desc.socket.parent() {
            let blocks = crate::kv::table_path(dir, desc.token);
            if os::creator_gone(&blocks) {
                let _ = std::fs::remove_file(blocks);
            }
        }
    }
}

/// Path of a shared pool's table, for tests that read it as an outsider would.
#[doc(hidden)]
pub fn table_path(desc: &ShareDesc) -> PathBuf {
    desc.socket.with_extension("table")
}

/// Shareable handles a shared pool's table lists (an outsider's view: a process that can read the table
/// learns them; with pid validation on, that is not enough to import them).
#[doc(hidden)]
pub fn published_handles(desc: &ShareDesc) -> Result<Vec<u64>> {
    let t = Table::open(&table_path(desc), desc.token)?;
    Ok(t.snapshot().entries.iter().filter(|e| e.chunk != 0).map(|e| e.shareable).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_descriptors_round_trip_and_bad_text_is_refused() {
        let d = ShareDesc { socket: PathBuf::from("/dev/shm/aclshm-share-1/pool-00000000000000ab.sock"), token: 0xab };
        assert_eq!(d.to_string(), "aclshm-share:1:00000000000000ab:/dev/shm/aclshm-share-1/pool-00000000000000ab.sock");
        assert_eq!(d.to_string().parse::<ShareDesc>().unwrap(), d);
        for bad in [
            "",
            "aclshm-share:2:ab:/x",
            "aclshm-share:1:ab",
            "aclshm-share:1:zz:/x",
            "aclshm-share:1:0:/x",
            "aclshm-share:1:ab:relative.sock",
        ] {
            assert!(matches!(bad.parse::<ShareDesc>(), Err(Error::BadDescriptor(_))), "{bad:?} was accepted");
        }
    }
}
