//! Memory mappings owned by a value: a whole file shared with other processes, and private anonymous
//! memory. Both are unmapped when dropped.
//!
//! Both hand out raw pointers only ([`memmap2::MmapRaw`] underneath, never a `&[u8]`): the contents of a
//! shared mapping change under us whenever another process writes, and an anonymous mapping is written
//! by C callers through the pointer, so no Rust reference to the bytes may exist. Users synchronise
//! access to the contents themselves (atomics, a process-shared lock, or the C API's contract).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use memmap2::{MmapOptions, MmapRaw};

/// A read-write shared mapping of the first `len` bytes of a file, at an address of the kernel's
/// choosing: how every process attached to a shared-memory file reaches it.
#[derive(Debug)]
pub struct SharedMapping(MmapRaw);

impl SharedMapping {
    /// Map the first `len` bytes of `fd` (open read-write) read-write and shared. The file must be at
    /// least `len` bytes long for the whole mapping to be usable (touching a page past its end raises
    /// `SIGBUS`); callers check the length first (`check_private_file` returns it).
    pub fn map(fd: impl AsFd, len: usize) -> io::Result<SharedMapping> {
        MmapOptions::new().len(len).map_raw(fd.as_fd().as_raw_fd()).map(SharedMapping)
    }
}

/// Where both kinds of mapping are: their start and length (raw: see the module docs).
macro_rules! extent {
    ($ty:ty) => {
        impl $ty {
            /// The start of the mapping (page-aligned).
            #[inline]
            pub fn ptr(&self) -> *mut u8 {
                self.0.as_mut_ptr()
            }

            /// Its length in bytes, as asked for.
            #[inline]
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether it is empty.
            pub fn is_empty(&self) -> bool {
                self.0.len() == 0
            }
        }
    };
}

extent!(SharedMapping);
extent!(AnonymousMapping);

/// Private, read-write, anonymous memory of `len` bytes (zero-filled, committed as it is touched): host
/// memory handed to a C caller, such as the simulator's `aclrtMallocHost`.
#[derive(Debug)]
pub struct AnonymousMapping(MmapRaw);

impl AnonymousMapping {
    /// Map `len` bytes (rounded up to whole pages by the kernel).
    pub fn new(len: usize) -> io::Result<AnonymousMapping> {
        Ok(AnonymousMapping(MmapOptions::new().len(len).map_anon()?.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open_file, set_len, test_file};

    #[test]
    fn two_mappings_of_a_file_see_the_same_bytes() {
        let (_dir, path, f) = test_file("map");
        set_len(&f, 8192).unwrap();
        let a = SharedMapping::map(&f, 8192).unwrap();
        let b = SharedMapping::map(open_file(&path).unwrap(), 8192).unwrap();
        assert_eq!((a.len(), a.is_empty()), (8192, false));
        assert_ne!(a.ptr(), b.ptr());
        assert_eq!(a.ptr() as usize % 4096, 0);
        // SAFETY: both map the same 8 KiB file read-write; offsets stay inside.
        unsafe {
            a.ptr().add(5000).write(7);
            assert_eq!(b.ptr().add(5000).read(), 7, "shared, not copied");
        }
        // The descriptor may go: the mapping keeps the file.
        drop(f);
        // SAFETY: as above.
        unsafe { assert_eq!(a.ptr().add(5000).read(), 7) };
    }

    #[test]
    fn anonymous_memory_is_zeroed_and_writable() {
        let m = AnonymousMapping::new(10_000).unwrap();
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.ptr() as usize % 4096, 0);
        // SAFETY: the mapping holds 10 000 bytes, ours alone.
        unsafe {
            assert_eq!(m.ptr().add(9_999).read(), 0);
            m.ptr().add(9_999).write(1);
            assert_eq!(m.ptr().add(9_999).read(), 1);
        }
    }
}
