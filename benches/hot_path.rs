//! The pool's hot path: allocate and free inside mapped chunks, against the data-structure floor (the
//! `slab` crate; a `BTreeSet` best-fit, what PyTorch's caching allocator's `std::set` does) and against the
//! per-allocation runtime path of vLLM's CuMemAllocator and vllm-ascend's camem (reserve, allocate
//! physical, map for every allocation; unmap, free, release for every free).
//!
//! ```sh
//! cargo bench --bench hot_path
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use aclshm::vmm::{PageSize, device_prop};
use aclshm::{Pool, PoolConfig, Runtime, raw};
use criterion::{BenchmarkId, Criterion, Throughput};

const MIB: u64 = 1 << 20;
const SIZES: [u64; 3] = [4 << 10, 64 << 10, 1 << 20];

/// A pool with every chunk it will need mapped up front, and a few live allocations around, so the loop
/// never grows and never finds an empty heap.
fn warm_pool(rt: &Runtime, thread_cache: bool) -> Pool {
    raw::set_device(rt, 0).unwrap();
    let cfg = PoolConfig {
        chunk_bytes: 2 * MIB,
        reserve_bytes: 128 * MIB,
        reserve_chunks: 32,
        thread_cache,
        ..PoolConfig::default()
    };
    Pool::new(rt, 0, cfg).unwrap()
}

/// The best-fit floor: free extents in a `BTreeSet` by (size, offset) for the best fit, and by offset for
/// coalescing (what PyTorch's caching allocator does with `std::set` and block splitting). Allocation
/// takes the smallest extent that fits and returns the remainder; free merges with free neighbours.
struct BestFit {
    by_size: BTreeSet<(u64, u64)>,
    by_off: BTreeMap<u64, u64>,
}

impl BestFit {
    fn new(bytes: u64) -> BestFit {
        BestFit { by_size: BTreeSet::from([(bytes, 0)]), by_off: BTreeMap::from([(0, bytes)]) }
    }

    fn take(&mut self, off: u64, len: u64) {
        self.by_size.remove(&(len, off));
        self.by_off.remove(&off);
    }

    fn put(&mut self, off: u64, len: u64) {
        self.by_size.insert((len, off));
        self.by_off.insert(off, len);
    }

    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let &(len, off) = self.by_size.range((size, 0)..).next()?;
        self.take(off, len);
        if len > size {
            self.put(off + size, len - size);
        }
        Some((off, size))
    }

    fn free(&mut self, (mut off, mut len): (u64, u64)) {
        if let Some((&l, &ll)) = self.by_off.range(..off).next_back()
            && l + ll == off
        {
            self.take(l, ll);
            off = l;
            len += ll;
        }
        if let Some(&rl) = self.by_off.get(&(off + len)) {
            self.take(off + len, rl);
            len += rl;
        }
        self.put(off, len);
    }
}

/// One allocation and its free the way a per-allocation VMM allocator does them: every allocation is
/// its own reservation and physical handle (rounded up to the 2 MiB granularity).
fn runtime_alloc_free(rt: &Runtime, size: u64) {
    let bytes = size.next_multiple_of(2 * MIB) as usize;
    let h = raw::malloc_physical(rt, bytes, &device_prop(0, PageSize::Huge2M), 0).unwrap();
    // SAFETY: a fresh reservation of `bytes`, the fresh handle of `bytes` mapped whole at its start, then
    // undone in the documented order; nothing else uses them.
    unsafe {
        let va = raw::reserve_mem_address(rt, bytes, 0, std::ptr::null_mut(), 0).unwrap();
        raw::map_mem(rt, va, bytes, 0, h, 0).unwrap();
        black_box(va);
        raw::unmap_mem(rt, va).unwrap();
        raw::free_physical(rt, h).unwrap();
        raw::release_mem_address(rt, va).unwrap();
    }
}

fn one_thread(c: &mut Criterion, rt: &Runtime) {
    let pool = warm_pool(rt, false);
    let cached = warm_pool(rt, true);
    let keep: Vec<_> = (0..16).map(|i| pool.alloc((i + 1) * 4096).unwrap()).collect();
    let mut g = c.benchmark_group("alloc_free_1t");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let calls_before = pool.stats().runtime_calls.iter().map(|c| c.1).sum::<u64>();
        g.bench_with_input(BenchmarkId::new("pool", size), &size, |b, &s| {
            b.iter(|| pool.free(black_box(pool.alloc(s).unwrap())).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("pool_thread_cache", size), &size, |b, &s| {
            b.iter(|| cached.free(black_box(cached.alloc(s).unwrap())).unwrap())
        });
        // Each half alone: a batch of allocations timed, then freed untimed (and the other way round); the
        // batch fits the mapped chunks, so nothing grows.
        let batch = (32 * MIB / size).min(256);
        g.bench_with_input(BenchmarkId::new("pool_alloc_only", size), &size, |b, &s| {
            b.iter_custom(|n| timed_halves(n, batch, || pool.alloc(s).unwrap(), |a| pool.free(a).unwrap(), true))
        });
        g.bench_with_input(BenchmarkId::new("pool_free_only", size), &size, |b, &s| {
            b.iter_custom(|n| timed_halves(n, batch, || pool.alloc(s).unwrap(), |a| pool.free(a).unwrap(), false))
        });
        let calls_after = pool.stats().runtime_calls.iter().map(|c| c.1).sum::<u64>();
        assert_eq!(calls_before, calls_after, "the hot path made runtime calls");
        let mut slab = slab::Slab::with_capacity(64);
        g.bench_with_input(BenchmarkId::new("slab", size), &size, |b, &s| {
            b.iter(|| {
                let k = slab.insert(black_box(s));
                black_box(slab.remove(k))
            })
        });
        // The same free space as the pool's, with the same live allocations around.
        let mut bf = BestFit::new(16 * MIB);
        let _held: Vec<_> = (0..16).map(|i| bf.alloc((i + 1) * 4096).unwrap()).collect();
        g.bench_with_input(BenchmarkId::new("btreeset_best_fit", size), &size, |b, &s| {
            b.iter(|| {
                let a = bf.alloc(black_box(s)).unwrap();
                bf.free(a)
            })
        });
        g.bench_with_input(BenchmarkId::new("runtime_per_allocation", size), &size, |b, &s| {
            b.iter(|| runtime_alloc_free(rt, s))
        });
    }
    g.finish();
    for a in keep {
        pool.free(a).unwrap();
    }
    pool.close().unwrap();
    cached.close().unwrap();
}

/// `n` allocations and their frees, in batches of `batch`; times only the allocations (`alloc_half`) or
/// only the frees.
fn timed_halves<A>(n: u64, batch: u64, alloc: impl Fn() -> A, free: impl Fn(A), alloc_half: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = n;
    let mut held = Vec::with_capacity(batch as usize);
    while left > 0 {
        let k = left.min(batch);
        let t = Instant::now();
        for _ in 0..k {
            held.push(black_box(alloc()));
        }
        if alloc_half {
            total += t.elapsed();
        }
        let t = Instant::now();
        for a in held.drain(..) {
            free(a);
        }
        if !alloc_half {
            total += t.elapsed();
        }
        left -= k;
    }
    total
}

/// `iters` alloc+free pairs on each of two threads at once; the time is the wall time of the pair of
/// threads, so the figure per iteration is per pair of operations on two cores.
fn two_threads(iters: u64, op: impl Fn() + Sync) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            start.wait();
            for _ in 0..iters {
                op();
            }
        });
        start.wait();
        let t = Instant::now();
        for _ in 0..iters {
            op();
        }
        h.join().unwrap();
        t.elapsed()
    })
}

fn two_thread_group(c: &mut Criterion, rt: &Runtime) {
    let pool = warm_pool(rt, false);
    let cached = warm_pool(rt, true);
    let mut g = c.benchmark_group("alloc_free_2t");
    g.throughput(Throughput::Elements(2));
    let size = 64 << 10;
    g.bench_function("pool", |b| {
        b.iter_custom(|n| two_threads(n, || pool.free(black_box(pool.alloc(size).unwrap())).unwrap()))
    });
    g.bench_function("pool_thread_cache", |b| {
        b.iter_custom(|n| two_threads(n, || cached.free(black_box(cached.alloc(size).unwrap())).unwrap()))
    });
    let slab = Arc::new(Mutex::new(slab::Slab::with_capacity(64)));
    g.bench_function("mutex_slab", |b| {
        b.iter_custom(|n| {
            two_threads(n, || {
                let k = slab.lock().unwrap().insert(size);
                black_box(slab.lock().unwrap().remove(k));
            })
        })
    });
    let bf = Mutex::new(BestFit::new(16 * MIB));
    g.bench_function("mutex_btreeset_best_fit", |b| {
        b.iter_custom(|n| {
            two_threads(n, || {
                let a = bf.lock().unwrap().alloc(size).unwrap();
                bf.lock().unwrap().free(a);
            })
        })
    });
    g.finish();
    pool.close().unwrap();
    cached.close().unwrap();
}

fn main() {
    let _dirs = common::dirs();
    let rt = Runtime::from_env().unwrap();
    let mut c = Criterion::default().configure_from_args();
    one_thread(&mut c, &rt);
    two_thread_group(&mut c, &rt);
    c.final_summary();
}
