//! KV-cache sharing between workers, a worker's side: started by `kv_owner` (see there) as `prefill` (it
//! writes the blocks it is given) or `decode` (it pins blocks as a shared prefix, then reads them).

mod common;

use std::io::{BufRead, Write};

use aclshm::{KvBlock, KvDesc, KvMirror, Runtime, raw};
use common::{Result, from_device, to_device};

/// What block `b` holds once written: a function of its id and generation.
fn content(b: &KvBlock, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32 ^ b.id().wrapping_mul(2654435761) ^ b.generation()) as u8).collect()
}

fn blocks(words: &str) -> Result<Vec<KvBlock>> {
    Ok(words.split_whitespace().map(str::parse).collect::<aclshm::Result<_>>()?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, role, device, desc] = &args[..] else {
        return Err("usage: kv_worker <prefill|decode> <device> <kv descriptor>".into());
    };
    let device: i32 = device.parse()?;
    let desc: KvDesc = desc.parse()?;
    let rt = Runtime::global()?;
    raw::set_device(rt, device)?;
    let kv = KvMirror::attach(rt, &desc, device)?;
    let len = kv.block_bytes() as usize;
    let mut prefix = None;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "write" => {
                let bs = blocks(rest)?;
                for b in &bs {
                    // SAFETY: a block is `len` bytes, mapped by the mirror.
                    unsafe { to_device(rt, kv.ptr(b)?, &content(b, len))? };
                }
                println!("{role} (device {device}): wrote {} blocks", bs.len());
            }
            "pin" => {
                // Pinned, and the addresses resolved now: they stay valid while the guard lives.
                let pinned = kv.pinned(&blocks(rest)?)?;
                println!("{role} (device {device}): pinned {} blocks as a shared prefix", pinned.blocks().len());
                prefix = Some(pinned);
            }
            "read" => {
                let pinned = prefix.take().ok_or("nothing pinned")?;
                // The scheduler freed the blocks meanwhile: a new translation is refused...
                let freed = kv.ptr(&pinned.blocks()[0]).is_err();
                // ...but the pins kept them as they were.
                let mut ok = 0;
                for (b, &p) in pinned.blocks().iter().zip(pinned.ptrs()) {
                    // SAFETY: a pinned block is `len` bytes, mapped by the mirror.
                    let got = unsafe { from_device(rt, p, len)? };
                    ok += usize::from(got == content(b, len));
                }
                let n = pinned.blocks().len();
                drop(pinned);
                println!(
                    "{role} (device {device}): {ok}/{n} prefix blocks intact while pinned (freed meanwhile: {freed}); unpinned"
                );
            }
            "bye" => break,
            _ => return Err(format!("unexpected {line:?}").into()),
        }
        std::io::stdout().flush()?;
    }
    drop(prefix);
    kv.close()?;
    Ok(())
}
