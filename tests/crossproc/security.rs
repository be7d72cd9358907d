//! Files and directories: the simulator's directory and the share directory are private (0700, files
//! 0600), and neither is used if another user owns it or others can write it. (Whitelisting and the
//! rendezvous's pid check are tested in `share.rs`.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aclshm::{Error, Pool, PoolConfig, Runtime, ShareConfig, raw};

use crate::harness::*;
use crate::{assert_code, test_name};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A directory of another user's: `dir`, created and chowned to nobody, when we are root; otherwise `/`,
/// which is root's.
fn foreign_dir(dir: PathBuf) -> PathBuf {
    if !root() {
        return PathBuf::from("/");
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    dir
}

/// A pool of 2 MiB chunks on device 0.
fn small_pool(rt: &Runtime) -> Pool {
    raw::set_device(rt, 0).unwrap();
    Pool::new(rt, 0, PoolConfig { chunk_bytes: 2 << 20, reserve_bytes: 8 << 20, ..PoolConfig::default() }).unwrap()
}

#[test]
fn the_simulator_and_share_directories_are_private_and_checked() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "holder" => {
                let pool = small_pool(rt);
                let a = pool.alloc(1 << 20).unwrap();
                let share = pool.share(ShareConfig::default()).unwrap();
                say(format!("share {share}"));
                hear_word("checked");
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            "refused" => {
                assert_code!(raw::get_device_count(rt), aclshm::sys::ACL_ERROR_RT_DEV_SETUP_ERROR);
                say("refused");
            }
            "share-refused" => {
                let pool = small_pool(rt);
                let dir = PathBuf::from(hear_word("dir"));
                let r = pool.share(ShareConfig { dir: Some(dir), ..ShareConfig::default() });
                match r {
                    Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                        say(format!("refused {source}"))
                    }
                    other => panic!("a share directory that is not private was used: {other:?}"),
                }
                pool.close().unwrap();
            }
            other => panic!("no role {other:?}"),
        },
        |sc| {
            let (foreign, writable) = (sc.another(), sc.another().shared());
            // What the simulator and the sharing create is private.
            let sc = sc.shared();
            let mut h = sc.spawn("holder");
            let share: aclshm::ShareDesc = h.expect("share").parse().unwrap();
            let share_dir = share.socket.parent().unwrap().to_path_buf();
            for dir in [sc.dir(), share_dir.as_path()] {
                assert_eq!(mode(dir), 0o700, "{}", dir.display());
                for e in std::fs::read_dir(dir).unwrap().flatten() {
                    let m = mode(&e.path());
                    assert_eq!(m & 0o077, 0, "{} is {m:o}: open to others", e.path().display());
                }
            }
            h.send("checked");
            h.expect("ok");
            h.join();
            sc.finish();

            // A simulator directory of another user is refused (and nothing is created in it).
            let sc = foreign;
            let dir = foreign_dir(sc.dir().to_path_buf());
            let mut r = sc.spawn_with("refused", &[("ACLSHM_SIM_DIR", dir.to_str().unwrap())]);
            r.expect("refused");
            assert!(r.wait().success());
            assert!(r.stderr().contains("belongs to uid"), "{}", r.stderr());
            drop(sc);

            // So is a share directory that others can write, or that another user owns.
            let sc = writable;
            let open = PathBuf::from(format!("{}-open", sc.dir().display()));
            std::fs::create_dir_all(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
            let other = foreign_dir(PathBuf::from(format!("{}-other", sc.dir().display())));
            for (dir, says) in [(&open, "private directory"), (&other, "private directory")] {
                let why = sc.ask("share-refused", format!("dir {}", dir.display()), "refused");
                assert!(why.contains(says) || why.contains("belongs to uid"), "{why}");
            }
            assert!(std::fs::read_dir(&open).unwrap().next().is_none(), "nothing was created in it");
            let _ = std::fs::remove_dir_all(&open);
            if root() {
                let _ = std::fs::remove_dir_all(&other);
            }
            sc.finish();
        },
    );
}
