//! Forged and bit-flipped allocation descriptors and KV block references, handed to a worker's mirrors.
//!
//! The property, for every input: a typed error, or a pointer at exactly the place the reference names,
//! inside memory this worker has mapped now (a device read of it succeeds), for an allocation or block the
//! owner holds as the reference says. Inputs are every single-bit flip of real references, fields of
//! real references moved a little (re-encoded with a valid check sum, as an attacker who read the source
//! would), and random fields; the random choices are seeded and the seed is printed.

use std::sync::atomic::{AtomicUsize, Ordering};

use aclshm::{
    AllocDesc, Error, KvBlock, KvConfig, KvDesc, KvMirror, KvPool, Mirror, Pool, PoolConfig, ShareConfig, ShareDesc,
    raw,
};

use super::{Tally, ensure};
use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 256 << 10;
const CHUNK: u64 = 2 * MIB;
/// Random cases per kind of reference.
const CASES: usize = 4000;

/// Forged references that resolved (to live memory, as the property demands): that the property was
/// exercised both ways.
static RESOLVED: AtomicUsize = AtomicUsize::new(0);

fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::BadDescriptor(_) | Error::StaleDescriptor { .. } | Error::StaleBlock { .. } | Error::NotPinned { .. }
    )
}

/// A device read of `len` bytes at `p` (at most a page, at its start and at its end) works: the memory
/// is mapped in this process.
fn readable(rt: &aclshm::Runtime, p: *mut std::ffi::c_void, len: u64) -> bool {
    let n = len.min(4096) as usize;
    let last = (p as usize + len as usize - n) as *const std::ffi::c_void;
    read_dev(rt, p, n).is_ok() && read_dev(rt, last, n).is_ok()
}

#[test]
fn forged_descriptors_and_block_references_are_refused_or_name_live_memory() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => owner(rt),
            _ => worker(rt),
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let mut worker = sc.spawn("worker");
            for w in ["share", "kv", "descs", "blocks", "freed"] {
                owner.relay(w, &mut worker);
            }
            let seed = worker.expect("seed");
            let resolved: usize = worker.expect("resolved").parse().unwrap();
            let mut t = Tally::default();
            t.absorb(&worker.expect("tally"));
            worker.expect("ok");
            worker.join();
            owner.send("done");
            owner.expect("ok");
            owner.join();
            sc.finish();
            println!("(random cases from seed {seed}; {resolved} references resolved, to live memory)");
            assert!(resolved > 0, "no forged reference ever resolved: the property was only tested one way");
            t.report("forged references");
        },
    );
}

/// A descriptor like `d`, one field moved or replaced, check sum recomputed.
fn mutate(rng: &mut Rng, d: &AllocDesc, live: &[AllocDesc], token: u64) -> aclshm::Result<AllocDesc> {
    let (mut pool, mut generation, mut offset, mut len, mut fp) =
        (d.pool(), d.generation(), d.offset(), d.len(), d.fingerprint());
    match rng.below(9) {
        0 => pool = if rng.below(2) == 0 { rng.next() } else { token ^ 1 },
        1 => generation = generation.wrapping_add(rng.below(5)).wrapping_sub(2),
        2 => generation = rng.next(),
        3 => offset = offset.wrapping_add(512 * rng.below(9)).wrapping_sub(512 * 4),
        4 => offset = [u64::MAX, u64::MAX - 511, 1 << 63, CHUNK * 16 - 512, CHUNK * 16][rng.below(5) as usize],
        5 => len = len.wrapping_add(512 * rng.below(9)).wrapping_sub(512 * 4),
        6 => len = [0, u64::MAX, u64::MAX - offset, 1 << 63, CHUNK * 16][rng.below(5) as usize],
        7 => fp = live[rng.below(live.len() as u64) as usize].fingerprint(),
        _ => {
            let o = live[rng.below(live.len() as u64) as usize];
            offset = o.offset();
            len = o.len() + 512 * rng.below(3);
        }
    }
    // Through the encoding, as a forger's bytes would arrive.
    AllocDesc::from_bytes(&AllocDesc::from_parts(pool, generation, offset, len, fp).to_bytes())
}

/// The property for one descriptor.
fn check_desc(rt: &aclshm::Runtime, m: &Mirror, live: &[AllocDesc], f: &AllocDesc) -> Result<(), String> {
    match m.ptr(f) {
        Err(e) => ensure(typed(&e), || format!("{f:?}: {e}")),
        Ok(p) => {
            // Only over the chunks of a live allocation, at the place the descriptor names, and mapped.
            let inside = live.iter().any(|d| {
                d.pool() == f.pool()
                    && d.fingerprint() == f.fingerprint()
                    && f.offset() / CHUNK >= d.offset() / CHUNK
                    && (f.offset() + f.len() - 1) / CHUNK <= (d.offset() + d.len() - 1) / CHUNK
            });
            RESOLVED.fetch_add(1, Ordering::Relaxed);
            ensure(inside && p as usize == m.base() + f.offset() as usize && readable(rt, p, f.len()), || {
                format!("{f:?} resolved to {p:?}, outside what the owner holds")
            })
        }
    }
}

/// The property for one block reference: every worker operation.
fn check_block(rt: &aclshm::Runtime, kv: &KvMirror, live: &[KvBlock], b: &KvBlock) -> Result<(), String> {
    let is_live = live.contains(b);
    let per_chunk = (CHUNK / BLOCK) as u32;
    match kv.ptr(b) {
        Ok(p) => {
            let offset = u64::from(b.id() / per_chunk) * CHUNK + u64::from(b.id() % per_chunk) * BLOCK;
            RESOLVED.fetch_add(1, Ordering::Relaxed);
            ensure(is_live && p as usize == kv.mirror().base() + offset as usize && readable(rt, p, BLOCK), || {
                format!("{b} resolved to {p:?}")
            })?;
        }
        Err(e) => ensure(!is_live && typed(&e), || format!("ptr({b}): {e}"))?,
    }
    match kv.pin(&[*b]) {
        Ok(()) => {
            ensure(is_live, || format!("{b} pinned"))?;
            kv.unpin(&[*b]).map_err(|e| e.to_string())?;
        }
        Err(e) => ensure(!is_live && typed(&e), || format!("pin({b}): {e}"))?,
    }
    match kv.unpin(&[*b]) {
        Err(e) => ensure(typed(&e), || format!("unpin({b}): {e}")),
        Ok(()) => Err(format!("{b} unpinned with no pin on it")),
    }
}

fn owner(rt: &aclshm::Runtime) {
    raw::set_device(rt, 0).unwrap();
    let pool =
        Pool::new(rt, 0, PoolConfig { chunk_bytes: CHUNK, reserve_bytes: 32 * MIB, ..PoolConfig::default() }).unwrap();
    // A history: allocations made, freed and trimmed, made again, so that stale descriptors and
    // regrown chunks exist.
    let gone = pool.alloc(3 * MIB).unwrap();
    let share = pool.share(ShareConfig::default()).unwrap();
    let stale = pool.descriptor(&gone).unwrap();
    pool.free(gone).unwrap();
    pool.trim().unwrap();
    let live: Vec<_> = [MIB, 512 << 10, 5 * MIB, 4096].iter().map(|&n| pool.alloc(n).unwrap()).collect();
    let descs: Vec<String> = live.iter().map(|a| pool.descriptor(a).unwrap().to_hex()).collect();
    let kv = KvPool::new(
        rt,
        0,
        KvConfig {
            block_bytes: BLOCK,
            pool: PoolConfig { chunk_bytes: CHUNK, reserve_bytes: 16 * MIB, ..PoolConfig::default() },
            share: ShareConfig::default(),
        },
    )
    .unwrap();
    let first = kv.alloc_many(20).unwrap();
    let freed: Vec<KvBlock> = first.iter().copied().step_by(3).collect();
    kv.free_many(&freed).unwrap();
    let again = kv.alloc_many(3).unwrap();
    let blocks: Vec<KvBlock> = first.iter().filter(|b| !freed.contains(b)).chain(&again).copied().collect();
    say(format!("share {share}"));
    say(format!("kv {}", kv.desc()));
    say(format!("descs {} {}", stale.to_hex(), words(&descs)));
    say(format!("blocks {}", words(&blocks)));
    say(format!("freed {}", words(&freed)));
    hear_word("done");
    kv.close().unwrap();
    for a in live {
        pool.free(a).unwrap();
    }
    pool.close().unwrap();
    say("ok");
}

fn worker(rt: &aclshm::Runtime) {
    let share: ShareDesc = hear_as("share");
    let kvd: KvDesc = hear_as("kv");
    let descs: Vec<AllocDesc> = hear_word("descs").split(' ').map(|h| AllocDesc::from_hex(h).unwrap()).collect();
    let blocks: Vec<KvBlock> = hear_list("blocks");
    let freed: Vec<KvBlock> = hear_list("freed");
    raw::set_device(rt, 1).unwrap();
    let m = Mirror::attach(rt, &share, 1).unwrap();
    let kv = KvMirror::attach(rt, &kvd, 1).unwrap();
    let seed = std::process::id() as u64;
    say(format!("seed {seed}"));
    let mut rng = Rng::new(seed);
    let (stale, live) = (descs[0], &descs[1..]);
    let mut t = Tally::default();

    // The real ones work; the stale one is refused.
    for d in live {
        t.attack("a real descriptor", || {
            let p = m.ptr(d).map_err(|e| e.to_string())?;
            ensure(p as usize == m.base() + d.offset() as usize && readable(rt, p, d.len()), || {
                format!("{d:?} -> {p:?}")
            })
        });
    }
    t.attack("a descriptor of memory freed and trimmed since", || {
        let r = m.ptr(&stale);
        ensure(matches!(&r, Err(Error::StaleDescriptor { .. } | Error::BadDescriptor(_))), || format!("{r:?}"))
    });
    // Every single-bit flip of every real descriptor's bytes.
    let mut flips = Tally::default();
    for d in live {
        let bytes = d.to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            flips.attack("a flipped descriptor", || match AllocDesc::from_bytes(&b) {
                Err(e) => ensure(typed(&e), || e.to_string()),
                Ok(f) => check_desc(rt, &m, live, &f),
            });
        }
    }
    // Fields moved a little, or anything, re-encoded with a valid check sum.
    for _ in 0..CASES {
        let d = live[rng.below(live.len() as u64) as usize];
        let f = mutate(&mut rng, &d, live, share.token);
        t.attack("a forged descriptor", || match f {
            Err(e) => ensure(typed(&e), || e.to_string()),
            Ok(f) => check_desc(rt, &m, live, &f),
        });
    }
    // KV block references: flips of real ones (text and fields), moved generations and ids, freed
    // ones plus one (an even generation), anything.
    for _ in 0..CASES {
        let b = blocks[rng.below(blocks.len() as u64) as usize];
        let f = match rng.below(6) {
            0 => KvBlock::from_parts(b.pool() ^ (1 << rng.below(64)), b.id(), b.generation()),
            1 => KvBlock::from_parts(b.pool(), b.id() ^ (1 << rng.below(32)), b.generation()),
            2 => KvBlock::from_parts(b.pool(), b.id(), b.generation() ^ (1 << rng.below(32))),
            3 => {
                let g = freed[rng.below(freed.len() as u64) as usize];
                KvBlock::from_parts(g.pool(), g.id(), g.generation().wrapping_add(rng.below(3) as u32))
            }
            4 => KvBlock::from_parts(b.pool(), rng.below(u64::from(u32::MAX)) as u32, rng.next() as u32),
            _ => KvBlock::from_parts(rng.next(), rng.next() as u32, rng.next() as u32),
        };
        t.attack("a forged block", || check_block(rt, &kv, &blocks, &f));
    }
    for text in ["", ":", "0:0:0", "ffffffffffffffffff:1:1", "1:4294967296:1", "1:1:-1", "1:1:1:1"] {
        t.attack("a block reference's text", || match text.parse::<KvBlock>() {
            Err(e) => ensure(typed(&e), || e.to_string()),
            Ok(b) => check_block(rt, &kv, &blocks, &b),
        });
    }
    t.merge(flips);
    say(format!("resolved {}", RESOLVED.load(Ordering::Relaxed)));
    t.say_tally();
    kv.close().unwrap();
    m.close().unwrap();
    say("ok");
}
