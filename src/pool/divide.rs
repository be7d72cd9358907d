//! Division by the chunk size without a divide instruction.
//!
//! Every allocation and free asks which chunks it touches (offset / chunk size), two or three times. A
//! 64-bit `div` costs tens of cycles on the machines aclshm runs on, as much as the rest of an allocation;
//! the chunk size is fixed for a pool's life, so the quotient is computed once per pool as a shift (a power
//! of two) or a multiply by a precomputed reciprocal (any other size, such as the default 20 MiB).
//!
//! The reciprocal (Granlund and Montgomery's round-up method): with `s = ceil(log2 d)` and `k = 64 + s`,
//! `m = ceil(2^k / d)`; then `floor(x * m / 2^k) == floor(x / d)` for every `x < 2^64`. Write
//! `m * d = 2^k + e` with `0 <= e < d`: `x * m / 2^k = x / d + x * e / (d * 2^k)`, and the second term is
//! below `1 / d` because `x * e < 2^64 * 2^s = 2^k`; since the fractional part of `x / d` is at most
//! `(d - 1) / d`, the floor does not change. `m < 2^65`, so `x * m` fits 128 bits while `x < 2^63`; larger
//! offsets (none: address ranges are 48 bits) fall back to dividing.

#![deny(unsafe_code)]

/// `x / d` for one fixed `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Divisor {
    d: u64,
    how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Shift(u32),
    Multiply {
        m: u128,
        k: u32,
    },
    /// Divisors above 2^62 (no chunk is that large): `k` would not fit 128 bits.
    Divide,
}

impl Divisor {
    /// A divisor of `d` (not 0).
    pub(crate) fn new(d: u64) -> Divisor {
        assert!(d > 0, "division by zero");
        let how = if d.is_power_of_two() {
            How::Shift(d.trailing_zeros())
        } else if d > 1 << 62 {
            How::Divide
        } else {
            let s = 64 - (d - 1).leading_zeros(); // ceil(log2 d), d not a power of two: 2..=63
            let k = 64 + s;
            let m = (1u128 << k).div_ceil(u128::from(d));
            How::Multiply { m, k }
        };
        Divisor { d, how }
    }

    /// The divisor.
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.d
    }

    /// `x / d`, rounded down.
    #[inline]
    pub(crate) fn div(&self, x: u64) -> u64 {
        match self.how {
            How::Shift(s) => x >> s,
            How::Multiply { m, k } if x < 1 << 63 => ((u128::from(x) * m) >> k) as u64,
            How::Multiply { .. } | How::Divide => x / self.d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn the_quotient_is_exact_for_every_kind_of_divisor() {
        let mut next = rng(0xD1_7150);
        let mut divisors = vec![1, 2, 3, 7, 512, 513, 2 << 20, 20 << 20, (20 << 20) + 512, 1 << 30, 3 << 30, u64::MAX];
        divisors.extend((0..200).map(|_| next() >> (next() % 64)).filter(|&d| d > 0));
        for d in divisors {
            let div = Divisor::new(d);
            assert_eq!(div.get(), d);
            // Near multiples of d (where a rounding error would show), and random values of every size.
            let mut xs = vec![0, 1, u64::MAX, u64::MAX - 1, (1 << 63) - 1, 1 << 63, 1 << 48];
            for q in [1u64, 2, 3, 1000, 1 << 20, u64::MAX / d] {
                if let Some(x) = q.checked_mul(d) {
                    xs.extend([x.saturating_sub(1), x, x.saturating_add(1)]);
                }
            }
            xs.extend((0..2000).map(|_| next() >> (next() % 64)));
            for x in xs {
                assert_eq!(div.div(x), x / d, "{x} / {d}");
            }
        }
    }
}
