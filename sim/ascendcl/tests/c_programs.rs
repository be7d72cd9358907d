//! C programs written against the ACL headers run on the drop-in `libascendcl.so`.
//!
//! Each program in `tests/c` plays the processes of one of the official samples' flows (it forks before
//! its first ACL call) or exercises a group of calls. The test builds the library with cargo (the same
//! profile as this test), compiles the program with the system C compiler against our `acl/acl.h` and,
//! when `ACLSHM_OFFICIAL_ACL_INCLUDE` names a directory holding the official `acl/acl.h` (what
//! `ffi/abi/check.sh` downloads), against the official headers too; runs each build against fresh
//! simulator directories, and checks that it succeeds and that the directories are gone afterwards.

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
    let mut headers = vec![("ours", manifest.join("../../ffi/include"))];
    if let Some(official) = std::env::var_os("ACLSHM_OFFICIAL_ACL_INCLUDE").filter(|v| !v.is_empty()) {
        let official = PathBuf::from(official);
        assert!(official.join("acl/acl.h").exists(), "{} has no acl/acl.h", official.display());
        headers.push(("official", official));
    }
    for (which, include) in headers {
        let exe = compile(name, which, &include, &lib_dir);
        run(name, which, &exe);
    }
}

fn compile(name: &str, which: &str, include: &Path, lib_dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("tests/c").join(format!("{name}.c"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{which}"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let compiled = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&exe)
        .arg(&source)
        // The programs' own helpers (common.h) sit next to them; the ACL headers come from `include`.
        .arg(format!("-iquote{}", manifest.join("tests/c").display()))
        .arg(format!("-I{}", include.display()))
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lascendcl")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("run the C compiler");
    assert!(
        compiled.status.success(),
        "{name}.c does not compile against {which} headers:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    exe
}

fn run(name: &str, which: &str, exe: &Path) {
    let sim_dir = Path::new("/dev/shm").join(format!("aclshm-ctest-{name}-{which}-{}", std::process::id()));
    // A second simulated server, for the programs that need one.
    let second = PathBuf::from(format!("{}-b", sim_dir.display()));
    let run = Command::new(exe)
        .env("ACLSHM_SIM_DIR", &sim_dir)
        .env("ACLSHM_SIM_DIR_B", &second)
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{name} ({which} headers) failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout.trim(), format!("{name}: ok"));
    for dir in [&sim_dir, &second] {
        let left = dir.exists();
        let _ = std::fs::remove_dir_all(dir);
        assert!(!left, "{name} left {} behind", dir.display());
    }
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

#[test]
fn ipc_events_across_processes_and_devices() {
    run_program("ipc_event");
}

#[test]
fn value_wait_and_write_between_streams() {
    run_program("value_wait_write");
}

#[test]
fn contexts_run_mode_pointer_attributes_batch_copies_and_event_timing() {
    run_program("contexts_and_memory");
}

#[test]
fn fabric_handles_across_simulated_servers() {
    run_program("fabric_cross_server");
}
