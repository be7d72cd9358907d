//! C programs written against the ACL headers (our `acl/acl.h`) run on the drop-in `libascendcl.so`.
//!
//! Each program in `tests/c` plays both processes of one of the official samples' flows (it forks before
//! its first ACL call). The test builds the library with cargo (the same profile as this test), compiles
//! the program with the system C compiler, runs it against a fresh simulator directory, and checks that
//! it succeeds and that the directory is gone afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>`: where this test runs from, and where cargo puts the library.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

fn build_library() -> PathBuf {
    let dir = profile_dir();
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "aclshm-ascendcl", "--profile", profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building libascendcl.so failed");
    let lib = dir.join("libascendcl.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    dir
}

fn run_program(name: &str) {
    let lib_dir = build_library();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = manifest.join("../../ffi/include");
    let source = manifest.join("tests/c").join(format!("{name}.c"));
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = out_dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let compiled = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg(format!("-I{}", include.display()))
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lascendcl")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("run the C compiler");
    assert!(compiled.status.success(), "{name}.c does not compile:\n{}", String::from_utf8_lossy(&compiled.stderr));

    let sim_dir = Path::new("/dev/shm").join(format!("aclshm-ctest-{name}-{}", std::process::id()));
    let run = Command::new(&exe).env("ACLSHM_SIM_DIR", &sim_dir).output().expect("run the program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout.trim(), format!("{name}: ok"));
    let left = sim_dir.exists();
    let _ = std::fs::remove_dir_all(&sim_dir);
    assert!(!left, "{name} left {} behind", sim_dir.display());
}

#[test]
fn physical_memory_sharing_with_pid() {
    run_program("vmm_share_withpid");
}

#[test]
fn ipc_memory_with_pid() {
    run_program("ipc_memory_withpid");
}

#[test]
fn ipc_notify_with_pid() {
    run_program("ipc_notify_withpid");
}
