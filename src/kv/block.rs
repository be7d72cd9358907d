//! What a KV pool names and hands out: the shape of a model's KV cache ([`KvLayout`], to size blocks
//! from), a block reference ([`KvBlock`]) and what workers attach with ([`KvDesc`]). Plain values with text
//! forms; every use checks them against the pool.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::pool::GRANULE;
use crate::share::ShareDesc;

/// The shape of a model's KV cache, to size blocks from: a block holds `block_tokens` tokens of keys and
/// values for every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer layers.
    pub layers: u32,
    /// Key/value heads per layer.
    pub kv_heads: u32,
    /// Dimension of a head.
    pub head_dim: u32,
    /// Bytes per element (2 for fp16/bf16, 1 for fp8/int8).
    pub dtype_bytes: u32,
    /// Tokens per block.
    pub block_tokens: u32,
}

impl KvLayout {
    /// Bytes of one block: keys and values, every layer, rounded up to the pool's granule.
    ///
    /// ```
    /// use aclshm::KvLayout;
    /// // A 7B-class model: 32 layers, 8 KV heads of 128, fp16, 16 tokens per block.
    /// let l = KvLayout { layers: 32, kv_heads: 8, head_dim: 128, dtype_bytes: 2, block_tokens: 16 };
    /// assert_eq!(l.block_bytes().unwrap(), 2 << 20);
    /// ```
    pub fn block_bytes(&self) -> Result<u64> {
        [self.layers, self.kv_heads, self.head_dim, self.dtype_bytes, self.block_tokens]
            .iter()
            .try_fold(2u64, |acc, &x| if x == 0 { None } else { acc.checked_mul(u64::from(x)) })
            .and_then(|b| b.checked_next_multiple_of(GRANULE))
            .ok_or_else(|| Error::InvalidArgument(format!("{self:?} has a zero or an overflowing dimension")))
    }
}

/// A block of a KV pool: which pool, which block, which allocation of it. 16 bytes; `Copy`; send it to
/// workers any way you like (its text form is `<pool>:<id>:<generation>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvBlock {
    pub(crate) pool: u64,
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

impl KvBlock {
    /// The pool's token.
    pub fn pool(&self) -> u64 {
        self.pool
    }

    /// The block id (its place in the pool).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Which allocation of the block this is (odd; bumped by every allocation and free).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// A reference from its parts, for tools and tests: every use checks it against the pool, so a
    /// forged one is refused, never a pointer elsewhere.
    #[doc(hidden)]
    pub fn from_parts(pool: u64, id: u32, generation: u32) -> KvBlock {
        KvBlock { pool, id, generation }
    }
}

impl fmt::Display for KvBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}:{}", self.pool, self.id, self.generation)
    }
}

impl FromStr for KvBlock {
    type Err = Error;
    fn from_str(s: &str) -> Result<KvBlock> {
        let bad = || Error::BadDescriptor(format!("{s:?} is not a KV block (<pool hex>:<id>:<generation>)"));
        let mut it = s.split(':');
        let (Some(pool), Some(id), Some(generation), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        Ok(KvBlock {
            pool: u64::from_str_radix(pool, 16).map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
            generation: generation.parse().map_err(|_| bad())?,
        })
    }
}

/// What workers attach a [`KvMirror`](crate::KvMirror) with. Text form `aclshm-kv:1:<token>:<socket>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvDesc {
    pub(crate) share: ShareDesc,
}

const DESC_PREFIX: &str = "aclshm-kv:1:";

impl KvDesc {
    /// The pool's share descriptor.
    pub fn share(&self) -> &ShareDesc {
        &self.share
    }

    /// The directory of the pool's shared files.
    pub(crate) fn dir(&self) -> PathBuf {
        self.share.socket.parent().map(|p| p.to_path_buf()).unwrap_or_default()
    }
}

impl fmt::Display for KvDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DESC_PREFIX}{:016x}:{}", self.share.token, self.share.socket.display())
    }
}

impl FromStr for KvDesc {
    type Err = Error;
    fn from_str(s: &str) -> Result<KvDesc> {
        let rest = s
            .strip_prefix(DESC_PREFIX)
            .ok_or_else(|| Error::BadDescriptor(format!("{s:?}: expected aclshm-kv:1:<token>:<socket>")))?;
        Ok(KvDesc { share: format!("aclshm-share:1:{rest}").parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_descriptors_have_text_forms() {
        let b = KvBlock { pool: 0xab, id: 7, generation: 3 };
        assert_eq!(b.to_string(), "00000000000000ab:7:3");
        assert_eq!(b.to_string().parse::<KvBlock>().unwrap(), b);
        for bad in ["", "ab:7", "ab:7:3:1", "zz:7:3", "ab:-1:3", "ab:7:x"] {
            assert!(bad.parse::<KvBlock>().is_err(), "{bad:?}");
        }
        let d: KvDesc = "aclshm-kv:1:00000000000000ab:/dev/shm/x/pool-00000000000000ab.sock".parse().unwrap();
        assert_eq!(d.share().token, 0xab);
        assert_eq!(d.to_string().parse::<KvDesc>().unwrap(), d);
        assert!("aclshm-share:1:ab:/x".parse::<KvDesc>().is_err());
    }

    #[test]
    fn layouts_give_block_sizes() {
        let l = KvLayout { layers: 2, kv_heads: 1, head_dim: 64, dtype_bytes: 2, block_tokens: 1 };
        assert_eq!(l.block_bytes().unwrap(), 512, "2 x 2 x 64 x 2 = 512");
        let odd = KvLayout { head_dim: 65, ..l };
        assert_eq!(odd.block_bytes().unwrap(), 1024, "520 rounds up to the granule");
        assert!(KvLayout { layers: 0, ..l }.block_bytes().is_err());
        assert!(KvLayout { layers: u32::MAX, kv_heads: u32::MAX, head_dim: u32::MAX, ..l }.block_bytes().is_err());
    }
}
