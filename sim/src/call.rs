//! What every entry point's implementation works with: its result (`R`, a failure with the code the
//! caller gets and why) and its C arguments (NULL checks, out-parameters, IPC key buffers).
//!
//! It sits below everything else that makes up a call (the stream's tasks fail with a `Fail` too), so it
//! names nothing of the simulator but the key length.

use std::borrow::Cow;
use std::ffi::c_char;

use aclshm_sys::*;

use crate::registry::KEY_LEN;

/// A failed call: the code the caller gets and why (printed when `ACLSHM_SIM_LOG=1`).
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub code: aclError,
    pub why: Cow<'static, str>,
}

/// The result of an entry point's implementation.
pub(crate) type R<T = ()> = Result<T, Fail>;

/// A failure with `code` because `why`.
pub(crate) fn fail(code: aclError, why: impl Into<Cow<'static, str>>) -> Fail {
    Fail { code, why: why.into() }
}

/// `Err(fail(..))` shorthand.
pub(crate) fn bail<T>(code: aclError, why: impl Into<Cow<'static, str>>) -> R<T> {
    Err(fail(code, why))
}

/// Refuse a null pointer argument the way the ACL layer does.
pub(crate) fn not_null<T>(p: *const T, what: &'static str) -> R {
    if p.is_null() {
        return bail(ACL_ERROR_INVALID_PARAM, format!("{what} is NULL"));
    }
    Ok(())
}

/// Write an out-parameter the caller handed us (checked non-null before).
///
/// # Safety
/// 1. `p` is non-null and valid for a write of `T` (alignment not required).
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe { p.write_unaligned(v) }
}

/// Read a key the caller passed (an IPC memory or notify key): at most 64 characters before the NUL.
///
/// # Safety
/// 1. `key` is non-null and readable up to its NUL or 65 bytes, whichever comes first.
pub(crate) unsafe fn read_key(key: *const c_char) -> R<Vec<u8>> {
    let mut out = Vec::with_capacity(KEY_LEN);
    for i in 0..KEY_LEN {
        // SAFETY: within the bytes precondition 1 makes readable.
        let b = unsafe { key.add(i).read() } as u8;
        if b == 0 {
            if out.is_empty() {
                return bail(ACL_ERROR_RT_PARAM_INVALID, "the key is empty");
            }
            return Ok(out);
        }
        out.push(b);
    }
    bail(ACL_ERROR_RT_PARAM_INVALID, "the key is not NUL-terminated within 65 bytes")
}

/// Write `key` (a key, or any text) and its NUL into the caller's buffer.
///
/// # Safety
/// 1. `buf` is valid for `key.len() + 1` bytes.
pub(crate) unsafe fn write_key(buf: *mut c_char, key: &[u8]) {
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe {
        std::ptr::copy_nonoverlapping(key.as_ptr().cast::<c_char>(), buf, key.len());
        buf.add(key.len()).write(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let mut buf = [0x55 as c_char; KEY_LEN];
        // SAFETY: buf holds 65 bytes, enough for 3 and a NUL; reads stop at the NUL.
        unsafe {
            write_key(buf.as_mut_ptr(), b"abc");
            assert_eq!(read_key(buf.as_ptr()).unwrap(), b"abc");
        }
        let empty = [0 as c_char; 1];
        // SAFETY: one readable byte, the NUL.
        assert_eq!(unsafe { read_key(empty.as_ptr()) }.unwrap_err().code, ACL_ERROR_RT_PARAM_INVALID);
        let long = [b'a' as c_char; KEY_LEN];
        // SAFETY: 65 readable bytes, no NUL among them: read_key reads no further.
        assert_eq!(unsafe { read_key(long.as_ptr()) }.unwrap_err().code, ACL_ERROR_RT_PARAM_INVALID);
    }
}
