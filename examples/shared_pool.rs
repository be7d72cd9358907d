//! A pool shared between two processes: the owner allocates and writes, a worker on another device reads
//! and answers, and an IPC notify tells the owner the answer is there.
//!
//! The owner shares its pool (`Pool::share`) and starts a worker (this program again) with the share
//! descriptor and a 64-byte allocation descriptor. The worker attaches a `Mirror` on device 1 (the
//! rendezvous whitelists it on every chunk), turns the descriptor into a pointer of its own, reads the
//! message, writes a reply, and signals a notify the owner created; the owner waits for it and reads the
//! reply. Then the pool grows, and the worker sees the new chunk through its mirror.
//!
//! ```sh
//! cargo run --example shared_pool
//! ```
//!
//! Without an NPU it runs on the built-in simulator; with `ACLSHM_BACKEND=acl` on CANN.

use std::ffi::c_void;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use aclshm::sys::aclrtMemcpyKind;
use aclshm::{AllocDesc, Mirror, Notify, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc, raw};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MSG: usize = 256;

/// Copy `text` to device memory at `dst` (NUL-padded to MSG bytes).
fn put(rt: &Runtime, dst: *mut c_void, text: &str) -> Result<()> {
    let mut buf = text.as_bytes().to_vec();
    buf.resize(MSG, 0);
    // SAFETY: buf is a host buffer of MSG bytes; dst is mapped device memory of at least MSG bytes.
    unsafe { raw::memcpy(rt, dst, MSG, buf.as_ptr().cast(), MSG, aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE)? };
    Ok(())
}

/// Read a NUL-padded string of at most MSG bytes from device memory at `src`.
fn get(rt: &Runtime, src: *const c_void) -> Result<String> {
    let mut buf = vec![0u8; MSG];
    // SAFETY: buf is a host buffer of MSG bytes; src is mapped device memory of at least MSG bytes.
    unsafe { raw::memcpy(rt, buf.as_mut_ptr().cast(), MSG, src, MSG, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST)? };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(MSG);
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn at(p: *mut c_void, by: usize) -> *mut c_void {
    p.cast::<u8>().wrapping_add(by).cast()
}

fn owner() -> Result<()> {
    let rt = Runtime::global()?;
    println!("owner: runtime is {}", rt.backend());
    raw::set_device(rt, 0)?;
    let config = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 1 << 30, ..PoolConfig::default() };
    let pool = Pool::new(rt, 0, config)?;
    let a = pool.alloc(64 << 10)?;
    put(rt, a.as_ptr(), "hello from the owner, on device 0")?;
    let share = pool.share(ShareConfig::default())?;
    let desc = pool.descriptor(&a)?;
    println!("owner: shared the pool as {share}");
    println!("owner: the allocation's descriptor is {} bytes", desc.to_bytes().len());
    let done = Notify::new(rt, 0)?;

    let mut worker = Command::new(std::env::current_exe()?)
        .args(["worker", &share.to_string(), &desc.to_hex()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_worker = worker.stdin.take().ok_or("no stdin")?;
    let mut from_worker = BufReader::new(worker.stdout.take().ok_or("no stdout")?).lines();
    let mut next = || -> Result<String> { Ok(from_worker.next().ok_or("the worker exited")??) };

    // The notify is exported with pid validation: whitelist the worker (it told us its host pid).
    let tgid: i32 = next()?.parse()?;
    let key = done.export(true)?;
    done.allow(tgid)?;
    writeln!(to_worker, "{key}")?;
    println!("{}", next()?);
    if !done.wait_host(Duration::from_secs(30))? {
        return Err("the worker did not signal in time".into());
    }
    println!("owner: signalled; the worker wrote back {:?}", get(rt, at(a.as_ptr(), MSG))?);

    // Grow the pool: the mirror follows.
    let b = pool.alloc(3 << 20)?;
    put(rt, b.as_ptr(), "a new allocation, in chunks mapped after the worker attached")?;
    writeln!(to_worker, "{}", pool.descriptor(&b)?.to_hex())?;
    println!("{}", next()?);
    let status = worker.wait()?;
    if !status.success() {
        return Err(format!("the worker failed: {status}").into());
    }
    let st = pool.stats();
    let exports = st.runtime_calls.iter().find(|(f, _)| *f == "aclrtMemExportToShareableHandle").map_or(0, |c| c.1);
    println!("owner: {exports} exports for {} chunks: one each, none per allocation", st.chunks);
    pool.free(a)?;
    pool.free(b)?;
    drop(done);
    pool.close()?;
    println!("owner: closed the pool; done");
    Ok(())
}

fn worker(share: &str, desc: &str) -> Result<()> {
    let rt = Runtime::global()?;
    raw::set_device(rt, 1)?;
    println!("{}", raw::device_get_bare_tgid(rt)?);
    std::io::stdout().flush()?;
    let mut lines = std::io::stdin().lock().lines();
    let mut next = || -> Result<String> { Ok(lines.next().ok_or("the owner closed stdin")??) };

    let share: ShareDesc = share.parse()?;
    let mirror = Mirror::attach(rt, &share, 1)?;
    let desc = AllocDesc::from_hex(desc)?;
    let p = mirror.ptr(&desc)?;
    println!("worker: attached on device 1; the allocation reads {:?}", get(rt, p)?);
    put(rt, at(p, MSG), "hello from the worker, on device 1")?;
    let done = Notify::import(rt, &next()?.parse()?, 1)?;
    done.signal()?;

    let b = AllocDesc::from_hex(&next()?)?;
    let q = mirror.ptr(&b)?;
    let st = mirror.stats();
    println!("worker: the pool grew to {} chunks, imported once each; it reads {:?}", st.chunks, get(rt, q)?);
    drop(done);
    mirror.close()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") if args.len() == 4 => worker(&args[2], &args[3]),
        _ => owner(),
    }
}
