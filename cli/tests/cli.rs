//! The `aclshm` command, run as a user runs it: each test in a simulator directory and a share directory
//! of its own, checked empty at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A private simulator directory and share directory, removed when dropped.
struct Dirs {
    sim: PathBuf,
    share: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let sim = base.join(format!("aclshm-clitest-{name}-{}", std::process::id()));
        let share = PathBuf::from(format!("{}-share", sim.display()));
        let _ = std::fs::remove_dir_all(&sim);
        let _ = std::fs::remove_dir_all(&share);
        Dirs { sim, share }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aclshm"));
        c.args(args)
            .env("ACLSHM_SIM_DIR", &self.sim)
            .env("ACLSHM_SHARE_DIR", &self.share)
            .env("ACLSHM_BACKEND", "sim")
            .env_remove("ACLSHM_ACL_LIB");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run aclshm")
    }

    fn json(&self, args: &[&str]) -> (bool, Value) {
        let out = self.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{args:?} printed no JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
        });
        (out.status.success(), v)
    }

    /// Nothing left: the simulator's directory is gone, the share directory empty.
    fn check_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sim.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!self.sim.exists(), "the simulator left {:?}", std::fs::read_dir(&self.sim).map(|d| d.count()));
        let left: Vec<_> =
            std::fs::read_dir(&self.share).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "sharing left {left:?}");
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.sim);
        let _ = std::fs::remove_dir_all(&self.share);
    }
}

#[test]
fn the_demo_verifies_every_byte_across_processes_and_leaves_nothing() {
    let d = Dirs::new("demo");
    let (ok, r) = d.json(&["demo", "--workers", "3", "--blocks", "48", "--json"]);
    assert!(ok, "{r:#}");
    assert_eq!(r["ok"], true);
    let written = r["bytes_written"].as_u64().unwrap();
    assert_eq!(written, 48 * (256 << 10));
    assert_eq!(r["bytes_verified"].as_u64().unwrap(), written);
    assert_eq!(r["bad_bytes"], 0);
    let workers = r["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let chunks = r["chunks_grown"].as_u64().unwrap();
    assert_eq!(r["exports"].as_u64().unwrap(), chunks, "one export per chunk");
    for w in workers {
        // Every chunk imported once by each worker, through the registry and the runtime alike.
        assert_eq!(w["runtime_imports"].as_u64().unwrap(), chunks, "{w}");
        assert_eq!(w["imports"].as_u64().unwrap(), chunks, "{w}");
    }
    assert_eq!(r["deferred_while_pinned"].as_u64().unwrap(), 48, "every block was pinned by a reader when freed");
    assert_eq!(r["chunks_trimmed"].as_u64().unwrap(), chunks);
    let devices: Vec<u64> = workers.iter().map(|w| w["device"].as_u64().unwrap()).collect();
    assert_eq!(devices, vec![0, 1, 0], "spread over the devices");
    d.check_empty();
}

#[test]
fn a_byte_that_does_not_verify_fails_the_demo() {
    let d = Dirs::new("spoilt");
    let (ok, r) = d.json(&["demo", "--workers", "2", "--blocks", "8", "--json", "--spoil-one-byte"]);
    assert!(!ok, "the demo passed with a spoilt byte");
    assert_eq!(r["ok"], false);
    assert_eq!(r["bad_bytes"], 1);
    assert!(r["error"].as_str().unwrap().contains("did not verify"), "{r:#}");
    d.check_empty();
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let d = Dirs::new("options");
    for (args, says) in [
        (&["demo", "--devices", "9"][..], "the runtime has 2"),
        (&["demo", "--block-size", "100"][..], "not a multiple"),
        (&["demo", "--workers", "0"][..], "workers"),
        (&["demo", "--blocks", "2"][..], "at least one per worker"),
        (&["demo", "--block-size", "12Q"][..], "suffix"),
    ] {
        let out = d.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    d.check_empty();
}

#[test]
fn info_describes_the_simulator() {
    let d = Dirs::new("info");
    let (ok, v) = d.json(&["info", "--json"]);
    assert!(ok);
    assert_eq!(v["backend"], "simulator (embedded)");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    assert_eq!(v["simulator"]["dir"].as_str().unwrap(), d.sim.to_str().unwrap());
    d.check_empty();
}

/// A process that allocates device memory and waits to be killed (this test binary, re-run).
const HOLDER: &str = "ACLSHM_CLITEST_HOLDER";

#[test]
fn sim_status_shows_what_a_dead_process_left_and_clean_reclaims_it() {
    if std::env::var_os(HOLDER).is_some() {
        let rt = aclshm::Runtime::from_env().unwrap();
        aclshm::raw::set_device(&rt, 0).unwrap();
        let _p =
            aclshm::raw::malloc(&rt, 4 << 20, aclshm::sys::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST).unwrap();
        println!("holding");
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let d = Dirs::new("clean");
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["sim_status_shows_what_a_dead_process_left_and_clean_reclaims_it", "--exact", "--nocapture", "-q"])
        .env(HOLDER, "1")
        .env("ACLSHM_SIM_DIR", &d.sim)
        .env("ACLSHM_BACKEND", "sim")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the holder exited");
    }
    let pid = holder.id() as i64;
    let (_, s) = d.json(&["sim", "status", "--json"]);
    let find = |s: &Value| s["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).cloned();
    let p = find(&s).expect("the holder is listed");
    assert_eq!((p["alive"].as_bool(), p["phys_allocated"].as_u64()), (Some(true), Some(1)));
    // The runtime pads aclrtMalloc allocations (32 bytes), so 4 MiB takes three 2 MiB pages.
    assert!(p["bytes_allocated"].as_u64().unwrap() >= 4 << 20, "{p}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (_, s) = d.json(&["sim", "status", "--json"]);
    let p = find(&s).expect("a dead process stays listed until reclaimed");
    assert_eq!((p["alive"].as_bool(), p["phys_allocated"].as_u64()), (Some(false), Some(1)));
    let (ok, c) = d.json(&["sim", "clean", "--json"]);
    assert!(ok);
    assert_eq!(c["reclaimed_processes"], 1);
    assert!(find(&c["after"]).is_none(), "{c:#}");
    d.check_empty();
}

#[test]
fn tune_recommends_differently_for_a_model_server_and_a_kv_cache_and_writes_loadable_files() {
    let d = Dirs::new("tune");
    std::fs::create_dir_all(&d.share).unwrap();
    let mut chunks = Vec::new();
    for trace in ["serving", "kv"] {
        let (cfg, js, svg) = (
            d.share.join(format!("{trace}.conf")),
            d.share.join(format!("{trace}.json")),
            d.share.join(format!("{trace}.svg")),
        );
        let out = d.run(&[
            "tune",
            "--trace",
            trace,
            "--out-config",
            cfg.to_str().unwrap(),
            "--out-json",
            js.to_str().unwrap(),
            "--out-svg",
            svg.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("recommended:"), "{text}");
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
        let outcomes = r["outcomes"].as_array().unwrap();
        assert!(outcomes.len() > 20, "a whole grid");
        assert_eq!(outcomes[0]["rank"], 1);
        assert_eq!(r["recommended"], outcomes[0]);
        // Every candidate made runtime calls (growth) and mapped memory.
        assert!(
            outcomes.iter().all(|o| o["runtime_calls"].as_u64().unwrap() > 0 && o["peak_mapped"].as_u64().unwrap() > 0)
        );
        let pool = aclshm::PoolConfig::load(&cfg).unwrap();
        assert_eq!(pool.chunk_bytes, r["recommended"]["chunk_bytes"].as_u64().unwrap());
        if trace == "kv" {
            let kv = aclshm::KvConfig::load(&cfg, aclshm::ShareConfig::default()).unwrap();
            assert_eq!(
                kv.block_bytes,
                128 << 10 << r["recommended"]["block_tokens"].as_u64().unwrap().trailing_zeros()
            );
        } else {
            assert!(aclshm::KvConfig::load(&cfg, aclshm::ShareConfig::default()).is_err(), "not a KV configuration");
        }
        assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
        chunks.push(pool.chunk_bytes);
    }
    // Model weights dominate the server's memory, so larger chunks cost nothing and save runtime calls; a
    // KV cache under a load that rises and falls keeps more memory with larger chunks.
    assert!(chunks[0] > chunks[1], "serving chose {} MiB chunks, kv {} MiB", chunks[0] >> 20, chunks[1] >> 20);
    std::fs::remove_dir_all(&d.share).unwrap();
    d.check_empty();
}

#[test]
fn tune_refuses_a_bad_trace_naming_the_line() {
    let d = Dirs::new("badtrace");
    std::fs::create_dir_all(&d.share).unwrap();
    let t = d.share.join("t.trace");
    std::fs::write(&t, "aclshm-trace 1\nalloc 1 4K\nfree 2\n").unwrap();
    let out = d.run(&["tune", "--trace", t.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t.trace:3: id 2 is not live"), "{err}");
    // A built-in trace written out reads back as a trace file.
    let w = d.share.join("kv.trace");
    assert!(d.run(&["tune", "--trace", "kv", "--write-trace", w.to_str().unwrap()]).status.success());
    let back = aclshm::tune::Trace::load(&w).unwrap();
    assert_eq!(back.ops, aclshm::tune::Trace::builtin("kv").unwrap().ops);
    std::fs::remove_dir_all(&d.share).unwrap();
    d.check_empty();
}
