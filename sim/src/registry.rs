//! The registry: the simulated driver's cross-process state, in one file of the simulator directory that
//! every attached process maps.
//!
//! ```text
//!  registry file (sparse: only pages of live slots are ever touched)
//!  +--------------------------+ 0
//!  | Control                  | magic, layout version, state, file size,
//!  |                          | robust process-shared mutex
//!  +--------------------------+ 4 KiB
//!  | Tables  (under the lock) | boot id, devices, capacity, bytes used per device,
//!  |                          | process slots (pid + start time), physical objects
//!  |                          | (size, device, holders, export, whitelist), IPC keys,
//!  |                          | notifies, IPC events, live-slot bitmaps
//!  +--------------------------+
//!  | Words   (atomics)        | one flag word per physical object (revoked),
//!  |                          | one futex word per notify (its value),
//!  |                          | per IPC event: records queued, completed, time
//!  +--------------------------+
//! ```
//!
//! Invariants:
//! - `Tables` is only touched with the mutex held, so a `&mut Tables` under the lock is exclusive in every
//!   process. `Words` are atomics read and written without the lock (a notify's value is a futex).
//! - A process holds a physical object, IPC key or notify if its bit is set in the object's `holders` or
//!   `importers`; the object is destroyed when the last bit goes, and its bytes return to its device.
//! - A process is named by pid and start time, so a recycled pid is never taken for the dead process. When
//!   a process dies, whoever locks the registry next (on attach, or on an allocation that finds a device
//!   full) releases what it held, exactly as if it had exited cleanly.
//! - The mutex is robust: if its holder dies, the next locker gets it with `EOWNERDEAD`, marks it consistent
//!   and reclaims (updates are ordered so that a half-done one leaves at worst an object no one holds,
//!   which the sweep removes).

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aclshm_os::SharedMapping;

use crate::config::{Config, MAX_DEVICES};

/// Process slots: processes attached to one directory at once.
pub(crate) const MAX_PROCS: usize = 256;
/// Physical memory objects (aclrtMallocPhysical and aclrtMalloc allocations) alive at once.
pub(crate) const MAX_PHYS: usize = 8192;
/// IPC memory keys alive at once.
pub(crate) const MAX_KEYS: usize = 1024;
/// Notifies alive at once.
pub(crate) const MAX_NOTIFIES: usize = 1024;
/// IPC events (created with `ACL_EVENT_IPC`) alive at once; other events are process-local.
pub(crate) const MAX_EVENTS: usize = 1024;
/// Whitelist entries per shareable handle.
pub(crate) const WL_VMM: usize = 64;
/// Whitelist entries per IPC memory key.
pub(crate) const WL_IPC: usize = 64;
/// Whitelist entries per notify: the driver admits at most 15 processes besides the creator.
pub(crate) const WL_NOTIFY: usize = 15;
/// Length of an IPC key buffer: 64 characters and a NUL.
pub(crate) const KEY_LEN: usize = 65;

/// `Words::phys_flags` bit: the exporter of this IPC memory closed it or freed it while importers still
/// held it; on an NPU the driver tears their pages down, so their accesses fail.
pub(crate) const PHYS_REVOKED: u32 = 1;

const MAGIC: [u8; 8] = *b"ACLSHMRG";
/// Bumped whenever the layout changes: a process never maps a registry of another layout.
const LAYOUT_VERSION: u32 = 2;
const STATE_LIVE: u32 = 1;
const STATE_DEAD: u32 = 2;

const fn words(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// A fixed-size bitmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bits<const W: usize>([u64; W]);

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits([0; W])
    }
}

impl<const W: usize> Bits<W> {
    pub(crate) fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    pub(crate) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub(crate) fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
    pub(crate) fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    /// The set bits, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }
    /// The first clear bit at or after `from` (wrapping), below `limit`.
    pub(crate) fn first_clear(&self, from: usize, limit: usize) -> Option<usize> {
        (0..limit).map(|k| (from + k) % limit).find(|&i| !self.get(i))
    }
}

/// Processes as a bitmap over process slots.
pub(crate) type Procs = Bits<{ words(MAX_PROCS) }>;

/// One whitelisted pid and when it was added (clock ticks since boot): a process that started after its
/// pid was whitelisted is another process that reused the pid, and is refused (the driver does the same).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WlEntry {
    pub pid: i32,
    pub _pad: u32,
    pub added: u64,
}

/// A process attached to the directory. Two simulator instances in one process (the embedded one and a
/// loaded drop-in library) are two slots with one pid and different instance numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcSlot {
    pub pid: i32,
    pub bare_tgid: i32,
    pub start: u64,
    pub instance: u64,
}

/// `PhysSlot::kind`: from aclrtMallocPhysical.
pub(crate) const PHYS_VMM: u32 = 1;
/// `PhysSlot::kind`: from aclrtMalloc.
pub(crate) const PHYS_MALLOC: u32 = 2;

/// A physical memory object: one shared-memory file `phys-<serial>` in the directory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhysSlot {
    pub serial: u64,
    pub size: u64,
    pub page: u64,
    pub kind: u32,
    pub device: u32,
    /// Process slot of the allocating process.
    pub owner: u32,
    /// Bumped each time the slot is reused, so stale shareable handles do not match.
    pub generation: u32,
    /// Processes holding a handle to it.
    pub holders: Procs,
    /// The shareable handle, 0 until exported.
    pub token: u64,
    /// Exported with pid validation disabled.
    pub no_pid_check: u32,
    /// 1 from export until the exporter frees its handle (or dies): imports are possible only then.
    pub export_open: u32,
    pub wl_len: u32,
    pub _pad: u32,
    pub wl: [WlEntry; WL_VMM],
}

/// An IPC memory key (aclrtIpcMemGetExportKey).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeySlot {
    pub key: [u8; 72],
    pub phys: u32,
    pub device: u32,
    pub phys_serial: u64,
    /// The exported length, from the allocation's start.
    pub size: u64,
    /// Process slot of the exporter.
    pub exporter: u32,
    /// 1 until the exporter closes the key, frees the memory or dies.
    pub open: u32,
    /// Processes that imported it and have not closed it.
    pub importers: Procs,
    pub no_pid_check: u32,
    pub wl_len: u32,
    pub wl: [WlEntry; WL_IPC],
}

/// A notify.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotifySlot {
    pub serial: u64,
    pub device: u32,
    /// Process slot and pid of the creator.
    pub creator: u32,
    pub creator_pid: i32,
    /// 1 until the creator destroys it (or dies).
    pub creator_holds: u32,
    /// 1 once exported; the key is then set.
    pub exported: u32,
    pub no_pid_check: u32,
    pub key: [u8; 72],
    /// Processes holding a handle (the creator included).
    pub holders: Procs,
    pub wl_len: u32,
    pub _pad: u32,
    pub wl: [WlEntry; WL_NOTIFY],
}

/// An IPC event: its counters and time stamp are in `Words`, so a record in one process completes a wait
/// in another.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct EventSlot {
    pub serial: u64,
    pub device: u32,
    /// Process slot and pid of the creator.
    pub creator: u32,
    pub creator_pid: i32,
    /// 1 until the creator destroys it (or dies): it can be opened only then.
    pub creator_holds: u32,
    /// The creation flags.
    pub flags: u32,
    /// 1 once the creator took its IPC handle.
    pub exported: u32,
    /// Processes holding a handle (the creator included).
    pub holders: Procs,
}

/// The lock-protected part of the registry.
#[repr(C)]
pub(crate) struct Tables {
    /// This directory's identity as a simulated server: fabric handles name it (random, set at creation).
    pub server_id: u64,
    pub boot_id: [u8; 36],
    /// 1 once a process has set the configuration.
    pub configured: u32,
    pub devices: u32,
    pub _pad: u32,
    pub hbm_bytes: u64,
    pub next_serial: u64,
    pub used: [u64; MAX_DEVICES as usize],
    pub proc_live: Procs,
    pub phys_live: Bits<{ words(MAX_PHYS) }>,
    pub key_live: Bits<{ words(MAX_KEYS) }>,
    pub notify_live: Bits<{ words(MAX_NOTIFIES) }>,
    pub event_live: Bits<{ words(MAX_EVENTS) }>,
    pub phys_hint: u32,
    pub key_hint: u32,
    pub notify_hint: u32,
    pub event_hint: u32,
    pub procs: [ProcSlot; MAX_PROCS],
    pub phys: [PhysSlot; MAX_PHYS],
    pub keys: [KeySlot; MAX_KEYS],
    pub notifies: [NotifySlot; MAX_NOTIFIES],
    pub events: [EventSlot; MAX_EVENTS],
}

/// The lock-free part of the registry.
#[repr(C)]
pub(crate) struct Words {
    pub phys_flags: [AtomicU32; MAX_PHYS],
    pub notify_value: [AtomicU32; MAX_NOTIFIES],
    /// Per IPC event: records queued (in any process), records completed, and when the last completed.
    pub event_recorded: [AtomicU32; MAX_EVENTS],
    pub event_done: [AtomicU32; MAX_EVENTS],
    pub event_stamp: [AtomicU64; MAX_EVENTS],
}

#[repr(C)]
struct Control {
    magic: [u8; 8],
    version: u32,
    state: AtomicU32,
    file_size: u64,
    tables_offset: u64,
    words_offset: u64,
    /// Changed by pthread calls in every process while others hold `&Control`: hence the cell.
    mutex: std::cell::UnsafeCell<libc::pthread_mutex_t>,
}

const TABLES_OFFSET: usize = 4096;
const WORDS_OFFSET: usize = (TABLES_OFFSET + size_of::<Tables>()).next_multiple_of(4096);
const FILE_SIZE: usize = (WORDS_OFFSET + size_of::<Words>()).next_multiple_of(4096);
const _: () = assert!(size_of::<Control>() <= TABLES_OFFSET);

/// The name of the registry file in the directory.
pub(crate) const REGISTRY_FILE: &str = "registry";

/// The file name of physical object `serial`.
pub(crate) fn phys_file(serial: u64) -> String {
    format!("phys-{serial:016x}")
}

/// A mapped registry. It may be shared between threads: its lock-protected part is only reached through
/// a [`Guard`] holding the process-shared mutex, and its other part is atomics.
pub(crate) struct Registry {
    map: SharedMapping,
    dir: PathBuf,
}

impl Registry {
    /// Open the registry in `cfg.dir`, creating it (and the directory) if needed.
    pub(crate) fn attach(cfg: &Config) -> Result<Registry, String> {
        aclshm_os::ensure_private_dir(&cfg.dir)
            .map_err(|e| format!("simulator directory {}: {e} (ACLSHM_SIM_DIR chooses another)", cfg.dir.display()))?;
        let path = cfg.dir.join(REGISTRY_FILE);
        // Another process may be creating or removing the registry at the same moment: retry a few times.
        for _ in 0..50 {
            match aclshm_os::open_file(&path) {
                Ok(fd) => {
                    let len = aclshm_os::check_private_file(&fd, &path).map_err(|e| e.to_string())?;
                    if len == 0 {
                        // Being created by someone else right now (link happens after sizing, so this is an
                        // unrelated empty file); refuse rather than guess.
                        return Err(format!("{} is empty; remove it", path.display()));
                    }
                    let reg = Self::map(&fd, &cfg.dir)?;
                    reg.check_layout(len, &path)?;
                    if reg.control().state.load(Ordering::Acquire) == STATE_DEAD {
                        // Its last user is removing it; wait for the unlink and start over.
                        drop(reg);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        continue;
                    }
                    return Ok(reg);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match Self::create(cfg, &path) {
                    Ok(reg) => return Ok(reg),
                    // Another process published first, or the directory was removed under us: again.
                    Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound) => continue,
                    Err(e) => return Err(format!("create {}: {e}", path.display())),
                },
                Err(e) => return Err(format!("open {}: {e}", path.display())),
            }
        }
        Err(format!("{} keeps appearing and disappearing; is something else using the directory?", path.display()))
    }

    /// Open the registry in `dir` if there is one, creating nothing: for tools that look at a directory
    /// without joining it. None if there is no registry (or its last user is retiring it).
    pub(crate) fn open_existing(dir: &Path) -> Result<Option<Registry>, String> {
        let path = dir.join(REGISTRY_FILE);
        let fd = match aclshm_os::open_file(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        };
        let len = aclshm_os::check_private_file(&fd, &path).map_err(|e| e.to_string())?;
        if len == 0 {
            return Ok(None);
        }
        let reg = Self::map(&fd, dir)?;
        reg.check_layout(len, &path)?;
        Ok((reg.control().state.load(Ordering::Acquire) != STATE_DEAD).then_some(reg))
    }

    fn create(cfg: &Config, path: &Path) -> io::Result<Registry> {
        aclshm_os::ensure_private_dir(&cfg.dir)?;
        let tmp = cfg.dir.join(format!(".registry-{}-{:x}", aclshm_os::pid(), aclshm_os::random_u64()));
        let fd = aclshm_os::create_file(&tmp)?;
        let result = (|| {
            // Sparse: pages are allocated as slots are used.
            aclshm_os::set_len(&fd, FILE_SIZE as u64)?;
            let reg = Self::map(&fd, &cfg.dir).map_err(io::Error::other)?;
            // SAFETY: nobody else can see the file yet, so we have the mapping to ourselves.
            unsafe { reg.init(cfg)? };
            // Publish: link fails if another process published first, and then we use theirs.
            fs::hard_link(&tmp, path)?;
            Ok(reg)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Map `FILE_SIZE` bytes of the registry file `fd`: its length was just set, or `check_layout`
    /// compares it before anything past the first page (`Control`) is read.
    fn map(fd: &OwnedFd, dir: &Path) -> Result<Registry, String> {
        let map = SharedMapping::map(fd, FILE_SIZE).map_err(|e| format!("map the registry: {e}"))?;
        Ok(Registry { map, dir: dir.to_path_buf() })
    }

    /// # Safety
    /// 1. No other process can reach the mapping yet.
    unsafe fn init(&self, cfg: &Config) -> io::Result<()> {
        let c = self.map.ptr().cast::<Control>();
        // SAFETY: the mapping is FILE_SIZE bytes of zeroes, ours alone (precondition 1); Control fits.
        unsafe {
            (*c).magic = MAGIC;
            (*c).version = LAYOUT_VERSION;
            (*c).file_size = FILE_SIZE as u64;
            (*c).tables_offset = TABLES_OFFSET as u64;
            (*c).words_offset = WORDS_OFFSET as u64;
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            let rc = libc::pthread_mutex_init(std::cell::UnsafeCell::raw_get(&raw const (*c).mutex), &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let t = &mut *self.map.ptr().add(TABLES_OFFSET).cast::<Tables>();
            t.boot_id = aclshm_os::boot_id();
            t.server_id = aclshm_os::random_u64() | 1;
            t.devices = cfg.devices;
            t.hbm_bytes = cfg.hbm_bytes;
            t.configured = 1;
            (*c).state.store(STATE_LIVE, Ordering::Release);
        }
        Ok(())
    }

    fn check_layout(&self, len: u64, path: &Path) -> Result<(), String> {
        let c = self.control();
        if c.magic != MAGIC {
            return Err(format!("{} is not an aclshm simulator registry", path.display()));
        }
        if c.version != LAYOUT_VERSION
            || c.file_size != FILE_SIZE as u64
            || len != FILE_SIZE as u64
            || c.tables_offset != TABLES_OFFSET as u64
            || c.words_offset != WORDS_OFFSET as u64
        {
            return Err(format!(
                "{} was made by another version of the simulator (layout {}, {} bytes; this one uses layout \
                 {LAYOUT_VERSION}, {FILE_SIZE} bytes); stop the processes using it and remove the directory, \
                 or set ACLSHM_SIM_DIR",
                path.display(),
                c.version,
                c.file_size
            ));
        }
        Ok(())
    }

    fn control(&self) -> &Control {
        // SAFETY: the mapping starts with a Control; its fields other than the mutex and state are written
        // once before the file is published, state is atomic, and the mutex is in an UnsafeCell (only ever
        // reached through raw pointers).
        unsafe { &*self.map.ptr().cast::<Control>() }
    }

    /// The lock-free words.
    pub(crate) fn words(&self) -> &Words {
        // SAFETY: Words lives at WORDS_OFFSET inside the mapping and is only ever accessed through shared
        // references (it is all atomics).
        unsafe { &*self.map.ptr().add(WORDS_OFFSET).cast::<Words>() }
    }

    /// The directory this registry lives in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the registry lock. `repaired` on the guard says the previous holder died holding it.
    pub(crate) fn lock(&self) -> Result<Guard<'_>, String> {
        let c = self.map.ptr().cast::<Control>();
        // SAFETY: the mutex was initialised process-shared and robust before the file was published.
        let rc = unsafe { libc::pthread_mutex_lock(std::cell::UnsafeCell::raw_get(&raw const (*c).mutex)) };
        let owner_died = match rc {
            0 => false,
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex; marking it consistent is how a robust mutex is recovered.
                unsafe { libc::pthread_mutex_consistent(std::cell::UnsafeCell::raw_get(&raw const (*c).mutex)) };
                true
            }
            e => return Err(format!("lock the simulator registry: {}", io::Error::from_raw_os_error(e))),
        };
        Ok(Guard { reg: self, owner_died })
    }

    /// Whether the registry was retired by its last user (meaningful with the lock held).
    pub(crate) fn retired(&self) -> bool {
        self.control().state.load(Ordering::Acquire) == STATE_DEAD
    }

    /// Mark the registry dead and remove it and the directory (if empty). Called with the lock held, by the
    /// last process to leave; anyone attaching meanwhile sees the state and starts over.
    pub(crate) fn retire(&self, g: Guard<'_>) {
        self.control().state.store(STATE_DEAD, Ordering::Release);
        let _ = fs::remove_file(self.dir.join(REGISTRY_FILE));
        drop(g);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The registry lock, held. Unlocks on drop.
pub(crate) struct Guard<'a> {
    reg: &'a Registry,
    /// The previous holder died holding the lock: its update may be half done.
    pub owner_died: bool,
}

impl Guard<'_> {
    /// The tables.
    pub(crate) fn t(&mut self) -> &mut Tables {
        // SAFETY: Tables lives at TABLES_OFFSET; holding the process-shared mutex makes this the only
        // reference to it in any process, for as long as the guard (and so the borrow) lives.
        unsafe { &mut *self.reg.map.ptr().add(TABLES_OFFSET).cast::<Tables>() }
    }

    /// The lock-free words (reachable with the lock held too).
    pub(crate) fn words(&self) -> &Words {
        self.reg.words()
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let c = self.reg.map.ptr().cast::<Control>();
        // SAFETY: we hold the mutex.
        unsafe { libc::pthread_mutex_unlock(std::cell::UnsafeCell::raw_get(&raw const (*c).mutex)) };
    }
}

impl Tables {
    /// Whether the configuration of a live simulator differs from what `cfg` asks for explicitly.
    pub(crate) fn config_conflict(&self, cfg: &Config) -> Option<String> {
        let dev = cfg.devices_explicit && cfg.devices != self.devices;
        let hbm = cfg.hbm_explicit && cfg.hbm_bytes != self.hbm_bytes;
        (dev || hbm).then(|| {
            format!(
                "simulator directory is in use with {} devices of {} bytes; this process asks for {} devices of {} \
                 bytes (ACLSHM_SIM_DEVICES / ACLSHM_SIM_HBM_BYTES); use the same values or another ACLSHM_SIM_DIR",
                self.devices, self.hbm_bytes, cfg.devices, cfg.hbm_bytes
            )
        })
    }

    /// Whether nothing at all is alive: no process and no object.
    pub(crate) fn is_empty(&self) -> bool {
        self.proc_live.is_empty()
            && self.phys_live.is_empty()
            && self.key_live.is_empty()
            && self.notify_live.is_empty()
            && self.event_live.is_empty()
    }

    /// A fresh serial number.
    pub(crate) fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Register a process; None if every slot is taken.
    pub(crate) fn add_proc(&mut self, slot: ProcSlot) -> Option<u32> {
        let i = self.proc_live.first_clear(0, MAX_PROCS)?;
        self.proc_live.set(i);
        self.procs[i] = slot;
        Some(i as u32)
    }

    /// The pids of live process slots whose process has died, with their slots.
    pub(crate) fn dead_procs(&self, boot_changed: bool) -> Vec<u32> {
        self.proc_live
            .iter()
            .filter(|&i| boot_changed || !aclshm_os::alive(self.procs[i].pid, self.procs[i].start))
            .map(|i| i as u32)
            .collect()
    }

    /// Release everything process slot `p` holds, then free the slot. Used for a process that died and for
    /// one that leaves; both end the same way on an NPU, where the driver frees a process's memory when it
    /// exits.
    pub(crate) fn release_proc(&mut self, p: u32, words: &Words, dir: &Path) {
        let pi = p as usize;
        let phys: Vec<usize> = self.phys_live.iter().collect();
        for i in phys {
            let s = &mut self.phys[i];
            if s.owner == p && s.export_open == 1 {
                s.export_open = 0;
            }
            if s.holders.get(pi) {
                s.holders.clear(pi);
            }
        }
        let keys: Vec<usize> = self.key_live.iter().collect();
        for i in keys {
            let k = &mut self.keys[i];
            k.importers.clear(pi);
            if k.exporter == p && k.open == 1 {
                k.open = 0;
                if !k.importers.is_empty() {
                    words.phys_flags[k.phys as usize].fetch_or(PHYS_REVOKED, Ordering::AcqRel);
                }
            }
        }
        let notifies: Vec<usize> = self.notify_live.iter().collect();
        for i in notifies {
            let n = &mut self.notifies[i];
            n.holders.clear(pi);
            if n.creator == p {
                n.creator_holds = 0;
            }
        }
        let events: Vec<usize> = self.event_live.iter().collect();
        for i in events {
            let e = &mut self.events[i];
            e.holders.clear(pi);
            if e.creator == p {
                e.creator_holds = 0;
            }
        }
        self.proc_live.clear(pi);
        self.sweep(words, dir);
    }

    /// Remove objects nobody holds: physical objects with no holder (their files in `dir` too), IPC keys
    /// closed by their exporter with no importer left, notifies with no holder.
    ///
    /// A physical object's file goes before its entry: a process killed in between (the lock is robust,
    /// the next holder carries on) leaves an entry nobody holds, which the next sweep removes, rather than
    /// a file no entry names, which nothing would ever remove.
    pub(crate) fn sweep(&mut self, words: &Words, dir: &Path) {
        let keys: Vec<usize> = self.key_live.iter().collect();
        for i in keys {
            let k = &self.keys[i];
            let phys_gone = !self.phys_live.get(k.phys as usize) || self.phys[k.phys as usize].serial != k.phys_serial;
            if (k.open == 0 || phys_gone) && k.importers.is_empty() {
                self.key_live.clear(i);
            }
        }
        let phys: Vec<usize> = self.phys_live.iter().collect();
        for i in phys {
            if self.phys[i].holders.is_empty() {
                let s = &self.phys[i];
                let _ = fs::remove_file(dir.join(phys_file(s.serial)));
                let dev = s.device as usize;
                self.used[dev] = self.used[dev].saturating_sub(s.size);
                self.phys_live.clear(i);
                words.phys_flags[i].store(0, Ordering::Release);
            }
        }
        let notifies: Vec<usize> = self.notify_live.iter().collect();
        for i in notifies {
            if self.notifies[i].holders.is_empty() {
                self.notify_live.clear(i);
                words.notify_value[i].store(0, Ordering::Release);
            }
        }
        let events: Vec<usize> = self.event_live.iter().collect();
        for i in events {
            if self.events[i].holders.is_empty() {
                self.event_live.clear(i);
            }
        }
    }

    /// Take a free physical object slot.
    pub(crate) fn alloc_phys(&mut self) -> Result<usize, Full> {
        take(&mut self.phys_live, &mut self.phys_hint, MAX_PHYS, "physical objects")
    }

    /// Take a free IPC key slot.
    pub(crate) fn alloc_key(&mut self) -> Result<usize, Full> {
        take(&mut self.key_live, &mut self.key_hint, MAX_KEYS, "IPC keys")
    }

    /// Take a free notify slot.
    pub(crate) fn alloc_notify(&mut self) -> Result<usize, Full> {
        take(&mut self.notify_live, &mut self.notify_hint, MAX_NOTIFIES, "notifies")
    }

    /// Take a free IPC event slot.
    pub(crate) fn alloc_event(&mut self) -> Result<usize, Full> {
        take(&mut self.event_live, &mut self.event_hint, MAX_EVENTS, "IPC events")
    }

    /// The live IPC event `i` if its serial is `serial`.
    pub(crate) fn event_if(&mut self, i: usize, serial: u64) -> Option<&mut EventSlot> {
        (i < MAX_EVENTS && self.event_live.get(i) && self.events[i].serial == serial).then(|| &mut self.events[i])
    }

    /// The live physical object `i` if its serial is `serial`.
    pub(crate) fn phys_if(&mut self, i: usize, serial: u64) -> Option<&mut PhysSlot> {
        (i < MAX_PHYS && self.phys_live.get(i) && self.phys[i].serial == serial).then(|| &mut self.phys[i])
    }

    /// The live notify `i` if its serial is `serial`.
    pub(crate) fn notify_if(&mut self, i: usize, serial: u64) -> Option<&mut NotifySlot> {
        (i < MAX_NOTIFIES && self.notify_live.get(i) && self.notifies[i].serial == serial)
            .then(|| &mut self.notifies[i])
    }

    /// The live IPC key slot holding `key`.
    pub(crate) fn find_key(&self, key: &[u8]) -> Option<usize> {
        self.key_live.iter().find(|&i| key_str(&self.keys[i].key) == key)
    }
}

/// A table of the registry has no free slot: a limit of the simulator (not of the runtime), which the
/// entry point reports with the code the runtime gives when it runs out of that resource.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Full {
    what: &'static str,
    limit: usize,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the simulator holds {} {}, its limit", self.limit, self.what)
    }
}

/// Take the first free slot of a table (its `live` bitmap, `limit` slots of `what`) at or after `hint`,
/// and move the hint past it.
fn take<const W: usize>(live: &mut Bits<W>, hint: &mut u32, limit: usize, what: &'static str) -> Result<usize, Full> {
    let i = live.first_clear(*hint as usize, limit).ok_or(Full { what, limit })?;
    live.set(i);
    *hint = ((i + 1) % limit) as u32;
    Ok(i)
}

/// The bytes of a NUL-terminated key stored in a slot.
pub(crate) fn key_str(buf: &[u8]) -> &[u8] {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..n]
}

/// Whether `pid`, which started at `start`, is on a whitelist.
pub(crate) fn whitelisted(wl: &[WlEntry], pid: i32, start: u64) -> bool {
    wl.iter().any(|e| e.pid == pid && start <= e.added)
}

/// Add `pid` to a whitelist (refreshing its time if present). False when the list is full.
pub(crate) fn whitelist_add(wl: &mut [WlEntry], len: &mut u32, pid: i32, now: u64) -> bool {
    let n = *len as usize;
    if let Some(e) = wl[..n].iter_mut().find(|e| e.pid == pid) {
        e.added = now;
        return true;
    }
    if n == wl.len() {
        return false;
    }
    wl[n] = WlEntry { pid, _pad: 0, added: now };
    *len += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps() {
        let mut b: Bits<2> = Bits([0; 2]);
        assert!(b.is_empty());
        b.set(3);
        b.set(64);
        b.set(127);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![3, 64, 127]);
        assert_eq!(b.count(), 3);
        assert_eq!(b.first_clear(3, 128), Some(4));
        assert_eq!(b.first_clear(127, 128), Some(0));
        b.clear(64);
        assert!(!b.get(64));
        let full: Bits<1> = Bits([u64::MAX]);
        assert_eq!(full.first_clear(0, 64), None);
    }

    #[test]
    fn slots_are_taken_round_the_table_until_it_is_full() {
        let mut live: Bits<1> = Bits([0]);
        let mut hint = 2;
        assert_eq!(take(&mut live, &mut hint, 3, "things").unwrap(), 2);
        assert_eq!(hint, 0, "the hint wraps");
        assert_eq!(take(&mut live, &mut hint, 3, "things").unwrap(), 0);
        assert_eq!(take(&mut live, &mut hint, 3, "things").unwrap(), 1);
        let full = take(&mut live, &mut hint, 3, "things").unwrap_err();
        assert_eq!(full.to_string(), "the simulator holds 3 things, its limit");
    }

    #[test]
    fn whitelist_times_guard_against_pid_reuse() {
        let mut wl = [WlEntry::default(); 2];
        let mut len = 0;
        assert!(whitelist_add(&mut wl, &mut len, 10, 1000));
        assert!(whitelisted(&wl[..len as usize], 10, 900), "started before it was whitelisted");
        assert!(!whitelisted(&wl[..len as usize], 10, 1001), "a later process reusing the pid");
        assert!(!whitelisted(&wl[..len as usize], 11, 900));
        assert!(whitelist_add(&mut wl, &mut len, 10, 2000));
        assert_eq!(len, 1, "adding again refreshes, does not duplicate");
        assert!(whitelist_add(&mut wl, &mut len, 11, 2000));
        assert!(!whitelist_add(&mut wl, &mut len, 12, 2000), "full");
    }

    #[test]
    fn layout_is_page_aligned_and_bounded() {
        assert_eq!(WORDS_OFFSET % 4096, 0);
        const { assert!(FILE_SIZE < 64 << 20) };
        assert_eq!(key_str(b"abc\0\0"), b"abc");
    }
}
