//! Child processes of this program (the demo's workers, the bench's peer, a demo the scaling bench runs):
//! the same binary, on the same runtime as this process.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use aclshm::{Backend, Runtime};

/// A command that runs this program on `rt`'s runtime (the ACL library this process loaded, or the
/// simulator); the caller adds the arguments and the pipes.
pub fn this_program(rt: &Runtime) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program to start a child process: {e}"))?;
    let mut cmd = Command::new(exe);
    match rt.backend() {
        Backend::Library { path, .. } => cmd.env("ACLSHM_BACKEND", "acl").env("ACLSHM_ACL_LIB", path),
        _ => cmd.env("ACLSHM_BACKEND", "sim"),
    };
    Ok(cmd)
}

/// Wait for `child` to exit until `deadline`, looking every `every`: its status, or None if it still
/// runs then (the caller kills it).
pub fn wait_until(child: &mut Child, deadline: Instant, every: Duration) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(every),
            _ => return None,
        }
    }
}
