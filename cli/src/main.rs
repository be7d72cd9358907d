//! `aclshm`: the command-line face of the library.

use std::process::ExitCode;

use aclshm::{Runtime, RuntimeInfo};
use clap::{Parser, Subcommand, ValueEnum};

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
    /// Show the ACL runtime in use: backend, version, devices (memory, granularity) and, for the
    /// simulator, its directory and configuration.
    Info,
}

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

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn info(rt: &Runtime) -> aclshm::Result<()> {
    let info = RuntimeInfo::gather(rt)?;
    println!("backend:      {}", info.backend);
    match info.version {
        Some((a, b, c)) => println!("ACL version:  {a}.{b}.{c}"),
        None => println!("ACL version:  unknown"),
    }
    if let Some(sim) = &info.simulator {
        println!("simulator:    aclshm-sim {}", sim.version);
        println!("sim dir:      {}", sim.dir.display());
        println!("sim capacity: {} per device", bytes(sim.hbm_bytes));
        println!("sim state:    {} process(es) attached, {} physical object(s) alive", sim.processes, sim.phys_objects);
    }
    println!("devices:      {}", info.devices.len());
    for d in &info.devices {
        println!(
            "  device {}: {} total, {} free, granularity {} (recommended {})",
            d.id,
            bytes(d.total_bytes as u64),
            bytes(d.free_bytes as u64),
            bytes(d.granularity as u64),
            bytes(d.granularity_recommended as u64)
        );
    }
    if !info.missing.is_empty() {
        println!(
            "missing:      {} (an older CANN release; features needing them are unavailable)",
            info.missing.join(", ")
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = runtime(&cli).and_then(|rt| match cli.command {
        Command::Info => info(&rt),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aclshm: {e}");
            ExitCode::FAILURE
        }
    }
}
