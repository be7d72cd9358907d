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

use aclshm::{AllocDesc, Allocation, Mirror, Pool, PoolConfig, Runtime, ShareConfig, ShareDesc, raw};

use crate::harness::*;

pub const MIB: u64 = 1 << 20;

/// A pool of 2 MiB chunks and 32 MiB of range on device 0's runtime.
pub fn small() -> PoolConfig {
    PoolConfig { chunk_bytes: 2 * MIB, reserve_bytes: 32 * MIB, ..PoolConfig::default() }
}

/// An owner's start: a shared pool on device 0 with one allocation of 1 MiB filled from `seed`; tells the
/// parent `share <desc>` and `desc <allocation descriptor>`.
pub fn owner_with_data(rt: &Runtime, seed: u64) -> (Pool, Allocation) {
    raw::set_device(rt, 0).unwrap();
    let pool = Pool::new(rt, 0, small()).unwrap();
    let a = pool.alloc(MIB).unwrap();
    fill(rt, a.as_ptr(), a.len(), seed);
    say(format!("share {}", pool.share(ShareConfig::default()).unwrap()));
    say(format!("desc {}", pool.descriptor(&a).unwrap().to_hex()));
    (pool, a)
}

/// A worker's start: hear `share` and `desc`, attach on device 1 and check the owner's bytes (filled from
/// `seed`); the attach's error if it is refused.
pub fn attach_and_check(rt: &Runtime, seed: u64) -> aclshm::Result<(Mirror, AllocDesc)> {
    let desc: ShareDesc = hear_as("share");
    let d = AllocDesc::from_hex(&hear_word("desc")).unwrap();
    raw::set_device(rt, 1).unwrap();
    let m = Mirror::attach(rt, &desc, 1)?;
    assert!(holds(rt, m.ptr(&d).unwrap(), d.len(), seed), "the owner's bytes through the mirror");
    Ok((m, d))
}

/// A worker's answer to its attach: `attached` (then, if `stay`, it waits for `done`) and it detaches, or
/// `refused <why>`; then `ok`.
pub fn answer_attach(attached: aclshm::Result<Mirror>, stay: bool) {
    match attached {
        Ok(m) => {
            say("attached");
            if stay {
                hear_word("done");
            }
            m.close().unwrap();
        }
        Err(e) => say(format!("refused {e}")),
    }
    say("ok");
}

/// Start a worker, give it `share` and `desc`, and return its first answer once it has ended (it says
/// that answer, then `ok`).
pub fn try_worker(sc: &Scenario, share: &str, desc: &str) -> String {
    let mut w = sc.spawn("worker");
    w.send(format!("share {share}"));
    w.send(format!("desc {desc}"));
    let answer = w.recv();
    w.expect("ok");
    w.join();
    answer
}

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
