//! The calling thread's current device: [`Runtime::on_device`] runs work with a device current and puts
//! the thread's previous one back. Above [`raw`](crate::raw), which it calls.

use crate::error::Result;
use crate::raw;
use crate::runtime::Runtime;

impl Runtime {
    /// Run `f` with `device` current in the calling thread (`aclrtSetDevice` when it is not), and make the
    /// thread's previous device current again after: for copies and other calls that act on the current
    /// device. A thread that had no device keeps `device`.
    pub fn on_device<T>(&self, device: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
        on_device(self, device, f)
    }
}

/// See [`Runtime::on_device`].
pub(crate) fn on_device<T>(rt: &Runtime, device: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match raw::get_device(rt) {
        Ok(d) if d == device => f(),
        before => {
            raw::set_device(rt, device)?;
            let r = f();
            if let Ok(d) = before {
                raw::set_device(rt, d)?;
            }
            r
        }
    }
}
