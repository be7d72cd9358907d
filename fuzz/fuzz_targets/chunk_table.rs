//! The chunk-table reader over arbitrary bytes: what a worker maps when it attaches, and what another
//! process of the user may have written there. Each input is written as a private table file (its token
//! taken from where a table keeps it, so the token check passes as often as not) and read as a worker
//! reads it: open (size, magic, version, geometry) and a consistent snapshot. Every input must be a table
//! or a typed error, promptly: a sequence word left odd by a writer that is not there (no process holds
//! the file's lock) is a dead owner's half-written table, refused at once rather than waited for.
#![no_main]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use aclshm::{Error, ShareDesc};
use libfuzzer_sys::fuzz_target;

/// Where a token sits in a chunk table: after the shared-file prefix (16 bytes), slots (4), device (4)
/// and chunk size (8).
const TOKEN_AT: usize = 32;

fuzz_target!(|data: &[u8]| {
    let token = data.get(TOKEN_AT..TOKEN_AT + 8).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap())).max(1);
    // In the temporary directory, removed after each input: a run leaves nothing behind.
    let socket = std::env::temp_dir().join(format!("aclshm-fuzz-table-{}-{token:016x}.sock", std::process::id()));
    let table = socket.with_extension("table");
    let _ = std::fs::remove_file(&table);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&table).unwrap();
    f.write_all(data).unwrap();
    drop(f);
    match aclshm::share::published_handles(&ShareDesc { socket, token }) {
        Ok(handles) => assert!(handles.len() <= data.len() / 24, "more handles than entries"),
        Err(e) => assert!(matches!(e, Error::Protocol(_) | Error::Io { .. }), "{e}"),
    }
    let _ = std::fs::remove_file(&table);
});
