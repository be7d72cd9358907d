"""pyACL's calls for contexts, the run mode, pointer attributes, memory access, stream memory operations
(`value_write` / `value_wait`), sharing physical memory with the V2 calls, and `acl.util`'s
`numpy_contiguous_to_ptr`."""

import pytest

import aclshm.acl as acl
import procs
from procs import MB2, run_pair

DRV = 507899  # ACL_ERROR_RT_DRV_INTERNAL_ERROR
PARAM = 107000  # ACL_ERROR_RT_PARAM_INVALID
CONTEXT_NULL = 107002  # ACL_ERROR_RT_CONTEXT_NULL
INVALID_PARAM = 100000  # ACL_ERROR_INVALID_PARAM
FEATURE_NOT_SUPPORT = 207000  # ACL_ERROR_RT_FEATURE_NOT_SUPPORT
DEVICE, HOST, UNREGISTERED = 1, 0, 2  # ACL_MEM_LOCATION_TYPE_*
DEFAULT, FABRIC = 1, 2  # ACL_MEM_SHARE_HANDLE_TYPE_*


def test_constants_are_the_runtimes():
    assert (acl.ACL_DEVICE, acl.ACL_HOST) == (0, 1)
    assert (acl.ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT, acl.ACL_MEM_SHARE_HANDLE_TYPE_FABRIC) == (DEFAULT, FABRIC)
    assert (acl.ACL_STREAM_WAIT_VALUE_GEQ, acl.ACL_STREAM_WAIT_VALUE_EQ, acl.ACL_STREAM_WAIT_VALUE_AND,
            acl.ACL_STREAM_WAIT_VALUE_NOR) == (0, 1, 2, 3)
    assert (acl.ACL_MEM_LOCATION_TYPE_HOST, acl.ACL_MEM_LOCATION_TYPE_DEVICE,
            acl.ACL_MEM_LOCATION_TYPE_UNREGISTERED) == (HOST, DEVICE, UNREGISTERED)
    assert acl.ACL_RT_MEM_ACCESS_FLAGS_READWRITE == 3


def test_run_mode_is_host():
    assert acl.rt.get_run_mode() == (acl.ACL_HOST, 0)
    assert acl.rt.get_run_mode() == (1, 0)


def test_contexts():
    assert acl.rt.set_device(0) == 0
    default, ret = acl.rt.get_context()
    assert ret == 0 and default != 0
    # A device's default context goes with reset_device, not destroy_context.
    assert acl.rt.destroy_context(default) == CONTEXT_NULL
    ctx, ret = acl.rt.create_context(1)
    assert ret == 0 and ctx not in (0, default)
    assert acl.rt.get_device() == (1, 0)  # the new context is current, and its device with it
    assert acl.rt.get_context() == (ctx, 0)
    assert acl.rt.set_context(default) == 0
    assert acl.rt.get_device() == (0, 0)
    assert acl.rt.get_context() == (default, 0)
    assert acl.rt.set_context(ctx) == 0
    assert acl.rt.get_device() == (1, 0)
    assert acl.rt.synchronize_device() == 0
    assert acl.rt.destroy_context(ctx) == 0
    assert acl.rt.destroy_context(ctx) == CONTEXT_NULL  # stale: refused, not a crash
    assert acl.rt.set_context(ctx) == CONTEXT_NULL
    assert acl.rt.set_context(default) == 0
    assert acl.rt.create_context(99) == (0, 107001)  # ACL_ERROR_RT_INVALID_DEVICEID
    assert acl.rt.reset_device(0) == 0


def test_pointer_attributes():
    np = pytest.importorskip("numpy")
    assert acl.rt.set_device(1) == 0
    dev, ret = acl.rt.malloc(4096, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    assert ret == 0
    host, ret = acl.rt.malloc_host(4096)
    assert ret == 0
    attrs, ret = acl.rt.pointer_get_attributes(dev)
    assert ret == 0
    assert attrs["location"] == {"id": 1, "type": DEVICE} and attrs["pageSize"] > 0
    attrs, ret = acl.rt.pointer_get_attributes(dev + 100)  # inside the allocation
    assert ret == 0 and attrs["location"] == {"id": 1, "type": DEVICE}
    attrs, ret = acl.rt.pointer_get_attributes(host)
    assert ret == 0 and attrs["location"]["type"] == HOST and attrs["pageSize"] > 0
    array = np.zeros(16, dtype=np.int64)
    attrs, ret = acl.rt.pointer_get_attributes(acl.util.numpy_to_ptr(array))
    assert ret == 0 and attrs["location"]["type"] == UNREGISTERED
    assert sorted(attrs) == ["location", "pageSize"]
    assert acl.rt.pointer_get_attributes(0) == ({}, INVALID_PARAM)
    assert acl.rt.free_host(host) == 0
    assert acl.rt.free(dev) == 0
    assert acl.rt.reset_device(1) == 0


def test_mem_set_access_on_a_mapping():
    assert acl.rt.set_device(0) == 0
    handle, ret = acl.rt.malloc_physical(MB2, procs.prop_on(0), 0)
    assert ret == 0
    va, ret = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    assert ret == 0
    assert acl.rt.map_mem(va, MB2, 0, handle, 0) == 0
    rw = {"flags": acl.ACL_RT_MEM_ACCESS_FLAGS_READWRITE, "location": {"id": 0, "type": DEVICE}}
    assert acl.rt.mem_set_access(va, MB2, [rw]) == 0
    assert acl.rt.mem_set_access(va, MB2, rw) == 0  # one dict is a list of one
    attrs, ret = acl.rt.pointer_get_attributes(va)
    assert ret == 0 and attrs["location"] == {"id": 0, "type": DEVICE} and attrs["pageSize"] == MB2
    read_only = {"flags": acl.ACL_RT_MEM_ACCESS_FLAGS_READ, "location": {"id": 0, "type": DEVICE}}
    assert acl.rt.mem_set_access(va, MB2, [read_only]) == FEATURE_NOT_SUPPORT  # READWRITE only
    assert acl.rt.mem_set_access(va, MB2, [{"flags": 3, "location": {"id": 0, "type": 7}}]) == PARAM
    assert acl.rt.mem_set_access(va, MB2, []) == PARAM  # count 0
    with pytest.raises(TypeError, match="unknown key"):
        acl.rt.mem_set_access(va, MB2, [{"flag": 3}])
    with pytest.raises(TypeError, match="location"):
        acl.rt.mem_set_access(va, MB2, [{"flags": 3, "location": 0}])
    with pytest.raises(TypeError):
        acl.rt.mem_set_access(va, MB2, 3)
    assert acl.rt.unmap_mem(va) == 0
    assert acl.rt.free_physical(handle) == 0
    assert acl.rt.release_mem_address(va) == 0
    assert acl.rt.reset_device(0) == 0


def test_value_write_and_wait():
    assert acl.rt.set_device(0) == 0
    stream, ret = acl.rt.create_stream()
    assert ret == 0
    dev, ret = acl.rt.malloc(64, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    assert ret == 0
    assert acl.rt.memset(dev, 64, 0, 64) == 0
    value = 0x1122334455667788
    assert acl.rt.value_write(dev + 8, value, 0, stream) == 0
    assert acl.rt.value_wait(dev + 8, value, acl.ACL_STREAM_WAIT_VALUE_EQ, stream) == 0  # met: runs on
    assert acl.rt.value_wait(dev + 8, 1, acl.ACL_STREAM_WAIT_VALUE_GEQ, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    got = bytearray(24)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(got), 24, dev, 24, acl.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    assert int.from_bytes(got[8:16], "little") == value
    assert bytes(got[:8]) == bytes(8) and bytes(got[16:]) == bytes(8)  # the word, and only it
    assert acl.rt.value_write(dev, 1, 1, stream) == PARAM  # flag reserved, 0
    assert acl.rt.value_write(dev + 4, 1, 0, stream) == PARAM  # not 8-byte aligned
    host = bytearray(8)
    assert acl.rt.value_write(acl.util.bytes_to_ptr(host), 1, 0, stream) == PARAM  # not device memory
    assert acl.rt.value_wait(dev, 1, 9, stream) == PARAM  # unknown condition
    assert acl.rt.free(dev) == 0
    assert acl.rt.destroy_stream(stream) == 0
    assert acl.rt.reset_device(0) == 0


def test_v2_export_in_one_process():
    assert acl.rt.set_device(0) == 0
    fabric_src, ret = acl.rt.malloc_physical(MB2, procs.prop_on(0), 0)
    assert ret == 0
    default_src, ret = acl.rt.malloc_physical(MB2, procs.prop_on(0), 0)
    assert ret == 0
    fabric, ret = acl.rt.mem_export_to_shareable_handle_v2(fabric_src, 0, acl.ACL_MEM_SHARE_HANDLE_TYPE_FABRIC)
    assert ret == 0 and isinstance(fabric, bytes) and len(fabric) == 128 and any(fabric)
    assert acl.rt.mem_export_to_shareable_handle_v2(fabric_src, 0, FABRIC) == (b"", DRV)  # exported once
    shareable, ret = acl.rt.mem_export_to_shareable_handle_v2(default_src, 0, DEFAULT)
    assert ret == 0 and isinstance(shareable, int) and shareable != 0
    # Unknown share type: passed to the runtime, which refuses it.
    third, ret = acl.rt.malloc_physical(MB2, procs.prop_on(0), 0)
    assert acl.rt.mem_export_to_shareable_handle_v2(third, 0, 3) == (b"", PARAM)
    # Import in the exporting process: refused by the runtime.
    assert acl.rt.mem_import_from_shareable_handle_v2(fabric, FABRIC, 0) == (0, DRV)
    assert acl.rt.mem_import_from_shareable_handle_v2(shareable, DEFAULT, 0) == (0, DRV)
    # A handle that cannot be the struct its type names never reaches the runtime.
    assert acl.rt.mem_import_from_shareable_handle_v2(shareable, FABRIC, 0) == (0, INVALID_PARAM)
    assert acl.rt.mem_import_from_shareable_handle_v2(fabric, DEFAULT, 0) == (0, INVALID_PARAM)
    assert acl.rt.mem_import_from_shareable_handle_v2(fabric[:127], FABRIC, 0) == (0, INVALID_PARAM)
    assert acl.rt.mem_set_pid_to_shareable_handle_v2(fabric[:64], FABRIC, [1]) == INVALID_PARAM
    # Whitelists of both kinds; an empty one is refused.
    assert acl.rt.mem_set_pid_to_shareable_handle_v2(fabric, FABRIC, [12345]) == 0
    assert acl.rt.mem_set_pid_to_shareable_handle_v2(shareable, DEFAULT, 12345) == 0
    assert acl.rt.mem_set_pid_to_shareable_handle_v2(shareable, DEFAULT, []) == INVALID_PARAM
    for h in (fabric_src, default_src, third):
        assert acl.rt.free_physical(h) == 0
    assert acl.rt.reset_device(0) == 0


@pytest.mark.parametrize("share_type", [DEFAULT, FABRIC], ids=["default", "fabric"])
def test_v2_export_import_across_processes(spawn, share_type):
    a, b = run_pair(spawn, procs.phys_v2_exporter, (share_type,), procs.phys_v2_importer, (share_type, 1))
    assert a == {
        "malloc": 0, "reserve": 0, "map": 0, "h2d": 0, "export": 0,
        "shareable": ("int", None) if share_type == DEFAULT else ("bytes", 128),
        "import_own": DRV,
        "set_pid": 0, "unmap": 0, "free": 0, "release": 0, "reset": 0,
    }
    assert b == {
        "import_unlisted": DRV,  # not whitelisted yet
        "tgid": 0,
        "import_flags": INVALID_PARAM,  # flags are reserved
        "import": 0, "reserve": 0, "map": 0,
        "attrs": ({"location": {"id": 1, "type": DEVICE}, "pageSize": MB2}, 0),  # imported on device 1
        "d2h": 0, "data_ok": True,
        "unmap": 0, "free": 0, "release": 0, "reset": 0,
    }


def test_numpy_contiguous_to_ptr():
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.int32)
    ptr, out = acl.util.numpy_contiguous_to_ptr(a)
    assert out is a  # already C-contiguous: the array itself
    assert ptr == a.ctypes.data == acl.util.numpy_to_ptr(a)

    t = np.arange(12, dtype=np.int32).reshape(3, 4).T  # a transposed view: not C-contiguous
    assert not t.flags.c_contiguous
    with pytest.raises(BufferError):
        acl.util.numpy_to_ptr(t)
    ptr, out = acl.util.numpy_contiguous_to_ptr(t)
    assert out is not t and out.flags.c_contiguous and np.array_equal(out, t)
    assert ptr == out.ctypes.data
    assert acl.util.ptr_to_bytes(ptr, out.nbytes) == t.tobytes()  # row-major, as memcpy copies it

    # Through the device and back, in row-major order.
    assert acl.rt.set_device(0) == 0
    dev, ret = acl.rt.malloc(out.nbytes, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    assert ret == 0
    assert acl.rt.memcpy(dev, out.nbytes, ptr, out.nbytes, acl.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    back = np.empty((4, 3), dtype=np.int32)
    back_ptr, back_out = acl.util.numpy_contiguous_to_ptr(back)
    assert back_out is back
    assert acl.rt.memcpy(back_ptr, back.nbytes, dev, out.nbytes, acl.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    assert np.array_equal(back, t)
    assert acl.rt.free(dev) == 0
    assert acl.rt.reset_device(0) == 0

    with pytest.raises(ValueError, match="ndarray"):
        acl.util.numpy_contiguous_to_ptr(b"not an array")
