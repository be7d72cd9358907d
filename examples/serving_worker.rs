//! Multi-process model serving, a worker's side: started by `serving_owner` (see there), it attaches a
//! mirror of the owner's pool on device 1, checks the weights it is given by descriptor, answers a
//! request, and follows the pool when the owner trims it.

mod common;

use std::io::{BufRead, Write};

use aclshm::{AllocDesc, Mirror, Notify, Runtime, ShareDesc, raw};
use common::{Result, from_device, to_device};

/// The bytes of weight tensor `i` (as the owner loaded them).
fn weights(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(0x9E37)) as u8).collect()
}

fn main() -> Result<()> {
    let share: ShareDesc = std::env::args().nth(1).ok_or("usage: serving_worker <share descriptor>")?.parse()?;
    let rt = Runtime::global()?;
    raw::set_device(rt, 1)?;
    // The owner whitelists our host pid on its notify.
    println!("{}", raw::device_get_bare_tgid(rt)?);
    std::io::stdout().flush()?;
    let mirror = Mirror::attach(rt, &share, 1)?;
    let mut done = None;
    let mut at_request = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("notify") => done = Some(Notify::import(rt, &words.next().ok_or("no key")?.parse()?, 1)?),
            Some("weights") => {
                let i: u64 = words.next().ok_or("no index")?.parse()?;
                let d = AllocDesc::from_hex(words.next().ok_or("no descriptor")?)?;
                let len = d.len() as usize;
                // SAFETY: the weights are `len` bytes, mapped by the mirror.
                let got = unsafe { from_device(rt, mirror.ptr(&d)?, len)? };
                if got != weights(i, len) {
                    return Err(format!("weights {i} differ on device 1").into());
                }
            }
            Some("request") => {
                let d = AllocDesc::from_hex(words.next().ok_or("no descriptor")?)?;
                let answer: Vec<u8> = (0..16u8).map(|b| b.wrapping_mul(17)).collect();
                // SAFETY: the request's buffer is at least 16 bytes, mapped by the mirror.
                unsafe { to_device(rt, mirror.ptr(&d)?, &answer)? };
                done.as_ref().ok_or("no notify yet")?.signal()?;
                let st = mirror.stats();
                at_request = st.chunks;
                println!("worker: weights verified on device 1; answered; {} chunks imported once each", st.imports);
            }
            Some("trimmed") => {
                mirror.sync()?;
                println!(
                    "worker: the owner trimmed: {at_request} chunks mapped at the request, {} now",
                    mirror.stats().chunks
                );
            }
            Some("bye") => break,
            _ => return Err(format!("unexpected {line:?}").into()),
        }
        std::io::stdout().flush()?;
    }
    drop(done);
    mirror.close()?;
    Ok(())
}
