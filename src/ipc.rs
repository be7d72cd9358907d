//! IPC memory by key (`aclrtIpcMem*`): `aclrtMalloc` memory one process exports and others import.
//!
//! ```text
//!   exporter                                          importer (any process of this user)
//!   IpcMemory::new ── malloc whole, page-aligned ─┐
//!     export key; allow(tgid) (pid validation)    │   desc (text: key, size, importer file)
//!     desc() ─────────────────────────────────────┼─> IpcMemImport::open: take a slot in the importer
//!                                                 │   file (a byte lock), then import by key
//!   close: refuse new importers, wait until every │   close: aclrtIpcMemClose, then let the slot go
//!   slot is free, then aclrtIpcMemClose, aclrtFree│   (a crash lets it go too: the kernel drops the lock)
//! ```
//!
//! The runtime's rules, kept here: only whole allocations are exported (the runtime refuses part of one,
//! so as not to leak neighbouring data), which this type guarantees by allocating them itself, rounded up
//! to 2 MiB pages; importers close before the exporter ("otherwise an exception may occur"), and the
//! exporter keeps its memory until importers imported it. The second rule is enforced with a small
//! importer file next to the pool sharing files: each import holds a lock on a byte of it while it lives,
//! so the exporter knows, from the kernel, which imports are still open, whatever their process did (a
//! killed importer's lock is gone with it). Closing the exporter first refuses new imports, then waits
//! for the open ones; if they do not close in time it returns [`Error::Timeout`] and keeps the memory
//! (closing under a live importer is what the runtime forbids; the memory goes when the process ends).
//!
//! One key may be imported several times in a process; each import is a separate [`IpcMemImport`] (the
//! runtime returns the same address and counts the imports).

use crate::sync::shm::{AtomicU32, AtomicU64, Ordering, fence};
use std::ffi::c_void;
use std::fmt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::{Duration, Instant};

use aclshm_sys::{
    ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT, ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION,
    ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS, aclrtMemMallocPolicy,
};

use crate::device::on_device;
use crate::error::{Error, Result, close_on_drop, release_retrying};
use crate::os;
use crate::raw::{self, IpcKey};
use crate::runtime::Runtime;
use crate::shm::{self, HEADER_BYTES, Names, ShmFile};

/// Exported allocations are whole multiples of this (the runtime wants page-table-aligned ranges).
pub const IPC_ALIGN: usize = 2 << 20;
/// Most imports of one export open at once.
pub const MAX_IMPORTS: u32 = 64;

/// The importer files of a share directory (locked by their exporter).
pub(crate) const FILE_NAMES: &[Names] = &[Names { prefix: "ipcmem-", suffix: ".importers", companion: None }];

/// The importer file's header. The file has no payload: import slot `i`'s lock is on byte
/// `HEADER_BYTES + i`, past its end (locks need no data).
#[repr(C)]
struct Header {
    size: AtomicU64,
    /// Bumped (and futex-woken) when an import closes.
    changes: AtomicU32,
    _pad: AtomicU32,
}

// SAFETY: repr(C), atomics only.
unsafe impl shm::Shared for Header {}

shm::kind!(
    /// An importer file, as a kind of shared file.
    ImporterFile: Header, AtomicU32, b"ACLSHMIK", 2, "importer file"
);

/// Import slot `i`'s lock byte.
fn slot_byte(i: u32) -> u64 {
    HEADER_BYTES as u64 + u64::from(i)
}

/// How memory is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcMemConfig {
    /// Export with pid validation (the default): only processes whitelisted with
    /// [`IpcMemory::allow`] can import. `false` is the documented opt-out.
    pub validate_pids: bool,
    /// Directory for the importer file; default as for pool sharing (`$ACLSHM_SHARE_DIR`, else
    /// `/dev/shm/aclshm-share-<uid>`).
    pub dir: Option<PathBuf>,
    /// How long [`IpcMemory::close`] (and drop) waits for importers to close.
    pub close_timeout: Duration,
}

impl Default for IpcMemConfig {
    fn default() -> Self {
        IpcMemConfig { validate_pids: true, dir: None, close_timeout: Duration::from_secs(10) }
    }
}

/// What an importer needs: the key, the size, and the importer file. Text form
/// `aclshm-ipcmem:1:<key>:<size in hex>:<importer file>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpcMemDesc {
    /// The runtime's key.
    pub key: IpcKey,
    /// Bytes exported.
    pub size: usize,
    /// The importer file.
    pub importers: PathBuf,
}

const DESC_PREFIX: &str = "aclshm-ipcmem:1:";

impl fmt::Display for IpcMemDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DESC_PREFIX}{}:{:x}:{}", self.key, self.size, self.importers.display())
    }
}

impl FromStr for IpcMemDesc {
    type Err = Error;
    fn from_str(s: &str) -> Result<IpcMemDesc> {
        let bad = |why: &str| Error::BadDescriptor(format!("IPC memory descriptor {s:?}: {why}"));
        let rest = s.strip_prefix(DESC_PREFIX).ok_or_else(|| bad("expected aclshm-ipcmem:1:<key>:<size>:<path>"))?;
        let mut parts = rest.splitn(3, ':');
        let (Some(key), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("missing fields"));
        };
        let key: IpcKey = key.parse().map_err(|_| bad("not a key"))?;
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("the size is not hex"))?;
        let importers = PathBuf::from(path);
        if size == 0 || !size.is_multiple_of(IPC_ALIGN) || !importers.is_absolute() {
            return Err(bad("a size that is not a multiple of 2 MiB, or a relative path"));
        }
        Ok(IpcMemDesc { key, size, importers })
    }
}

/// The importer file, as either side maps it.
#[derive(Debug)]
struct Importers {
    file: ShmFile<ImporterFile>,
    /// The exporter's: removes the file when dropped.
    owner: bool,
}

impl Drop for Importers {
    fn drop(&mut self) {
        if self.owner {
            self.file.remove();
        }
    }
}

impl Importers {
    fn header(&self) -> &Header {
        self.file.header()
    }

    fn create(path: PathBuf, size: usize) -> Result<Importers> {
        // Byte 0 stays locked while the exporter lives: how importers and sweepers tell it died.
        let file = ShmFile::create(&path, 0, |h: &Header| h.size.store(size as u64, Ordering::Relaxed))?;
        Ok(Importers { file, owner: true })
    }

    fn open(desc: &IpcMemDesc) -> Result<Importers> {
        let (file, ()) = ShmFile::<ImporterFile>::open(&desc.importers, |h, items| {
            if items != 0 {
                return Err("it has a payload".into());
            }
            if h.size.load(Ordering::Relaxed) != desc.size as u64 {
                return Err("it describes an export of another size".into());
            }
            Ok(())
        })
        .map_err(|e| match e {
            // The exporter closed (and removed it): there is nothing to import any more.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::Closed,
            Error::Protocol(why) => Error::BadDescriptor(why),
            e => e,
        })?;
        Ok(Importers { file, owner: false })
    }

    /// Take a free import slot; refused when the exporter is closing or every slot is taken.
    fn claim(&self) -> Result<u32> {
        for i in 0..MAX_IMPORTS {
            let locked = self.file.map().try_lock_byte(slot_byte(i));
            if locked.map_err(|e| Error::io(format!("lock {}", self.file.path().display()), e))? {
                // Pairs with `close`'s fence: either it sees our lock, or we see it closing.
                fence(Ordering::SeqCst);
                if self.file.state().load(Ordering::SeqCst) != shm::OPEN {
                    self.release(i);
                    return Err(Error::Closed);
                }
                return Ok(i);
            }
        }
        Err(Error::NotPermitted(format!("{MAX_IMPORTS} imports of this memory are open already")))
    }

    fn release(&self, slot: u32) {
        self.file.map().unlock_byte(slot_byte(slot));
        let h = self.header();
        h.changes.fetch_add(1, Ordering::AcqRel);
        os::futex_wake_all(&h.changes);
    }

    /// Imports open now (held by other opens of the file: every importer).
    fn open_imports(&self) -> Result<u32> {
        let mut n = 0;
        for i in 0..MAX_IMPORTS {
            let held = self.file.map().byte_locked_by_other(slot_byte(i));
            if held.map_err(|e| Error::io(format!("look at the locks of {}", self.file.path().display()), e))? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The accessors exporter and importer both have, over the [`Keyed`] memory each holds.
macro_rules! region_accessors {
    ($ty:ty, $ptr_doc:literal, $len_doc:literal) => {
        impl $ty {
            #[doc = $ptr_doc]
            pub fn as_ptr(&self) -> *mut c_void {
                self.mem.ptr.as_ptr()
            }

            #[doc = $len_doc]
            pub fn len(&self) -> usize {
                self.mem.size
            }

            /// Always false.
            pub fn is_empty(&self) -> bool {
                false
            }
        }
    };
}

region_accessors!(
    IpcMemory,
    "The memory's device address.",
    "Bytes exported (the requested size rounded up to 2 MiB)."
);
region_accessors!(IpcMemImport, "The memory's address in this process.", "Its size.");

/// Device memory under a key: what exporter and importer both hold.
struct Keyed {
    rt: Runtime,
    ptr: NonNull<c_void>,
    size: usize,
    device: i32,
    key: IpcKey,
}

// SAFETY: device memory and its key are process-wide runtime objects, usable from any thread.
unsafe impl Send for Keyed {}
// SAFETY: as above; nothing here is mutated through a shared reference.
unsafe impl Sync for Keyed {}

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed").field("key", &self.key).field("size", &self.size).field("device", &self.device).finish()
    }
}

/// Exported `aclrtMalloc` memory (see the [module](self) docs). Closing (or dropping) it waits for
/// importers to close first.
///
/// ```
/// # let _dirs = unsafe { aclshm::doc_dirs() };
/// use aclshm::{IpcMemConfig, IpcMemDesc, IpcMemory, Runtime, raw};
/// let rt = Runtime::simulator();
/// raw::set_device(&rt, 0)?;
/// let mem = IpcMemory::new(&rt, 0, 3 << 20, IpcMemConfig::default())?;
/// assert_eq!(mem.len(), 4 << 20); // whole 2 MiB pages
/// let desc = mem.desc().to_string(); // "aclshm-ipcmem:1:<key>:<size>:<file>", for an importer
/// assert_eq!(desc.parse::<IpcMemDesc>()?, mem.desc());
/// // mem.allow(importer_tgid)?; then, in the importer: IpcMemImport::open(&rt, &desc, device)?
/// assert_eq!(mem.open_imports()?, 0);
/// mem.close()?; // waits for importers (none here), closes the key, frees the memory
/// # Ok::<(), aclshm::Error>(())
/// ```
#[derive(Debug)]
pub struct IpcMemory {
    mem: Keyed,
    validate_pids: bool,
    close_timeout: Duration,
    importers: Importers,
    /// Closed (or given up on): nothing left to do.
    done: bool,
}

impl IpcMemory {
    /// Allocate `size` bytes (rounded up to 2 MiB) on `device` and export the whole allocation.
    pub fn new(rt: &Runtime, device: i32, size: usize, config: IpcMemConfig) -> Result<IpcMemory> {
        if size == 0 {
            return Err(Error::InvalidArgument("IPC memory of 0 bytes".into()));
        }
        let size = size
            .checked_next_multiple_of(IPC_ALIGN)
            .ok_or_else(|| Error::InvalidArgument(format!("{size:#x} bytes of IPC memory")))?;
        let dir = crate::shm::share_dir(config.dir.as_deref())?;
        shm::sweep(&dir, FILE_NAMES, Duration::from_secs(60));
        let flags = if config.validate_pids {
            ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT
        } else {
            ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION
        };
        let importers = Importers::create(dir.join(format!("ipcmem-{:016x}.importers", os::random_u64())), size)?;
        on_device(rt, device, || {
            let p = raw::malloc(rt, size, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST)?;
            let ptr = NonNull::new(p).ok_or_else(|| Error::InvalidArgument("aclrtMalloc returned NULL".into()))?;
            // SAFETY: p is the whole allocation just made.
            match unsafe { raw::ipc_mem_get_export_key(rt, p, size, flags) } {
                Ok(key) => Ok(IpcMemory {
                    mem: Keyed { rt: rt.clone(), ptr, size, device, key },
                    validate_pids: config.validate_pids,
                    close_timeout: config.close_timeout,
                    importers,
                    done: false,
                }),
                Err(e) => {
                    // SAFETY: ours, unexported, unused.
                    let _ = unsafe { raw::free(rt, p) };
                    Err(e)
                }
            }
        })
    }

    /// What importers open it with.
    pub fn desc(&self) -> IpcMemDesc {
        IpcMemDesc { key: self.mem.key, size: self.mem.size, importers: self.importers.file.path().to_path_buf() }
    }

    /// Whitelist a process (its pid from `aclrtDeviceGetBareTgid`) to import it.
    pub fn allow(&self, tgid: i32) -> Result<()> {
        if !self.validate_pids {
            return Err(Error::NotPermitted("exported without pid validation: there is no whitelist".into()));
        }
        raw::ipc_mem_set_import_pid(&self.mem.rt, &self.mem.key, &[tgid])
    }

    /// Its device.
    pub fn device(&self) -> i32 {
        self.mem.device
    }

    /// Imports open now, in all processes.
    pub fn open_imports(&self) -> Result<u32> {
        self.importers.open_imports()
    }

    /// Close: refuse new imports, wait (up to the configured timeout) for open ones to close, then close
    /// the key and free the memory. On [`Error::Timeout`] the memory is kept (see the module docs).
    pub fn close(mut self) -> Result<()> {
        self.shut()
    }

    fn shut(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let importers = &self.importers;
        let h = importers.header();
        importers.file.state().store(shm::CLOSED, Ordering::SeqCst);
        // Pairs with `claim`'s fence: an importer either sees it closed or holds its lock by now.
        fence(Ordering::SeqCst);
        // A timeout too long to add to now (Duration::MAX) waits for ever.
        let deadline = Instant::now().checked_add(self.close_timeout);
        loop {
            let seen = h.changes.load(Ordering::Acquire);
            let open = importers.open_imports()?;
            if open == 0 {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                // Closing under a live importer is what the runtime forbids: keep the memory (and the key)
                // for the rest of the process; the importer file goes, so nobody new comes.
                self.done = true;
                importers.file.remove();
                return Err(Error::Timeout(format!(
                    "{open} import(s) of IPC memory {} still open after {:?}; the memory is kept until the \
                     process ends",
                    self.mem.key, self.close_timeout
                )));
            }
            // Woken when an import closes; the timeout bounds the wait for one that ends by dying.
            let left = deadline.map_or(Duration::MAX, |d| d - now);
            os::futex_wait(&h.changes, seen, left.min(Duration::from_millis(100)));
        }
        self.done = true;
        importers.file.remove();
        let ptr = self.mem.ptr.as_ptr();
        let mut ran = false;
        let r = on_device(&self.mem.rt, self.mem.device, || {
            ran = true;
            // SAFETY: every importer closed; then the memory, ours and unused, is freed once.
            unsafe {
                let closed = release_retrying(|| raw::ipc_mem_close(&self.mem.rt, &self.mem.key));
                let freed = release_retrying(|| raw::free(&self.mem.rt, ptr));
                closed.and(freed)
            }
        });
        if !ran {
            // The device could not be made current: nothing was closed or freed, so a later close (or the
            // drop) tries again rather than leaving the key open and the memory held for good.
            self.done = false;
        }
        r
    }
}

close_on_drop!(IpcMemory, shut, "IPC memory");

/// An import of another process's [`IpcMemory`]. Closed on drop.
#[derive(Debug)]
pub struct IpcMemImport {
    mem: Keyed,
    importers: Importers,
    slot: u32,
    open: bool,
}

impl IpcMemImport {
    /// Import the memory `desc` describes, on `device`, with peer access enabled. Refused with
    /// [`Error::Closed`] once the exporter is closing, and by the runtime if this process is not
    /// whitelisted.
    pub fn open(rt: &Runtime, desc: &IpcMemDesc, device: i32) -> Result<IpcMemImport> {
        let importers = Importers::open(desc)?;
        let slot = importers.claim()?;
        let imported = on_device(rt, device, || {
            raw::ipc_mem_import_by_key(rt, &desc.key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS)
        });
        let p = match imported.and_then(|p| NonNull::new(p).ok_or_else(|| Error::InvalidArgument("NULL import".into())))
        {
            Ok(p) => p,
            Err(e) => {
                importers.release(slot);
                return Err(e);
            }
        };
        let mem = Keyed { rt: rt.clone(), ptr: p, size: desc.size, device, key: desc.key };
        Ok(IpcMemImport { mem, importers, slot, open: true })
    }

    /// Close the import (the exporter may close once every import did).
    pub fn close(mut self) -> Result<()> {
        self.shut()
    }

    fn shut(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        let mut ran = false;
        let r = on_device(&self.mem.rt, self.mem.device, || {
            ran = true;
            // SAFETY: the caller is done with the memory (we are being closed or dropped).
            release_retrying(|| unsafe { raw::ipc_mem_close(&self.mem.rt, &self.mem.key) })
        });
        if !ran {
            // The device could not be made current, so the import was not closed: it keeps its slot while
            // it lives (the exporter must not free the memory under it), and the drop tries again.
            self.open = true;
            return r;
        }
        // The slot goes whatever the runtime said to the close: this import is over either way.
        self.importers.release(self.slot);
        if !self.importers.file.creator_alive() {
            // The exporter died: its file is ours to remove.
            self.importers.file.remove();
        }
        r
    }
}

close_on_drop!(IpcMemImport, shut, "an IPC memory import");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_and_bad_text_is_refused() {
        let d = IpcMemDesc {
            key: "ab".repeat(32).parse().unwrap(),
            size: 4 << 20,
            importers: PathBuf::from("/dev/shm/x/ipcmem-1.importers"),
        };
        assert_eq!(d.to_string().parse::<IpcMemDesc>().unwrap(), d);
        for bad in [
            "",
            "aclshm-ipcmem:1:",
            "aclshm-ipcmem:2:abcd:200000:/x",
            "aclshm-ipcmem:1:abcd:zz:/x",
            "aclshm-ipcmem:1:abcd:1000:/x",
            "aclshm-ipcmem:1:abcd:200000:relative",
            "aclshm-ipcmem:1::200000:/x",
        ] {
            assert!(matches!(bad.parse::<IpcMemDesc>(), Err(Error::BadDescriptor(_))), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_slot_is_held_until_released_and_closing_refuses_new_ones() {
        let dir = os::TestDir::new("ipc").unwrap();
        let path = dir.0.join("f.importers");
        let exporter = Importers::create(path.clone(), IPC_ALIGN).unwrap();
        let desc = IpcMemDesc { key: "k".parse().unwrap(), size: IPC_ALIGN, importers: path.clone() };
        // Each import opens the file on its own: its locks conflict with every other open's.
        let a = Importers::open(&desc).unwrap();
        let b = Importers::open(&desc).unwrap();
        let sa = a.claim().unwrap();
        let sb = b.claim().unwrap();
        assert_ne!(sa, sb);
        assert_eq!(exporter.open_imports().unwrap(), 2);
        b.release(sb);
        assert_eq!(exporter.open_imports().unwrap(), 1);
        drop(a); // closing the file drops its lock, as a crash would
        assert_eq!(exporter.open_imports().unwrap(), 0);
        exporter.file.state().store(shm::CLOSED, Ordering::SeqCst);
        let c = Importers::open(&desc).unwrap();
        assert!(matches!(c.claim(), Err(Error::Closed)));
        assert_eq!(exporter.open_imports().unwrap(), 0, "a refused claim lets its slot go");
        let wrong = IpcMemDesc { size: 2 * IPC_ALIGN, ..desc };
        assert!(matches!(Importers::open(&wrong), Err(Error::BadDescriptor(_))));
    }
}
