//! What the example programs share: copies between host buffers and device memory, and the other program
//! of a pair (a worker), started with its standard input and output piped to the one that started it.

// Each example uses some of it.
#![allow(dead_code)]

use std::ffi::c_void;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use aclshm::sys::aclrtMemcpyKind;
use aclshm::{Runtime, raw};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Copy `data` into device memory at `dst`.
///
/// # Safety
/// 1. `dst` is device memory of at least `data.len()` bytes, mapped in this process.
pub unsafe fn to_device(rt: &Runtime, dst: *mut c_void, data: &[u8]) -> Result<()> {
    let (src, n) = (data.as_ptr().cast(), data.len());
    // SAFETY: `data` is a host buffer of n bytes; dst is mapped device memory of as many (precondition 1).
    unsafe { raw::memcpy(rt, dst, n, src, n, aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE)? };
    Ok(())
}

/// Copy `len` bytes of device memory at `src` into a host buffer.
///
/// # Safety
/// 1. `src` is device memory of at least `len` bytes, mapped in this process.
pub unsafe fn from_device(rt: &Runtime, src: *const c_void, len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    // SAFETY: `out` is a host buffer of len bytes; src is mapped device memory of as many (precondition 1).
    unsafe { raw::memcpy(rt, out.as_mut_ptr().cast(), len, src, len, aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST)? };
    Ok(out)
}

/// A worker process: we write it lines, it answers with lines.
pub struct Worker {
    child: Child,
    to: ChildStdin,
    from: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Start `name`, another example program (built next to this one), with `args`.
    pub fn start(name: &str, args: &[&str]) -> Result<Worker> {
        let exe = std::env::current_exe()?.with_file_name(name);
        if !exe.exists() {
            return Err(format!("{} is not built: run `cargo build --examples` first", exe.display()).into());
        }
        Self::spawn(Command::new(exe).args(args))
    }

    /// Start this program again, with `args`.
    pub fn start_self(args: &[&str]) -> Result<Worker> {
        Self::spawn(Command::new(std::env::current_exe()?).args(args))
    }

    fn spawn(cmd: &mut Command) -> Result<Worker> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let to = child.stdin.take().ok_or("no stdin")?;
        let from = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Worker { child, to, from })
    }

    /// Send a line.
    pub fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.to, "{line}")?;
        Ok(self.to.flush()?)
    }

    /// The next line the worker wrote.
    pub fn recv(&mut self) -> Result<String> {
        Ok(self.from.next().ok_or("the worker exited")??)
    }

    /// Close its input and wait for it to exit, which it must do successfully.
    pub fn finish(self) -> Result<()> {
        let Worker { mut child, to, from: _output } = self;
        // Its output stays open until it exited: a last line of its own is not a broken pipe.
        drop(to);
        let status = child.wait()?;
        if status.success() { Ok(()) } else { Err(format!("the worker failed: {status}").into()) }
    }
}
