//! RAII over the virtual-memory calls: a reserved range, physical memory, and a mapping of one into the
//! other.
//!
//! ```text
//!   Mapping ──holds──> Arc<PhysicalMem>   aclrtFreePhysical when the last holder goes
//!      │
//!      └─────holds──> Arc<VaRange>        aclrtReleaseMemAddress when the last holder goes
//! ```
//!
//! Ownership is the teardown order the runtime documents ("unmap, then aclrtFreePhysical, then
//! aclrtReleaseMemAddress"): a mapping unmaps when it goes, and only then lets go of its physical memory
//! and its range, so physical memory is freed exactly once, after the last mapping of it in this process,
//! and a range is released only when nothing is mapped in it.
//!
//! Nothing here panics in `Drop`. A failure while dropping is recorded in the [`DropErrors`] the object
//! was made with, for the next fallible call (or an explicit close) to report; and a mapping whose unmap
//! failed is leaked rather than let its memory be freed or its range released while it may still be
//! mapped. The explicit forms ([`Mapping::unmap`], [`PhysicalMem::free`], [`VaRange::release`]) return the
//! error instead and hand the object back, so a caller can keep it aside (the pool marks it `Unknown`) and
//! try again later.
//!
//! ```
//! # let _dirs = unsafe { aclshm::doc_dirs() };
//! use aclshm::vmm::{DropErrors, Mapping, PageSize, PhysicalMem, VaRange};
//! use aclshm::{Runtime, raw};
//! let rt = Runtime::simulator();
//! raw::set_device(&rt, 0)?;
//! let errors = DropErrors::new();
//! let range = VaRange::reserve(&rt, 8 << 20, &errors)?;
//! let phys = PhysicalMem::allocate(&rt, 0, 2 << 20, PageSize::Huge2M, &errors)?;
//! let m = Mapping::map(&range, 2 << 20, &phys)?; // the second 2 MiB of the range
//! drop(phys); // the mapping holds it
//! drop(range); // and the range
//! drop(m); // unmap, then free the physical memory, then release the range: in that order
//! assert!(errors.take().is_empty());
//! # Ok::<(), aclshm::Error>(())
//! ```

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use aclshm_sys::{
    aclrtDrvMemHandle, aclrtMemAllocationType, aclrtMemAttr, aclrtMemHandleType, aclrtMemLocation,
    aclrtMemLocationType, aclrtPhysicalMemProp,
};

use crate::error::{Error, Result, release_retrying};
use crate::handles::HandleBook;
use crate::raw;
use crate::runtime::Runtime;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

/// Failures that happened while dropping, kept for someone to report.
#[derive(Default)]
pub struct DropErrors {
    errors: Mutex<Vec<Error>>,
    pending: AtomicBool,
}

impl fmt::Debug for DropErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropErrors").field("pending", &self.pending.load(Ordering::Relaxed)).finish()
    }
}

impl DropErrors {
    /// A new, empty sink.
    pub fn new() -> Arc<DropErrors> {
        Arc::new(DropErrors::default())
    }

    /// Keep `e` for later.
    pub(crate) fn record(&self, e: Error) {
        self.errors.lock().push(e);
        self.pending.store(true, Ordering::Release);
    }

    /// Whether anything is waiting to be reported (one atomic load).
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Take everything recorded so far.
    pub fn take(&self) -> Vec<Error> {
        let mut errors = self.errors.lock();
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *errors)
    }

    /// `Err(Error::Deferred(..))` with everything recorded, if anything was.
    pub fn check(&self) -> Result<()> {
        if !self.pending() {
            return Ok(());
        }
        let errors = self.take();
        if errors.is_empty() { Ok(()) } else { Err(Error::Deferred(errors)) }
    }
}

/// Page size of physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PageSize {
    /// 2 MiB pages (`ACL_HBM_MEM_HUGE`): sizes are multiples of 2 MiB.
    #[default]
    Huge2M,
    /// 1 GiB pages (`ACL_HBM_MEM_HUGE1G`): sizes are multiples of 1 GiB; fewer page-table entries, not
    /// on every device.
    Huge1G,
}

impl PageSize {
    /// The page size a configuration names: `2M` (`2MiB`, `huge2m`) or `1G` (`1GiB`, `huge1g`).
    pub fn parse(name: &str) -> Option<PageSize> {
        match name {
            "2M" | "2MiB" | "huge2m" => Some(PageSize::Huge2M),
            "1G" | "1GiB" | "huge1g" => Some(PageSize::Huge1G),
            _ => None,
        }
    }

    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    fn attr(self) -> aclrtMemAttr {
        match self {
            PageSize::Huge2M => aclrtMemAttr::ACL_HBM_MEM_HUGE,
            PageSize::Huge1G => aclrtMemAttr::ACL_HBM_MEM_HUGE1G,
        }
    }
}

/// The properties of physical device memory of `page` pages on `device`, as `aclrtMallocPhysical` and
/// `aclrtMemGetAllocationGranularity` take them (pinned, no handle type).
pub fn device_prop(device: i32, page: PageSize) -> aclrtPhysicalMemProp {
    aclrtPhysicalMemProp {
        handleType: aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
        allocationType: aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED,
        memAttr: page.attr(),
        location: aclrtMemLocation { id: device as u32, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
        reserve: 0,
    }
}

/// A range of device virtual addresses from `aclrtReserveMemAddress`. Released when the last holder goes.
pub struct VaRange {
    rt: Runtime,
    base: NonNull<c_void>,
    size: usize,
    errors: Arc<DropErrors>,
}

// SAFETY: a reserved range is a process-wide address range; the runtime may be called about it from any
// thread, and nothing here is tied to the creating thread.
unsafe impl Send for VaRange {}
// SAFETY: as above; &VaRange only exposes its immutable address and size.
unsafe impl Sync for VaRange {}

impl fmt::Debug for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaRange({:#x}, {:#x} bytes)", self.base(), self.size)
    }
}

impl VaRange {
    /// Reserve `size` bytes of device address space (rounded up by the runtime to its granularity).
    pub fn reserve(rt: &Runtime, size: usize, errors: &Arc<DropErrors>) -> Result<Arc<VaRange>> {
        // SAFETY: no expected address, so the runtime picks one that nothing else uses.
        let p = unsafe { raw::reserve_mem_address(rt, size, 0, std::ptr::null_mut(), 0)? };
        let base = NonNull::new(p)
            .ok_or_else(|| Error::InvalidArgument("aclrtReserveMemAddress returned NULL".to_string()))?;
        Ok(Arc::new(VaRange { rt: rt.clone(), base, size, errors: Arc::clone(errors) }))
    }

    /// The first address.
    pub fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Release the range now, reporting failure; on failure the range is handed back.
    pub fn release(self) -> std::result::Result<(), (Error, VaRange)> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: self is consumed: no Mapping holds it (a Mapping holds an Arc, and we own the value, so no
        // Arc exists), hence nothing is mapped in it through us.
        match unsafe { raw::release_mem_address(&this.rt, this.base.as_ptr()) } {
            Ok(()) => {
                // SAFETY: the fields are moved out exactly once, and `this` is never used or dropped again.
                unsafe {
                    drop(std::ptr::read(&this.rt));
                    drop(std::ptr::read(&this.errors));
                }
                Ok(())
            }
            Err(e) => Err((e, std::mem::ManuallyDrop::into_inner(this))),
        }
    }
}

impl Drop for VaRange {
    fn drop(&mut self) {
        // SAFETY: the last holder is gone, so no Mapping of ours remains in the range.
        if let Err(e) = release_retrying(|| unsafe { raw::release_mem_address(&self.rt, self.base.as_ptr()) }) {
            self.errors.record(e);
        }
    }
}

/// Physical device memory from `aclrtMallocPhysical`, or imported from another process. Freed with
/// `aclrtFreePhysical` when the last holder goes: exactly once, after every mapping of it in this process.
pub struct PhysicalMem {
    rt: Runtime,
    handle: NonNull<c_void>,
    size: usize,
    device: i32,
    errors: Arc<DropErrors>,
    origin: Origin,
}

/// Where a physical allocation came from.
enum Origin {
    /// `aclrtMallocPhysical` here; exported at most once, the shareable handle kept here (and in the
    /// process's [`book`]).
    /// (The mutex is boxed to keep the handle small: loom's mutex, under `--cfg loom`, is large.)
    Local { export: Box<Mutex<Option<Export>>> },
    /// Imported (once per process) through the registry. `abandoned`: a mapping of it could not be
    /// unmapped and keeps it for good (see [`PhysicalMem::abandon`]).
    Imported { shareable: u64, abandoned: AtomicBool },
}

/// The process's book of shareable handles ([`HandleBook`]): what it exported and imported. There is
/// one per process, as the runtime's one-to-one rule is per process (under `--cfg loom`, one per model
/// execution).
pub(crate) fn book() -> &'static HandleBook<Arc<PhysicalMem>> {
    #[cfg(not(loom))]
    {
        static BOOK: std::sync::OnceLock<HandleBook<Arc<PhysicalMem>>> = std::sync::OnceLock::new();
        BOOK.get_or_init(HandleBook::new)
    }
    #[cfg(loom)]
    {
        loom::lazy_static! {
            static ref BOOK: HandleBook<Arc<PhysicalMem>> = HandleBook::new();
        }
        &BOOK
    }
}

#[derive(Debug, Clone, Copy)]
struct Export {
    shareable: Shareable,
    flags: u64,
}

/// A fabric handle (`aclrtMemFabricHandle`): physical memory exported for import on other servers of a
/// super node (Atlas A3).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FabricHandle(pub [u8; FabricHandle::LEN]);

impl FabricHandle {
    /// Its size.
    pub const LEN: usize = 128;

    /// The 64-bit key it is known by in this process's book of handles: a digest of its bytes (FNV-1a,
    /// top bit set), which a runtime's plain 64-bit handle is not expected to collide with.
    pub fn key(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in &self.0 {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h | 1 << 63
    }

    /// The runtime's struct.
    pub fn to_raw(self) -> aclshm_sys::aclrtMemFabricHandle {
        aclshm_sys::aclrtMemFabricHandle { data: self.0 }
    }
}

impl fmt::Debug for FabricHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FabricHandle({:#x})", self.key())
    }
}

/// How physical memory is shared with other processes: a 64-bit shareable handle, valid on one server
/// (`aclrtMemExportToShareableHandle`), or a fabric handle, valid across the servers of a super node
/// (`aclrtMemExportToShareableHandleV2` with `ACL_MEM_SHARE_HANDLE_TYPE_FABRIC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shareable {
    /// A one-server handle.
    Plain(u64),
    /// A fabric handle.
    Fabric(FabricHandle),
}

impl Shareable {
    /// The 64-bit key the process's book knows it by: the handle itself, or a fabric handle's digest.
    pub fn key(&self) -> u64 {
        match self {
            Shareable::Plain(v) => *v,
            Shareable::Fabric(f) => f.key(),
        }
    }

    /// Whether it is a fabric handle.
    pub fn is_fabric(&self) -> bool {
        matches!(self, Shareable::Fabric(_))
    }

    /// Whitelist process `tgid` (its `aclrtDeviceGetBareTgid`) to import it.
    pub fn allow(&self, rt: &Runtime, tgid: i32) -> Result<()> {
        match self {
            Shareable::Plain(v) => raw::mem_set_pid_to_shareable_handle(rt, *v, &[tgid]),
            Shareable::Fabric(f) => raw::mem_set_pid_to_fabric_handle(rt, &f.to_raw(), &[tgid]),
        }
    }
}

// SAFETY: a physical memory handle is a process-wide token; the runtime accepts it from any thread.
unsafe impl Send for PhysicalMem {}
// SAFETY: as above; &PhysicalMem only exposes the handle's value and its size.
unsafe impl Sync for PhysicalMem {}

impl fmt::Debug for PhysicalMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysicalMem({:p}, {:#x} bytes on device {})", self.handle, self.size, self.device)
    }
}

impl PhysicalMem {
    /// Allocate `size` bytes of `page`-page physical memory on `device`.
    pub fn allocate(
        rt: &Runtime,
        device: i32,
        size: usize,
        page: PageSize,
        errors: &Arc<DropErrors>,
    ) -> Result<Arc<PhysicalMem>> {
        let h = raw::malloc_physical(rt, size, &device_prop(device, page), 0)?;
        // SAFETY: h is a live handle just allocated through rt, owned by nobody else.
        Ok(Arc::new(unsafe { PhysicalMem::from_raw(rt, h, size, device, errors) }?))
    }

    /// Take ownership of a physical memory handle this process allocated (its export, if it is exported
    /// later, is recorded in the process's book of shareable handles).
    ///
    /// # Safety
    /// 1. `handle` is a live physical memory handle of `rt` from `aclrtMallocPhysical`, of `size` bytes on
    ///    `device`, not exported yet, that nothing else will free.
    pub unsafe fn from_raw(
        rt: &Runtime,
        handle: aclrtDrvMemHandle,
        size: usize,
        device: i32,
        errors: &Arc<DropErrors>,
    ) -> Result<PhysicalMem> {
        let handle = NonNull::new(handle)
            .ok_or_else(|| Error::InvalidArgument("a physical memory handle is never NULL".to_string()))?;
        let origin = Origin::Local { export: Box::new(Mutex::new(None)) };
        Ok(PhysicalMem { rt: rt.clone(), handle, size, device, errors: Arc::clone(errors), origin })
    }

    /// Wrap a handle imported through the registry (which alone calls this, having claimed `shareable`
    /// in the [`book`]).
    ///
    /// # Safety
    /// 1. `handle` is a live handle of `rt` just imported from `shareable`, of `size` bytes on `device`,
    ///    that nothing else will free.
    pub(crate) unsafe fn from_import(
        rt: &Runtime,
        handle: aclrtDrvMemHandle,
        size: usize,
        device: i32,
        errors: &Arc<DropErrors>,
        shareable: u64,
    ) -> Result<PhysicalMem> {
        let handle = NonNull::new(handle)
            .ok_or_else(|| Error::InvalidArgument("a physical memory handle is never NULL".to_string()))?;
        let origin = Origin::Imported { shareable, abandoned: AtomicBool::new(false) };
        Ok(PhysicalMem { rt: rt.clone(), handle, size, device, errors: Arc::clone(errors), origin })
    }

    /// Export it as a shareable handle, once: later calls return the same handle without calling the
    /// runtime (a handle and its shareable handle are one-to-one). `flags` is
    /// `ACL_RT_VMM_EXPORT_FLAG_DEFAULT` (importers must be whitelisted) or
    /// `ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION`; asking again with other flags, or exporting
    /// imported memory, is refused.
    pub fn export(&self, flags: u64) -> Result<u64> {
        self.export_as(flags, false).map(|s| s.key())
    }

    /// [`export`](PhysicalMem::export), as a fabric handle (`fabric`: for importers on other servers of a
    /// super node, through `aclrtMemExportToShareableHandleV2`) or a plain one. A handle is exported once,
    /// in one kind: asking for the other kind later is refused. A runtime without the V2 call gives
    /// [`Error::Unsupported`].
    pub fn export_as(&self, flags: u64, fabric: bool) -> Result<Shareable> {
        let export = match &self.origin {
            Origin::Local { export } => export,
            Origin::Imported { .. } => {
                return Err(Error::NotPermitted("imported memory cannot be exported again".to_string()));
            }
        };
        let mut e = export.lock();
        if let Some(e) = *e {
            if e.flags != flags || e.shareable.is_fabric() != fabric {
                return Err(Error::NotPermitted(format!(
                    "exported already ({} handle, flags {:#x}); a handle has one shareable handle",
                    if e.shareable.is_fabric() { "a fabric" } else { "a plain" },
                    e.flags
                )));
            }
            return Ok(e.shareable);
        }
        let shareable = if fabric {
            // SAFETY: our live handle.
            let f = unsafe { raw::mem_export_to_fabric_handle(&self.rt, self.as_raw(), flags)? };
            Shareable::Fabric(FabricHandle(f.data))
        } else {
            // SAFETY: our live handle.
            Shareable::Plain(unsafe {
                raw::mem_export_to_shareable_handle(
                    &self.rt,
                    self.as_raw(),
                    aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
                    flags,
                )?
            })
        };
        book().exported(shareable.key());
        *e = Some(Export { shareable, flags });
        Ok(shareable)
    }

    /// The shareable handle (its key, for a fabric handle), if exported.
    pub fn exported(&self) -> Option<u64> {
        match &self.origin {
            Origin::Local { export } => export.lock().map(|e| e.shareable.key()),
            Origin::Imported { .. } => None,
        }
    }

    /// The shareable handle it was imported from, if it was.
    pub fn imported_from(&self) -> Option<u64> {
        match &self.origin {
            Origin::Imported { shareable, .. } => Some(*shareable),
            Origin::Local { .. } => None,
        }
    }

    /// Tell the process's book this handle is gone (after its free).
    fn forget(&self) {
        match &self.origin {
            Origin::Local { export } => {
                if let Some(e) = *export.lock() {
                    book().unexported(e.shareable.key());
                }
            }
            Origin::Imported { shareable, .. } => book().released(*shareable),
        }
    }

    /// A mapping of it could not be unmapped and keeps it for good (it is never freed, so its drop never
    /// tells the book): an imported handle's entry in the book is settled now, or by the last user's
    /// [`Imported`](crate::registry::Imported) when it lets go, so that a later import of the same
    /// shareable handle asks the runtime (which says whether it agrees) rather than waiting for ever.
    fn abandon(&self) {
        if let Origin::Imported { shareable, abandoned } = &self.origin {
            abandoned.store(true, Ordering::SeqCst);
            book().released(*shareable);
        }
    }

    /// Whether a mapping that could not be unmapped keeps it for good.
    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(&self.origin, Origin::Imported { abandoned, .. } if abandoned.load(Ordering::SeqCst))
    }

    /// The runtime's handle.
    pub fn as_raw(&self) -> aclrtDrvMemHandle {
        self.handle.as_ptr()
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The device it is on.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// Free it now, reporting failure; on failure it is handed back.
    pub fn free(self) -> std::result::Result<(), (Error, PhysicalMem)> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: self is owned, so no Mapping holds it: nothing of ours maps it any more.
        match unsafe { raw::free_physical(&this.rt, this.handle.as_ptr()) } {
            Ok(()) => {
                this.forget();
                // SAFETY: the fields are moved out exactly once, and `this` is never used or dropped again.
                unsafe {
                    drop(std::ptr::read(&this.rt));
                    drop(std::ptr::read(&this.errors));
                    drop(std::ptr::read(&this.origin));
                }
                Ok(())
            }
            Err(e) => Err((e, std::mem::ManuallyDrop::into_inner(this))),
        }
    }
}

impl Drop for PhysicalMem {
    fn drop(&mut self) {
        // SAFETY: the last holder is gone, so no Mapping of ours maps it any more.
        match release_retrying(|| unsafe { raw::free_physical(&self.rt, self.handle.as_ptr()) }) {
            Ok(()) => self.forget(),
            Err(e) => {
                self.errors.record(e);
                // The handle may live on in the driver; an imported one can still be imported again
                // (the runtime will say whether it agrees), so the registry is told either way.
                self.forget();
            }
        }
    }
}

/// A whole physical allocation mapped at an address inside a reserved range. Unmapped when dropped.
pub struct Mapping {
    addr: NonNull<c_void>,
    // Declared in teardown order: after the unmap, the physical memory goes first, then the range.
    phys: Arc<PhysicalMem>,
    range: Arc<VaRange>,
}

// SAFETY: a mapping is a process-wide fact about an address range; unmapping it from another thread is
// what the runtime allows.
unsafe impl Send for Mapping {}
// SAFETY: &Mapping only exposes immutable facts (address, size, the handles it holds).
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({:#x}, {:?})", self.addr(), self.phys)
    }
}

impl Mapping {
    /// Map all of `phys` at byte `offset` of `range` (the runtime maps whole handles only).
    pub fn map(range: &Arc<VaRange>, offset: usize, phys: &Arc<PhysicalMem>) -> Result<Mapping> {
        let end = offset.checked_add(phys.size()).filter(|&e| e <= range.size()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{:#x} bytes at offset {offset:#x} do not fit a range of {:#x} bytes",
                phys.size(),
                range.size()
            ))
        })?;
        let _ = end;
        if !range.rt.is_same(&phys.rt) {
            return Err(Error::InvalidArgument("the range and the physical memory are of different runtimes".into()));
        }
        let addr = range.base() + offset;
        // SAFETY: addr..addr+size lies inside our reserved range, and phys is a live handle (we hold it) of
        // the same runtime (checked above); the runtime refuses an overlap with an existing mapping.
        unsafe { raw::map_mem(&range.rt, addr as *mut c_void, phys.size(), 0, phys.as_raw(), 0)? };
        Ok(Mapping {
            addr: NonNull::new(addr as *mut c_void).expect("inside a range that starts at a non-null base"),
            phys: Arc::clone(phys),
            range: Arc::clone(range),
        })
    }

    /// The mapped address.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    /// Its size in bytes (the physical allocation's).
    pub fn size(&self) -> usize {
        self.phys.size()
    }

    /// The physical memory it maps.
    pub fn phys(&self) -> &Arc<PhysicalMem> {
        &self.phys
    }

    /// The range it is in.
    pub fn range(&self) -> &Arc<VaRange> {
        &self.range
    }

    /// Unmap now, reporting failure. On success the physical memory is handed back (freed when that last
    /// reference goes); on failure the mapping is.
    pub fn unmap(self) -> std::result::Result<Arc<PhysicalMem>, (Error, Mapping)> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: we own the mapping; nothing of ours uses it any more (the caller's contract for device
        // work queued on it is upheld by not handing out addresses of a mapping being unmapped).
        match unsafe { raw::unmap_mem(&this.range.rt, this.addr.as_ptr()) } {
            Ok(()) => {
                // SAFETY: the fields are moved out exactly once, and `this` is never used or dropped again.
                let (phys, range) = unsafe { (std::ptr::read(&this.phys), std::ptr::read(&this.range)) };
                drop(range);
                Ok(phys)
            }
            Err(e) => Err((e, std::mem::ManuallyDrop::into_inner(this))),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and is going away.
        if let Err(e) = release_retrying(|| unsafe { raw::unmap_mem(&self.range.rt, self.addr.as_ptr()) }) {
            self.range.errors.record(e);
            // It may still be mapped: freeing its memory or releasing its range now would be wrong, so
            // keep both for good (a leak, which is safe) by not letting go of our references.
            self.phys.abandon();
            std::mem::forget(Arc::clone(&self.phys));
            std::mem::forget(Arc::clone(&self.range));
        }
    }
}
