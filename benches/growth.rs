//! What the library adds to the runtime calls it cannot avoid: growing the pool by a chunk (and trimming
//! it) against the bare allocate+map+unmap+free, and attaching a mirror of N chunks (in another process's
//! pool) against the bare import+reserve+map+unmap+free+release.
//!
//! ```sh
//! cargo bench --bench growth
//! ```

mod common;

use std::ffi::c_void;
use std::hint::black_box;

use aclshm::share::published_handles;
use aclshm::vmm::{PageSize, device_prop};
use aclshm::{Mirror, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc, raw};
use criterion::{BenchmarkId, Criterion, Throughput};

const MIB: u64 = 1 << 20;

fn grow(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let mut g = c.benchmark_group("grow_chunk");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    for chunk in [2 * MIB, 20 * MIB] {
        let cfg = PoolConfig { chunk_bytes: chunk, reserve_bytes: 4 * chunk, ..PoolConfig::default() };
        let pool = Pool::new(rt, 0, cfg).unwrap();
        g.bench_with_input(BenchmarkId::new("pool_grow_then_trim", chunk >> 20), &chunk, |b, &chunk| {
            b.iter(|| {
                let a = pool.alloc(chunk).unwrap();
                pool.free(a).unwrap();
                assert_eq!(pool.trim().unwrap(), 1);
            })
        });
        pool.close().unwrap();
        // SAFETY: a reservation of our own, one chunk mapped and unmapped in it per iteration.
        let va = unsafe { raw::reserve_mem_address(rt, 4 * chunk as usize, 0, std::ptr::null_mut(), 0).unwrap() };
        g.bench_with_input(BenchmarkId::new("raw_malloc_map_unmap_free", chunk >> 20), &chunk, |b, &chunk| {
            b.iter(|| {
                let h = raw::malloc_physical(rt, chunk as usize, &device_prop(0, PageSize::Huge2M), 0).unwrap();
                // SAFETY: the handle mapped whole at the start of our reservation, then undone.
                unsafe {
                    raw::map_mem(rt, va, chunk as usize, 0, h, 0).unwrap();
                    raw::unmap_mem(rt, va).unwrap();
                    raw::free_physical(rt, h).unwrap();
                }
            })
        });
        // SAFETY: nothing is mapped in it any more.
        unsafe { raw::release_mem_address(rt, va).unwrap() };
    }
    g.finish();
}

/// The owner of shared pools of N chunks: one without pid validation (so the bare path can import), one
/// with it (what attach costs by default: whitelisting included).
fn owner(n: u64) {
    let rt = Runtime::from_env().unwrap();
    raw::set_device(&rt, 0).unwrap();
    let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: (n + 2) * 2 * MIB, ..PoolConfig::default() };
    let open = Pool::new(&rt, 0, cfg.clone()).unwrap();
    let checked = Pool::new(&rt, 0, cfg).unwrap();
    let a = open.alloc(n * 2 * MIB).unwrap();
    let b = checked.alloc(n * 2 * MIB).unwrap();
    common::say(&open.share(ShareConfig { validate_pids: false, ..ShareConfig::default() }).unwrap().to_string());
    common::say(&checked.share(ShareConfig::default()).unwrap().to_string());
    while common::hear().is_some() {}
    open.free(a).unwrap();
    checked.free(b).unwrap();
    open.close().unwrap();
    checked.close().unwrap();
}

fn attach(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 1).unwrap();
    let mut g = c.benchmark_group("attach");
    g.sample_size(20);
    for n in [8u64, 64] {
        let mut owner = common::Peer::spawn("owner", &[&n.to_string()]);
        let open: ShareDesc = owner.recv().parse().unwrap();
        let checked: ShareDesc = owner.recv().parse().unwrap();
        let handles = published_handles(&open).unwrap();
        assert_eq!(handles.len() as u64, n);
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("mirror_attach_close", n), &n, |b, _| {
            b.iter(|| Mirror::attach(rt, &open, 1).unwrap().close().unwrap())
        });
        g.bench_with_input(BenchmarkId::new("mirror_attach_close_whitelisted", n), &n, |b, _| {
            b.iter(|| Mirror::attach(rt, &checked, 1).unwrap().close().unwrap())
        });
        let bytes = (n * 2 * MIB) as usize;
        g.bench_with_input(BenchmarkId::new("raw_import_reserve_map", n), &n, |b, _| {
            b.iter(|| {
                // SAFETY: one reservation of our own; each imported handle mapped whole in its own slot,
                // then everything undone in the documented order.
                unsafe {
                    let va = raw::reserve_mem_address(rt, bytes, 0, std::ptr::null_mut(), 0).unwrap();
                    let hs: Vec<_> = handles
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| {
                            let h = raw::mem_import_from_shareable_handle(rt, s, 1).unwrap();
                            let at = va.cast::<u8>().add(i * (2 * MIB) as usize).cast::<c_void>();
                            raw::map_mem(rt, at, (2 * MIB) as usize, 0, h, 0).unwrap();
                            (at, h)
                        })
                        .collect();
                    black_box(&hs);
                    for (at, h) in hs {
                        raw::unmap_mem(rt, at).unwrap();
                        raw::free_physical(rt, h).unwrap();
                    }
                    raw::release_mem_address(rt, va).unwrap();
                }
            })
        });
        drop(owner);
    }
    g.finish();
}

fn main() {
    let _dirs = common::dirs();
    if common::role().as_deref() == Some("owner") {
        let n = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap();
        return owner(n);
    }
    let rt = Runtime::from_env().unwrap();
    let mut c = Criterion::default().configure_from_args();
    grow(&mut c, &rt);
    attach(&mut c, &rt);
    c.final_summary();
}
