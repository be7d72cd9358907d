//! `aclshm tune`: replay an allocation trace over a grid of pool configurations, rank them, and write the
//! recommendation as a configuration file (see `aclshm::tune` for what is measured and how it ranks).
//!
//! Before anything is replayed, the grid and the trace are checked against the device ([`candidates`]):
//! every value must make a pool that can exist (chunks of whole pages no larger than the device, blocks
//! that fit a chunk, arithmetic that fits 64 bits) and every allocation of the trace must fit the device,
//! so an odd grid is a message naming the option, not a panic or a replay that cannot end well.

use std::io::IsTerminal;
use std::path::PathBuf;

use aclshm::tune::{Candidate, Grid, Op, Outcome, Trace, config_file, rank, replay};
use aclshm::{Runtime, raw};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::demo::parse_size;
use crate::out::{self, errln, outln};
use crate::report::{Table, bytes};
use crate::svg::{Axis, Mark, Plot, Scale, Series};

/// Options of `aclshm tune`.
#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// The trace: a built-in one (`serving`, `kv`) or a trace file of at most 256 MiB, which may be a pipe
    /// such as /dev/stdin (its format is below, in --help).
    #[arg(long, default_value = "serving")]
    pub trace: String,
    /// Chunk sizes to try, comma-separated: whole 2 MiB pages, at most the device's memory (default
    /// 2M,4M,8M,16M,32M,64M).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub chunk_sizes: Option<Vec<u64>>,
    /// Trim watermarks to try, comma-separated sizes or `none` (default 0,256M,none).
    #[arg(long, value_delimiter = ',', value_parser = parse_watermark)]
    pub watermarks: Option<Vec<Option<u64>>>,
    /// Pre-mapped chunk counts to try (default 0,8; 0 for KV traces).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub reserve_chunks: Option<Vec<u32>>,
    /// Tokens per KV block to try, for KV traces (default 16,32,64); sizes whose block fits no chunk are
    /// left out.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub block_tokens: Option<Vec<u32>>,
    /// How far (a fraction, 0 to 10) above the least memory a candidate may be and still be ranked by
    /// runtime calls.
    #[arg(long, default_value_t = 0.10, allow_negative_numbers = true)]
    pub tolerance: f64,
    /// The device to replay on.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub device: i32,
    /// Write the recommended configuration here (`PoolConfig::load` / `KvConfig::load` read it).
    #[arg(long, value_name = "FILE")]
    pub out_config: Option<PathBuf>,
    /// Write every outcome as JSON here.
    #[arg(long, value_name = "FILE")]
    pub out_json: Option<PathBuf>,
    /// Write a plot (average mapped memory against runtime calls) as SVG here.
    #[arg(long, value_name = "FILE")]
    pub out_svg: Option<PathBuf>,
    /// Write the trace in the text format here (to see or edit a built-in one), and replay nothing.
    #[arg(long, value_name = "FILE")]
    pub write_trace: Option<PathBuf>,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_watermark(s: &str) -> Result<Option<u64>, String> {
    if s.trim() == "none" {
        Ok(None)
    } else {
        parse_size(s).map(Some).or_else(|e| if s.trim() == "0" { Ok(Some(0)) } else { Err(e) })
    }
}

#[derive(Serialize)]
struct OutcomeJson {
    rank: usize,
    within_tolerance: bool,
    chunk_bytes: u64,
    trim_watermark: Option<u64>,
    reserve_chunks: u32,
    block_tokens: Option<u32>,
    runtime_calls: u64,
    alloc_p50_ns: u64,
    alloc_p99_ns: u64,
    peak_mapped: u64,
    avg_mapped: f64,
    avg_live: f64,
    utilisation: f64,
    attach_imports: u64,
}

#[derive(Serialize)]
struct TuneJson {
    trace: String,
    ops: usize,
    backend: String,
    tolerance: f64,
    recommended: OutcomeJson,
    outcomes: Vec<OutcomeJson>,
}

fn to_json(o: &Outcome) -> OutcomeJson {
    OutcomeJson {
        rank: o.rank,
        within_tolerance: o.within_tolerance,
        chunk_bytes: o.candidate.pool.chunk_bytes,
        trim_watermark: o.candidate.pool.trim_watermark,
        reserve_chunks: o.candidate.pool.reserve_chunks,
        block_tokens: o.candidate.block_tokens,
        runtime_calls: o.runtime_calls,
        alloc_p50_ns: o.alloc_p50_ns,
        alloc_p99_ns: o.alloc_p99_ns,
        peak_mapped: o.peak_mapped,
        avg_mapped: o.avg_mapped,
        avg_live: o.avg_live,
        utilisation: o.utilisation,
        attach_imports: o.attach_imports,
    }
}

/// A scatter plot: average mapped MiB (x) against runtime calls (y, log scale); the recommendation in red,
/// the other candidates within the tolerance in blue, the rest in grey.
fn svg(outcomes: &[Outcome], title: &str) -> String {
    let group = |name: &str, color, radius, keep: &dyn Fn(&Outcome) -> bool| {
        let shown: Vec<&Outcome> = outcomes.iter().filter(|o| keep(o)).collect();
        Series {
            name: name.to_string(),
            color,
            mark: Mark::Dots(radius),
            points: shown.iter().map(|o| (o.avg_mapped / (1u64 << 20) as f64, o.runtime_calls.max(1) as f64)).collect(),
            tips: shown
                .iter()
                .map(|o| {
                    format!(
                        "#{} {}: {} calls, {:.0} MiB average",
                        o.rank,
                        o.candidate.label(),
                        o.runtime_calls,
                        o.avg_mapped / (1u64 << 20) as f64
                    )
                })
                .collect(),
        }
    };
    Plot {
        title: title.to_string(),
        subtitle: String::new(),
        x: Axis { label: "average mapped memory (MiB)".into(), scale: Scale::Linear, from_zero: false },
        y: Axis { label: "runtime calls".into(), scale: Scale::Log, from_zero: false },
        series: vec![
            group("beyond the tolerance", "#aaaaaa", 4.0, &|o| o.rank != 1 && !o.within_tolerance),
            group("within the tolerance", "#1f77b4", 4.0, &|o| o.rank != 1 && o.within_tolerance),
            group("recommended", "red", 6.0, &|o| o.rank == 1),
        ],
    }
    .render()
}

fn write(path: &PathBuf, text: &str) -> aclshm::Result<()> {
    std::fs::write(path, text)
        .map_err(|e| aclshm::Error::Io { context: format!("write {}", path.display()), source: e })
}

/// Chunks are made of 2 MiB pages (the pool's default page size, which the tuner uses).
const PAGE: u64 = 2 << 20;

fn invalid(msg: String) -> aclshm::Error {
    aclshm::Error::InvalidArgument(msg)
}

/// Bytes of a block of `tokens` tokens of `token_bytes` each, rounded up to the pool's granule, as
/// [`Candidate::block_bytes`] computes it; `None` if that overflows 64 bits.
fn block_bytes(tokens: u32, token_bytes: u64) -> Option<u64> {
    u64::from(tokens).checked_mul(token_bytes)?.checked_next_multiple_of(aclshm::pool::GRANULE)
}

/// The candidates to replay `trace` on, a device of `total` bytes: `grid` checked first, value by value,
/// and the trace's allocations against the device. Every refusal names the option (or the operation) and
/// says why. Block sizes that fit no chunk are left out, as the library leaves out those that do not fit
/// a given chunk; if none is left, that is the error.
fn candidates(grid: &Grid, trace: &Trace, device: i32, total: u64) -> aclshm::Result<Vec<Candidate>> {
    let memory = |what: String| invalid(format!("{what}: more than device {device}'s memory ({})", bytes(total)));
    for (name, empty) in [
        ("--chunk-sizes", grid.chunk_bytes.is_empty()),
        ("--watermarks", grid.trim_watermarks.is_empty()),
        ("--reserve-chunks", grid.reserve_chunks.is_empty()),
    ] {
        if empty {
            return Err(invalid(format!("{name}: no value to try")));
        }
    }
    for &c in &grid.chunk_bytes {
        if !c.is_multiple_of(PAGE) {
            return Err(invalid(format!("--chunk-sizes {}: a chunk is a whole number of 2 MiB pages", bytes(c))));
        }
        if c > total || total.checked_next_multiple_of(c).is_none() {
            return Err(memory(format!("--chunk-sizes {}", bytes(c))));
        }
        for &r in &grid.reserve_chunks {
            if u64::from(r).checked_mul(c).is_none_or(|b| b > total) {
                return Err(memory(format!("--reserve-chunks {r} of {}", bytes(c))));
            }
        }
    }
    let mut grid = grid.clone();
    let token_bytes = trace.kv_token_bytes.unwrap_or(0);
    if !trace.is_kv() {
        if !grid.block_tokens.is_empty() {
            return Err(invalid(format!(
                "--block-tokens: trace {:?} allocates no KV blocks; block sizes are for KV traces only",
                trace.name
            )));
        }
    } else {
        if grid.block_tokens.is_empty() {
            return Err(invalid("a KV trace needs --block-tokens".into()));
        }
        if grid.block_tokens.contains(&0) {
            return Err(invalid("--block-tokens 0: a block holds at least one token".into()));
        }
        let largest = grid.chunk_bytes.iter().copied().max().unwrap_or(0);
        let smallest = *grid.block_tokens.iter().min().expect("not empty");
        grid.block_tokens.retain(|&t| block_bytes(t, token_bytes).is_some_and(|b| b <= largest));
        if grid.block_tokens.is_empty() {
            let size = block_bytes(smallest, token_bytes).map_or("more than 2^64 bytes".to_string(), bytes);
            return Err(invalid(format!(
                "--block-tokens: a block of {smallest} token(s) of {} is {size}, larger than every chunk size \
                 (at most {}): try larger --chunk-sizes or smaller --block-tokens",
                bytes(token_bytes),
                bytes(largest)
            )));
        }
    }
    // The trace's allocations, each against the device (a replay of one that cannot fit ends in an error
    // after the pool tried; one of 2^64 bytes takes the pool to the edge of its arithmetic).
    let mut requests = std::collections::HashMap::new();
    for op in &trace.ops {
        match *op {
            Op::Alloc { id, bytes: b } if b > total => {
                return Err(memory(format!("trace {:?}: alloc {id} of {}", trace.name, bytes(b))));
            }
            Op::KvAlloc { id, tokens } | Op::KvExtend { id, tokens } => {
                let have: &mut u64 = requests.entry(id).or_default();
                *have = have.saturating_add(tokens);
                for &t in &grid.block_tokens {
                    let blocks = have.div_ceil(u64::from(t));
                    let need = block_bytes(t, token_bytes).and_then(|b| b.checked_mul(blocks));
                    if need.is_none_or(|n| n > total) {
                        return Err(memory(format!(
                            "trace {:?}: request {id} of {have} tokens, in blocks of {t}, needs {}",
                            trace.name,
                            need.map_or("more than 2^64 bytes".to_string(), bytes)
                        )));
                    }
                }
            }
            Op::KvFree { id } => {
                requests.remove(&id);
            }
            _ => {}
        }
    }
    let out = grid.candidates(total, trace.kv_token_bytes);
    if out.is_empty() {
        return Err(invalid("no candidate to replay: every combination of the grid was left out".into()));
    }
    Ok(out)
}

/// `aclshm tune`.
pub fn run(rt: &Runtime, args: &TuneArgs) -> out::Result {
    let trace = match Trace::builtin(&args.trace) {
        Some(t) => t,
        None => Trace::load(std::path::Path::new(&args.trace))?,
    };
    if let Some(p) = &args.write_trace {
        write(p, &trace.to_text())?;
        errln!("wrote trace {:?} ({} operations) to {}", trace.name, trace.ops.len(), p.display());
        return Ok(());
    }
    if !(0.0..=10.0).contains(&args.tolerance) {
        return Err(invalid(format!("--tolerance {}: a fraction from 0 to 10", args.tolerance)).into());
    }
    let mut grid = Grid::default_for(&trace);
    if let Some(v) = &args.chunk_sizes {
        grid.chunk_bytes = v.clone();
    }
    if let Some(v) = &args.watermarks {
        grid.trim_watermarks = v.clone();
    }
    if let Some(v) = &args.reserve_chunks {
        grid.reserve_chunks = v.clone();
    }
    if let Some(v) = &args.block_tokens {
        grid.block_tokens = v.clone();
    }
    raw::set_device(rt, args.device)?;
    let (_, total) = raw::get_mem_info(rt, aclshm::sys::aclrtMemAttr::ACL_HBM_MEM)?;
    let candidates = candidates(&grid, &trace, args.device, total as u64)?;
    let bar = if args.json || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(candidates.len() as u64), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(candidates.len() as u64);
        b.set_style(
            ProgressStyle::with_template("tune {pos}/{len} [{bar:30}] {elapsed} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b
    };
    let mut outcomes = Vec::with_capacity(candidates.len());
    for c in &candidates {
        bar.set_message(c.label());
        outcomes.push(replay(rt, args.device, &trace, c)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    rank(&mut outcomes, args.tolerance);
    let best = outcomes.first().ok_or_else(|| invalid("no candidate was replayed".into()))?;
    let backend = rt.backend().to_string();
    if let Some(p) = &args.out_config {
        write(p, &config_file(best, &trace, &backend))?;
    }
    let json = TuneJson {
        trace: trace.name.clone(),
        ops: trace.ops.len(),
        backend: backend.clone(),
        tolerance: args.tolerance,
        recommended: to_json(best),
        outcomes: outcomes.iter().map(to_json).collect(),
    };
    let json_text = serde_json::to_string_pretty(&json).expect("plain data serialises");
    if let Some(p) = &args.out_json {
        write(p, &json_text)?;
    }
    if let Some(p) = &args.out_svg {
        write(p, &svg(&outcomes, &format!("aclshm tune: trace {} on {backend}", trace.name)))?;
    }
    if args.json {
        outln!("{json_text}");
        return Ok(());
    }
    outln!(
        "trace {:?}: {} operations, replayed on {backend} for {} candidates\n",
        trace.name,
        trace.ops.len(),
        outcomes.len()
    );
    let mut t = Table::new(&[
        "rank",
        "candidate",
        "calls",
        "p50",
        "p99",
        "peak mapped",
        "avg mapped",
        "utilisation",
        "attach imports",
    ]);
    for o in &outcomes {
        t.row(vec![
            format!("{}{}", o.rank, if o.within_tolerance { "" } else { "*" }),
            o.candidate.label(),
            o.runtime_calls.to_string(),
            format!("{:.1} us", o.alloc_p50_ns as f64 / 1e3),
            format!("{:.1} us", o.alloc_p99_ns as f64 / 1e3),
            bytes(o.peak_mapped),
            bytes(o.avg_mapped as u64),
            format!("{:.3}", o.utilisation),
            o.attach_imports.to_string(),
        ]);
    }
    outln!("{}", t.render());
    outln!(
        "\n* more than {:.0} % above the least average memory: ranked by memory, after the others",
        args.tolerance * 100.0
    );
    outln!(
        "recommended: {} ({} runtime calls, utilisation {:.3})",
        best.candidate.label(),
        best.runtime_calls,
        best.utilisation
    );
    for (what, p) in [("configuration", &args.out_config), ("JSON", &args.out_json), ("plot", &args.out_svg)] {
        if let Some(p) = p {
            outln!("wrote the {what} to {}", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn grid(chunks: &[u64], blocks: &[u32]) -> Grid {
        Grid {
            chunk_bytes: chunks.iter().map(|c| c << 20).collect(),
            trim_watermarks: vec![Some(0), None],
            reserve_chunks: vec![0],
            block_tokens: blocks.to_vec(),
        }
    }

    fn refused(g: &Grid, t: &Trace, total: u64) -> String {
        candidates(g, t, 0, total).expect_err("refused").to_string()
    }

    #[test]
    fn blocks_larger_than_every_chunk_are_an_error_and_those_that_fit_some_are_kept() {
        let kv = Trace::builtin("kv").unwrap();
        // 64 tokens of 128 KiB: 8 MiB blocks; the defect: no candidate, then an index out of bounds.
        let e = refused(&grid(&[2], &[64]), &kv, 32 * GIB);
        assert!(e.contains("a block of 64 token(s) of 128.0 KiB is 8.0 MiB, larger than every chunk size"), "{e}");
        let e = refused(&grid(&[2, 4], &[u32::MAX]), &kv, 32 * GIB);
        assert!(e.contains("is 512.0 TiB, larger than every chunk size (at most 4.0 MiB)"), "{e}");
        // 8 MiB chunks hold them: only those are tried, with both watermarks.
        let c = candidates(&grid(&[2, 8], &[64]), &kv, 0, 32 * GIB).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.pool.chunk_bytes == 8 << 20 && c.block_tokens == Some(64)));
        // A block size that fits no chunk is left out, the others stay.
        let c = candidates(&grid(&[2], &[16, 64]), &kv, 0, 32 * GIB).unwrap();
        assert!(c.iter().all(|c| c.block_tokens == Some(16)) && c.len() == 2);
    }

    #[test]
    fn values_the_pool_or_its_arithmetic_cannot_take_are_refused_naming_the_option() {
        let kv = Trace::builtin("kv").unwrap();
        let serving = Trace::builtin("serving").unwrap();
        for (g, t, total, says) in [
            (grid(&[3], &[]), &serving, 32 * GIB, "--chunk-sizes 3.0 MiB: a chunk is a whole number of 2 MiB pages"),
            (
                grid(&[1 << 20], &[]),
                &serving,
                32 * GIB,
                "--chunk-sizes 1.0 TiB: more than device 0's memory (32.0 GiB)",
            ),
            (grid(&[1 << 43], &[]), &serving, u64::MAX, "--chunk-sizes"),
            (grid(&[], &[]), &serving, 32 * GIB, "--chunk-sizes: no value to try"),
            (
                Grid { reserve_chunks: vec![u32::MAX], ..grid(&[2], &[]) },
                &serving,
                32 * GIB,
                "--reserve-chunks 4294967295",
            ),
            (Grid { trim_watermarks: vec![], ..grid(&[2], &[]) }, &serving, 32 * GIB, "--watermarks: no value"),
            (grid(&[2], &[16]), &serving, 32 * GIB, "block sizes are for KV traces only"),
            (grid(&[2], &[0]), &kv, 32 * GIB, "--block-tokens 0: a block holds at least one token"),
            (grid(&[2], &[]), &kv, 32 * GIB, "a KV trace needs --block-tokens"),
            // The serving trace's weights (an 11 GiB model) do not fit a 64 MiB device, but each tensor
            // does; its largest single allocation, the 250 MiB embeddings, does not.
            (grid(&[2], &[]), &serving, 64 << 20, "alloc 0 of 250.0 MiB: more than device 0's memory"),
        ] {
            let e = refused(&g, t, total);
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn trace_allocations_larger_than_the_device_are_refused_before_any_replay() {
        let max = u64::MAX;
        for (text, blocks, says) in [
            (format!("alloc 1 {max}"), &[][..], "alloc 1 of 16777216.0 TiB: more than device 0's memory"),
            ("kv-token-bytes 1K\nkv-alloc 1 1T".to_string(), &[16][..], "request 1 of 1099511627776 tokens"),
            ("kv-token-bytes 1K\nkv-alloc 1 1\nkv-extend 1 64M".to_string(), &[16][..], "request 1 of 67108865 tokens"),
            // 16 one-byte tokens take a whole 512-byte granule: 2^26 of them, 32 GiB.
            ("kv-token-bytes 1\nkv-alloc 1 1G".to_string(), &[16][..], "needs 32.0 GiB"),
            (
                "kv-token-bytes 16777215T\nkv-alloc 1 1".to_string(),
                &[16][..],
                "more than 2^64 bytes, larger than every",
            ),
        ] {
            let t = Trace::parse("t", &format!("aclshm-trace 1\n{text}\n")).unwrap();
            let e = refused(&grid(&[2], blocks), &t, 32 * GIB - 1);
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // What was freed no longer counts.
        let t = Trace::parse("t", "aclshm-trace 1\nkv-token-bytes 1K\nkv-alloc 1 16M\nkv-free 1\nkv-alloc 1 16M\n")
            .unwrap();
        assert_eq!(candidates(&grid(&[2], &[16]), &t, 0, 32 * GIB).unwrap().len(), 2);
    }
}
