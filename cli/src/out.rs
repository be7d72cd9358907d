//! Output that cannot panic, and how a command ends.
//!
//! `println!` panics when stdout is closed or full (`aclshm info > /dev/full`, `aclshm sim status | head -1`),
//! and `eprintln!` when stderr is. Every line the command prints goes through [`outln!`] (stdout: a failure
//! becomes [`Failure::Stdout`] and ends the command) or [`errln!`] (stderr: a failure is ignored, there is
//! nowhere left to report it). [`exit`] turns the outcome into the exit status:
//!
//! ```text
//!   Ok                        0
//!   Failure::Error(e)         1   "aclshm: <e>" on stderr
//!   Failure::Reported         1   (the command has said why)
//!   Failure::Stdout(EPIPE)    0   quietly: the reader has what it wanted (`| head -1`), as ripgrep does
//!   Failure::Stdout(other)    1   "aclshm: cannot write to stdout: <reason>" on stderr
//! ```
//!
//! Progress bars (indicatif) draw on stderr only when it is a terminal, and indicatif ignores failed draws.

use std::io::{self, Write};
use std::process::ExitCode;

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// The library (or a check of the command's own) refused or failed.
    Error(aclshm::Error),
    /// The command failed and has already said why (the demo's summary).
    Reported,
    /// Writing to stdout failed.
    Stdout(io::Error),
}

impl From<aclshm::Error> for Failure {
    fn from(e: aclshm::Error) -> Failure {
        Failure::Error(e)
    }
}

/// A command's result.
pub type Result<T = ()> = std::result::Result<T, Failure>;

/// Write `text` to stdout and flush it.
pub fn print(text: &str) -> Result {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(Failure::Stdout)
}

/// Write one line to stderr, ignoring failure.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{args}").and_then(|()| err.flush());
}

/// `println!` that returns [`Failure::Stdout`] from the enclosing function instead of panicking.
macro_rules! outln {
    () => {
        $crate::out::print("\n")?
    };
    ($($arg:tt)*) => {
        $crate::out::print(&format!("{}\n", format_args!($($arg)*)))?
    };
}

/// `eprintln!` that cannot panic.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// Whether a write failed because the reader went away.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// The exit status of a command that ended with `result` (see the [module](self) docs).
pub fn exit(result: Result) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(e)) => {
            errln!("aclshm: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Stdout(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) => {
            errln!("aclshm: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
