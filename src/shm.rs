//! One type for every file aclshm shares through a share directory: a pool's chunk table, a KV pool's
//! block table and its workers' pin files, an IPC export's importer file. Each is a private file (0600,
//! in a 0700 directory), mapped read-write in every process that opens it, laid out the same way:
//!
//! ```text
//!   0   magic (8 bytes, one per kind of file)     8  layout version (u32)    12  state (u32: open / closed)
//!   16  the kind's own header (`H`, all atomics, at most 48 bytes)
//!   64  payload: an array of the kind's items (all atomics), as many as the file's size says
//! ```
//!
//! [`ShmFile::create`] makes the file (never over an existing one), locks its byte 0 for as long as the
//! creator lives (so others learn from the kernel when it dies, however it dies), fills the header, and
//! publishes the magic last. [`ShmFile::open`] checks, before trusting a byte, that the file is ours and
//! private, large enough, of the right magic and version, and lets the kind check the rest. Every field is
//! an atomic, so processes racing each other read stale values, never torn ones.
//!
//! A file truncated under its mappings (by a careless or hostile process of the same user) does not kill
//! the processes that map it: the mapping is guarded (`aclshm_os::guard`), reads zeros from then on, and
//! [`ShmFile::check_intact`] says so at each reader's checkpoints.
//!
//! Files whose creator died are removed by [`sweep`] (each kind says which names are its own), by the
//! module that uses them, and by `aclshm sim clean`.

use std::fs;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::os::{self, SharedMap};
use crate::sync::shm::{AtomicU32, AtomicU64, Ordering};

/// Bytes before the payload: the common prefix and the kind's header.
pub(crate) const HEADER_BYTES: usize = 64;

/// `state`: in use.
pub(crate) const OPEN: u32 = 1;
/// `state`: its creator closed it (no one may join any more).
pub(crate) const CLOSED: u32 = 2;

/// Memory that several processes read and write at once.
///
/// # Safety
/// 1. The type is `#[repr(C)]` and made only of atomics (or arrays of atomics): every bit pattern is a
///    valid value, and it may be shared mutably across processes.
pub(crate) unsafe trait Shared: Sized + Sync {}

// SAFETY: an atomic is its own shared representation; every bit pattern is a valid integer.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU64 {}

/// A kind of shared file: its header type, magic and version, and its name for messages.
pub(crate) trait Kind {
    /// The kind's header, after the common prefix.
    type Header: Shared;
    /// The payload's items.
    type Item: Shared;
    /// Eight bytes that say what the file is.
    const MAGIC: [u8; 8];
    /// Bumped whenever the layout changes: a process never maps a file of another layout.
    const VERSION: u32;
    /// What to call it in messages ("chunk table").
    const WHAT: &'static str;
}

/// Declare a kind of shared file in one line: `kind!(Name: Header, Item, b"MAGIC..", version, "what");`
/// (a unit struct implementing [`Kind`]).
macro_rules! kind {
    ($(#[$m:meta])* $vis:vis $name:ident: $header:ty, $item:ty, $magic:literal, $version:literal, $what:literal) => {
        $(#[$m])*
        $vis struct $name;
        impl $crate::shm::Kind for $name {
            type Header = $header;
            type Item = $item;
            const MAGIC: [u8; 8] = *$magic;
            const VERSION: u32 = $version;
            const WHAT: &'static str = $what;
        }
    };
}
pub(crate) use kind;

#[repr(C)]
struct Prefix {
    magic: AtomicU64,
    version: AtomicU32,
    state: AtomicU32,
}

/// A mapped shared file of kind `K`.
pub(crate) struct ShmFile<K: Kind> {
    map: SharedMap,
    path: PathBuf,
    items: usize,
    /// The creator's: closing removes the file.
    creator: bool,
    _kind: PhantomData<K>,
}

impl<K: Kind> std::fmt::Debug for ShmFile<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmFile({} {}, {} items)", K::WHAT, self.path.display(), self.items)
    }
}

impl<K: Kind> ShmFile<K> {
    const LAYOUT: () = assert!(
        size_of::<Prefix>() + size_of::<K::Header>() <= HEADER_BYTES
            && align_of::<K::Header>() <= 16
            && align_of::<K::Item>() <= HEADER_BYTES
    );

    /// Create the file at `path` with room for `items` payload items, lock it as its creator's, fill the
    /// header with `init`, and publish it (state open, magic last).
    pub(crate) fn create(path: &Path, items: usize, init: impl FnOnce(&K::Header)) -> Result<ShmFile<K>> {
        #[allow(clippy::let_unit_value)]
        let () = Self::LAYOUT;
        let len = items
            .checked_mul(size_of::<K::Item>())
            .and_then(|n| n.checked_add(HEADER_BYTES))
            .ok_or_else(|| Error::InvalidArgument(format!("a {} of {items} items is too large", K::WHAT)))?;
        let map =
            SharedMap::create_locked(path, len).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let f = ShmFile { map, path: path.to_path_buf(), items, creator: true, _kind: PhantomData };
        init(f.header());
        let p = f.prefix();
        p.version.store(K::VERSION, Ordering::Relaxed);
        p.state.store(OPEN, Ordering::Relaxed);
        // Written last: a reader that sees the magic sees the rest.
        p.magic.store(u64::from_le_bytes(K::MAGIC), Ordering::Release);
        Ok(f)
    }

    /// Open the file at `path`: it must be ours and private, hold the header and a whole number of items,
    /// and be of this kind and version; then `check` looks at the header and the item count, and returns
    /// what it read there (or an error saying why the file is not what the caller expects). A file that is
    /// not there, or not ours, is [`Error::Io`]; one that is not right, [`Error::Protocol`].
    pub(crate) fn open<T>(
        path: &Path,
        check: impl FnOnce(&K::Header, usize) -> Result<T, String>,
    ) -> Result<(ShmFile<K>, T)> {
        #[allow(clippy::let_unit_value)]
        let () = Self::LAYOUT;
        let bad = |why: String| Error::Protocol(format!("{} {}: {why}", K::WHAT, path.display()));
        let len = fs::symlink_metadata(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?.len();
        let len = usize::try_from(len).map_err(|_| bad(format!("{len} bytes is too large")))?;
        if len < HEADER_BYTES || !(len - HEADER_BYTES).is_multiple_of(size_of::<K::Item>()) {
            return Err(bad(format!("{len} bytes is not a {}", K::WHAT)));
        }
        let map = SharedMap::open(path, len).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => bad(e.to_string()),
            _ => Error::io(format!("open {}", path.display()), e),
        })?;
        let f = ShmFile {
            map,
            path: path.to_path_buf(),
            items: (len - HEADER_BYTES) / size_of::<K::Item>(),
            creator: false,
            _kind: PhantomData,
        };
        let p = f.prefix();
        if p.magic.load(Ordering::Acquire) != u64::from_le_bytes(K::MAGIC) {
            return Err(bad(format!("not an aclshm {}", K::WHAT)));
        }
        let version = p.version.load(Ordering::Relaxed);
        if version != K::VERSION {
            return Err(bad(format!("layout version {version}; this aclshm reads version {}", K::VERSION)));
        }
        let read = check(f.header(), f.items).map_err(bad)?;
        Ok((f, read))
    }

    #[inline]
    fn prefix(&self) -> &Prefix {
        // SAFETY: the mapping is at least HEADER_BYTES long and page-aligned; Prefix is all atomics.
        unsafe { &*self.map.ptr().cast::<Prefix>() }
    }

    /// The kind's header.
    #[inline]
    pub(crate) fn header(&self) -> &K::Header {
        // SAFETY: the header lies inside the first HEADER_BYTES (LAYOUT), at an offset its alignment divides
        // (16), in a mapping at least that long; K::Header is Shared (all atomics).
        unsafe { &*self.map.ptr().add(size_of::<Prefix>()).cast::<K::Header>() }
    }

    /// The payload's items.
    #[inline]
    pub(crate) fn items(&self) -> &[K::Item] {
        // SAFETY: the file holds exactly `items` items after HEADER_BYTES (checked at create and open), the
        // offset is aligned for K::Item (LAYOUT; the mapping is page-aligned), and K::Item is Shared.
        unsafe { std::slice::from_raw_parts(self.map.ptr().add(HEADER_BYTES).cast::<K::Item>(), self.items) }
    }

    /// Whether the file is still what was mapped: an error once someone truncated it under this process
    /// (what it held is lost; the mapping reads zeros from then on), or wrote over its magic or version.
    pub(crate) fn check_intact(&self) -> Result<()> {
        let damage = if self.map.truncated() {
            "was truncated under this process: its contents are lost"
        } else if self.prefix().magic.load(Ordering::Acquire) != u64::from_le_bytes(K::MAGIC)
            || self.prefix().version.load(Ordering::Relaxed) != K::VERSION
        {
            "was written over by another process (its magic or version changed)"
        } else {
            return Ok(());
        };
        Err(Error::Protocol(format!("{} {} {damage}", K::WHAT, self.path.display())))
    }

    /// The state word (open, closed).
    pub(crate) fn state(&self) -> &AtomicU32 {
        &self.prefix().state
    }

    /// Whether the creator marked it closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state().load(Ordering::Acquire) == CLOSED
    }

    /// Mark it closed and remove the file (those who mapped it keep their mapping). Returns whether this
    /// call closed it. The creator's only; idempotent.
    pub(crate) fn close(&self) -> bool {
        debug_assert!(self.creator);
        let closed = self.state().swap(CLOSED, Ordering::AcqRel) != CLOSED;
        if closed {
            self.remove();
        }
        closed
    }

    /// Whether the process that created the file still holds it (it locks byte 0 while it lives).
    pub(crate) fn creator_alive(&self) -> bool {
        self.map.creator_alive()
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file from its directory (mappings of it stay valid).
    pub(crate) fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }

    /// The mapping underneath (byte locks on the file).
    pub(crate) fn map(&self) -> &SharedMap {
        &self.map
    }
}

/// The share directory to use: `explicit` if the caller gave one, else the default (`$ACLSHM_SHARE_DIR`,
/// else `/dev/shm/aclshm-share-<uid>`), created private or checked to be (ours, a real directory,
/// writable by no one else). When the default cannot be used (another user made it first, say), the
/// error names the way out.
pub(crate) fn share_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = explicit.map_or_else(os::default_share_dir, Path::to_path_buf);
    os::private_dir(&dir).map_err(|e| {
        let way_out =
            if explicit.is_some() { "" } else { " (ACLSHM_SHARE_DIR, or the config's `dir`, chooses another)" };
        Error::io(format!("share directory {}{way_out}", dir.display()), e)
    })?;
    Ok(dir)
}

/// The names a kind of shared file has in a share directory, and what goes with each file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
    /// How its names start.
    pub prefix: &'static str,
    /// How they end.
    pub suffix: &'static str,
    /// The extension of a file removed with it (a chunk table's rendezvous socket).
    pub companion: Option<&'static str>,
}

impl Names {
    fn matches(&self, name: &str) -> bool {
        name.len() > self.prefix.len() + self.suffix.len()
            && name.starts_with(self.prefix)
            && name.ends_with(self.suffix)
    }
}

/// Remove the files in `dir` of the kinds `names` lists that are at least `min_age` old and whose creator
/// is gone (no one holds its lock), with their companions. Returns how many it removed. Housekeeping:
/// errors are ignored.
pub(crate) fn sweep(dir: &Path, names: &[Names], min_age: Duration) -> usize {
    let removed = std::cell::Cell::new(0);
    os::sweep_orphans(
        dir,
        |n| names.iter().any(|k| k.matches(n)),
        min_age,
        |p| {
            removed.set(removed.get() + 1);
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(ext) = names.iter().find(|k| k.matches(name)).and_then(|k| k.companion) {
                let _ = fs::remove_file(p.with_extension(ext));
            }
        },
    );
    removed.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct DemoHeader {
        token: AtomicU64,
    }
    // SAFETY: repr(C), atomics only.
    unsafe impl Shared for DemoHeader {}

    kind!(Demo: DemoHeader, AtomicU32, b"ACLSHMTT", 3, "demo file");
    kind!(Other: DemoHeader, AtomicU32, b"ACLSHMOT", 3, "other file");

    #[test]
    fn what_the_creator_writes_the_opener_reads_and_checks() {
        let dir = os::TestDir::new("shm").unwrap();
        let path = dir.0.join("f");
        let w = ShmFile::<Demo>::create(&path, 10, |h| h.token.store(42, Ordering::Relaxed)).unwrap();
        assert!(ShmFile::<Demo>::create(&path, 10, |_| {}).is_err(), "never over an existing file");
        w.items()[9].store(7, Ordering::Relaxed);
        let (r, token) = ShmFile::<Demo>::open(&path, |h, n| {
            let token = h.token.load(Ordering::Relaxed);
            if token == 42 && n == 10 { Ok(token) } else { Err("not mine".into()) }
        })
        .unwrap();
        assert_eq!(token, 42);
        assert_eq!(r.items()[9].load(Ordering::Relaxed), 7);
        assert!(r.creator_alive());
        let e = ShmFile::<Demo>::open(&path, |_, _| Err::<(), _>("another pool".into())).unwrap_err();
        assert!(matches!(&e, Error::Protocol(m) if m.contains("demo file") && m.contains("another pool")), "{e}");
        let e = ShmFile::<Other>::open(&path, |_, _| Ok(())).unwrap_err();
        assert!(matches!(&e, Error::Protocol(m) if m.contains("not an aclshm other file")), "{e}");
        assert!(w.close());
        assert!(!w.close(), "closed once");
        assert!(r.is_closed());
        assert!(!path.exists());
        drop(w);
        assert!(!r.creator_alive());
        let e = ShmFile::<Demo>::open(&path, |_, _| Ok(())).unwrap_err();
        assert!(matches!(&e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{e}");
    }

    #[test]
    fn a_file_truncated_under_its_readers_is_an_error_not_a_crash() {
        let dir = os::TestDir::new("shm-trunc").unwrap();
        let path = dir.0.join("f");
        let w = ShmFile::<Demo>::create(&path, 4096, |h| h.token.store(42, Ordering::Relaxed)).unwrap();
        let (r, ()) = ShmFile::<Demo>::open(&path, |_, _| Ok(())).unwrap();
        w.items()[4000].store(9, Ordering::Relaxed);
        r.check_intact().unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        // Without the guard, each of these reads would end the process with SIGBUS.
        assert_eq!(r.items()[4000].load(Ordering::Relaxed), 0, "the bytes are gone");
        assert_eq!(r.header().token.load(Ordering::Relaxed), 0);
        let e = r.check_intact().unwrap_err();
        assert!(e.to_string().contains("was truncated under this process"), "{e}");
        // The creator's own mapping is guarded too.
        assert_eq!(w.items()[4000].load(Ordering::Relaxed), 0);
        assert!(w.check_intact().is_err());
    }

    #[test]
    fn files_of_the_wrong_size_or_version_are_refused() {
        let dir = os::TestDir::new("shm-bad").unwrap();
        let short = dir.0.join("short");
        drop(SharedMap::create(&short, 40).unwrap());
        assert!(matches!(ShmFile::<Demo>::open(&short, |_, _| Ok(())), Err(Error::Protocol(_))));
        let ragged = dir.0.join("ragged");
        drop(SharedMap::create(&ragged, HEADER_BYTES + 6).unwrap());
        assert!(matches!(ShmFile::<Demo>::open(&ragged, |_, _| Ok(())), Err(Error::Protocol(_))));
        let old = dir.0.join("old");
        let f = ShmFile::<Demo>::create(&old, 1, |_| {}).unwrap();
        f.prefix().version.store(2, Ordering::Relaxed);
        let e = ShmFile::<Demo>::open(&old, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("layout version 2; this aclshm reads version 3"), "{e}");
    }

    #[test]
    fn sweeping_takes_only_dead_creators_files_of_the_kinds_named() {
        let dir = os::TestDir::new("shm-sweep").unwrap();
        let names = [Names { prefix: "t-", suffix: ".demo", companion: Some("sock") }];
        let live = ShmFile::<Demo>::create(&dir.0.join("t-1.demo"), 1, |_| {}).unwrap();
        drop(ShmFile::<Demo>::create(&dir.0.join("t-2.demo"), 1, |_| {}).unwrap());
        std::fs::write(dir.0.join("t-2.sock"), b"").unwrap();
        drop(ShmFile::<Demo>::create(&dir.0.join("u-3.demo"), 1, |_| {}).unwrap());
        assert_eq!(sweep(&dir.0, &names, Duration::ZERO), 1);
        assert!(live.path().exists(), "its creator lives");
        assert!(!dir.0.join("t-2.demo").exists() && !dir.0.join("t-2.sock").exists(), "gone with its companion");
        assert!(dir.0.join("u-3.demo").exists(), "not a kind named");
    }
}
