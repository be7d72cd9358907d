//! Cross-process test harness: a test re-executes its own binary with a role in the environment (the
//! servo/ipc-channel pattern), once per process it needs.
//!
//! A test starts with `if let Some(role) = role() { ... }` and plays that role when it is a child; as the
//! parent it makes a [`Scenario`] (a fresh simulator directory), spawns [`Peer`]s and exchanges lines with
//! them: a child [`say`]s on stdout (lines prefixed `@@ `) and [`hear`]s on stdin. The parent never uses
//! the simulator itself, so tests can run in parallel threads of one process or under nextest alike.
//! Every wait has a timeout, and [`Scenario::finish`] checks the directory is gone once every child exited.
//!
//! Set `ACLSHM_BACKEND=acl ACLSHM_ACL_LIB=<libascendcl.so>` to run every child through the drop-in library
//! instead of the embedded simulator; each child reports its backend and the parent checks it is the one
//! asked for.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Bytes of a recognisable pattern: `len` bytes from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write `data` to device address `dst`.
pub fn write_dev(rt: &Runtime, dst: *mut std::ffi::c_void, data: &[u8]) -> aclshm::Result<()> {
    // SAFETY: data is a host buffer of data.len() bytes; dst is device memory the test mapped.
    unsafe {
        raw::memcpy(
            rt,
            dst,
            data.len(),
            data.as_ptr().cast(),
            data.len(),
            aclshm::sys::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        )
    }
}

/// Read `len` bytes from device address `src`.
pub fn read_dev(rt: &Runtime, src: *const std::ffi::c_void, len: usize) -> aclshm::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    // SAFETY: out is a host buffer of len bytes; src is device memory the test mapped.
    unsafe {
        raw::memcpy(
            rt,
            out.as_mut_ptr().cast(),
            len,
            src,
            len,
            aclshm::sys::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
        )?
    };
    Ok(out)
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

pub fn calls_since(before: &[(&'static str, u64)], after: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    before.iter().zip(after).filter(|(b, a)| a.1 > b.1).map(|(b, a)| (b.0, a.1 - b.1)).collect()
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
        let mut peer = Peer { role: role.to_string(), child, stdin, rx, log, exited: None };
        let backend = peer.expect("backend");
        check_backend(&backend);
        peer
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

    /// Send `msg` to each of `peers` in turn, waiting for each one's `reply` before the next.
    pub fn tell_each(peers: &mut [&mut Peer], msg: &str, reply: &str) {
        for p in peers.iter_mut() {
            p.send(msg);
            p.expect(reply);
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

    /// Wait for the child to exit successfully.
    pub fn join(mut self) {
        let st = self.wait();
        if !st.success() {
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
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let st = self.child.wait().expect("reap");
        self.exited = Some(st);
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
