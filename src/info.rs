//! What a runtime is and has: the backend, its version, its devices. What `aclshm info` prints.

use std::path::PathBuf;

use aclshm_sys::{aclrtMemAttr, aclrtMemGranularityOptions};

use crate::error::Result;
use crate::raw;
use crate::runtime::{Backend, Runtime};

/// One device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id.
    pub id: i32,
    /// Device memory, in bytes.
    pub total_bytes: usize,
    /// Device memory not in use (by any process), in bytes.
    pub free_bytes: usize,
    /// Minimum granularity of physical allocations (2 MiB pages).
    pub granularity: usize,
    /// Recommended granularity.
    pub granularity_recommended: usize,
}

/// The simulator's own description, when the runtime is the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatorInfo {
    /// The simulator's version.
    pub version: String,
    /// The directory of its shared objects.
    pub dir: PathBuf,
    /// Configured capacity of each device, in bytes.
    pub hbm_bytes: u64,
    /// Processes attached to the directory (this one included).
    pub processes: u32,
    /// Physical memory objects alive in the directory.
    pub phys_objects: u32,
}

/// A runtime's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Where the entry points come from.
    pub backend: Backend,
    /// The ACL version the runtime reports (None if it cannot tell).
    pub version: Option<(i32, i32, i32)>,
    /// Its devices.
    pub devices: Vec<DeviceInfo>,
    /// The simulator's description, if it is one.
    pub simulator: Option<SimulatorInfo>,
    /// ACL functions aclshm declares that the runtime lacks.
    pub missing: Vec<&'static str>,
}

impl RuntimeInfo {
    /// Ask `rt`. Sets each device current in the calling thread in turn, and resets it after.
    pub fn gather(rt: &Runtime) -> Result<RuntimeInfo> {
        let count = raw::get_device_count(rt)?;
        let mut devices = Vec::with_capacity(count as usize);
        for id in 0..count as i32 {
            raw::set_device(rt, id)?;
            let described = (|| {
                let (free_bytes, total_bytes) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM)?;
                let prop = crate::vmm::device_prop(id, crate::vmm::PageSize::Huge2M);
                let granularity = raw::mem_get_allocation_granularity(
                    rt,
                    &prop,
                    aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM,
                )?;
                let granularity_recommended = raw::mem_get_allocation_granularity(
                    rt,
                    &prop,
                    aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED,
                )?;
                Ok(DeviceInfo { id, total_bytes, free_bytes, granularity, granularity_recommended })
            })();
            // Reset whatever happened, but report the first failure.
            let reset = raw::reset_device(rt, id);
            devices.push(described?);
            reset?;
        }
        let simulator = if rt.is_simulator() {
            let info = raw::sim_get_info(rt)?;
            let stats = raw::sim_get_stats(rt)?;
            let v = info.version.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
            Some(SimulatorInfo {
                version: v,
                dir: raw::sim_get_dir(rt)?,
                hbm_bytes: info.hbmBytes,
                processes: stats.processes,
                phys_objects: stats.physObjects,
            })
        } else {
            None
        };
        Ok(RuntimeInfo {
            backend: rt.backend().clone(),
            version: raw::get_version(rt).ok(),
            devices,
            simulator,
            missing: rt.fns().missing(aclshm_sys::Group::Acl),
        })
    }
}
