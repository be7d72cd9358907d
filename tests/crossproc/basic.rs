//! Initialisation, devices, contexts, streams, copies: the rules that need only one process (run in a
//! child, like everything that touches the simulator).

use std::ffi::c_void;

use aclshm::raw;
use aclshm::sys::error_name;
use aclshm::sys::*;

use crate::harness::*;
use crate::{assert_code, test_name};

#[test]
fn init_devices_and_contexts() {
    solo(test_name!(), |rt| {
        raw::init(rt, None).unwrap();
        assert_code!(raw::init(rt, None), ACL_ERROR_REPEAT_INITIALIZE);
        raw::finalize(rt).unwrap();
        assert_code!(raw::finalize(rt), ACL_ERROR_REPEAT_FINALIZE);
        raw::init(rt, None).unwrap();
        assert_eq!(raw::get_version(rt).unwrap(), (1, 17, 0));
        assert_eq!(raw::get_device_count(rt).unwrap(), 2);

        // Everything that needs a device says so until the thread has one.
        assert_code!(raw::get_device(rt), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::malloc(rt, 64, aclrtMemMallocPolicy(0)), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::create_stream(rt), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::malloc_host(rt, 64), ACL_ERROR_RT_CONTEXT_NULL);
        assert_code!(raw::reset_device(rt, 0), ACL_ERROR_RT_CONTEXT_RELEASE_ERROR);
        assert_code!(raw::set_device(rt, 2), ACL_ERROR_RT_INVALID_DEVICEID);
        assert_code!(raw::set_device(rt, -1), ACL_ERROR_RT_INVALID_DEVICEID);

        raw::set_device(rt, 1).unwrap();
        raw::set_device(rt, 0).unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 0);
        // The current device is per thread.
        let rt2 = rt.clone();
        std::thread::spawn(move || {
            assert_code!(raw::get_device(&rt2), ACL_ERROR_RT_CONTEXT_NULL);
            raw::set_device(&rt2, 1).unwrap();
            assert_eq!(raw::get_device(&rt2).unwrap(), 1);
            raw::reset_device(&rt2, 1).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(raw::get_device(rt).unwrap(), 0);

        // Peer access.
        assert!(raw::device_can_access_peer(rt, 0, 1).unwrap());
        assert_code!(raw::device_can_access_peer(rt, 1, 1), ACL_ERROR_INVALID_PARAM);
        assert_code!(raw::device_can_access_peer(rt, 0, 7), ACL_ERROR_RT_INVALID_DEVICEID);
        assert_code!(raw::device_enable_peer_access(rt, 1, 1), ACL_ERROR_FEATURE_UNSUPPORTED);
        assert_code!(raw::device_enable_peer_access(rt, 0, 0), ACL_ERROR_INVALID_PARAM);
        raw::device_enable_peer_access(rt, 1, 0).unwrap();
        raw::device_disable_peer_access(rt, 1).unwrap();
        assert_eq!(raw::device_get_bare_tgid(rt).unwrap(), std::process::id() as i32);

        // Memory information counts what is allocated.
        let (free, total) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM).unwrap();
        assert_eq!(free, total);
        assert_eq!(total as u64, 32 << 30, "the default capacity");
        let p = raw::malloc(rt, 3 << 20, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_ONLY).unwrap();
        assert_eq!(p as usize % MIB2, 0, "huge-page memory is 2 MiB aligned");
        let (free2, _) = raw::get_mem_info(rt, aclrtMemAttr::ACL_HBM_MEM_HUGE).unwrap();
        assert_eq!(free - free2, 4 << 20, "3 MiB (+ 32 bytes of padding) takes two 2 MiB pages");
        assert_code!(raw::get_mem_info(rt, aclrtMemAttr(99)), ACL_ERROR_RT_INVALID_MEMORY_TYPE);
        // SAFETY: our allocation; bad pointers are refused.
        unsafe {
            raw::free(rt, p).unwrap();
            assert_code!(raw::free(rt, p), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(raw::free(rt, std::ptr::null_mut()), ACL_ERROR_INVALID_PARAM);
        }
        assert_code!(raw::malloc(rt, 0, aclrtMemMallocPolicy(0)), ACL_ERROR_INVALID_PARAM);

        // The final reset destroys the device's streams and leaves the thread without a device.
        let s = raw::create_stream(rt).unwrap();
        raw::reset_device(rt, 0).unwrap();
        assert_code!(raw::get_device(rt), ACL_ERROR_RT_CONTEXT_NULL);
        // SAFETY: a stream destroyed by the reset: refused as stale.
        assert_code!(unsafe { raw::synchronize_stream(rt, s) }, ACL_ERROR_RT_INVALID_HANDLE);
        raw::set_device(rt, 1).unwrap();
        raw::reset_device_force(rt, 1).unwrap();
        assert_code!(raw::reset_device(rt, 1), ACL_ERROR_RT_CONTEXT_RELEASE_ERROR);
        raw::finalize(rt).unwrap();
    });
}

#[test]
fn copies_and_streams() {
    solo(test_name!(), |rt| {
        raw::set_device(rt, 0).unwrap();
        let n = 1 << 20;
        let d = raw::malloc(rt, n, aclrtMemMallocPolicy(0)).unwrap();
        let e = raw::malloc(rt, n, aclrtMemMallocPolicy(0)).unwrap();
        let data = pattern(5, n);
        let h2d = aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE;
        let d2h = aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST;
        let d2d = aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE;
        let mut back = vec![0u8; n];
        let host = data.as_ptr().cast::<c_void>();
        let out = back.as_mut_ptr().cast::<c_void>();
        // SAFETY: host buffers of n bytes, device allocations of n bytes; bad calls are refused.
        unsafe {
            assert_code!(raw::memcpy(rt, d, n - 1, host, n, h2d), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(raw::memcpy(rt, d, n, std::ptr::null(), n, h2d), ACL_ERROR_INVALID_PARAM);
            assert_code!(raw::memcpy(rt, d, n, host, n, aclrtMemcpyKind(7)), ACL_ERROR_INVALID_PARAM);
            assert_code!(raw::memcpy(rt, d, n, host, n, d2h), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(raw::memcpy(rt, out, n, host, n, d2d), ACL_ERROR_RT_PARAM_INVALID);
            raw::memcpy(rt, d, n, host, 0, h2d).unwrap();
            raw::memcpy(rt, d, n, host, n, h2d).unwrap();
            raw::memcpy(rt, e, n, d, n, aclrtMemcpyKind::ACL_MEMCPY_DEFAULT).unwrap();
            raw::memcpy(rt, out, n, e, n, d2h).unwrap();
            assert_eq!(back, data);
            // Reading past an allocation (1 MiB + 32 bytes of padding, in 4 KiB pages) is refused, not a crash.
            assert_code!(
                raw::memcpy(rt, out, n, e.cast::<u8>().add(8192).cast(), n, d2h),
                ACL_ERROR_RT_DRV_INTERNAL_ERROR
            );
            raw::memset(rt, d, n, 0x5A, 4096).unwrap();
            assert_code!(raw::memset(rt, d, 10, 0, 4096), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(raw::memset(rt, out, n, 0, 4096), ACL_ERROR_RT_PARAM_INVALID);
            raw::memcpy(rt, out, n, d, 4096, d2h).unwrap();
            assert!(back[..4096].iter().all(|&b| b == 0x5A));

            // Streams run their copies in order; synchronize waits for them.
            let s = raw::create_stream(rt).unwrap();
            let pinned = raw::malloc_host(rt, n).unwrap();
            std::ptr::copy_nonoverlapping(data.as_ptr(), pinned.cast::<u8>(), n);
            raw::memcpy_async(rt, e, n, pinned, n, h2d, s).unwrap();
            raw::memcpy_async(rt, d, n, e, n, d2d, s).unwrap();
            raw::memcpy_async(rt, out, n, d, n, d2h, s).unwrap();
            raw::synchronize_stream(rt, s).unwrap();
            assert_eq!(back, data);
            // The default stream (NULL), and a kind corrected between device and pinned memory.
            raw::memcpy_async(rt, e, n, pinned, n, d2d, std::ptr::null_mut()).unwrap();
            raw::synchronize_stream(rt, std::ptr::null_mut()).unwrap();
            assert_code!(raw::memcpy_async(rt, out, n, host, n, h2d, s), ACL_ERROR_RT_FEATURE_NOT_SUPPORT);
            assert_code!(raw::memcpy_async(rt, d, n, host, n, d2h, s), ACL_ERROR_RT_PARAM_INVALID);
            // A stream belongs to its device's context.
            raw::set_device(rt, 1).unwrap();
            assert_code!(raw::memcpy_async(rt, e, n, pinned, n, h2d, s), ACL_ERROR_RT_STREAM_CONTEXT);
            assert_code!(raw::destroy_stream(rt, s), ACL_ERROR_RT_STREAM_CONTEXT);
            raw::set_device(rt, 0).unwrap();
            // A copy whose memory was freed before the stream reached it fails the stream, not the process.
            let gone = raw::malloc(rt, n, aclrtMemMallocPolicy(0)).unwrap();
            let blocker = raw::create_notify(rt, 0).unwrap();
            raw::wait_and_reset_notify(rt, blocker, s, 30).unwrap();
            raw::memcpy_async(rt, gone, n, pinned, n, h2d, s).unwrap();
            raw::free(rt, gone).unwrap();
            raw::record_notify(rt, blocker, std::ptr::null_mut()).unwrap();
            assert_code!(raw::synchronize_stream(rt, s), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
            raw::synchronize_stream(rt, s).unwrap();
            // A plain destroy waits for queued work; a forced one drops it.
            raw::memcpy_async(rt, d, n, pinned, n, h2d, s).unwrap();
            raw::destroy_stream(rt, s).unwrap();
            assert_code!(raw::synchronize_stream(rt, s), ACL_ERROR_RT_INVALID_HANDLE);
            assert_code!(raw::destroy_stream(rt, s), ACL_ERROR_RT_INVALID_HANDLE);
            let f = raw::create_stream(rt).unwrap();
            raw::wait_and_reset_notify(rt, blocker, f, 0).unwrap();
            raw::destroy_stream_force(rt, f).unwrap();
            raw::destroy_notify(rt, blocker).unwrap();
            raw::free_host(rt, pinned).unwrap();
            assert_code!(raw::free_host(rt, pinned), ACL_ERROR_RT_PARAM_INVALID);
            assert_code!(raw::free_host(rt, d), ACL_ERROR_RT_PARAM_INVALID);
            raw::free(rt, d).unwrap();
            raw::free(rt, e).unwrap();
        }
        let st = raw::sim_get_stats(rt).unwrap();
        assert_eq!((st.localDeviceAllocs, st.localHostAllocs, st.physObjects, st.localNotifies), (0, 0, 0, 0));
    });
}

#[test]
fn every_entry_point_survives_null_and_zero_arguments() {
    solo(test_name!(), |rt| {
        let mut codes: Vec<(&'static str, i32)> = Vec::new();
        macro_rules! call_all {
            ($( $(#[doc = $doc:literal])* $group:ident $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
                $(
                    let f = rt.fns().$name.expect(stringify!($name));
                    // SAFETY: every argument is NULL or zero, which the C API allows to be passed (and
                    // answered with an error where it is not meaningful); the point is that nothing crashes.
                    let code = unsafe { f($(std::mem::zeroed::<$ty>()),*) };
                    codes.push((stringify!($name), code));
                )*
            };
        }
        // Twice: once without a current device, once with one.
        aclshm::sys::for_each_fn!(call_all);
        raw::set_device(rt, 0).unwrap();
        aclshm::sys::for_each_fn!(call_all);
        for &(name, code) in &codes {
            assert!(code == 0 || error_name(code).is_some(), "{name} returned the unknown code {code}");
        }
        let first = |n: &str| codes.iter().find(|(c, _)| *c == n).unwrap().1;
        // NULL out-parameters are the ACL layer's refusal; a zero handle too.
        for name in
            ["aclrtGetDeviceCount", "aclrtMalloc", "aclrtMallocPhysical", "aclrtCreateNotify", "aclrtFreePhysical"]
        {
            assert_eq!(first(name), ACL_ERROR_INVALID_PARAM, "{name}");
        }
        // Zero counts are accepted as nothing to do.
        assert_eq!(first("aclrtMemcpy"), 0);
        assert_eq!(first("aclrtMemset"), 0);
        assert!(codes.iter().filter(|(_, c)| *c != 0).count() > 80, "most calls refuse NULL or zero");
    });
}
