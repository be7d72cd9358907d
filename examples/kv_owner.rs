//! KV-cache sharing between workers, the scheduler's side.
//!
//! The scheduler sizes blocks from a model's shape ([`KvLayout`]), makes a [`KvPool`] on device 0 and starts
//! two workers (the `kv_worker` example, another program) on devices 0 and 1. A prefill worker writes a
//! prompt's KV blocks; a decode worker reuses the prompt as a shared prefix: it pins the blocks, so that
//! when the prompt's request ends and the scheduler frees them, they are kept (not reused) until the
//! decode worker has read them and unpinned.
//!
//! ```sh
//! cargo build --examples && cargo run --example kv_owner
//! ```

mod common;

use std::time::Duration;

use aclshm::{KvBlock, KvConfig, KvLayout, KvPool, PoolConfig, Runtime, ShareConfig, raw};
use common::{Result, Worker};

/// Start a `kv_worker` playing `role` on `device`.
fn start(role: &str, device: i32, kv: &KvPool) -> Result<Worker> {
    Worker::start("kv_worker", &[role, &device.to_string(), &kv.desc().to_string()])
}

fn line(blocks: &[KvBlock]) -> String {
    blocks.iter().map(KvBlock::to_string).collect::<Vec<_>>().join(" ")
}

fn main() -> Result<()> {
    let rt = Runtime::global()?;
    raw::set_device(rt, 0)?;
    // A small model: 4 layers, 2 KV heads of 64, fp16, 16 tokens per block: 32 KiB per block.
    let layout = KvLayout { layers: 4, kv_heads: 2, head_dim: 64, dtype_bytes: 2, block_tokens: 16 };
    let pool = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 64 << 20, ..PoolConfig::default() };
    let kv = KvPool::new(rt, 0, KvConfig { block_bytes: layout.block_bytes()?, pool, share: ShareConfig::default() })?;
    println!("scheduler: blocks of {} KiB, {} per chunk", kv.block_bytes() >> 10, kv.stats().blocks_per_chunk);

    let mut prefill = start("prefill", 0, &kv)?;
    let mut decode = start("decode", 1, &kv)?;

    // A 100-token prompt: 7 blocks.
    let prompt = kv.alloc_many(7)?;
    prefill.send(&format!("write {}", line(&prompt)))?;
    println!("{}", prefill.recv()?);
    decode.send(&format!("pin {}", line(&prompt)))?;
    println!("{}", decode.recv()?);

    // The prompt's request ends while the decode worker still reads its prefix.
    kv.free_many(&prompt)?;
    let st = kv.stats();
    println!("scheduler: freed the prompt; {} blocks kept for the reader's pins", st.deferred);
    let other = kv.alloc_many(7)?;
    assert!(other.iter().all(|b| prompt.iter().all(|p| p.id() != b.id())), "a pinned block was reused");
    decode.send("read")?;
    println!("{}", decode.recv()?);
    if !kv.wait_unpinned(Duration::from_secs(30))? {
        return Err("the prefix is still pinned".into());
    }
    let reused = kv.alloc_many(7)?;
    println!(
        "scheduler: unpinned; the prefix's blocks are reused: {}",
        reused.iter().all(|b| prompt.iter().any(|p| p.id() == b.id()))
    );
    for mut w in [prefill, decode] {
        w.send("bye")?;
        w.finish()?;
    }
    kv.free_many(&other)?;
    kv.free_many(&reused)?;
    kv.close()?;
    println!("scheduler: done");
    Ok(())
}
