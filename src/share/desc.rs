//! What workers are given: a [`ShareDesc`] (where the owner's rendezvous is, and the pool's token: how to
//! attach) and per-allocation [`AllocDesc`]s, 64 bytes that say where an allocation of a shared pool is,
//! for a mirror to turn into a pointer of its own with no runtime call (like CUDA's
//! `cudaMemPoolPtrExportData`).
//!
//! ```text
//!    0  magic "ASD1"      4  version u16     6  kind u16 (1: allocation)
//!    8  pool token (u64, random per shared pool)
//!   16  generation of the pool's chunk table when it was made
//!   24  offset in the pool          32  length
//!   40  fingerprint of the chunk ids the allocation spans
//!   48  reserved (0)                56  check (a hash of bytes 0..56)
//! ```
//!
//! A mirror refuses a descriptor of another pool, one whose bytes do not check, one out of the pool's
//! bounds, one from a generation the table never reached, and one whose chunks are not the chunks it was
//! made over (the allocation was freed and its memory trimmed and regrown since): a stale or forged
//! descriptor is a typed error, never a pointer into something else.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What a worker needs to attach a mirror: the owner's rendezvous socket and the pool's token. Its text
/// form, `aclshm-share:1:<token in hex>:<socket path>`, travels in an environment variable or a command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareDesc {
    /// The rendezvous socket.
    pub socket: PathBuf,
    /// The pool's token.
    pub token: u64,
}

const DESC_PREFIX: &str = "aclshm-share:1:";

impl fmt::Display for ShareDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DESC_PREFIX}{:016x}:{}", self.token, self.socket.display())
    }
}

impl FromStr for ShareDesc {
    type Err = Error;
    fn from_str(s: &str) -> Result<ShareDesc> {
        let bad = |why: &str| Error::BadDescriptor(format!("share descriptor {s:?}: {why}"));
        let rest = s.strip_prefix(DESC_PREFIX).ok_or_else(|| bad("expected aclshm-share:1:<token>:<socket>"))?;
        let (token, socket) = rest.split_once(':').ok_or_else(|| bad("no socket path"))?;
        let token = u64::from_str_radix(token, 16).map_err(|_| bad("the token is not hex"))?;
        let socket = PathBuf::from(socket);
        if token == 0 || !socket.is_absolute() {
            return Err(bad("a zero token or a relative socket path"));
        }
        Ok(ShareDesc { socket, token })
    }
}

const MAGIC: [u8; 4] = *b"ASD1";
const VERSION: u16 = 1;
const KIND_ALLOCATION: u16 = 1;

/// Where an allocation of a shared pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocDesc {
    pub(crate) pool: u64,
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) fingerprint: u64,
}

/// A 64-bit mix (splitmix64's finaliser).
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The fingerprint of a run of chunk ids (in slot order).
pub(crate) fn fingerprint(ids: impl IntoIterator<Item = u64>) -> u64 {
    ids.into_iter().fold(0x243F_6A88_85A3_08D3, |acc, id| mix(acc ^ id))
}

fn check(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xA5A5_5A5A_0F0F_F0F0, |acc, w| {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        mix(acc ^ u64::from_le_bytes(b))
    })
}

impl AllocDesc {
    /// Encoded size.
    pub const BYTES: usize = 64;

    /// A descriptor from its fields, for tools and tests that forge them: a mirror checks every field
    /// against its pool, so a forged descriptor is refused, never a pointer outside the pool.
    #[doc(hidden)]
    pub fn from_parts(pool: u64, generation: u64, offset: u64, len: u64, fingerprint: u64) -> AllocDesc {
        AllocDesc { pool, generation, offset, len, fingerprint }
    }

    /// The fingerprint of the chunks it spans.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The pool's token.
    pub fn pool(&self) -> u64 {
        self.pool
    }

    /// Offset in the pool.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false (an allocation has at least one granule).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The generation of the chunk table it was made in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The 64-byte encoding.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&KIND_ALLOCATION.to_le_bytes());
        b[8..16].copy_from_slice(&self.pool.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b[40..48].copy_from_slice(&self.fingerprint.to_le_bytes());
        let c = check(&b[..56]);
        b[56..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode 64 bytes, checking magic, version, kind and check sum (not yet the pool: see
    /// [`Mirror::ptr`](crate::share::Mirror::ptr)).
    pub fn from_bytes(b: &[u8]) -> Result<AllocDesc> {
        let bad = |why: &str| Error::BadDescriptor(why.to_string());
        if b.len() != Self::BYTES {
            return Err(Error::BadDescriptor(format!("{} bytes, not 64", b.len())));
        }
        if b[0..4] != MAGIC {
            return Err(bad("not an aclshm allocation descriptor"));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u16_at(4) != VERSION {
            return Err(Error::BadDescriptor(format!("version {}; this aclshm reads version {VERSION}", u16_at(4))));
        }
        if u16_at(6) != KIND_ALLOCATION {
            return Err(Error::BadDescriptor(format!("kind {} is not an allocation", u16_at(6))));
        }
        if u64_at(48) != 0 {
            return Err(bad("reserved bytes are not zero"));
        }
        if u64_at(56) != check(&b[..56]) {
            return Err(bad("the check sum does not match: corrupted or forged"));
        }
        let d = AllocDesc {
            pool: u64_at(8),
            generation: u64_at(16),
            offset: u64_at(24),
            len: u64_at(32),
            fingerprint: u64_at(40),
        };
        if d.len == 0 || d.offset.checked_add(d.len).is_none() {
            return Err(bad("its length is 0 or its end overflows"));
        }
        Ok(d)
    }

    /// Hex text, for passing a descriptor in a text channel.
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decode [`to_hex`](AllocDesc::to_hex)'s text.
    pub fn from_hex(s: &str) -> Result<AllocDesc> {
        if s.len() != 2 * Self::BYTES || !s.is_ascii() {
            return Err(Error::BadDescriptor(format!("{} characters, not 128 hex digits", s.len())));
        }
        let bytes: Option<Vec<u8>> =
            (0..Self::BYTES).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect();
        AllocDesc::from_bytes(&bytes.ok_or_else(|| Error::BadDescriptor("not hex".to_string()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_descriptors_round_trip_and_bad_text_is_refused() {
        let d = ShareDesc { socket: PathBuf::from("/dev/shm/aclshm-share-1/pool-00000000000000ab.sock"), token: 0xab };
        assert_eq!(d.to_string(), "aclshm-share:1:00000000000000ab:/dev/shm/aclshm-share-1/pool-00000000000000ab.sock");
        assert_eq!(d.to_string().parse::<ShareDesc>().unwrap(), d);
        for bad in [
            "",
            "aclshm-share:2:ab:/x",
            "aclshm-share:1:ab",
            "aclshm-share:1:zz:/x",
            "aclshm-share:1:0:/x",
            "aclshm-share:1:ab:relative.sock",
        ] {
            assert!(matches!(bad.parse::<ShareDesc>(), Err(Error::BadDescriptor(_))), "{bad:?} was accepted");
        }
    }

    fn sample() -> AllocDesc {
        AllocDesc { pool: 7, generation: 3, offset: 4096, len: 8192, fingerprint: fingerprint([1, 2]) }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let d = sample();
        assert_eq!(AllocDesc::from_bytes(&d.to_bytes()).unwrap(), d);
        assert_eq!(AllocDesc::from_hex(&d.to_hex()).unwrap(), d);
        for i in 0..64 {
            let mut b = d.to_bytes();
            b[i] ^= 0x40;
            assert!(AllocDesc::from_bytes(&b).is_err(), "flipping byte {i} goes unnoticed");
        }
        assert!(AllocDesc::from_bytes(&[0; 63]).is_err());
        assert!(AllocDesc::from_hex("zz").is_err());
        assert!(AllocDesc::from_hex(&"g".repeat(128)).is_err());
    }

    #[test]
    fn fingerprints_tell_chunk_runs_apart() {
        assert_ne!(fingerprint([1, 2]), fingerprint([2, 1]));
        assert_ne!(fingerprint([1]), fingerprint([1, 1]));
        assert_ne!(fingerprint([5]), fingerprint([6]));
    }
}
