//! Loading runtimes that are not the simulator: an old CANN that lacks most entry points is used for
//! what it has, and calling the rest is a typed error; a library without the required ones is refused.
//! (These load a stand-in library built from `c/old_runtime.c`; no simulator is involved.)

use std::path::{Path, PathBuf};
use std::process::Command;

use aclshm::{Backend, Error, Runtime, RuntimeInfo, raw};

/// Build `c/old_runtime.c` as a shared library (with extra compiler arguments) and return its path.
fn build(name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crossproc/c/old_runtime.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.so", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let st = Command::new(cc)
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("run the C compiler");
    assert!(st.success(), "building {name} failed");
    out
}

#[test]
fn an_old_runtime_is_used_for_what_it_has() {
    let lib = build("old-runtime", &[]);
    let rt = Runtime::load(Some(&lib)).unwrap();
    assert!(!rt.is_simulator());
    assert!(matches!(rt.backend(), Backend::Library { simulator: false, .. }));
    assert!(rt.backend().to_string().starts_with("CANN ("), "{}", rt.backend());
    assert_eq!(raw::get_device_count(&rt).unwrap(), 1);
    raw::set_device(&rt, 0).unwrap();
    assert_eq!(raw::set_device(&rt, 1).unwrap_err().acl_code(), Some(aclshm::AclError::INVALID_DEVICE_ID));
    // Everything else is missing: a typed error naming the call, and the call is not counted.
    match raw::mem_import_from_shareable_handle(&rt, 1, 0) {
        Err(Error::Unsupported { call }) => assert_eq!(call, "aclrtMemImportFromShareableHandle"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(rt.call_count("aclrtMemImportFromShareableHandle"), Some(0));
    assert_eq!(rt.call_count("aclrtGetDeviceCount"), Some(1));
    assert!(matches!(raw::sim_get_stats(&rt), Err(Error::Unsupported { .. })));
    // What aclshm info would say: it cannot describe the devices without aclrtGetMemInfo.
    assert!(matches!(RuntimeInfo::gather(&rt), Err(Error::Unsupported { call: "aclrtGetMemInfo" })));
    let missing = rt.fns().missing(aclshm::sys::Group::Acl);
    assert_eq!(
        missing.len(),
        aclshm::sys::ENTRY_POINTS.iter().filter(|e| e.group == aclshm::sys::Group::Acl).count() - 4
    );
    let _ = std::fs::remove_file(lib);
}

#[test]
fn a_library_without_the_required_entry_points_is_refused() {
    let lib = build("not-a-runtime", &["-DNO_SET_DEVICE"]);
    let e = Runtime::load(Some(&lib)).unwrap_err();
    assert!(matches!(e, Error::Backend { .. }));
    assert!(e.to_string().contains("is not an ACL runtime: it lacks aclrtSetDevice"), "{e}");
    // Asked for explicitly with ACLSHM_BACKEND=acl, the same refusal; with auto, the simulator instead.
    assert!(Runtime::select("acl", Some(&lib)).is_err());
    assert_eq!(Runtime::select("auto", Some(&lib)).unwrap().backend(), &Backend::EmbeddedSimulator);
    let _ = std::fs::remove_file(lib);
}
