//! `aclshm`: the command-line face of the library.

mod bench;
mod child;
mod demo;
mod out;
mod report;
mod scaling;
mod sim;
mod svg;
mod tune;

use std::io::IsTerminal;
use std::process::ExitCode;

use aclshm::{Runtime, RuntimeInfo};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use out::outln;
use report::bytes;

/// Share Ascend NPU memory between processes through the ACL runtime.
///
/// Without an NPU, aclshm runs on its built-in simulator of the ACL runtime.
#[derive(Parser, Debug)]
#[command(name = "aclshm", version, about, long_about = None)]
struct Cli {
    /// Which ACL runtime to use: `acl` (a libascendcl.so: --acl-lib, or $ASCEND_HOME_PATH/lib64, or the
    /// loader path), `sim` (the built-in simulator), `auto` (CANN if one reports a device, else the
    /// simulator). Default: $ACLSHM_BACKEND, else auto.
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArg>,

    /// The libascendcl.so to load with `--backend acl`. Default: $ACLSHM_ACL_LIB, else a search.
    #[arg(long, global = true, value_name = "PATH")]
    acl_lib: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BackendArg {
    Acl,
    Sim,
    Auto,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the multi-process serving demo: a scheduler (this process) and worker processes share one pool
    /// of KV-cache blocks through the rendezvous; workers on every device write blocks, verify each
    /// other's (pinned, while the scheduler frees them), and IPC notifies signal each phase. Prints a
    /// summary (runtime calls, imports per worker, bytes verified, time per phase); fails if any byte does
    /// not verify.
    Demo(demo::DemoArgs),
    /// Choose pool parameters by measurement: replay an allocation trace over a grid of configurations
    /// (chunk size, trim watermark, pre-mapped reserve, KV block size) on the active backend, rank them
    /// (memory first, within a tolerance; then runtime calls, attach imports, p99 latency), and write the
    /// recommendation as a configuration file that `PoolConfig::load` reads.
    #[command(after_long_help = TRACE_FORMAT)]
    Tune(tune::TuneArgs),
    /// Measure what each VMM and IPC call aclshm makes costs on the runtime in use (2 MiB, 20 MiB and
    /// 1 GiB where a size applies; imports in a child process, as the runtime requires), and what the
    /// library adds to them (pool and KV block allocation, growth, attaching a mirror of 8 chunks). Prints
    /// medians, p10 and p90 in microseconds; `--json` for scripts, `--out DIR` for bench.json and bench.md.
    /// `--scaling`: how attaching, growing, KV blocks and the demo scale, each against the runtime calls it
    /// needs, with a plot of each.
    Bench(bench::BenchArgs),
    /// A worker of `aclshm demo` (started by it).
    #[command(hide = true)]
    DemoWorker(demo::WorkerArgs),
    /// The importing process of `aclshm bench` (started by it).
    #[command(hide = true)]
    BenchPeer(bench::PeerArgs),
    /// Show the ACL runtime in use: backend, version, devices (memory, granularity) and, for the
    /// simulator, its directory and configuration.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Look after the simulator: what its processes hold, and reclaiming what dead ones left.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// List the processes attached to the simulator's directory, alive or dead, and the objects each
    /// holds; and the files in the share directory.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release what processes that died left in the simulator (as the driver does when a process exits),
    /// remove share files whose creator is gone, and show what is left.
    Clean {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

const TRACE_FORMAT: &str = "Trace files (a text format; `--write-trace FILE` writes a built-in one):

  aclshm-trace 1                  the first line
  # a comment
  kv-token-bytes 131072           KV traces: bytes of keys and values of one token
  alloc <id> <bytes>              allocate (sizes take K, M, G)
  free <id>
  kv-alloc <id> <tokens>          a request's KV cache starts with this many tokens
  kv-extend <id> <tokens>         it grows (decoding)
  kv-free <id>                    it ends

A trace file holds at most 256 MiB, and may be a pipe (`--trace /dev/stdin`). Errors name the line.
Built-in traces: `serving` (weights, then requests allocating activations of mixed sizes) and `kv` (a
KV-cache manager under a load that rises and falls).";

fn runtime(cli: &Cli) -> aclshm::Result<Runtime> {
    let backend = match cli.backend {
        Some(BackendArg::Acl) => "acl".to_string(),
        Some(BackendArg::Sim) => "sim".to_string(),
        Some(BackendArg::Auto) => "auto".to_string(),
        None => std::env::var("ACLSHM_BACKEND").unwrap_or_default(),
    };
    let lib =
        cli.acl_lib.clone().or_else(|| std::env::var_os("ACLSHM_ACL_LIB").filter(|v| !v.is_empty()).map(Into::into));
    Runtime::select(&backend, lib.as_deref())
}

/// `aclshm info --json`.
#[derive(Serialize)]
struct InfoJson {
    backend: String,
    version: Option<String>,
    simulator: Option<SimJson>,
    devices: Vec<DeviceJson>,
    missing: Vec<&'static str>,
}

#[derive(Serialize)]
struct SimJson {
    version: String,
    dir: String,
    hbm_bytes: u64,
    processes: u32,
    phys_objects: u32,
}

#[derive(Serialize)]
struct DeviceJson {
    id: i32,
    total_bytes: usize,
    free_bytes: usize,
    granularity: usize,
    granularity_recommended: usize,
}

fn info(rt: &Runtime, json: bool) -> out::Result {
    let info = RuntimeInfo::gather(rt)?;
    if json {
        let j = InfoJson {
            backend: info.backend.to_string(),
            version: info.version.map(|(a, b, c)| format!("{a}.{b}.{c}")),
            simulator: info.simulator.as_ref().map(|s| SimJson {
                version: s.version.clone(),
                dir: s.dir.display().to_string(),
                hbm_bytes: s.hbm_bytes,
                processes: s.processes,
                phys_objects: s.phys_objects,
            }),
            devices: info
                .devices
                .iter()
                .map(|d| DeviceJson {
                    id: d.id,
                    total_bytes: d.total_bytes,
                    free_bytes: d.free_bytes,
                    granularity: d.granularity,
                    granularity_recommended: d.granularity_recommended,
                })
                .collect(),
            missing: info.missing.clone(),
        };
        outln!("{}", serde_json::to_string_pretty(&j).expect("plain data serialises"));
        return Ok(());
    }
    outln!("backend:      {}", info.backend);
    match info.version {
        Some((a, b, c)) => outln!("ACL version:  {a}.{b}.{c}"),
        None => outln!("ACL version:  unknown"),
    }
    if let Some(sim) = &info.simulator {
        outln!("simulator:    aclshm-sim {}", sim.version);
        outln!("sim dir:      {}", sim.dir.display());
        outln!("sim capacity: {} per device", bytes(sim.hbm_bytes));
        outln!("sim state:    {} process(es) attached, {} physical object(s) alive", sim.processes, sim.phys_objects);
    }
    outln!("devices:      {}", info.devices.len());
    for d in &info.devices {
        outln!(
            "  device {}: {} total, {} free, granularity {} (recommended {})",
            d.id,
            bytes(d.total_bytes as u64),
            bytes(d.free_bytes as u64),
            bytes(d.granularity as u64),
            bytes(d.granularity_recommended as u64)
        );
    }
    if !info.missing.is_empty() {
        outln!(
            "missing:      {} (an older CANN release; features needing them are unavailable)",
            info.missing.join(", ")
        );
    }
    Ok(())
}

/// `--help` and `--version` go to stdout like any output; usage errors to stderr (clap ignores a failure
/// to write them, as `errln!` does).
fn parse_failed(e: clap::Error) -> ExitCode {
    let code = ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    if e.use_stderr() || std::io::stdout().is_terminal() {
        // On a terminal, clap colours the text; a terminal that fails a write is beyond help.
        let _ = e.print();
        return code;
    }
    match out::print(&e.render().to_string()) {
        Ok(()) => code,
        failed => out::exit(failed),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_failed(e),
    };
    if matches!(cli.command, Command::Tune(_)) && std::env::var_os("ACLSHM_SIM_COMMIT").is_none() {
        // The tuner allocates and never touches the memory: on the simulator, let it back device memory
        // only when written, so traces of real models' sizes replay without using as much host memory.
        // SAFETY: the first thing main does, before any thread starts.
        unsafe { std::env::set_var("ACLSHM_SIM_COMMIT", "lazy") };
    }
    if let Command::DemoWorker(args) = &cli.command {
        // A worker takes its runtime from the environment the scheduler gave it.
        return demo::worker(args);
    }
    if let Command::BenchPeer(args) = &cli.command {
        // So does the bench's peer.
        return bench::peer(args);
    }
    let rt = match runtime(&cli) {
        Ok(rt) => rt,
        Err(e) => return out::exit(Err(e.into())),
    };
    out::exit(match &cli.command {
        Command::Demo(args) => demo::demo(&rt, args),
        Command::DemoWorker(_) | Command::BenchPeer(_) => unreachable!("handled above"),
        Command::Bench(args) if args.scaling => scaling::run(&rt, args),
        Command::Bench(args) => bench::run(&rt, args),
        Command::Info { json } => info(&rt, *json),
        Command::Tune(args) => tune::run(&rt, args),
        Command::Sim { command: SimCommand::Status { json } } => sim::run_status(&rt, *json),
        Command::Sim { command: SimCommand::Clean { json } } => sim::run_clean(&rt, *json),
    })
}
