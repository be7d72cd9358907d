//! Signals and attaching across processes: an IPC notify round trip against a pipe round trip between the
//! same two processes (the operating system's floor), and the rendezvous (attaching a mirror of a
//! one-chunk pool) against connecting a Unix socket and exchanging one message.
//!
//! ```sh
//! cargo bench --bench ipc
//! ```

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aclshm::{Mirror, Notify, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc, raw};
use criterion::Criterion;

const WAIT: Duration = Duration::from_secs(30);

/// The other side of the notify ping-pong: waits on `pong` (its own), signals `ping` (the parent's).
fn ponger() {
    let rt = Runtime::from_env().unwrap();
    raw::set_device(&rt, 1).unwrap();
    let pong = Notify::new(&rt, 1).unwrap();
    common::say(&pong.export(false).unwrap().to_string());
    let ping = Notify::import(&rt, &common::hear().unwrap().parse().unwrap(), 1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        while common::hear().is_some() {}
        s.store(true, Ordering::Relaxed);
    });
    while !stop.load(Ordering::Relaxed) {
        if pong.wait_host(Duration::from_secs(1)).unwrap() {
            ping.signal().unwrap();
        }
    }
}

/// Echoes bytes: the pipe floor.
fn echo() {
    let mut b = [0u8; 1];
    let (mut i, mut o) = (std::io::stdin().lock(), std::io::stdout().lock());
    while i.read_exact(&mut b).is_ok() && b[0] != b'q' {
        o.write_all(&b).unwrap();
        o.flush().unwrap();
    }
}

/// The owner of a one-chunk shared pool, and a plain Unix socket echo server next to it.
fn owner() {
    let rt = Runtime::from_env().unwrap();
    raw::set_device(&rt, 0).unwrap();
    let pool = Pool::new(&rt, 0, PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 8 << 20, ..PoolConfig::default() })
        .unwrap();
    let a = pool.alloc(1 << 20).unwrap();
    let desc = pool.share(ShareConfig::default()).unwrap();
    let echo_path = desc.socket.with_extension("echo");
    let listener = UnixListener::bind(&echo_path).unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let mut b = [0u8; 16];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
        }
    });
    common::say(&desc.to_string());
    while common::hear().is_some() {}
    let _ = std::fs::remove_file(&echo_path);
    pool.free(a).unwrap();
    pool.close().unwrap();
}

fn notify(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 0).unwrap();
    let mut g = c.benchmark_group("round_trip");
    let ping = Notify::new(rt, 0).unwrap();
    let mut peer = common::Peer::spawn("ponger", &[]);
    let pong = Notify::import(rt, &peer.recv().parse().unwrap(), 0).unwrap();
    peer.send(&ping.export(false).unwrap().to_string());
    g.bench_function("notify", |b| {
        b.iter(|| {
            pong.signal().unwrap();
            assert!(ping.wait_host(WAIT).unwrap());
        })
    });
    drop(peer);
    let mut echo = std::process::Command::new(std::env::current_exe().unwrap())
        .env("ACLSHM_BENCH_ROLE", "echo")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut to, mut from) = (echo.stdin.take().unwrap(), echo.stdout.take().unwrap());
    g.bench_function("pipe", |b| {
        b.iter(|| {
            to.write_all(b"x").unwrap();
            let mut r = [0u8; 1];
            from.read_exact(&mut r).unwrap();
        })
    });
    to.write_all(b"q").unwrap();
    echo.wait().unwrap();
    g.finish();
}

fn rendezvous(c: &mut Criterion, rt: &Runtime) {
    raw::set_device(rt, 1).unwrap();
    let mut owner = common::Peer::spawn("owner", &[]);
    let desc: ShareDesc = owner.recv().parse().unwrap();
    let echo_path = desc.socket.with_extension("echo");
    let mut g = c.benchmark_group("rendezvous");
    g.bench_function("mirror_attach_close_1_chunk", |b| {
        b.iter(|| Mirror::attach(rt, &desc, 1).unwrap().close().unwrap())
    });
    g.bench_function("unix_connect_one_message", |b| {
        b.iter(|| {
            let mut s = UnixStream::connect(&echo_path).unwrap();
            s.write_all(&[7u8; 16]).unwrap();
            let mut r = [0u8; 16];
            s.read_exact(&mut r).unwrap();
        })
    });
    g.finish();
    owner.send("quit");
}

fn main() {
    let _dirs = common::dirs();
    match common::role().as_deref() {
        Some("ponger") => return ponger(),
        Some("echo") => return echo(),
        Some("owner") => return owner(),
        _ => {}
    }
    let rt = Runtime::from_env().unwrap();
    let mut c = Criterion::default().configure_from_args();
    notify(&mut c, &rt);
    rendezvous(&mut c, &rt);
    c.final_summary();
}
