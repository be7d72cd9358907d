//! Multi-process model serving, the owner's side: one process owns the device memory, workers see it.
//!
//! The owner loads "weights" into a pool on device 0, shares the pool, and starts a worker (the
//! `serving_worker` example, another program) that attaches a mirror on device 1: the rendezvous checks
//! and whitelists it, and every chunk is imported once. The owner hands the worker 64-byte descriptors
//! of the weights and of a per-request output buffer; the worker checks the weights and writes its
//! answer; an IPC notify tells the owner it is done. Then the owner frees the request's buffer and trims,
//! and the worker's mirror follows.
//!
//! ```sh
//! cargo build --examples && cargo run --example serving_owner
//! ```
//!
//! Without an NPU both run on the built-in simulator (the same directory: the default, or
//! `ACLSHM_SIM_DIR`); with `ACLSHM_BACKEND=acl` on CANN.

mod common;

use std::time::Duration;

use aclshm::{Notify, Pool, PoolConfig, Runtime, ShareConfig, raw};
use common::{Result, Worker, from_device, to_device};

/// The bytes of weight tensor `i` (the worker computes the same).
fn weights(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(0x9E37)) as u8).collect()
}

fn main() -> Result<()> {
    let rt = Runtime::global()?;
    println!("owner: runtime is {}", rt.backend());
    raw::set_device(rt, 0)?;
    let config = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 256 << 20, ..PoolConfig::default() };
    let pool = Pool::new(rt, 0, config)?;

    // Load three weight tensors of different sizes (one spans chunks).
    let sizes = [3 << 20, 512 << 10, 64 << 10];
    let mut tensors = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let a = pool.alloc(len as u64)?;
        // SAFETY: the allocation is at least `len` bytes.
        unsafe { to_device(rt, a.as_ptr(), &weights(i as u64, len))? };
        tensors.push(a);
    }
    let share = pool.share(ShareConfig::default())?;
    println!("owner: {} weight tensors in {} chunks, shared as {share}", tensors.len(), pool.stats().chunks);

    // The worker is the other example program, built next to this one.
    let mut worker = Worker::start("serving_worker", &[&share.to_string()])?;

    // A notify for "request done", whitelisted for the worker only.
    let done = Notify::new(rt, 0)?;
    let tgid: i32 = worker.recv()?.parse()?;
    let key = done.export(true)?;
    done.allow(tgid)?;
    worker.send(&format!("notify {key}"))?;
    for (i, a) in tensors.iter().enumerate() {
        worker.send(&format!("weights {i} {}", pool.descriptor(a)?.to_hex()))?;
    }
    // One request: an output buffer the worker fills.
    let out = pool.alloc(4 << 20)?;
    worker.send(&format!("request {}", pool.descriptor(&out)?.to_hex()))?;
    if !done.wait_host(Duration::from_secs(30))? {
        return Err("the worker did not finish the request".into());
    }
    println!("{}", worker.recv()?);
    // SAFETY: the output buffer is 4 MiB.
    let answer = unsafe { from_device(rt, out.as_ptr(), 16)? };
    println!("owner: the request's output starts {:02x?}", &answer[..8]);

    // The request ends: its buffer goes, and the chunks it alone used go back to the device.
    pool.free(out)?;
    let trimmed = pool.trim()?;
    worker.send("trimmed")?;
    println!("{}", worker.recv()?);
    worker.send("bye")?;
    worker.finish()?;
    let st = pool.stats();
    let exports = st.runtime_calls.iter().find(|(f, _)| *f == "aclrtMemExportToShareableHandle").map_or(0, |c| c.1);
    println!("owner: trimmed {trimmed} chunk(s); {exports} exports in all, one per chunk, none per allocation");
    for a in tensors {
        pool.free(a)?;
    }
    drop(done);
    pool.close()?;
    println!("owner: done");
    Ok(())
}
