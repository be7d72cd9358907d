//! KV block references, parsed and validated against a live pool: what a worker does with a reference it
//! was sent. The fuzzing process is the worker (a `KvMirror`); a child process, started once, is the
//! scheduler (a `KvPool` with blocks allocated, freed and reallocated, so that live, free and stale
//! generations all exist). Each input becomes references (its text as `<pool>:<id>:<generation>`, and
//! its bytes as fields, steered towards the real pool and ids) and every worker operation on them must
//! be a typed error, or succeed only for a block the scheduler holds as that reference says, at exactly
//! that block's address.
//!
//! The scheduler lives until the fuzzer ends (its stdin closes), then closes its pool and removes the
//! directories; the simulator's last process reaps the fuzzer's state.
#![no_main]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use aclshm::{Error, KvBlock, KvConfig, KvDesc, KvMirror, KvPool, PoolConfig, Runtime, ShareConfig};
use libfuzzer_sys::fuzz_target;

const OWNER_VAR: &str = "ACLSHM_FUZZ_KV_OWNER";
const CHUNK: u64 = 2 << 20;
const BLOCK: u64 = 256 << 10;

/// What the worker knows: its mirror, the pool's token, and the blocks the scheduler holds (id,
/// generation).
struct World {
    kv: KvMirror,
    token: u64,
    live: Vec<(u32, u32)>,
    blocks: u32,
}

/// Built once, on the first input; only read after.
static WORLD: OnceLock<World> = OnceLock::new();

fn dirs() -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("aclshm-fuzz-kv-{}", std::process::id()));
    (base.with_extension("sim"), base.with_extension("share"))
}

/// The scheduler: a KV pool with a history, its blocks told to the fuzzer; then wait for it to end.
fn owner() -> ! {
    let rt = Runtime::simulator();
    let pool = PoolConfig { chunk_bytes: CHUNK, reserve_bytes: 8 * CHUNK, ..PoolConfig::default() };
    let kv = KvPool::new(&rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }).unwrap();
    let first = kv.alloc_many(24).unwrap();
    // Free every third block, then allocate again: reused ids at a later generation, ids never used, ids
    // free now.
    let freed: Vec<KvBlock> = first.iter().copied().step_by(3).collect();
    kv.free_many(&freed).unwrap();
    let again = kv.alloc_many(4).unwrap();
    let live: Vec<KvBlock> = first.iter().filter(|b| !freed.contains(b)).chain(again.iter()).copied().collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", kv.desc()).unwrap();
    writeln!(out, "{}", kv.stats().capacity).unwrap();
    let text: Vec<String> = live.iter().map(|b| b.to_string()).collect();
    writeln!(out, "{}", text.join(" ")).unwrap();
    out.flush().unwrap();
    // Until the fuzzer goes (its end of our stdin closes).
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
    }
    kv.close().unwrap();
    drop(kv);
    let (_, share) = dirs_of_parent();
    let _ = std::fs::remove_dir_all(share);
    std::process::exit(0);
}

/// The directories the parent made (passed down in the environment).
fn dirs_of_parent() -> (PathBuf, PathBuf) {
    let get = |v: &str| PathBuf::from(std::env::var_os(v).expect("set by the fuzzer"));
    (get("ACLSHM_SIM_DIR"), get("ACLSHM_SHARE_DIR"))
}

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let (sim, share) = dirs();
        // SAFETY: set before any thread of ours starts and before the simulator is first used.
        unsafe {
            std::env::set_var("ACLSHM_SIM_DIR", &sim);
            std::env::set_var("ACLSHM_SHARE_DIR", &share);
        }
        // Never waited for, on purpose: the scheduler outlives the fuzzer (it ends when the fuzzer's exit
        // closes its stdin), and then belongs to init, which reaps it.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(OWNER_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Kept open for the fuzzer's life: its closing tells the scheduler to end.
        std::mem::forget(child.stdin.take());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || lines.next().unwrap().unwrap();
        let desc: KvDesc = next().parse().unwrap();
        let blocks: u32 = next().parse().unwrap();
        let live = next().split(' ').map(|b| b.parse::<KvBlock>().map(|b| (b.id(), b.generation())).unwrap()).collect();
        let rt = Runtime::simulator();
        let kv = KvMirror::attach(&rt, &desc, 1).unwrap();
        World { kv, token: desc.share().token, live, blocks }
    })
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from(u32_at(data, at)) | u64::from(u32_at(data, at + 4)) << 32
}

/// References the input makes: its text, and its bytes as fields, steered by the first byte towards the
/// real pool, real ids and the generations around a live block's.
fn references(w: &World, data: &[u8]) -> Vec<KvBlock> {
    let mut out = Vec::new();
    if let Ok(b) = std::str::from_utf8(data).unwrap_or("").parse::<KvBlock>() {
        out.push(b);
    }
    let Some(&steer) = data.first() else { return out };
    let raw_pool = u64_at(data, 1);
    let pool = if steer & 1 == 1 { w.token ^ (raw_pool & u64::from(steer >> 6)) } else { raw_pool };
    let raw_id = u32_at(data, 9);
    let (id, generation) = match steer >> 1 & 3 {
        // A live block, its generation moved by a little.
        0 | 1 => {
            let (id, g) = w.live[raw_id as usize % w.live.len()];
            (id, g.wrapping_add(u32_at(data, 13) % 5).wrapping_sub(2))
        }
        // Any id of the pool, any generation.
        2 => (raw_id % w.blocks.max(1), u32_at(data, 13)),
        _ => (raw_id, u32_at(data, 13)),
    };
    out.push(KvBlock::from_parts(pool, id, generation));
    out
}

fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::BadDescriptor(_) | Error::StaleBlock { .. } | Error::NotPinned { .. } | Error::StaleDescriptor { .. }
    )
}

fuzz_target!(
    init: {
        if std::env::var_os(OWNER_VAR).is_some() {
            owner();
        }
    },
    |data: &[u8]| {
        let w = world();
        let per_chunk = (CHUNK / BLOCK) as u32;
        for b in references(w, data) {
            let live = b.pool() == w.token && w.live.contains(&(b.id(), b.generation()));
            match w.kv.ptr(&b) {
                Ok(p) => {
                    assert!(live, "{b} resolved but the scheduler does not hold it so");
                    let offset = u64::from(b.id() / per_chunk) * CHUNK + u64::from(b.id() % per_chunk) * BLOCK;
                    assert_eq!(p as usize, w.kv.mirror().base() + offset as usize, "{b}: not its block's address");
                }
                Err(e) => assert!(!live && typed(&e), "{b}: {e}"),
            }
            match w.kv.pin(&[b]) {
                Ok(()) => {
                    assert!(live, "{b} pinned but the scheduler does not hold it so");
                    assert!(w.kv.pins(&b).unwrap() >= 1);
                    w.kv.unpin(&[b]).unwrap();
                }
                Err(e) => assert!(!live && typed(&e), "{b}: {e}"),
            }
            // Nothing of ours is pinned: an unpin is refused, whatever the reference.
            let e = w.kv.unpin(&[b]).unwrap_err();
            assert!(typed(&e), "{b}: {e}");
        }
    }
);
