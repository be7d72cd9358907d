//! Address space without memory behind it, and a second view of a shared mapping placed inside it: what
//! the simulator's device address ranges are made of.
//!
//! ```text
//!   reserve(len, align)        [ PROT_NONE, MAP_NORESERVE ..................... ]  nothing committed
//!   mirror_at(base + off, n)   [ PROT_NONE | the object's pages, PROT_NONE | .... ]  same pages as the
//!                                                                                    object's RW mapping
//!   rereserve(base + off, n)   [ PROT_NONE ...................................... ]  back to a hole
//!   unreserve(base, len)       the range returns to the kernel
//! ```
//!
//! A mirror is inaccessible to the host (dereferencing it faults, as a device pointer does on an NPU host),
//! yet it is backed by the same pages as the object's read-write mapping, through which copies go.
//!
//! The functions that replace or remove mappings at a given address are `unsafe`: the kernel would
//! replace whatever is there, including memory Rust code still uses. Their `# Safety` sections say what
//! the caller owns.

use std::ffi::c_void;
use std::io;

use rustix::mm::{MapFlags, MprotectFlags, MremapFlags, ProtFlags};

use crate::map::SharedMapping;

/// Reserve `len` bytes of address space aligned to `align`, inaccessible (`PROT_NONE`) and without
/// committing memory. With `at`, only that address is acceptable (an error if anything is mapped there).
///
/// `align` is a power of two and a multiple of the page size, `len` a multiple of the page size.
pub fn reserve(len: usize, align: usize, at: Option<usize>) -> io::Result<usize> {
    debug_assert!(align.is_power_of_two() && align >= 4096 && len.is_multiple_of(4096));
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
    if let Some(addr) = at {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; it fails instead.
        let p = unsafe {
            rustix::mm::mmap_anonymous(addr as *mut c_void, len, ProtFlags::empty(), flags | MapFlags::FIXED_NOREPLACE)
        }?;
        if p as usize != addr {
            // Kernels older than 4.17 ignore the flag and treat the address as a hint.
            // SAFETY: p..p+len is the mapping just created, which nobody else knows of.
            let _ = unsafe { rustix::mm::munmap(p, len) };
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        return Ok(addr);
    }
    // Over-reserve by the alignment, then give back the unaligned head and the tail.
    let total = len.checked_add(align).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing replaces nothing.
    let p = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), total, ProtFlags::empty(), flags) }?;
    let start = p as usize;
    let base = start.next_multiple_of(align);
    let head = base - start;
    let tail = total - head - len;
    // SAFETY: both trims lie inside the mapping just created, outside [base, base+len); a failure would
    // only leave a little extra address space reserved.
    unsafe {
        if head > 0 {
            let _ = rustix::mm::munmap(start as *mut c_void, head);
        }
        if tail > 0 {
            let _ = rustix::mm::munmap((base + len) as *mut c_void, tail);
        }
    }
    Ok(base)
}

/// Return `[addr, addr+len)` to the kernel, whatever is mapped there.
///
/// # Safety
/// 1. The range is address space the caller reserved or mapped (page-aligned), and nothing references
///    it any more.
pub unsafe fn unreserve(addr: usize, len: usize) {
    // SAFETY: forwarded to the caller (precondition 1). munmap fails only for a range that is not
    // page-aligned, which precondition 1 excludes, so there is nothing to report.
    let _ = unsafe { rustix::mm::munmap(addr as *mut c_void, len) };
}

/// Put `[addr, addr+len)` back to an inaccessible, uncommitted reservation, replacing what is mapped
/// there (a mirror, say).
///
/// # Safety
/// 1. The range lies inside a reservation the caller owns (page-aligned), and no one uses what is mapped
///    there.
pub unsafe fn rereserve(addr: usize, len: usize) -> io::Result<()> {
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED;
    // SAFETY: MAP_FIXED replaces only the caller's own range (precondition 1).
    unsafe { rustix::mm::mmap_anonymous(addr as *mut c_void, len, ProtFlags::empty(), flags) }?;
    Ok(())
}

impl SharedMapping {
    /// Map the first `len` bytes of this mapping's pages a second time at `addr`, inaccessible
    /// (`PROT_NONE`): the same memory, unreachable from the host. Replaces what is at `addr` (the
    /// reservation). On failure the range is a reservation again.
    ///
    /// # Safety
    /// 1. `len <= self.len()`, page-aligned, and `[addr, addr+len)` lies inside a reservation the caller
    ///    owns, with nothing else mapped there.
    pub unsafe fn mirror_at(&self, addr: usize, len: usize) -> io::Result<()> {
        debug_assert!(len <= self.len());
        // SAFETY: an old size of 0 on a shared mapping duplicates it rather than moving it (mremap(2)), so
        // our mapping stays; MREMAP_FIXED replaces only the caller's reserved range (precondition 1).
        let p =
            unsafe { rustix::mm::mremap_fixed(self.ptr().cast(), 0, len, MremapFlags::MAYMOVE, addr as *mut c_void) }?;
        // SAFETY: p..p+len was just mapped by us, inside the caller's range.
        if let Err(e) = unsafe { rustix::mm::mprotect(p, len, MprotectFlags::empty()) } {
            // SAFETY: undo the mirror; the range is the caller's reservation (precondition 1).
            let _ = unsafe { rereserve(addr, len) };
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestDir, allocate, create_file};

    /// The protection of the mapping containing `addr`, from /proc/self/maps ("---p", "rw-s", ...).
    fn protection_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
            (lo <= addr && addr < hi).then(|| f.next().unwrap().to_string())
        })
    }

    #[test]
    fn reservations_are_aligned_and_inaccessible() {
        let base = reserve(4 << 20, 2 << 20, None).unwrap();
        assert_eq!(base % (2 << 20), 0);
        assert_eq!(protection_at(base).as_deref(), Some("---p"));
        assert_eq!(protection_at(base + (4 << 20) - 1).as_deref(), Some("---p"));
        let e = reserve(2 << 20, 2 << 20, Some(base + (2 << 20))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "an occupied address is refused, not replaced");
        // SAFETY: our reservation, unused.
        unsafe { unreserve(base, 4 << 20) };
    }

    #[test]
    fn a_reservation_at_an_address_is_there_and_unreserve_returns_it() {
        // Far below where the kernel places mappings (top-down from near 128 TiB) and above the program
        // and its heap, so no other thread of the test can take it meanwhile.
        let addr = 0x3000_0000_0000 + (crate::random_u64() as usize % 4096) * (2 << 20);
        assert_eq!(reserve(2 << 20, 2 << 20, Some(addr)).unwrap(), addr);
        assert_eq!(protection_at(addr).as_deref(), Some("---p"));
        // SAFETY: our reservation, unused.
        unsafe { unreserve(addr, 2 << 20) };
        assert_eq!(protection_at(addr), None, "returned to the kernel");
        assert_eq!(reserve(2 << 20, 2 << 20, Some(addr)).unwrap(), addr, "and free to reserve again");
        // SAFETY: as above.
        unsafe { unreserve(addr, 2 << 20) };
    }

    #[test]
    fn a_mirror_shares_pages_with_its_mapping_and_is_inaccessible() {
        let dir = TestDir::new("mirror").unwrap();
        let f = create_file(&dir.0.join("obj")).unwrap();
        allocate(&f, 2 << 20).unwrap();
        let a = SharedMapping::map(&f, 2 << 20).unwrap();
        let va = reserve(4 << 20, 2 << 20, None).unwrap();
        // SAFETY: va..va+2M is inside our reservation with nothing mapped.
        unsafe { a.mirror_at(va, 2 << 20).unwrap() };
        assert_eq!(protection_at(va).as_deref(), Some("---s"), "shared pages, no access");
        assert_eq!(protection_at(va + (2 << 20)).as_deref(), Some("---p"), "the rest still reserved");
        // SAFETY: va..va+2M mirrors a; make it readable only to look through it in this test.
        unsafe {
            a.ptr().add(100).write(42);
            rustix::mm::mprotect(va as *mut c_void, 4096, MprotectFlags::READ).unwrap();
            assert_eq!((va as *const u8).add(100).read(), 42, "the mirror sees the mapping's bytes");
        }
        // SAFETY: still our range, nothing uses the mirror.
        unsafe { rereserve(va, 2 << 20).unwrap() };
        assert_eq!(protection_at(va).as_deref(), Some("---p"));
        // SAFETY: as above.
        unsafe { unreserve(va, 4 << 20) };
    }
}
