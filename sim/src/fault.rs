//! Per-function call counters and fault injection.
//!
//! Every entry point counts its calls (failed ones too). A fault makes the Nth call of a named ACL function
//! from the moment it is armed, and the `times - 1` calls after it, fail with a chosen code without doing
//! anything else, as if the runtime had refused. Faults are armed programmatically
//! (`aclshmSimInjectFault`, [`inject`]) or from the environment at the first call:
//!
//! ```text
//! ACLSHM_SIM_FAULTS="aclrtMapMem@3=207001, aclrtMallocPhysical@1x2=ACL_ERROR_RT_MEMORY_ALLOCATION"
//! ```
//!
//! `name@N=CODE` fails the Nth call, `name@NxT=CODE` the Nth and the T-1 after it; CODE is a number or an
//! error code's name. A malformed value makes every call fail (see `crate::state`), never silently nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aclshm_sys::{ENTRY_POINTS, Group, aclError};
use parking_lot::Mutex;

/// Number of entry points.
const N: usize = ENTRY_POINTS.len();

static COUNTS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());
static ENV: OnceLock<Result<(), String>> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    func: usize,
    /// Calls still to let through before failing.
    skip: u64,
    /// Calls still to fail.
    fail: u64,
    code: aclError,
}

/// The index of an entry point by name.
pub(crate) fn index(name: &str) -> Option<usize> {
    ENTRY_POINTS.iter().position(|e| e.name == name)
}

/// Count a call of entry point `func` and say whether an armed fault makes it fail, with which code.
#[inline]
pub(crate) fn on_call(func: usize) -> Option<aclError> {
    COUNTS[func].fetch_add(1, Ordering::Relaxed);
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    let mut faults = FAULTS.lock();
    let mut hit = None;
    for f in faults.iter_mut().filter(|f| f.func == func) {
        if f.skip > 0 {
            f.skip -= 1;
        } else if f.fail > 0 && hit.is_none() {
            f.fail -= 1;
            hit = Some(f.code);
        }
    }
    faults.retain(|f| f.fail > 0);
    if faults.is_empty() {
        ARMED.store(false, Ordering::Release);
    }
    hit
}

/// How many times entry point `name` was called in this process.
pub(crate) fn count(name: &str) -> Option<u64> {
    index(name).map(|i| COUNTS[i].load(Ordering::Relaxed))
}

/// Arm a fault: the `nth` call of `name` from now (1 = the next) and the `times - 1` after it fail with `code`.
pub(crate) fn inject(name: &str, nth: u64, times: u64, code: aclError) -> Result<(), String> {
    let func = index(name).ok_or_else(|| format!("{name} is not an entry point"))?;
    if ENTRY_POINTS[func].group != Group::Acl {
        return Err(format!("{name} is a simulator extension; faults apply to ACL functions"));
    }
    if nth == 0 || times == 0 {
        return Err("nth and times count from 1".to_string());
    }
    if code == 0 {
        return Err("an injected fault needs a non-zero error code".to_string());
    }
    let mut faults = FAULTS.lock();
    faults.push(Fault { func, skip: nth - 1, fail: times, code });
    ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Disarm every fault.
pub(crate) fn clear() {
    let mut faults = FAULTS.lock();
    faults.clear();
    ARMED.store(false, Ordering::Release);
}

/// Arm the faults of `ACLSHM_SIM_FAULTS`, once per process. An error says what is malformed.
pub(crate) fn load_env() -> Result<(), String> {
    ENV.get_or_init(|| match std::env::var("ACLSHM_SIM_FAULTS") {
        Ok(spec) if !spec.trim().is_empty() => {
            let faults = parse(&spec).map_err(|e| format!("ACLSHM_SIM_FAULTS={spec}: {e}"))?;
            for (name, nth, times, code) in faults {
                inject(&name, nth, times, code).map_err(|e| format!("ACLSHM_SIM_FAULTS={spec}: {e}"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    })
    .clone()
}

/// Parse a fault list: `name@N[xT]=CODE` items separated by commas.
fn parse(spec: &str) -> Result<Vec<(String, u64, u64, aclError)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("{item:?} is not name@N=CODE or name@NxT=CODE");
        let (lhs, code) = item.split_once('=').ok_or_else(bad)?;
        let (name, when) = lhs.trim().split_once('@').ok_or_else(bad)?;
        let (nth, times) = match when.split_once('x') {
            Some((n, t)) => (n, t),
            None => (when, "1"),
        };
        let nth: u64 = nth.trim().parse().map_err(|_| bad())?;
        let times: u64 = times.trim().parse().map_err(|_| bad())?;
        let code = code.trim();
        let code: aclError = match code.parse() {
            Ok(c) => c,
            Err(_) => aclshm_sys::ERROR_CODES
                .iter()
                .find(|(_, n)| *n == code)
                .map(|(c, _)| *c)
                .ok_or_else(|| format!("{code:?} is neither a number nor a known error code name"))?,
        };
        out.push((name.trim().to_string(), nth, times, code));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_lists() {
        let v = parse("aclrtMapMem@3=207001, aclrtMallocPhysical@1x2=ACL_ERROR_RT_MEMORY_ALLOCATION").unwrap();
        assert_eq!(v[0], ("aclrtMapMem".to_string(), 3, 1, 207001));
        assert_eq!(v[1], ("aclrtMallocPhysical".to_string(), 1, 2, 207001));
        assert!(parse("aclrtMapMem=1").is_err());
        assert!(parse("aclrtMapMem@x=1").is_err());
        assert!(parse("aclrtMapMem@1=NOT_A_CODE").is_err());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn nth_call_fails_times_times() {
        // A function no other unit test calls, so counters and faults are ours alone.
        let name = "aclrtGetNotifyId";
        let f = index(name).unwrap();
        inject(name, 2, 2, 107000).unwrap();
        let before = count(name).unwrap();
        assert_eq!(on_call(f), None);
        assert_eq!(on_call(f), Some(107000));
        assert_eq!(on_call(f), Some(107000));
        assert_eq!(on_call(f), None);
        assert_eq!(count(name).unwrap(), before + 4);
        assert!(inject("aclshmSimGetStats", 1, 1, 1).is_err());
        assert!(inject("nope", 1, 1, 1).is_err());
        assert!(inject(name, 0, 1, 1).is_err());
        assert!(inject(name, 1, 1, 0).is_err());
        inject(name, 1, 1, 5).unwrap();
        clear();
        assert_eq!(on_call(f), None);
    }
}
