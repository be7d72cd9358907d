//! KV blocks: allocate and free (one and 64 at a time) against the pool's own block allocator underneath and
//! the `slab` floor; turning a block into a pointer in a worker (another process) against the arithmetic
//! floor and the scheduler's own lookup.
//!
//! ```sh
//! cargo bench --bench kv
//! ```

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use aclshm::{KvBlock, KvConfig, KvDesc, KvMirror, KvPool, Pool, PoolConfig, Runtime, ShareConfig, raw};
use criterion::{BenchmarkId, Criterion, Throughput};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 256 << 10;

fn config() -> KvConfig {
    let pool = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 256 * MIB, ..PoolConfig::default() };
    KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }
}

/// The owner of the pool a worker translates blocks of.
fn owner() {
    let rt = Runtime::from_env().unwrap();
    raw::set_device(&rt, 0).unwrap();
    let kv = KvPool::new(&rt, 0, config()).unwrap();
    let blocks = kv.alloc_many(64).unwrap();
    common::say(&kv.desc().to_string());
    common::say(&blocks.iter().map(KvBlock::to_string).collect::<Vec<_>>().join(" "));
    while common::hear().is_some() {}
    kv.free_many(&blocks).unwrap();
    kv.close().unwrap();
}

fn alloc_free(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let kv = KvPool::new(rt, 0, config()).unwrap();
    // Map the chunks the loops use once, so they measure allocation, not growth.
    kv.free_many(&kv.alloc_many(64).unwrap()).unwrap();
    let mut g = c.benchmark_group("kv_alloc_free");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("kv_pool", 1), |b| b.iter(|| kv.free(black_box(kv.alloc().unwrap())).unwrap()));
    let pool = Pool::new(rt, 0, config().pool).unwrap();
    let class = pool.block_class(BLOCK).unwrap();
    pool.free_blocks(&pool.alloc_blocks(class, 64).unwrap()).unwrap();
    g.bench_function(BenchmarkId::new("pool_block", 1), |b| {
        b.iter(|| pool.free_block(black_box(pool.alloc_block(class).unwrap())).unwrap())
    });
    let mut slab = slab::Slab::with_capacity(64);
    g.bench_function(BenchmarkId::new("slab", 1), |b| {
        b.iter(|| {
            let k = slab.insert(black_box(BLOCK));
            black_box(slab.remove(k))
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function(BenchmarkId::new("kv_pool", 64), |b| {
        b.iter(|| kv.free_many(&black_box(kv.alloc_many(64).unwrap())).unwrap())
    });
    g.bench_function(BenchmarkId::new("pool_block", 64), |b| {
        b.iter(|| pool.free_blocks(&black_box(pool.alloc_blocks(class, 64).unwrap())).unwrap())
    });
    g.finish();
    pool.close().unwrap();
    kv.close().unwrap();

    // Utilisation of uniform blocks: the fraction of mapped bytes the allocated blocks hold (only the last
    // chunk can be partly empty, and a chunk's tail that holds no whole block).
    for (block, n) in [(256u64 << 10, 1000usize), (256 << 10, 1001), (2 << 20, 100), (768 << 10, 500)] {
        let pool = PoolConfig { reserve_bytes: 1 << 30, ..config().pool };
        let kv = KvPool::new(rt, 0, KvConfig { block_bytes: block, pool, share: ShareConfig::default() }).unwrap();
        let blocks = kv.alloc_many(n).unwrap();
        let st = kv.stats();
        let used = u64::from(st.allocated) * st.block_bytes;
        println!(
            "utilisation: {n} blocks of {} KiB in 2 MiB chunks: {:.4}",
            block >> 10,
            used as f64 / st.pool.mapped_bytes as f64
        );
        kv.free_many(&blocks).unwrap();
        kv.close().unwrap();
    }
}

fn translate(c: &mut Criterion, rt: &Runtime) {
    let mut owner = common::Peer::spawn("owner", &[]);
    let desc: KvDesc = owner.recv().parse().unwrap();
    let blocks: Vec<KvBlock> = owner.recv().split_whitespace().map(|b| b.parse().unwrap()).collect();
    raw::set_device(rt, 1).unwrap();
    let m = KvMirror::attach(rt, &desc, 1).unwrap();
    m.ptrs(&blocks).unwrap();
    let mut g = c.benchmark_group("kv_translate");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("kv_mirror_ptr", |b| {
        b.iter(|| {
            i = (i + 1) % blocks.len();
            black_box(m.ptr(black_box(&blocks[i])).unwrap())
        })
    });
    let before = rt.call_count("aclrtMemImportFromShareableHandle");
    let base = m.mirror().base();
    let (chunk, per_chunk) = (2 * MIB, (2 * MIB / BLOCK) as u32);
    g.bench_function("arithmetic", |b| {
        b.iter(|| {
            i = (i + 1) % blocks.len();
            let id = black_box(blocks[i]).id();
            black_box(base + (u64::from(id / per_chunk) * chunk + u64::from(id % per_chunk) * BLOCK) as usize)
        })
    });
    let mine = KvPool::new(rt, 1, config()).unwrap();
    let own: Vec<KvBlock> = mine.alloc_many(64).unwrap();
    g.bench_function("kv_pool_ptr_scheduler_side", |b| {
        b.iter(|| {
            i = (i + 1) % own.len();
            black_box(mine.ptr(black_box(&own[i])).unwrap())
        })
    });
    g.finish();

    // Pins: a worker pins blocks (count, fence, generation check) and unpins them; the baseline is the
    // pin protocol's own atomics on a local array (increment, fence, load; decrement), the floor of any
    // implementation.
    let mut g = c.benchmark_group("kv_pin");
    for n in [1usize, 16] {
        g.throughput(Throughput::Elements(n as u64));
        let set = &blocks[..n];
        g.bench_function(BenchmarkId::new("kv_mirror_pin_unpin", n), |b| {
            b.iter(|| {
                m.pin(black_box(set)).unwrap();
                m.unpin(black_box(set)).unwrap();
            })
        });
        let counts: Vec<AtomicU32> = (0..blocks.len()).map(|_| AtomicU32::new(0)).collect();
        let generations: Vec<AtomicU32> = (0..blocks.len()).map(|_| AtomicU32::new(1)).collect();
        g.bench_function(BenchmarkId::new("protocol_atomics", n), |b| {
            b.iter(|| {
                for k in 0..n {
                    counts[k].fetch_add(1, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    black_box(generations[k].load(Ordering::SeqCst));
                }
                for c in &counts[..n] {
                    c.fetch_sub(1, Ordering::SeqCst);
                }
            })
        });
    }
    g.finish();
    assert_eq!(rt.call_count("aclrtMemImportFromShareableHandle"), before, "translation imported");
    mine.free_many(&own).unwrap();
    mine.close().unwrap();
    m.close().unwrap();
    drop(owner);
}

fn main() {
    let _dirs = common::dirs();
    if common::role().as_deref() == Some("owner") {
        return owner();
    }
    let rt = Runtime::from_env().unwrap();
    let mut c = Criterion::default().configure_from_args();
    alloc_free(&mut c, &rt);
    translate(&mut c, &rt);
    c.final_summary();
}
