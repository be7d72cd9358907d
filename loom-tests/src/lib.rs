//! loom models of aclshm's concurrent pieces. They only exist under `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p aclshm-loom-tests --release --target-dir target/loom
//! ```
//!
//! Each model is a tiny configuration (two or three threads, a few tasks) with bounded preemptions
//! (`LOOM_MAX_PREEMPTIONS`, 3 by default here), asserting the invariant that matters rather than a trace.

#[cfg(loom)]
pub mod fake;

/// Run `f` under loom with this crate's default bound on preemptions, one model at a time (the fake
/// device is process-wide), and say how many interleavings it explored.
#[cfg(loom)]
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&runs);
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f()
    });
    let n = runs.load(Ordering::Relaxed);
    eprintln!("loom: {n} interleavings explored");
    assert!(n > 1, "the model explored a single interleaving: it has no concurrency to check");
}
