"""Events and IPC events: pyACL's calls (`acl.rt.*_event*`) in one process and across two, and the safe
API's `aclshm.Event`."""

import os
import subprocess
import sys

import pytest

import aclshm
import aclshm.acl as acl
import procs
from procs import run_pair

DRV = 507899  # ACL_ERROR_RT_DRV_INTERNAL_ERROR
PARAM = 107000  # ACL_ERROR_RT_PARAM_INVALID
INVALID_PARAM = 100000  # ACL_ERROR_INVALID_PARAM
INVALID_HANDLE = 107017  # ACL_ERROR_RT_INVALID_HANDLE
TIMESTAMP_INVALID = 107006  # ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID
FEATURE_NOT_SUPPORT = 207000  # ACL_ERROR_RT_FEATURE_NOT_SUPPORT
NOT_READY, COMPLETE = 0, 1


def test_event_constants_are_the_runtimes():
    assert (acl.ACL_EVENT_SYNC, acl.ACL_EVENT_CAPTURE_STREAM_PROGRESS, acl.ACL_EVENT_TIME_LINE) == (0x1, 0x2, 0x8)
    assert (acl.ACL_EVENT_DEVICE_USE_ONLY, acl.ACL_EVENT_EXTERNAL, acl.ACL_EVENT_IPC) == (0x10, 0x20, 0x40)
    assert (acl.ACL_EVENT_RECORDED_STATUS_NOT_READY, acl.ACL_EVENT_RECORDED_STATUS_COMPLETE) == (NOT_READY, COMPLETE)
    assert aclshm.error_name(TIMESTAMP_INVALID) == "ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID"
    assert aclshm.error_name(INVALID_HANDLE) == "ACL_ERROR_RT_INVALID_HANDLE"


def test_events_in_one_process():
    assert acl.rt.set_device(0) == 0
    stream, ret = acl.rt.create_stream()
    assert ret == 0
    waiter, ret = acl.rt.create_stream()
    assert ret == 0
    start, ret = acl.rt.create_event()
    assert ret == 0 and start != 0
    end, ret = acl.rt.create_event_with_flag(acl.ACL_EVENT_SYNC | acl.ACL_EVENT_TIME_LINE)
    assert ret == 0 and end not in (0, start)
    dev, ret = acl.rt.malloc(4096, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    assert ret == 0

    assert acl.rt.record_event(start, stream) == 0
    data = bytes(range(256)) * 16
    assert acl.rt.memcpy_async(dev, 4096, acl.util.bytes_to_ptr(data), 4096, acl.ACL_MEMCPY_HOST_TO_DEVICE, stream) == 0
    assert acl.rt.record_event(end, stream) == 0
    assert acl.rt.stream_wait_event(waiter, end) == 0  # the waiter goes on once the copy is done
    assert acl.rt.synchronize_stream(waiter) == 0
    assert acl.rt.query_event_status(end) == (COMPLETE, 0)
    assert acl.rt.synchronize_event(end) == 0
    ms, ret = acl.rt.event_elapsed_time(start, end)
    assert ret == 0 and isinstance(ms, float) and ms >= 0
    got = bytearray(4096)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(got), 4096, dev, 4096, acl.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    assert bytes(got) == data

    # An event without ACL_EVENT_TIME_LINE records no time.
    untimed, ret = acl.rt.create_event_with_flag(acl.ACL_EVENT_SYNC)
    assert ret == 0
    assert acl.rt.record_event(untimed, stream) == 0
    assert acl.rt.synchronize_event(untimed) == 0
    assert acl.rt.event_elapsed_time(start, untimed) == (0.0, TIMESTAMP_INVALID)
    # A local event has no IPC handle.
    assert acl.rt.ipc_get_event_handle(end) == (b"", PARAM)

    for e in (start, end, untimed):
        assert acl.rt.destroy_event(e) == 0
    assert acl.rt.destroy_event(end) == INVALID_HANDLE  # stale: refused, not a crash
    assert acl.rt.query_event_status(end) == (0, INVALID_HANDLE)
    assert acl.rt.free(dev) == 0
    assert acl.rt.destroy_stream(stream) == 0
    assert acl.rt.destroy_stream(waiter) == 0
    assert acl.rt.reset_device(0) == 0


def test_refused_event_flags_and_handles():
    assert acl.rt.set_device(0) == 0
    assert acl.rt.create_event_with_flag(0) == (0, PARAM)  # no flag at all
    assert acl.rt.create_event_with_flag(0x100) == (0, PARAM)  # unknown flag
    assert acl.rt.create_event_ex_with_flag(acl.ACL_EVENT_IPC | acl.ACL_EVENT_SYNC) == (0, PARAM)  # IPC alone
    assert acl.rt.create_event_ex_with_flag(acl.ACL_EVENT_DEVICE_USE_ONLY) == (0, PARAM)
    # A handle that is not 64 bytes never reaches the runtime; 64 bytes it did not make, it refuses.
    assert acl.rt.ipc_open_event_handle(b"\x00" * 63) == (0, INVALID_PARAM)
    assert acl.rt.ipc_open_event_handle(b"") == (0, INVALID_PARAM)
    assert acl.rt.ipc_open_event_handle(bytes(64)) == (0, PARAM)
    with pytest.raises(TypeError):
        acl.rt.ipc_open_event_handle("00" * 64)
    assert acl.rt.reset_device(0) == 0


@pytest.mark.parametrize("device", [0, 1])
def test_ipc_event_across_processes(spawn, device):
    a, b = run_pair(spawn, procs.event_creator, (), procs.event_opener, (device,))
    assert a == {
        "stream": 0, "malloc": 0, "memset": 0, "create": 0, "export": 0,
        "handle": ("bytes", 64),
        "export_again_same": True,  # exporting again gives the same handle
        "open_own": DRV,  # the creator cannot open its own event
        "value_wait": 0, "record": 0,
        "status_gated": (NOT_READY, 0),  # the record waits behind the gate
        "b_saw_gated": (NOT_READY, 0),  # ... and the opener sees the same
        "value_write": 0, "sync_other": 0, "sync_event": 0,
        "status_open": (COMPLETE, 0),
        "elapsed": FEATURE_NOT_SUPPORT,  # IPC events record no time
        "destroy": 0, "free": 0, "destroy_streams": (0, 0), "reset": 0,
    }
    assert b == {
        "open_short": INVALID_PARAM, "open": 0,
        "status_gated": (NOT_READY, 0),
        "export_opened": PARAM,
        "sync": 0, "status_open": (COMPLETE, 0),  # the creator's record, completed in the other process
        "record": 0, "stream_wait": 0, "sync_streams": (0, 0), "status_recorded": (COMPLETE, 0),
        "destroy_streams": (0, 0), "destroy": 0, "reset": 0,
    }


SYNC_RELEASES_THE_INTERPRETER = r"""
import threading
import aclshm.acl as acl

assert acl.rt.set_device(0) == 0
stream, _ = acl.rt.create_stream()
other, _ = acl.rt.create_stream()
gate, _ = acl.rt.malloc(64, acl.ACL_MEM_MALLOC_HUGE_FIRST)
assert acl.rt.memset(gate, 64, 0, 64) == 0
event, _ = acl.rt.create_event()
assert acl.rt.value_wait(gate, 1, acl.ACL_STREAM_WAIT_VALUE_GEQ, stream) == 0
assert acl.rt.record_event(event, stream) == 0
rets = []
t = threading.Thread(target=lambda: rets.append(acl.rt.synchronize_event(event)))
t.start()
# This thread needs the interpreter while the other one waits in synchronize_event.
t.join(0.2)
assert t.is_alive() and not rets, "synchronize_event returned before the gate opened"
assert acl.rt.value_write(gate, 1, 0, other) == 0
assert acl.rt.synchronize_stream(other) == 0
t.join(30)
assert rets == [0], rets
assert acl.rt.query_event_status(event) == (1, 0)
assert acl.rt.destroy_event(event) == 0
assert acl.rt.free(gate) == 0
assert acl.rt.destroy_stream(stream) == 0 and acl.rt.destroy_stream(other) == 0
assert acl.rt.reset_device(0) == 0
print("ok")
"""


def test_synchronize_event_releases_the_interpreter():
    # In a process of its own: were the interpreter held, it would hang (ended by the timeout), not pytest.
    r = subprocess.run([sys.executable, "-c", SYNC_RELEASES_THE_INTERPRETER], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "ok"


# ---- the safe API ----


def test_event_class_in_one_process():
    with aclshm.Stream(0) as s, aclshm.Stream(0) as waiter, aclshm.Event(0) as a, aclshm.Event(0) as b:
        assert (a.device, a.is_ipc) == (0, False)
        assert a.handle != 0 and a.handle != b.handle
        a.record(s)
        b.record(s)
        b.wait(waiter)
        waiter.synchronize()
        assert b.is_complete()
        b.synchronize()
        assert a.elapsed_ms(b) >= 0
        assert a.elapsed_ms(a) == 0
        a.signal()  # a record from the host, waited for
        assert a.wait_host(1.0) is True
        with pytest.raises(aclshm.NotPermittedError):
            a.export()  # only an IPC event is exported
        with pytest.raises(aclshm.InvalidArgumentError):
            a.wait_host(-1)
        assert "local" in repr(a)
    # Closed by the `with`: a closed event raises, and closing again does nothing.
    with pytest.raises(aclshm.ClosedError):
        a.is_complete()
    a.close()
    assert "closed" in repr(a)


def test_ipc_event_class_across_processes(spawn):
    with aclshm.Event.ipc(0) as e:
        assert e.is_ipc
        handle = e.export()
        assert isinstance(handle, bytes) and len(handle) == 64
        assert e.export() == handle
        # The creator cannot open its own event; a handle of the wrong size is refused before the runtime.
        with pytest.raises(aclshm.AclError) as refused:
            aclshm.Event.open(handle, 0)
        assert (refused.value.code, refused.value.call) == (DRV, "aclrtIpcOpenEventHandle")
        with pytest.raises(aclshm.InvalidArgumentError):
            aclshm.Event.open(handle[:10], 0)
        with pytest.raises(aclshm.InvalidArgumentError):
            aclshm.Event.open("zz" * 64, 0)
        with pytest.raises(aclshm.NotPermittedError):
            e.elapsed_ms(e)  # IPC events record no time
        out = spawn.Queue()
        p = spawn.Process(target=procs.event_open_high_level, args=(handle, 1, out))
        p.start()
        r = out.get(timeout=60)
        p.join(timeout=30)
        assert p.exitcode == 0
        assert r == {"ipc": True, "device": 1, "export": "NotPermittedError", "complete": True,
                     "closed": "ClosedError"}
        # The other process's record (its signal) completed, and the event is complete here too.
        assert e.is_complete()
        assert e.wait_host(1.0)
    assert aclshm.simulator_stats().get("ipc_events", 0) == 0
