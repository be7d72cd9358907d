//! `aclshm demo`: a scheduler and N worker processes sharing one pool of KV-cache blocks.
//!
//! ```text
//!   scheduler (this process, device 0)                 worker i (a child process, device i mod D)
//!   KvPool + one IPC notify per worker
//!   attach   spawn; whitelist the worker on its notify ──> KvMirror::attach (the rendezvous
//!                                                          whitelists it on every chunk), import notify
//!   write    alloc_many; "write <blocks>" ───────────────> write a pattern into each block; signal
//!   verify   "verify <the next worker's blocks>" ────────> pin them; "pinned"
//!            free every block (kept: they are pinned)
//!            "go" ───────────────────────────────────────> check every byte; unpin; signal
//!            wait until no block is kept for pins
//!   release  trim the pool; "release" ───────────────────> wait until the mirror let every chunk go
//!   finish   "stats", "bye" ─────────────────────────────> report counters, detach, exit
//! ```
//!
//! Lines on the workers' stdin and stdout carry the block lists and the reports; the notifies carry the
//! completion signals. Every wait has a timeout. Any byte that does not verify, or any worker that fails,
//! makes the command fail. The options are checked against the device before anything starts: the
//! blocks must fit in device 0's memory, in whole chunks.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdin, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use aclshm::{KvBlock, KvConfig, KvDesc, KvMirror, KvPool, Notify, PoolConfig, Runtime, ShareConfig, raw};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::out::{self, errln, outln};
use crate::report::{Table, bytes, duration};

/// Options of `aclshm demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64), allow_negative_numbers = true)]
    pub workers: u32,
    /// KV blocks in all, shared out evenly between the workers (they must fit in device 0's memory).
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    pub blocks: u32,
    /// Bytes per block (a multiple of 512; K, M and G suffixes are binary).
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    pub block_size: u64,
    /// Bytes per pool chunk (a multiple of 2 MiB).
    #[arg(long, default_value = "2M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// Devices to spread the workers over (default: every device).
    #[arg(long, allow_negative_numbers = true)]
    pub devices: Option<u32>,
    /// Seconds any one step may take before the demo gives up (1 to 86400).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Print the summary as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// After the writes, put the shared KV pool to sleep while the workers are attached (its device
    /// memory goes back; the blocks' contents are kept in host memory), show the memory freed, check the
    /// workers see their blocks asleep, wake it, and verify every byte after the wake.
    #[arg(long)]
    pub sleep: bool,
    /// For tests of the demo itself: worker 0 spoils one byte after writing, so verification must fail.
    #[arg(long, hide = true)]
    pub spoil_one_byte: bool,
}

/// A size with an optional binary suffix, not zero.
pub fn parse_size(s: &str) -> Result<u64, String> {
    match aclshm::parse_bytes(s) {
        Ok(0) => Err(format!("{s:?}: a size cannot be zero")),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

// ---- the worker ----

/// Options of the hidden `aclshm demo-worker`, which the scheduler starts.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    index: u32,
    #[arg(long)]
    device: i32,
    #[arg(long)]
    kv: String,
    #[arg(long)]
    spoil_one_byte: bool,
}

/// The pattern of a block: 64-bit words of a mix of its id, generation and position, so a block written
/// for one allocation never verifies for another.
fn pattern(b: &KvBlock, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    let seed = (u64::from(b.id()) << 32) | u64::from(b.generation());
    for i in 0..len.div_ceil(8) as u64 {
        let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(x ^ (x >> 31)).to_le_bytes());
    }
    out.truncate(len);
}

/// The first byte of block `b`'s pattern.
fn buf_first_byte(b: &KvBlock, len: usize) -> u8 {
    let mut v = Vec::new();
    pattern(b, len.min(8), &mut v);
    v[0]
}

fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    // The scheduler reads these; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{}", msg.as_ref()).and_then(|()| out.flush());
}

fn blocks_of(words: &str) -> Result<Vec<KvBlock>, String> {
    words.split_whitespace().map(|w| w.parse().map_err(|e: aclshm::Error| e.to_string())).collect()
}

/// Copy `len` bytes between the host and a device block.
///
/// # Safety
/// 1. One side is a host buffer of at least `len` bytes, the other a device block of at least `len` bytes
///    mapped in this process; `to_device` says which is the destination.
unsafe fn copy(
    rt: &Runtime,
    dst: *mut std::ffi::c_void,
    src: *const std::ffi::c_void,
    len: usize,
    to_device: bool,
) -> aclshm::Result<()> {
    let kind = if to_device {
        aclshm::sys::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE
    } else {
        aclshm::sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST
    };
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe { raw::memcpy(rt, dst, len, src, len, kind) }
}

fn worker_run(args: &WorkerArgs) -> Result<(), String> {
    let e = |e: aclshm::Error| e.to_string();
    let rt = Runtime::from_env().map_err(e)?;
    raw::set_device(&rt, args.device).map_err(e)?;
    say(format!("tgid {}", raw::device_get_bare_tgid(&rt).map_err(e)?));
    let mut lines = std::io::stdin().lock().lines();
    let mut next = move || -> Result<String, String> {
        match lines.next() {
            Some(Ok(l)) => Ok(l),
            _ => Err("the scheduler went away".to_string()),
        }
    };
    let key = next()?.strip_prefix("notify ").ok_or("expected the notify's key")?.parse().map_err(e)?;
    let desc: KvDesc = args.kv.parse().map_err(e)?;
    let kv = KvMirror::attach(&rt, &desc, args.device).map_err(e)?;
    let done = Notify::import(&rt, &key, args.device).map_err(e)?;
    let st = kv.stats();
    say(format!("ready {} {}", st.chunks, st.imports));
    let len = kv.block_bytes() as usize;
    let mut buf = Vec::new();
    let mut read = vec![0u8; len];
    loop {
        let line = next()?;
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "write" => {
                let blocks = blocks_of(rest)?;
                let ptrs = kv.ptrs(&blocks).map_err(e)?;
                for (i, (b, p)) in blocks.iter().zip(&ptrs).enumerate() {
                    pattern(b, len, &mut buf);
                    // SAFETY: `buf` holds `len` bytes; `p` is the block, `len` bytes, mapped by the mirror.
                    unsafe { copy(&rt, *p, buf.as_ptr().cast(), len, true) }.map_err(e)?;
                    if i % 8 == 7 {
                        say(format!("progress {}", 8 * len));
                    }
                }
                say(format!("progress {}", (blocks.len() % 8) * len));
                if args.spoil_one_byte
                    && let Some(p) = ptrs.first()
                {
                    let spoilt = [!buf_first_byte(&blocks[0], len)];
                    // SAFETY: one host byte into the first byte of a mapped block.
                    unsafe { copy(&rt, *p, spoilt.as_ptr().cast(), 1, true) }.map_err(e)?;
                }
                done.signal().map_err(e)?;
                say(format!("written {}", blocks.len() * len));
            }
            "verify" => {
                let blocks = blocks_of(rest)?;
                // Another worker's blocks: pinned, so the scheduler cannot reuse them while we read.
                let pinned = kv.pinned(&blocks).map_err(e)?;
                let ptrs = pinned.ptrs().to_vec();
                say("pinned");
                if next()? != "go" {
                    return Err("expected go".into());
                }
                let mut bad = 0usize;
                for (i, (b, p)) in blocks.iter().zip(&ptrs).enumerate() {
                    pattern(b, len, &mut buf);
                    // SAFETY: `read` holds `len` bytes; `p` is a pinned block of `len` bytes mapped by the mirror.
                    unsafe { copy(&rt, read.as_mut_ptr().cast(), *p, len, false) }.map_err(e)?;
                    bad += buf.iter().zip(&read).filter(|(x, y)| x != y).count();
                    if i % 8 == 7 {
                        say(format!("progress {}", 8 * len));
                    }
                }
                say(format!("progress {}", (blocks.len() % 8) * len));
                drop(pinned);
                done.signal().map_err(e)?;
                say(format!("verified {} {bad}", blocks.len() * len));
            }
            "asleep" => {
                // The scheduler put the pool to sleep: each of our blocks is out of reach, with a typed error.
                let blocks = blocks_of(rest)?;
                let asleep = blocks.iter().filter(|b| matches!(kv.ptr(b), Err(aclshm::Error::Asleep(_)))).count();
                say(format!("asleep {asleep} {}", blocks.len()));
            }
            "release" => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while kv.stats().chunks > 0 {
                    if Instant::now() > deadline {
                        return Err("the mirror still maps trimmed chunks after 60 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                say("released");
            }
            "stats" => {
                let st = kv.stats();
                let calls = |f: &str| rt.call_count(f).unwrap_or(0);
                let total: u64 = aclshm::sys::ENTRY_POINTS
                    .iter()
                    .filter(|p| p.group == aclshm::sys::Group::Acl)
                    .map(|p| calls(p.name))
                    .sum();
                say(format!(
                    "stats {} {} {} {}",
                    st.imports,
                    calls("aclrtMemImportFromShareableHandle"),
                    calls("aclrtMapMem"),
                    total
                ));
            }
            "bye" => {
                drop(done);
                kv.close().map_err(e)?;
                return Ok(());
            }
            other => return Err(format!("unknown command {other:?}")),
        }
    }
}

/// `aclshm demo-worker`.
pub fn worker(args: &WorkerArgs) -> ExitCode {
    match worker_run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            say(format!("error {msg}"));
            errln!("aclshm demo worker {}: {msg}", args.index);
            ExitCode::FAILURE
        }
    }
}

// ---- the scheduler ----

struct Worker {
    index: u32,
    device: i32,
    child: Child,
    stdin: ChildStdin,
    blocks: Vec<KvBlock>,
    report: WorkerReport,
}

/// What one worker did.
#[derive(Debug, Default, Serialize, Clone)]
struct WorkerReport {
    index: u32,
    device: i32,
    pid: u32,
    chunks_at_attach: u64,
    imports: u64,
    runtime_imports: u64,
    runtime_maps: u64,
    runtime_calls: u64,
    bytes_written: u64,
    bytes_verified: u64,
    bad_bytes: u64,
}

/// What the demo did.
#[derive(Debug, Default, Serialize)]
struct DemoReport {
    ok: bool,
    backend: String,
    devices: u32,
    workers: Vec<WorkerReport>,
    blocks: u32,
    block_bytes: u64,
    chunk_bytes: u64,
    chunks_grown: u64,
    chunks_trimmed: u64,
    exports: u64,
    whitelist_calls: u64,
    scheduler_runtime_calls: u64,
    deferred_while_pinned: u32,
    bytes_written: u64,
    bytes_verified: u64,
    bad_bytes: u64,
    phases: Vec<(String, f64)>,
    total_ms: f64,
    /// What `--sleep` did, if asked.
    sleep: Option<SleepSummary>,
    error: Option<String>,
}

/// What `--sleep` did.
#[derive(Debug, Default, Serialize, Clone)]
struct SleepSummary {
    /// Device 0's free memory before the sleep, while asleep, and after the wake.
    free_before: u64,
    free_asleep: u64,
    free_after: u64,
    /// What the pool gave back, and kept in host memory.
    released_bytes: u64,
    kept_bytes: u64,
    /// Chunks put to sleep.
    chunks: u32,
    /// Workers' blocks found asleep, of those they looked at.
    blocks_asleep: u64,
    blocks_checked: u64,
    sleep_ms: f64,
    wake_ms: f64,
}

/// Lines from the workers, tagged with the worker's index (None: its stdout closed).
type Events = Receiver<(u32, Option<String>)>;

struct Scheduler {
    args: DemoArgs,
    timeout: Duration,
    events: Events,
    tx: Sender<(u32, Option<String>)>,
    /// Lines that arrived while another worker's answer was awaited, by worker.
    pending: Vec<std::collections::VecDeque<Option<String>>>,
    workers: Vec<Worker>,
    bar: ProgressBar,
}

impl Scheduler {
    fn worker(&mut self, i: u32) -> &mut Worker {
        &mut self.workers[i as usize]
    }

    fn send(&mut self, i: u32, msg: &str) -> Result<(), String> {
        let w = self.worker(i);
        writeln!(w.stdin, "{msg}").and_then(|()| w.stdin.flush()).map_err(|e| format!("worker {i}: {e}"))
    }

    /// The next line from worker `i` starting with `word` (progress lines feed the bar on the way).
    fn expect(&mut self, i: u32, word: &str) -> Result<String, String> {
        let deadline = Instant::now() + self.timeout;
        let line = loop {
            if let Some(l) = self.pending[i as usize].pop_front() {
                break l;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (from, line) = match self.events.recv_timeout(left) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("worker {i}: no {word:?} within {:?}", self.timeout));
                }
                Err(RecvTimeoutError::Disconnected) => return Err("every worker went away".into()),
            };
            if let Some(n) = line.as_deref().and_then(|l| l.strip_prefix("progress ")) {
                self.bar.inc(n.parse().unwrap_or(0));
                continue;
            }
            if from == i {
                break line;
            }
            // Another worker's line, early: kept for when its turn comes.
            self.pending[from as usize].push_back(line);
        };
        let Some(line) = line else {
            return Err(format!("worker {i} exited before sending {word:?}"));
        };
        if let Some(rest) = line.strip_prefix("error ") {
            return Err(format!("worker {i}: {rest}"));
        }
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(format!("worker {i} sent {line:?}, expected {word:?}")),
        }
    }

    fn spawn(&mut self, index: u32, device: i32, desc: &KvDesc, rt: &Runtime) -> Result<(), String> {
        // The workers use the scheduler's runtime.
        let mut cmd = crate::child::this_program(rt)?;
        cmd.args(["demo-worker", "--index", &index.to_string(), "--device", &device.to_string(), "--kv"])
            .arg(desc.to_string())
            .args((self.args.spoil_one_byte && index == 0).then_some("--spoil-one-byte"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("start worker {index}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((index, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((index, None));
        });
        let report = WorkerReport { index, device, pid: child.id(), ..WorkerReport::default() };
        self.workers.push(Worker { index, device, child, stdin, blocks: Vec::new(), report });
        self.pending.push(std::collections::VecDeque::new());
        Ok(())
    }

    fn phase(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }
}

fn line(blocks: &[KvBlock]) -> String {
    blocks.iter().map(KvBlock::to_string).collect::<Vec<_>>().join(" ")
}

fn run(rt: &Runtime, args: &DemoArgs, report: &mut DemoReport) -> Result<(), String> {
    let e = |e: aclshm::Error| e.to_string();
    let started = Instant::now();
    let count = raw::get_device_count(rt).map_err(e)?;
    let devices = args.devices.unwrap_or(count);
    if devices == 0 || devices > count {
        return Err(format!("--devices {devices}: the runtime has {count}"));
    }
    if args.blocks < args.workers {
        return Err(format!("--blocks {}: at least one per worker ({})", args.blocks, args.workers));
    }
    let per_worker = (args.blocks / args.workers) as usize;
    report.backend = rt.backend().to_string();
    report.devices = devices;
    report.blocks = per_worker as u32 * args.workers;
    report.block_bytes = args.block_size;
    report.chunk_bytes = args.chunk_size;
    raw::set_device(rt, 0).map_err(e)?;
    let reserve_bytes = room(args, report.blocks, rt)?;
    let pool = PoolConfig { chunk_bytes: args.chunk_size, reserve_bytes, ..PoolConfig::default() };
    let kv = KvPool::new(rt, 0, KvConfig { block_bytes: args.block_size, pool, share: ShareConfig::default() })
        .map_err(e)?;
    // Written once and verified once; fits in 64 bits, as the blocks fit in the device (checked by `room`).
    let total_bytes = u64::from(report.blocks).saturating_mul(args.block_size).saturating_mul(2);
    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(total_bytes);
        b.set_style(
            ProgressStyle::with_template("{msg:>8} [{bar:40}] {binary_bytes}/{binary_total_bytes} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b
    };
    let (tx, events) = channel();
    let mut s = Scheduler {
        args: args.clone(),
        timeout: Duration::from_secs(args.timeout),
        events,
        tx,
        pending: Vec::new(),
        workers: Vec::new(),
        bar,
    };
    let result = drive(rt, &kv, &mut s, per_worker, report);
    s.bar.finish_and_clear();
    if result.is_err() {
        for w in &mut s.workers {
            let _ = w.child.kill();
        }
    }
    // Told to go (or killed): each has the timeout to exit, then it is killed.
    let deadline = Instant::now() + s.timeout;
    for w in &mut s.workers {
        if crate::child::wait_until(&mut w.child, deadline, Duration::from_millis(2)).is_none() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
    report.workers = s.workers.iter().map(|w| w.report.clone()).collect();
    let st = kv.pool().stats();
    let call = |f: &str| st.runtime_calls.iter().find(|(n, _)| *n == f).map_or(0, |c| c.1);
    report.chunks_grown = st.chunks_grown;
    report.chunks_trimmed = st.chunks_trimmed;
    report.exports = call("aclrtMemExportToShareableHandle");
    report.whitelist_calls = call("aclrtMemSetPidToShareableHandle");
    report.scheduler_runtime_calls = st.runtime_calls.iter().map(|c| c.1).sum();
    kv.close().map_err(e)?;
    report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    result
}

/// The address space the pool reserves for `blocks` blocks: room for every block twice over (blocks do
/// not span chunks), in whole chunks. Refuses sizes device 0 cannot hold, before anything starts.
fn room(args: &DemoArgs, blocks: u32, rt: &Runtime) -> Result<u64, String> {
    let (_, total) = raw::get_mem_info(rt, aclshm::sys::aclrtMemAttr::ACL_HBM_MEM).map_err(|e| e.to_string())?;
    let total = total as u64;
    let (chunk, block) = (args.chunk_size, args.block_size);
    if !chunk.is_multiple_of(2 << 20) {
        return Err(format!("--chunk-size {}: a chunk is a whole number of 2 MiB pages", bytes(chunk)));
    }
    if chunk > total {
        return Err(format!("--chunk-size {}: more than device 0's memory ({})", bytes(chunk), bytes(total)));
    }
    if block > chunk {
        // The pool says so too; said here with the options' names.
        return Err(format!(
            "--block-size {}: blocks do not fit chunks of {} (--chunk-size)",
            bytes(block),
            bytes(chunk)
        ));
    }
    let per_chunk = chunk / block;
    let chunks = u64::from(blocks).div_ceil(per_chunk);
    let needed = chunks.checked_mul(chunk).filter(|&n| n <= total).ok_or_else(|| {
        format!(
            "--blocks {} of {}: {chunks} chunk(s) of {}, more than device 0's memory ({})",
            args.blocks,
            bytes(block),
            bytes(chunk),
            bytes(total)
        )
    })?;
    // Twice the room the blocks need, and two chunks more: at most 2 * total + 2 * chunk, within 64 bits
    // for any device of less than 4 EiB; a larger simulated one still gets an error, not an overflow.
    needed.checked_mul(2).and_then(|n| n.checked_add(chunk.checked_mul(2)?)).ok_or_else(|| {
        format!("--blocks {} of {}: the address space to reserve overflows 64 bits", args.blocks, bytes(block))
    })
}

fn drive(
    rt: &Runtime,
    kv: &KvPool,
    s: &mut Scheduler,
    per_worker: usize,
    report: &mut DemoReport,
) -> Result<(), String> {
    let e = |e: aclshm::Error| e.to_string();
    let n = s.args.workers;
    let wait = Duration::from_secs(s.args.timeout);
    let mut timed = |name: &str, t: Instant| report.phases.push((name.to_string(), t.elapsed().as_secs_f64() * 1e3));

    // attach
    let t = Instant::now();
    s.phase("attach");
    let notifies: Vec<Notify> = (0..n).map(|_| Notify::new(rt, 0)).collect::<aclshm::Result<_>>().map_err(e)?;
    for i in 0..n {
        s.spawn(i, (i % report.devices) as i32, kv.desc(), rt)?;
    }
    for i in 0..n {
        let tgid: i32 = s.expect(i, "tgid")?.parse().map_err(|_| "a worker sent a bad tgid")?;
        let key = notifies[i as usize].export(true).map_err(e)?;
        notifies[i as usize].allow(tgid).map_err(e)?;
        s.send(i, &format!("notify {key}"))?;
    }
    for i in 0..n {
        let ready = s.expect(i, "ready")?;
        let mut it = ready.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        s.worker(i).report.chunks_at_attach = it.next().unwrap_or(0);
    }
    timed("attach", t);

    // write
    let t = Instant::now();
    s.phase("write");
    for i in 0..n {
        let blocks = kv.alloc_many(per_worker).map_err(e)?;
        s.send(i, &format!("write {}", line(&blocks)))?;
        s.worker(i).blocks = blocks;
    }
    for i in 0..n {
        // The line first (progress lines on the way move the bar), then the signal that came before it.
        let written: u64 = s.expect(i, "written")?.parse().unwrap_or(0);
        if !notifies[i as usize].wait_host(wait).map_err(e)? {
            return Err(format!("worker {i} did not signal the end of its writes"));
        }
        s.worker(i).report.bytes_written = written;
        report.bytes_written += written;
    }
    timed("write", t);

    if s.args.sleep {
        let t = Instant::now();
        report.sleep = Some(sleep_and_wake(rt, kv, s)?);
        timed("sleep and wake", t);
    }

    // verify: each worker checks the next one's blocks, pinned; meanwhile the scheduler frees them all.
    let t = Instant::now();
    s.phase("verify");
    for i in 0..n {
        let next = s.workers[((i + 1) % n) as usize].blocks.clone();
        s.send(i, &format!("verify {}", line(&next)))?;
    }
    for i in 0..n {
        s.expect(i, "pinned")?;
    }
    let all: Vec<KvBlock> = s.workers.iter_mut().flat_map(|w| std::mem::take(&mut w.blocks)).collect();
    kv.free_many(&all).map_err(e)?;
    report.deferred_while_pinned = kv.stats().deferred;
    for i in 0..n {
        s.send(i, "go")?;
    }
    for i in 0..n {
        let v = s.expect(i, "verified")?;
        if !notifies[i as usize].wait_host(wait).map_err(e)? {
            return Err(format!("worker {i} did not signal the end of its checks"));
        }
        let mut it = v.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
        let (verified, bad) = (it.next().unwrap_or(0), it.next().unwrap_or(u64::MAX));
        let w = &mut s.worker(i).report;
        w.bytes_verified = verified;
        w.bad_bytes = bad;
        report.bytes_verified += verified;
        report.bad_bytes = report.bad_bytes.saturating_add(bad);
    }
    if !kv.wait_unpinned(wait).map_err(e)? {
        return Err("blocks are still pinned after every worker unpinned".into());
    }
    timed("verify", t);

    // release
    let t = Instant::now();
    s.phase("release");
    kv.trim().map_err(e)?;
    for i in 0..n {
        s.send(i, "release")?;
    }
    for i in 0..n {
        s.expect(i, "released")?;
    }
    let deadline = Instant::now() + wait;
    while kv.pool().share_stats().is_some_and(|st| st.retired_pending > 0) {
        if Instant::now() > deadline {
            return Err("trimmed chunks are still waiting for the workers".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    timed("release", t);

    // finish
    let t = Instant::now();
    s.phase("finish");
    for i in 0..n {
        s.send(i, "stats")?;
        let st = s.expect(i, "stats")?;
        let mut v = st.split_whitespace().map(|x| x.parse().unwrap_or(0));
        let mut next = || v.next().unwrap_or(0);
        let w = &mut s.worker(i).report;
        (w.imports, w.runtime_imports, w.runtime_maps, w.runtime_calls) = (next(), next(), next(), next());
        s.send(i, "bye")?;
    }
    let deadline = Instant::now() + s.timeout;
    for w in &mut s.workers {
        let Some(st) = crate::child::wait_until(&mut w.child, deadline, Duration::from_millis(2)) else {
            return Err(format!(
                "worker {} (device {}) did not exit within {:?} of being told",
                w.index, w.device, s.timeout
            ));
        };
        if !st.success() {
            return Err(format!("worker {} (device {}) exited with {st}", w.index, w.device));
        }
    }
    drop(notifies);
    timed("finish", t);
    if report.bad_bytes > 0 {
        return Err(format!("{} byte(s) did not verify", report.bad_bytes));
    }
    if report.bytes_verified != report.bytes_written {
        return Err(format!("{} bytes written, {} verified", report.bytes_written, report.bytes_verified));
    }
    Ok(())
}

/// `--sleep`: put the KV pool to sleep with the workers attached (keeping the blocks' contents), check the
/// device memory came back and the workers see their blocks asleep, then wake it.
fn sleep_and_wake(rt: &Runtime, kv: &KvPool, s: &mut Scheduler) -> Result<SleepSummary, String> {
    let e = |e: aclshm::Error| e.to_string();
    let free =
        || rt.on_device(0, || Ok(raw::get_mem_info(rt, aclshm::sys::aclrtMemAttr::ACL_HBM_MEM)?.0 as u64)).map_err(e);
    s.phase("sleep");
    let mut sl = SleepSummary { free_before: free()?, ..SleepSummary::default() };
    let mapped = kv.pool().mapped_bytes();
    let t = Instant::now();
    let done = kv.sleep(false).map_err(e)?;
    sl.sleep_ms = t.elapsed().as_secs_f64() * 1e3;
    sl.free_asleep = free()?;
    (sl.released_bytes, sl.kept_bytes, sl.chunks) = (done.released_bytes, done.kept_bytes, done.slept_chunks);
    if sl.free_asleep < sl.free_before + mapped {
        return Err(format!(
            "asleep, device 0 has {} free: less than the {} before the sleep and the pool's {} mapped",
            bytes(sl.free_asleep),
            bytes(sl.free_before),
            bytes(mapped)
        ));
    }
    for i in 0..s.args.workers {
        let blocks = s.workers[i as usize].blocks.clone();
        s.send(i, &format!("asleep {}", line(&blocks)))?;
    }
    for i in 0..s.args.workers {
        let said = s.expect(i, "asleep")?;
        let mut it = said.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        let (asleep, checked) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        sl.blocks_asleep += asleep;
        sl.blocks_checked += checked;
    }
    if sl.blocks_asleep != sl.blocks_checked {
        return Err(format!(
            "workers reached {} of their blocks while the pool slept",
            sl.blocks_checked - sl.blocks_asleep
        ));
    }
    let t = Instant::now();
    kv.wake().map_err(e)?;
    sl.wake_ms = t.elapsed().as_secs_f64() * 1e3;
    sl.free_after = free()?;
    Ok(sl)
}

fn print(report: &DemoReport) -> out::Result {
    let mut t = Table::new(&[
        "worker",
        "device",
        "pid",
        "imports",
        "runtime imports",
        "maps",
        "runtime calls",
        "written",
        "verified",
        "bad bytes",
    ]);
    for w in &report.workers {
        t.row(vec![
            w.index.to_string(),
            w.device.to_string(),
            w.pid.to_string(),
            w.imports.to_string(),
            w.runtime_imports.to_string(),
            w.runtime_maps.to_string(),
            w.runtime_calls.to_string(),
            bytes(w.bytes_written),
            bytes(w.bytes_verified),
            w.bad_bytes.to_string(),
        ]);
    }
    outln!("{}", t.render());
    outln!();
    let mut p = Table::new(&["phase", "time"]);
    for (name, ms) in &report.phases {
        p.row(vec![name.clone(), duration(Duration::from_secs_f64(ms / 1e3))]);
    }
    p.row(vec!["total".into(), duration(Duration::from_secs_f64(report.total_ms / 1e3))]);
    outln!("{}", p.render());
    outln!();
    outln!("backend:             {}", report.backend);
    outln!(
        "KV pool:             {} blocks of {} on device 0, {} chunks of {} grown, {} trimmed",
        report.blocks,
        bytes(report.block_bytes),
        report.chunks_grown,
        bytes(report.chunk_bytes),
        report.chunks_trimmed
    );
    outln!(
        "scheduler:           {} exports (one per chunk mapped, a wake's included), {} whitelist calls, {} runtime calls in all",
        report.exports,
        report.whitelist_calls,
        report.scheduler_runtime_calls
    );
    outln!(
        "pins:                {} blocks freed while pinned by a reader, kept until it unpinned them",
        report.deferred_while_pinned
    );
    outln!(
        "data:                {} written, {} verified across processes, {} bad bytes",
        bytes(report.bytes_written),
        bytes(report.bytes_verified),
        report.bad_bytes
    );
    if let Some(sl) = &report.sleep {
        outln!(
            "sleep:               {} chunks asleep, {} given back (device 0's free memory rose by {} while asleep), {} kept in host memory; workers found {} of {} blocks asleep; sleep {}, wake {}",
            sl.chunks,
            bytes(sl.released_bytes),
            bytes(sl.free_asleep.saturating_sub(sl.free_before)),
            bytes(sl.kept_bytes),
            sl.blocks_asleep,
            sl.blocks_checked,
            duration(Duration::from_secs_f64(sl.sleep_ms / 1e3)),
            duration(Duration::from_secs_f64(sl.wake_ms / 1e3))
        );
    }
    match &report.error {
        None => outln!("result:              ok: every byte verified"),
        Some(err) => outln!("result:              FAILED: {err}"),
    }
    Ok(())
}

/// `aclshm demo`. A failure is said on stderr in one line, and in the summary (on stdout) when anything
/// ran; a summary nobody reads any more (a closed pipe) does not change the demo's status.
pub fn demo(rt: &Runtime, args: &DemoArgs) -> out::Result {
    let mut report = DemoReport::default();
    let result = run(rt, args, &mut report);
    report.ok = result.is_ok();
    report.error = result.err();
    let printed = if args.json {
        out::print(&format!("{}\n", serde_json::to_string_pretty(&report).expect("plain data serialises")))
    } else if report.phases.is_empty() && report.workers.is_empty() {
        // Nothing ran: the error is the whole story.
        Ok(())
    } else {
        print(&report)
    };
    if let Some(err) = &report.error {
        errln!("aclshm demo: {err}");
    }
    match printed {
        Err(out::Failure::Stdout(e)) if out::is_broken_pipe(&e) && !report.ok => Err(out::Failure::Reported),
        Err(failed) => Err(failed),
        Ok(()) if report.ok => Ok(()),
        Ok(()) => Err(out::Failure::Reported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "0", "K", "12X", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_differ_between_allocations_of_a_block() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pattern(&KvBlock::from_parts(1, 5, 1), 4096, &mut a);
        pattern(&KvBlock::from_parts(1, 5, 3), 4096, &mut b);
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
        let mut c = Vec::new();
        pattern(&KvBlock::from_parts(1, 5, 1), 4096, &mut c);
        assert_eq!(a, c, "deterministic");
    }
}
