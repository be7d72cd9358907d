//! Reading a text input named by a path (a trace, a configuration file) with a bound on its size.
//!
//! A path can name anything: `/dev/zero` never ends, a FIFO with no writer blocks whoever opens it, a
//! file can be larger than memory. [`read_text`] reads at most `limit` bytes: a regular file larger than
//! that is refused before a byte is read (its size is known), anything else once `limit + 1` bytes have
//! arrived, so memory stays bounded by the limit whatever the path is. What besides a regular file the
//! caller accepts is its choice ([`Accept`]):
//!
//! - [`Accept::FileOrStream`]: also pipes, FIFOs and character devices, read to their end. For traces:
//!   `aclshm tune --trace /dev/stdin < t.trace` and `--trace <(zcat t.trace.gz)` are legitimate, and
//!   opening a FIFO waits for its writer, as `cat` does.
//! - [`Accept::RegularFile`]: a regular file only (or a link to one). For configuration files, which a
//!   program reads while it starts: the path is opened without blocking and refused if it is anything
//!   else, so a FIFO with no writer cannot hang the caller.
//!
//! Failures of the operating system are [`Error::Io`] (with the path); too large, not a regular file or
//! not UTF-8 are [`Error::InvalidArgument`] naming the path and the limit.

#![deny(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::error::{Error, Result};

/// What a path may name besides a regular file (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// A regular file only.
    RegularFile,
    /// A regular file, a pipe or FIFO, or a character device.
    FileOrStream,
}

/// `n` bytes for a message: in MiB or KiB when it is a whole number of them.
pub(crate) fn size_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// `s` quoted for a message (as `{:?}` quotes), cut after 40 characters: an error names what it refuses
/// without printing a whole line of a megabyte.
pub(crate) fn excerpt(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

/// Read the text at `path`, at most `limit` bytes of it; `what` names it in errors (`"trace"`).
pub(crate) fn read_text(path: &Path, limit: u64, what: &str, accept: Accept) -> Result<String> {
    let shown = path.display();
    let too_large =
        || Error::InvalidArgument(format!("{what} {shown} is larger than the limit of {}", size_text(limit)));
    // Opening a FIFO for reading blocks until a writer comes: where only regular files are read, open
    // without waiting, so the check below can refuse it.
    let file = if accept == Accept::RegularFile { aclshm_os::open_read_nonblocking(path) } else { File::open(path) }
        .map_err(|e| Error::io(format!("open {what} {shown}"), e))?;
    let meta = file.metadata().map_err(|e| Error::io(format!("stat {what} {shown}"), e))?;
    let kind = meta.file_type();
    let stream = kind.is_fifo() || kind.is_char_device();
    let accepted = kind.is_file() || (accept == Accept::FileOrStream && stream);
    if !accepted {
        let is = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::InvalidArgument(format!("{what} {shown} is {is}, not a regular file")));
    }
    if kind.is_file() && meta.len() > limit {
        return Err(too_large());
    }
    // A regular file's size is known (it may still grow while it is read: the bound below holds anyway).
    let hint = if kind.is_file() { meta.len() } else { 64 << 10 };
    let mut bytes = Vec::with_capacity(usize::try_from(hint.min(limit).saturating_add(1)).unwrap_or(0));
    read_bounded(file, limit, &mut bytes).map_err(|e| Error::io(format!("read {what} {shown}"), e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::InvalidArgument(format!("{what} {shown} is not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()))
    })
}

/// Read to the end of `file`, or until `limit + 1` bytes are in `out`, whichever comes first.
fn read_bounded(file: File, limit: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
    file.take(limit.saturating_add(1)).read_to_end(out)
}

/// A file holding `text` in a fresh test directory (kept while the directory is), for tests of readers.
#[cfg(test)]
pub(crate) fn test_file(name: &str, text: &str) -> (crate::os::TestDir, std::path::PathBuf) {
    let dir = crate::os::TestDir::new("input").unwrap();
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

/// Make the file at `p` one byte longer than `limit` (sparse: nothing is written).
#[cfg(test)]
pub(crate) fn grow_past(p: &Path, limit: u64) {
    std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(limit + 1).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private scratch directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("aclshm-input-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn files_up_to_the_limit_are_read_and_larger_ones_refused_naming_the_limit() {
        let s = Scratch::new("limit");
        let p = s.0.join("t");
        std::fs::write(&p, "x".repeat(1024)).unwrap();
        for accept in [Accept::RegularFile, Accept::FileOrStream] {
            assert_eq!(read_text(&p, 1024, "trace", accept).unwrap().len(), 1024);
            let e = read_text(&p, 1023, "trace", accept).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!("invalid argument: trace {} is larger than the limit of 1023 bytes", p.display())
            );
        }
        // A sparse file is refused by its size, without reading it.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1 << 40).unwrap();
        let e = read_text(&p, 1 << 20, "configuration file", Accept::RegularFile).unwrap_err().to_string();
        assert!(e.ends_with("is larger than the limit of 1 MiB"), "{e}");
    }

    #[test]
    fn an_endless_stream_is_read_only_up_to_the_limit() {
        let e = read_text(Path::new("/dev/zero"), 4096, "trace", Accept::FileOrStream).unwrap_err().to_string();
        assert_eq!(e, "invalid argument: trace /dev/zero is larger than the limit of 4 KiB");
        // A configuration must be a regular file.
        let e = read_text(Path::new("/dev/zero"), 4096, "configuration file", Accept::RegularFile).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: configuration file /dev/zero is a character device, not a regular file"
        );
    }

    #[test]
    fn a_fifo_is_read_as_a_stream_and_refused_at_once_as_a_configuration() {
        let s = Scratch::new("fifo");
        let p = s.0.join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        #[allow(unsafe_code)]
        let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // No writer: refused without blocking.
        let e = read_text(&p, 4096, "configuration file", Accept::RegularFile).unwrap_err().to_string();
        assert!(e.ends_with("is a FIFO, not a regular file"), "{e}");
        // With a writer: read to its end.
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::write(p, "aclshm-trace 1\nalloc 1 4K\n").unwrap())
        };
        assert_eq!(read_text(&p, 4096, "trace", Accept::FileOrStream).unwrap(), "aclshm-trace 1\nalloc 1 4K\n");
        writer.join().unwrap();
    }

    #[test]
    fn missing_paths_directories_and_binary_data_say_what_is_wrong() {
        let s = Scratch::new("bad");
        let missing = s.0.join("missing");
        match read_text(&missing, 4096, "trace", Accept::FileOrStream) {
            Err(Error::Io { context, source }) => {
                assert_eq!(context, format!("open trace {}", missing.display()));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        for accept in [Accept::RegularFile, Accept::FileOrStream] {
            let e = read_text(&s.0, 4096, "trace", accept).unwrap_err().to_string();
            assert!(e.ends_with("is a directory, not a regular file"), "{e}");
        }
        let bin = s.0.join("bin");
        std::fs::write(&bin, b"aclshm-trace 1\n\xff\xfe").unwrap();
        let e = read_text(&bin, 4096, "trace", Accept::FileOrStream).unwrap_err().to_string();
        assert!(e.ends_with("is not UTF-8 text (at byte 15)"), "{e}");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("alloc"), "\"alloc\"");
        let long = "é".repeat(1 << 20);
        let e = excerpt(&long);
        assert_eq!(e, format!("{:?}... (2097152 bytes)", "é".repeat(40)));
    }

    #[test]
    fn sizes_read_well_in_messages() {
        assert_eq!(size_text(256 << 20), "256 MiB");
        assert_eq!(size_text(64 << 10), "64 KiB");
        assert_eq!(size_text(1023), "1023 bytes");
        assert_eq!(size_text(u64::MAX), "18446744073709551615 bytes");
    }
}
