//! Sleep and wake of a shared-nothing pool of 1 GiB, half of it kept (offloaded to host memory and copied
//! back), against the bare runtime calls and copies the same work needs: a page-locked host buffer, the
//! copy out, unmapping and freeing every chunk, allocating and mapping every chunk again, the copy back.
//!
//! ```sh
//! cargo bench --bench sleep
//! ```

mod common;

use std::ffi::c_void;

use aclshm::sys::aclrtMemcpyKind;
use aclshm::vmm::{PageSize, device_prop};
use aclshm::{Pool, PoolConfig, Runtime, SleepConfig, raw};
use criterion::{Criterion, Throughput};

const MIB: usize = 1 << 20;
const CHUNK: usize = 2 * MIB;
const POOL: usize = 1024 * MIB;
const KEPT: usize = POOL / 2;

fn sleep_wake(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let mut g = c.benchmark_group("sleep_wake_1GiB_half_kept");
    g.throughput(Throughput::Bytes(POOL as u64));
    g.sample_size(10);

    let cfg = PoolConfig { chunk_bytes: CHUNK as u64, reserve_bytes: POOL as u64, ..PoolConfig::default() };
    let pool = Pool::new(rt, 0, cfg).unwrap();
    let weights = pool.alloc_tagged(KEPT as u64, "weights").unwrap();
    let rest = pool.alloc((POOL - KEPT) as u64).unwrap();
    let keep = SleepConfig { offload_tags: vec!["weights".into()], ..SleepConfig::default() };
    g.bench_function("pool_sleep_then_wake", |b| {
        b.iter(|| {
            let r = pool.sleep(&keep).unwrap();
            assert_eq!(r.kept_bytes, KEPT as u64);
            pool.wake(None).unwrap();
        })
    });
    pool.free(weights).unwrap();
    pool.free(rest).unwrap();
    pool.close().unwrap();

    // The bare calls: one reservation, every chunk mapped in it; per iteration the same work by hand.
    let chunks = POOL / CHUNK;
    let prop = device_prop(0, PageSize::Huge2M);
    // SAFETY: our own reservation; every handle mapped whole in its own slot, and everything undone in the
    // documented order; the host buffer is page-locked memory of KEPT bytes, copied to and from the first
    // half of the range.
    unsafe {
        let va = raw::reserve_mem_address(rt, POOL, 0, std::ptr::null_mut(), 0).unwrap();
        let at = |i: usize| va.cast::<u8>().add(i * CHUNK).cast::<c_void>();
        let mut handles: Vec<_> = (0..chunks)
            .map(|i| {
                let h = raw::malloc_physical(rt, CHUNK, &prop, 0).unwrap();
                raw::map_mem(rt, at(i), CHUNK, 0, h, 0).unwrap();
                h
            })
            .collect();
        g.bench_function("raw_host_copy_unmap_free_malloc_map_copy", |b| {
            b.iter(|| {
                let host = raw::malloc_host(rt, KEPT).unwrap();
                raw::memcpy(rt, host, KEPT, va, KEPT, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST).unwrap();
                for (i, h) in handles.iter().enumerate() {
                    raw::unmap_mem(rt, at(i)).unwrap();
                    raw::free_physical(rt, *h).unwrap();
                }
                for (i, h) in handles.iter_mut().enumerate() {
                    *h = raw::malloc_physical(rt, CHUNK, &prop, 0).unwrap();
                    raw::map_mem(rt, at(i), CHUNK, 0, *h, 0).unwrap();
                }
                raw::memcpy(rt, va, KEPT, host, KEPT, aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE).unwrap();
                raw::free_host(rt, host).unwrap();
            })
        });
        for (i, h) in handles.into_iter().enumerate() {
            raw::unmap_mem(rt, at(i)).unwrap();
            raw::free_physical(rt, h).unwrap();
        }
        raw::release_mem_address(rt, va).unwrap();
    }
    g.finish();
}

fn main() {
    let _dirs = common::dirs();
    let rt = Runtime::from_env().unwrap();
    let mut c = Criterion::default().configure_from_args();
    sleep_wake(&mut c, &rt);
    c.final_summary();
}
