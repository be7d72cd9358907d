//! The pool next to the well-known sub-allocators, driving the same allocation traces in the same run:
//! Sebastian Aaltonen's O(1) offset allocator (crate `offset-allocator`, used for GPU heaps) and TLSF
//! (crate `rlsf`). Each replays a trace over one arena of the same size, the pool with all its chunks mapped
//! up front (so it makes no runtime call: asserted), and reports
//!
//! - **time per operation** (criterion; the offset allocator also behind the lock the pool takes, to show
//!   what being shared between threads costs: one iteration replays the whole trace, then frees what it left
//!   live; throughput in operations), and
//! - **fragmentation** (printed once per trace, and written to `target/criterion/allocators.json`): at the
//!   moment the trace holds the most bytes, the largest allocation that still fits divided by the free
//!   bytes (1.0: one free extent), the allocations refused for want of space over the whole trace, and the
//!   utilisation at peak: the bytes live at peak divided by the highest byte any allocation reached (how
//!   much memory a growing pool would have to map).
//!
//! The pool runs twice: as configured by default, and with per-thread magazines in front of its heap
//! (`PoolConfig::thread_cache`), which trade placement for a lock-free path when a size repeats.
//!
//! For the traces of one size (uniform, KV), the pool's fixed-size blocks (`Pool::block_class`, a bitmap
//! per chunk, what `KvPool` is built on) are timed too: they are what a pool user takes for such sizes.
//!
//! The traces: `uniform` (64 KiB allocations, random churn with up to 2048 live), `serving` and `kv` (the
//! built-in traces of `aclshm tune`; the KV trace as the 16-token blocks a paged KV cache allocates, each
//! request holding its blocks until it ends).
//!
//! Sizes: the pool's granule is 512 bytes; the offset allocator counts in units of 512 bytes (so it sees the
//! same rounding; its 32-bit unit count then spans 2 TiB); TLSF keeps headers in the memory it manages, so
//! it gets a host arena of the same size (mapped with `MAP_NORESERVE`; only pages holding headers are ever
//! touched) and rounds to its 32-byte granularity.
//!
//! ```sh
//! cargo bench --bench allocators
//! ```

mod common;

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use aclshm::tune::{Op, Trace};
use aclshm::{KvConfig, KvPool, Pool, PoolConfig, Runtime, ShareConfig, raw};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};

const MIB: u64 = 1 << 20;
/// The offset allocator's unit: the pool's granule.
const UNIT: u64 = 512;

/// One step of a replay: allocate `bytes` into slot `slot`, or free the slot.
#[derive(Clone, Copy)]
enum Step {
    Alloc { slot: u32, bytes: u64 },
    Free { slot: u32 },
}

/// A trace flattened for replay: dense slots instead of ids, KV requests as blocks.
struct Replay {
    name: &'static str,
    steps: Vec<Step>,
    slots: usize,
    /// The most bytes live at once (as requested), and the step after which that is first reached.
    peak_bytes: u64,
    peak_step: usize,
}

impl Replay {
    fn new(name: &'static str, steps: Vec<Step>) -> Replay {
        let mut sizes: Vec<u64> = Vec::new();
        let (mut live, mut peak_bytes, mut peak_step) = (0u64, 0u64, 0usize);
        for (i, s) in steps.iter().enumerate() {
            match *s {
                Step::Alloc { slot, bytes } => {
                    if sizes.len() <= slot as usize {
                        sizes.resize(slot as usize + 1, 0);
                    }
                    sizes[slot as usize] = bytes;
                    live += bytes;
                    if live > peak_bytes {
                        (peak_bytes, peak_step) = (live, i);
                    }
                }
                Step::Free { slot } => live -= sizes[slot as usize],
            }
        }
        Replay { name, steps, slots: sizes.len(), peak_bytes, peak_step }
    }

    /// From a tune trace; KV requests become blocks of `block_tokens` tokens.
    fn from_trace(name: &'static str, t: &Trace, block_tokens: u64) -> Replay {
        let mut map = Slots::default();
        let mut steps = Vec::new();
        let block = t.kv_token_bytes.map(|b| b * block_tokens).unwrap_or(0);
        // A KV request: its blocks' slots and its token count.
        let mut requests: std::collections::HashMap<u64, (Vec<u32>, u64)> = Default::default();
        for op in &t.ops {
            match *op {
                Op::Alloc { id, bytes } => steps.push(Step::Alloc { slot: map.take(id), bytes }),
                Op::Free { id } => steps.push(Step::Free { slot: map.give(id) }),
                Op::KvAlloc { id, tokens } => {
                    let r = requests.entry(id).or_default();
                    grow_request(r, tokens, block_tokens, block, &mut map, &mut steps);
                }
                Op::KvExtend { id, tokens } => {
                    let r = requests.get_mut(&id).expect("a valid trace extends live requests");
                    grow_request(r, tokens, block_tokens, block, &mut map, &mut steps);
                }
                Op::KvFree { id } => {
                    for slot in requests.remove(&id).expect("a valid trace frees live requests").0 {
                        map.release(slot);
                        steps.push(Step::Free { slot });
                    }
                }
            }
        }
        Replay::new(name, steps)
    }

    /// `n` allocations of `bytes`, with up to `live` held: each step frees a random live one half the time
    /// (always when full) and allocates one.
    fn uniform(bytes: u64, live: usize, n: usize) -> Replay {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut held, mut free_slots, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        let mut slots = 0u32;
        for _ in 0..n {
            if held.len() >= live || (!held.is_empty() && next() % 2 == 0) {
                let slot = held.swap_remove((next() % held.len() as u64) as usize);
                steps.push(Step::Free { slot });
                free_slots.push(slot);
            }
            let slot = free_slots.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
            held.push(slot);
            steps.push(Step::Alloc { slot, bytes });
        }
        Replay::new("uniform", steps)
    }

    /// The size of every allocation, if they are all the same.
    fn one_size(&self) -> Option<u64> {
        let mut sizes = self.steps.iter().filter_map(|s| match s {
            Step::Alloc { bytes, .. } => Some(*bytes),
            Step::Free { .. } => None,
        });
        let first = sizes.next()?;
        sizes.all(|b| b == first).then_some(first)
    }

    fn ops(&self) -> u64 {
        self.steps.len() as u64
    }
}

/// Trace ids to dense slots, reused once freed.
#[derive(Default)]
struct Slots {
    of: std::collections::HashMap<u64, u32>,
    free: Vec<u32>,
    next: u32,
}

impl Slots {
    fn alloc_slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn take(&mut self, id: u64) -> u32 {
        let s = self.alloc_slot();
        self.of.insert(id, s);
        s
    }
    fn give(&mut self, id: u64) -> u32 {
        let s = self.of.remove(&id).expect("a valid trace frees live ids");
        self.free.push(s);
        s
    }
    fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// Give a KV request the blocks for `tokens` more tokens.
fn grow_request(r: &mut (Vec<u32>, u64), tokens: u64, per: u64, block: u64, map: &mut Slots, steps: &mut Vec<Step>) {
    r.1 += tokens;
    while (r.0.len() as u64) * per < r.1 {
        let slot = map.alloc_slot();
        r.0.push(slot);
        steps.push(Step::Alloc { slot, bytes: block });
    }
}

/// What the replay needs of an allocator.
trait Sub {
    type A: Copy;
    /// Allocate; `None` when it does not fit.
    fn alloc(&mut self, bytes: u64) -> Option<Self::A>;
    fn free(&mut self, a: Self::A);
    /// Where an allocation ends, in bytes from the arena's start.
    fn end(&self, a: &Self::A) -> u64;
    /// Bytes free in the arena.
    fn free_bytes(&self) -> u64;
}

/// The pool, with every chunk of its range mapped up front (an arena of fixed size).
struct PoolSub<'a> {
    pool: &'a Pool,
    arena: u64,
}

impl Sub for PoolSub<'_> {
    type A = aclshm::Allocation;
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        self.pool.alloc(bytes).ok()
    }
    fn free(&mut self, a: Self::A) {
        self.pool.free(a).unwrap()
    }
    fn end(&self, a: &Self::A) -> u64 {
        a.offset() + a.len()
    }
    fn free_bytes(&self) -> u64 {
        self.arena - self.pool.stats().allocated_bytes
    }
}

/// The pool's fixed-size blocks (a block class: a bitmap per chunk), for traces of one size: what a user
/// of the pool takes for uniform allocations such as KV blocks.
struct PoolBlocksSub<'a> {
    pool: &'a Pool,
    class: aclshm::BlockClassId,
    size: u64,
}

impl Sub for PoolBlocksSub<'_> {
    type A = aclshm::Block;
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        if bytes > self.size {
            return None;
        }
        self.pool.alloc_block(self.class).ok()
    }
    fn free(&mut self, b: Self::A) {
        self.pool.free_block(b).unwrap()
    }
    fn end(&self, b: &Self::A) -> u64 {
        b.offset() + self.size
    }
    fn free_bytes(&self) -> u64 {
        unreachable!("fixed-size blocks are not probed for fragmentation")
    }
}

/// KV blocks (`KvPool`: the pool's block class, with per-thread magazines and a generation per block),
/// for traces of one size: what a serving engine allocates its KV cache from.
struct KvSub<'a> {
    kv: &'a KvPool,
    size: u64,
}

impl Sub for KvSub<'_> {
    type A = aclshm::KvBlock;
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        if bytes > self.size {
            return None;
        }
        self.kv.alloc().ok()
    }
    fn free(&mut self, b: Self::A) {
        self.kv.free(b).unwrap()
    }
    fn end(&self, b: &Self::A) -> u64 {
        (u64::from(b.id()) + 1) * self.size
    }
    fn free_bytes(&self) -> u64 {
        unreachable!("fixed-size blocks are not probed for fragmentation")
    }
}

/// Aaltonen's offset allocator, in units of 512 bytes.
struct OffsetSub {
    a: offset_allocator::Allocator,
}

impl Sub for OffsetSub {
    type A = offset_allocator::Allocation;
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        self.a.allocate(u32::try_from(bytes.div_ceil(UNIT)).ok()?)
    }
    fn free(&mut self, a: Self::A) {
        self.a.free(a)
    }
    fn end(&self, a: &Self::A) -> u64 {
        (u64::from(a.offset) + u64::from(self.a.allocation_size(*a))) * UNIT
    }
    fn free_bytes(&self) -> u64 {
        u64::from(self.a.storage_report().total_free_space) * UNIT
    }
}

/// The offset allocator behind the lock the pool takes (`parking_lot::Mutex`, locked once per operation):
/// what the offset allocator costs where several threads share it, as the pool's users do.
struct LockedOffsetSub {
    a: parking_lot::Mutex<OffsetSub>,
}

impl Sub for LockedOffsetSub {
    type A = offset_allocator::Allocation;
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        black_box(&self.a).lock().alloc(bytes)
    }
    fn free(&mut self, a: Self::A) {
        black_box(&self.a).lock().free(a)
    }
    fn end(&self, a: &Self::A) -> u64 {
        self.a.lock().end(a)
    }
    fn free_bytes(&self) -> u64 {
        self.a.lock().free_bytes()
    }
}

/// TLSF (rlsf) over a host arena: first level up to 2^(5 + 40) bytes, 16 second-level bins as the pool's.
type Tlsf = rlsf::Tlsf<'static, u64, u16, 40, 16>;

struct TlsfSub {
    t: Tlsf,
    base: usize,
    arena: u64,
    live: u64,
}

impl TlsfSub {
    const ALIGN: usize = 512;
    fn new(arena: u64) -> TlsfSub {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it. It is never unmapped (the
        // benchmark makes a handful and exits).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                arena as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "a host arena of {arena} bytes");
        let mut t = Tlsf::new();
        let block = NonNull::slice_from_raw_parts(NonNull::new(base.cast::<u8>()).unwrap(), arena as usize);
        // SAFETY: the mapping above, readable and writable, owned by this allocator from now on.
        unsafe { t.insert_free_block_ptr(block) }.expect("the arena is large enough for TLSF");
        TlsfSub { t, base: base as usize, arena, live: 0 }
    }
}

impl Sub for TlsfSub {
    type A = (NonNull<u8>, u64);
    fn alloc(&mut self, bytes: u64) -> Option<Self::A> {
        let p = self.t.allocate(Layout::from_size_align(bytes as usize, Self::ALIGN).ok()?)?;
        self.live += bytes;
        Some((p, bytes))
    }
    fn free(&mut self, (p, bytes): Self::A) {
        self.live -= bytes;
        // SAFETY: `p` came from this allocator's `allocate` with this alignment and is freed once (the
        // replay frees each slot once).
        unsafe { self.t.deallocate(p, Self::ALIGN) }
    }
    fn end(&self, (p, bytes): &Self::A) -> u64 {
        (p.as_ptr() as usize - self.base) as u64 + bytes
    }
    fn free_bytes(&self) -> u64 {
        // Requested bytes: TLSF's headers and rounding are part of what the fragmentation ratio shows.
        self.arena - self.live
    }
}

/// Replay once; free what is left. With `probe`, measure fragmentation at the peak.
fn replay<S: Sub>(s: &mut S, r: &Replay, held: &mut Vec<Option<S::A>>, probe: Option<&mut Frag>) -> u64 {
    held.clear();
    held.resize(r.slots, None);
    let mut refused = 0;
    let mut probe = probe;
    let mut high = 0u64;
    for (i, step) in r.steps.iter().enumerate() {
        match *step {
            Step::Alloc { slot, bytes } => match s.alloc(bytes) {
                Some(a) => {
                    if probe.is_some() {
                        high = high.max(s.end(&a));
                    }
                    held[slot as usize] = Some(a);
                }
                None => refused += 1,
            },
            Step::Free { slot } => {
                if let Some(a) = held[slot as usize].take() {
                    s.free(a)
                }
            }
        }
        if i == r.peak_step
            && let Some(f) = probe.as_deref_mut()
        {
            f.free_bytes = s.free_bytes();
            f.largest_fit = largest_fit(s);
        }
    }
    for a in held.iter_mut().filter_map(Option::take) {
        s.free(a);
    }
    if let Some(f) = probe {
        f.refused = refused;
        f.high_water = high;
    }
    refused
}

/// The largest allocation that fits now, to 512 bytes (by bisection: allocate, free).
fn largest_fit<S: Sub>(s: &mut S) -> u64 {
    let (mut lo, mut hi) = (0u64, s.free_bytes() / UNIT + 1); // lo fits (or is 0), hi does not
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match s.alloc(mid * UNIT) {
            Some(a) => {
                s.free(a);
                lo = mid;
            }
            None => hi = mid,
        }
    }
    lo * UNIT
}

#[derive(Default, Debug)]
struct Frag {
    free_bytes: u64,
    largest_fit: u64,
    refused: u64,
    high_water: u64,
}

impl Frag {
    fn json(&self, name: &str, r: &Replay) -> String {
        format!(
            "{{\"allocator\":\"{name}\",\"free_bytes_at_peak\":{},\"largest_fit_at_peak\":{},\"largest_fit_over_free\":{:.4},\"refused\":{},\"high_water\":{},\"utilisation_at_peak\":{:.4}}}",
            self.free_bytes,
            self.largest_fit,
            self.largest_fit as f64 / self.free_bytes.max(1) as f64,
            self.refused,
            self.high_water,
            r.peak_bytes as f64 / self.high_water.max(1) as f64
        )
    }
}

/// Criterion's timing of whole replays.
/// Time `s` on the trace in a pool of its own (`pool`) whose chunks a first, untimed replay maps (it is
/// never trimmed), checking that no runtime call is made while timing.
fn bench_warm<S: Sub>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, s: &mut S, r: &Replay, pool: &Pool) {
    let calls = || pool.stats().runtime_calls.iter().map(|c| c.1).sum::<u64>();
    assert_eq!(replay(s, r, &mut Vec::new(), None), 0, "{name} holds the trace");
    let before = calls();
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter_custom(|n| timed(s, r, &mut held, n)));
    assert_eq!(before, calls(), "{name} made runtime calls while replaying");
}

fn timed<S: Sub>(s: &mut S, r: &Replay, held: &mut Vec<Option<S::A>>, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(replay(s, r, held, None));
    }
    t.elapsed()
}

fn one_trace(c: &mut Criterion, rt: &Runtime, r: &Replay, chunk: u64, report: &mut Vec<String>) {
    // The arena: the trace's peak with a quarter to spare, in whole chunks (the pool's range).
    let arena = (r.peak_bytes + r.peak_bytes / 4).next_multiple_of(chunk);
    let chunks = u32::try_from(arena / chunk).unwrap();
    let cfg = PoolConfig {
        chunk_bytes: chunk,
        reserve_bytes: arena,
        reserve_chunks: chunks,
        trim_watermark: None,
        ..PoolConfig::default()
    };
    let pool = Pool::new(rt, 0, cfg.clone()).unwrap();
    let mut ps = PoolSub { pool: &pool, arena };
    // The same with per-thread magazines in front of its heap (`PoolConfig::thread_cache`).
    let cached = Pool::new(rt, 0, PoolConfig { thread_cache: true, ..cfg.clone() }).unwrap();
    let mut cs = PoolSub { pool: &cached, arena };
    let units = u32::try_from(arena / UNIT).expect("an arena under 2 TiB");
    let mut os = OffsetSub { a: offset_allocator::Allocator::with_max_allocs(units, 1 << 20) };
    let mut ts = TlsfSub::new(arena);
    let mut ls = LockedOffsetSub {
        a: parking_lot::Mutex::new(OffsetSub { a: offset_allocator::Allocator::with_max_allocs(units, 1 << 20) }),
    };

    // Fragmentation, once each.
    let mut lines = Vec::new();
    let calls = |p: &Pool| p.stats().runtime_calls.iter().map(|c| c.1).sum::<u64>();
    let before = calls(&pool);
    let mut f = Frag::default();
    replay(&mut ps, r, &mut Vec::new(), Some(&mut f));
    lines.push(f.json("pool", r));
    let mut f = Frag::default();
    replay(&mut cs, r, &mut Vec::new(), Some(&mut f));
    lines.push(f.json("pool_thread_cache", r));
    let mut f = Frag::default();
    replay(&mut os, r, &mut Vec::new(), Some(&mut f));
    lines.push(f.json("offset-allocator", r));
    let mut f = Frag::default();
    replay(&mut ts, r, &mut Vec::new(), Some(&mut f));
    lines.push(f.json("rlsf", r));
    for l in &lines {
        println!("allocators {} arena {} MiB: {l}", r.name, arena / MIB);
    }
    report.push(format!(
        "{{\"trace\":\"{}\",\"ops\":{},\"peak_bytes\":{},\"arena\":{},\"allocators\":[{}]}}",
        r.name,
        r.ops(),
        r.peak_bytes,
        arena,
        lines.join(",")
    ));

    let mut g = c.benchmark_group(format!("trace_{}", r.name));
    g.throughput(Throughput::Elements(r.ops()));
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("pool"), |b| b.iter_custom(|n| timed(&mut ps, r, &mut held, n)));
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("pool_thread_cache"), |b| {
        b.iter_custom(|n| timed(&mut cs, r, &mut held, n))
    });
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("offset_allocator"), |b| {
        b.iter_custom(|n| timed(&mut os, r, &mut held, n))
    });
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("offset_allocator_locked"), |b| {
        b.iter_custom(|n| timed(&mut ls, r, &mut held, n))
    });
    let mut held = Vec::new();
    g.bench_function(BenchmarkId::from_parameter("rlsf"), |b| b.iter_custom(|n| timed(&mut ts, r, &mut held, n)));
    // (The counts are the runtime's, which both pools share: checked before the second pool is made.)
    assert_eq!(before, calls(&pool), "the pool made runtime calls while replaying inside its mapped arena");
    // A trace of one size: also the pool's block classes, in a pool of their own with every chunk the
    // trace needs mapped by a first replay (never trimmed).
    if let Some(size) = r.one_size() {
        let block = size.next_multiple_of(UNIT);
        let blocks = Pool::new(rt, 0, PoolConfig { reserve_chunks: 0, ..cfg.clone() }).unwrap();
        let class = blocks.block_class(block).unwrap();
        bench_warm(&mut g, "pool_blocks", &mut PoolBlocksSub { pool: &blocks, class, size: block }, r, &blocks);
        blocks.close().unwrap();
        let pool = PoolConfig { reserve_chunks: 0, ..cfg.clone() };
        let kv = KvPool::new(rt, 0, KvConfig { block_bytes: block, pool, share: ShareConfig::default() }).unwrap();
        bench_warm(&mut g, "kv_pool", &mut KvSub { kv: &kv, size: block }, r, kv.pool());
        kv.close().unwrap();
    }
    g.finish();
    pool.close().unwrap();
    cached.close().unwrap();
}

fn main() {
    // The arenas (16 GiB for the serving trace) are mapped and never touched: back device memory only when
    // written, as `aclshm tune` does, so they cost no host memory or disk.
    // SAFETY: first thing in main, before any thread starts.
    unsafe { std::env::set_var("ACLSHM_SIM_COMMIT", "lazy") };
    let _dirs = common::dirs();
    let rt = Runtime::from_env().unwrap();
    raw::set_device(&rt, 0).unwrap();
    let mut c = Criterion::default().configure_from_args();
    let mut report = Vec::new();
    // ACLSHM_BENCH_TRACES=uniform,kv runs only those (each trace's setup maps its whole arena).
    let only = std::env::var("ACLSHM_BENCH_TRACES").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|t| t == name));
    if wanted("uniform") {
        let uniform = Replay::uniform(64 << 10, 2048, 20_000);
        one_trace(&mut c, &rt, &uniform, 2 * MIB, &mut report);
    }
    if wanted("serving") {
        let serving = Replay::from_trace("serving", &Trace::builtin("serving").unwrap(), 16);
        one_trace(&mut c, &rt, &serving, 64 * MIB, &mut report);
    }
    if wanted("kv") {
        let kv = Replay::from_trace("kv", &Trace::builtin("kv").unwrap(), 16);
        one_trace(&mut c, &rt, &kv, 64 * MIB, &mut report);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("allocators.json"), format!("[{}]\n", report.join(",\n")));
    c.final_summary();
}
