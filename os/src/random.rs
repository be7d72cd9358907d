//! Random numbers from the kernel, for names and tokens other processes must not guess or collide with.

/// A random 64-bit number from the kernel (`getrandom(2)`). Where the kernel has no entropy source to
/// offer, a number that still differs between processes and over time (the clock and the pid): the
/// names it makes stay unique, though no longer secret.
pub fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        // Two equal draws of 64 random bits happen once in 2^64 runs; equal ones mean no randomness.
        let draws: std::collections::HashSet<u64> = (0..16).map(|_| random_u64()).collect();
        assert_eq!(draws.len(), 16);
    }
}
