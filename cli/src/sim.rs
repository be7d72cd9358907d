//! `aclshm sim status` and `aclshm sim clean`: the simulator's objects by owner process, and reclaiming
//! what processes that died left.

use std::time::Duration;

use aclshm::{Runtime, raw};
use serde::Serialize;

use crate::out::{self, outln};
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

/// `looked` came from a call that looks at the simulator's directory without joining it. Such a call
/// fails with a bare code (an internal error) when the directory is not one the simulator can use: a
/// file in its place, a registry of another user's or open to others. The simulator says why when it
/// starts, as it does for `aclshm info`: so start it, and let it tell. If it starts after all, the failure
/// was something else, and is reported as it is.
fn why<T>(rt: &Runtime, looked: aclshm::Result<T>) -> aclshm::Result<T> {
    match looked {
        Err(e @ aclshm::Error::Acl { .. }) => Err(raw::get_device_count(rt).err().unwrap_or(e)),
        other => other,
    }
}

fn status(rt: &Runtime) -> aclshm::Result<Status> {
    let processes = why(rt, raw::sim_list_processes(rt))?
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

fn print_status(s: &Status) -> out::Result {
    outln!("simulator directory: {}", s.dir);
    if s.processes.is_empty() {
        outln!("no process is attached to the simulator");
    } else {
        print_processes(&s.processes)?;
    }
    outln!("share directory: {} ({} file(s))", s.share_dir, s.share_files.len());
    for f in &s.share_files {
        outln!("  {f}");
    }
    Ok(())
}

fn print_processes(processes: &[Process]) -> out::Result {
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
    outln!("{}", t.render());
    let dead = processes.iter().filter(|p| !p.alive).count();
    if dead > 0 {
        outln!("{dead} process(es) died holding objects: `aclshm sim clean` releases them");
    }
    Ok(())
}

/// `aclshm sim status`.
pub fn run_status(rt: &Runtime, json: bool) -> out::Result {
    need_sim(rt)?;
    let s = status(rt)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&s).expect("plain data serialises"));
    } else {
        print_status(&s)?;
    }
    Ok(())
}

/// `aclshm sim clean`.
pub fn run_clean(rt: &Runtime, json: bool) -> out::Result {
    need_sim(rt)?;
    let reclaimed_processes = why(rt, raw::sim_reclaim(rt))?;
    let share_files_removed = aclshm::sweep_share_dir(&aclshm::share::default_dir(), Duration::from_secs(1));
    let after = status(rt)?;
    if json {
        let c = Cleaned { reclaimed_processes, share_files_removed, after };
        outln!("{}", serde_json::to_string_pretty(&c).expect("plain data serialises"));
    } else {
        outln!(
            "reclaimed {reclaimed_processes} dead process(es); removed {share_files_removed} orphaned share file(s)"
        );
        print_status(&after)?;
    }
    Ok(())
}
