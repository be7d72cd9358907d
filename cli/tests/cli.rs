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
        // A test may have put a file, or an unusable directory, where the simulator's directory goes.
        let _ = std::fs::remove_dir_all(&self.sim).or_else(|_| std::fs::remove_file(&self.sim));
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
fn the_demo_sleeps_and_wakes_the_shared_pool_and_every_byte_verifies_after() {
    let d = Dirs::new("demo-sleep");
    let (ok, r) = d.json(&["demo", "--workers", "2", "--blocks", "32", "--sleep", "--json"]);
    assert!(ok, "{r:#}");
    let sl = &r["sleep"];
    let chunks = r["chunks_grown"].as_u64().unwrap();
    let chunk = r["chunk_bytes"].as_u64().unwrap();
    // Every mapped chunk went to sleep; the device got their bytes back while asleep, and lent them out
    // again at the wake.
    assert_eq!(sl["chunks"].as_u64().unwrap(), chunks, "{sl}");
    assert_eq!(sl["released_bytes"].as_u64().unwrap(), chunks * chunk);
    let (before, asleep, after) =
        (sl["free_before"].as_u64().unwrap(), sl["free_asleep"].as_u64().unwrap(), sl["free_after"].as_u64().unwrap());
    assert_eq!(asleep - before, chunks * chunk, "{sl}");
    assert_eq!(after, before, "{sl}");
    assert_eq!(sl["kept_bytes"].as_u64().unwrap(), 32 * (256 << 10), "the KV contents, kept");
    assert_eq!(sl["blocks_asleep"], sl["blocks_checked"]);
    assert_eq!(sl["blocks_checked"].as_u64().unwrap(), 32);
    // Every byte written before the sleep verified after the wake.
    assert_eq!(r["bad_bytes"], 0);
    assert_eq!(r["bytes_verified"], r["bytes_written"]);
    // One export per chunk at the start and one per chunk at the wake; the same for each worker's imports.
    assert_eq!(r["exports"].as_u64().unwrap(), 2 * chunks);
    for w in r["workers"].as_array().unwrap() {
        assert_eq!(w["runtime_imports"].as_u64().unwrap(), 2 * chunks, "{w}");
    }
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

/// Every ACL function `aclshm bench` times, and the library's figures.
const BENCH_CALLS: [&str; 23] = [
    "aclrtReserveMemAddress",
    "aclrtMallocPhysical",
    "aclrtMapMem",
    "aclrtUnmapMem",
    "aclrtFreePhysical",
    "aclrtReleaseMemAddress",
    "aclrtMemExportToShareableHandle",
    "aclrtMemSetPidToShareableHandle",
    "aclrtMemImportFromShareableHandle",
    "aclrtMalloc",
    "aclrtIpcMemGetExportKey",
    "aclrtIpcMemSetImportPid",
    "aclrtIpcMemImportByKey",
    "aclrtIpcMemClose",
    "aclrtFree",
    "aclrtCreateNotify",
    "aclrtNotifyGetExportKey",
    "aclrtNotifySetImportPid",
    "aclrtNotifyImportByKey",
    "aclrtDestroyNotify",
    "aclrtRecordNotify",
    "aclrtWaitAndResetNotify",
    "aclrtSynchronizeStream",
];
const BENCH_FIGURES: [&str; 10] = [
    "Pool alloc + free",
    "KvPool alloc + free",
    "bare VMM allocation (6 calls)",
    "Pool grow + trim, one chunk",
    "bare grow + trim (4 calls)",
    "Mirror attach + close, 8 chunks",
    "Mirror attach + close, 8 chunks, pid-validated",
    "bare attach + detach, 8 chunks",
    "IPC notify round trip",
    "pipe round trip",
];

#[test]
fn bench_times_every_call_imports_in_its_peer_and_leaves_nothing() {
    let d = Dirs::new("bench");
    // The files go next to the directories, not in them (they must end empty).
    let out_dir = PathBuf::from(format!("{}.out", d.sim.display()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let (ok, r) = d.json(&["bench", "--quick", "--json", "--out", out_dir.to_str().unwrap()]);
    assert!(ok, "{r:#}");
    assert_eq!(r["quick"], true);
    assert_eq!(r["runtime"]["kind"], "simulator");
    assert_eq!(r["runtime"]["simulator_dir"].as_str().unwrap(), d.sim.to_str().unwrap());
    assert!(r["machine"]["cores"].as_u64().unwrap() > 0 && !r["machine"]["cpu"].as_str().unwrap().is_empty());
    let rows: Vec<&Value> =
        r["sections"].as_array().unwrap().iter().flat_map(|s| s["measurements"].as_array().unwrap()).collect();
    let of = |name: &str| rows.iter().filter(|m| m["name"] == name).copied().collect::<Vec<_>>();
    for name in BENCH_CALLS.iter().chain(&BENCH_FIGURES) {
        let found = of(name);
        assert!(!found.is_empty(), "{name} was not measured");
        for m in found {
            assert!(m["count"].as_u64().unwrap() > 0, "{m}");
            assert!(m["median_us"].as_f64().unwrap() > 0.0, "{m}");
            assert!(m["p10_us"].as_f64().unwrap() <= m["p90_us"].as_f64().unwrap(), "{m}");
        }
    }
    let listed: Vec<&str> = r["calls"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(BENCH_CALLS.iter().all(|c| listed.contains(c)), "{listed:?}");
    // Sized calls at every size; imports in the other process, never in the exporting one.
    for name in ["aclrtMallocPhysical", "aclrtMapMem", "aclrtMemImportFromShareableHandle", "aclrtIpcMemImportByKey"] {
        let mut sizes: Vec<u64> = of(name).iter().map(|m| m["bytes"].as_u64().unwrap()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [2 << 20, 20 << 20, 1 << 30], "{name}");
    }
    for name in ["aclrtMemImportFromShareableHandle", "aclrtIpcMemImportByKey", "aclrtNotifyImportByKey"] {
        assert!(of(name).iter().all(|m| m["process"] == "peer"), "{name}");
    }
    for name in ["Mirror attach + close, 8 chunks", "Mirror attach + close, 8 chunks, pid-validated"] {
        assert!(of(name).iter().all(|m| m["process"] == "peer"), "{name}");
    }
    // The library's figures are given against the bare calls.
    for name in
        ["Pool alloc + free", "KvPool alloc + free", "Pool grow + trim, one chunk", "Mirror attach + close, 8 chunks"]
    {
        assert!(of(name).iter().all(|m| m["ratio"].as_f64().is_some_and(|x| x > 0.0)), "{name}");
    }
    // --out: the same report, and its Markdown with one table per section.
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("bench.json")).unwrap()).unwrap();
    assert_eq!(written["calls"], r["calls"]);
    let md = std::fs::read_to_string(out_dir.join("bench.md")).unwrap();
    for s in r["sections"].as_array().unwrap() {
        assert!(md.contains(&format!("## {}\n", s["title"].as_str().unwrap())), "{md}");
    }
    assert!(md.contains("| `aclrtMemImportFromShareableHandle` | peer | 1.0 GiB |"), "{md}");
    std::fs::remove_dir_all(&out_dir).unwrap();
    d.check_empty();
}

#[test]
fn a_call_that_fails_in_the_bench_or_its_peer_ends_it_with_one_message_and_nothing_left() {
    // Each process counts its own calls: imports happen only in the peer; the 16th import is in the first
    // mirror attach (after the 14 of `--quick`'s sharing step and the ones of the first attach).
    let faults = [
        ("aclrtMapMem@2=207001", "VMM, 2.0 MiB: aclrtMapMem failed"),
        ("aclrtUnmapMem@3=507899", "aclrtUnmapMem failed"),
        ("aclrtFreePhysical@5=507899", "aclrtFreePhysical failed"),
        ("aclrtMemImportFromShareableHandle@3=207001", "the peer process: aclrtMemImportFromShareableHandle"),
        ("aclrtMemImportFromShareableHandle@16=207001", "mirror: the peer process: aclrtMemImportFromShareableHandle"),
        ("aclrtIpcMemImportByKey@2=207001", "the peer process: aclrtIpcMemImportByKey failed"),
        ("aclrtIpcMemClose@1=507899", "aclrtIpcMemClose failed"),
        ("aclrtNotifyImportByKey@2=207001", "the peer process: aclrtNotifyImportByKey failed"),
        ("aclrtCreateNotify@1=207001", "notify: aclrtCreateNotify failed"),
        ("aclrtRecordNotify@3=507899", "round trip"),
    ];
    bench_faults_fail_cleanly("benchfault", &["bench", "--quick", "--json", "--timeout", "5"], &faults);
}

/// The curves of `aclshm bench --scaling --quick`, and the x of their points.
const SCALING: [(&str, &[f64]); 4] = [
    ("attach", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
    ("growth", &[0.0, 1.0, 2.0, 4.0]),
    ("kv", &[10.0, 50.0, 90.0, 99.0]),
    ("demo", &[1.0, 2.0, 4.0]),
];

#[test]
fn bench_scaling_measures_every_curve_against_its_ideal_plots_them_and_leaves_nothing() {
    let d = Dirs::new("scaling");
    // The files go next to the directories, not in them (they must end empty).
    let out_dir = PathBuf::from(format!("{}.out", d.sim.display()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let (ok, r) = d.json(&["bench", "--scaling", "--quick", "--json", "--out", out_dir.to_str().unwrap()]);
    assert!(ok, "{r:#}");
    assert_eq!(r["quick"], true);
    assert_eq!(r["runtime"]["kind"], "simulator");
    assert!(r["machine"]["cores"].as_u64().unwrap() > 0 && !r["machine"]["cpu"].as_str().unwrap().is_empty());
    // The per-call times the ideals are made of, each timed.
    let calls = r["calls"].as_array().unwrap();
    for name in ["aclrtMemImportFromShareableHandle", "aclrtMapMem", "aclrtUnmapMem", "aclrtMemSetPidToShareableHandle"]
    {
        let c = calls.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} was not timed"));
        assert!(c["count"].as_u64().unwrap() > 0 && c["median_us"].as_f64().unwrap() > 0.0, "{c}");
    }
    let curves = r["curves"].as_array().unwrap();
    let ids: Vec<&str> = curves.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, SCALING.map(|c| c.0));
    for (c, (id, xs)) in curves.iter().zip(SCALING) {
        assert!(!c["verdict"].as_str().unwrap().is_empty() && !c["ideal"].as_str().unwrap().is_empty(), "{id}");
        let series = c["series"].as_array().unwrap();
        assert!(!series.is_empty(), "{id}");
        for s in series {
            let points = s["points"].as_array().unwrap();
            let got: Vec<f64> = points.iter().map(|p| p["x"].as_f64().unwrap()).collect();
            assert_eq!(got, xs, "{id} {}", s["name"]);
            for p in points {
                // A measured value, an ideal, and the ideal is the sum of its parts.
                assert!(p["y"].as_f64().unwrap() > 0.0 && p["count"].as_u64().unwrap() > 0, "{id}: {p}");
                let ideal = p["ideal"].as_f64().unwrap();
                assert!(ideal > 0.0 && p["ratio"].as_f64().unwrap() > 0.0, "{id}: {p}");
                let sum: f64 = p["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|q| q["count"].as_f64().unwrap() * q["each"].as_f64().unwrap())
                    .sum();
                assert!((sum - ideal).abs() <= 1e-9 * ideal, "{id}: {p}");
            }
            assert!(!s["verdict"].as_str().unwrap().is_empty(), "{id}");
        }
        // The SVG: one document, a line per series and one for the ideal.
        let svg = std::fs::read_to_string(out_dir.join(format!("scaling-{id}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{id}: {svg}");
        assert!(svg.matches("<polyline").count() > series.len(), "{id}: {svg}");
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count(), "{id}");
    }
    // The demo's points carry its own count of runtime calls, more with more workers.
    let demo: Vec<u64> = curves[3]["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["runtime_calls"].as_u64().unwrap())
        .collect();
    assert!(demo.windows(2).all(|w| w[0] < w[1]), "{demo:?}");
    // --out: the same report.
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("scaling.json")).unwrap()).unwrap();
    assert_eq!(written["calls"], r["calls"]);
    assert_eq!(written["curves"], r["curves"]);
    std::fs::remove_dir_all(&out_dir).unwrap();
    d.check_empty();
}

#[test]
fn a_call_that_fails_in_a_scaling_curve_ends_the_run_with_one_message_and_nothing_left() {
    // Each process counts its own calls. The bench process alone allocates physical memory until the
    // demo runs: 64 chunks for the attach curve, then two per growth (the pool's and the bare calls'),
    // 48 in all, then the KV pool's 128. (A pool takes ACL_ERROR_RT_MEMORY_ALLOCATION for a full device,
    // trims and tries again: the KV pool's fault is another code.)
    let faults = [
        ("aclrtMemImportFromShareableHandle@2=207001", "attach: the peer process: aclrtMemImportFromShareableHandle"),
        ("aclrtMallocPhysical@70=207001", "growth: aclrtMallocPhysical failed"),
        ("aclrtMallocPhysical@150=507899", "KV blocks: aclrtMallocPhysical failed"),
        ("aclrtMemcpy@1=207001", "demo: `aclshm demo --workers 1 --blocks 32`: "),
    ];
    bench_faults_fail_cleanly("scalingfault", &["bench", "--scaling", "--quick", "--json", "--timeout", "5"], &faults);
}

/// Run `args` once per injected fault: each run must end with status 1, one line on stderr from `aclshm
/// bench` that contains what the fault's entry says, nothing on stdout, and nothing left behind.
fn bench_faults_fail_cleanly(name: &str, args: &[&str], faults: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (i, (fault, says)) in faults.iter().enumerate() {
        let d = Dirs::new(&format!("{name}{i}"));
        let mut cmd = d.command(args);
        cmd.env("ACLSHM_SIM_FAULTS", fault);
        let r = bounded(cmd, None, HANG);
        let lines: Vec<&str> = r.stderr.lines().collect();
        if r.status.and_then(|s| s.code()) != Some(1)
            || lines.len() != 1
            || !lines[0].starts_with("aclshm bench: ")
            || !lines[0].contains(says)
            || !r.stdout.is_empty()
        {
            failures.push(format!("{fault}: {:?}, stdout {:?}, stderr {:?}", r.status, r.stdout, r.stderr));
        }
        d.check_empty();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

// ---- commands run against a deadline, and the adversarial suite ----

/// What a process run with [`bounded`] did.
struct Ran {
    /// Its exit status; `None`: it was still running at the deadline, and was killed.
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with stdin closed and stderr captured, and stdout as given (`None`: captured), killing it if
/// it is still running after `limit`: a hang is a failure to report, not a test that never ends. Its
/// data segment is capped at 2 GiB, so a command that reads without bound fails rather than taking the
/// machine's memory (device memory is shared mappings, which the cap does not count).
fn bounded(mut cmd: Command, stdout: Option<Stdio>, limit: Duration) -> Ran {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).stdout(stdout.unwrap_or_else(Stdio::piped)).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit { rlim_cur: 2 << 30, rlim_max: 2 << 30 };
            if libc::setrlimit(libc::RLIMIT_DATA, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("start aclshm");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for aclshm") {
            Some(st) => break Some(st),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    Ran { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// How long one command of the adversarial suite may run before it counts as hung: far beyond what any
/// of them takes (under a second each, alone), so only a hang reaches it.
const HANG: Duration = Duration::from_secs(120);

/// What an attack must end in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// A clear error: a non-zero status and one line on stderr that contains this.
    Error(&'static str),
    /// A valid run: status 0.
    Runs,
}

/// One attack: the command line, the trace file it reads as `TRACE` (if any), what it must end in.
struct Attack {
    args: &'static [&'static str],
    trace: Option<TraceFile>,
    expect: Expect,
}

#[derive(Clone, Copy)]
enum TraceFile {
    /// A trace with this text.
    Text(&'static str),
    /// A valid trace padded (sparsely, with NUL bytes) to one byte over the limit on trace files.
    OverLimit,
    /// A trace whose second line is one word of 1 MiB: an error that quotes it must not print it all.
    LongWord,
}

/// The limit on trace files (`aclshm tune --help` says it).
const TRACE_LIMIT: u64 = 256 << 20;

/// Check one attack's outcome; `Err` says how it failed to hold.
fn judge(a: &Attack, r: &Ran, d: &Dirs) -> Result<(), String> {
    let Some(status) = r.status else { return Err(format!("hung (killed after {HANG:?})")) };
    if r.stderr.contains("panicked") || status.code() == Some(101) {
        return Err(format!("panicked: {}", r.stderr));
    }
    if r.stderr.len() > 4096 {
        return Err(format!("{} bytes on stderr: a dump, not a message", r.stderr.len()));
    }
    // clap adds a hint after its one-line error; that is not a second message.
    let lines: Vec<&str> =
        r.stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("For more information, try")).collect();
    match a.expect {
        Expect::Error(says) => {
            if status.success() {
                return Err(format!("succeeded; stdout: {}", r.stdout));
            }
            if status.code().is_none() {
                return Err(format!("killed by a signal ({status}): {}", r.stderr));
            }
            if lines.len() != 1 {
                return Err(format!("{} message lines, not one: {:?}", lines.len(), r.stderr));
            }
            if !lines[0].contains(says) {
                return Err(format!("the message does not say {says:?}: {}", lines[0]));
            }
        }
        Expect::Runs => {
            if !status.success() {
                return Err(format!("failed ({status}): {}", r.stderr));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.sim.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if d.sim.exists() {
        return Err(format!("left the simulator directory {}", d.sim.display()));
    }
    let left: Vec<_> =
        std::fs::read_dir(&d.share).map(|it| it.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    if !left.is_empty() {
        return Err(format!("left share files {left:?}"));
    }
    Ok(())
}

/// Run every attack in its own directories; returns the failures.
fn attack_all(suite: &str, attacks: &[Attack]) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, a) in attacks.iter().enumerate() {
        let d = Dirs::new(&format!("{suite}{i}"));
        // The trace lives next to the directories, not in them (they must end empty).
        let trace = PathBuf::from(format!("{}.trace", d.sim.display()));
        match a.trace {
            Some(TraceFile::Text(t)) => std::fs::write(&trace, t).unwrap(),
            Some(TraceFile::OverLimit) => {
                std::fs::write(&trace, "aclshm-trace 1\nalloc 1 4K\nfree 1\n").unwrap();
                std::fs::OpenOptions::new().write(true).open(&trace).unwrap().set_len(TRACE_LIMIT + 1).unwrap();
            }
            Some(TraceFile::LongWord) => {
                std::fs::write(&trace, format!("aclshm-trace 1\n{}\n", "x".repeat(1 << 20))).unwrap()
            }
            None => {}
        }
        let args: Vec<&str> = a.args.iter().map(|&s| if s == "TRACE" { trace.to_str().unwrap() } else { s }).collect();
        let r = bounded(d.command(&args), None, HANG);
        let _ = std::fs::remove_file(&trace);
        if let Err(why) = judge(a, &r, &d) {
            let trace = match a.trace {
                Some(TraceFile::Text(t)) => format!(" with trace {t:?}"),
                Some(TraceFile::OverLimit) => " with a trace over the limit".to_string(),
                Some(TraceFile::LongWord) => " with a trace of a 1 MiB word".to_string(),
                None => String::new(),
            };
            failures.push(format!("attack {i}: {:?}{trace}: {why}", a.args));
        }
    }
    failures
}

fn error(args: &'static [&'static str], says: &'static str) -> Attack {
    Attack { args, trace: None, expect: Expect::Error(says) }
}

fn trace_error(text: &'static str, grid: &'static [&'static str], says: &'static str) -> Attack {
    Attack { args: grid, trace: Some(TraceFile::Text(text)), expect: Expect::Error(says) }
}

/// A small grid for replaying a trace file: one candidate for plain traces, one block size for KV ones.
const SMALL: &[&str] =
    &["tune", "--trace", "TRACE", "--chunk-sizes", "2M", "--watermarks", "none", "--reserve-chunks", "0"];
const SMALL_KV: &[&str] =
    &["tune", "--trace", "TRACE", "--chunk-sizes", "2M", "--watermarks", "none", "--block-tokens", "16"];

#[test]
fn extreme_sizes_and_counts_through_every_entry_point_are_clear_errors() {
    let attacks = [
        // demo: counts
        error(&["demo", "--workers", "0"], "workers"),
        error(&["demo", "--workers", "100000"], "workers"),
        error(&["demo", "--blocks", "0"], "--blocks 0"),
        error(&["demo", "--blocks", "18446744073709551615"], "--blocks"),
        error(&["demo", "--blocks", "4294967295"], "device 0"),
        error(&["demo", "--devices", "0"], "--devices 0"),
        error(&["demo", "--devices", "4294967295"], "--devices"),
        error(&["demo", "--timeout", "0"], "--timeout"),
        error(&["demo", "--timeout", "18446744073709551615", "--workers", "1", "--blocks", "1"], "--timeout"),
        // demo: sizes
        error(&["demo", "--block-size", "0"], "cannot be zero"),
        error(&["demo", "--block-size", "3"], "not a multiple"),
        error(&["demo", "--block-size", "16777215T"], "do not fit"),
        error(&["demo", "--block-size", "99999999999999999999G"], "too large"),
        error(&["demo", "--block-size", "12Q"], "suffix"),
        error(&["demo", "--block-size", "1E"], "suffix"),
        error(&["demo", "--block-size", "17179869184T"], "overflows"),
        error(&["demo", "--chunk-size", "1"], "2 MiB pages"),
        error(&["demo", "--chunk-size", "3M"], "2 MiB pages"),
        error(&["demo", "--chunk-size", "1T"], "device 0"),
        error(&["demo", "--chunk-size", "16777215T"], "device 0"),
        error(&["demo", "--chunk-size", "18446744073709551615"], "2 MiB pages"),
        error(&["demo", "--chunk-size", "16777214T"], "device 0"),
        // tune: the grid
        error(&["tune", "--chunk-sizes", "0"], "cannot be zero"),
        error(&["tune", "--chunk-sizes", ""], "--chunk-sizes"),
        error(&["tune", "--chunk-sizes", ","], "--chunk-sizes"),
        error(&["tune", "--chunk-sizes", "3M"], "2 MiB"),
        error(&["tune", "--chunk-sizes", "1T"], "device 0"),
        error(&["tune", "--chunk-sizes", "16777215T"], "device 0"),
        error(&["tune", "--watermarks", ""], "--watermarks"),
        error(&["tune", "--reserve-chunks", "4294967295", "--chunk-sizes", "2M"], "device 0"),
        error(&["tune", "--reserve-chunks", "-1"], "--reserve-chunks"),
        error(&["tune", "--trace", "kv", "--chunk-sizes", "2M", "--block-tokens", "64"], "every chunk size"),
        error(&["tune", "--trace", "kv", "--block-tokens", "4294967295"], "every chunk size"),
        error(&["tune", "--trace", "kv", "--block-tokens", "0"], "--block-tokens 0"),
        error(&["tune", "--trace", "kv", "--block-tokens", ""], "--block-tokens"),
        error(&["tune", "--trace", "serving", "--block-tokens", "16"], "KV traces"),
        error(&["tune", "--tolerance", "NaN"], "--tolerance"),
        error(&["tune", "--tolerance", "1e308"], "--tolerance"),
        error(&["tune", "--device=-1"], "aclrtSetDevice"),
        error(&["tune", "--device", "4294967295"], "--device"),
        // tune: files
        error(&["tune", "--trace", "/dev/zero"], "256 MiB"),
        error(&["tune", "--trace", "/nonexistent/trace"], "/nonexistent/trace"),
        error(&["tune", "--trace", "/"], "/"),
        error(&["tune", "--trace", "kv", "--write-trace", "/dev/full"], "/dev/full"),
        Attack { args: SMALL, trace: Some(TraceFile::OverLimit), expect: Expect::Error("256 MiB") },
        // tune: traces with huge ids, sizes and counts. An allocation larger than the device is refused
        // before any replay, so the pool's own overflow on 2^64 - 1 bytes (issue 17 #1) is not reached.
        trace_error("aclshm-trace 1\nalloc 1 18446744073709551615\n", SMALL, "device 0"),
        trace_error("aclshm-trace 1\nalloc 1 16777215T\n", SMALL, "device 0"),
        trace_error("aclshm-trace 1\nalloc 1 18446744073709551616\n", SMALL, "not a positive size"),
        trace_error("aclshm-trace 1\nalloc 18446744073709551616 4K\n", SMALL, "not an id"),
        trace_error("aclshm-trace 1\nalloc 1 9223372036854775808\nalloc 2 9223372036854775808\n", SMALL, "2^64"),
        trace_error("aclshm-trace 1\nkv-token-bytes 16777215T\nkv-alloc 1 1\n", SMALL_KV, "every chunk size"),
        trace_error("aclshm-trace 1\nkv-token-bytes 1K\nkv-alloc 1 18446744073709551615\n", SMALL_KV, "2^64"),
        trace_error("aclshm-trace 1\nkv-token-bytes 1K\nkv-alloc 1 1099511627776\n", SMALL_KV, "device 0"),
        trace_error(
            "aclshm-trace 1\nkv-token-bytes 1K\nkv-alloc 1 1\nkv-extend 1 18446744073709551615\n",
            SMALL_KV,
            "2^64",
        ),
        Attack { args: SMALL, trace: Some(TraceFile::LongWord), expect: Expect::Error("unknown operation") },
        Attack {
            args: SMALL,
            trace: Some(TraceFile::Text("aclshm-trace 1\nalloc 18446744073709551615 4K\nfree 18446744073709551615\n")),
            expect: Expect::Runs,
        },
        Attack {
            args: &["tune", "--trace", "kv", "--chunk-sizes", "2M,8M", "--watermarks", "none", "--block-tokens", "64"],
            trace: None,
            expect: Expect::Runs,
        },
        // bench
        error(&["bench", "--device", "9"], "--device 9: the runtime has 2"),
        error(&["bench", "--peer-device=-1"], "--peer-device -1"),
        error(&["bench", "--timeout", "0"], "--timeout"),
        error(&["bench", "--scaling", "--device", "9"], "--device 9: the runtime has 2"),
        error(&["bench", "--scaling", "--quick", "--peer-device", "2"], "--peer-device 2"),
        error(&["bench", "--backend", "acl", "--acl-lib", "/nonexistent/libascendcl.so"], "no ACL runtime"),
        // info and sim: a runtime that is not there
        error(&["info", "--backend", "acl", "--acl-lib", "/nonexistent/libascendcl.so"], "no ACL runtime"),
        error(&["sim", "status", "--backend", "acl", "--acl-lib", "/dev/zero"], "no ACL runtime"),
        error(&["sim", "clean", "--backend", "acl", "--acl-lib", "/nonexistent/libascendcl.so"], "no ACL runtime"),
    ];
    let failures = attack_all("adv", &attacks);
    println!("cli adversarial: {} attacks tried, {} held", attacks.len(), attacks.len() - failures.len());
    assert!(failures.is_empty(), "{} attack(s) got through:\n{}", failures.len(), failures.join("\n"));
}

// ---- stdout and stderr that fail ----

/// `/dev/full`: every write fails with ENOSPC.
fn full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full"))
}

/// A pipe whose reader is closed before the command starts: every write fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_full_or_closed_stdout_ends_every_command_cleanly_never_in_a_panic() {
    let tune = &["tune", "--chunk-sizes", "64M", "--watermarks", "none", "--reserve-chunks", "0"];
    let tune_json = &["tune", "--chunk-sizes", "64M", "--watermarks", "none", "--reserve-chunks", "0", "--json"];
    let commands: [&[&str]; 16] = [
        &["info"],
        &["info", "--json"],
        &["sim", "status"],
        &["sim", "status", "--json"],
        &["sim", "clean"],
        &["sim", "clean", "--json"],
        tune,
        tune_json,
        &["demo", "--workers", "1", "--blocks", "1"],
        &["demo", "--workers", "1", "--blocks", "1", "--json"],
        &["bench", "--quick"],
        &["bench", "--quick", "--json"],
        &["bench", "--scaling", "--quick"],
        &["--help"],
        &["--version"],
        &["tune", "--help"],
    ];
    let mut failures = Vec::new();
    for (i, args) in commands.iter().enumerate() {
        let d = Dirs::new(&format!("stdout{i}"));
        let r = bounded(d.command(args), Some(full()), HANG);
        let said = "aclshm: cannot write to stdout: No space left on device (os error 28)\n";
        if r.status.and_then(|s| s.code()) != Some(1) || r.stderr != said {
            failures.push(format!("{args:?} > /dev/full: {:?}, stderr {:?}", r.status, r.stderr));
        }
        let r = bounded(d.command(args), Some(closed_pipe()), HANG);
        if !r.status.is_some_and(|s| s.success()) || !r.stderr.is_empty() {
            failures.push(format!("{args:?} | (closed): {:?}, stderr {:?}", r.status, r.stderr));
        }
        d.check_empty();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_reader_that_goes_away_after_one_line_ends_the_command_quietly() {
    let d = Dirs::new("head");
    std::fs::create_dir_all(&d.share).unwrap();
    // Far more output than a pipe holds, so the command is still writing when the reader goes.
    for i in 0..3000 {
        std::fs::write(d.share.join(format!("not-a-share-file-{i:05}-{}", "x".repeat(40))), "").unwrap();
    }
    let mut child = d.command(&["sim", "status"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("simulator directory:"), "{line}");
    drop(out); // as `head -1` does
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "`aclshm sim status` hung after its reader went away");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
    std::fs::remove_dir_all(&d.share).unwrap();
    d.check_empty();
}

#[test]
fn a_full_stderr_makes_neither_the_command_nor_a_demo_worker_panic() {
    let d = Dirs::new("stderr");
    let run = |args: &[&str], stdout: Stdio| {
        let mut c = d.command(args);
        c.stdin(Stdio::null()).stdout(stdout).stderr(full());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // The error message cannot be written: the command still fails with status 1, not a panic's 101.
    assert_eq!(run(&["tune", "--trace", "/nonexistent/trace"], Stdio::null()).code(), Some(1));
    // The demo fails (a spoilt byte) and says so on stderr.
    assert_eq!(run(&["demo", "--workers", "1", "--blocks", "1", "--spoil-one-byte"], Stdio::null()).code(), Some(1));
    // A worker whose scheduler is gone (stdin closed) reports it on stdout and stderr, both full.
    let worker = ["demo-worker", "--index", "0", "--device", "0", "--kv", "nonsense"];
    assert_eq!(run(&worker, full()).code(), Some(1));
    d.check_empty();
}

/// A pseudo-terminal: its master side and its terminal.
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: libc calls on a descriptor this function opens and then owns; ptsname_r writes at most
    // `name.len()` bytes into `name`, which `open` then reads as a NUL-terminated path.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master_file = std::fs::File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let term = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(term >= 0, "open the terminal: {}", std::io::Error::last_os_error());
        (master_file, std::fs::File::from_raw_fd(term))
    }
}

#[test]
fn progress_bars_on_a_terminal_that_hangs_up_mid_run_do_not_fail_the_demo() {
    use std::io::Read;
    let d = Dirs::new("pty");
    let (mut master, term) = pty();
    let mut c = d.command(&["demo", "--workers", "2", "--blocks", "64"]);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(term);
    let child = c.spawn().unwrap();
    drop(c); // our copy of the terminal: the demo's stderr is its only one now
    let mut drawn = [0u8; 64];
    let n = master.read(&mut drawn).unwrap_or(0);
    drop(master); // the terminal hangs up: every later draw fails (EIO)
    let out = child.wait_with_output().unwrap();
    assert!(n > 0, "the demo drew no progress bar on a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("ok: every byte verified"), "{}: {text}", out.status);
    d.check_empty();
}

// ---- a simulator directory the simulator refuses ----

/// A private simulator directory at `dir` whose registry holds `text` with `mode`: the registry's path.
fn with_registry(dir: &Path, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
    let r = dir.join("registry");
    std::fs::write(&r, text).unwrap();
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(mode)).unwrap();
    r
}

#[test]
fn sim_status_and_clean_say_why_the_simulator_directory_is_unusable() {
    type Setup = fn(&Path);
    let mut cases: Vec<(&str, Setup, &str)> = vec![
        ("file", |p| std::fs::write(p, "not a directory").unwrap(), "exists and is not a directory"),
        ("registry", |p| drop(with_registry(p, "anyone could have written this", 0o644)), "mode 644"),
    ];
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Root can make a registry that belongs to another user.
        cases.push((
            "other-user",
            |p| std::os::unix::fs::chown(with_registry(p, "another user's", 0o600), Some(65534), Some(65534)).unwrap(),
            "owned by uid 65534",
        ));
    }
    for (name, setup, says) in cases {
        let d = Dirs::new(&format!("unusable-{name}"));
        setup(&d.sim);
        for args in [&["sim", "status"][..], &["sim", "status", "--json"], &["sim", "clean"], &["info"]] {
            let r = bounded(d.command(args), None, HANG);
            assert_eq!(r.status.and_then(|s| s.code()), Some(1), "{name}: {args:?}: {}", r.stderr);
            assert!(r.stderr.contains(says) && !r.stderr.contains("panicked"), "{name}: {args:?}: {}", r.stderr);
        }
    }
}
