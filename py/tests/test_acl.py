"""pyACL's calling convention (`aclshm.acl`): the documented flows across real processes, and the
refused cases, whose `ret` codes are those the Rust layer's tests assert for the same calls
(tests/crossproc: share.rs, ipc.rs, notify.rs)."""

import os
import subprocess
import sys

import pytest

import aclshm
import aclshm.acl as acl
import procs
from procs import run_pair

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
DRV = 507899  # ACL_ERROR_RT_DRV_INTERNAL_ERROR: the driver refuses (whitelist, double import, ...)
PARAM = 107000  # ACL_ERROR_RT_PARAM_INVALID
INVALID_PARAM = 100000  # ACL_ERROR_INVALID_PARAM


def test_error_names_are_the_references():
    assert aclshm.error_name(DRV) == "ACL_ERROR_RT_DRV_INTERNAL_ERROR"
    assert aclshm.error_name(PARAM) == "ACL_ERROR_RT_PARAM_INVALID"
    assert aclshm.error_name(INVALID_PARAM) == "ACL_ERROR_INVALID_PARAM"
    assert aclshm.error_name(0) == "ACL_SUCCESS"
    assert aclshm.error_name(123) is None


@pytest.mark.parametrize("device", [0, 1])
def test_physical_memory_export_import_across_processes(spawn, device):
    a, b = run_pair(spawn, procs.phys_exporter, (), procs.phys_importer, (device,))
    assert a == {
        "malloc": 0, "reserve": 0, "map": 0, "h2d": 0, "export": 0,
        "export_again": DRV,  # a handle is exported once (one-to-one with its shareable handle)
        "import_own": DRV,  # export and import in one process: refused
        "set_pid": 0, "unmap": 0, "free": 0, "release": 0, "reset": 0,
    }
    assert b == {
        "import_unlisted": DRV,  # not whitelisted yet
        "tgid": 0, "import": 0,
        "import_twice": DRV,  # one import of a shareable handle per process
        "reserve": 0, "map": 0, "d2h": 0,
        "data_ok": True,  # read after the exporter freed: memory goes with the last free
        "unmap": 0, "free": 0, "release": 0, "reset": 0,
    }


def test_ipc_memory_by_key_across_processes(spawn):
    a, b = run_pair(spawn, procs.ipc_exporter, (), procs.ipc_importer, (1,))
    assert a == {"malloc": 0, "h2d": 0, "export": 0, "export_short_len": PARAM, "set_pid": 0, "close": 0,
                 "free": 0, "reset": 0}
    assert b == {"import_unlisted": DRV, "import": 0, "d2h": 0, "data_ok": True, "close": 0, "reset": 0}


def test_notify_flow_example_runs_unchanged():
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "notify_flow.py")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "A: the notify was recorded by B" in r.stdout
    assert r.stdout.rstrip().endswith("result: ok")


def test_a_process_not_whitelisted_cannot_import_a_notify(spawn):
    assert acl.rt.set_device(0) == 0
    notify, ret = acl.rt.create_notify(0)
    assert ret == 0
    key, ret = acl.rt.notify_get_export_key(notify, 65, acl.ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT)
    assert ret == 0 and 0 < len(key) <= 64
    out = spawn.Queue()
    p = spawn.Process(target=procs.notify_outsider, args=(key, out))
    p.start()
    r = out.get(timeout=60)
    p.join(timeout=30)
    assert acl.rt.destroy_notify(notify) == 0
    assert acl.rt.reset_device(0) == 0
    assert r["ret"] == DRV
    # The safe API raises for the same refusal, carrying the same code, its name and the call.
    assert r["exception"] == ("AclError", DRV, "ACL_ERROR_RT_DRV_INTERNAL_ERROR", "aclrtNotifyImportByKey")
    assert r["reset"] == 0


def test_refused_arguments_in_one_process():
    assert acl.rt.set_device(0) == 0
    notify, _ = acl.rt.create_notify(0)
    assert acl.rt.notify_get_export_key(notify, 64, 0) == ("", PARAM)  # below the 65 bytes of a key
    assert acl.rt.notify_set_import_pid(notify, [os.getpid()]) == PARAM  # not exported yet
    assert acl.rt.destroy_notify(notify) == 0
    assert acl.rt.destroy_notify(notify) != 0  # a stale handle: refused, not a crash
    # A key no runtime can take (over 64 characters) never reaches it: the ACL's invalid-parameter code.
    assert acl.rt.ipc_mem_import_by_key("k" * 80, 0) == (0, INVALID_PARAM)
    assert acl.rt.notify_import_by_key("", 0) == (0, INVALID_PARAM)
    assert acl.rt.free(0x1234) != 0
    assert acl.rt.set_device(99) == 107001  # ACL_ERROR_RT_INVALID_DEVICEID
    with pytest.raises(TypeError, match="unknown key"):
        acl.rt.malloc_physical(2 << 20, {"memattr": 4}, 0)
    with pytest.raises(TypeError, match="location"):
        acl.rt.malloc_physical(2 << 20, {"location": 0}, 0)
    granularity, ret = acl.rt.mem_get_allocation_granularity(procs.PROP, acl.ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM)
    assert (granularity, ret) == (2 << 20, 0)
    assert acl.rt.malloc_physical(1000, procs.PROP, 0)[1] != 0  # not a multiple of the granularity
    assert acl.rt.reset_device(0) == 0


def test_init_finalize_and_the_host_helpers():
    major, minor, patch, ret = acl.get_version()
    assert ret == 0 and (major, minor) >= (1, 0)
    count, ret = acl.rt.get_device_count()
    assert ret == 0 and count >= 1
    if acl.rt.get_device()[1] != 0:  # no device in this thread yet
        assert acl.rt.malloc_host(4096) == (0, 107002)  # ACL_ERROR_RT_CONTEXT_NULL
    assert acl.rt.set_device(0) == 0
    host, ret = acl.rt.malloc_host(4096)
    assert ret == 0 and host != 0
    src = b"pyACL host buffer"
    assert acl.rt.memcpy(host, 4096, acl.util.bytes_to_ptr(src), len(src), acl.ACL_MEMCPY_HOST_TO_HOST) == 0
    assert acl.util.ptr_to_bytes(host, len(src)) == src
    assert acl.rt.free_host(host) == 0
    assert acl.rt.reset_device(0) == 0
    view = memoryview(bytearray(b"abc"))
    assert acl.util.ptr_to_bytes(acl.util.bytes_to_ptr(view), 3) == b"abc"
    assert acl.util.ptr_to_bytes(0, 0) == b""
    with pytest.raises(ValueError):
        acl.util.ptr_to_bytes(0, 4)
