//! The adversarial suite: what an attacker, or a careless user, can do to aclshm from outside its API's
//! contract, and what each attack must get. Every attack is a typed error or a correct result, promptly,
//! with nothing left behind; never a panic, an abort, a hang or a crash (SIGBUS, SIGSEGV).
//!
//! - `rendezvous`: hostile frames and connections on an owner's rendezvous socket;
//! - `forged`: forged and bit-flipped allocation descriptors and KV block references in a worker
//!   (property tests: every input is a typed error or a pointer inside a live mapping);
//! - `files`: shared files (chunk table, KV block table, pin files) corrupted, truncated or replaced
//!   under live processes, and an owner killed in the middle of a table write;
//! - `extremes`: extreme sizes and counts through every entry point of the library, an owner out of file
//!   descriptors, more workers than a whitelist holds.
//!
//! The command (`cli/tests`) and the Python package (`py/tests/test_adversarial.py`) have suites of
//! their own. Each test here prints `adversarial <area>: N attacks tried, M held` and fails unless
//! every attack held.

mod extremes;
mod files;
mod forged;
mod rendezvous;

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::harness::say;

/// Attacks tried by one process, and those that did not hold.
#[derive(Default)]
pub struct Tally {
    tried: usize,
    broken: Vec<String>,
}

impl Tally {
    /// Run one attack: it holds when `check` returns `Ok` (a panic inside it counts as not holding, with
    /// its message, so one broken attack does not hide the others).
    pub fn attack(&mut self, name: &str, check: impl FnOnce() -> Result<(), String>) {
        self.tried += 1;
        match catch_unwind(AssertUnwindSafe(check)) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => self.broken.push(format!("{name}: {why}")),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.broken.push(format!("{name}: panicked: {why}"));
            }
        }
    }

    /// Add another tally's attacks to this one.
    pub fn merge(&mut self, other: Tally) {
        self.tried += other.tried;
        self.broken.extend(other.broken);
    }

    /// Add what a child reported with [`say_tally`](Tally::say_tally) (the line after `tally `).
    pub fn absorb(&mut self, line: &str) {
        let (tried, broken) = line.split_once(' ').unwrap_or((line, ""));
        self.tried += tried.parse::<usize>().expect("a count of attacks");
        self.broken.extend(broken.split(" || ").filter(|b| !b.is_empty()).map(String::from));
    }

    /// Tell the parent (a child's last word about its attacks).
    pub fn say_tally(&self) {
        say(format!("tally {} {}", self.tried, self.broken.join(" || ")));
    }

    /// Print `adversarial <area>: N attacks tried, M held` and fail unless all held.
    pub fn report(&self, area: &str) {
        let held = self.tried - self.broken.len();
        println!("adversarial {area}: {} attacks tried, {held} held", self.tried);
        assert!(self.broken.is_empty(), "{} attack(s) did not hold:\n{}", self.broken.len(), self.broken.join("\n"));
        assert!(self.tried > 0, "no attack was tried");
    }
}

/// `Ok` if `cond`, else `Err(why)`: the shape of most checks.
pub fn ensure(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}
