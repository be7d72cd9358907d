//! Private files and directories: where aclshm and the simulator keep what other processes map.
//!
//! Another user must not be able to plant, read or replace these objects, so: files are created new
//! (`O_EXCL`), never opened through a symbolic link (`O_NOFOLLOW`), with mode exactly 0600 whatever the
//! umask; a directory is ours, a real directory, and writable by nobody else (0700 when we create it).
//! Anything else is refused with a message that names the path and what is wrong with it.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{FallocateFlags, Mode, OFlags};

use crate::process::euid;

/// Create a new file read-write, mode exactly 0600, failing if anything exists at `path` (a link
/// included).
pub fn create_file(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR)?;
    // The umask may have narrowed the mode, never widened it; make it exactly 0600 all the same, so
    // that what check_private_file accepts does not depend on the creator's umask.
    if let Err(e) = rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR) {
        let _ = fs::remove_file(path);
        return Err(e.into());
    }
    Ok(fd)
}

/// Open an existing file read-write, refusing a symbolic link.
pub fn open_file(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?)
}

/// A private directory (0700) under the temporary directory, removed with everything in it when dropped
/// (even when a test fails): for tests and examples that need a simulator or share directory of their
/// own. `.0` is its path.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory named `aclshm-<what>-<random>`.
    pub fn new(what: &str) -> io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("aclshm-{what}-{:016x}", crate::random_u64()));
        ensure_private_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Open `path` to read it, without waiting: a FIFO with no writer opens at once instead of blocking
/// (`O_NONBLOCK`, which changes nothing for a regular file), so that a caller can look at what it opened
/// and refuse what it does not read.
pub fn open_read_nonblocking(path: &Path) -> io::Result<fs::File> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    Ok(fs::File::from(fd))
}

/// The length of the file behind `fd` now.
pub fn file_len(fd: impl AsFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// Check that the file behind `fd` (opened from `path`, which the message names) is ours and private:
/// owned by this process's effective uid, no access for group or others. Returns its length.
pub fn check_private_file(fd: impl AsFd, path: &Path) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    let mode = st.st_mode & 0o7777;
    if st.st_uid != euid() || mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {mode:o}; aclshm only uses files it owns with mode 0600",
                path.display(),
                st.st_uid,
            ),
        ));
    }
    // A file's length is never negative.
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Create `dir` (mode 0700, and its missing parents) or check an existing one: a real directory, not a
/// link, owned by us and writable by no one else. Anything else is refused: another user could plant or
/// read objects there.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return fs::set_permissions(dir, fs::Permissions::from_mode(0o700)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A missing parent (a directory set in the environment): create it, then this directory.
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            return fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    let me = euid();
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user (uid {me}); use a directory of yours",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others (mode {:o}); aclshm needs a private directory (0700)",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Give the file `fd` a length of `len` bytes, zero-filled and backed only as it is written (sparse).
pub fn set_len(fd: impl AsFd, len: u64) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, len)?)
}

/// Give the file `fd` a length of `len` bytes, all of it allocated now (`posix_fallocate`): a
/// shared-memory object that ran out of room later would kill the process that writes to it with
/// `SIGBUS`, where an allocation should fail up front instead.
pub fn allocate(fd: impl AsFd, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // A filesystem without fallocate(2): glibc's posix_fallocate writes each block instead, which
        // rustix does not offer.
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
            // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is borrowed, so it
            // stays open for the call.
            let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()), 0, len) };
            if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestDir;

    #[test]
    fn private_files_in_private_directories() {
        let dir = TestDir::new("file").unwrap();
        ensure_private_dir(&dir.0).unwrap();
        assert_eq!(fs::metadata(&dir.0).unwrap().mode() & 0o7777, 0o700);
        let path = dir.0.join("f");
        let f = create_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600, "exactly 0600");
        assert_eq!(create_file(&path).unwrap_err().kind(), io::ErrorKind::AlreadyExists, "never over a file");
        assert_eq!(check_private_file(&f, &path).unwrap(), 0);
        set_len(&f, 12345).unwrap();
        let g = open_file(&path).unwrap();
        assert_eq!(check_private_file(&g, &path).unwrap(), 12345, "the length, through another open");
        drop((f, g));

        std::os::unix::fs::symlink(&path, dir.0.join("link")).unwrap();
        assert!(open_file(&dir.0.join("link")).is_err(), "links are refused");
        assert!(create_file(&dir.0.join("link")).is_err(), "and never followed on create");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private_file(open_file(&path).unwrap(), &path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("mode 640"), "{e}");
    }

    #[test]
    fn directories_others_can_write_or_that_are_not_directories_are_refused() {
        let dir = TestDir::new("dir").unwrap();
        let nested = dir.0.join("a/b");
        ensure_private_dir(&nested).unwrap();
        ensure_private_dir(&nested).unwrap();
        assert_eq!(fs::metadata(&nested).unwrap().mode() & 0o7777, 0o700, "missing parents are made too");

        fs::set_permissions(&nested, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&nested).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");

        let file = dir.0.join("file");
        drop(create_file(&file).unwrap());
        let e = ensure_private_dir(&file).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");

        std::os::unix::fs::symlink(&dir.0, dir.0.join("link")).unwrap();
        let e = ensure_private_dir(&dir.0.join("link")).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "a link to a directory is not one: {e}");
    }

    #[test]
    fn allocate_backs_the_whole_length() {
        let dir = TestDir::new("alloc").unwrap();
        let f = create_file(&dir.0.join("f")).unwrap();
        allocate(&f, 1 << 20).unwrap();
        let st = rustix::fs::fstat(&f).unwrap();
        assert_eq!(st.st_size, 1 << 20);
        assert!(st.st_blocks * 512 >= 1 << 20, "allocated, not sparse: {} blocks", st.st_blocks);
        let g = create_file(&dir.0.join("g")).unwrap();
        set_len(&g, 1 << 20).unwrap();
        assert!(rustix::fs::fstat(&g).unwrap().st_blocks * 512 < 1 << 20, "set_len leaves it sparse");
    }
}
