//! What the benchmarks share: private simulator and share directories, and child processes (a benchmark
//! that needs an owner in another process re-runs its own binary in a role).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const ROLE: &str = "ACLSHM_BENCH_ROLE";

/// Private directories for one benchmark run, set in the environment (children inherit them); the share
/// directory is removed on drop, the simulator removes its own when its last process leaves.
pub struct Dirs {
    share: PathBuf,
}

/// Set up the directories (the parent only: a child inherits its parent's).
pub fn dirs() -> Dirs {
    let base = std::env::temp_dir().join(format!("aclshm-bench-{}", std::process::id()));
    let share = base.with_extension("share");
    if role().is_none() {
        // SAFETY: first thing in main, before any thread starts.
        unsafe {
            std::env::set_var("ACLSHM_SIM_DIR", &base);
            std::env::set_var("ACLSHM_SHARE_DIR", &share);
            std::env::set_var("ACLSHM_BACKEND", "sim");
        }
    }
    Dirs { share }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        if role().is_none() {
            let _ = std::fs::remove_dir_all(&self.share);
        }
    }
}

/// The role of this process, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A child process playing a role, talked to in lines.
pub struct Peer {
    child: Child,
    to: ChildStdin,
    from: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    pub fn spawn(role: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(std::env::current_exe().expect("the benchmark binary"))
            .args(args)
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a child");
        let to = child.stdin.take().expect("stdin");
        let from = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Peer { child, to, from }
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.to, "{line}").and_then(|()| self.to.flush()).expect("the child is listening");
    }

    pub fn recv(&mut self) -> String {
        self.from.next().expect("the child answered").expect("a line")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = self.child.wait();
    }
}

/// In a child: say a line to the parent.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).expect("the parent is listening");
}

/// In a child: the parent's next line (None when it is gone or says quit).
pub fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) if line.trim() == "quit" => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}
