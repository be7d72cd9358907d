//! [`PoolConfig`] and its file format, which `aclshm tune` writes and [`PoolConfig::load`] reads.
//!
//! ```text
//!   # comments and blank lines are ignored
//!   chunk_bytes = 8388608          # any size may also be written 8M, 8MiB, 1G ...
//!   reserve_bytes = 0              # 0: as large as the device
//!   page = 2M                      # 2M or 1G
//!   trim_watermark = none          # or a size: trim down to it after a free
//!   reserve_chunks = 0
//!   thread_cache = false           # true: per-thread magazines in front of the heap
//!   kv_block_bytes = 262144        # optional: the KV block size (read by KvConfig::load)
//! ```
//!
//! Every key is optional (a missing one keeps its default); an unknown key, a repeated one, or a value
//! that does not parse is an error naming the line. A file is read up to
//! [`PoolConfig::MAX_FILE_BYTES`] (1 MiB; `aclshm tune` writes a few hundred bytes), and must be a
//! regular file: a FIFO or a device is refused at once rather than read from.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::input::{Accept, excerpt, read_text};
use crate::vmm::PageSize;

/// How a [`Pool`](super::Pool) is set up. Every field has a default; each says what it trades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Virtual address space to reserve up front, in bytes (rounded up to whole chunks). `0`: as much as
    /// the device has memory. Address space is cheap; more than the device holds only matters if the pool
    /// is fragmented into chunks with holes between them.
    pub reserve_bytes: u64,
    /// Size of each physical chunk, a multiple of the page size. Larger chunks mean fewer runtime calls
    /// per byte (each chunk costs an allocation and a map, and an export and an import per process when
    /// shared) but coarser trimming and more memory held for small pools. 20 MiB, as torch_npu's large
    /// segments, until the tuning benchmarks choose.
    pub chunk_bytes: u64,
    /// Page size of the physical memory.
    pub page: PageSize,
    /// When a free leaves more than this many bytes in fully free chunks, that free trims back down to it
    /// (making runtime calls). `None`: trim only on [`Pool::trim`](super::Pool::trim) or when the device is out of memory, as
    /// a caching allocator does. With a watermark, frees also skip the threads' magazines (which would
    /// hold freed memory back from it; see `thread_cache`).
    pub trim_watermark: Option<u64>,
    /// Chunks mapped when the pool is made and never trimmed: a warm start for the first allocations.
    pub reserve_chunks: u32,
    /// Per-thread magazines in front of the heap: a thread's free of a small untagged allocation (at most
    /// an eighth of a chunk and 1 MiB, up to four sizes a thread, 4 MiB of each) waits for that thread's
    /// next allocation of the same size, which then takes no lock (an allocation and free of 64 KiB take
    /// half the time, and threads stop contending). The cost is placement: memory waiting in a magazine
    /// serves only its size, so on traces of many sizes the pool reaches higher addresses (about 1 % on
    /// the built-in serving trace). Off by default; ignored with a trim watermark. See `docs/benchmarks.md`.
    pub thread_cache: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            reserve_bytes: 0,
            chunk_bytes: 20 << 20,
            page: PageSize::Huge2M,
            trim_watermark: None,
            reserve_chunks: 0,
            thread_cache: false,
        }
    }
}

/// A size written `12345`, `8K`, `8KiB`, `2M`, `1G`, ... (binary units; see [`crate::parse_bytes`]).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    crate::parse_bytes(s).ok()
}

/// A configuration file: the pool's configuration and, for a KV pool, its block size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ConfigFile {
    pub pool: PoolConfig,
    pub kv_block_bytes: Option<u64>,
}

impl ConfigFile {
    pub(crate) fn parse(text: &str, origin: &str) -> Result<ConfigFile> {
        let mut out = ConfigFile::default();
        let mut seen: Vec<&str> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| Error::InvalidArgument(format!("{origin}:{}: {why}", n + 1));
            let (key, value) =
                line.split_once('=').ok_or_else(|| bad(format!("expected `key = value`, got {}", excerpt(line))))?;
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(bad(format!("{key} is set twice")));
            }
            let size = || parse_size(value).ok_or_else(|| bad(format!("{key}: {} is not a size", excerpt(value))));
            match key {
                "chunk_bytes" => out.pool.chunk_bytes = size()?,
                "reserve_bytes" => out.pool.reserve_bytes = size()?,
                "page" => {
                    out.pool.page = PageSize::parse(value)
                        .ok_or_else(|| bad(format!("page: {} is not 2M or 1G", excerpt(value))))?
                }
                "trim_watermark" => out.pool.trim_watermark = if value == "none" { None } else { Some(size()?) },
                "reserve_chunks" => {
                    out.pool.reserve_chunks =
                        value.parse().map_err(|_| bad(format!("reserve_chunks: {} is not a count", excerpt(value))))?
                }
                "thread_cache" => {
                    out.pool.thread_cache = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("thread_cache: {} is not true or false", excerpt(value)))),
                    }
                }
                "kv_block_bytes" => out.kv_block_bytes = Some(size()?),
                _ => return Err(bad(format!("unknown key {}", excerpt(key)))),
            }
            seen.push(key);
        }
        let page = out.pool.page.bytes();
        if out.pool.chunk_bytes == 0 || !out.pool.chunk_bytes.is_multiple_of(page) {
            return Err(Error::InvalidArgument(format!(
                "{origin}: chunk_bytes {:#x} is not a multiple of the page size {page:#x}",
                out.pool.chunk_bytes
            )));
        }
        Ok(out)
    }

    pub(crate) fn load(path: &Path) -> Result<ConfigFile> {
        let text = read_text(path, PoolConfig::MAX_FILE_BYTES, "configuration file", Accept::RegularFile)?;
        ConfigFile::parse(&text, &path.display().to_string())
    }
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pool)?;
        if let Some(b) = self.kv_block_bytes {
            writeln!(f, "kv_block_bytes = {b}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PoolConfig {
    /// The file format (see [`PoolConfig::load`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chunk_bytes = {}", self.chunk_bytes)?;
        writeln!(f, "reserve_bytes = {}", self.reserve_bytes)?;
        writeln!(f, "page = {}", if self.page == PageSize::Huge1G { "1G" } else { "2M" })?;
        match self.trim_watermark {
            None => writeln!(f, "trim_watermark = none")?,
            Some(w) => writeln!(f, "trim_watermark = {w}")?,
        }
        writeln!(f, "reserve_chunks = {}", self.reserve_chunks)?;
        writeln!(f, "thread_cache = {}", self.thread_cache)
    }
}

impl FromStr for PoolConfig {
    type Err = Error;
    /// Parse the file format (a `kv_block_bytes` line is allowed and ignored).
    fn from_str(s: &str) -> Result<PoolConfig> {
        Ok(ConfigFile::parse(s, "pool configuration")?.pool)
    }
}

impl PoolConfig {
    /// The most bytes [`PoolConfig::load`] reads: 1 MiB, thousands of times what `aclshm tune` writes.
    pub const MAX_FILE_BYTES: u64 = 1 << 20;

    /// Read a configuration file (what `aclshm tune` writes):
    ///
    /// ```text
    ///   # comments and blank lines are ignored
    ///   chunk_bytes = 8388608          # any size may also be written 8M, 8MiB, 1G ...
    ///   reserve_bytes = 0              # 0: as large as the device
    ///   page = 2M                      # 2M or 1G
    ///   trim_watermark = none          # or a size: trim down to it after a free
    ///   reserve_chunks = 0
    ///   thread_cache = false           # true: per-thread magazines in front of the heap
    ///   kv_block_bytes = 262144        # optional: the KV block size (read by KvConfig::load)
    /// ```
    ///
    /// Every key is optional (a missing one keeps its default); an unknown key, a repeated one, or a
    /// value that does not parse is an error naming the line. The file must be a regular file of at most
    /// [`PoolConfig::MAX_FILE_BYTES`]; anything else is refused before it is read
    /// ([`Error::InvalidArgument`]); a file that cannot be opened or read is an [`Error::Io`].
    ///
    /// ```
    /// use aclshm::PoolConfig;
    /// let c: PoolConfig = "chunk_bytes = 8M\ntrim_watermark = 64M\n".parse()?;
    /// assert_eq!((c.chunk_bytes, c.trim_watermark), (8 << 20, Some(64 << 20)));
    /// assert_eq!(c.to_string().parse::<PoolConfig>()?, c);
    /// assert!("chunk_bytes = 3M".parse::<PoolConfig>().is_err(), "not a multiple of 2 MiB");
    /// # Ok::<(), aclshm::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<PoolConfig> {
        Ok(ConfigFile::load(path.as_ref())?.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_bad_lines_are_named() {
        let f = ConfigFile {
            pool: PoolConfig {
                chunk_bytes: 8 << 20,
                trim_watermark: Some(1 << 30),
                reserve_chunks: 3,
                thread_cache: true,
                ..PoolConfig::default()
            },
            kv_block_bytes: Some(256 << 10),
        };
        assert_eq!(ConfigFile::parse(&f.to_string(), "t").unwrap(), f);
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1Q"), None);
        for (text, says) in [
            ("chunk_bytes 8M", "t:1: expected"),
            ("# fine\nchunk_bytes = 8X", "t:2: chunk_bytes"),
            ("page = 4K", "t:1: page"),
            ("color = red", "t:1: unknown key"),
            ("chunk_bytes = 8M\nchunk_bytes = 8M", "t:2: chunk_bytes is set twice"),
            ("reserve_chunks = -1", "t:1: reserve_chunks"),
            ("thread_cache = yes", "t:1: thread_cache: \"yes\" is not true or false"),
            ("chunk_bytes = 3M", "not a multiple"),
        ] {
            let e = ConfigFile::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn files_are_read_up_to_the_limit_and_only_regular_ones() {
        let (tmp, p) = crate::input::test_file("pool.conf", "chunk_bytes = 8M\n");
        assert_eq!(PoolConfig::load(&p).unwrap().chunk_bytes, 8 << 20);
        // One byte over the limit: refused before reading, naming the limit.
        crate::input::grow_past(&p, PoolConfig::MAX_FILE_BYTES);
        let over = PoolConfig::load(&p).unwrap_err();
        let missing = PoolConfig::load(tmp.0.join("missing.conf")).unwrap_err();
        assert!(matches!(over, Error::InvalidArgument(_)), "{over:?}");
        assert!(over.to_string().ends_with("is larger than the limit of 1 MiB"), "{over}");
        assert!(
            matches!(&missing, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
        // An endless device is not read from at all.
        let e = PoolConfig::load("/dev/zero").unwrap_err().to_string();
        assert!(e.ends_with("/dev/zero is a character device, not a regular file"), "{e}");
    }

    #[test]
    fn errors_quote_an_excerpt_of_a_long_value() {
        let e = ConfigFile::parse(&format!("chunk_bytes = {}", "9".repeat(1 << 20)), "t").unwrap_err().to_string();
        assert!(e.contains("t:1: chunk_bytes: \"999") && e.len() < 200, "{}", &e[..200.min(e.len())]);
    }
}
