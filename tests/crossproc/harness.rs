//! Cross-process test harness: a test re-executes its own binary with a role in the environment (the
//! servo/ipc-channel pattern), once per process it needs.
//!
//! A test is [`by_role`]`(test_name!(), child, parent)`: as a child, `child` plays the role it was given,
//! on its runtime; as the parent, `parent` gets a [`Scenario`] (a fresh simulator directory), spawns
//! [`Peer`]s and exchanges lines with them: a child [`say`]s on stdout (lines prefixed `@@ `) and
//! [`hear`]s on stdin. The parent never uses the simulator itself, so tests can run in parallel threads of
//! one process or under nextest alike. Every wait has a timeout, and [`Scenario::finish`] checks the
//! directory is gone once every child exited.
//!
//! ```text
//!   parent (the test)                     children (the test binary again, ACLSHM_TEST_ROLE=<role>)
//!   Scenario::new ── spawn ──────────────> owner:  say("share ...")  ── stdout "@@ share ..." ──┐
//!        │         relay: expect + send                                                          │
//!        │ <─────────────────────────────────────────────────────────────────────────────────────┘
//!        └─────────────── stdin "share ..." ──> worker: hear_word("share")
//! ```
//!
//! The shapes most tests take have helpers of their own:
//!
//! - [`solo`]: the whole test is one child that does its work and says `ok`;
//! - [`Scenario::crew`]: an owner and its workers, started with one call, whose conversation is a script
//!   ([`Crew::play`]: `"> share, < attached"` passes the owner's `share` line down to every worker, then
//!   every worker's `attached` line up to the owner) and which ends the usual way ([`Crew::finish`]: the
//!   owner says `ok`; each worker, told `done`, closes and says `ok`, see [`when_done`]), or with the
//!   workers first ([`Crew::release`]), or by itself ([`Crew::join`]);
//! - on the children's side, [`hear_as`] and [`hear_list`] parse what they hear, [`fill`] and [`holds`]
//!   write and check a seeded pattern in device memory, [`eventually`] polls with the harness's timeout,
//!   [`stop_flag`] turns the parent's next line into a flag for a loop, [`Rng`] makes the choices of
//!   randomised tests reproducible.
//!
//! Set `ACLSHM_BACKEND=acl ACLSHM_ACL_LIB=<libascendcl.so>` to run every child through the drop-in library
//! instead of the embedded simulator; each child reports its backend and the parent checks it is the one
//! asked for.

#![allow(dead_code)]

use std::ffi::c_void;
use std::fmt::{Debug, Display};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aclshm::sys::{aclrtMemAttr, aclrtMemcpyKind};
use aclshm::{Runtime, raw};

const ROLE_VAR: &str = "ACLSHM_TEST_ROLE";
const PREFIX: &str = "@@ ";
/// How long any one exchange with a child may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The role this process plays, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// The path of the calling test inside this test binary (for `--exact`).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let full = std::any::type_name_of_val(&f);
        let full = full.strip_suffix("::f").expect("type name of a nested fn");
        full.split_once("::").map(|(_, rest)| rest).expect("crate::path").to_string()
    }};
}

// ---- child side ----

/// Send a line to the parent.
pub fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{}", msg.as_ref()).expect("stdout");
    out.flush().expect("stdout");
}

/// Read the next line from the parent.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    assert!(!line.is_empty(), "the parent closed stdin");
    line.trim_end().to_string()
}

/// Read the next line, which must start with `word `, and return the rest.
pub fn hear_word(word: &str) -> String {
    let line = hear();
    line.strip_prefix(word)
        .and_then(|r| r.strip_prefix(' ').or(Some(r)))
        .unwrap_or_else(|| panic!("expected {word:?} from the parent, got {line:?}"))
        .to_string()
}

/// Read the next line, which must start with `word `, and parse the rest.
pub fn hear_as<T: FromStr>(word: &str) -> T
where
    T::Err: Debug,
{
    let rest = hear_word(word);
    rest.parse().unwrap_or_else(|e| panic!("{word} {rest:?} does not parse: {e:?}"))
}

/// Read the next line, which must start with `word `, and parse each of the words after it.
pub fn hear_list<T: FromStr>(word: &str) -> Vec<T>
where
    T::Err: Debug,
{
    let rest = hear_word(word);
    rest.split_whitespace()
        .map(|w| w.parse().unwrap_or_else(|e| panic!("{word}: {w:?} does not parse: {e:?}")))
        .collect()
}

/// Items as one line, separated by spaces (what [`hear_list`] reads back).
pub fn words<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
}

/// Hear a descriptor (`word <desc>`), make `device` current, and `attach` there: how a worker joins what
/// its owner shares (`attach_as(rt, "share", 1, Mirror::attach)`).
pub fn attach_as<D: FromStr, M>(
    rt: &Runtime,
    word: &str,
    device: i32,
    attach: impl FnOnce(&Runtime, &D, i32) -> aclshm::Result<M>,
) -> M
where
    D::Err: Debug,
{
    let desc: D = hear_as(word);
    raw::set_device(rt, device).unwrap();
    attach(rt, &desc, device).unwrap()
}

/// A worker's end of [`Crew::finish`]: wait to be told `done`, then `leave` (close what it holds) and say
/// `ok`.
pub fn when_done(leave: impl FnOnce()) {
    hear_word("done");
    leave();
    say("ok");
}

/// The child's runtime, as the environment selects it; tells the parent which backend it is.
pub fn runtime() -> Runtime {
    let rt = Runtime::from_env().expect("select the runtime");
    say(format!("backend {}", rt.backend()));
    rt
}

/// The status code of a result: 0 on success, the ACL code on a runtime error.
pub fn code<T>(r: aclshm::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(aclshm::Error::Acl { source, .. }) => source.code(),
        Err(e) => panic!("expected an ACL status, got {e}"),
    }
}

/// Assert a call fails with `$code` (or succeeds, for 0), naming the call in the message.
#[macro_export]
macro_rules! assert_code {
    ($call:expr, $code:expr) => {{
        let got = $crate::harness::code($call);
        let want: i32 = $code;
        assert_eq!(
            got,
            want,
            "{} returned {} ({}), expected {} ({})",
            stringify!($call),
            got,
            aclshm::sys::error_name(got).unwrap_or("?"),
            want,
            aclshm::sys::error_name(want).unwrap_or("?")
        );
    }};
}

/// A xorshift generator: the choices of randomised tests, reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`, which must not be 0.
    pub fn new(seed: u64) -> Rng {
        assert_ne!(seed, 0, "xorshift stays at 0");
        Rng(seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Bytes of a recognisable pattern: `len` bytes from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Write `data` to device address `dst`.
pub fn write_dev(rt: &Runtime, dst: *mut c_void, data: &[u8]) -> aclshm::Result<()> {
    // SAFETY: data is a host buffer of data.len() bytes; dst is device memory the test mapped.
    unsafe {
        raw::memcpy(rt, dst, data.len(), data.as_ptr().cast(), data.len(), aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE)
    }
}

/// Read `len` bytes from device address `src`.
pub fn read_dev(rt: &Runtime, src: *const c_void, len: usize) -> aclshm::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    // SAFETY: out is a host buffer of len bytes; src is device memory the test mapped.
    unsafe { raw::memcpy(rt, out.as_mut_ptr().cast(), len, src, len, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST)? };
    Ok(out)
}

/// Write the pattern of `seed` over `len` bytes of device memory at `p`.
pub fn try_fill(rt: &Runtime, p: *mut c_void, len: u64, seed: u64) -> aclshm::Result<()> {
    write_dev(rt, p, &pattern(seed, len as usize))
}

/// Whether `len` bytes of device memory at `p` hold the pattern of `seed`.
pub fn try_holds(rt: &Runtime, p: *mut c_void, len: u64, seed: u64) -> aclshm::Result<bool> {
    Ok(read_dev(rt, p, len as usize)? == pattern(seed, len as usize))
}

/// The free device memory of `device` (`aclrtGetMemInfo`), as the runtime counts it in every process.
pub fn free_bytes(rt: &Runtime, device: i32) -> u64 {
    rt.on_device(device, || Ok(raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM)?.0 as u64)).unwrap()
}

/// [`try_fill`], which must work.
pub fn fill(rt: &Runtime, p: *mut c_void, len: u64, seed: u64) {
    try_fill(rt, p, len, seed).unwrap();
}

/// [`try_holds`], which must be able to read.
pub fn holds(rt: &Runtime, p: *mut c_void, len: u64, seed: u64) -> bool {
    try_holds(rt, p, len, seed).unwrap()
}

/// Properties of 2 MiB-page device memory on `device` (or another memAttr).
pub fn prop(device: u32, attr: aclshm::sys::aclrtMemAttr) -> aclshm::sys::aclrtPhysicalMemProp {
    use aclshm::sys::*;
    aclrtPhysicalMemProp {
        handleType: aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
        allocationType: aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED,
        memAttr: attr,
        location: aclrtMemLocation { id: device, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
        reserve: 0,
    }
}

/// The simulator's call count of every ACL function.
pub fn sim_calls(rt: &Runtime) -> Vec<(&'static str, u64)> {
    aclshm::sys::ENTRY_POINTS
        .iter()
        .filter(|e| e.group == aclshm::sys::Group::Acl)
        .map(|e| (e.name, raw::sim_get_call_count(rt, e.name).unwrap()))
        .collect()
}

/// The calls made between two [`sim_calls`], and how many of each.
pub fn calls_since(before: &[(&'static str, u64)], after: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    before.iter().zip(after).filter(|(b, a)| a.1 > b.1).map(|(b, a)| (b.0, a.1 - b.1)).collect()
}

/// The simulator's count of `f` calls in this process.
pub fn sim_count(rt: &Runtime, f: &str) -> u64 {
    raw::sim_get_call_count(rt, f).unwrap()
}

/// Wait (polling, at most [`TIMEOUT`]) until `cond` holds.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A flag that goes up when the parent sends its next line (or goes away): for a child that works in a
/// loop until told to stop. Reads stdin in the background, so the child must not [`hear`] any more.
pub fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, Ordering::SeqCst);
    });
    stop
}

/// 2 MiB.
pub const MIB2: usize = 2 << 20;

// ---- parent side ----

/// One test's simulator directory and its children.
pub struct Scenario {
    test: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// The children's share directory (`ACLSHM_SHARE_DIR`), if [`shared`](Scenario::shared).
    share: Option<PathBuf>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The base directory of test simulator directories.
fn base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

impl Scenario {
    /// A fresh simulator directory for test `test` (see [`test_name!`]).
    pub fn new(test: String) -> Scenario {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base().join(format!("aclshm-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scenario { test, dir, env: Vec::new(), share: None }
    }

    /// Another scenario for the same test: a fresh simulator directory.
    pub fn another(&self) -> Scenario {
        Scenario::new(self.test.clone())
    }

    /// Give the children a share directory of this scenario's own (for pool sharing and IPC files), which
    /// [`finish`](Scenario::finish) checks is left empty.
    pub fn shared(self) -> Scenario {
        let share = PathBuf::from(format!("{}-share", self.dir.display()));
        let _ = std::fs::remove_dir_all(&share);
        let mut sc = self.env("ACLSHM_SHARE_DIR", share.to_str().expect("a UTF-8 path"));
        sc.share = Some(share);
        sc
    }

    /// Set an environment variable for every child spawned from now on.
    pub fn env(mut self, k: &str, v: &str) -> Scenario {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// The simulator directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The children's share directory, if [`shared`](Scenario::shared).
    pub fn share_dir(&self) -> Option<&Path> {
        self.share.as_deref()
    }

    /// Start a child playing `role`.
    pub fn spawn(&self, role: &str) -> Peer {
        self.spawn_with(role, &[])
    }

    /// Start a child playing `role` with extra environment.
    pub fn spawn_with(&self, role: &str, env: &[(&str, &str)]) -> Peer {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.args([self.test.as_str(), "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_VAR, role)
            .env("ACLSHM_SIM_DIR", &self.dir)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The backend is explicit: auto-detection would pick up whatever libascendcl.so is on the loader
        // path (cargo puts target/debug there, where the drop-in library is built).
        let backend = std::env::var("ACLSHM_BACKEND").ok().filter(|b| !b.is_empty());
        cmd.env("ACLSHM_BACKEND", backend.as_deref().unwrap_or("sim"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn a child");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(msg) = line.strip_prefix(PREFIX)
                    && tx.send(msg.to_string()).is_err()
                {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut peer = Peer { role: role.to_string(), child, stdin, rx, log, exited: None, killed: false };
        let backend = peer.expect("backend");
        check_backend(&backend);
        peer
    }

    /// Start one child per role, in order.
    pub fn spawn_each<const N: usize>(&self, roles: [&str; N]) -> [Peer; N] {
        roles.map(|r| self.spawn(r))
    }

    /// A child with one thing to say: start it playing `role`, send it `line`, wait for its answer (a line
    /// starting with `word`) and for it to exit successfully; returns the rest of the answer.
    pub fn ask(&self, role: &str, line: impl AsRef<str>, word: &str) -> String {
        let mut peer = self.spawn(role);
        peer.send(line);
        let rest = peer.expect(word);
        peer.join();
        rest
    }

    /// Start an owner and its workers (in that order) as a [`Crew`].
    pub fn crew(self, owner: &str, workers: &[&str]) -> Crew {
        let owner = self.spawn(owner);
        let workers = workers.iter().map(|w| self.spawn(w)).collect();
        Crew { sc: self, owner, workers }
    }

    /// Check that nothing was left behind: the simulator's directory is gone (the last process removed
    /// it), and the share directory, if any, is empty.
    pub fn finish(self) {
        assert_dir_gone(&self.dir);
        if let Some(share) = &self.share {
            let left: Vec<String> = std::fs::read_dir(share)
                .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "sharing left {left:?} behind");
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Leave nothing in /dev/shm even when the test failed.
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(share) = &self.share {
            let _ = std::fs::remove_dir_all(share);
        }
    }
}

/// The whole of a test: as a child, `child` plays the role the parent gave it, on its runtime; as the
/// parent, `parent` spawns the children in a fresh scenario for `test` (see [`test_name!`]).
pub fn by_role(test: String, child: impl FnOnce(&Runtime, &str), parent: impl FnOnce(Scenario)) {
    match role() {
        Some(role) => child(&runtime(), &role),
        None => parent(Scenario::new(test)),
    }
}

/// The whole of a test of an owner and its workers, started as a [`Crew`] in a scenario with a share
/// directory of its own: the child playing `owner` runs `lead` and then says `ok` (what
/// [`Crew::finish`] waits for); every other child plays `follow` with its role (the `workers`, and any
/// other the parent spawns in [`Crew::scenario`]); the parent hands the crew to `parent`.
pub fn by_crew(
    test: String,
    owner: &str,
    workers: &[&str],
    lead: impl FnOnce(&Runtime),
    follow: impl FnOnce(&Runtime, &str),
    parent: impl FnOnce(Crew),
) {
    by_role(
        test,
        |rt, role| {
            if role == owner {
                lead(rt);
                say("ok");
            } else {
                follow(rt, role);
            }
        },
        |sc| parent(sc.shared().crew(owner, workers)),
    );
}

/// Play `role`: `owner`, or `worker<device>` (`worker0`, `worker1`, ...), a worker on that device.
pub fn owner_or_worker(rt: &Runtime, role: &str, owner: impl FnOnce(&Runtime), worker: impl FnOnce(&Runtime, i32)) {
    match (role, role.strip_prefix("worker").map(str::parse)) {
        ("owner", _) => owner(rt),
        (_, Some(Ok(device))) => worker(rt, device),
        _ => panic!("no role {role:?}: `owner` or `worker<device>`"),
    }
}

/// The whole of a test that needs one process: as the child, run `body` and say `ok`; as the parent, start
/// that child in a fresh simulator directory, wait for its `ok` and its exit, and check nothing is left.
pub fn solo(test: String, body: impl FnOnce(&Runtime)) {
    solo_with(test, &[], body);
}

/// [`solo`], with extra environment for the child.
pub fn solo_with(test: String, env: &[(&str, &str)], body: impl FnOnce(&Runtime)) {
    if role().is_some() {
        let rt = runtime();
        body(&rt);
        say("ok");
        return;
    }
    let sc = Scenario::new(test);
    let mut child = sc.spawn_with("child", env);
    child.expect("ok");
    child.join();
    sc.finish();
}

/// An owner and its workers in one scenario ([`Scenario::crew`]). Lines go down from the owner to every
/// worker and up from the workers to the owner, as a script says ([`play`](Crew::play)).
pub struct Crew {
    sc: Scenario,
    /// The owner (the first child spawned).
    pub owner: Peer,
    /// The workers, in the order they were named.
    pub workers: Vec<Peer>,
}

impl Crew {
    /// Relay lines as `script` says: steps separated by commas, each `> word` (the owner's next `word`
    /// line goes to every worker, as is) or `< word` (see [`up`](Crew::up)). Words may hold spaces.
    pub fn play(&mut self, script: &str) {
        for step in script.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match step.split_at(1) {
                (">", word) => drop(self.down(word.trim())),
                ("<", word) => drop(self.up(word.trim())),
                _ => panic!("script step {step:?}: expected `> word` or `< word`"),
            }
        }
    }

    /// [`play`](Crew::play) `script`, then [`finish`](Crew::finish): the whole of a test whose conversation
    /// is a script.
    pub fn run(mut self, script: &str) {
        self.play(script);
        self.finish();
    }

    /// Pass the owner's next `word` line to every worker; returns the rest of the line.
    pub fn down(&mut self, word: &str) -> String {
        let rest = self.owner.expect(word);
        for w in &mut self.workers {
            w.send(format!("{word} {rest}"));
        }
        rest
    }

    /// Wait for every worker's next `word` line, then tell the owner `word` once, followed by what each
    /// worker said after it (in order; with one worker, the line as is). Returns what the owner was told
    /// after `word`.
    pub fn up(&mut self, word: &str) -> String {
        let rests: Vec<String> = self.workers.iter_mut().map(|w| w.expect(word)).filter(|r| !r.is_empty()).collect();
        let rest = rests.join(" ");
        self.owner.send(format!("{word} {rest}"));
        rest
    }

    /// The scenario, to spawn others in it.
    pub fn scenario(&self) -> &Scenario {
        &self.sc
    }

    /// The usual end: the owner says `ok` and exits; every worker is told `done`, says `ok` and exits (see
    /// [`when_done`]); then nothing may be left ([`Scenario::finish`]).
    pub fn finish(self) {
        let Crew { sc, mut owner, workers } = self;
        owner.expect("ok");
        owner.join();
        for w in workers {
            w.done();
        }
        sc.finish();
    }

    /// The end where the workers go first: each exits by itself, then the owner is told `done` and exits;
    /// then nothing may be left.
    pub fn release(mut self) {
        for w in self.workers.drain(..) {
            w.join();
        }
        self.owner.send("done");
        self.join();
    }

    /// [`release`](Crew::release), once every worker said its last line, `word`.
    pub fn release_after(mut self, word: &str) {
        for w in &mut self.workers {
            w.expect(word);
        }
        self.release();
    }

    /// An end already played out: every child exits by itself (workers first), then nothing may be left.
    pub fn join(self) {
        let Crew { sc, owner, workers } = self;
        for w in workers {
            w.join();
        }
        owner.join();
        sc.finish();
    }
}

/// Assert a simulator directory was removed, listing what is left if not.
pub fn assert_dir_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !dir.exists() {
            return;
        }
        if Instant::now() > deadline {
            let left: Vec<String> = std::fs::read_dir(dir)
                .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            panic!("the simulator left {} behind: {:?}", dir.display(), left);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The backend a child reported must be the one asked for.
fn check_backend(reported: &str) {
    match std::env::var("ACLSHM_BACKEND").as_deref() {
        Ok("acl") => {
            assert!(reported.starts_with("simulator (drop-in "), "ACLSHM_BACKEND=acl, but a child runs on {reported}")
        }
        Ok("sim") | Ok("") | Err(_) => {
            assert_eq!(reported, "simulator (embedded)", "a child runs on {reported}, not the embedded simulator")
        }
        Ok(other) => panic!("ACLSHM_BACKEND={other}: the tests run on `sim` (the default) or `acl` (the drop-in)"),
    }
}

/// A child process playing a role.
pub struct Peer {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    log: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
    /// The harness killed it ([`kill`](Peer::kill)): it is not expected to exit successfully.
    killed: bool,
}

impl Peer {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a line to the child.
    pub fn send(&mut self, msg: impl AsRef<str>) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if writeln!(stdin, "{}", msg.as_ref()).and_then(|_| stdin.flush()).is_err() {
            self.fail(&format!("could not send {:?}", msg.as_ref()));
        }
    }

    /// The next line from the child.
    pub fn recv(&mut self) -> String {
        match self.rx.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => self.fail("timed out waiting for a message"),
            Err(RecvTimeoutError::Disconnected) => self.fail("exited before sending the expected message"),
        }
    }

    /// The next line, which must start with `word`; returns the rest.
    pub fn expect(&mut self, word: &str) -> String {
        let line = self.recv();
        match line.strip_prefix(word) {
            Some(rest) => rest.trim_start().to_string(),
            None => self.fail(&format!("sent {line:?}, expected {word:?}")),
        }
    }

    /// Pass this child's next `word` line on to `to`, as is; returns the rest of the line.
    pub fn relay(&mut self, word: &str, to: &mut Peer) -> String {
        let rest = self.expect(word);
        to.send(format!("{word} {rest}"));
        rest
    }

    /// Tell the child it is `done`, wait for its `ok`, and for it to exit successfully.
    pub fn done(mut self) {
        self.send("done");
        self.expect("ok");
        self.join();
    }

    /// Wait for the child to exit successfully (or nothing, if the harness killed it).
    pub fn join(mut self) {
        self.wait_ok();
    }

    /// [`join`](Peer::join), keeping the peer (its stderr, its pid).
    pub fn wait_ok(&mut self) {
        let st = self.wait();
        if !st.success() && !self.killed {
            self.fail(&format!("exited with {st}"));
        }
    }

    /// Wait for the child to exit and return how.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(st) = self.exited {
            return st;
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.child.try_wait().expect("wait") {
                Some(st) => {
                    self.exited = Some(st);
                    // Give the stderr reader a moment to collect the last lines.
                    std::thread::sleep(Duration::from_millis(20));
                    return st;
                }
                None if Instant::now() > deadline => self.fail("did not exit in time"),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// SIGKILL the child and reap it.
    /// Whether the child has exited (as far as the harness knows: it was killed, or waited for).
    pub fn exited(&self) -> bool {
        self.exited.is_some()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let st = self.child.wait().expect("reap");
        self.exited = Some(st);
        self.killed = true;
    }

    /// What the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn fail(&mut self, what: &str) -> ! {
        // How it ended, if it did: a signal says more than an empty stderr.
        let how = match self.child.try_wait() {
            Ok(Some(st)) => format!(" (it {st})"),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                " (killed by the harness)".to_string()
            }
        };
        std::thread::sleep(Duration::from_millis(20));
        panic!("child {:?} {what}{how}; its stderr:\n{}", self.role, self.stderr());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
