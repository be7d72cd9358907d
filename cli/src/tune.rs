//! `aclshm tune`: replay an allocation trace over a grid of pool configurations, rank them, and write the
//! recommendation as a configuration file (see `aclshm::tune` for what is measured and how it ranks).

use std::io::IsTerminal;
use std::path::PathBuf;

use aclshm::tune::{Grid, Outcome, Trace, config_file, rank, replay};
use aclshm::{Runtime, raw};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::demo::parse_size;
use crate::report::{Table, bytes};

/// Options of `aclshm tune`.
#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// The trace: a built-in one (`serving`, `kv`) or a trace file (its format is below, in --help).
    #[arg(long, default_value = "serving")]
    pub trace: String,
    /// Chunk sizes to try, comma-separated (default 2M,4M,8M,16M,32M,64M).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub chunk_sizes: Option<Vec<u64>>,
    /// Trim watermarks to try, comma-separated sizes or `none` (default 0,256M,none).
    #[arg(long, value_delimiter = ',', value_parser = parse_watermark)]
    pub watermarks: Option<Vec<Option<u64>>>,
    /// Pre-mapped chunk counts to try (default 0,8; 0 for KV traces).
    #[arg(long, value_delimiter = ',')]
    pub reserve_chunks: Option<Vec<u32>>,
    /// Tokens per KV block to try, for KV traces (default 16,32,64).
    #[arg(long, value_delimiter = ',')]
    pub block_tokens: Option<Vec<u32>>,
    /// How far (a fraction) above the least memory a candidate may be and still be ranked by runtime calls.
    #[arg(long, default_value_t = 0.10)]
    pub tolerance: f64,
    /// The device to replay on.
    #[arg(long, default_value_t = 0)]
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

/// A scatter plot: average mapped MiB (x) against runtime calls (y, log scale); the recommendation in red.
fn svg(outcomes: &[Outcome], title: &str) -> String {
    let (w, h, m) = (720.0, 480.0, 60.0);
    let xs: Vec<f64> = outcomes.iter().map(|o| o.avg_mapped / (1u64 << 20) as f64).collect();
    let ys: Vec<f64> = outcomes.iter().map(|o| (o.runtime_calls.max(1) as f64).log10()).collect();
    let (x0, x1) = (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(0.0, f64::max));
    let (y0, y1) =
        (ys.iter().cloned().fold(f64::INFINITY, f64::min).floor(), ys.iter().cloned().fold(0.0, f64::max).ceil());
    let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - y0) / (y1 - y0).max(1e-9) * (h - 2.0 * m);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">average mapped memory (MiB): {x0:.0} .. {x1:.0}</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">runtime calls (log10): {y0} .. {y1}</text>\n",
        w / 2.0,
        esc(title),
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 20.0,
        h / 2.0,
        h / 2.0
    );
    for (i, o) in outcomes.iter().enumerate().rev() {
        let color = if o.rank == 1 {
            "red"
        } else if o.within_tolerance {
            "#1f77b4"
        } else {
            "#aaaaaa"
        };
        let r = if o.rank == 1 { 6 } else { 4 };
        out.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{color}\"><title>#{} {}: {} calls, {:.0} MiB average</title></circle>\n",
            sx(xs[i]),
            sy(ys[i]),
            o.rank,
            esc(&o.candidate.label()),
            o.runtime_calls,
            xs[i]
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn write(path: &PathBuf, text: &str) -> aclshm::Result<()> {
    std::fs::write(path, text).map_err(|e| aclshm::Error::InvalidArgument(format!("write {}: {e}", path.display())))
}

/// `aclshm tune`.
pub fn run(rt: &Runtime, args: &TuneArgs) -> aclshm::Result<()> {
    let trace = match Trace::builtin(&args.trace) {
        Some(t) => t,
        None => Trace::load(std::path::Path::new(&args.trace))?,
    };
    if let Some(p) = &args.write_trace {
        write(p, &trace.to_text())?;
        eprintln!("wrote trace {:?} ({} operations) to {}", trace.name, trace.ops.len(), p.display());
        return Ok(());
    }
    if !(0.0..=10.0).contains(&args.tolerance) {
        return Err(aclshm::Error::InvalidArgument(format!("--tolerance {}: a fraction from 0 to 10", args.tolerance)));
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
    if trace.is_kv() && grid.block_tokens.is_empty() {
        return Err(aclshm::Error::InvalidArgument("a KV trace needs --block-tokens".into()));
    }
    raw::set_device(rt, args.device)?;
    let (_, total) = raw::get_mem_info(rt, aclshm::sys::aclrtMemAttr::ACL_HBM_MEM)?;
    let candidates = grid.candidates(total as u64, trace.kv_token_bytes);
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
    let best = &outcomes[0];
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
        println!("{json_text}");
        return Ok(());
    }
    println!(
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
    println!("{}", t.render());
    println!(
        "\n* more than {:.0} % above the least average memory: ranked by memory, after the others",
        args.tolerance * 100.0
    );
    println!(
        "recommended: {} ({} runtime calls, utilisation {:.3})",
        best.candidate.label(),
        best.runtime_calls,
        best.utilisation
    );
    for (what, p) in [("configuration", &args.out_config), ("JSON", &args.out_json), ("plot", &args.out_svg)] {
        if let Some(p) = p {
            println!("wrote the {what} to {}", p.display());
        }
    }
    Ok(())
}
