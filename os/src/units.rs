//! Sizes written for people: `4096`, `64M`, `2GiB`, `1t`.

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBytesError {
    /// No digits where the number should start (empty, negative, or a suffix alone).
    #[error("expected a number of bytes, optionally with a suffix K, M, G or T")]
    NoNumber,
    /// The digits alone exceed 64 bits.
    #[error("the number is too large")]
    NumberTooLarge,
    /// A suffix that is not one of K, M, G, T (with or without B or iB, any case).
    #[error("unknown suffix {0:?}; use K, M, G or T")]
    UnknownSuffix(String),
    /// The number times its unit exceeds 64 bits.
    #[error("the size overflows 64 bits")]
    Overflow,
}

/// Read a byte count: digits with an optional suffix K, M, G or T (also KB/KiB and so on, any case,
/// spaces allowed around it), in powers of 1024.
///
/// ```
/// assert_eq!(aclshm_os::parse_bytes("64M"), Ok(64 << 20));
/// assert_eq!(aclshm_os::parse_bytes(" 2 GiB "), Ok(2 << 30));
/// assert!(aclshm_os::parse_bytes("12Q").is_err());
/// ```
pub fn parse_bytes(v: &str) -> Result<u64, ParseBytesError> {
    let s = v.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    if digits.is_empty() {
        return Err(ParseBytesError::NoNumber);
    }
    let n: u64 = digits.parse().map_err(|_| ParseBytesError::NumberTooLarge)?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(ParseBytesError::UnknownSuffix(other.to_string())),
    };
    n.checked_mul(1u64 << shift).ok_or(ParseBytesError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("8KiB"), Ok(8 << 10));
        assert_eq!(parse_bytes(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_bytes("1t"), Ok(1 << 40));
        assert_eq!(parse_bytes("5b"), Ok(5));
        assert_eq!(parse_bytes(""), Err(ParseBytesError::NoNumber));
        assert_eq!(parse_bytes("M"), Err(ParseBytesError::NoNumber));
        assert_eq!(parse_bytes("-5"), Err(ParseBytesError::NoNumber));
        assert_eq!(parse_bytes("12Q"), Err(ParseBytesError::UnknownSuffix("q".into())));
        assert_eq!(parse_bytes("99999999999999999999"), Err(ParseBytesError::NumberTooLarge));
        assert_eq!(parse_bytes("20000000T"), Err(ParseBytesError::Overflow));
        assert_eq!(parse_bytes("12Q").unwrap_err().to_string(), "unknown suffix \"q\"; use K, M, G or T");
    }
}
