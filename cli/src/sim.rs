//! `aclshm sim status` and `aclshm sim clean`: the simulator's objects by owner process, and reclaiming
//! what processes that died left.

use std::time::Duration;

use aclshm::{Runtime, raw};
use serde::Serialize;

use crate::report::{Table, bytes};

/// One process attached to the simulator directory.
#[derive(Debug, Serialize)]
pub struct Process {
    pid: i32,
    host_pid: i32,
    alive: bool,
    phys_allocated: u32,
    bytes_allocated: u64,
    phys_held: u32,
    exports: u32,
    ipc_keys: u32,
    ipc_imports: u32,
    notifies: u32,
}

#[derive(Debug, Serialize)]
struct Status {
    dir: String,
    share_dir: String,
    processes: Vec<Process>,
    share_files: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Cleaned {
    reclaimed_processes: u32,
    share_files_removed: usize,
    after: Status,
}

fn need_sim(rt: &Runtime) -> aclshm::Result<()> {
    if rt.is_simulator() {
        Ok(())
    } else {
        Err(aclshm::Error::Backend {
            source: None,
            reason: format!(
                "`aclshm sim` looks at the simulator, and the runtime is {} (use --backend sim)",
                rt.backend()
            ),
        })
    }
}

fn status(rt: &Runtime) -> aclshm::Result<Status> {
    let processes = raw::sim_list_processes(rt)?
        .into_iter()
        .map(|p| Process {
            pid: p.pid,
            host_pid: p.bareTgid,
            alive: p.alive != 0,
            phys_allocated: p.physAllocated,
            bytes_allocated: p.bytesAllocated,
            phys_held: p.physHeld,
            exports: p.exports,
            ipc_keys: p.ipcKeys,
            ipc_imports: p.ipcImports,
            notifies: p.notifies,
        })
        .collect();
    let share = aclshm::share::default_dir();
    let mut share_files: Vec<String> = std::fs::read_dir(&share)
        .map(|it| it.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    share_files.sort();
    Ok(Status {
        dir: raw::sim_get_dir(rt)?.display().to_string(),
        share_dir: share.display().to_string(),
        processes,
        share_files,
    })
}

fn print_status(s: &Status) {
    println!("simulator directory: {}", s.dir);
    if s.processes.is_empty() {
        println!("no process is attached to the simulator");
    } else {
        print_processes(&s.processes);
    }
    println!("share directory: {} ({} file(s))", s.share_dir, s.share_files.len());
    for f in &s.share_files {
        println!("  {f}");
    }
}

fn print_processes(processes: &[Process]) {
    let mut t = Table::new(&[
        "pid",
        "host pid",
        "state",
        "allocated",
        "bytes",
        "held",
        "exports",
        "ipc keys",
        "ipc imports",
        "notifies",
    ]);
    for p in processes {
        let state = if p.alive { "running" } else { "dead" };
        t.row(vec![
            p.pid.to_string(),
            p.host_pid.to_string(),
            state.to_string(),
            p.phys_allocated.to_string(),
            bytes(p.bytes_allocated),
            p.phys_held.to_string(),
            p.exports.to_string(),
            p.ipc_keys.to_string(),
            p.ipc_imports.to_string(),
            p.notifies.to_string(),
        ]);
    }
    println!("{}", t.render());
    let dead = processes.iter().filter(|p| !p.alive).count();
    if dead > 0 {
        println!("{dead} process(es) died holding objects: `aclshm sim clean` releases them");
    }
}

/// `aclshm sim status`.
pub fn run_status(rt: &Runtime, json: bool) -> aclshm::Result<()> {
    need_sim(rt)?;
    let s = status(rt)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).expect("plain data serialises"));
    } else {
        print_status(&s);
    }
    Ok(())
}

/// `aclshm sim clean`.
pub fn run_clean(rt: &Runtime, json: bool) -> aclshm::Result<()> {
    need_sim(rt)?;
    let reclaimed_processes = raw::sim_reclaim(rt)?;
    let share_files_removed = aclshm::sweep_share_dir(&aclshm::share::default_dir(), Duration::from_secs(1));
    let after = status(rt)?;
    if json {
        let c = Cleaned { reclaimed_processes, share_files_removed, after };
        println!("{}", serde_json::to_string_pretty(&c).expect("plain data serialises"));
    } else {
        println!(
            "reclaimed {reclaimed_processes} dead process(es); removed {share_files_removed} orphaned share file(s)"
        );
        print_status(&after);
    }
    Ok(())
}
