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
//! `free`/`kv-free`; a trace may end with ids live. The bytes live at any step (a KV request's are its
//! tokens times `kv-token-bytes`) must fit in 64 bits, so replaying a valid trace cannot overflow. Errors
//! name the line and say what is wrong.
//!
//! A trace file is read up to [`Trace::MAX_BYTES`] (256 MiB, several times a long serving run's trace);
//! it may also be a pipe or FIFO (`/dev/stdin`, `<(zcat t.trace.gz)`), read to its end or that limit.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::input::{Accept, excerpt, read_text};
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
        // Live ids with their bytes, live requests with their tokens, and the bytes live in all.
        let (mut live, mut kv_live) = (HashMap::new(), HashMap::new());
        let mut held = 0u64;
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
                    Err(bad(format!("{} takes {k} argument(s): {}", words[0], excerpt(line))))
                }
            };
            let id = |i: usize| words[i].parse::<u64>().map_err(|_| bad(format!("{} is not an id", excerpt(words[i]))));
            let count = |i: usize, what: &str| match parse_size(words[i]) {
                Some(v) if v > 0 => Ok(v),
                _ => Err(bad(format!("{} is not a positive {what}", excerpt(words[i])))),
            };
            let hold = |held: u64, bytes: u64| {
                held.checked_add(bytes).ok_or_else(|| bad("the trace would hold more than 2^64 bytes at once".into()))
            };
            let token_bytes = t.kv_token_bytes.unwrap_or(0);
            let kv_bytes = |id: u64, tokens: u64| {
                tokens
                    .checked_mul(token_bytes)
                    .ok_or_else(|| bad(format!("request {id} would hold more than 2^64 bytes of KV cache")))
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
                    if live.insert(id, bytes).is_some() {
                        return Err(bad(format!("id {id} is live already")));
                    }
                    held = hold(held, bytes)?;
                    Op::Alloc { id, bytes }
                }
                "free" => {
                    arity(1)?;
                    let id = id(1)?;
                    held -= live.remove(&id).ok_or_else(|| bad(format!("id {id} is not live")))?;
                    Op::Free { id }
                }
                "kv-alloc" | "kv-extend" | "kv-free" if t.kv_token_bytes.is_none() => {
                    return Err(bad(format!("{} needs kv-token-bytes first", words[0])));
                }
                "kv-alloc" => {
                    arity(2)?;
                    let (id, tokens) = (id(1)?, count(2, "token count")?);
                    if kv_live.insert(id, tokens).is_some() {
                        return Err(bad(format!("request {id} is live already")));
                    }
                    held = hold(held, kv_bytes(id, tokens)?)?;
                    Op::KvAlloc { id, tokens }
                }
                "kv-extend" => {
                    arity(2)?;
                    let (id, tokens) = (id(1)?, count(2, "token count")?);
                    let Some(have) = kv_live.get_mut(&id) else {
                        return Err(bad(format!("request {id} is not live")));
                    };
                    let total =
                        have.checked_add(tokens).ok_or_else(|| bad(format!("request {id}: 2^64 tokens or more")))?;
                    kv_bytes(id, total)?;
                    held = hold(held, kv_bytes(id, tokens)?)?;
                    *have = total;
                    Op::KvExtend { id, tokens }
                }
                "kv-free" => {
                    arity(1)?;
                    let id = id(1)?;
                    let tokens = kv_live.remove(&id).ok_or_else(|| bad(format!("request {id} is not live")))?;
                    held -= kv_bytes(id, tokens)?;
                    Op::KvFree { id }
                }
                other => return Err(bad(format!("unknown operation {}", excerpt(other)))),
            };
            t.ops.push(op);
        }
        if t.ops.is_empty() {
            return Err(Error::InvalidArgument(format!("{name}: the trace has no operations")));
        }
        Ok(t)
    }

    /// The most bytes [`Trace::load`] reads: 256 MiB, several times the trace of a long serving run
    /// (a line is about 16 bytes), and what a replay over a whole grid can get through.
    pub const MAX_BYTES: u64 = 256 << 20;

    /// Read and check a trace file: a regular file, or a pipe, FIFO or character device (`/dev/stdin`)
    /// read to its end, of at most [`Trace::MAX_BYTES`]. A larger one is refused, naming the limit.
    pub fn load(path: &Path) -> Result<Trace> {
        let text = read_text(path, Trace::MAX_BYTES, "trace", Accept::FileOrStream)?;
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

    #[test]
    fn traces_whose_bytes_overflow_64_bits_are_refused_so_a_replay_cannot_overflow() {
        const MAX: u64 = u64::MAX;
        for (text, says) in [
            (format!("alloc 1 {MAX}\nalloc 2 1"), "t:3: the trace would hold more than 2^64 bytes at once"),
            (format!("kv-token-bytes 1K\nkv-alloc 1 {MAX}"), "t:3: request 1 would hold more than 2^64 bytes"),
            (format!("kv-token-bytes 1K\nkv-alloc 1 1\nkv-extend 1 {MAX}"), "t:4: request 1: 2^64 tokens or more"),
            (format!("kv-token-bytes 1K\nkv-alloc 1 1\nkv-extend 1 {}", MAX >> 10), "t:4: request 1 would hold more"),
            ("kv-token-bytes 8E\nkv-alloc 1 2".to_string(), "t:2: \"8E\" is not a positive size"),
            (format!("kv-token-bytes {}\nkv-alloc 1 2", 1u64 << 63), "t:3: request 1 would hold more than 2^64"),
            (format!("kv-token-bytes 1\nalloc 1 {}\nkv-alloc 2 2", MAX - 1), "t:4: the trace would hold more"),
        ] {
            let e = Trace::parse("t", &format!("aclshm-trace 1\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // Up to 2^64 - 1 bytes live is fine, and what is freed is no longer counted.
        let ok = format!("aclshm-trace 1\nalloc 1 {MAX}\nfree 1\nalloc 2 {MAX}\n");
        assert_eq!(Trace::parse("t", &ok).unwrap().ops.len(), 3);
        let ok =
            format!("aclshm-trace 1\nkv-token-bytes 2\nkv-alloc 1 {}\nkv-free 1\nkv-alloc 2 {}\n", MAX / 2, MAX / 2);
        assert_eq!(Trace::parse("t", &ok).unwrap().ops.len(), 3);
    }

    #[test]
    fn errors_quote_an_excerpt_of_a_long_line_not_all_of_it() {
        let e = Trace::parse("t", &format!("aclshm-trace 1\n{}\n", "x".repeat(1 << 20))).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid argument: t:2: unknown operation \"xxx") && e.len() < 200,
            "{}",
            &e[..200.min(e.len())]
        );
        let e =
            Trace::parse("t", &format!("aclshm-trace 1\nalloc 1 {}\n", "9".repeat(1 << 20))).unwrap_err().to_string();
        assert!(e.contains("is not a positive size") && e.len() < 200, "{}", &e[..200.min(e.len())]);
    }

    #[test]
    fn trace_files_are_read_up_to_the_limit() {
        let (_tmp, p) = crate::input::test_file("big.trace", "aclshm-trace 1\nalloc 1 4K\n");
        assert_eq!(Trace::load(&p).unwrap().ops, vec![Op::Alloc { id: 1, bytes: 4096 }]);
        // One byte over the limit: refused before reading, naming the limit.
        crate::input::grow_past(&p, Trace::MAX_BYTES);
        let e = Trace::load(&p).unwrap_err().to_string();
        assert!(e.ends_with("is larger than the limit of 256 MiB"), "{e}");
    }
}
