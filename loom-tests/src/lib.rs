//! loom models of aclshm's concurrent pieces. They only exist under `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p aclshm-loom-tests --release --target-dir target/loom
//! ```
//!
//! Each model is a tiny configuration (two or three threads, a few tasks) with bounded preemptions
//! (`LOOM_MAX_PREEMPTIONS`, 3 by default here), asserting the invariant that matters rather than a trace.

/// Run `f` under loom with this crate's default bound on preemptions.
#[cfg(loom)]
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}
