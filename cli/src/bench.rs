//! `aclshm bench`: what each runtime call aclshm makes costs on the runtime in use, and what the library
//! adds to them.
//!
//! ```text
//!   bench (this process, --device)                      peer (a child: `aclshm bench-peer`)
//!   VMM        reserve, malloc, map, unmap, free, release  (2 MiB, 20 MiB, 1 GiB)
//!   sharing    malloc, export, whitelist the peer ──────> import, free the import; "ok <ns> <ns>"
//!              free (after the peer's free)
//!   IPC memory aclrtMalloc, export key, whitelist ─────> import by key, close; "ok <ns> <ns>"
//!              close (importers close first), aclrtFree
//!   notify     create, export key, whitelist ─────────> import by key, destroy; "ok <ns> <ns>"
//!              destroy
//!   round trip record the peer's notify, wait for ours <─> wait for its own, record ours
//!              "ping" <────────────────────────────────> "ok"            (the pipe's floor)
//!   library    Pool and KvPool alloc + free; Pool grow + trim
//!              two shared pools of 8 chunks ──────────> Mirror attach + close; bare import + reserve +
//!                                                       map of the same chunks, and back
//!   scaling    (`--scaling`, in `scaling.rs`) ─────────> hold a Mirror, follow the pool, detach;
//!                                                       each call of one chunk's import and map, timed
//! ```
//!
//! The runtime refuses export and import in one process, so everything imported is imported by the peer,
//! a child of this binary that takes commands on stdin and answers one line each on stdout: `ok` and its
//! timings in nanoseconds, or `error <why>` (then it exits, having released what it held). Each call is
//! timed alone with [`Instant`]; calls too quick for that (the pool's) are timed in batches and divided.
//!
//! Nothing is leaked on any path. Every runtime object either process makes is pushed on a [`Holdings`]
//! stack as it is made and released from it, so the order of release is the reverse of acquisition: the
//! documented one (unmap, then free the physical memory, then release the range; an IPC key closed before
//! its memory is freed). An importer answers only after it released its import, so the exporter frees
//! after every importer did. On an error the stack is unwound (each release tried twice, as the library
//! does), and the peer is told to go (stdin closes) before this process releases what it exported; a peer
//! that does not go in time is killed, and on the simulator what it left is reclaimed.

use std::ffi::c_void;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitCode, Stdio};
use std::ptr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aclshm::raw::{self, IpcKey};
use aclshm::sys::{
    ACL_NOTIFY_DEFAULT, ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS,
    ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT, ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS, ACL_RT_VMM_EXPORT_FLAG_DEFAULT,
    aclrtDrvMemHandle, aclrtMemAttr, aclrtMemHandleType, aclrtMemMallocPolicy, aclrtNotify,
};
use aclshm::vmm::{PageSize, device_prop};
use aclshm::{
    Backend, KvConfig, KvPool, Mirror, Notify, Pool, PoolConfig, Runtime, RuntimeInfo, ShareConfig, ShareDesc, Stream,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::out::{self, errln, outln};
use crate::report::{Table, bytes};

const MIB: u64 = 1 << 20;
/// The sizes of the calls that take one.
const SIZES: [u64; 3] = [2 * MIB, 20 * MIB, 1 << 30];
/// Chunks of the shared pools the peer attaches to.
const MIRROR_CHUNKS: u64 = 8;
/// Pool allocations and frees timed together (one pair alone is shorter than the clock's overhead).
const POOL_BATCH: u32 = 1000;
/// KV block allocations and frees timed together.
const KV_BATCH: u32 = 100;
/// Round trips made before any is timed.
const WARM_UP: u32 = 5;

/// Options of `aclshm bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the report to DIR/bench.json and DIR/bench.md (with --scaling: DIR/scaling.json and
    /// `DIR/scaling-<curve>.svg`); DIR is created if need be.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Few repetitions (10 at 2 MiB and of the calls without a size, 3 at 20 MiB, 1 at 1 GiB): checks
    /// that every call works, in about a second on the simulator; too few figures to publish. With
    /// --scaling: the curves' smaller end only (64 chunks, 4 mirrors, 4 workers), a few repetitions each,
    /// and a demo of 32 blocks: seconds.
    #[arg(long)]
    pub quick: bool,
    /// Measure scaling curves instead, each against its ideal (the cost of the runtime calls it needs,
    /// timed in the same run): a mirror's attach against the pool's chunks, the owner's growth against
    /// the mirrors attached, KV block allocation against threads and occupancy, the demo against its
    /// workers. `--out DIR` writes scaling.json and one SVG plot per curve.
    #[arg(long)]
    pub scaling: bool,
    /// The device to measure on.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub device: i32,
    /// The device the peer process imports on (default: --device).
    #[arg(long, allow_negative_numbers = true)]
    pub peer_device: Option<i32>,
    /// Seconds the peer process may take over any one step before the bench gives up (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

/// Options of the hidden `aclshm bench-peer`, which `aclshm bench` starts.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    #[arg(long, allow_negative_numbers = true)]
    device: i32,
    #[arg(long)]
    timeout: u64,
}

/// Timed repetitions of the calls at `size` (fewer where each call moves more memory).
fn reps(size: u64, quick: bool) -> u32 {
    match (size, quick) {
        (s, false) if s <= 2 * MIB => 200,
        (s, true) if s <= 2 * MIB => 10,
        (s, false) if s <= 20 * MIB => 50,
        (s, true) if s <= 20 * MIB => 3,
        (_, false) => 5,
        (_, true) => 1,
    }
}

/// Repetitions of everything that has no size.
fn count(quick: bool) -> u32 {
    if quick { 10 } else { 200 }
}

// ---- what the runtime holds, released in the documented order ----

/// A runtime object a process holds, and the call that lets it go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// A reserved range: `aclrtReleaseMemAddress`.
    Range(*mut c_void),
    /// Physical memory, allocated or imported: `aclrtFreePhysical`.
    Physical(aclrtDrvMemHandle),
    /// A whole handle mapped at this address: `aclrtUnmapMem`.
    Mapping(*mut c_void),
    /// `aclrtMalloc` memory: `aclrtFree`.
    Device(*mut c_void),
    /// An IPC memory key, exported or imported: `aclrtIpcMemClose`.
    Key(IpcKey),
    /// A notify, created or imported: `aclrtDestroyNotify`.
    Notify(aclrtNotify),
}

impl Held {
    /// Release it.
    ///
    /// # Safety
    /// 1. `self` is a live object of `rt` that this process holds and nothing else releases, released once.
    /// 2. Nothing uses it any more, and what depends on it is released (a mapping before its memory and its
    ///    range, every importer's key before the exporter's).
    unsafe fn release(self, rt: &Runtime) -> aclshm::Result<()> {
        // SAFETY: forwarded to the caller (preconditions 1 and 2).
        unsafe {
            match self {
                Held::Range(p) => raw::release_mem_address(rt, p),
                Held::Physical(h) => raw::free_physical(rt, h),
                Held::Mapping(p) => raw::unmap_mem(rt, p),
                Held::Device(p) => raw::free(rt, p),
                Held::Key(k) => raw::ipc_mem_close(rt, &k),
                Held::Notify(n) => raw::destroy_notify(rt, n),
            }
        }
    }
}

/// The runtime objects one measurement holds, as a stack: what is pushed last is released first, so
/// objects pushed as they are made go in the runtime's order ("Reserve VA -> MallocPhysical -> MapMem ->
/// use -> UnmapMem -> FreePhysical -> ReleaseMemAddress"; an IPC key closed before its memory is freed).
/// Dropped with objects on it (an error on the way), it releases them all, each tried twice, and says which
/// failed.
pub(crate) struct Holdings<'a> {
    rt: &'a Runtime,
    held: Vec<Held>,
}

impl<'a> Holdings<'a> {
    pub(crate) fn new(rt: &'a Runtime) -> Holdings<'a> {
        Holdings { rt, held: Vec::new() }
    }

    /// Hold `h` from now on.
    ///
    /// # Safety
    /// 1. `h` is a live object of this stack's runtime that this process got and nothing else releases.
    /// 2. What `h` depends on was pushed before it (a mapping after its range and its memory, an exported
    ///    key after its memory), so that releasing in reverse order is the order the runtime documents.
    /// 3. Nothing uses `h` (in this process, or importing it in another) from the moment this stack
    ///    releases it: when [`release_last`](Holdings::release_last) or
    ///    [`release_all`](Holdings::release_all) reaches it, or when the stack is dropped.
    pub(crate) unsafe fn push(&mut self, h: Held) {
        self.held.push(h);
    }

    /// Release the object pushed last, timing the call; if it fails, the object stays held.
    pub(crate) fn release_last(&mut self) -> Result<Duration, String> {
        let h = self.held.pop().ok_or("nothing is held")?;
        let t = Instant::now();
        // SAFETY: pushed under `push`'s contract (live, ours, in order, unused from now on: 1 to 3); it left
        // the stack, so it is released once.
        let r = unsafe { h.release(self.rt) };
        let d = t.elapsed();
        r.map(|()| d).map_err(|e| {
            self.held.push(h);
            e.to_string()
        })
    }

    /// Release everything, last pushed first.
    pub(crate) fn release_all(&mut self) -> Result<(), String> {
        while !self.held.is_empty() {
            self.release_last()?;
        }
        Ok(())
    }
}

impl Drop for Holdings<'_> {
    fn drop(&mut self) {
        let rt = self.rt;
        let release = |h: Held| {
            // SAFETY: as in `release_last`: pushed under `push`'s contract and off the stack now (a failed
            // release is tried once more, as the library does, then given up).
            unsafe { h.release(rt) }
        };
        while let Some(h) = self.held.pop() {
            if let Err(e) = release(h).or_else(|_| release(h)) {
                errln!("aclshm bench: cleaning up: {e}");
            }
        }
    }
}

/// Run one runtime call and time it.
pub(crate) fn time<T>(f: impl FnOnce() -> aclshm::Result<T>) -> Result<(T, Duration), String> {
    let t = Instant::now();
    let r = f();
    let d = t.elapsed();
    r.map(|v| (v, d)).map_err(|e| e.to_string())
}

/// Export `h` as a plain shareable handle, timed.
///
/// # Safety
/// 1. `h` is a live physical handle of this process, not exported before (freeing it ends the export).
pub(crate) unsafe fn timed_export(rt: &Runtime, h: aclrtDrvMemHandle) -> Result<(u64, Duration), String> {
    time(|| {
        // SAFETY: precondition 1.
        unsafe {
            raw::mem_export_to_shareable_handle(
                rt,
                h,
                aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
                ACL_RT_VMM_EXPORT_FLAG_DEFAULT,
            )
        }
    })
}

pub(crate) fn e(e: aclshm::Error) -> String {
    e.to_string()
}

// ---- the peer ----

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    // The bench reads these; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{msg}").and_then(|()| out.flush());
}

/// The peer's side of the notify round trips. Field order is teardown order: the stream (its work done)
/// before the notifies.
struct PeerRoundTrip {
    stream: Stream,
    /// Created here and exported: the bench records it, this process waits for it.
    mine: Notify,
    /// The bench's, imported: this process records it.
    theirs: Notify,
}

/// `aclshm bench-peer`: answer the bench's commands until it says `bye` or closes stdin.
pub fn peer(args: &PeerArgs) -> ExitCode {
    match peer_run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // What this process held is released by now (it went with `peer_run`'s frame), so the bench
            // may release what it exported when it reads this.
            say(&format!("error {msg}"));
            ExitCode::FAILURE
        }
    }
}

fn peer_run(args: &PeerArgs) -> Result<(), String> {
    let rt = Runtime::from_env().map_err(e)?;
    raw::set_device(&rt, args.device).map_err(e)?;
    say(&format!("tgid {}", raw::device_get_bare_tgid(&rt).map_err(e)?));
    let wait = Duration::from_secs(args.timeout);
    let mut round_trip: Option<PeerRoundTrip> = None;
    // A mirror kept attached between commands (`aclshm bench --scaling`).
    let mut held: Option<Mirror> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading a command: {e}"))?;
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply = match cmd {
            "ping" => String::new(),
            "import" => peer_import(&rt, args.device, rest)?,
            "ipc-import" => peer_ipc_import(&rt, rest)?,
            "notify-import" => peer_notify_import(&rt, rest)?,
            "rtt-setup" => {
                let (tgid, key) = rest.split_once(' ').ok_or("rtt-setup: expected a tgid and a key")?;
                let mine = Notify::new(&rt, args.device).map_err(e)?;
                let key_mine = mine.export(true).map_err(e)?;
                mine.allow(tgid.parse().map_err(|_| format!("rtt-setup: bad tgid {tgid:?}"))?).map_err(e)?;
                let theirs = Notify::import(&rt, &key.parse().map_err(e)?, args.device).map_err(e)?;
                let stream = Stream::new(&rt, args.device).map_err(e)?;
                round_trip = Some(PeerRoundTrip { stream, mine, theirs });
                key_mine.to_string()
            }
            "rtt" => {
                let n: u32 = rest.parse().map_err(|_| format!("rtt: bad count {rest:?}"))?;
                let r = round_trip.as_ref().ok_or("rtt before rtt-setup")?;
                say("ok");
                for _ in 0..n {
                    r.mine.wait(&r.stream, Some(wait)).map_err(e)?;
                    r.theirs.record(&r.stream).map_err(e)?;
                    r.stream.synchronize().map_err(e)?;
                }
                String::new()
            }
            "rtt-end" => {
                round_trip = None;
                String::new()
            }
            "mirror" => peer_mirror(&rt, args.device, rest)?,
            "bare-attach" => peer_bare_attach(&rt, args.device, rest)?,
            "chunk-calls" => peer_chunk_calls(&rt, args.device, rest)?,
            "hold" => {
                if held.is_some() {
                    return Err("hold: a mirror is held already".into());
                }
                let desc: ShareDesc = rest.parse().map_err(e)?;
                held = Some(Mirror::attach(&rt, &desc, args.device).map_err(e)?);
                String::new()
            }
            "follow" => {
                let generation: u64 = rest.parse().map_err(|_| format!("follow: bad generation {rest:?}"))?;
                peer_follow(held.as_ref().ok_or("follow: no mirror is held")?, generation, wait)?
            }
            "detach" => {
                held.take().ok_or("detach: no mirror is held")?.close().map_err(e)?;
                String::new()
            }
            "bye" => {
                if let Some(m) = held.take() {
                    m.close().map_err(e)?;
                }
                return Ok(());
            }
            other => return Err(format!("unknown command {other:?}")),
        };
        say(&format!("ok {reply}"));
    }
    Ok(())
}

fn nanos(d: Duration) -> String {
    d.as_nanos().to_string()
}

/// `import <shareable>`: import it and free the import.
fn peer_import(rt: &Runtime, device: i32, rest: &str) -> Result<String, String> {
    let shareable: u64 = rest.parse().map_err(|_| format!("import: bad handle {rest:?}"))?;
    let mut held = Holdings::new(rt);
    let (h, import) = time(|| raw::mem_import_from_shareable_handle(rt, shareable, device))?;
    // SAFETY: a handle just imported, freed by nothing else.
    unsafe { held.push(Held::Physical(h)) };
    let free = held.release_last()?;
    Ok(format!("{} {}", nanos(import), nanos(free)))
}

/// `ipc-import <key>`: import the memory and close the import.
fn peer_ipc_import(rt: &Runtime, rest: &str) -> Result<String, String> {
    let key: IpcKey = rest.parse().map_err(e)?;
    let mut held = Holdings::new(rt);
    let (_, import) = time(|| raw::ipc_mem_import_by_key(rt, &key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS))?;
    // SAFETY: an import just made under this key, closed by nothing else.
    unsafe { held.push(Held::Key(key)) };
    let close = held.release_last()?;
    Ok(format!("{} {}", nanos(import), nanos(close)))
}

/// `notify-import <key>`: import the notify and destroy the import.
fn peer_notify_import(rt: &Runtime, rest: &str) -> Result<String, String> {
    let key: IpcKey = rest.parse().map_err(e)?;
    let mut held = Holdings::new(rt);
    let (n, import) = time(|| raw::notify_import_by_key(rt, &key, ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS))?;
    // SAFETY: a notify just imported, destroyed by nothing else; nothing was queued on it.
    unsafe { held.push(Held::Notify(n)) };
    let destroy = held.release_last()?;
    Ok(format!("{} {}", nanos(import), nanos(destroy)))
}

/// `mirror <reps> <share descriptor>`: attach a mirror and close it, `reps` times after one untimed.
fn peer_mirror(rt: &Runtime, device: i32, rest: &str) -> Result<String, String> {
    let (n, desc) = rest.split_once(' ').ok_or("mirror: expected a count and a descriptor")?;
    let n: u32 = n.parse().map_err(|_| format!("mirror: bad count {n:?}"))?;
    let desc: ShareDesc = desc.parse().map_err(e)?;
    let mut times = Vec::new();
    for i in 0..=n {
        let t = Instant::now();
        Mirror::attach(rt, &desc, device).and_then(Mirror::close).map_err(e)?;
        if i > 0 {
            times.push(nanos(t.elapsed()));
        }
    }
    Ok(times.join(" "))
}

/// `bare-attach <reps> <chunk bytes> <share descriptor>`: what a mirror's attach and close take without
/// the library: reserve a range, import and map every chunk the pool published; unmap and free each, and
/// release the range. `reps` times after one untimed. The pool is shared without pid validation.
fn peer_bare_attach(rt: &Runtime, device: i32, rest: &str) -> Result<String, String> {
    let mut words = rest.splitn(3, ' ');
    let (n, chunk, desc) = (words.next(), words.next(), words.next());
    let bad = || "bare-attach: expected a count, a chunk size and a descriptor".to_string();
    let n: u32 = n.and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let chunk: usize = chunk.and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let desc: ShareDesc = desc.ok_or_else(bad)?.parse().map_err(e)?;
    let handles = aclshm::share::published_handles(&desc).map_err(e)?;
    let mut times = Vec::new();
    for i in 0..=n {
        let t = Instant::now();
        let mut held = Holdings::new(rt);
        // SAFETY: no address asked for: the runtime picks a range nothing uses.
        let va = unsafe { raw::reserve_mem_address(rt, chunk * handles.len(), 0, ptr::null_mut(), 0) }.map_err(e)?;
        // SAFETY: the range just reserved, released by nothing else.
        unsafe { held.push(Held::Range(va)) };
        for (k, &s) in handles.iter().enumerate() {
            let h = raw::mem_import_from_shareable_handle(rt, s, device).map_err(e)?;
            // SAFETY: a handle just imported, freed by nothing else.
            unsafe { held.push(Held::Physical(h)) };
            let at = va.wrapping_byte_add(k * chunk);
            // SAFETY: the whole chunk at its own slot of our range; the range and the handle are live.
            unsafe { raw::map_mem(rt, at, chunk, 0, h, 0) }.map_err(e)?;
            // SAFETY: the mapping just made, after its range and its memory.
            unsafe { held.push(Held::Mapping(at)) };
        }
        held.release_all()?;
        if i > 0 {
            times.push(nanos(t.elapsed()));
        }
    }
    Ok(times.join(" "))
}

/// `chunk-calls <reps> <chunk bytes> <share descriptor>`: the bare calls one chunk of a mirror costs,
/// each timed alone: reserve a range of one chunk, import the pool's first published chunk, map it;
/// unmap, free the import, release the range. `reps` times after one untimed; six times per repetition,
/// in that order. The pool must let this process import (shared without pid validation, or whitelisting
/// it: a mirror's attach does).
fn peer_chunk_calls(rt: &Runtime, device: i32, rest: &str) -> Result<String, String> {
    let mut words = rest.splitn(3, ' ');
    let (n, chunk, desc) = (words.next(), words.next(), words.next());
    let bad = || "chunk-calls: expected a count, a chunk size and a descriptor".to_string();
    let n: u32 = n.and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let chunk: usize = chunk.and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let desc: ShareDesc = desc.ok_or_else(bad)?.parse().map_err(e)?;
    let handles = aclshm::share::published_handles(&desc).map_err(e)?;
    let &shareable = handles.first().ok_or("chunk-calls: the pool published no chunk")?;
    let mut times = Vec::new();
    for i in 0..=n {
        let mut held = Holdings::new(rt);
        // SAFETY: no address asked for: the runtime picks a range nothing uses.
        let (va, reserve) = time(|| unsafe { raw::reserve_mem_address(rt, chunk, 0, ptr::null_mut(), 0) })?;
        // SAFETY: the range just reserved, released by nothing else.
        unsafe { held.push(Held::Range(va)) };
        let (h, import) = time(|| raw::mem_import_from_shareable_handle(rt, shareable, device))?;
        // SAFETY: a handle just imported, freed by nothing else.
        unsafe { held.push(Held::Physical(h)) };
        // SAFETY: the whole chunk at the start of a range of its size; the range and the handle are live.
        let ((), map) = time(|| unsafe { raw::map_mem(rt, va, chunk, 0, h, 0) })?;
        // SAFETY: the mapping just made, after its range and its memory.
        unsafe { held.push(Held::Mapping(va)) };
        let unmap = held.release_last()?;
        let free = held.release_last()?;
        let release = held.release_last()?;
        if i > 0 {
            times.extend([reserve, import, map, unmap, free, release].map(nanos));
        }
    }
    Ok(times.join(" "))
}

/// `follow <generation>`: bring the held mirror up to the owner's table until it has reached
/// `generation` (every chunk published by then mapped, every one retired unmapped), within `wait`.
fn peer_follow(m: &Mirror, generation: u64, wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let at = m.sync().map_err(e)?;
        if at >= generation {
            return Ok(String::new());
        }
        if Instant::now() >= deadline {
            return Err(format!("follow: the mirror is at generation {at}, not {generation}, after {wait:?}"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The bench's end of the peer.
pub(crate) struct Peer {
    rt: Runtime,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The peer's lines, from a thread that reads its stdout (closed when it does).
    lines: Receiver<String>,
    timeout: Duration,
    /// The peer's pid as whitelists take it.
    pub(crate) tgid: i32,
    done: bool,
}

impl Peer {
    pub(crate) fn spawn(rt: &Runtime, device: i32, timeout: Duration) -> Result<Peer, String> {
        // The peer uses this process's runtime.
        let mut cmd = crate::child::this_program(rt)?;
        cmd.args(["bench-peer", "--device", &device.to_string(), "--timeout", &timeout.as_secs().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start the peer process: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the peer process has no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut peer = Peer { rt: rt.clone(), child, stdin, lines, timeout, tgid: 0, done: false };
        let line = peer.line()?;
        match line.strip_prefix("tgid ").and_then(|t| t.parse().ok()) {
            Some(tgid) => peer.tgid = tgid,
            None => return Err(peer.failed(format!("the peer process said {line:?}, not its tgid"))),
        }
        Ok(peer)
    }

    /// The next line, or the peer is stopped and the error says why.
    fn line(&mut self) -> Result<String, String> {
        match self.lines.recv_timeout(self.timeout) {
            Ok(line) => match line.strip_prefix("error ") {
                Some(why) => Err(self.failed(format!("the peer process: {why}"))),
                None => Ok(line),
            },
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failed(format!("the peer process did not answer within {} s", self.timeout.as_secs())))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.failed("the peer process exited".to_string())),
        }
    }

    /// Stop the peer after a failure, and return `why` (with its exit status if it adds anything).
    fn failed(&mut self, why: String) -> String {
        match self.stop() {
            Some(status) if !why.starts_with("the peer process: ") => format!("{why} ({status})"),
            _ => why,
        }
    }

    /// Send a command.
    fn send(&mut self, cmd: &str) -> Result<(), String> {
        let sent = match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()),
            None => return Err("the peer process is gone".into()),
        };
        sent.map_err(|err| {
            // It is gone: its last words, if any, say more than the broken pipe.
            match self.lines.try_recv().ok().and_then(|l| l.strip_prefix("error ").map(str::to_string)) {
                Some(why) => self.failed(format!("the peer process: {why}")),
                None => self.failed(format!("cannot write to the peer process: {err}")),
            }
        })
    }

    /// Send a command and wait for its `ok`; returns what follows it.
    pub(crate) fn ask(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd)?;
        self.ok()
    }

    /// Wait for the next `ok`; returns what follows it.
    fn ok(&mut self) -> Result<String, String> {
        let line = self.line()?;
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(self.failed(format!("the peer process said {line:?}"))),
        }
    }

    /// [`ask`](Peer::ask) for `n` durations.
    pub(crate) fn times(&mut self, cmd: &str, n: usize) -> Result<Vec<Duration>, String> {
        let reply = self.ask(cmd)?;
        let times: Vec<Duration> =
            reply.split_whitespace().filter_map(|w| w.parse().ok()).map(Duration::from_nanos).collect();
        if times.len() != n {
            return Err(self.failed(format!("the peer process answered {cmd:?} with {reply:?}")));
        }
        Ok(times)
    }

    /// The peer's error, if it sent one by now (for a failure here that its failure may explain).
    fn last_words(&mut self) -> Option<String> {
        let line = self.lines.recv_timeout(Duration::from_millis(200)).ok()?;
        line.strip_prefix("error ").map(|why| self.failed(format!("the peer process: {why}")))
    }

    /// Say goodbye and check the peer ended well.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        self.send("bye")?;
        match self.stop() {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("the peer process ended with {status}")),
            None => Err("the peer process was stopped already".into()),
        }
    }

    /// Close the peer's stdin (it releases what it holds and exits) and wait for it; one that does not
    /// exit in time is killed, and on the simulator what it left is reclaimed, as the driver does for a
    /// process that dies. Returns its exit status (once).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        drop(self.stdin.take());
        // Long enough for it to release what it holds; not as long as a wait it may be stuck in.
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(10));
        if let Some(status) = crate::child::wait_until(&mut self.child, deadline, Duration::from_millis(2)) {
            return Some(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        if self.rt.is_simulator() {
            let _ = raw::sim_reclaim(&self.rt);
        }
        status
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- measurements ----

/// A group of measurements: one table in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Section {
    Vmm,
    Sharing,
    IpcMemory,
    Notify,
    RoundTrip,
    Library,
}

impl Section {
    const ALL: [Section; 6] =
        [Section::Vmm, Section::Sharing, Section::IpcMemory, Section::Notify, Section::RoundTrip, Section::Library];

    fn title(self) -> &'static str {
        match self {
            Section::Vmm => "Virtual memory calls",
            Section::Sharing => "Sharing physical memory between processes",
            Section::IpcMemory => "IPC memory by key",
            Section::Notify => "IPC notifies",
            Section::RoundTrip => "Notify round trip between the two processes",
            Section::Library => "The library against the bare calls",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Section::Vmm => {
                "One allocation's life, each call timed alone: reserve a range of the size, allocate physical \
                 memory (2 MiB pages), map it whole, unmap, free, release."
            }
            Section::Sharing => {
                "`bench` allocates, exports (pid validation on) and whitelists `peer`; `peer` imports the \
                 handle and frees its import; then `bench` frees its handle. One handle per repetition: each is \
                 exported and imported once."
            }
            Section::IpcMemory => {
                "`bench` allocates with `aclrtMalloc`, exports the whole allocation under a key and whitelists \
                 `peer`; `peer` imports by key and closes; then `bench` closes (importers first) and frees."
            }
            Section::Notify => {
                "`bench` creates a notify, exports it and whitelists `peer`; `peer` imports it and destroys \
                 its import; then `bench` destroys it."
            }
            Section::RoundTrip => {
                "`bench` records `peer`'s notify and waits for its own on a stream; `peer` waits for its \
                 own and records `bench`'s. The record and the wait only queue work (their times are the \
                 calls'); the synchronisation waits for the whole round trip. Against a line sent down a pipe \
                 to `peer` and its answer."
            }
            Section::Library => {
                "What the library does, against the bare runtime calls the same work needs (the last column: \
                 the library's median over theirs). A bare VMM allocation is reserve, malloc, map, unmap, \
                 free, release: the path of allocators that map every allocation (vLLM's CuMemAllocator, \
                 vllm-ascend's camem), against which the pools are warm (a block stays allocated, so no \
                 chunk is mapped or trimmed while they are timed). A bare grow + trim is malloc, map, unmap, \
                 free. A bare attach + detach of 8 chunks is reserve; import and map each chunk; unmap and \
                 free each; release; the mirrors' pools are another process's (`bench`'s), and the bare \
                 calls use the handles of the pool shared without pid validation."
            }
        }
    }
}

/// Which process made the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Process {
    /// The `aclshm bench` process.
    Bench,
    /// Its child, which imports.
    Peer,
}

impl Process {
    fn name(self) -> &'static str {
        match self {
            Process::Bench => "bench",
            Process::Peer => "peer",
        }
    }
}

/// What a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    section: Section,
    name: &'static str,
    process: Process,
    bytes: Option<u64>,
}

fn key(section: Section, name: &'static str, process: Process, bytes: Option<u64>) -> Key {
    Key { section, name, process, bytes }
}

struct Series {
    key: Key,
    /// Operations per sample (each sample is the batch's time divided by this).
    batch: u32,
    us: Vec<f64>,
}

/// Every sample, by series, in the order series first appeared; and which series compare with which.
#[derive(Default)]
struct Recorder {
    series: Vec<Series>,
    compared: Vec<(Key, Key)>,
}

impl Recorder {
    fn add(&mut self, k: Key, d: Duration) {
        self.add_batch(k, 1, d);
    }

    fn add_batch(&mut self, k: Key, batch: u32, d: Duration) {
        let us = d.as_secs_f64() * 1e6 / f64::from(batch);
        match self.series.iter_mut().find(|s| s.key == k) {
            Some(s) => s.us.push(us),
            None => self.series.push(Series { key: k, batch, us: vec![us] }),
        }
    }

    /// Report `figure` as a ratio to `baseline`.
    fn compare(&mut self, figure: Key, baseline: Key) {
        self.compared.push((figure, baseline));
    }
}

/// The value at quantile `q` of sorted samples, interpolated between neighbours.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// What one run of the bench measures on one runtime.
struct Bench<'a> {
    rt: &'a Runtime,
    device: i32,
    quick: bool,
    timeout: Duration,
    /// This process's pid as whitelists take it.
    tgid: i32,
    peer: Peer,
    rec: Recorder,
    bar: ProgressBar,
}

impl Bench<'_> {
    fn vmm(&mut self, size: u64) -> Result<(), String> {
        let (rt, n) = (self.rt, size as usize);
        let prop = device_prop(self.device, PageSize::Huge2M);
        let k = |name| key(Section::Vmm, name, Process::Bench, Some(size));
        for _ in 0..reps(size, self.quick) {
            let mut held = Holdings::new(rt);
            // SAFETY: no address asked for: the runtime picks a range nothing uses.
            let (va, reserve) = time(|| unsafe { raw::reserve_mem_address(rt, n, 0, ptr::null_mut(), 0) })?;
            // SAFETY: the range just reserved, released by nothing else.
            unsafe { held.push(Held::Range(va)) };
            let (h, malloc) = time(|| raw::malloc_physical(rt, n, &prop, 0))?;
            // SAFETY: memory just allocated, freed by nothing else.
            unsafe { held.push(Held::Physical(h)) };
            // SAFETY: the whole handle at the start of a range of its size; both are live and ours.
            let ((), map) = time(|| unsafe { raw::map_mem(rt, va, n, 0, h, 0) })?;
            // SAFETY: the mapping just made, after its range and its memory.
            unsafe { held.push(Held::Mapping(va)) };
            let unmap = held.release_last()?;
            let free = held.release_last()?;
            let release = held.release_last()?;
            for (name, d) in [
                ("aclrtReserveMemAddress", reserve),
                ("aclrtMallocPhysical", malloc),
                ("aclrtMapMem", map),
                ("aclrtUnmapMem", unmap),
                ("aclrtFreePhysical", free),
                ("aclrtReleaseMemAddress", release),
            ] {
                self.rec.add(k(name), d);
            }
            // The baselines of the library's figures: what one allocation costs without a pool, and what a
            // pool's growth by one chunk and its trim cannot avoid.
            if size == 2 * MIB {
                self.rec.add(
                    key(Section::Library, VMM_PATH, Process::Bench, Some(size)),
                    reserve + malloc + map + unmap + free + release,
                );
            }
            if size <= 20 * MIB {
                self.rec.add(key(Section::Library, BARE_GROW, Process::Bench, Some(size)), malloc + map + unmap + free);
            }
        }
        Ok(())
    }

    fn sharing(&mut self, size: u64) -> Result<(), String> {
        let (rt, n) = (self.rt, size as usize);
        let prop = device_prop(self.device, PageSize::Huge2M);
        let k = |name, process| key(Section::Sharing, name, process, Some(size));
        for _ in 0..reps(size, self.quick) {
            let mut held = Holdings::new(rt);
            let h = raw::malloc_physical(rt, n, &prop, 0).map_err(e)?;
            // SAFETY: memory just allocated, freed by nothing else.
            unsafe { held.push(Held::Physical(h)) };
            // SAFETY: our live handle, exported once.
            let (shareable, export) = unsafe { timed_export(rt, h) }?;
            let ((), allow) = time(|| raw::mem_set_pid_to_shareable_handle(rt, shareable, &[self.peer.tgid]))?;
            // "A must wait until B has imported before aclrtFreePhysical": the peer answers once it has
            // imported, and freed its import, so ours may go.
            let peer = self.peer.times(&format!("import {shareable}"), 2)?;
            let free = held.release_last()?;
            self.rec.add(k("aclrtMemExportToShareableHandle", Process::Bench), export);
            self.rec.add(k("aclrtMemSetPidToShareableHandle", Process::Bench), allow);
            self.rec.add(k("aclrtMemImportFromShareableHandle", Process::Peer), peer[0]);
            self.rec.add(k("aclrtFreePhysical", Process::Peer), peer[1]);
            self.rec.add(k("aclrtFreePhysical", Process::Bench), free);
        }
        Ok(())
    }

    fn ipc_memory(&mut self, size: u64) -> Result<(), String> {
        let (rt, n) = (self.rt, size as usize);
        let k = |name, process| key(Section::IpcMemory, name, process, Some(size));
        for _ in 0..reps(size, self.quick) {
            let mut held = Holdings::new(rt);
            let (p, malloc) = time(|| raw::malloc(rt, n, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST))?;
            // SAFETY: memory just allocated, freed by nothing else.
            unsafe { held.push(Held::Device(p)) };
            // SAFETY: the whole allocation just made (the runtime exports only whole ones).
            let (key, export) =
                time(|| unsafe { raw::ipc_mem_get_export_key(rt, p, n, ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT) })?;
            // SAFETY: the key of the export just made, after its memory.
            unsafe { held.push(Held::Key(key)) };
            let ((), allow) = time(|| raw::ipc_mem_set_import_pid(rt, &key, &[self.peer.tgid]))?;
            // "All importers must call aclrtIpcMemClose before the exporter does": the peer answers once it
            // has closed its import.
            let peer = self.peer.times(&format!("ipc-import {key}"), 2)?;
            let close = held.release_last()?;
            let free = held.release_last()?;
            self.rec.add(k("aclrtMalloc", Process::Bench), malloc);
            self.rec.add(k("aclrtIpcMemGetExportKey", Process::Bench), export);
            self.rec.add(k("aclrtIpcMemSetImportPid", Process::Bench), allow);
            self.rec.add(k("aclrtIpcMemImportByKey", Process::Peer), peer[0]);
            self.rec.add(k("aclrtIpcMemClose", Process::Peer), peer[1]);
            self.rec.add(k("aclrtIpcMemClose", Process::Bench), close);
            self.rec.add(k("aclrtFree", Process::Bench), free);
        }
        Ok(())
    }

    fn notify(&mut self) -> Result<(), String> {
        let rt = self.rt;
        let k = |name, process| key(Section::Notify, name, process, None);
        for _ in 0..count(self.quick) {
            let mut held = Holdings::new(rt);
            let (n, create) = time(|| raw::create_notify(rt, u64::from(ACL_NOTIFY_DEFAULT)))?;
            // SAFETY: a notify just created, destroyed by nothing else; nothing is queued on it.
            unsafe { held.push(Held::Notify(n)) };
            // SAFETY: our live notify, exported once.
            let (key, export) =
                time(|| unsafe { raw::notify_get_export_key(rt, n, ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT) })?;
            // SAFETY: our live notify.
            let ((), allow) = time(|| unsafe { raw::notify_set_import_pid(rt, n, &[self.peer.tgid]) })?;
            let peer = self.peer.times(&format!("notify-import {key}"), 2)?;
            let destroy = held.release_last()?;
            self.rec.add(k("aclrtCreateNotify", Process::Bench), create);
            self.rec.add(k("aclrtNotifyGetExportKey", Process::Bench), export);
            self.rec.add(k("aclrtNotifySetImportPid", Process::Bench), allow);
            self.rec.add(k("aclrtNotifyImportByKey", Process::Peer), peer[0]);
            self.rec.add(k("aclrtDestroyNotify", Process::Peer), peer[1]);
            self.rec.add(k("aclrtDestroyNotify", Process::Bench), destroy);
        }
        Ok(())
    }

    fn round_trip(&mut self) -> Result<(), String> {
        let rt = self.rt;
        let n = count(self.quick) * 2;
        let k = |name| key(Section::RoundTrip, name, Process::Bench, None);
        let mine = Notify::new(rt, self.device).map_err(e)?;
        let key_mine = mine.export(true).map_err(e)?;
        mine.allow(self.peer.tgid).map_err(e)?;
        let key_theirs = self.peer.ask(&format!("rtt-setup {} {key_mine}", self.tgid))?;
        let theirs = Notify::import(rt, &key_theirs.parse().map_err(e)?, self.device).map_err(e)?;
        // Made last, so dropped first (on an error too): its queued work is done before the notifies go.
        let stream = Stream::new(rt, self.device).map_err(e)?;
        self.peer.ask(&format!("rtt {}", n + WARM_UP))?;
        for i in 0..n + WARM_UP {
            let t = Instant::now();
            let ((), record) = time(|| theirs.record(&stream))?;
            let ((), wait) = time(|| mine.wait(&stream, Some(self.timeout)))?;
            let synced = time(|| stream.synchronize());
            let total = t.elapsed();
            let ((), sync) = match synced {
                Ok(r) => r,
                Err(why) => return Err(self.peer.last_words().unwrap_or(why)),
            };
            if i >= WARM_UP {
                self.rec.add(k("aclrtRecordNotify"), record);
                self.rec.add(k("aclrtWaitAndResetNotify"), wait);
                self.rec.add(k("aclrtSynchronizeStream"), sync);
                self.rec.add(k(NOTIFY_ROUND_TRIP), total);
            }
        }
        self.peer.ok()?;
        self.peer.ask("rtt-end")?;
        drop((stream, theirs, mine));
        for i in 0..n + WARM_UP {
            let t = Instant::now();
            self.peer.ask("ping")?;
            if i >= WARM_UP {
                self.rec.add(k(PIPE_ROUND_TRIP), t.elapsed());
            }
        }
        self.rec.compare(k(NOTIFY_ROUND_TRIP), k(PIPE_ROUND_TRIP));
        Ok(())
    }

    /// Pool allocation and free of 64 KiB in a warm pool, and KV blocks in a warm KV pool.
    fn pools(&mut self) -> Result<(), String> {
        let (rt, samples) = (self.rt, count(self.quick));
        let size = 64 << 10;
        let config = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 8 * MIB, ..PoolConfig::default() };
        let pool = Pool::new(rt, self.device, config.clone()).map_err(e)?;
        // Kept allocated, so the chunk stays mapped; then one untimed batch.
        let keep = pool.alloc(size).map_err(e)?;
        for i in 0..=samples {
            let t = Instant::now();
            for _ in 0..POOL_BATCH {
                let a = pool.alloc(size).map_err(e)?;
                pool.free(a).map_err(e)?;
            }
            if i > 0 {
                self.rec.add_batch(
                    key(Section::Library, POOL_PAIR, Process::Bench, Some(size)),
                    POOL_BATCH,
                    t.elapsed(),
                );
            }
        }
        pool.free(keep).map_err(e)?;
        pool.close().map_err(e)?;

        let block = 256 << 10;
        let kv =
            KvPool::new(rt, self.device, KvConfig { block_bytes: block, pool: config, share: ShareConfig::default() })
                .map_err(e)?;
        let keep = kv.alloc().map_err(e)?;
        for i in 0..=samples {
            let t = Instant::now();
            for _ in 0..KV_BATCH {
                let b = kv.alloc().map_err(e)?;
                kv.free(b).map_err(e)?;
            }
            if i > 0 {
                self.rec.add_batch(key(Section::Library, KV_PAIR, Process::Bench, Some(block)), KV_BATCH, t.elapsed());
            }
        }
        kv.free(keep).map_err(e)?;
        kv.close().map_err(e)?;
        let path = key(Section::Library, VMM_PATH, Process::Bench, Some(2 * MIB));
        self.rec.compare(key(Section::Library, POOL_PAIR, Process::Bench, Some(size)), path);
        self.rec.compare(key(Section::Library, KV_PAIR, Process::Bench, Some(block)), path);
        Ok(())
    }

    /// The pool's growth by one chunk and its trim, at 2 and 20 MiB.
    fn growth(&mut self) -> Result<(), String> {
        for size in [2 * MIB, 20 * MIB] {
            let config = PoolConfig { chunk_bytes: size, reserve_bytes: 4 * size, ..PoolConfig::default() };
            let pool = Pool::new(self.rt, self.device, config).map_err(e)?;
            let figure = key(Section::Library, POOL_GROW, Process::Bench, Some(size));
            for i in 0..=reps(size, self.quick) {
                let t = Instant::now();
                let a = pool.alloc(size).map_err(e)?;
                pool.free(a).map_err(e)?;
                let trimmed = pool.trim().map_err(e)?;
                if i > 0 {
                    self.rec.add(figure, t.elapsed());
                }
                if trimmed != 1 {
                    return Err(format!("a pool of {} chunks trimmed {trimmed} chunks, not one", bytes(size)));
                }
            }
            pool.close().map_err(e)?;
            self.rec.compare(figure, key(Section::Library, BARE_GROW, Process::Bench, Some(size)));
        }
        Ok(())
    }

    /// The peer attaches mirrors of two shared pools of 8 chunks (one validating pids, one not), and maps
    /// the unvalidated one's chunks with bare calls.
    fn mirror(&mut self) -> Result<(), String> {
        let rt = self.rt;
        let chunk = 2 * MIB;
        let size = MIRROR_CHUNKS * chunk;
        let config = PoolConfig { chunk_bytes: chunk, reserve_bytes: size + 2 * chunk, ..PoolConfig::default() };
        let open = Pool::new(rt, self.device, config.clone()).map_err(e)?;
        let checked = Pool::new(rt, self.device, config).map_err(e)?;
        let a = open.alloc(size).map_err(e)?;
        let b = checked.alloc(size).map_err(e)?;
        for p in [&open, &checked] {
            let chunks = p.stats().chunks;
            if u64::from(chunks) != MIRROR_CHUNKS {
                return Err(format!(
                    "{} in a pool of 2 MiB chunks took {chunks} chunks, not {MIRROR_CHUNKS}",
                    bytes(size)
                ));
            }
        }
        let open_desc = open.share(ShareConfig { validate_pids: false, ..ShareConfig::default() }).map_err(e)?;
        let checked_desc = checked.share(ShareConfig::default()).map_err(e)?;
        let n = (count(self.quick) / 10).max(3) as usize;
        let k = |name| key(Section::Library, name, Process::Peer, Some(size));
        for (name, cmd) in [
            (MIRROR, format!("mirror {n} {open_desc}")),
            (MIRROR_CHECKED, format!("mirror {n} {checked_desc}")),
            (BARE_ATTACH, format!("bare-attach {n} {chunk} {open_desc}")),
        ] {
            for d in self.peer.times(&cmd, n)? {
                self.rec.add(k(name), d);
            }
        }
        self.rec.compare(k(MIRROR), k(BARE_ATTACH));
        self.rec.compare(k(MIRROR_CHECKED), k(BARE_ATTACH));
        open.free(a).map_err(e)?;
        checked.free(b).map_err(e)?;
        open.close().map_err(e)?;
        checked.close().map_err(e)?;
        Ok(())
    }
}

const POOL_PAIR: &str = "Pool alloc + free";
const KV_PAIR: &str = "KvPool alloc + free";
const VMM_PATH: &str = "bare VMM allocation (6 calls)";
const POOL_GROW: &str = "Pool grow + trim, one chunk";
const BARE_GROW: &str = "bare grow + trim (4 calls)";
const MIRROR: &str = "Mirror attach + close, 8 chunks";
const MIRROR_CHECKED: &str = "Mirror attach + close, 8 chunks, pid-validated";
const BARE_ATTACH: &str = "bare attach + detach, 8 chunks";
/// The library's figures in the order the report lists them: each before its baseline.
const LIBRARY_ORDER: [&str; 8] =
    [POOL_PAIR, KV_PAIR, VMM_PATH, POOL_GROW, BARE_GROW, MIRROR, MIRROR_CHECKED, BARE_ATTACH];
const NOTIFY_ROUND_TRIP: &str = "IPC notify round trip";
const PIPE_ROUND_TRIP: &str = "pipe round trip";

// ---- the report ----

/// What a report says of its run (this one's and `--scaling`'s): its first fields in the JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Run {
    /// The version of aclshm that measured.
    pub(crate) aclshm: &'static str,
    /// When (UTC, ISO 8601).
    pub(crate) date: String,
    /// `--quick`: too few repetitions to publish (with `--scaling`: the small end of each curve).
    pub(crate) quick: bool,
    /// Seconds the whole run took.
    pub(crate) elapsed_s: f64,
    pub(crate) machine: Machine,
    pub(crate) runtime: RuntimeJson,
    /// What was left out, and why: a size the device cannot hold, a call the runtime lacks (an older
    /// CANN), a pool too large for the device.
    pub(crate) skipped: Vec<String>,
}

impl Run {
    /// The run that began at `started` on `date`, now over.
    pub(crate) fn ended(
        date: String,
        quick: bool,
        started: Instant,
        runtime: RuntimeJson,
        skipped: Vec<String>,
    ) -> Run {
        let elapsed_s = started.elapsed().as_secs_f64();
        Run { aclshm: env!("CARGO_PKG_VERSION"), date, quick, elapsed_s, machine: machine(), runtime, skipped }
    }

    /// Where and how the run measured, for people ([`describe`]), `mode` saying what ran; then what was
    /// left out.
    pub(crate) fn lines(&self, mode: &str) -> Vec<(&'static str, String)> {
        let run = format!("aclshm {}, {mode}, {:.1} s", self.aclshm, self.elapsed_s);
        let mut lines = describe(&self.runtime, &self.machine, &self.date, run);
        if !self.skipped.is_empty() {
            lines.push(("left out", self.skipped.join("; ")));
        }
        lines
    }
}

/// The report, as `--json` prints it and `--out` writes it.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    run: Run,
    /// Every ACL function timed.
    calls: Vec<&'static str>,
    sections: Vec<SectionJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// The CPU model, from /proc/cpuinfo.
    pub(crate) cpu: String,
    /// CPUs this process may run on.
    pub(crate) cores: usize,
    pub(crate) arch: &'static str,
    /// The kernel's release.
    pub(crate) kernel: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RuntimeJson {
    /// `simulator`, `cann` or `custom`.
    pub(crate) kind: &'static str,
    /// Where the entry points come from.
    pub(crate) backend: String,
    /// The ACL version it reports.
    pub(crate) version: Option<String>,
    /// The simulator's own version, if it is one.
    pub(crate) simulator_version: Option<String>,
    /// The simulator's directory and its file system: its device memory is files there, so what the
    /// allocations cost is the file system's (a tmpfs commits and clears the memory; a disk file system
    /// only reserves blocks).
    pub(crate) simulator_dir: Option<String>,
    pub(crate) simulator_fs: Option<String>,
    /// `eager` (device memory committed when allocated) or `lazy` (when first written), from
    /// `ACLSHM_SIM_COMMIT`.
    pub(crate) simulator_commit: Option<&'static str>,
    pub(crate) device: i32,
    pub(crate) peer_device: i32,
    pub(crate) device_memory_bytes: u64,
    pub(crate) granularity_bytes: u64,
}

#[derive(Debug, Serialize)]
struct SectionJson {
    id: Section,
    title: &'static str,
    about: &'static str,
    measurements: Vec<Row>,
}

/// One series: microseconds per call (per operation for batches).
#[derive(Debug, Serialize)]
struct Row {
    /// The ACL function, or what the library does.
    name: &'static str,
    process: Process,
    /// The size, where one applies.
    bytes: Option<u64>,
    /// Samples timed.
    count: usize,
    /// Operations per sample.
    batch: u32,
    median_us: f64,
    p10_us: f64,
    p90_us: f64,
    min_us: f64,
    max_us: f64,
    /// The series this one is compared with, and the ratio of the medians (this one's over that one's).
    compared_with: Option<String>,
    ratio: Option<f64>,
}

/// How a row names the series it is compared with: the size too where it differs from the row's.
fn label(k: &Key, row: &Key) -> String {
    match k.bytes {
        Some(b) if k.bytes != row.bytes => format!("{}, {}", k.name, bytes(b)),
        _ => k.name.to_string(),
    }
}

fn rows(rec: &Recorder, section: Section) -> Vec<Row> {
    let median = |k: &Key| {
        rec.series.iter().find(|s| s.key == *k).map(|s| {
            let mut v = s.us.clone();
            v.sort_by(f64::total_cmp);
            quantile(&v, 0.5)
        })
    };
    let mut series: Vec<&Series> = rec.series.iter().filter(|s| s.key.section == section).collect();
    // Each figure before its baseline; then call by call, in the order they were first made; sizes ascending.
    let rank = |s: &Series| {
        LIBRARY_ORDER.iter().position(|&n| n == s.key.name).unwrap_or_else(|| {
            let same =
                |t: &&Series| t.key.section == section && t.key.name == s.key.name && t.key.process == s.key.process;
            LIBRARY_ORDER.len() + rec.series.iter().position(|t| same(&t)).unwrap_or(0)
        })
    };
    series.sort_by_key(|s| (rank(s), s.key.bytes));
    series
        .into_iter()
        .map(|s| {
            let mut v = s.us.clone();
            v.sort_by(f64::total_cmp);
            let compared = rec.compared.iter().find(|(f, _)| *f == s.key).map(|(_, b)| b);
            let med = quantile(&v, 0.5);
            let ratio = compared.and_then(median).filter(|&b| b > 0.0).map(|b| med / b);
            Row {
                name: s.key.name,
                process: s.key.process,
                bytes: s.key.bytes,
                count: v.len(),
                batch: s.batch,
                median_us: med,
                p10_us: quantile(&v, 0.1),
                p90_us: quantile(&v, 0.9),
                min_us: v.first().copied().unwrap_or(0.0),
                max_us: v.last().copied().unwrap_or(0.0),
                compared_with: compared.map(|b| label(b, &s.key)),
                ratio,
            }
        })
        .collect()
}

/// Microseconds (or any figure) with three significant digits (more before the point).
pub(crate) fn us(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

/// A ratio with two significant digits.
pub(crate) fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0} ×")
    } else if r >= 1.0 || r <= 0.0 {
        format!("{r:.2} ×")
    } else {
        let decimals = (-r.log10()).ceil() as usize + 1;
        format!("{r:.decimals$} ×")
    }
}

/// The cells of one row, for both the Markdown and the terminal.
fn cells(r: &Row, with_ratio: bool) -> Vec<String> {
    let mut c = vec![
        r.name.to_string(),
        r.process.name().to_string(),
        r.bytes.map_or("-".to_string(), bytes),
        if r.batch > 1 { format!("{}×{}", r.count, r.batch) } else { r.count.to_string() },
        us(r.median_us),
        us(r.p10_us),
        us(r.p90_us),
        us(r.max_us),
    ];
    if with_ratio {
        c.push(match (&r.compared_with, r.ratio) {
            (Some(b), Some(x)) => format!("{} {b}", ratio(x)),
            _ => String::new(),
        });
    }
    c
}

const HEADER: [&str; 8] = ["call", "process", "size", "count", "median µs", "p10 µs", "p90 µs", "max µs"];

fn header(section: &SectionJson) -> (Vec<&'static str>, bool) {
    let with_ratio = section.measurements.iter().any(|r| r.ratio.is_some());
    let mut h = HEADER.to_vec();
    if section.id == Section::Library || section.id == Section::RoundTrip {
        h[0] = "figure";
    }
    if with_ratio {
        h.push("compared with");
    }
    (h, with_ratio)
}

fn summary(r: &Report) -> Vec<(&'static str, String)> {
    r.run.lines(if r.run.quick { "--quick (too few repetitions to publish)" } else { "full" })
}

/// Where a run measured, for people: the runtime, the device, the machine, the date, and `run` (what ran).
fn describe(rt: &RuntimeJson, m: &Machine, date: &str, run: String) -> Vec<(&'static str, String)> {
    let version = match (&rt.version, &rt.simulator_version) {
        (Some(v), Some(s)) => format!("ACL {v} (as the simulator, aclshm-sim {s}, reports it)"),
        (Some(v), None) => format!("ACL {v}"),
        (None, _) => "unknown".to_string(),
    };
    let kernel = m.kernel.as_deref().map_or(String::new(), |k| format!(", Linux {k}"));
    let mut lines = vec![("backend", rt.backend.clone()), ("runtime version", version)];
    if let Some(dir) = &rt.simulator_dir {
        lines.push((
            "simulator",
            format!(
                "directory {dir} ({}); device memory committed {} (ACLSHM_SIM_COMMIT)",
                rt.simulator_fs.as_deref().unwrap_or("file system unknown"),
                if rt.simulator_commit == Some("lazy") { "when first written" } else { "when allocated" }
            ),
        ));
    }
    lines.extend([
        (
            "device",
            format!(
                "{} ({} of memory, granularity {}); the peer process on device {}",
                rt.device,
                bytes(rt.device_memory_bytes),
                bytes(rt.granularity_bytes),
                rt.peer_device
            ),
        ),
        ("machine", format!("{}, {} cores, {}{kernel}", m.cpu, m.cores, m.arch)),
        ("date", date.to_string()),
        ("run", run),
    ]);
    lines
}

const PROCESSES: &str = "`bench` is the `aclshm bench` process; `peer` is a child process of the same program that \
imports what `bench` exports (the runtime refuses export and import in one process). Times are microseconds per \
call, from `std::time::Instant` around the call alone; `count` is the calls timed, or samples × operations per \
sample where one operation is too quick to time alone.";

/// The report in Markdown: what was measured where, then one table per section.
fn markdown(r: &Report) -> String {
    let mut md = String::from("# `aclshm bench`\n\n| | |\n|---|---|\n");
    for (k, v) in summary(r) {
        md += &format!("| {k} | {v} |\n");
    }
    md += &format!(
        "\n{PROCESSES}\n\nCalls measured: {}.\n",
        r.calls.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    );
    for s in &r.sections {
        let (h, with_ratio) = header(s);
        md += &format!("\n## {}\n\n{}\n\n| {} |\n", s.title, s.about, h.join(" | "));
        md += &format!(
            "|{}|\n",
            h.iter()
                .enumerate()
                .map(|(i, _)| if (3..8).contains(&i) { "--:" } else { "---" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for row in &s.measurements {
            let mut c = cells(row, with_ratio);
            if row.name.starts_with("acl") {
                c[0] = format!("`{}`", c[0]);
            }
            md += &format!("| {} |\n", c.join(" | "));
        }
    }
    md
}

fn print(r: &Report) -> out::Result {
    for (k, v) in summary(r) {
        outln!("{:<16} {v}", format!("{k}:"));
    }
    outln!("processes:       bench (this one) exports; peer (its child) imports. Microseconds per call.");
    for s in &r.sections {
        let (h, with_ratio) = header(s);
        let mut t = Table::new(&h);
        for row in &s.measurements {
            t.row(cells(row, with_ratio));
        }
        outln!();
        outln!("{}", s.title);
        outln!("{}", t.render());
    }
    Ok(())
}

// ---- the machine ----

/// The CPU's model from /proc/cpuinfo: `model name` (x86), else the implementer and part (Arm, where
/// Kunpeng hosts say no more).
fn cpu_model(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    if let Some(m) = field("model name").filter(|m| !m.is_empty()) {
        return m;
    }
    match (field("CPU implementer"), field("CPU part")) {
        (Some(i), Some(p)) if i == "0x48" && p == "0xd01" => "HiSilicon Kunpeng 920".to_string(),
        (Some(i), Some(p)) => format!("CPU implementer {i}, part {p}"),
        _ => "unknown".to_string(),
    }
}

/// The type of the file system `path` lies on, from a mounts table (/proc/self/mounts): the longest mount
/// point above it, the last mounted if several.
fn fs_type(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, point, kind) = (w.next()?, w.next()?, w.next()?);
            path.starts_with(point).then_some((point.len(), kind))
        })
        .fold(None, |best: Option<(usize, &str)>, m| if best.is_some_and(|b| b.0 > m.0) { best } else { Some(m) })
        .map(|(_, kind)| kind.to_string())
}

pub(crate) fn machine() -> Machine {
    Machine {
        cpu: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        arch: std::env::consts::ARCH,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
    }
}

/// The civil date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `secs` after the epoch, in ISO 8601 (UTC).
fn iso8601(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

// ---- the command ----

/// `aclshm bench`. A failure is one line on stderr (and status 1), after everything was released.
/// (`--scaling` is `scaling::run`, which builds on this module; `main` chooses.)
pub fn run(rt: &Runtime, args: &BenchArgs) -> out::Result {
    deliver(args, measure(rt, args), write_files, print, |dir, _| {
        format!("wrote {} and {}", dir.join("bench.json").display(), dir.join("bench.md").display())
    })
}

/// How both reports (this one and `--scaling`'s) end: the files under `--out`, then the JSON or the
/// printed report and a line naming the files (`wrote`). A failure to measure or to write is one line on
/// stderr (and status 1).
pub(crate) fn deliver<R: Serialize>(
    args: &BenchArgs,
    measured: Result<R, String>,
    write_files: impl FnOnce(&Path, &R) -> Result<(), String>,
    print: impl FnOnce(&R) -> out::Result,
    wrote: impl FnOnce(&Path, &R) -> String,
) -> out::Result {
    let failed = |msg: String| {
        errln!("aclshm bench: {msg}");
        Err(out::Failure::Reported)
    };
    let report = match measured {
        Ok(r) => r,
        Err(msg) => return failed(msg),
    };
    if let Some(dir) = &args.out
        && let Err(msg) = write_files(dir, &report)
    {
        return failed(msg);
    }
    if args.json {
        out::print(&format!("{}\n", serde_json::to_string_pretty(&report).expect("plain data serialises")))?;
    } else {
        print(&report)?;
        if let Some(dir) = &args.out {
            outln!();
            outln!("{}", wrote(dir, &report));
        }
    }
    Ok(())
}

fn write_files(dir: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let json = format!("{}\n", serde_json::to_string_pretty(report).expect("plain data serialises"));
    for (name, text) in [("bench.json", json), ("bench.md", markdown(report))] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Now, in ISO 8601 (UTC).
pub(crate) fn now() -> String {
    iso8601(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// The device the peer imports on, once both devices are checked against the runtime's count.
pub(crate) fn check_devices(rt: &Runtime, args: &BenchArgs) -> Result<i32, String> {
    let count = raw::get_device_count(rt).map_err(e)?;
    let peer_device = args.peer_device.unwrap_or(args.device);
    for (opt, d) in [("--device", args.device), ("--peer-device", peer_device)] {
        if d < 0 || d as u32 >= count {
            return Err(format!("{opt} {d}: the runtime has {count} device(s)"));
        }
    }
    Ok(peer_device)
}

/// A progress bar on stderr if it is a terminal, else one that draws nothing.
pub(crate) fn progress_bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    }
}

/// What the report says of the runtime: `info` gathered from `rt`, the devices checked.
pub(crate) fn runtime_json(
    rt: &Runtime,
    info: &RuntimeInfo,
    device: i32,
    peer_device: i32,
) -> Result<RuntimeJson, String> {
    let dev = info.devices.iter().find(|d| d.id == device).ok_or("the device is not in the runtime's list")?;
    let kind = match rt.backend() {
        _ if rt.is_simulator() => "simulator",
        Backend::Library { .. } => "cann",
        _ => "custom",
    };
    Ok(RuntimeJson {
        kind,
        backend: rt.backend().to_string(),
        version: info.version.map(|(a, c, d)| format!("{a}.{c}.{d}")),
        simulator_version: info.simulator.as_ref().map(|s| s.version.clone()),
        simulator_dir: info.simulator.as_ref().map(|s| s.dir.display().to_string()),
        simulator_fs: info
            .simulator
            .as_ref()
            .and_then(|s| fs_type(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(), &s.dir)),
        simulator_commit: info.simulator.as_ref().map(|_| {
            let lazy = std::env::var("ACLSHM_SIM_COMMIT").is_ok_and(|v| v.trim() == "lazy");
            if lazy { "lazy" } else { "eager" }
        }),
        device,
        peer_device,
        device_memory_bytes: dev.total_bytes as u64,
        granularity_bytes: dev.granularity as u64,
    })
}

fn measure(rt: &Runtime, args: &BenchArgs) -> Result<Report, String> {
    let started = Instant::now();
    let date = now();
    let peer_device = check_devices(rt, args)?;
    let info = RuntimeInfo::gather(rt).map_err(e)?;
    let runtime = runtime_json(rt, &info, args.device, peer_device)?;
    raw::set_device(rt, args.device).map_err(e)?;
    // Room for a size twice over (IPC memory pads allocations), and the library's pools.
    let (free, _) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM).map_err(e)?;
    let (sizes, too_large): (Vec<u64>, Vec<u64>) =
        SIZES.into_iter().partition(|&s| s.saturating_mul(2).saturating_add(64 * MIB) <= free as u64);
    let mut skipped: Vec<String> =
        too_large.iter().map(|&s| format!("{}: more than device {} has free", bytes(s), args.device)).collect();

    let bar = progress_bar();
    let timeout = Duration::from_secs(args.timeout);
    bar.set_message("starting the peer");
    let peer = Peer::spawn(rt, peer_device, timeout)?;
    let tgid = raw::device_get_bare_tgid(rt).map_err(e)?;
    let mut b =
        Bench { rt, device: args.device, quick: args.quick, timeout, tgid, peer, rec: Recorder::default(), bar };
    let result = measure_all(&mut b, &sizes, &info.missing, &mut skipped).and_then(|()| b.peer.finish());
    b.bar.finish_and_clear();
    result?;

    let mut calls: Vec<&'static str> =
        b.rec.series.iter().map(|s| s.key.name).filter(|n| n.starts_with("acl")).collect();
    calls.sort_unstable();
    calls.dedup();
    let sections = Section::ALL
        .iter()
        .map(|&s| SectionJson { id: s, title: s.title(), about: s.about(), measurements: rows(&b.rec, s) })
        .collect();
    Ok(Report { run: Run::ended(date, args.quick, started, runtime, skipped), calls, sections })
}

/// One step of the run (what the progress bar shows, and what an error names).
#[derive(Clone, Copy)]
enum Step {
    Vmm(u64),
    Sharing(u64),
    IpcMemory(u64),
    Notify,
    RoundTrip,
    Pools,
    Growth,
    Mirror,
}

impl Step {
    fn label(self) -> String {
        match self {
            Step::Vmm(size) => format!("VMM, {}", bytes(size)),
            Step::Sharing(size) => format!("sharing, {}", bytes(size)),
            Step::IpcMemory(size) => format!("IPC memory, {}", bytes(size)),
            Step::Notify => "notify".into(),
            Step::RoundTrip => "round trip".into(),
            Step::Pools => "pools".into(),
            Step::Growth => "growth".into(),
            Step::Mirror => "mirror".into(),
        }
    }

    /// The ACL functions it calls (besides those every step does: setting the device, creating streams).
    fn needs(self) -> &'static [&'static str] {
        const VMM: &[&str] = &[
            "aclrtReserveMemAddress",
            "aclrtMallocPhysical",
            "aclrtMapMem",
            "aclrtUnmapMem",
            "aclrtFreePhysical",
            "aclrtReleaseMemAddress",
        ];
        const SHARING: &[&str] = &[
            "aclrtMallocPhysical",
            "aclrtFreePhysical",
            "aclrtMemExportToShareableHandle",
            "aclrtMemSetPidToShareableHandle",
            "aclrtMemImportFromShareableHandle",
            "aclrtDeviceGetBareTgid",
        ];
        const IPC_MEMORY: &[&str] = &[
            "aclrtMalloc",
            "aclrtFree",
            "aclrtIpcMemGetExportKey",
            "aclrtIpcMemSetImportPid",
            "aclrtIpcMemImportByKey",
            "aclrtIpcMemClose",
        ];
        const NOTIFY: &[&str] = &[
            "aclrtCreateNotify",
            "aclrtDestroyNotify",
            "aclrtNotifyGetExportKey",
            "aclrtNotifySetImportPid",
            "aclrtNotifyImportByKey",
            "aclrtRecordNotify",
            "aclrtWaitAndResetNotify",
        ];
        match self {
            Step::Vmm(_) | Step::Pools | Step::Growth => VMM,
            Step::Sharing(_) | Step::Mirror => SHARING,
            Step::IpcMemory(_) => IPC_MEMORY,
            Step::Notify | Step::RoundTrip => NOTIFY,
        }
    }

    fn run(self, b: &mut Bench<'_>) -> Result<(), String> {
        match self {
            Step::Vmm(size) => b.vmm(size),
            Step::Sharing(size) => b.sharing(size),
            Step::IpcMemory(size) => b.ipc_memory(size),
            Step::Notify => b.notify(),
            Step::RoundTrip => b.round_trip(),
            Step::Pools => b.pools(),
            Step::Growth => b.growth(),
            Step::Mirror => b.mirror(),
        }
    }
}

/// Run every step; one whose calls the runtime lacks (`missing`) is left out, and said so in `skipped`.
fn measure_all(b: &mut Bench<'_>, sizes: &[u64], missing: &[&str], skipped: &mut Vec<String>) -> Result<(), String> {
    let mut steps: Vec<Step> = Vec::new();
    for each in [Step::Vmm, Step::Sharing, Step::IpcMemory] {
        steps.extend(sizes.iter().map(|&size| each(size)));
    }
    steps.extend([Step::Notify, Step::RoundTrip, Step::Pools, Step::Growth, Step::Mirror]);
    b.bar.set_length(steps.len() as u64);
    for step in steps {
        b.bar.set_message(step.label());
        let lacks: Vec<&str> = step.needs().iter().copied().filter(|c| missing.contains(c)).collect();
        if lacks.is_empty() {
            step.run(b).map_err(|e| format!("{}: {e}", step.label()))?;
        } else {
            skipped.push(format!("{}: the runtime lacks {}", step.label(), lacks.join(", ")));
        }
        b.bar.inc(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_samples() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.1) - 1.3).abs() < 1e-9);
        assert_eq!(quantile(&[7.0], 0.9), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn dates_are_iso_8601_in_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(19_723 * 86_400 + 3_661), "2024-01-01T01:01:01Z");
        assert_eq!(iso8601(19_782 * 86_400), "2024-02-29T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn the_cpu_is_named_on_x86_and_on_kunpeng() {
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"), "AMD EPYC 7B13");
        let kunpeng = "processor\t: 0\nBogoMIPS\t: 200.00\nCPU implementer\t: 0x48\nCPU part\t: 0xd01\n";
        assert_eq!(cpu_model(kunpeng), "HiSilicon Kunpeng 920");
        assert_eq!(cpu_model("CPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"), "CPU implementer 0x41, part 0xd0c");
        assert_eq!(cpu_model(""), "unknown");
    }

    #[test]
    fn the_file_system_is_the_longest_mount_point_above_the_path() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(fs_type(mounts, Path::new("/dev/shm/aclshm-0")).as_deref(), Some("tmpfs"));
        assert_eq!(fs_type(mounts, Path::new("/tmp/sim")).as_deref(), Some("ext4"));
        assert_eq!(fs_type(mounts, Path::new("/dev/shmx")).as_deref(), Some("ext4"));
        let over = format!("{mounts}overlay /dev/shm overlay rw 0 0\n");
        assert_eq!(fs_type(&over, Path::new("/dev/shm/x")).as_deref(), Some("overlay"));
        assert_eq!(fs_type("", Path::new("/x")), None);
    }

    #[test]
    fn figures_read_with_three_significant_digits() {
        assert_eq!(us(0.07374), "0.074");
        assert_eq!(us(4.5678), "4.57");
        assert_eq!(us(45.678), "45.7");
        assert_eq!(us(456.78), "457");
        assert_eq!(us(45_678.4), "45678");
        assert_eq!(ratio(1.8234), "1.82 ×");
        assert_eq!(ratio(0.000_684), "0.00068 ×");
        assert_eq!(ratio(0.25), "0.25 ×");
        assert_eq!(ratio(1440.2), "1440 ×");
    }

    #[test]
    fn the_calls_each_step_needs_are_entry_points_the_runtime_table_knows() {
        let steps = [
            Step::Vmm(MIB),
            Step::Sharing(MIB),
            Step::IpcMemory(MIB),
            Step::Notify,
            Step::RoundTrip,
            Step::Pools,
            Step::Growth,
            Step::Mirror,
        ];
        for step in steps {
            for call in step.needs() {
                assert!(aclshm::sys::ENTRY_POINTS.iter().any(|p| p.name == *call), "{}: {call}", step.label());
            }
        }
    }

    #[test]
    fn repetitions_shrink_with_size_and_under_quick() {
        for quick in [false, true] {
            let r: Vec<u32> = SIZES.iter().map(|&s| reps(s, quick)).collect();
            assert!(r.windows(2).all(|w| w[0] > w[1]), "{r:?}");
            assert!(r.iter().all(|&n| n >= 1));
        }
        assert!(SIZES.iter().all(|&s| reps(s, true) < reps(s, false)));
    }
}
