//! The fault sweep: every runtime call an owner and a worker make is made to fail in turn, in a fresh pair
//! of processes each time. Each run checks that the failure comes back as a typed error (or is absorbed by
//! a retry), that the data written before it is intact, that the pool is still usable or closes cleanly,
//! and that nothing is left in the simulator afterwards (the processes' own counts, then the directory).
//!
//! Two scenarios, each a pair of processes:
//!
//! - sharing a pool: growth, share, attach, sync, trim, detach, IPC memory by key, notifies (`owner`,
//!   `worker`);
//! - sharing KV blocks: `KvPool::new`, `alloc`/`alloc_many` (growing before and after the worker
//!   attached), `free`/`free_many` while the worker pins, `trim` while pinned and after, blocks going back
//!   as pins go (`wait_unpinned`, which trims down to the watermark), `close`; `KvMirror::attach`, `ptr`
//!   (syncing to chunks grown since), `pinned`/`pin`/`pins`/`unpin`, `close` (`kv owner`, `kv worker`).
//!
//! A clean run of each scenario lists the calls each process makes (the simulator's per-process
//! counters); then each call, the `n`th call of each function in each process, fails in a run of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use aclshm::{
    AclError, AllocDesc, Context, Error, Event, IpcMemConfig, IpcMemDesc, IpcMemImport, IpcMemory, KvBlock, KvConfig,
    KvMirror, KvPool, Mirror, Notify, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc, SleepConfig, raw,
};

use crate::harness::*;
use crate::test_name;

const MIB: u64 = 1 << 20;
/// The KV scenario's blocks: two to a 2 MiB chunk (each block's data is one copy, each copy a call site).
const BLOCK: u64 = MIB;
/// Blocks per chunk.
const PER_CHUNK: usize = 2;
/// The code injected: one the simulator never returns by itself.
const INJECTED: i32 = aclshm::sys::ACL_ERROR_RT_LOST_HEARTBEAT;
const FAULT: &str = "ACLSHM_SWEEP_FAULT";

/// What one process saw go wrong.
#[derive(Default)]
struct Log {
    errors: Vec<(String, String)>,
}

impl Log {
    fn step<T>(&mut self, what: &str, r: aclshm::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push((what.to_string(), e.to_string()));
                None
            }
        }
    }

    /// A close that fails keeps what it could not release; closing again releases it.
    fn close(&mut self, what: &str, close: impl Fn() -> aclshm::Result<()>) {
        if self.step(what, close()).is_none() {
            self.step(&format!("{what} again"), close());
        }
    }

    fn check(&mut self, what: &str, ok: bool) {
        if !ok {
            self.errors.push((what.to_string(), "check failed".to_string()));
        }
    }

    /// `report <injected errors> <unexpected errors, `|`-separated>`
    fn report(&self) -> String {
        let injected = self.errors.iter().filter(|(_, e)| e.contains(&INJECTED.to_string())).count();
        let unexpected: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, e)| !e.contains(&INJECTED.to_string()))
            .map(|(w, e)| format!("{w}: {e}"))
            .collect();
        format!("report {injected} {}", unexpected.join(" | "))
    }
}

/// Arm the fault this process is to meet, if the run's fault (`role:func:nth`) is for its role.
fn arm(rt: &Runtime) {
    let Some(spec) = std::env::var(FAULT).ok().filter(|s| !s.is_empty()) else { return };
    let [who, f, n] = spec.splitn(3, ':').collect::<Vec<_>>()[..] else { panic!("{FAULT}={spec}: not role:func:nth") };
    if Some(who) == role().as_deref() {
        let n: u64 = n.parse().expect("nth");
        raw::sim_inject_fault(rt, f, n, 1, AclError::from_code(INJECTED).unwrap()).unwrap();
    }
}

/// What this process still holds in the simulator, as `name=count` for every count that is not zero.
fn held(rt: &Runtime) -> String {
    let st = raw::sim_get_stats(rt).unwrap();
    [
        ("handles", st.localHandles),
        ("mappings", st.localMappings),
        ("reservations", st.localReservations),
        ("device_allocs", st.localDeviceAllocs),
        ("notifies", st.localNotifies),
        ("ipc_imports", st.localIpcImports),
        ("events", st.localEvents),
        ("contexts", st.localContexts),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{k}={n}"))
    .collect::<Vec<_>>()
    .join(",")
}

/// This process's call counts, `func=n,...` (what the sweep faults one by one).
fn calls(rt: &Runtime) -> String {
    sim_calls(rt).iter().filter(|c| c.1 > 0).map(|(f, n)| format!("{f}={n}")).collect::<Vec<_>>().join(",")
}

/// A role's start: arm its fault, if any, and make `device` current (a user whose first call fails tries
/// again).
fn begin(rt: &Runtime, device: i32) -> Log {
    arm(rt);
    let mut log = Log::default();
    if log.step("set device", raw::set_device(rt, device)).is_none() {
        log.step("set device again", raw::set_device(rt, device));
    }
    log
}

/// A role's end: reset `device`, then report what went wrong, what is still held, and the calls made.
fn finish(rt: &Runtime, mut log: Log, device: i32) {
    log.step("reset device", raw::reset_device(rt, device));
    say(log.report());
    say(format!("held {}", held(rt)));
    say(format!("calls {}", calls(rt)));
}

fn owner(rt: &Runtime) {
    let mut log = begin(rt, 0);
    let cfg = PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 32 * MIB, ..PoolConfig::default() };
    let pool = log.step("pool", Pool::new(rt, 0, cfg));
    let a = pool.as_ref().and_then(|p| log.step("alloc a", p.alloc(3 * MIB)));
    let a_written = a.as_ref().and_then(|a| log.step("write a", try_fill(rt, a.as_ptr(), a.len(), 1))).is_some();
    let share = pool.as_ref().and_then(|p| log.step("share", p.share(ShareConfig::default())));
    let da = match (&pool, &a, &share) {
        (Some(p), Some(a), Some(_)) if a_written => log.step("describe a", p.descriptor(a)),
        _ => None,
    };
    say(format!("share {}", share.as_ref().map_or("-".to_string(), ShareDesc::to_string)));
    say(format!("a {}", da.map_or("-".to_string(), |d| d.to_hex())));
    let tgid: i32 = hear_word("tgid").parse().unwrap();
    hear_word("attached");
    // Growth while shared: allocate, map, export, whitelist.
    let b = pool.as_ref().and_then(|p| log.step("alloc b", p.alloc(4 * MIB)));
    let b_written = b.as_ref().and_then(|b| log.step("write b", try_fill(rt, b.as_ptr(), b.len(), 2))).is_some();
    let db = match (&pool, &b, &share) {
        (Some(p), Some(b), Some(_)) if b_written => log.step("describe b", p.descriptor(b)),
        _ => None,
    };
    say(format!("b {}", db.map_or("-".to_string(), |d| d.to_hex())));
    hear_word("read b");
    // A notify the worker signals.
    let n = log.step("notify", Notify::new(rt, 0));
    let key = n.as_ref().and_then(|n| log.step("notify export", n.export(true)));
    let allowed = match (&n, &key) {
        (Some(n), Some(_)) => log.step("notify allow", n.allow(tgid)).is_some(),
        _ => false,
    };
    say(format!("notify {}", if allowed { key.unwrap().to_string() } else { "-".into() }));
    if hear_word("signalled") == "ok"
        && let Some(n) = &n
        && let Some(got) = log.step("notify wait", n.wait_host(Duration::from_secs(30)))
    {
        log.check("notify was signalled", got);
    }
    if let Some(n) = n {
        log.step("notify close", n.close());
    }
    // An IPC event: the owner records it, the worker opens it, waits for that record and records it too.
    let ev = log.step("event", Event::ipc(rt, 0));
    let recorded = ev.as_ref().is_some_and(|e| log.step("event record", e.signal()).is_some());
    let handle = ev.as_ref().filter(|_| recorded).and_then(|e| log.step("event export", e.export()));
    say(format!("event {}", handle.map_or("-".to_string(), |h| h.to_string())));
    if hear_word("recorded") == "ok"
        && let Some(e) = &ev
        && let Some(got) = log.step("event wait", e.wait_host(Duration::from_secs(30)))
    {
        log.check("event was recorded", got);
    }
    if let Some(e) = ev {
        log.step("event close", e.close());
    }
    // IPC memory by key.
    let ipc = IpcMemConfig { close_timeout: Duration::from_secs(5), ..IpcMemConfig::default() };
    let m = log.step("ipc new", IpcMemory::new(rt, 0, 2 << 20, ipc));
    let m_ready = m.as_ref().is_some_and(|m| {
        log.step("ipc allow", m.allow(tgid)).is_some()
            && log.step("ipc write", try_fill(rt, m.as_ptr(), m.len() as u64, 3)).is_some()
    });
    say(format!("ipc {}", if m_ready { m.as_ref().unwrap().desc().to_string() } else { "-".into() }));
    hear_word("ipc read");
    if let Some(m) = m {
        log.step("ipc close", m.close());
    }
    // Sleep, keeping what is allocated (the default tag), and wake; the worker follows both. A wake that
    // fails leaves the pool asleep: it wakes again (an injected fault fires once).
    let keep = SleepConfig { offload_tags: vec![aclshm::pool::DEFAULT_TAG.to_string()], ..SleepConfig::default() };
    let slept = pool.as_ref().is_some_and(|p| log.step("sleep", p.sleep(&keep)).is_some());
    say(format!("slept {}", if slept { "ok" } else { "-" }));
    hear_word("followed sleep");
    if let Some(p) = &pool {
        log.close("wake", || p.wake(None));
    }
    say("woke");
    hear_word("followed wake");
    // Trim what the worker mapped of b; it follows.
    if let (Some(p), Some(b)) = (&pool, b) {
        log.step("free b", p.free(b));
        log.step("trim", p.trim());
    }
    say("trimmed");
    hear_word("synced");
    // What was written first is intact, and the pool still works.
    if let (Some(a), true) = (&a, a_written)
        && let Some(ok) = log.step("read a", try_holds(rt, a.as_ptr(), a.len(), 1))
    {
        log.check("a intact", ok);
    }
    if let Some(p) = &pool {
        if let Some(c) = log.step("recovery alloc", p.alloc(MIB)) {
            if log.step("recovery write", try_fill(rt, c.as_ptr(), c.len(), 4)).is_some()
                && let Some(ok) = log.step("recovery read", try_holds(rt, c.as_ptr(), c.len(), 4))
            {
                log.check("recovery data", ok);
            }
            log.step("recovery free", p.free(c));
        }
        if let Some(a) = a {
            log.step("free a", p.free(a));
        }
        log.close("pool close", || p.close());
    }
    drop(pool);
    finish(rt, log, 0);
}

fn worker(rt: &Runtime) {
    let mut log = begin(rt, 1);
    let tgid = log.step("bare tgid", raw::device_get_bare_tgid(rt)).unwrap_or(std::process::id() as i32);
    let share = hear_word("share");
    let da = hear_word("a");
    let m = if share == "-" { None } else { log.step("attach", Mirror::attach(rt, &share.parse().unwrap(), 1)) };
    say(format!("tgid {tgid}"));
    say(format!("attached {}", if m.is_some() { "ok" } else { "-" }));
    let check = |log: &mut Log, m: &Mirror, desc: &str, seed: u64, what: &str| {
        if desc == "-" {
            return;
        }
        let d = AllocDesc::from_hex(desc).unwrap();
        if let Some(p) = log.step(what, m.ptr(&d))
            && let Some(ok) = log.step(what, try_holds(rt, p, d.len(), seed))
        {
            log.check(what, ok);
        }
    };
    if let Some(m) = &m {
        check(&mut log, m, &da, 1, "read a");
    }
    let db = hear_word("b");
    if let Some(m) = &m {
        check(&mut log, m, &db, 2, "read b");
    }
    say("read b");
    let key = hear_word("notify");
    let mut signalled = "-";
    if key != "-"
        && let Some(n) = log.step("notify import", Notify::import(rt, &key.parse().unwrap(), 1))
    {
        if log.step("notify signal", n.signal()).is_some() {
            signalled = "ok";
        }
        log.step("notify close", n.close());
    }
    say(format!("signalled {signalled}"));
    let handle = hear_word("event");
    let mut recorded = "-";
    if handle != "-"
        && let Some(e) = log.step("event open", Event::open(rt, &handle.parse().unwrap(), 1))
    {
        if log.step("event synchronize", e.synchronize()).is_some() && log.step("event record", e.signal()).is_some() {
            recorded = "ok";
        }
        log.step("event close", e.close());
    }
    say(format!("recorded {recorded}"));
    let ipc = hear_word("ipc");
    if ipc != "-"
        && let Some(i) = log.step("ipc open", IpcMemImport::open(rt, &ipc.parse::<IpcMemDesc>().unwrap(), 1))
    {
        if let Some(ok) = log.step("ipc read", try_holds(rt, i.as_ptr(), i.len() as u64, 3)) {
            log.check("ipc data", ok);
        }
        log.step("ipc close", i.close());
    }
    say("ipc read");
    let slept = hear_word("slept");
    if let Some(m) = &m {
        log.step("sync to the sleep", m.sync().map(|_| ()));
        if slept == "ok" && da != "-" {
            let d = AllocDesc::from_hex(&da).unwrap();
            log.check("asleep memory is a typed error", matches!(m.ptr(&d), Err(Error::Asleep(_))));
        }
    }
    say("followed sleep");
    hear_word("woke");
    if let Some(m) = &m {
        log.step("sync to the wake", m.sync().map(|_| ()));
        check(&mut log, m, &da, 1, "read a after the wake");
    }
    say("followed wake");
    hear_word("trimmed");
    if let Some(m) = &m {
        log.step("sync", m.sync().map(|_| ()));
        check(&mut log, m, &da, 1, "read a again");
    }
    if let Some(m) = m {
        log.step("detach", m.close());
    }
    // A context of its own, made current, then destroyed.
    if let Some(c) = log.step("context", Context::new(rt, 1)) {
        log.step("context current", c.make_current());
        log.step("context close", c.close());
    }
    say("synced");
    finish(rt, log, 1);
}

/// A KV block's pattern: its id and generation.
fn seed(b: &KvBlock) -> u64 {
    (u64::from(b.id()) << 32) | u64::from(b.generation())
}

/// Blocks as a line, `-` for none.
fn blocks_line(blocks: Option<&[KvBlock]>) -> String {
    blocks.map_or("-".to_string(), words)
}

/// The blocks of a line (none for `-`).
fn blocks_of(line: &str) -> Option<Vec<KvBlock>> {
    (line != "-").then(|| line.split_whitespace().map(|b| b.parse().unwrap()).collect())
}

/// Write each block's pattern through the owner's pool; whether all were written.
fn write_blocks(log: &mut Log, rt: &Runtime, kv: &KvPool, blocks: &[KvBlock], what: &str) -> bool {
    blocks.iter().all(|b| log.step(what, kv.ptr(b).and_then(|p| try_fill(rt, p, BLOCK, seed(b)))).is_some())
}

/// Check `blocks` hold their patterns at `ptrs`.
fn check_blocks(log: &mut Log, rt: &Runtime, blocks: &[KvBlock], ptrs: &[*mut std::ffi::c_void], what: &str) {
    for (b, &p) in blocks.iter().zip(ptrs) {
        if let Some(ok) = log.step(what, try_holds(rt, p, BLOCK, seed(b))) {
            log.check(what, ok);
        }
    }
}

/// Check `blocks` hold their patterns, translated by the worker's mirror (which syncs for new chunks).
fn check_mirrored(log: &mut Log, rt: &Runtime, m: &KvMirror, blocks: &[KvBlock], what: &str) {
    for b in blocks {
        if let Some(p) = log.step(what, m.ptr(b)) {
            check_blocks(log, rt, std::slice::from_ref(b), &[p], what);
        }
    }
}

/// The KV scheduler: two chunks of blocks before the worker attaches (the first chunk's are the prefix the
/// worker pins, the last block is kept to the end), growth while it is attached, frees while it pins,
/// trims, and at the end a grow that shows the pool still works.
fn kv_owner(rt: &Runtime) {
    let mut log = begin(rt, 0);
    // Frees trim down to one free chunk by themselves; `trim` gives back the rest.
    let pool = PoolConfig {
        chunk_bytes: 2 * MIB,
        reserve_bytes: 32 * MIB,
        trim_watermark: Some(2 * MIB),
        ..PoolConfig::default()
    };
    let kv =
        log.step("kv pool", KvPool::new(rt, 0, KvConfig { block_bytes: BLOCK, pool, share: ShareConfig::default() }));
    let a = kv.as_ref().and_then(|kv| log.step("alloc_many a", kv.alloc_many(2 * PER_CHUNK)));
    let a_written = match (&kv, &a) {
        (Some(kv), Some(a)) => write_blocks(&mut log, rt, kv, a, "write a"),
        _ => false,
    };
    say(format!("kv {}", kv.as_ref().map_or("-".to_string(), |kv| kv.desc().to_string())));
    say(format!("a {}", blocks_line(a.as_deref().filter(|_| a_written))));
    hear_word("attached");
    // Growth while shared: one block (a new chunk, exported and whitelisted for the worker), then the rest
    // of that chunk and the whole of another.
    let one = kv.as_ref().and_then(|kv| log.step("alloc one", kv.alloc())).map(|b| vec![b]);
    let more = kv.as_ref().and_then(|kv| log.step("alloc_many more", kv.alloc_many(2 * PER_CHUNK - 1)));
    let mut grown = |blocks: &Option<Vec<KvBlock>>, what: &str| match (&kv, blocks) {
        (Some(kv), Some(bs)) if write_blocks(&mut log, rt, kv, bs, what) => blocks_line(Some(bs)),
        _ => "-".to_string(),
    };
    let (one_line, more_line) = (grown(&one, "write one"), grown(&more, "write more"));
    say(format!("one {one_line}"));
    say(format!("more {more_line}"));
    // Whether the worker pinned the prefix and `one`, and its pins on the prefix's first block.
    let pinned: Vec<u32> = hear_word("pinned").split(' ').map(|n| n.parse().unwrap()).collect();
    // Free everything but the kept block while the worker pins the prefix and `one`: those are kept for the
    // pins; the chunk `more` leaves empty is trimmed.
    let mut prefix_freed = false;
    if let Some(kv) = &kv {
        let mut kept = 0;
        if let Some(a) = &a {
            if let Some(n) = log.step("pins", kv.pins(&a[0])) {
                log.check("the worker's pins are seen", n == pinned[2]);
            }
            prefix_freed = log.step("free_many prefix", kv.free_many(&a[..PER_CHUNK])).is_some();
            kept += if prefix_freed { pinned[0] * PER_CHUNK as u32 } else { 0 };
            log.step("free_many a", kv.free_many(&a[PER_CHUNK..a.len() - 1]));
        }
        if let Some(one) = &one
            && log.step("free one", kv.free(one[0])).is_some()
        {
            kept += pinned[1];
        }
        if let Some(more) = &more {
            log.step("free_many more", kv.free_many(more));
        }
        log.check("pinned blocks are kept", kv.stats().deferred == kept);
        log.step("trim while pinned", kv.trim());
    }
    say(format!("freed {}", if prefix_freed { "ok" } else { "-" }));
    hear_word("unpinned");
    // The pins are gone: the kept blocks go back (trimming down to the watermark), then a trim.
    if let Some(kv) = &kv {
        if let Some(none_left) = log.step("wait_unpinned", kv.wait_unpinned(Duration::from_secs(30))) {
            log.check("every pin is gone", none_left);
        }
        log.step("trim", kv.trim());
    }
    say("trimmed");
    hear_word("closed");
    // The kept block is intact, and the pool still works: a grow into a new chunk, and back.
    if let Some(kv) = &kv {
        if let Some(a) = &a {
            let keep = &a[a.len() - 1..];
            if a_written && let Some(p) = log.step("read keep", kv.ptr(&keep[0])) {
                check_blocks(&mut log, rt, keep, &[p], "keep intact");
            }
            log.step("free keep", kv.free(keep[0]));
        }
        if let Some(c) = log.step("recovery alloc_many", kv.alloc_many(PER_CHUNK + 1)) {
            if write_blocks(&mut log, rt, kv, &c, "recovery write") {
                let ptrs: Vec<_> = c.iter().filter_map(|b| log.step("recovery ptr", kv.ptr(b))).collect();
                check_blocks(&mut log, rt, &c, &ptrs, "recovery data");
            }
            log.step("recovery free_many", kv.free_many(&c));
        }
        log.close("kv close", || kv.close());
    }
    drop(kv);
    finish(rt, log, 0);
}

/// The KV worker: attaches, reads what was written before, follows the growth, pins the prefix and `one`
/// (a guard, and the prefix once more by hand) while the scheduler frees them, unpins, follows the trims,
/// detaches.
fn kv_worker(rt: &Runtime) {
    let mut log = begin(rt, 1);
    let desc = hear_word("kv");
    let a = blocks_of(&hear_word("a"));
    let mirror = if desc == "-" { None } else { log.step("attach", KvMirror::attach(rt, &desc.parse().unwrap(), 1)) };
    let m = mirror.as_ref();
    if let (Some(m), Some(a)) = (m, &a) {
        check_mirrored(&mut log, rt, m, a, "read a");
    }
    say(format!("attached {}", if m.is_some() { "ok" } else { "-" }));
    let (one, more) = (blocks_of(&hear_word("one")), blocks_of(&hear_word("more")));
    // Pinned as a reader of blocks another request owns: the prefix and `one` with a guard, whose
    // translation of `one` maps the chunk grown since the attach (importing it); the prefix once more by
    // hand. Pins nest.
    let mut to_pin: Vec<KvBlock> = a.iter().flat_map(|a| a[..PER_CHUNK].to_vec()).collect();
    to_pin.extend(one.iter().flatten());
    let guard = m.filter(|_| !to_pin.is_empty()).and_then(|m| log.step("pinned", m.pinned(&to_pin)));
    let by_hand = m.zip(a.as_ref()).is_some_and(|(m, a)| log.step("pin prefix", m.pin(&a[..PER_CHUNK])).is_some());
    if let Some(g) = &guard {
        check_blocks(&mut log, rt, g.blocks(), g.ptrs(), "read pinned");
    }
    // All or none: a guard that failed leaves no pin behind.
    let mut pins = 0;
    if let (Some(m), Some(a)) = (m, &a) {
        pins = log.step("pins", m.pins(&a[0])).unwrap_or(0);
        log.check("the prefix's pins", pins == u32::from(guard.is_some()) + u32::from(by_hand));
    }
    // The rest of the growth: translating it maps another chunk.
    if let (Some(m), Some(more)) = (m, &more) {
        check_mirrored(&mut log, rt, m, more, "read more");
    }
    let one_pinned = guard.is_some() && one.is_some();
    say(format!("pinned {} {} {pins}", u32::from(pins > 0), u32::from(one_pinned)));
    let freed = hear_word("freed") == "ok";
    if let (Some(m), Some(a)) = (m, &a)
        && freed
        && pins > 0
    {
        log.check("a freed block is stale", matches!(m.ptr(&a[0]), Err(Error::StaleBlock { .. })));
    }
    if let Some(g) = &guard {
        // Freed, but pinned: the bytes are as they were.
        check_blocks(&mut log, rt, g.blocks(), g.ptrs(), "read pinned after the free");
    }
    drop(guard);
    if let (Some(m), Some(a)) = (m, &a)
        && by_hand
    {
        log.step("unpin prefix", m.unpin(&a[..PER_CHUNK]));
        log.check("unpinned twice", matches!(m.unpin(&a[..1]), Err(Error::NotPinned { .. })));
    }
    say("unpinned");
    hear_word("trimmed");
    // Follow the trims; the kept block is still there.
    if let Some(m) = m {
        log.step("sync", m.mirror().sync().map(|_| ()));
        if let Some(a) = &a {
            check_mirrored(&mut log, rt, m, &a[a.len() - 1..], "read keep");
        }
    }
    if let Some(mirror) = mirror {
        log.step("detach", mirror.close());
    }
    say("closed");
    finish(rt, log, 1);
}

/// One of the sweep's scenarios: its two roles, and the lines the parent relays between them.
struct Case {
    owner: &'static str,
    worker: &'static str,
    script: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        owner: "owner",
        worker: "worker",
        script: "> share, > a, < tgid, < attached, > b, < read b, > notify, < signalled, > event, < recorded, \
                 > ipc, < ipc read, > slept, < followed sleep, > woke, < followed wake, > trimmed, < synced",
    },
    Case {
        owner: "kv owner",
        worker: "kv worker",
        script: "> kv, > a, < attached, > one, > more, < pinned, > freed, < unpinned, > trimmed, < closed",
    },
];

/// What one process of a run reported.
struct Outcome {
    /// Errors that carried the injected code.
    injected: u64,
    /// Any other error or failed check, `|`-separated.
    unexpected: String,
    /// What it still held in the simulator at the end.
    held: String,
    /// Its call counts.
    calls: String,
}

/// One run of `case` in `sc`: both processes, with `fault` (`(role, func, nth)`) or none. Returns what each
/// process reported, by role.
fn run(sc: Scenario, case: &Case, fault: Option<(&str, &str, u64)>) -> BTreeMap<&'static str, Outcome> {
    let spec = fault.map_or(String::new(), |(who, f, n)| format!("{who}:{f}:{n}"));
    let mut crew = sc.shared().env(FAULT, &spec).crew(case.owner, &[case.worker]);
    crew.play(case.script);
    let mut out = BTreeMap::new();
    let (owner, worker) = (&mut crew.owner, &mut crew.workers[0]);
    for (who, p) in [(case.worker, worker), (case.owner, owner)] {
        let r = p.expect("report");
        let (n, unexpected) = r.split_once(' ').unwrap_or((&r, ""));
        let (held, calls) = (p.expect("held"), p.expect("calls"));
        out.insert(who, Outcome { injected: n.parse().unwrap(), unexpected: unexpected.to_string(), held, calls });
    }
    crew.join();
    out
}

#[test]
fn every_runtime_call_of_sharing_fails_cleanly() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => owner(rt),
            "worker" => worker(rt),
            "kv owner" => kv_owner(rt),
            "kv worker" => kv_worker(rt),
            other => panic!("no role {other:?}"),
        },
        sweep,
    );
}

/// The parent: a clean run of each case, then one run per call site.
fn sweep(sc: Scenario) {
    // A clean run of each scenario: nothing goes wrong, and it lists the calls to fault.
    let mut sites: Vec<(&Case, &str, String, u64)> = Vec::new();
    for case in &CASES {
        for (who, o) in run(sc.another(), case, None) {
            assert_eq!((o.injected, o.unexpected.as_str(), o.held.as_str()), (0, "", ""), "the clean run of the {who}");
            for c in o.calls.split(',') {
                let (f, n) = c.split_once('=').unwrap();
                for i in 1..=n.parse::<u64>().unwrap() {
                    sites.push((case, who, f.to_string(), i));
                }
            }
        }
    }
    let (mut surfaced, mut absorbed, mut unreached, mut failures) = (0, Vec::new(), Vec::new(), Vec::new());
    for (case, who, f, i) in &sites {
        let out = run(sc.another(), case, Some((who, f, *i)));
        // Where the error comes back: in the process that met the fault, or in the other (a whitelisting
        // that fails in the owner refuses the worker's attach).
        let injected: u64 = out.values().map(|o| o.injected).sum();
        // The fault fired: the call was made at least `i` times.
        let made =
            out[who].calls.split(',').find_map(|c| c.strip_prefix(&format!("{f}="))).map_or(0, |n| n.parse().unwrap());
        for (p, o) in &out {
            if !o.unexpected.is_empty() || !o.held.is_empty() {
                failures.push(format!("{who} {f}#{i}: the {p} reports [{}], still holds [{}]", o.unexpected, o.held));
            }
        }
        if made < *i {
            // Background threads (a mirror's follower) make some calls as often as changes reach them,
            // which timing decides: this run made fewer than the clean one.
            unreached.push(format!("{who} {f}#{i}"));
        } else if injected > 0 {
            surfaced += 1;
        } else {
            absorbed.push(format!("{who} {f}#{i}"));
        }
    }
    let of = |role: &str| sites.iter().filter(|s| s.1 == role).count();
    println!(
        "fault sweep: {} runtime call sites (owner {}, worker {}, kv owner {}, kv worker {}); {} passed: {} failed \
         with the injected error returned, {} absorbed (retried or tolerated): {:?}; {} not reached this time: {:?}",
        sites.len(),
        of("owner"),
        of("worker"),
        of("kv owner"),
        of("kv worker"),
        sites.len() - failures.len(),
        surfaced,
        absorbed.len(),
        absorbed,
        unreached.len(),
        unreached
    );
    assert!(unreached.len() * 10 < sites.len(), "too many sites were not reached: {unreached:?}");
    assert!(failures.is_empty(), "{} of {} call sites failed:\n{}", failures.len(), sites.len(), failures.join("\n"));
    assert!(of("owner") + of("worker") > 60, "only {} call sites of sharing a pool", of("owner") + of("worker"));
    assert!(
        of("kv owner") + of("kv worker") > 40,
        "only {} call sites of sharing KV blocks",
        of("kv owner") + of("kv worker")
    );
}
