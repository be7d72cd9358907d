//! `aclshm bench --scaling`: how what aclshm does grows with scale, each curve drawn beside its *ideal*:
//! the cost it would have if it grew only with the runtime calls it needs, computed from per-call times
//! measured in the same run.
//!
//! ```text
//!   curve    x                         y (median)                  ideal
//!   attach   chunks of a shared pool   peer: Mirror attach +       reserve + release + N x (import + map +
//!            (1 .. 1024, 2 MiB each)   close, ms                   unmap + free [peer] + set-pid [bench])
//!   growth   mirrors attached          bench: an allocation that   malloc + map + export + M x set-pid,
//!            (0 .. 16 peer processes)  maps one more chunk, ms     the bare calls timed at the same M
//!   kv       pool occupancy (10 .. 99  KvPool alloc + free, ns     flat: the 1-thread figure at the
//!            %), 1 and 2 threads       per pair and thread         lowest occupancy (no runtime call)
//!   demo     workers (1 .. 16)         `aclshm demo` wall time,    T(1) + the runtime calls added since
//!                                      ms                          1 worker x their per-call times
//! ```
//!
//! `bench` is this process, owner of every pool; `peer`s are children of this program
//! (`aclshm bench-peer`, see `bench.rs`) that import, as the runtime requires: peer 0 attaches in the
//! attach curve and times one chunk's calls (then again at the end of the growth curve, with every peer
//! running: the per-call costs that depend on how many processes share the runtime show there); peers
//! 0..M each hold a mirror in the growth curve. The peers are gone before the demo curve, which runs
//! `aclshm demo --json` as a child process and reads its summary of runtime calls.
//!
//! Between two timed growths the owner trims the chunk and waits until every mirror followed (mapped
//! it, then let it go) and the owner freed it, so no follower works while the next one is timed.
//!
//! Nothing is left behind on any path: pools are closed (or dropped, which releases them) in this
//! process, bare calls go through [`Holdings`], peers are told to go (and killed if they do not, their
//! leftovers reclaimed on the simulator), and a demo that does not end in time is killed likewise.

use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::ptr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use aclshm::share::published_handles;
use aclshm::sys::aclrtMemAttr;
use aclshm::vmm::{PageSize, device_prop};
use aclshm::{KvBlock, KvConfig, KvPool, Pool, PoolConfig, Runtime, RuntimeInfo, ShareConfig, ShareDesc, raw};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;

use crate::bench::{self, BenchArgs, Held, Holdings, Peer, Run, e, quantile, ratio, time, us};
use crate::out::{self, outln};
use crate::report::{Table, bytes};
use crate::svg::{self, Axis, Mark, Plot, Scale, Series};

const MIB: u64 = 1 << 20;
/// The chunks of every pool here.
const CHUNK: u64 = 2 * MIB;
/// KV blocks: 256 KiB, 8 a chunk; 1024 of them make the pool (128 chunks, 256 MiB).
const KV_BLOCK: u64 = 256 << 10;
const KV_BLOCKS: u32 = 1024;
/// KV pairs timed together (one alone is shorter than the clock's overhead).
const KV_BATCH: u32 = 1000;
/// Room left on the device besides the pools.
const SLACK: u64 = 64 * MIB;

/// What a run measures: the points of each curve and the repetitions.
struct Plan {
    quick: bool,
    chunks: Vec<u32>,
    mirrors: Vec<u32>,
    /// Percent of the KV pool's blocks allocated before timing.
    occupancy: [u32; 4],
    threads: [usize; 2],
    workers: Vec<u32>,
    /// Repetitions of each call of one chunk (and of the owner's whitelisting).
    call_reps: u32,
    growth_reps: u32,
    kv_samples: u32,
    demo_reps: u32,
    /// `--blocks` for the demo, if not its default (256).
    demo_blocks: Option<u32>,
}

/// 1, 2, 4, ... up to `max`.
fn doubling(max: u32) -> Vec<u32> {
    std::iter::successors(Some(1u32), |&n| n.checked_mul(2)).take_while(|&n| n <= max).collect()
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let common = |chunks, mirrors, workers| Plan {
            quick,
            chunks,
            mirrors,
            occupancy: [10, 50, 90, 99],
            threads: [1, 2],
            workers,
            call_reps: if quick { 10 } else { 400 },
            growth_reps: if quick { 5 } else { 200 },
            kv_samples: if quick { 10 } else { 300 },
            demo_reps: if quick { 1 } else { 9 },
            // A debug build writes and checks 64 MiB slowly: --quick is a check, not a figure.
            demo_blocks: quick.then_some(32),
        };
        if quick {
            common(doubling(64), vec![0, 1, 2, 4], doubling(4))
        } else {
            common(doubling(1024), vec![0, 1, 2, 4, 8, 16], doubling(16))
        }
    }

    /// Attaches timed at `n` chunks: about the same total work at every point, within 20 to 400 (3 with
    /// --quick).
    fn attach_reps(&self, n: u32) -> u32 {
        if self.quick { 3 } else { (8192 / n.max(1)).clamp(20, 400) }
    }

    fn points(&self) -> u64 {
        (self.chunks.len() + self.mirrors.len() + self.occupancy.len() + self.workers.len()) as u64
    }
}

// ---- figures ----

/// Median, p10, p90 and count of samples.
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    median: f64,
    p10: f64,
    p90: f64,
    count: usize,
}

fn stat(samples: &[f64]) -> Stat {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Stat { median: quantile(&v, 0.5), p10: quantile(&v, 0.1), p90: quantile(&v, 0.9), count: v.len() }
}

fn ms(d: &[Duration]) -> Vec<f64> {
    d.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// Per-call times (microseconds), by call and process, the ideals are made of.
#[derive(Default)]
struct Calls {
    samples: Vec<(&'static str, String, Vec<f64>)>,
}

impl Calls {
    fn add(&mut self, name: &'static str, process: String, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        match self.samples.iter_mut().find(|s| s.0 == name && s.1 == process) {
            Some(s) => s.2.push(us),
            None => self.samples.push((name, process, vec![us])),
        }
    }

    /// The median of a call, in milliseconds.
    fn ms(&self, name: &str, process: &str) -> f64 {
        self.samples.iter().find(|s| s.0 == name && s.1 == process).map_or(0.0, |s| stat(&s.2).median / 1e3)
    }

    fn json(&self) -> Vec<CallJson> {
        self.samples
            .iter()
            .map(|(name, process, v)| {
                let s = stat(v);
                CallJson {
                    name,
                    process: process.clone(),
                    bytes: name.starts_with("acl").then_some(CHUNK),
                    count: s.count,
                    median_us: s.median,
                    p10_us: s.p10,
                    p90_us: s.p90,
                }
            })
            .collect()
    }
}

/// The peer's calls of one chunk, in the order `chunk-calls` answers them.
const CHUNK_CALLS: [&str; 6] = [
    "aclrtReserveMemAddress",
    "aclrtMemImportFromShareableHandle",
    "aclrtMapMem",
    "aclrtUnmapMem",
    "aclrtFreePhysical",
    "aclrtReleaseMemAddress",
];
const SET_PID: &str = "aclrtMemSetPidToShareableHandle";
/// Not a runtime call: starting a peer process until it answers (exec, loading the runtime, setting its
/// device, getting its pid), as each of the demo's workers starts.
const PEER_START: &str = "peer process start (spawn to its first answer)";

// ---- the report ----

/// The report, as `--json` prints it and `--out` writes it (scaling.json).
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    run: Run,
    /// The per-call times the attach and demo ideals are made of (one 2 MiB chunk each), and what starting
    /// a peer process took (not a runtime call: what the demo's ideal leaves out for each worker).
    calls: Vec<CallJson>,
    curves: Vec<Curve>,
}

#[derive(Debug, Serialize)]
struct CallJson {
    name: &'static str,
    /// `bench` or `peer`; `peer, N processes` for the calls timed again with N processes running.
    process: String,
    /// The size, for calls that take one.
    bytes: Option<u64>,
    count: usize,
    median_us: f64,
    p10_us: f64,
    p90_us: f64,
}

/// One curve: its series against their ideals.
#[derive(Debug, Serialize)]
struct Curve {
    /// `attach`, `growth`, `kv`, `demo`: the SVG is `scaling-<id>.svg`.
    id: &'static str,
    title: &'static str,
    /// What is measured, and how.
    about: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    /// Which axes the plot draws in log scale (where the values span a decade or more).
    x_log: bool,
    y_log: bool,
    /// How the ideal is derived, and its name in the plot's legend.
    ideal: &'static str,
    ideal_label: &'static str,
    series: Vec<SeriesJson>,
    /// Where the measured cost grows faster than the ideal, in words.
    verdict: String,
}

#[derive(Debug, Serialize)]
struct SeriesJson {
    name: &'static str,
    points: Vec<Point>,
    /// Measured over ideal at the smallest x, at the largest, and the least of all.
    ratio_first: f64,
    ratio_last: f64,
    ratio_min: f64,
    growth: Growth,
    verdict: String,
}

/// How a series grows against its ideal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Growth {
    /// Its ratio to the ideal ends above 1.25 times its least.
    Faster,
    /// Its ratio ends below 0.8 times its first (a fixed cost spread over more work).
    Slower,
    /// Neither.
    AsIdeal,
}

/// One point: the median of the samples (p10, p90), the ideal, and what the ideal is made of.
#[derive(Debug, Serialize)]
struct Point {
    x: f64,
    y: f64,
    p10: f64,
    p90: f64,
    count: usize,
    ideal: f64,
    /// y over ideal.
    ratio: f64,
    /// The ideal is the sum of these: `count` times `each` (in y's unit).
    parts: Vec<Part>,
    /// Runtime calls the measured run made in all (the demo's own count).
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_calls: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct Part {
    what: String,
    count: f64,
    each: f64,
}

fn part(what: impl Into<String>, count: impl Into<f64>, each: f64) -> Part {
    Part { what: what.into(), count: count.into(), each }
}

fn point(x: f64, s: Stat, parts: Vec<Part>) -> Point {
    let ideal: f64 = parts.iter().map(|p| p.count * p.each).sum();
    let ratio = if ideal > 0.0 { s.median / ideal } else { 0.0 };
    Point { x, y: s.median, p10: s.p10, p90: s.p90, count: s.count, ideal, ratio, parts, runtime_calls: None }
}

/// The verdict on one series: where, if anywhere, its ratio to the ideal climbs (`at` names an x).
fn judge(points: &[Point], at: &dyn Fn(f64) -> String) -> (Growth, String, f64) {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return (Growth::AsIdeal, "no point measured".into(), 0.0);
    };
    let (k, least) =
        points.iter().enumerate().fold((0, first), |m, (i, p)| if p.ratio < m.1.ratio { (i, p) } else { m });
    let (r0, rmin, r1) = (first.ratio, least.ratio, last.ratio);
    // Far above the ideal everywhere: said first, whatever the shape.
    let above = if rmin >= 1.5 { format!("{} the ideal or more at every point; ", ratio(rmin)) } else { String::new() };
    if r1 > 1.25 * rmin && k + 1 < points.len() {
        let from = (k + 1..points.len()).find(|&i| points[i..].iter().all(|p| p.ratio > 1.25 * rmin)).unwrap_or(k + 1);
        let spread = if k > 0 && r0 > 1.25 * rmin {
            format!("a fixed cost spread out up to {}, then ", at(least.x))
        } else {
            String::new()
        };
        let text = format!(
            "{above}{spread}grows faster than the ideal from {} on: {} the ideal at {}, {} at {}",
            at(points[from].x),
            ratio(rmin),
            at(least.x),
            ratio(r1),
            at(last.x)
        );
        (Growth::Faster, text, rmin)
    } else if r1 < 0.8 * r0 {
        let text = format!(
            "{above}grows slower than the ideal (a fixed cost spread over more work): {} the ideal at {}, {} at {}",
            ratio(r0),
            at(first.x),
            ratio(r1),
            at(last.x)
        );
        (Growth::Slower, text, rmin)
    } else {
        let text = format!(
            "{above}grows as the ideal: {} the ideal at {}, {} at {}",
            ratio(r0),
            at(first.x),
            ratio(r1),
            at(last.x)
        );
        (Growth::AsIdeal, text, rmin)
    }
}

/// A curve from its series (name, points); `at` names an x in the verdicts.
fn curve(
    id: &'static str,
    title: &'static str,
    about: &'static str,
    (x_label, y_label): (&'static str, &'static str),
    (ideal, ideal_label): (&'static str, &'static str),
    series: Vec<(&'static str, Vec<Point>)>,
    at: &dyn Fn(f64) -> String,
) -> Curve {
    let series: Vec<SeriesJson> = series
        .into_iter()
        .map(|(name, points)| {
            let (growth, verdict, ratio_min) = judge(&points, at);
            let ratio_first = points.first().map_or(0.0, |p| p.ratio);
            let ratio_last = points.last().map_or(0.0, |p| p.ratio);
            SeriesJson { name, points, ratio_first, ratio_last, ratio_min, growth, verdict }
        })
        .collect();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.x));
    let ys = series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.y, p.ideal]));
    let verdict = series.iter().map(|s| format!("{}: {}", s.name, s.verdict)).collect::<Vec<_>>().join("; ");
    Curve {
        id,
        title,
        about,
        x_label,
        y_label,
        x_log: Scale::fitting(xs.collect::<Vec<_>>()) == Scale::Log,
        y_log: Scale::fitting(ys.collect::<Vec<_>>()) == Scale::Log,
        ideal,
        ideal_label,
        series,
        verdict,
    }
}

/// The curve's plot: each series solid, each distinct ideal dashed beside it.
fn plot(c: &Curve, subtitle: &str) -> String {
    let mut series = Vec::new();
    // Named after their series until it is known whether there is more than one.
    let mut ideals: Vec<Series> = Vec::new();
    for (i, s) in c.series.iter().enumerate() {
        let color = svg::COLORS[i % svg::COLORS.len()];
        series.push(Series {
            name: s.name.to_string(),
            color,
            mark: Mark::Line,
            points: s.points.iter().map(|p| (p.x, p.y)).collect(),
            tips: s
                .points
                .iter()
                .map(|p| format!("{} at {}: {} {} ({} the ideal)", s.name, p.x, us(p.y), c.y_label, ratio(p.ratio)))
                .collect(),
        });
        let points: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x, p.ideal)).collect();
        if !ideals.iter().any(|i| i.points == points) {
            ideals.push(Series { name: s.name.to_string(), color, mark: Mark::Dashed, points, tips: Vec::new() });
        }
    }
    let one = ideals.len() == 1;
    for mut i in ideals {
        if one {
            (i.name, i.color) = (format!("ideal: {}", c.ideal_label), "#555555");
        } else {
            i.name = format!("ideal of {}: {}", i.name, c.ideal_label);
        }
        series.push(i);
    }
    let scale = |log| if log { Scale::Log } else { Scale::Linear };
    Plot {
        title: c.title.to_string(),
        subtitle: subtitle.to_string(),
        x: Axis { label: c.x_label.to_string(), scale: scale(c.x_log), from_zero: false },
        y: Axis { label: c.y_label.to_string(), scale: scale(c.y_log), from_zero: true },
        series,
    }
    .render()
}

// ---- the run ----

struct Scaling<'a> {
    rt: &'a Runtime,
    device: i32,
    peer_device: i32,
    timeout: Duration,
    plan: Plan,
    /// Started as needed; each answers one command at a time.
    peers: Vec<Peer>,
    calls: Calls,
    bar: ProgressBar,
}

impl Scaling<'_> {
    /// The first `n` peers, started if need be (each start timed: what a process costs before its first
    /// runtime call that matters, for the demo's workers).
    fn peers(&mut self, n: usize) -> Result<&mut [Peer], String> {
        while self.peers.len() < n {
            let t = Instant::now();
            self.peers.push(Peer::spawn(self.rt, self.peer_device, self.timeout)?);
            self.calls.add(PEER_START, "bench".into(), t.elapsed());
        }
        Ok(&mut self.peers[..n])
    }

    /// Say goodbye to every peer, and check each ended well.
    fn finish(&mut self) -> Result<(), String> {
        self.peers.iter_mut().try_for_each(Peer::finish)
    }
}

/// `aclshm bench --scaling`. A failure is one line on stderr (and status 1), after everything was released.
pub fn run(rt: &Runtime, args: &BenchArgs) -> out::Result {
    bench::deliver(args, measure(rt, args), write_files, print, |dir, r| {
        format!("wrote {} and {} plots (scaling-*.svg)", dir.join("scaling.json").display(), r.curves.len())
    })
}

fn subtitle(r: &Report) -> String {
    format!(
        "aclshm bench --scaling{}: {}, {} cores; {}; {}",
        if r.run.quick { " --quick" } else { "" },
        r.run.machine.cpu,
        r.run.machine.cores,
        r.run.runtime.backend,
        r.run.date
    )
}

fn write_files(dir: &Path, r: &Report) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files =
        vec![("scaling.json".to_string(), format!("{}\n", serde_json::to_string_pretty(r).expect("plain data")))];
    let sub = subtitle(r);
    files.extend(r.curves.iter().map(|c| (format!("scaling-{}.svg", c.id), plot(c, &sub))));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn print(r: &Report) -> out::Result {
    for (k, v) in r.run.lines(if r.run.quick { "--scaling --quick" } else { "--scaling" }) {
        outln!("{:<16} {v}", format!("{k}:"));
    }
    outln!();
    outln!("Per-call times the ideals are made of (one 2 MiB chunk), in microseconds");
    let mut t = Table::new(&["call", "process", "count", "median µs", "p10 µs", "p90 µs"]);
    for c in &r.calls {
        t.row(vec![
            c.name.to_string(),
            c.process.to_string(),
            c.count.to_string(),
            us(c.median_us),
            us(c.p10_us),
            us(c.p90_us),
        ]);
    }
    outln!("{}", t.render());
    for c in &r.curves {
        outln!();
        outln!("{}", c.title);
        outln!("ideal: {}", c.ideal);
        let mut t = Table::new(&[c.x_label, "series", c.y_label, "p10", "p90", "ideal", "measured/ideal"]);
        for s in &c.series {
            for p in &s.points {
                t.row(vec![
                    format!("{}", p.x),
                    s.name.to_string(),
                    us(p.y),
                    us(p.p10),
                    us(p.p90),
                    us(p.ideal),
                    ratio(p.ratio),
                ]);
            }
        }
        outln!("{}", t.render());
        for s in &c.series {
            outln!("{}: {}", s.name, s.verdict);
        }
    }
    Ok(())
}

fn measure(rt: &Runtime, args: &BenchArgs) -> Result<Report, String> {
    let started = Instant::now();
    let date = bench::now();
    let peer_device = bench::check_devices(rt, args)?;
    let info = RuntimeInfo::gather(rt).map_err(e)?;
    let runtime = bench::runtime_json(rt, &info, args.device, peer_device)?;
    raw::set_device(rt, args.device).map_err(e)?;
    let mut plan = Plan::new(args.quick);
    let (free, _) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM).map_err(e)?;
    let free = free as u64;
    let kv_bytes = u64::from(KV_BLOCKS) * KV_BLOCK;
    if kv_bytes + 4 * CHUNK + SLACK > free {
        return Err(format!("device {} has {} free: too little for the curves' pools", args.device, bytes(free)));
    }
    let mut skipped = Vec::new();
    let (fit, too_many): (Vec<u32>, Vec<u32>) =
        plan.chunks.iter().partition(|&&n| u64::from(n) * CHUNK + SLACK <= free);
    if !too_many.is_empty() {
        skipped.push(format!(
            "attach at {} chunks: more than device {} has free ({})",
            too_many.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            args.device,
            bytes(free)
        ));
    }
    plan.chunks = fit;

    let bar = bench::progress_bar();
    bar.set_length(plan.points());
    let mut s = Scaling {
        rt,
        device: args.device,
        peer_device,
        timeout: Duration::from_secs(args.timeout),
        plan,
        peers: Vec::new(),
        calls: Calls::default(),
        bar,
    };
    let result = measure_all(&mut s);
    s.bar.finish_and_clear();
    let curves = result?;
    Ok(Report { run: Run::ended(date, args.quick, started, runtime, skipped), calls: s.calls.json(), curves })
}

fn measure_all(s: &mut Scaling<'_>) -> Result<Vec<Curve>, String> {
    let attach = attach(s).map_err(|m| format!("attach: {m}"))?;
    let growth = growth(s).map_err(|m| format!("growth: {m}"))?;
    // The peers are done: gone before the demo runs, whose processes would otherwise share the simulator
    // with them (each import checks every process attached is alive).
    s.finish()?;
    s.peers.clear();
    let kv = kv(s).map_err(|m| format!("KV blocks: {m}"))?;
    let demo = demo(s).map_err(|m| format!("demo: {m}"))?;
    Ok(vec![attach, growth, kv, demo])
}

fn plural(n: f64, one: &str, many: &str) -> String {
    if n == 1.0 { format!("1 {one}") } else { format!("{n} {many}") }
}

// ---- 1. attach against chunks ----

fn attach(s: &mut Scaling<'_>) -> Result<Curve, String> {
    let rt = s.rt;
    let (Some(&first), Some(&max)) = (s.plan.chunks.first(), s.plan.chunks.last()) else {
        return Err("the device holds no pool to attach to".into());
    };
    let config = PoolConfig { chunk_bytes: CHUNK, reserve_bytes: u64::from(max) * CHUNK, ..PoolConfig::default() };
    let pool = Pool::new(rt, s.device, config).map_err(e)?;
    let desc = pool.share(ShareConfig::default()).map_err(e)?;
    let mut allocations = Vec::new();
    let (mut mirror, mut bare) = (Vec::new(), Vec::new());
    for n in s.plan.chunks.clone() {
        s.bar.set_message(format!("attach, {n} chunks"));
        while allocations.len() < n as usize {
            allocations.push(pool.alloc(CHUNK).map_err(e)?);
        }
        let chunks = pool.stats().chunks;
        if chunks != n {
            return Err(format!(
                "{} in a pool of 2 MiB chunks took {chunks} chunks, not {n}",
                bytes(u64::from(n) * CHUNK)
            ));
        }
        let reps = s.plan.attach_reps(n);
        // One untimed attach first, which (pid validation being on) whitelists the peer on every chunk.
        let m = s.peers(1)?[0].times(&format!("mirror {reps} {desc}"), reps as usize)?;
        if n == first {
            chunk_calls(s, &desc, None)?;
        }
        let b = s.peers(1)?[0].times(&format!("bare-attach {reps} {CHUNK} {desc}"), reps as usize)?;
        mirror.push((n, stat(&ms(&m))));
        bare.push((n, stat(&ms(&b))));
        s.bar.inc(1);
    }
    for a in allocations {
        pool.free(a).map_err(e)?;
    }
    pool.close().map_err(e)?;

    let c = &s.calls;
    let parts = |n: u32| {
        let mut v = vec![
            part("aclrtReserveMemAddress (peer)", 1.0, c.ms("aclrtReserveMemAddress", "peer")),
            part("aclrtReleaseMemAddress (peer)", 1.0, c.ms("aclrtReleaseMemAddress", "peer")),
        ];
        for name in ["aclrtMemImportFromShareableHandle", "aclrtMapMem", "aclrtUnmapMem", "aclrtFreePhysical"] {
            v.push(part(format!("{name} (peer)"), n, c.ms(name, "peer")));
        }
        v.push(part(format!("{SET_PID} (bench)"), n, c.ms(SET_PID, "bench")));
        v
    };
    let points = |v: Vec<(u32, Stat)>| v.into_iter().map(|(n, st)| point(f64::from(n), st, parts(n))).collect();
    Ok(curve(
        "attach",
        "Attaching a mirror against the pool's chunks",
        "`peer` attaches a Mirror of a pool of N chunks of 2 MiB that `bench` shares (pid validation on, as \
         by default) and closes it; the pool grows between points, never while an attach is timed. Beside \
         it, the bare calls the same mapping needs: reserve a range, import and map each chunk; unmap and \
         free each, release (`bare-attach`, on the same pool).",
        ("chunks", "ms"),
        (
            "reserve + release + N × (import + map + unmap + free of one chunk in `peer` + whitelisting one pid \
             on one chunk in `bench`), each the median of that call timed alone in the same run, on the same \
             pool's first chunk",
            "the runtime calls it needs",
        ),
        vec![("Mirror attach + close", points(mirror)), ("bare calls", points(bare))],
        &|x| plural(x, "chunk", "chunks"),
    ))
}

/// The per-call times of one chunk, of the pool's first published chunk: the owner's whitelisting of
/// peer 0 on it (which lets the peer import it), then the peer's calls, recorded for process `peer` or,
/// timed again later, as `label`.
fn chunk_calls(s: &mut Scaling<'_>, desc: &ShareDesc, label: Option<String>) -> Result<(), String> {
    let k = s.plan.call_reps as usize;
    let handles = published_handles(desc).map_err(e)?;
    let &shareable = handles.first().ok_or("the pool published no chunk")?;
    let tgid = s.peers(1)?[0].tgid;
    for i in 0..=k {
        let ((), d) = time(|| raw::mem_set_pid_to_shareable_handle(s.rt, shareable, &[tgid]))?;
        if i > 0 && label.is_none() {
            s.calls.add(SET_PID, "bench".into(), d);
        }
    }
    let times = s.peers[0].times(&format!("chunk-calls {k} {CHUNK} {desc}"), 6 * k)?;
    let process = label.unwrap_or_else(|| "peer".into());
    for rep in times.chunks(6) {
        for (name, &d) in CHUNK_CALLS.iter().zip(rep) {
            s.calls.add(name, process.clone(), d);
        }
    }
    Ok(())
}

// ---- 2. the owner's growth against mirrors attached ----

fn growth(s: &mut Scaling<'_>) -> Result<Curve, String> {
    let rt = s.rt;
    let pool =
        Pool::new(rt, s.device, PoolConfig { chunk_bytes: CHUNK, reserve_bytes: 4 * CHUNK, ..PoolConfig::default() })
            .map_err(e)?;
    let desc = pool.share(ShareConfig::default()).map_err(e)?;
    let prop = device_prop(s.device, PageSize::Huge2M);
    let chunk = CHUNK as usize;
    let mut bare = Holdings::new(rt);
    // SAFETY: no address asked for: the runtime picks a range nothing uses.
    let va = unsafe { raw::reserve_mem_address(rt, chunk, 0, ptr::null_mut(), 0) }.map_err(e)?;
    // SAFETY: the range just reserved, released by nothing else.
    unsafe { bare.push(Held::Range(va)) };
    let mut holding = 0;
    let mut points = Vec::new();
    for m in s.plan.mirrors.clone() {
        let m = m as usize;
        s.bar.set_message(format!("growth, {m} mirrors"));
        for p in &mut s.peers(m)?[holding..] {
            p.ask(&format!("hold {desc}"))?;
        }
        holding = m;
        let attached = pool.share_stats().map_or(0, |st| st.mirrors as usize);
        if attached != m {
            return Err(format!("{m} peers hold a mirror, the pool counts {attached}"));
        }
        let tgids: Vec<i32> = s.peers[..m].iter().map(|p| p.tgid).collect();
        let (mut grow, mut malloc, mut map, mut export, mut allow) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..=s.plan.growth_reps {
            let t = Instant::now();
            let a = pool.alloc(CHUNK).map_err(e)?;
            let d = t.elapsed();
            pool.free(a).map_err(e)?;
            let trimmed = pool.trim().map_err(e)?;
            if trimmed != 1 {
                return Err(format!("the pool trimmed {trimmed} chunks, not the one it grew"));
            }
            settle(s, &pool, 0..m)?;
            let (h, dm) = time(|| raw::malloc_physical(rt, chunk, &prop, 0))?;
            // SAFETY: memory just allocated, freed by nothing else.
            unsafe { bare.push(Held::Physical(h)) };
            // SAFETY: the whole handle at the start of a range of its size; both are live and ours.
            let ((), dmap) = time(|| unsafe { raw::map_mem(rt, va, chunk, 0, h, 0) })?;
            // SAFETY: the mapping just made, after its range and its memory.
            unsafe { bare.push(Held::Mapping(va)) };
            // SAFETY: our live handle, exported once (freeing it ends the export).
            let (shareable, dx) = unsafe { bench::timed_export(rt, h) }?;
            let mut each = Vec::with_capacity(m);
            // One pid per call, as the library whitelists.
            for &tgid in &tgids {
                each.push(time(|| raw::mem_set_pid_to_shareable_handle(rt, shareable, &[tgid]))?.1);
            }
            bare.release_last()?;
            bare.release_last()?;
            if i > 0 {
                grow.push(d);
                malloc.push(dm);
                map.push(dmap);
                export.push(dx);
                allow.extend(each);
            }
        }
        let med = |v: &[Duration]| stat(&ms(v)).median;
        let parts = vec![
            part("aclrtMallocPhysical", 1.0, med(&malloc)),
            part("aclrtMapMem", 1.0, med(&map)),
            part("aclrtMemExportToShareableHandle", 1.0, med(&export)),
            part(SET_PID, m as f64, if m > 0 { med(&allow) } else { 0.0 }),
        ];
        points.push(point(m as f64, stat(&ms(&grow)), parts));
        s.bar.inc(1);
    }
    // The calls of one chunk again, now that more processes run (the simulator checks each is alive at
    // every import): peer 0 lets go of its mirror, and imports a chunk its mirror never had.
    if holding > 0 {
        s.peers[0].ask("detach")?;
        let a = pool.alloc(CHUNK).map_err(e)?;
        settle(s, &pool, 1..holding)?;
        chunk_calls(s, &desc, Some(format!("peer, {} processes", s.peers.len() + 1)))?;
        pool.free(a).map_err(e)?;
        pool.trim().map_err(e)?;
        settle(s, &pool, 1..holding)?;
    }
    for p in s.peers.iter_mut().take(holding).skip(1) {
        p.ask("detach")?;
    }
    pool.close().map_err(e)?;
    bare.release_all()?;
    Ok(curve(
        "growth",
        "The owner's growth against the mirrors attached",
        "`bench` allocates 2 MiB from a shared pool (pid validation on) whose chunks are all trimmed, so the \
         pool maps one more chunk: it allocates and maps it, exports it, whitelists each attached mirror's \
         pid (one per call) and publishes it. M `peer` processes hold a mirror each, which follow (import and \
         map the chunk, then let it go at the trim). Timed: the allocation alone; between two, the chunk is \
         trimmed and every mirror has followed.",
        ("mirrors attached", "ms"),
        (
            "aclrtMallocPhysical + aclrtMapMem + aclrtMemExportToShareableHandle + M × \
             aclrtMemSetPidToShareableHandle, bare calls made by `bench` on a chunk of its own at the same M \
             (medians)",
            "the runtime calls it needs",
        ),
        vec![("Pool alloc that grows by one chunk", points)],
        &|x| plural(x, "mirror", "mirrors"),
    ))
}

/// Wait until the mirrors the peers `holding` hold followed the pool to its generation now (so have
/// mapped and let go of the chunk just trimmed), and the owner freed what it trimmed.
fn settle(s: &mut Scaling<'_>, pool: &Pool, holding: Range<usize>) -> Result<(), String> {
    let Some(generation) = pool.share_stats().map(|st| st.generation) else {
        return Ok(());
    };
    for p in &mut s.peers[holding] {
        p.ask(&format!("follow {generation}"))?;
    }
    let deadline = Instant::now() + s.timeout;
    while pool.share_stats().is_some_and(|st| st.retired_pending > 0) {
        if Instant::now() >= deadline {
            return Err(format!("a trimmed chunk still waits for the mirrors after {} s", s.timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

// ---- 3. KV blocks against threads and occupancy ----

fn kv(s: &mut Scaling<'_>) -> Result<Curve, String> {
    let pool =
        PoolConfig { chunk_bytes: CHUNK, reserve_bytes: u64::from(KV_BLOCKS) * KV_BLOCK, ..PoolConfig::default() };
    let kv = KvPool::new(s.rt, s.device, KvConfig { block_bytes: KV_BLOCK, pool, share: ShareConfig::default() })
        .map_err(e)?;
    // Every block allocated once, so every chunk is mapped and none is while timing (the pool never trims
    // by itself).
    let mut live = kv.alloc_many(KV_BLOCKS as usize).map_err(e)?;
    let threads = s.plan.threads;
    let mut series: Vec<Vec<(u32, Stat)>> = vec![Vec::new(); threads.len()];
    for pct in s.plan.occupancy {
        s.bar.set_message(format!("KV blocks, {pct} %"));
        // Keep `pct` % of the blocks, spread evenly over the pool (at least one left free).
        live.sort_by_key(KvBlock::id);
        let keep = (KV_BLOCKS * pct).div_ceil(100).min(KV_BLOCKS - 1) as usize;
        let n = live.len();
        let (mut kept, mut freed) = (Vec::new(), Vec::new());
        for (i, b) in live.into_iter().enumerate() {
            if (i + 1) * keep / n > i * keep / n { kept.push(b) } else { freed.push(b) }
        }
        kv.free_many(&freed).map_err(e)?;
        for (i, &t) in threads.iter().enumerate() {
            series[i].push((pct, stat(&pairs(&kv, t, s.plan.kv_samples)?)));
        }
        live = kept;
        live.extend(kv.alloc_many(freed.len()).map_err(e)?);
        s.bar.inc(1);
    }
    kv.free_many(&live).map_err(e)?;
    kv.close().map_err(e)?;
    let flat = series.first().and_then(|v| v.first()).map_or(0.0, |p| p.1.median);
    let named = ["1 thread", "2 threads"];
    Ok(curve(
        "kv",
        "KV block allocation against threads and occupancy",
        "A KvPool of 1024 blocks of 256 KiB (128 chunks of 2 MiB, all mapped), with 10, 50, 90 or 99 % of \
         its blocks allocated (spread evenly) before timing; then each of 1 or 2 threads allocates a block \
         and frees it, 1000 times per sample. y: the sample's time (the slowest thread's) over 1000.",
        ("pool occupancy (%)", "ns per alloc + free"),
        (
            "flat (no runtime call: O(1) in the occupancy, and per thread in the threads): the median of 1 \
             thread at the lowest occupancy",
            "flat, O(1)",
        ),
        threads
            .iter()
            .zip(series)
            .map(|(&t, v)| {
                let name = named.get(t - 1).copied().unwrap_or("threads");
                (
                    name,
                    v.into_iter()
                        .map(|(pct, st)| point(f64::from(pct), st, vec![part("1 thread at 10 %", 1.0, flat)]))
                        .collect(),
                )
            })
            .collect(),
        &|x| format!("{x} %"),
    ))
}

/// `samples` samples (after one untimed) of `threads` threads each allocating a block and freeing it
/// `KV_BATCH` times, started together: nanoseconds per pair, from the slowest thread's time.
fn pairs(kv: &KvPool, threads: usize, samples: u32) -> Result<Vec<f64>, String> {
    let start = Barrier::new(threads);
    let timed: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::with_capacity(samples as usize + 1);
                    let mut failed = None;
                    for _ in 0..=samples {
                        // Every thread passes every barrier, a failed one too: none waits forever.
                        start.wait();
                        if failed.is_some() {
                            continue;
                        }
                        let t = Instant::now();
                        let r = (0..KV_BATCH).try_for_each(|_| kv.alloc().and_then(|b| kv.free(b)));
                        out.push(t.elapsed());
                        failed = r.err();
                    }
                    failed.map_or(Ok(out), |err| Err(e(err)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a timing thread panicked".into()))).collect()
    });
    let timed = timed.into_iter().collect::<Result<Vec<_>, String>>()?;
    Ok((1..=samples as usize)
        .map(|i| timed.iter().map(|t| t[i]).max().unwrap_or_default().as_secs_f64() * 1e9 / f64::from(KV_BATCH))
        .collect())
}

// ---- 4. the demo against workers ----

/// What one run of `aclshm demo` counted: its runtime calls in all, and of those that grow with the
/// workers: imports and maps (all workers), whitelistings (the scheduler).
#[derive(Debug, Default, Clone, Copy)]
struct DemoCounts {
    calls: u64,
    imports: u64,
    maps: u64,
    whitelists: u64,
}

fn demo(s: &mut Scaling<'_>) -> Result<Curve, String> {
    let mut runs = Vec::new();
    for w in s.plan.workers.clone() {
        s.bar.set_message(format!("demo, {w} workers"));
        let mut walls = Vec::new();
        let mut counts = DemoCounts::default();
        for _ in 0..s.plan.demo_reps {
            let (wall, c) = run_demo(s.rt, w, s.plan.demo_blocks, s.timeout)?;
            walls.push(wall);
            counts = c;
        }
        runs.push((w, stat(&ms(&walls)), counts));
        s.bar.inc(1);
    }
    let Some(&(_, base, first)) = runs.first() else { return Err("no worker count to run".into()) };
    let c = &s.calls;
    let import_free = c.ms("aclrtMemImportFromShareableHandle", "peer") + c.ms("aclrtFreePhysical", "peer");
    let map_unmap = c.ms("aclrtMapMem", "peer") + c.ms("aclrtUnmapMem", "peer");
    let allow = c.ms(SET_PID, "bench");
    let points = runs
        .into_iter()
        .map(|(w, st, n)| {
            let more = |a: u64, b: u64| a.saturating_sub(b) as f64;
            let parts = vec![
                part("the demo with 1 worker (measured)", 1.0, base.median),
                part("imports added (+ their frees)", more(n.imports, first.imports), import_free),
                part("maps added (+ their unmaps)", more(n.maps, first.maps), map_unmap),
                part("whitelistings added", more(n.whitelists, first.whitelists), allow),
            ];
            Point { runtime_calls: Some(n.calls), ..point(f64::from(w), st, parts) }
        })
        .collect();
    Ok(curve(
        "demo",
        "The multi-process demo against its workers",
        "`aclshm demo --workers W --json` (its defaults otherwise: 256 blocks of 256 KiB shared out between \
         the workers, every device; 32 blocks with --quick) run as a child process and timed from its start to its exit: W worker \
         processes start, attach a KvMirror, write their blocks, verify each other's, and go.",
        ("workers", "ms"),
        (IDEAL_DEMO, "1 worker + the calls added"),
        vec![("aclshm demo", points)],
        &|x| plural(x, "worker", "workers"),
    ))
}

const IDEAL_DEMO: &str = "the wall time with 1 worker, plus the runtime calls added since (the demo's own summary: its \
         workers' imports and maps, its scheduler's whitelistings) times each call's median in this run \
         (import + free, map + unmap of one chunk in `peer`; one whitelisting in `bench`). The other calls \
         added (each worker's notify, stream and device set-up) are counted at nothing, so the line is a \
         lower bound";

/// Run `aclshm demo --workers <workers> [--blocks <blocks>] --json` on this runtime; its wall time and
/// counts.
fn run_demo(
    rt: &Runtime,
    workers: u32,
    blocks: Option<u32>,
    timeout: Duration,
) -> Result<(Duration, DemoCounts), String> {
    // The demo uses this process's runtime.
    let mut cmd = crate::child::this_program(rt)?;
    cmd.args(["demo", "--workers", &workers.to_string(), "--json", "--timeout", &timeout.as_secs().to_string()])
        .args(blocks.map(|b| format!("--blocks={b}")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what =
        format!("`aclshm demo --workers {workers}{}`", blocks.map_or(String::new(), |b| format!(" --blocks {b}")));
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
    // The demo bounds each of its steps by the timeout; this bounds the whole run, should it hang anyway.
    let deadline = t + timeout * 8;
    let status = crate::child::wait_until(&mut child, deadline, Duration::from_micros(200));
    let wall = t.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        // Its workers go when their stdin closes; on the simulator, what any of them left is reclaimed.
        std::thread::sleep(Duration::from_millis(100));
        if rt.is_simulator() {
            let _ = raw::sim_reclaim(rt);
        }
        return Err(format!("{what} did not end within {} s", (timeout * 8).as_secs()));
    };
    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    let report: Option<Value> = serde_json::from_str(&out).ok();
    if !status.success() {
        let why = report
            .as_ref()
            .and_then(|r| r["error"].as_str().map(str::to_string))
            .or_else(|| err.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        return Err(format!("{what}: {why}"));
    }
    let r = report.ok_or_else(|| format!("{what} printed no JSON summary"))?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let ws = r["workers"].as_array().ok_or_else(|| format!("{what}: its summary lists no workers"))?;
    let sum = |field: &str| ws.iter().map(|w| n(&w[field])).sum::<u64>();
    Ok((
        wall,
        DemoCounts {
            calls: n(&r["scheduler_runtime_calls"]) + sum("runtime_calls"),
            imports: sum("runtime_imports"),
            maps: sum("runtime_maps"),
            whitelists: n(&r["whitelist_calls"]),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: f64, ratio: f64) -> Point {
        point(x, Stat { median: ratio, p10: ratio, p90: ratio, count: 1 }, vec![part("one", 1.0, 1.0)])
    }

    fn verdict(ratios: &[(f64, f64)]) -> (Growth, String) {
        let points: Vec<Point> = ratios.iter().map(|&(x, r)| pt(x, r)).collect();
        let (g, text, _) = judge(&points, &|x| format!("{x}"));
        (g, text)
    }

    #[test]
    fn the_verdict_says_where_the_ratio_to_the_ideal_climbs() {
        let (g, t) = verdict(&[(1.0, 1.1), (2.0, 1.1), (4.0, 1.2), (8.0, 1.6), (16.0, 2.0)]);
        assert_eq!(g, Growth::Faster);
        assert!(t.starts_with("grows faster than the ideal from 8 on: 1.10 × the ideal at 1, 2.00 × at 16"), "{t}");
        // A fixed cost spread out first, then a climb.
        let (g, t) = verdict(&[(1.0, 5.0), (2.0, 2.0), (4.0, 1.1), (8.0, 1.2), (16.0, 1.5)]);
        assert_eq!(g, Growth::Faster);
        assert!(t.starts_with("a fixed cost spread out up to 4, then grows faster than the ideal from 16 on"), "{t}");
        let (g, t) = verdict(&[(1.0, 5.0), (2.0, 2.0), (4.0, 1.1)]);
        assert_eq!(g, Growth::Slower);
        assert!(t.contains("5.00 × the ideal at 1, 1.10 × at 4"), "{t}");
        assert_eq!(verdict(&[(1.0, 1.0), (2.0, 1.1), (4.0, 0.95)]).0, Growth::AsIdeal);
        // Far above the ideal at every point is said first.
        let (g, t) = verdict(&[(10.0, 3.1), (50.0, 3.0), (99.0, 3.2)]);
        assert_eq!(g, Growth::AsIdeal);
        assert!(t.starts_with("3.00 × the ideal or more at every point; grows as the ideal"), "{t}");
        assert_eq!(verdict(&[]).0, Growth::AsIdeal);
    }

    #[test]
    fn an_ideal_is_the_sum_of_its_parts() {
        let p = point(
            8.0,
            Stat { median: 6.0, p10: 5.0, p90: 7.0, count: 3 },
            vec![part("fixed", 1.0, 1.0), part("per chunk", 8.0, 0.25)],
        );
        assert_eq!(p.ideal, 3.0);
        assert_eq!(p.ratio, 2.0);
        assert_eq!(point(1.0, Stat::default(), vec![]).ratio, 0.0, "no ideal: no ratio, not a division by zero");
    }

    #[test]
    fn plans_double_up_to_their_largest_point_and_quick_is_a_prefix() {
        let (full, quick) = (Plan::new(false), Plan::new(true));
        assert_eq!(full.chunks, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
        assert_eq!(full.mirrors, [0, 1, 2, 4, 8, 16]);
        assert_eq!(full.workers, [1, 2, 4, 8, 16]);
        assert!(full.chunks.starts_with(&quick.chunks) && full.mirrors.starts_with(&quick.mirrors));
        assert!(full.workers.starts_with(&quick.workers));
        assert_eq!((full.attach_reps(1), full.attach_reps(64), full.attach_reps(1024)), (400, 128, 20));
        assert_eq!(doubling(0), Vec::<u32>::new());
        assert_eq!(doubling(u32::MAX).len(), 32);
    }

    #[test]
    fn every_curve_plots_its_series_and_one_ideal_beside_them() {
        let c = curve(
            "attach",
            "t",
            "a",
            ("chunks", "ms"),
            ("i", "the runtime calls it needs"),
            vec![("one", vec![pt(1.0, 2.0), pt(1024.0, 3.0)]), ("two", vec![pt(1.0, 1.0), pt(1024.0, 1.0)])],
            &|x| format!("{x}"),
        );
        assert!(c.x_log && !c.y_log);
        let svg = plot(&c, "sub");
        // Two measured series, and their ideal (the same for both) once.
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(svg.contains("ideal: the runtime calls it needs"));
        assert!(c.verdict.starts_with("one: 2.00 × the ideal or more at every point; grows faster"), "{}", c.verdict);
    }
}
