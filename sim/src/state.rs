//! The simulator instance of this process: attaching to the directory, the process-local tables (what a
//! runtime keeps per process: handles, address ranges, streams, notifies, device contexts), the current
//! device of each thread, and detaching at exit.
//!
//! Handles given to callers (`aclrtDrvMemHandle`, `aclrtStream`, `aclrtNotify`) are not pointers: each
//! packs a tag, a generation and a table index into a non-canonical address, so a stale, forged or
//! foreign handle is recognised (and refused) rather than dereferenced, and dereferencing one faults.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use aclshm_os::{AnonymousMapping, SharedMapping};
use aclshm_sys::*;
use parking_lot::Mutex;
use slab::Slab;

use crate::call::{R, bail, fail};
use crate::config::Config;
use crate::registry::{self, ProcSlot, Registry};
use crate::stream::Stream;

pub(crate) const TAG_MEM: u64 = 0x5A;
pub(crate) const TAG_STREAM: u64 = 0x5B;
pub(crate) const TAG_NOTIFY: u64 = 0x5C;
pub(crate) const TAG_EVENT: u64 = 0x5D;
pub(crate) const TAG_CONTEXT: u64 = 0x5E;

/// A caller-visible handle for table entry `key` of generation `generation`.
pub(crate) fn encode(tag: u64, key: usize, generation: u32) -> *mut c_void {
    ((tag << 56) | ((u64::from(generation) & 0xFF_FFFF) << 32) | key as u64) as usize as *mut c_void
}

/// The table entry and generation a handle names, if it carries `tag`.
pub(crate) fn decode(tag: u64, h: *const c_void) -> Option<(usize, u32)> {
    let v = h as usize as u64;
    (v >> 56 == tag).then_some(((v & 0xFFFF_FFFF) as usize, ((v >> 32) & 0xFF_FFFF) as u32))
}

/// Where a local memory handle came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// aclrtMallocPhysical in this process.
    Allocated,
    /// aclrtMemImportFromShareableHandle of this shareable handle.
    Imported(u64),
    /// Backs an aclrtMalloc allocation or an IPC import: not visible to callers as a handle.
    Internal,
}

/// A physical memory handle of this process.
#[derive(Debug)]
pub(crate) struct MemHandle {
    pub generation: u32,
    pub phys: usize,
    pub serial: u64,
    pub size: u64,
    pub page: u64,
    /// The device this handle is on (for an import, the importing device).
    pub device: u32,
    pub origin: Origin,
    /// The simulator's read-write mapping of the object: copies and memset go through it.
    pub alias: Arc<SharedMapping>,
    /// aclrtFreePhysical was called; the handle goes when its last mapping does.
    pub freed: bool,
    pub maps: u32,
    /// The shareable handle, once exported.
    pub exported: Option<u64>,
    /// Imported from another simulated server (a fabric handle): the index of its registry in
    /// `Sim::foreign`. Its object lives there, and so does this process's hold on it.
    pub server: Option<usize>,
}

/// One mapping inside a region.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub handle: usize,
    pub size: usize,
    pub imported: bool,
    /// Access granted with aclrtMemSetAccess (its flags), if any.
    pub access: Option<u32>,
}

/// What a region of device address space is.
#[derive(Debug, Clone)]
pub(crate) enum RegionKind {
    /// From aclrtReserveMemAddress.
    Reserved {
        /// Bound to this device by its first mapping; the binding outlives the mapping (as in the driver).
        bound: Option<u32>,
    },
    /// From aclrtMalloc: one internal handle mapped over all of it.
    Malloc { handle: usize, requested: usize },
    /// From aclrtIpcMemImportByKey: one internal handle mapped over the exported length.
    IpcImport { handle: usize },
}

/// A range of device address space in this process: inaccessible to the host, backed where mapped.
#[derive(Debug)]
pub(crate) struct Region {
    pub size: usize,
    pub kind: RegionKind,
    /// Mappings by offset from the region's base.
    pub maps: BTreeMap<usize, Mapping>,
}

/// A notify handle of this process.
#[derive(Debug)]
pub(crate) struct LocalNotify {
    pub generation: u32,
    pub slot: usize,
    pub serial: u64,
    pub device: u32,
    /// This process created it (as opposed to importing it).
    pub creator: bool,
}

/// The counters of a process-local event (see `event`).
#[derive(Debug, Default)]
pub(crate) struct EventCounters {
    /// Records queued.
    pub recorded: std::sync::atomic::AtomicU32,
    /// Records the streams reached.
    pub done: std::sync::atomic::AtomicU32,
    /// When the last record completed (monotonic nanoseconds).
    pub stamp: std::sync::atomic::AtomicU64,
}

/// Where an event's counters are.
#[derive(Debug)]
pub(crate) enum EventCore {
    /// In this process.
    Local(Arc<EventCounters>),
    /// In the registry: an IPC event, created here (`creator`) or opened.
    Ipc { slot: usize, serial: u64, creator: bool },
}

/// An event handle of this process.
#[derive(Debug)]
pub(crate) struct LocalEvent {
    pub generation: u32,
    pub device: u32,
    pub flags: u32,
    /// From aclrtCreateEventExWithFlag (or opened): complete before its first record.
    pub ex: bool,
    pub core: EventCore,
}

/// A context made with aclrtCreateContext: it holds a reference to its device, as aclrtSetDevice does.
#[derive(Debug)]
pub(crate) struct Context {
    pub generation: u32,
    pub device: u32,
}

/// An IPC import of this process: the same key imported again returns the same address (reference
/// counted, one close each).
#[derive(Debug)]
pub(crate) struct IpcImport {
    pub base: usize,
    pub refs: u32,
    pub key_slot: usize,
}

/// A device's default context in this process.
#[derive(Debug, Default)]
pub(crate) struct DeviceCtx {
    /// aclrtSetDevice references, all threads together.
    pub refs: u32,
    /// Contexts made on the device with aclrtCreateContext and not destroyed: each keeps it up, whatever
    /// aclrtResetDevice does to the references above.
    pub contexts: u32,
    /// Bumped at each teardown, so threads still pointing at a torn-down context see none.
    pub epoch: u64,
    pub default_stream: Option<usize>,
}

impl DeviceCtx {
    /// Whether the device is up in this process: set by some thread, or holding a context.
    pub(crate) fn up(&self) -> bool {
        self.refs > 0 || self.contexts > 0
    }
}

/// The process-local tables.
#[derive(Default)]
pub(crate) struct Local {
    pub handles: Slab<MemHandle>,
    pub regions: BTreeMap<usize, Region>,
    /// aclrtMallocHost allocations by base address.
    pub host: BTreeMap<usize, AnonymousMapping>,
    pub streams: Slab<Arc<Stream>>,
    pub notifies: Slab<LocalNotify>,
    pub events: Slab<LocalEvent>,
    pub contexts: Slab<Context>,
    pub ipc_imports: HashMap<Vec<u8>, IpcImport>,
    pub devices: Vec<DeviceCtx>,
    next_generation: u32,
}

impl Local {
    /// A fresh generation number for a new handle.
    pub(crate) fn new_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1) & 0xFF_FFFF;
        self.next_generation
    }

    /// The region containing address `addr`, with its base.
    pub(crate) fn region_at(&self, addr: usize) -> Option<(usize, &Region)> {
        let (&base, r) = self.regions.range(..=addr).next_back()?;
        (addr < base + r.size).then_some((base, r))
    }

    /// The memory handle a caller-visible handle names (internal handles are not visible).
    pub(crate) fn mem_handle(&self, h: *const c_void) -> R<usize> {
        let invalid = || fail(ACL_ERROR_RT_PARAM_INVALID, "not a live physical memory handle of this process");
        let (key, generation) = decode(TAG_MEM, h).ok_or_else(invalid)?;
        match self.handles.get(key) {
            Some(m) if m.generation == generation && m.origin != Origin::Internal && !m.freed => Ok(key),
            Some(m) if m.generation == generation && m.freed => bail(
                ACL_ERROR_RT_PARAM_INVALID,
                "the handle was already freed (aclrtFreePhysical), its release waits for the unmap",
            ),
            _ => Err(invalid()),
        }
    }
}

/// Cross-process identity of this simulator instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Me {
    pub slot: u32,
    pub pid: i32,
    pub start: u64,
    pub bare_tgid: i32,
}

/// The registry of another simulated server (another simulator directory) that this process imported
/// fabric handles from, and its slot there: it holds those objects as a process of that server would.
pub(crate) struct Foreign {
    pub server_id: u64,
    pub reg: Registry,
    pub slot: u32,
}

/// The simulator as this process sees it.
pub(crate) struct Sim {
    pub devices: u32,
    pub hbm_bytes: u64,
    /// Device memory is backed only when first written (`ACLSHM_SIM_COMMIT=lazy`).
    pub lazy_commit: bool,
    pub reg: Registry,
    pub me: Me,
    pub local: Mutex<Local>,
    /// Other servers' registries, by index (never removed before the process leaves).
    pub foreign: Mutex<Vec<Arc<Foreign>>>,
    detached: AtomicBool,
}

static SIM: OnceLock<Result<Sim, String>> = OnceLock::new();
static FORKED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The calling thread's current device and the context epoch it was set in.
    static CURRENT: std::cell::Cell<Option<(u32, u64)>> = const { std::cell::Cell::new(None) };
    /// The calling thread's current context if it is one from aclrtCreateContext (its key and generation);
    /// None while it is its device's default context.
    static CONTEXT: std::cell::Cell<Option<(usize, u32)>> = const { std::cell::Cell::new(None) };
}

/// Whether to print failing calls (`ACLSHM_SIM_LOG=1`).
pub(crate) fn log_enabled() -> bool {
    static LOG: OnceLock<bool> = OnceLock::new();
    *LOG.get_or_init(|| std::env::var("ACLSHM_SIM_LOG").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// The simulator, attached on first use.
/// The registry a tool looks at: this process's own if its simulator joined one, else the directory's,
/// opened as an observer without joining (so looking changes nothing).
pub(crate) enum Observed {
    Joined(&'static Sim),
    Observer(registry::Registry),
}

impl Observed {
    pub(crate) fn reg(&self) -> &registry::Registry {
        match self {
            Observed::Joined(s) => &s.reg,
            Observed::Observer(r) => r,
        }
    }
}

/// What a tool looks at (see [`Observed`]); None when the directory has no registry.
pub(crate) fn observe() -> R<Option<Observed>> {
    if let Some(Ok(s)) = SIM.get()
        && !s.detached.load(Ordering::Acquire)
    {
        return Ok(Some(Observed::Joined(s)));
    }
    let cfg = Config::from_env().map_err(|e| fail(ACL_ERROR_INVALID_PARAM, e))?;
    let reg = registry::Registry::open_existing(&cfg.dir).map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
    Ok(reg.map(Observed::Observer))
}

/// The simulator directory this process uses (joined or not).
pub(crate) fn dir() -> R<std::path::PathBuf> {
    if let Some(Ok(s)) = SIM.get() {
        return Ok(s.reg.dir().to_path_buf());
    }
    Ok(Config::from_env().map_err(|e| fail(ACL_ERROR_INVALID_PARAM, e))?.dir)
}

/// Release what dead processes left in the directory, without joining it if this process has not;
/// an observer that leaves the registry empty retires it (removes the directory), as the last process to
/// leave does. Returns how many dead processes there were.
pub(crate) fn reclaim_observed() -> R<u32> {
    let Some(obs) = observe()? else { return Ok(0) };
    match obs {
        Observed::Joined(s) => s.reclaim(),
        Observed::Observer(reg) => {
            let mut g = reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
            if reg.retired() {
                return Ok(0);
            }
            let dead = g.t().dead_procs(false);
            for &p in &dead {
                g.t().release_proc(p, reg.words(), reg.dir());
            }
            g.t().sweep(reg.words(), reg.dir());
            if g.t().is_empty() {
                reg.retire(g);
            }
            Ok(dead.len() as u32)
        }
    }
}

pub(crate) fn sim() -> R<&'static Sim> {
    if FORKED.load(Ordering::Relaxed) {
        return bail(
            ACL_ERROR_RT_DEV_SETUP_ERROR,
            "the simulator was attached before fork(); a forked child must exec before using it (as with CANN)",
        );
    }
    match SIM.get_or_init(|| {
        Sim::open().inspect_err(|e| eprintln!("aclshm-sim: cannot start the ACL runtime simulator: {e}"))
    }) {
        Ok(s) if !s.detached.load(Ordering::Acquire) => Ok(s),
        Ok(_) => bail(ACL_ERROR_RT_DEV_SETUP_ERROR, "the simulator was detached (the process is exiting)"),
        Err(e) => bail(ACL_ERROR_RT_DEV_SETUP_ERROR, e.clone()),
    }
}

/// The simulator if it is already attached (for calls that must not attach it).
pub(crate) fn sim_if_attached() -> Option<&'static Sim> {
    match SIM.get() {
        Some(Ok(s)) if !s.detached.load(Ordering::Acquire) && !FORKED.load(Ordering::Relaxed) => Some(s),
        _ => None,
    }
}

/// The simulator for a stream task about to run: it was attached when the task was queued, but the
/// process may have detached it since (it is exiting), and then the task fails.
pub(crate) fn sim_for_task() -> R<&'static Sim> {
    sim_if_attached().ok_or_else(|| fail(ACL_ERROR_RT_STREAM_ABORT, "the simulator was detached while work was queued"))
}

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

extern "C" fn at_exit() {
    if let Some(Ok(s)) = SIM.get() {
        // A child forked without exec inherits this handler: it must not detach its parent's slot.
        if s.me.pid == aclshm_os::pid() && !FORKED.load(Ordering::Relaxed) {
            s.detach();
        }
    }
}

impl Sim {
    fn open() -> Result<Sim, String> {
        let cfg = Config::from_env()?;
        crate::fault::load_env()?;
        let pid = aclshm_os::pid();
        let start = aclshm_os::start_time(pid).ok_or("cannot read this process's start time from /proc")?;
        let bare_tgid = aclshm_os::bare_tgid();
        let identity = ProcSlot { pid, bare_tgid, start, instance: aclshm_os::random_u64() };
        // The last process to leave a directory retires its registry; one that opened the file just before
        // sees that once it holds the lock, and starts over with a new registry.
        let mut joined = None;
        for _ in 0..50 {
            let reg = Registry::attach(&cfg)?;
            if let Some((devices, hbm_bytes, slot)) = Self::join(&reg, &cfg, identity)? {
                joined = Some((reg, devices, hbm_bytes, slot));
                break;
            }
        }
        let (reg, devices, hbm_bytes, slot) =
            joined.ok_or_else(|| format!("{}: the registry keeps being retired under us", cfg.dir.display()))?;

        // SAFETY: registering plain extern "C" functions that only touch this module's statics.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
        let local = Local { devices: (0..devices).map(|_| DeviceCtx::default()).collect(), ..Local::default() };
        Ok(Sim {
            devices,
            hbm_bytes,
            lazy_commit: cfg.lazy_commit,
            reg,
            me: Me { slot, pid, start, bare_tgid },
            local: Mutex::new(local),
            foreign: Mutex::new(Vec::new()),
            detached: AtomicBool::new(false),
        })
    }

    /// Register in `reg` (releasing what dead processes left, setting or checking the configuration);
    /// None if the registry was retired before we got its lock.
    fn join(reg: &Registry, cfg: &Config, me: ProcSlot) -> Result<Option<(u32, u64, u32)>, String> {
        let mut g = reg.lock()?;
        if reg.retired() {
            return Ok(None);
        }
        let words = reg.words();
        let boot = aclshm_os::boot_id();
        let boot_changed = g.t().boot_id != boot;
        for p in g.t().dead_procs(boot_changed) {
            g.t().release_proc(p, words, reg.dir());
        }
        if g.owner_died {
            g.t().sweep(words, reg.dir());
        }
        let t = g.t();
        t.boot_id = boot;
        if t.is_empty() {
            // Nobody is here: this process sets the configuration.
            t.devices = cfg.devices;
            t.hbm_bytes = cfg.hbm_bytes;
            t.used = [0; crate::config::MAX_DEVICES as usize];
        } else if let Some(conflict) = t.config_conflict(cfg) {
            return Err(format!("{}: {conflict}", cfg.dir.display()));
        }
        let slot = t
            .add_proc(me)
            .ok_or_else(|| format!("{}: {} processes are attached already", cfg.dir.display(), registry::MAX_PROCS))?;
        Ok(Some((t.devices, t.hbm_bytes, slot)))
    }

    /// Leave the directory: release everything this process holds (as the driver does when a process
    /// exits) and, if nothing is left, remove the registry and the directory.
    fn detach(&self) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        for f in self.foreign.lock().iter() {
            leave(&f.reg, f.slot);
        }
        let Ok(mut g) = self.reg.lock() else { return };
        g.t().release_proc(self.me.slot, self.reg.words(), self.reg.dir());
        // What processes that died left goes too: the last one out must not leave it behind.
        self.reap(&mut g);
        if g.t().is_empty() {
            self.reg.retire(g);
        }
    }

    /// Reclaim what dead processes left; returns how many there were.
    pub(crate) fn reclaim(&self) -> R<u32> {
        let mut g = self.lock()?;
        Ok(self.reap(&mut g))
    }

    /// With the registry locked, release what dead processes held, as the driver does when a process
    /// exits. Called wherever any process's liveness matters: attaching, a full device, statistics (an
    /// import needs only its exporter's: [`reap_if_dead`](Sim::reap_if_dead)). Costs one read of /proc per
    /// attached process.
    pub(crate) fn reap(&self, g: &mut registry::Guard<'_>) -> u32 {
        let dead = g.t().dead_procs(false);
        if dead.is_empty() && !g.owner_died {
            return 0;
        }
        for &p in &dead {
            g.t().release_proc(p, self.reg.words(), self.reg.dir());
        }
        g.owner_died = false;
        self.sweep(g);
        dead.len() as u32
    }

    /// With the registry locked, [`reap`](Sim::reap) if process slot `p` (the exporter or creator of what
    /// is being imported) died: one read of /proc rather than one per attached process, so an import costs
    /// the same however many processes share the simulator. An import only needs its exporter's liveness
    /// (the driver frees a dead process's handles); whatever else died is reaped by the next full look.
    pub(crate) fn reap_if_dead(&self, g: &mut registry::Guard<'_>, p: Option<u32>) {
        let dead = p.is_some_and(|p| {
            let t = g.t();
            t.proc_live.get(p as usize) && !aclshm_os::alive(t.procs[p as usize].pid, t.procs[p as usize].start)
        });
        if dead || g.owner_died {
            self.reap(g);
        }
    }

    /// With the registry locked, remove objects nobody holds any more and unlink their files (under the
    /// lock, so a name is never reused before its file is gone).
    pub(crate) fn sweep(&self, g: &mut registry::Guard<'_>) {
        g.t().sweep(self.reg.words(), self.reg.dir());
    }

    /// Lock the registry.
    pub(crate) fn lock(&self) -> R<registry::Guard<'_>> {
        self.reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))
    }

    /// A device id checked against the device count.
    pub(crate) fn device(&self, id: i32) -> R<u32> {
        u32::try_from(id).ok().filter(|&d| d < self.devices).ok_or_else(|| {
            fail(
                ACL_ERROR_RT_INVALID_DEVICEID,
                format!("device {id} does not exist (the simulator has {} devices)", self.devices),
            )
        })
    }

    /// The calling thread's current device, or CONTEXT_NULL if it has none (no aclrtSetDevice in this
    /// thread, or the device was reset since).
    pub(crate) fn current(&self, l: &Local) -> R<u32> {
        match CURRENT.get() {
            Some((d, epoch)) if l.devices[d as usize].up() && l.devices[d as usize].epoch == epoch => Ok(d),
            _ => bail(ACL_ERROR_RT_CONTEXT_NULL, "no current device in this thread: call aclrtSetDevice first"),
        }
    }

    /// Make `d` the calling thread's current device, in its default context.
    pub(crate) fn set_current(&self, l: &Local, d: u32) {
        CURRENT.set(Some((d, l.devices[d as usize].epoch)));
        CONTEXT.set(None);
    }

    /// Make context `key` (on device `d`) the calling thread's current context.
    pub(crate) fn set_current_context(&self, l: &Local, d: u32, key: usize) {
        CURRENT.set(Some((d, l.devices[d as usize].epoch)));
        CONTEXT.set(Some((key, l.contexts[key].generation)));
    }

    /// The calling thread's current context from aclrtCreateContext, if it is one and still alive.
    pub(crate) fn current_context(&self, l: &Local) -> Option<usize> {
        CONTEXT.get().filter(|&(k, g)| l.contexts.get(k).is_some_and(|c| c.generation == g)).map(|(k, _)| k)
    }

    /// Forget the calling thread's current device and context.
    pub(crate) fn clear_current(&self) {
        CURRENT.set(None);
        CONTEXT.set(None);
    }

    /// The registry of another server this process joined, by its index in `foreign`.
    pub(crate) fn foreign(&self, i: usize) -> R<Arc<Foreign>> {
        self.foreign.lock().get(i).cloned().ok_or_else(|| fail(ACL_ERROR_RT_INTERNAL_ERROR, "no such foreign server"))
    }

    /// Join the registry of the server whose directory is `dir` and whose identity is `server_id` (once per
    /// process): its index in `foreign`. None if no simulator runs there or it is another server now.
    pub(crate) fn join_foreign(&self, dir: &std::path::Path, server_id: u64) -> R<Option<usize>> {
        let mut v = self.foreign.lock();
        if let Some(i) = v.iter().position(|f| f.server_id == server_id) {
            return Ok(Some(i));
        }
        let reg = match Registry::open_existing(dir) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return bail(ACL_ERROR_RT_DRV_INTERNAL_ERROR, format!("another server's registry: {e}")),
        };
        let slot = {
            let mut g = reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
            if reg.retired() || g.t().server_id != server_id {
                return Ok(None);
            }
            let me = ProcSlot {
                pid: self.me.pid,
                bare_tgid: self.me.bare_tgid,
                start: self.me.start,
                instance: aclshm_os::random_u64(),
            };
            g.t()
                .add_proc(me)
                .ok_or_else(|| fail(ACL_ERROR_RT_RESOURCE_ALLOC_FAIL, "the other server has no free process slot"))?
        };
        v.push(Arc::new(Foreign { server_id, reg, slot }));
        Ok(Some(v.len() - 1))
    }

    /// Drop a physical object this process holds in another server's registry.
    pub(crate) fn drop_foreign_holder(&self, server: usize, phys: usize, serial: u64) -> R {
        let f = self.foreign(server)?;
        let mut g = f.reg.lock().map_err(|e| fail(ACL_ERROR_RT_INTERNAL_ERROR, e))?;
        if let Some(s) = g.t().phys_if(phys, serial) {
            s.holders.clear(f.slot as usize);
        }
        g.t().sweep(f.reg.words(), f.reg.dir());
        Ok(())
    }

    /// Drop a physical object this process holds: clear its holder bit and destroy it if it was the last.
    pub(crate) fn drop_holder(&self, phys: usize, serial: u64) -> R {
        let mut g = self.lock()?;
        let me = self.me.slot as usize;
        if let Some(s) = g.t().phys_if(phys, serial) {
            s.holders.clear(me);
            if s.owner == self.me.slot {
                s.export_open = 0;
            }
        }
        self.sweep(&mut g);
        Ok(())
    }

    /// Release local handle `key` if it is freed and unmapped; returns whether it was released.
    pub(crate) fn release_if_done(&self, l: &mut Local, key: usize) -> R<bool> {
        let done = l.handles.get(key).is_some_and(|m| m.freed && m.maps == 0);
        if !done {
            return Ok(false);
        }
        let m = l.handles.remove(key);
        match m.server {
            Some(server) => self.drop_foreign_holder(server, m.phys, m.serial)?,
            None => self.drop_holder(m.phys, m.serial)?,
        }
        Ok(true)
    }
}

/// Leave another server's registry: release what this process held there (its slot), and retire the
/// registry if that left it empty, as the last process out does.
fn leave(reg: &Registry, slot: u32) {
    let Ok(mut g) = reg.lock() else { return };
    if reg.retired() {
        return;
    }
    g.t().release_proc(slot, reg.words(), reg.dir());
    if g.t().is_empty() {
        reg.retire(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_other_tags() {
        let h = encode(TAG_MEM, 42, 7);
        assert_eq!(decode(TAG_MEM, h), Some((42, 7)));
        assert_eq!(decode(TAG_STREAM, h), None);
        assert_eq!(decode(TAG_MEM, std::ptr::null()), None);
        assert_eq!(decode(TAG_MEM, 0x1234 as *const c_void), None);
        // Not a canonical address: dereferencing it would fault.
        assert!(h as usize > 0x0000_8000_0000_0000);
    }
}
