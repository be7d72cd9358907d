//! Choosing pool parameters by measurement: replay an allocation [`Trace`] over a grid of candidate
//! configurations on a runtime, measure each, rank them. What `aclshm tune` runs.
//!
//! For each candidate the replay measures:
//!
//! - **runtime calls**: every ACL call the pool made, from creating it to closing it (growth, trims);
//! - **allocation latency**, p50 and p99 over the trace's allocations (growth shows in the tail);
//! - **memory**: mapped bytes at the peak, and averaged over the trace's steps, against the bytes the
//!   trace holds (for KV traces, the tokens' bytes: a block's unused tail counts as waste);
//! - **attach imports**: chunks mapped at the peak: what a worker attaching then imports.
//!
//! **Ranking.** Memory comes first, since device memory is what serving runs out of: the candidates whose
//! average mapped bytes are within `tolerance` (10 % in `aclshm tune`) of the best are ranked by runtime calls,
//! then attach imports, then p99 latency; the others follow, by average mapped bytes. The first is the
//! recommendation. The rule favours large chunks when they cost no memory (a model's weights dominate)
//! and small ones when the load rises and falls (large chunks hold on to memory blocks are scattered in).

pub mod trace;

use std::collections::HashMap;
use std::time::Instant;

pub use trace::{Op, Trace};

use crate::error::{Error, Result};
use crate::pool::{Allocation, Block, Pool, PoolConfig};
use crate::runtime::Runtime;

/// One configuration to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The pool's configuration.
    pub pool: PoolConfig,
    /// Tokens per KV block (KV traces only).
    pub block_tokens: Option<u32>,
}

impl Candidate {
    /// Bytes per KV block for a trace with `token_bytes` per token (rounded up to the pool's granule);
    /// `None` without a block size, or for one that overflows 64 bits.
    pub fn block_bytes(&self, token_bytes: u64) -> Option<u64> {
        u64::from(self.block_tokens?).checked_mul(token_bytes)?.checked_next_multiple_of(crate::pool::GRANULE)
    }

    /// A short label: `chunk 8M, trim 64M, reserve 0, block 32 tok`.
    pub fn label(&self) -> String {
        let mib = |b: u64| format!("{}M", b >> 20);
        let trim = match self.pool.trim_watermark {
            None => "never".to_string(),
            Some(0) => "eager".to_string(),
            Some(w) => mib(w),
        };
        let mut s = format!("chunk {}, trim {trim}, reserve {}", mib(self.pool.chunk_bytes), self.pool.reserve_chunks);
        if let Some(t) = self.block_tokens {
            s.push_str(&format!(", block {t} tok"));
        }
        s
    }
}

/// The grid of candidates: every combination of the values listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    /// Chunk sizes.
    pub chunk_bytes: Vec<u64>,
    /// Trim watermarks (`None`: never trim on free).
    pub trim_watermarks: Vec<Option<u64>>,
    /// Pre-mapped chunks (variable-size allocations only; KV blocks do not use them).
    pub reserve_chunks: Vec<u32>,
    /// Tokens per KV block (KV traces only).
    pub block_tokens: Vec<u32>,
}

impl Grid {
    /// The default grid for a trace: chunks of 2 to 64 MiB; trimming eagerly, above 256 MiB, or never;
    /// no reserve or 8 chunks (not for KV traces); blocks of 16, 32 or 64 tokens (KV traces).
    pub fn default_for(trace: &Trace) -> Grid {
        Grid {
            chunk_bytes: [2u64, 4, 8, 16, 32, 64].iter().map(|m| m << 20).collect(),
            trim_watermarks: vec![Some(0), Some(256 << 20), None],
            reserve_chunks: if trace.is_kv() { vec![0] } else { vec![0, 8] },
            block_tokens: if trace.is_kv() { vec![16, 32, 64] } else { Vec::new() },
        }
    }

    /// Every candidate, with `reserve_bytes` for the range; for a KV trace of `token_bytes` per token,
    /// those whose block fits a chunk. Values no pool can take (a chunk of 0 bytes, a range that
    /// overflows) give no candidate; `Pool::new` judges the rest.
    pub fn candidates(&self, reserve_bytes: u64, token_bytes: Option<u64>) -> Vec<Candidate> {
        let tokens: Vec<Option<u32>> = if self.block_tokens.is_empty() {
            vec![None]
        } else {
            self.block_tokens.iter().map(|&t| Some(t)).collect()
        };
        let mut out = Vec::new();
        for &chunk in &self.chunk_bytes {
            let Some(reserve_bytes) = reserve_bytes.checked_next_multiple_of(chunk) else { continue };
            for &trim in &self.trim_watermarks {
                for &reserve in &self.reserve_chunks {
                    for &t in &tokens {
                        let pool = PoolConfig {
                            chunk_bytes: chunk,
                            reserve_bytes,
                            trim_watermark: trim,
                            reserve_chunks: reserve,
                            ..PoolConfig::default()
                        };
                        let c = Candidate { pool, block_tokens: t };
                        if token_bytes.and_then(|b| c.block_bytes(b)).is_none_or(|b| b <= chunk) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        out
    }
}

/// What one candidate did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The candidate.
    pub candidate: Candidate,
    /// ACL calls made, from creating the pool to closing it.
    pub runtime_calls: u64,
    /// Median allocation latency, in nanoseconds.
    pub alloc_p50_ns: u64,
    /// 99th-percentile allocation latency, in nanoseconds.
    pub alloc_p99_ns: u64,
    /// Mapped bytes at the peak.
    pub peak_mapped: u64,
    /// Mapped bytes, averaged over the trace's steps.
    pub avg_mapped: f64,
    /// Bytes the trace holds, averaged over its steps.
    pub avg_live: f64,
    /// `avg_live / avg_mapped`.
    pub utilisation: f64,
    /// Chunks mapped at the peak (what a worker attaching then imports).
    pub attach_imports: u64,
    /// Its place in the ranking (1: the recommendation); 0 until [`rank`] runs.
    pub rank: usize,
    /// Whether its average mapped bytes are within the tolerance of the best.
    pub within_tolerance: bool,
}

fn total_calls(rt: &Runtime) -> u64 {
    rt.call_counts().iter().map(|c| c.1).sum()
}

/// Replay `trace` on a new pool of `candidate` on `device`, and measure it. The pool is closed after. A
/// trace that frees what is not live (one built by hand rather than by [`Trace::parse`]) or a block of 0
/// tokens is [`Error::InvalidArgument`].
pub fn replay(rt: &Runtime, device: i32, trace: &Trace, candidate: &Candidate) -> Result<Outcome> {
    let token_bytes = trace.kv_token_bytes.unwrap_or(0);
    if candidate.block_tokens == Some(0) {
        return Err(Error::InvalidArgument("a KV block of 0 tokens".into()));
    }
    let block_bytes = match (trace.is_kv(), candidate.block_bytes(token_bytes)) {
        (true, None) => {
            return Err(Error::InvalidArgument(format!(
                "a KV trace needs a block size that fits 64 bits ({:?} tokens of {token_bytes} bytes)",
                candidate.block_tokens
            )));
        }
        (_, b) => b,
    };
    check_ops(trace)?;
    let not_live =
        |what: &str, id: u64| Error::InvalidArgument(format!("the trace frees {what} {id}, which is not live"));
    let calls_before = total_calls(rt);
    let pool = Pool::new(rt, device, candidate.pool.clone())?;
    let class = block_bytes.map(|b| pool.block_class(b)).transpose()?;
    let mut heap: HashMap<u64, (Allocation, u64)> = HashMap::new();
    let mut kv: HashMap<u64, (Vec<Block>, u64)> = HashMap::new();
    let (mut live, mut latencies) = (0u64, Vec::with_capacity(trace.ops.len()));
    let (mut mapped_sum, mut live_sum, mut peak_mapped) = (0f64, 0f64, 0u64);
    let blocks_for = |tokens: u64| tokens.div_ceil(u64::from(candidate.block_tokens.unwrap_or(1))) as usize;
    let result = (|| -> Result<()> {
        for op in &trace.ops {
            match *op {
                Op::Alloc { id, bytes } => {
                    let t = Instant::now();
                    let a = pool.alloc(bytes)?;
                    latencies.push(t.elapsed().as_nanos() as u64);
                    heap.insert(id, (a, bytes));
                    live = live.saturating_add(bytes);
                }
                Op::Free { id } => {
                    let (a, bytes) = heap.remove(&id).ok_or_else(|| not_live("id", id))?;
                    pool.free(a)?;
                    live = live.saturating_sub(bytes);
                }
                Op::KvAlloc { id, tokens } => {
                    let t = Instant::now();
                    let class = class.ok_or_else(|| {
                        Error::InvalidArgument("a KV operation in a trace without kv-token-bytes".into())
                    })?;
                    let blocks = pool.alloc_blocks(class, blocks_for(tokens))?;
                    latencies.push(t.elapsed().as_nanos() as u64);
                    kv.insert(id, (blocks, tokens));
                    live = live.saturating_add(tokens.saturating_mul(token_bytes));
                }
                Op::KvExtend { id, tokens } => {
                    let (blocks, have) = kv.get_mut(&id).ok_or_else(|| not_live("request", id))?;
                    let more = blocks_for(have.saturating_add(tokens)).saturating_sub(blocks.len());
                    if more > 0 {
                        let t = Instant::now();
                        let class = class.ok_or_else(|| {
                            Error::InvalidArgument("a KV operation in a trace without kv-token-bytes".into())
                        })?;
                        blocks.extend(pool.alloc_blocks(class, more)?);
                        latencies.push(t.elapsed().as_nanos() as u64);
                    }
                    *have = have.saturating_add(tokens);
                    live = live.saturating_add(tokens.saturating_mul(token_bytes));
                }
                Op::KvFree { id } => {
                    let (blocks, tokens) = kv.remove(&id).ok_or_else(|| not_live("request", id))?;
                    pool.free_blocks(&blocks)?;
                    live = live.saturating_sub(tokens.saturating_mul(token_bytes));
                }
            }
            let mapped = pool.mapped_bytes();
            peak_mapped = peak_mapped.max(mapped);
            mapped_sum += mapped as f64;
            live_sum += live as f64;
        }
        for (_, (a, _)) in heap.drain() {
            pool.free(a)?;
        }
        for (_, (b, _)) in kv.drain() {
            pool.free_blocks(&b)?;
        }
        Ok(())
    })();
    let closed = pool.close();
    result?;
    closed?;
    latencies.sort_unstable();
    let pct = |p: usize| latencies.get((latencies.len().saturating_sub(1)) * p / 100).copied().unwrap_or(0);
    let steps = trace.ops.len() as f64;
    let (avg_mapped, avg_live) = (mapped_sum / steps, live_sum / steps);
    Ok(Outcome {
        candidate: candidate.clone(),
        runtime_calls: total_calls(rt) - calls_before,
        alloc_p50_ns: pct(50),
        alloc_p99_ns: pct(99),
        peak_mapped,
        avg_mapped,
        avg_live,
        utilisation: if avg_mapped > 0.0 { avg_live / avg_mapped } else { 0.0 },
        attach_imports: peak_mapped / candidate.pool.chunk_bytes.max(1),
        rank: 0,
        within_tolerance: false,
    })
}

/// Check what [`Trace::parse`] checks of a trace's operations, for one built by hand: every id freed or
/// extended is live, none is allocated twice, KV operations come with `kv_token_bytes`. Before any
/// runtime call.
fn check_ops(trace: &Trace) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidArgument(format!("trace {}: {why}", trace.name)));
    let (mut heap, mut kv) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for op in &trace.ops {
        let ok = match *op {
            Op::Alloc { id, .. } => heap.insert(id),
            Op::Free { id } => heap.remove(&id),
            Op::KvAlloc { id, .. } | Op::KvExtend { id, .. } | Op::KvFree { id } if trace.kv_token_bytes.is_none() => {
                return bad(format!("request {id}: a KV operation in a trace without kv-token-bytes"));
            }
            Op::KvAlloc { id, .. } => kv.insert(id),
            Op::KvExtend { id, .. } => kv.contains(&id),
            Op::KvFree { id } => kv.remove(&id),
        };
        if !ok {
            return bad(format!(
                "{op:?} does not follow from the operations before it (an id freed that is not live, or allocated twice)"
            ));
        }
    }
    Ok(())
}

/// Rank outcomes (see the [module](self) docs): sorts them, best first, and sets `rank` and
/// `within_tolerance`.
pub fn rank(outcomes: &mut [Outcome], tolerance: f64) {
    let best = outcomes.iter().map(|o| o.avg_mapped).fold(f64::INFINITY, f64::min);
    for o in outcomes.iter_mut() {
        o.within_tolerance = o.avg_mapped <= best * (1.0 + tolerance);
    }
    outcomes.sort_by(|a, b| {
        b.within_tolerance.cmp(&a.within_tolerance).then_with(|| {
            if a.within_tolerance {
                (a.runtime_calls, a.attach_imports, a.alloc_p99_ns).cmp(&(
                    b.runtime_calls,
                    b.attach_imports,
                    b.alloc_p99_ns,
                ))
            } else {
                a.avg_mapped.total_cmp(&b.avg_mapped)
            }
        })
    });
    for (i, o) in outcomes.iter_mut().enumerate() {
        o.rank = i + 1;
    }
}

/// The configuration file of an outcome (what [`PoolConfig::load`] and [`KvConfig::load`](crate::KvConfig::load)
/// read), with a header saying where it came from.
pub fn config_file(o: &Outcome, trace: &Trace, backend: &str) -> String {
    let f = crate::pool::ConfigFile {
        pool: o.candidate.pool.clone(),
        kv_block_bytes: trace.kv_token_bytes.and_then(|b| o.candidate.block_bytes(b)),
    };
    format!(
        "# aclshm pool configuration, chosen by `aclshm tune` on trace {:?} ({}); backend: {backend}\n\
         # runtime calls {}, p99 allocation {} ns, peak mapped {} bytes, utilisation {:.3}\n{f}",
        trace.name,
        o.candidate.label(),
        o.runtime_calls,
        o.alloc_p99_ns,
        o.peak_mapped,
        o.utilisation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(chunk: u64, calls: u64, avg_mapped: f64) -> Outcome {
        Outcome {
            candidate: Candidate {
                pool: PoolConfig { chunk_bytes: chunk << 20, ..PoolConfig::default() },
                block_tokens: None,
            },
            runtime_calls: calls,
            alloc_p50_ns: 1,
            alloc_p99_ns: 1,
            peak_mapped: 0,
            avg_mapped,
            avg_live: 1.0,
            utilisation: 0.0,
            attach_imports: 0,
            rank: 0,
            within_tolerance: false,
        }
    }

    #[test]
    fn memory_within_tolerance_first_then_calls() {
        let mut v = vec![outcome(2, 900, 100.0), outcome(8, 300, 104.0), outcome(64, 40, 130.0)];
        rank(&mut v, 0.05);
        let order: Vec<u64> = v.iter().map(|o| o.candidate.pool.chunk_bytes >> 20).collect();
        assert_eq!(order, vec![8, 2, 64], "8 MiB is within 5 % of the best memory and makes fewer calls");
        assert_eq!(v[0].rank, 1);
        assert!(!v[2].within_tolerance);
        rank(&mut v, 0.5);
        assert_eq!(v[0].candidate.pool.chunk_bytes >> 20, 64, "a looser tolerance lets the fewest calls win");
    }

    #[test]
    fn grids_cover_every_combination() {
        let kv = Trace::builtin("kv").unwrap();
        let g = Grid::default_for(&kv);
        // 2, 4 and 8 MiB blocks: the 4 MiB ones do not fit 2 MiB chunks, the 8 MiB ones neither 2 nor 4.
        assert_eq!(g.candidates(1 << 30, kv.kv_token_bytes).len(), 6 * 3 * 3 - 3 - 3 * 2);
        let s = Trace::builtin("serving").unwrap();
        assert_eq!(Grid::default_for(&s).candidates(1 << 30, None).len(), 6 * 3 * 2);
        let c = &Grid::default_for(&kv).candidates(1 << 30, kv.kv_token_bytes)[0];
        assert_eq!(c.block_bytes(128 << 10), Some(2 << 20));
        assert_eq!(c.label(), "chunk 2M, trim eager, reserve 0, block 16 tok");
    }

    #[test]
    fn hand_built_grids_and_traces_are_errors_not_panics() {
        // A grid with values no pool takes gives no candidate for them.
        let g = Grid {
            chunk_bytes: vec![0, 2 << 20],
            trim_watermarks: vec![None],
            reserve_chunks: vec![0],
            block_tokens: vec![],
        };
        assert_eq!(g.candidates(u64::MAX, None).len(), 0, "a range of u64::MAX rounds past 2^64");
        assert_eq!(g.candidates(1 << 30, None).len(), 1, "the 0-byte chunk gives none");
        let huge = Candidate { pool: PoolConfig::default(), block_tokens: Some(u32::MAX) };
        assert_eq!(huge.block_bytes(u64::MAX), None, "a block size past 2^64");
        // Traces built by hand, not parsed: refused before any runtime call (this runtime has none).
        let rt = crate::runtime::tests_support::empty();
        let small = PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 8 << 20, ..PoolConfig::default() };
        let frees = Trace { name: "t".into(), kv_token_bytes: None, ops: vec![Op::Free { id: 7 }] };
        let e = replay(&rt, 0, &frees, &Candidate { pool: small.clone(), block_tokens: None }).unwrap_err();
        assert!(e.to_string().contains("Free { id: 7 } does not follow"), "{e}");
        let kv = Trace { name: "t".into(), kv_token_bytes: Some(1024), ops: vec![Op::KvAlloc { id: 1, tokens: 3 }] };
        let e = replay(&rt, 0, &kv, &Candidate { pool: small.clone(), block_tokens: Some(0) }).unwrap_err();
        assert!(e.to_string().contains("0 tokens"), "{e}");
        let no_kv = Trace { name: "t".into(), kv_token_bytes: None, ops: vec![Op::KvAlloc { id: 1, tokens: 3 }] };
        let e = replay(&rt, 0, &no_kv, &Candidate { pool: small, block_tokens: None }).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("KV")), "{e}");
    }
}
