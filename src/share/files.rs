//! The files a shared pool keeps in its share directory (its chunk table, and the rendezvous socket
//! beside it), and removing what owners that died left there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::os;
use crate::shm::{self, Names};

use super::desc::ShareDesc;
use super::table::Table;

/// A shared pool's files: `pool-<token>.table` (the chunk table, locked by its owner while it lives) with
/// `pool-<token>.sock` (the rendezvous socket) beside it.
pub(crate) const NAMES: &[Names] = &[Names { prefix: "pool-", suffix: ".table", companion: Some("sock") }];

/// Where a shared pool of `token` keeps its chunk table in `dir`.
pub(crate) fn table_file(dir: &Path, token: u64) -> PathBuf {
    dir.join(format!("pool-{token:016x}.table"))
}

/// Where its rendezvous socket is.
pub(crate) fn socket_file(dir: &Path, token: u64) -> PathBuf {
    dir.join(format!("pool-{token:016x}.sock"))
}

/// Remove the chunk tables (and sockets) of owners that died, at least a minute ago, from `dir`.
pub(crate) fn sweep(dir: &Path) {
    shm::sweep(dir, NAMES, Duration::from_secs(60));
}

/// The share directory this process uses by default (`$ACLSHM_SHARE_DIR`, else
/// `/dev/shm/aclshm-share-<uid>`).
pub fn default_dir() -> PathBuf {
    os::default_share_dir()
}

/// A worker could not reach the owner of `desc`: if the owner is gone (its table's lock is free), remove
/// what it left (the table and the socket), which no one else may notice. Returns whether the owner is
/// gone.
///
/// `lost`: the owner's connection broke. A process being killed closes its files one after another, so
/// the socket can close before the table's lock goes: then wait for it a little (half a second at most).
pub(crate) fn forget_dead_owner(desc: &ShareDesc, lost: bool) -> bool {
    let table = table_path(desc);
    let deadline = Instant::now() + if lost { Duration::from_millis(500) } else { Duration::ZERO };
    let mut gone = os::creator_gone(&table);
    while !gone && table.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        gone = os::creator_gone(&table);
    }
    if gone {
        let _ = std::fs::remove_file(&table);
        let _ = std::fs::remove_file(&desc.socket);
    }
    gone || !table.exists()
}

/// Path of a shared pool's table, for tests that read it as an outsider would.
#[doc(hidden)]
pub fn table_path(desc: &ShareDesc) -> PathBuf {
    desc.socket.with_extension("table")
}

/// Shareable handles a shared pool's table lists (an outsider's view: a process that can read the table
/// learns them; with pid validation on, that is not enough to import them).
#[doc(hidden)]
pub fn published_handles(desc: &ShareDesc) -> Result<Vec<u64>> {
    let t = Table::open(&table_path(desc), desc.token)?;
    Ok(t.snapshot()?.entries.iter().filter(|e| e.chunk != 0 && e.shareable != 0).map(|e| e.shareable).collect())
}
