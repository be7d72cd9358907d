//! Housekeeping of a share directory: removing what processes that died left there, every kind of
//! shared file at once (what `aclshm sim clean` runs). Each module that makes shared files names its own
//! (`share`, `kv`, `ipc`) and sweeps them itself when it starts; this is the one place that knows them all.

use std::path::Path;
use std::time::Duration;

use crate::shm;

/// Remove the files in the share directory `dir` that are at least `min_age` old and whose creating
/// process is gone: pool chunk tables with their rendezvous sockets, KV block tables and pin files, IPC
/// importer files. Returns how many files it removed (companions not counted). Files of live processes
/// are never touched.
pub fn sweep_share_dir(dir: &Path, min_age: Duration) -> usize {
    [crate::share::FILE_NAMES, crate::kv::FILE_NAMES, crate::ipc::FILE_NAMES]
        .iter()
        .map(|names| shm::sweep(dir, names, min_age))
        .sum()
}
