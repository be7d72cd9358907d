//! Two processes share device memory through the ACL runtime, with aclshm's thin `raw` layer.
//!
//! The owner allocates physical memory on device 0, maps it, writes a message, exports it with pid
//! validation on, whitelists the worker's pid and hands it the shareable handle; the worker (this program
//! again, started by the owner) imports it on device 1, maps it, reads the message and writes a reply that
//! the owner reads. Both tear down in the documented order: unmap, free physical, release the range.
//!
//! ```sh
//! cargo run --example share_physical_memory
//! ```
//!
//! Without an NPU it runs on the built-in simulator; with `ACLSHM_BACKEND=acl` on CANN.

mod common;

use std::ffi::c_void;
use std::io::Write;

use aclshm::sys::{
    ACL_RT_VMM_EXPORT_FLAG_DEFAULT, aclrtMemAllocationType, aclrtMemAttr, aclrtMemGranularityOptions,
    aclrtMemHandleType, aclrtMemLocation, aclrtMemLocationType, aclrtPhysicalMemProp,
};
use aclshm::{Runtime, raw};
use common::{Result, Worker, from_device, to_device};

fn prop(device: u32) -> aclrtPhysicalMemProp {
    aclrtPhysicalMemProp {
        handleType: aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
        allocationType: aclrtMemAllocationType::ACL_MEM_ALLOCATION_TYPE_PINNED,
        memAttr: aclrtMemAttr::ACL_HBM_MEM_HUGE,
        location: aclrtMemLocation { id: device, type_: aclrtMemLocationType::ACL_MEM_LOCATION_TYPE_DEVICE },
        reserve: 0,
    }
}

/// Copy `text` to device memory at `dst` (NUL-padded to `len`).
///
/// # Safety
/// 1. `dst` is device memory of at least `len` bytes mapped in this process.
unsafe fn put(rt: &Runtime, dst: *mut c_void, text: &str, len: usize) -> Result<()> {
    let mut buf = text.as_bytes().to_vec();
    buf.resize(len, 0);
    // SAFETY: dst is mapped device memory of at least len bytes (precondition 1).
    unsafe { to_device(rt, dst, &buf) }
}

/// Read a NUL-padded string of at most `len` bytes from device memory at `src`.
///
/// # Safety
/// 1. `src` is device memory of at least `len` bytes mapped in this process.
unsafe fn get(rt: &Runtime, src: *const c_void, len: usize) -> Result<String> {
    // SAFETY: src is mapped device memory of at least len bytes (precondition 1).
    let buf = unsafe { from_device(rt, src, len)? };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(len);
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

const MSG: usize = 256;

/// Undo a mapping in the documented order: unmap, free the physical memory, release the range.
///
/// # Safety
/// 1. `va` is a range this process reserved with `handle` mapped whole at its start, and nothing uses the
///    mapping, the handle or the range any more.
unsafe fn teardown(rt: &Runtime, va: *mut c_void, handle: aclshm::sys::aclrtDrvMemHandle) -> Result<()> {
    // SAFETY: forwarded to the caller (precondition 1).
    unsafe {
        raw::unmap_mem(rt, va)?;
        raw::free_physical(rt, handle)?;
        raw::release_mem_address(rt, va)?;
    }
    Ok(())
}

fn owner() -> Result<()> {
    let rt = Runtime::global()?;
    println!("owner: runtime is {}", rt.backend());
    raw::set_device(rt, 0)?;
    let size = raw::mem_get_allocation_granularity(
        rt,
        &prop(0),
        aclrtMemGranularityOptions::ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM,
    )?;
    let handle = raw::malloc_physical(rt, size, &prop(0), 0)?;
    // SAFETY: no expected address; the handle is ours and mapped whole into our own range.
    let va = unsafe {
        let va = raw::reserve_mem_address(rt, size, 0, std::ptr::null_mut(), 0)?;
        raw::map_mem(rt, va, size, 0, handle, 0)?;
        va
    };
    // SAFETY: va maps `size` >= 2 * MSG bytes.
    unsafe { put(rt, va, "hello from the owner, on device 0", MSG)? };
    // SAFETY: our live handle.
    let shareable = unsafe {
        raw::mem_export_to_shareable_handle(
            rt,
            handle,
            aclrtMemHandleType::ACL_MEM_HANDLE_TYPE_NONE,
            ACL_RT_VMM_EXPORT_FLAG_DEFAULT,
        )?
    };
    println!("owner: {size} bytes on device 0 exported as shareable handle {shareable:#x}");

    let mut worker = Worker::start_self(&["worker"])?;

    // Validation is on: only whitelisted pids (as the host sees them) may import.
    let pid: i32 = worker.recv()?.parse()?;
    raw::mem_set_pid_to_shareable_handle(rt, shareable, &[pid])?;
    println!("owner: whitelisted the worker (pid {pid})");
    worker.send(&format!("{shareable} {size}"))?;
    println!("{}", worker.recv()?);
    println!("{}", worker.recv()?);
    // SAFETY: as above.
    let reply = unsafe { get(rt, va.cast::<u8>().wrapping_add(MSG).cast(), MSG)? };
    println!("owner: the worker wrote back: {reply:?}");
    worker.finish()?;
    // SAFETY: our range with our handle mapped whole at its start; nothing uses them any more.
    unsafe { teardown(rt, va, handle)? };
    println!("owner: unmapped, freed, released; done");
    Ok(())
}

fn worker() -> Result<()> {
    let rt = Runtime::global()?;
    raw::set_device(rt, 1)?;
    println!("{}", raw::device_get_bare_tgid(rt)?);
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let (shareable, size) = line.trim().split_once(' ').ok_or("expected a handle and a size")?;
    let (shareable, size): (u64, usize) = (shareable.parse()?, size.parse()?);
    let handle = raw::mem_import_from_shareable_handle(rt, shareable, 1)?;
    // SAFETY: no expected address; the imported handle is mapped whole into our own range.
    let va = unsafe {
        let va = raw::reserve_mem_address(rt, size, 0, std::ptr::null_mut(), 0)?;
        raw::map_mem(rt, va, size, 0, handle, 0)?;
        va
    };
    // SAFETY: va maps `size` >= 2 * MSG bytes.
    let message = unsafe { get(rt, va, MSG)? };
    println!("worker: imported it on device 1 and read {message:?}");
    // SAFETY: as above.
    unsafe { put(rt, va.cast::<u8>().wrapping_add(MSG).cast(), "hello from the worker, on device 1", MSG)? };
    // SAFETY: our range with the imported handle mapped whole at its start; nothing uses them any more.
    unsafe { teardown(rt, va, handle)? };
    println!("worker: wrote a reply, unmapped, freed, released");
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("worker") { worker() } else { owner() }
}
