//! Allocation traces: what `aclshm tune` replays. A text format, validated line by line, and two built-in
//! traces.
//!
//! ```text
//!   aclshm-trace 1                  the first line: the format and its version
//!   # a comment
//!   kv-token-bytes 131072           KV traces: bytes of keys and values of one token (every layer)
//!   alloc <id> <bytes>              allocate; <id> is any number not live now
//!   free <id>                       free what `alloc <id>` allocated
//!   kv-alloc <id> <tokens>          a request's KV cache starts with this many tokens
//!   kv-extend <id> <tokens>         it grows by this many tokens (decoding)
//!   kv-free <id>                    the request ends: its blocks go
//! ```
//!
//! Sizes accept the binary suffixes `K`, `M`, `G`. An id is live from its `alloc`/`kv-alloc` to its
//! `free`/`kv-free`; a trace may end with ids live. Errors name the line and say what is wrong.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pool::config::parse_size;

/// One step of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Allocate `bytes` as `id`.
    Alloc {
        /// The id.
        id: u64,
        /// Bytes.
        bytes: u64,
    },
    /// Free `id`.
    Free {
        /// The id.
        id: u64,
    },
    /// Request `id` starts with `tokens` tokens of KV cache.
    KvAlloc {
        /// The request.
        id: u64,
        /// Tokens.
        tokens: u64,
    },
    /// Request `id` grows by `tokens`.
    KvExtend {
        /// The request.
        id: u64,
        /// Tokens added.
        tokens: u64,
    },
    /// Request `id` ends.
    KvFree {
        /// The request.
        id: u64,
    },
}

/// A validated trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Its name (a built-in's, or the file's).
    pub name: String,
    /// Bytes of one token's keys and values, for KV operations.
    pub kv_token_bytes: Option<u64>,
    /// The steps.
    pub ops: Vec<Op>,
}

const HEADER: &str = "aclshm-trace 1";

impl Trace {
    /// Parse and check a trace; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Trace> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.trim() == HEADER => {}
            _ => return Err(Error::InvalidArgument(format!("{name}:1: a trace starts with {HEADER:?}"))),
        }
        let mut t = Trace { name: name.to_string(), kv_token_bytes: None, ops: Vec::new() };
        let (mut live, mut kv_live) = (HashSet::new(), HashSet::new());
        for (n, raw) in lines {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| Error::InvalidArgument(format!("{name}:{}: {why}", n + 1));
            let words: Vec<&str> = line.split_whitespace().collect();
            let arity = |k: usize| {
                if words.len() == k + 1 {
                    Ok(())
                } else {
                    Err(bad(format!("{} takes {k} argument(s): {line:?}", words[0])))
                }
            };
            let id = |i: usize| words[i].parse::<u64>().map_err(|_| bad(format!("{:?} is not an id", words[i])));
            let count = |i: usize, what: &str| match parse_size(words[i]) {
                Some(v) if v > 0 => Ok(v),
                _ => Err(bad(format!("{:?} is not a positive {what}", words[i]))),
            };
            let op = match words[0] {
                "kv-token-bytes" => {
                    arity(1)?;
                    if t.kv_token_bytes.is_some() || !t.ops.is_empty() {
                        return Err(bad("kv-token-bytes comes once, before the operations".into()));
                    }
                    t.kv_token_bytes = Some(count(1, "size")?);
                    continue;
                }
                "alloc" => {
                    arity(2)?;
                    let (id, bytes) = (id(1)?, count(2, "size")?);
                    if !live.insert(id) {
                        return Err(bad(format!("id {id} is live already")));
                    }
                    Op::Alloc { id, bytes }
                }
                "free" => {
                    arity(1)?;
                    let id = id(1)?;
                    if !live.remove(&id) {
                        return Err(bad(format!("id {id} is not live")));
                    }
                    Op::Free { id }
                }
                "kv-alloc" | "kv-extend" | "kv-free" if t.kv_token_bytes.is_none() => {
                    return Err(bad(format!("{} needs kv-token-bytes first", words[0])));
                }
                "kv-alloc" => {
                    arity(2)?;
                    let (id, tokens) = (id(1)?, count(2, "token count")?);
                    if !kv_live.insert(id) {
                        return Err(bad(format!("request {id} is live already")));
                    }
                    Op::KvAlloc { id, tokens }
                }
                "kv-extend" => {
                    arity(2)?;
                    let (id, tokens) = (id(1)?, count(2, "token count")?);
                    if !kv_live.contains(&id) {
                        return Err(bad(format!("request {id} is not live")));
                    }
                    Op::KvExtend { id, tokens }
                }
                "kv-free" => {
                    arity(1)?;
                    let id = id(1)?;
                    if !kv_live.remove(&id) {
                        return Err(bad(format!("request {id} is not live")));
                    }
                    Op::KvFree { id }
                }
                other => return Err(bad(format!("unknown operation {other:?}"))),
            };
            t.ops.push(op);
        }
        if t.ops.is_empty() {
            return Err(Error::InvalidArgument(format!("{name}: the trace has no operations")));
        }
        Ok(t)
    }

    /// Read and check a trace file.
    pub fn load(path: &Path) -> Result<Trace> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("read {}: {e}", path.display())))?;
        Trace::parse(&path.display().to_string(), &text)
    }

    /// The trace in its text format.
    pub fn to_text(&self) -> String {
        let mut s = format!("{HEADER}\n# {}\n", self.name);
        if let Some(b) = self.kv_token_bytes {
            s.push_str(&format!("kv-token-bytes {b}\n"));
        }
        for op in &self.ops {
            let line = match *op {
                Op::Alloc { id, bytes } => format!("alloc {id} {bytes}"),
                Op::Free { id } => format!("free {id}"),
                Op::KvAlloc { id, tokens } => format!("kv-alloc {id} {tokens}"),
                Op::KvExtend { id, tokens } => format!("kv-extend {id} {tokens}"),
                Op::KvFree { id } => format!("kv-free {id}"),
            };
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    /// Whether it allocates KV blocks (then the grid explores block sizes).
    pub fn is_kv(&self) -> bool {
        self.ops.iter().any(|o| matches!(o, Op::KvAlloc { .. }))
    }

    /// The names of the built-in traces.
    pub const BUILTIN: [&'static str; 2] = ["serving", "kv"];

    /// A built-in trace: `serving` (a model server: weights loaded once, then requests that allocate and
    /// free activations of mixed sizes) or `kv` (a KV-cache manager under a load that rises and falls).
    /// Deterministic: the same every time.
    pub fn builtin(name: &str) -> Option<Trace> {
        match name {
            "serving" => Some(serving()),
            "kv" => Some(kv()),
            _ => None,
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Log-uniform in `lo..=hi` (sizes spread over orders of magnitude).
    fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let x = a + (b - a) * (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (x.exp() as u64).clamp(lo, hi)
    }
}

/// A model server for a 7B-class model in fp16 (hidden 4096, 32 layers, 8 key/value heads of 128,
/// MLP 11008, vocabulary 32000): 290 weight tensors, about 11 GiB, loaded first and live throughout; then
/// 2000 requests, up to 16 at a time, each allocating six activation tensors sized by its token count (16
/// to 2048 tokens) and freeing them when it ends.
fn serving() -> Trace {
    const MIB: u64 = 1 << 20;
    let mut r = Rng(0x5EED_0001);
    let mut ops = Vec::new();
    let mut next = 0u64;
    let mut alloc = |ops: &mut Vec<Op>, bytes: u64| {
        ops.push(Op::Alloc { id: next, bytes });
        next += 1;
        next - 1
    };
    let (hidden, kv, mlp, vocab) = (4096u64, 1024u64, 11008u64, 32000u64);
    alloc(&mut ops, vocab * hidden * 2); // embeddings
    for _ in 0..32 {
        for bytes in [hidden * hidden * 2, hidden * kv * 2, hidden * kv * 2, hidden * hidden * 2] {
            alloc(&mut ops, bytes); // q, k, v, o
        }
        for _ in 0..3 {
            alloc(&mut ops, hidden * mlp * 2); // gate, up, down
        }
        alloc(&mut ops, hidden * 2); // the two norms
        alloc(&mut ops, hidden * 2);
    }
    alloc(&mut ops, hidden * 2); // final norm
    alloc(&mut ops, vocab * hidden * 2); // output head
    debug_assert!(ops.len() == 291 && ops.iter().all(|o| matches!(o, Op::Alloc { bytes, .. } if *bytes < 512 * MIB)));
    let mut running: Vec<Vec<u64>> = Vec::new();
    for _ in 0..2000 {
        if running.len() >= 16 || (!running.is_empty() && r.range(0, 2) == 0) {
            let i = r.range(0, running.len() as u64 - 1) as usize;
            for id in running.swap_remove(i) {
                ops.push(Op::Free { id });
            }
        }
        let tokens = r.log_range(16, 2048);
        let ids = [hidden * 2, hidden * 2, mlp * 2, mlp * 2, kv * 4, vocab * 2]
            .iter()
            .map(|per_token| alloc(&mut ops, tokens * per_token))
            .collect();
        running.push(ids);
    }
    for ids in running {
        for id in ids {
            ops.push(Op::Free { id });
        }
    }
    Trace { name: "serving".into(), kv_token_bytes: None, ops }
}

/// A KV-cache manager for the same model: 128 KiB of keys and values per token (32 layers, 8 heads of 128,
/// fp16). Requests arrive with prompts of 64 to 2048 tokens, decode 16 tokens a step for up to 512
/// tokens, and end; the load rises to 48 requests at once, falls to 4, and rises again, so memory is taken
/// and given back.
fn kv() -> Trace {
    let mut r = Rng(0x5EED_0002);
    let mut ops = Vec::new();
    let mut next = 0u64;
    let mut running: Vec<(u64, u64)> = Vec::new();
    let target = |step: u64| -> usize {
        match step {
            0..400 => 4 + (step / 9) as usize,
            400..800 => 48 - ((step - 400) / 9) as usize,
            _ => 4 + ((step - 800) / 12) as usize,
        }
    };
    for step in 0..1200u64 {
        let want = target(step).max(1);
        while running.len() < want {
            ops.push(Op::KvAlloc { id: next, tokens: r.log_range(64, 2048) });
            running.push((next, r.range(16, 512)));
            next += 1;
        }
        let mut i = 0;
        while i < running.len() {
            let (id, left) = running[i];
            if left <= 16 || running.len() > want {
                ops.push(Op::KvFree { id });
                running.swap_remove(i);
                continue;
            }
            ops.push(Op::KvExtend { id, tokens: 16 });
            running[i].1 = left - 16;
            i += 1;
        }
    }
    for (id, _) in running {
        ops.push(Op::KvFree { id });
    }
    Trace { name: "kv".into(), kv_token_bytes: Some(128 << 10), ops }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_traces_are_valid_and_round_trip_through_text() {
        for name in Trace::BUILTIN {
            let t = Trace::builtin(name).unwrap();
            assert!(t.ops.len() > 1000, "{name}: {} ops", t.ops.len());
            let back = Trace::parse(name, &t.to_text()).unwrap();
            assert_eq!(back.ops, t.ops);
            assert_eq!(back.kv_token_bytes, t.kv_token_bytes);
        }
        assert!(Trace::builtin("kv").unwrap().is_kv());
        assert!(!Trace::builtin("serving").unwrap().is_kv());
        assert!(Trace::builtin("nope").is_none());
    }

    #[test]
    fn bad_traces_are_refused_with_the_line() {
        for (text, says) in [
            ("", "t:1: a trace starts with"),
            ("aclshm-trace 2\nalloc 1 4K", "t:1:"),
            ("aclshm-trace 1\nalloc 1", "t:2: alloc takes 2"),
            ("aclshm-trace 1\nalloc x 4K", "t:2: \"x\" is not an id"),
            ("aclshm-trace 1\nalloc 1 0", "t:2: \"0\" is not a positive size"),
            ("aclshm-trace 1\nalloc 1 4K\nalloc 1 4K", "t:3: id 1 is live already"),
            ("aclshm-trace 1\nfree 3", "t:2: id 3 is not live"),
            ("aclshm-trace 1\nkv-alloc 1 16", "t:2: kv-alloc needs kv-token-bytes"),
            ("aclshm-trace 1\nkv-token-bytes 1K\nkv-extend 1 16", "t:3: request 1 is not live"),
            ("aclshm-trace 1\nalloc 1 4K\nkv-token-bytes 1K", "t:3: kv-token-bytes comes once"),
            ("aclshm-trace 1\nmalloc 1 4K", "t:2: unknown operation"),
            ("aclshm-trace 1\n# nothing", "t: the trace has no operations"),
        ] {
            let e = Trace::parse("t", text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let ok = Trace::parse("t", "aclshm-trace 1\n# c\nalloc 1 2M # weights\nfree 1\n").unwrap();
        assert_eq!(ok.ops, vec![Op::Alloc { id: 1, bytes: 2 << 20 }, Op::Free { id: 1 }]);
    }
}
