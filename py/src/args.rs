//! Arguments as Python gives them, read as the library takes them: sizes (`20M`) and timeouts (seconds).

use std::time::Duration;

use aclshm::Error;
use pyo3::prelude::*;

use crate::err;

/// A size argument: an int, or text such as `"20M"`, `"2MiB"`, `"1G"`.
#[derive(FromPyObject)]
pub(crate) enum Size {
    Int(u64),
    Text(String),
}

impl Size {
    /// Its bytes; `what` names the argument in the error.
    pub(crate) fn bytes(&self, what: &str) -> PyResult<u64> {
        match self {
            Size::Int(n) => Ok(*n),
            Size::Text(s) => aclshm::parse_bytes(s).map_err(|e| err(Error::InvalidArgument(format!("{what}: {e}")))),
        }
    }
}

/// A timeout in seconds (a float), refused unless it is a non-negative number.
pub(crate) fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| err(Error::InvalidArgument(format!("timeout {seconds} is not a non-negative number of seconds"))))
}
