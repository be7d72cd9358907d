//! The simulator's configuration, from the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `ACLSHM_SIM_DIR` | directory of the simulator's shared objects | `/dev/shm/aclshm-<uid>` |
//! | `ACLSHM_SIM_DEVICES` | number of simulated devices, 1 to 16 | 2 |
//! | `ACLSHM_SIM_HBM_BYTES` | capacity of each device: bytes, or with a suffix K, M, G, T (powers of 1024) | 32G |
//! | `ACLSHM_SIM_FAULTS` | faults to inject, see [`crate::fault`] | none |
//! | `ACLSHM_SIM_LOG` | `1`: print every failing call and why to stderr | off |
//! | `ACLSHM_SIM_COMMIT` | `eager`: device memory is backed when allocated (a full host fails the allocation, as a full device does); `lazy`: only when first written (for tools that measure allocation and never touch the memory) | `eager` |
//!
//! Every process attached to one directory sees the same devices. The first process configures them; a
//! later one that sets `ACLSHM_SIM_DEVICES` or `ACLSHM_SIM_HBM_BYTES` to something else is refused while
//! any other process is attached, and one that sets neither adopts what the directory has.

use std::path::PathBuf;

pub use aclshm_os::parse_bytes;

/// Most devices a simulator can have (the `deviceBytesUsed` array of `aclshmSimStats` has this many).
pub const MAX_DEVICES: u32 = aclshm_sys::ACLSHM_SIM_MAX_DEVICES;
/// Granularity of device memory: every physical allocation and mapping is a multiple of it.
pub const GRANULARITY: u64 = 2 << 20;
/// Granularity of 1 GiB-page device memory.
pub const GRANULARITY_1G: u64 = 1 << 30;
/// Default number of devices.
pub const DEFAULT_DEVICES: u32 = 2;
/// Default capacity per device.
pub const DEFAULT_HBM_BYTES: u64 = 32 << 30;
/// Bytes in a normal host page: small `aclrtMalloc` allocations and `aclrtMallocHost` memory come in
/// these.
pub(crate) const HOST_PAGE: usize = 4096;

/// How the simulator is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The directory that holds the registry and the shared-memory objects.
    pub dir: PathBuf,
    /// Number of devices.
    pub devices: u32,
    /// Capacity of each device in bytes (usable capacity is this rounded down to the granularity).
    pub hbm_bytes: u64,
    /// Whether `devices` was given explicitly (and so must match an existing directory's).
    pub devices_explicit: bool,
    /// Whether `hbm_bytes` was given explicitly.
    pub hbm_explicit: bool,
    /// Back device memory only when it is first written (`ACLSHM_SIM_COMMIT=lazy`). Per process.
    pub lazy_commit: bool,
}

impl Config {
    /// Read the configuration from the environment.
    pub fn from_env() -> Result<Config, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let dir = match var("ACLSHM_SIM_DIR") {
            Some(d) => {
                let p = PathBuf::from(d.trim());
                if !p.is_absolute() {
                    return Err(format!("ACLSHM_SIM_DIR={} is not an absolute path", p.display()));
                }
                p
            }
            None => default_dir(),
        };
        let (devices, devices_explicit) = match var("ACLSHM_SIM_DEVICES") {
            Some(v) => (parse_devices(&v)?, true),
            None => (DEFAULT_DEVICES, false),
        };
        let (hbm_bytes, hbm_explicit) = match var("ACLSHM_SIM_HBM_BYTES") {
            Some(v) => (parse_bytes(&v).map_err(|e| format!("ACLSHM_SIM_HBM_BYTES={v}: {e}"))?, true),
            None => (DEFAULT_HBM_BYTES, false),
        };
        if hbm_bytes < GRANULARITY {
            return Err(format!(
                "ACLSHM_SIM_HBM_BYTES={hbm_bytes} is below the 2 MiB granularity: a device must hold at least one page"
            ));
        }
        let lazy_commit = match var("ACLSHM_SIM_COMMIT").as_deref().map(str::trim) {
            None | Some("eager") => false,
            Some("lazy") => true,
            Some(other) => return Err(format!("ACLSHM_SIM_COMMIT={other}: expected eager or lazy")),
        };
        Ok(Config { dir, devices, hbm_bytes, devices_explicit, hbm_explicit, lazy_commit })
    }
}

/// `/dev/shm/aclshm-<uid>`, or under the temporary directory where `/dev/shm` does not exist.
pub fn default_dir() -> PathBuf {
    let uid = aclshm_os::euid();
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("aclshm-{uid}"))
}

fn parse_devices(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(n),
        _ => Err(format!("ACLSHM_SIM_DEVICES={v}: expected a number of devices from 1 to {MAX_DEVICES}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_counts() {
        assert_eq!(parse_devices("1").unwrap(), 1);
        assert_eq!(parse_devices("16").unwrap(), 16);
        assert!(parse_devices("0").is_err());
        assert!(parse_devices("17").is_err());
        assert!(parse_devices("two").is_err());
    }

    #[test]
    fn default_dir_is_per_user() {
        let d = default_dir();
        assert!(d.file_name().unwrap().to_string_lossy().starts_with("aclshm-"));
    }
}
