"""The safe API: pools, allocations and their copies, mirrors in other processes, KV blocks with pins,
notifies, and the exceptions mapped from the Rust error enum."""

import builtins
import errno
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest

import aclshm
from aclshm import _aclshm
import procs

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")

EXPECTED_CLASSES = {
    "Acl": "AclError", "Unsupported": "UnsupportedError", "Backend": "BackendError",
    "Io": "IoError",
    "InvalidArgument": "InvalidArgumentError", "Misaligned": "MisalignedError",
    "OutOfMemory": "OutOfMemoryError", "NotAllocated": "NotAllocatedError", "WrongPool": "WrongPoolError",
    "NotPermitted": "NotPermittedError", "Protocol": "ProtocolError", "Refused": "RefusedError",
    "BadDescriptor": "BadDescriptorError", "StaleDescriptor": "StaleDescriptorError",
    "Timeout": "TimeoutError", "StaleBlock": "StaleBlockError", "NotPinned": "NotPinnedError",
    "NotShared": "NotSharedError", "Closed": "ClosedError", "Deferred": "DeferredError",
    "Asleep": "AsleepError",
}


def test_every_error_variant_has_its_exception():
    assert set(_aclshm._ERROR_KINDS) == set(EXPECTED_CLASSES)
    for kind, cls in EXPECTED_CLASSES.items():
        if kind == "OutOfMemory":
            continue  # raised for real below
        with pytest.raises(aclshm.Error) as info:
            _aclshm._error_for_test(kind, "what happened")
        e = info.value
        assert type(e).__name__ == cls and type(e) is getattr(aclshm, cls), kind
        assert e.kind == kind
    with pytest.raises(aclshm.AclError) as info:
        _aclshm._error_for_test("Acl", "")
    e = info.value
    assert (e.code, e.name, e.call) == (507899, "ACL_ERROR_RT_DRV_INTERNAL_ERROR", "aclrtMapMem")
    assert str(e) == "aclrtMapMem failed: ACL_ERROR_RT_DRV_INTERNAL_ERROR (507899)"
    with pytest.raises(aclshm.DeferredError) as info:
        _aclshm._error_for_test("Deferred", "importers did not close")
    e = info.value
    assert [type(x).__name__ for x in e.errors] == ["AclError", "TimeoutError"]
    assert (e.code, e.name) == (107017, "ACL_ERROR_RT_INVALID_HANDLE")
    with pytest.raises(aclshm.StaleBlockError) as info:
        _aclshm._error_for_test("StaleBlock", "")
    assert (info.value.id, info.value.generation, info.value.code) == (7, 3, None)
    with pytest.raises(aclshm.MisalignedError) as info:
        _aclshm._error_for_test("Misaligned", "")
    assert (info.value.what, info.value.value, info.value.align) == ("size", 3, 512)
    with pytest.raises(aclshm.IoError) as info:
        _aclshm._error_for_test("Io", "create /dev/shm/x")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    # Refinements of builtins.
    assert issubclass(aclshm.InvalidArgumentError, ValueError)
    assert issubclass(aclshm.MisalignedError, aclshm.InvalidArgumentError)
    assert issubclass(aclshm.TimeoutError, builtins.TimeoutError)
    assert issubclass(aclshm.NotPermittedError, PermissionError)
    assert issubclass(aclshm.OutOfMemoryError, MemoryError)


def test_pool_allocations_copy_in_and_out():
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        a = pool.alloc(1000)
        assert (a.offset, a.size, len(a)) == (0, 1024, 1024) and a.ptr == pool.base and a.is_live
        data = bytes(range(256)) * 4
        a.write(data)
        assert a.read() == data
        assert a.read(10, offset=5) == data[5:15]
        buf = bytearray(100)
        assert a.readinto(buf, offset=24) == 100 and bytes(buf) == data[24:124]
        a.write(memoryview(b"xyz"), offset=1021)
        assert a.read(3, offset=1021) == b"xyz"
        with pytest.raises(ValueError, match="do not fit"):
            a.write(b"four", offset=1021)
        with pytest.raises(ValueError, match="do not fit"):
            a.read(2, offset=1023)
        with pytest.raises(BufferError, match="read-only"):
            a.readinto(b"immutable")
        b = pool.alloc("1M", align=1 << 20)
        assert b.offset % (1 << 20) == 0
        s = pool.stats()
        assert s["live_allocations"] == 2 and s["mapped_bytes"] >= 2 << 20 and s["runtime_calls"]
        pool.free(a)
        assert not a.is_live
        with pytest.raises(aclshm.NotAllocatedError) as info:
            a.read(1)
        assert (info.value.offset, info.value.len) == (0, 1024)
        with pytest.raises(aclshm.NotAllocatedError):
            pool.free(a)
        with pytest.raises(aclshm.NotSharedError):
            b.descriptor()
        b.free()
        assert pool.trim() >= 1
        with aclshm.Pool(0, chunk_bytes="2M") as other:
            c = other.alloc(512)
            with pytest.raises(aclshm.WrongPoolError):
                pool.free(c)
    assert not pool.is_open
    with pytest.raises(aclshm.ClosedError):
        pool.alloc(1)
    with pytest.raises(aclshm.ClosedError):
        c.read(1)
    pool.close()  # twice: nothing


def test_a_thread_cache_hands_a_freed_allocation_back_to_its_thread():
    with aclshm.Pool(0, chunk_bytes="2M", thread_cache=True) as pool:
        a = pool.alloc(4096)
        offset = a.offset
        pool.free(a)
        s = pool.stats()
        assert (s["cached_bytes"], s["live_allocations"], s["allocated_bytes"]) == (4096, 0, 0)
        with pytest.raises(aclshm.NotAllocatedError):
            pool.free(a)
        b = pool.alloc(4096)
        assert b.offset == offset and b.is_live and not a.is_live
        assert pool.stats()["cached_bytes"] == 0
        b.free()
    with aclshm.Pool(0, chunk_bytes="2M") as plain:
        plain.free(plain.alloc(4096))
        assert plain.stats()["cached_bytes"] == 0


def test_bad_configurations_are_typed_errors():
    with pytest.raises(aclshm.MisalignedError):
        aclshm.Pool(0, chunk_bytes=3 << 20)
    with pytest.raises(aclshm.InvalidArgumentError, match="chunk_bytes"):
        aclshm.Pool(0, chunk_bytes="lots")
    with pytest.raises(aclshm.InvalidArgumentError, match="page"):
        aclshm.Pool(0, page="4K")
    with pytest.raises(aclshm.AclError) as info:
        aclshm.Pool(57)
    assert info.value.name == "ACL_ERROR_RT_INVALID_DEVICEID"
    with pytest.raises(aclshm.InvalidArgumentError, match="block_bytes"):
        aclshm.KvPool()


def test_out_of_memory_is_a_memory_error():
    with aclshm.Pool(0, chunk_bytes="2M", reserve_bytes="8M") as pool:
        with pytest.raises(aclshm.OutOfMemoryError) as info:
            pool.alloc("16M")
        assert isinstance(info.value, MemoryError) and info.value.requested >= 16 << 20


def test_a_shared_pool_is_read_and_written_by_a_mirror_in_another_process(spawn):
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        desc = pool.share()
        assert desc.startswith("aclshm-share:1:")
        a = pool.alloc(4096)
        a.write(procs.pattern(4096, 9))
        d = pool.descriptor(a)
        descs, out = spawn.Queue(), spawn.Queue()
        p = spawn.Process(target=procs.mirror_worker, args=(desc, 1, descs, out))
        p.start()
        descs.put((d, 4096, 9))
        r = out.get(timeout=60)
        p.join(timeout=30)
        assert p.exitcode == 0
        assert r["read_ok"] and r["readinto"] and r["ptr_in_range"]
        assert r["bad_desc"] == "BadDescriptorError" and r["out_of_bounds"] == "ValueError"
        assert r["stats"]["chunks"] == 1 and r["stats"]["imports"] == 1
        assert r["closed"] == "ClosedError"
        assert a.read(21, offset=1024) == b"reply from the worker"
        assert pool.stats()["share"]["chunks"] == 1
        a.free()


def test_a_mirror_in_the_owning_process_is_refused():
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        a = pool.alloc(100)
        desc = pool.share()
        with pytest.raises(aclshm.NotPermittedError, match="export and import must be in different processes"):
            aclshm.Mirror(desc, 0)
        a.free()
    with pytest.raises(aclshm.BadDescriptorError):
        aclshm.Mirror("aclshm-share:1:nothex:/x", 0)


def test_kv_blocks_are_values():
    with aclshm.KvPool(aclshm.kv_block_bytes(layers=2, kv_heads=2, head_dim=64, dtype_bytes=2, block_tokens=16),
                       0, chunk_bytes="2M") as kv:
        assert kv.block_bytes == 16384 and kv.desc.startswith("aclshm-kv:1:")
        b = kv.alloc()
        assert pickle.loads(pickle.dumps(b)) == b
        assert aclshm.KvBlock.parse(str(b)) == b and hash(aclshm.KvBlock.parse(str(b))) == hash(b)
        assert b.generation % 2 == 1
        kv.write(b, b"block data")
        assert kv.read(b, 10) == b"block data"
        kv.free(b)
        with pytest.raises(aclshm.StaleBlockError):
            kv.read(b)
        with pytest.raises(aclshm.StaleBlockError):
            kv.free(b)
        with pytest.raises(aclshm.BadDescriptorError):
            aclshm.KvBlock.parse("not a block")
        many = kv.alloc_many(4)
        assert len(set(many)) == 4 and kv.stats()["allocated"] == 4
        kv.free(many)
        assert kv.stats()["allocated"] == 0


def test_a_kv_workers_refusals(spawn):
    with aclshm.KvPool(16384, 0, chunk_bytes="2M") as kv:
        live, freed = kv.alloc_many(2)
        kv.write(live, b"hello")
        kv.free(freed)
        out = spawn.Queue()
        p = spawn.Process(target=procs.kv_worker_errors, args=(kv.desc, live, freed, out))
        p.start()
        r = out.get(timeout=60)
        p.join(timeout=30)
        assert p.exitcode == 0
        assert r["not_pinned"] == ("NotPinnedError", True)
        assert (r["pins_nested"], r["pins_after"]) == (2, 0)
        assert r["pin_freed"] == ("StaleBlockError", freed.id, freed.generation)
        assert r["read_freed"] == ("StaleBlockError", freed.id, freed.generation)
        assert r["read_live"] == b"hello"
        kv.free(live)


def test_a_free_does_not_wait_for_a_wait_unpinned_in_another_thread(spawn):
    # A worker pins a block the scheduler frees (kept for the pin); one thread waits for the pin to go
    # while another frees other blocks: the free runs meanwhile (it used to wait for the whole wait), and
    # only after it has does the worker unpin, which ends the wait.
    with aclshm.KvPool(16384, 0, chunk_bytes="2M") as kv:
        pinned, other = kv.alloc_many(2)
        cmds, acks, out = spawn.Queue(), spawn.Queue(), spawn.Queue()
        p = spawn.Process(target=procs.kv_pinner, args=(kv.desc, pinned, cmds, acks, out))
        p.start()
        assert acks.get(timeout=60) == "pinned"
        kv.free(pinned)
        assert kv.stats()["deferred"] == 1
        waited = []
        t = threading.Thread(target=lambda: waited.append(kv.wait_unpinned(20)))
        t.start()
        time.sleep(0.2)  # into its wait (the free then conflicts with it; before, it would not)
        kv.free(other)
        freed_while_waiting = t.is_alive()
        cmds.put("unpin")
        t.join(timeout=60)
        assert out.get(timeout=60) == "done"
        p.join(timeout=30)
        assert p.exitcode == 0
        assert freed_while_waiting, "the free waited for the wait to end"
        assert waited == [True]
        assert kv.stats()["deferred"] == 0


def test_the_kv_serving_example_verifies_data_across_processes():
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "kv_serving.py")], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8/8 blocks hold what prefill wrote" in r.stdout
    assert "8/8 pinned blocks verified" in r.stdout
    assert r.stdout.rstrip().endswith("result: ok")


def test_notify_across_processes(spawn):
    with aclshm.Notify(0) as n:
        assert n.is_creator
        key = n.export()
        assert n.export() == key  # one key per notify
        with pytest.raises(aclshm.NotPermittedError):
            n.export(validate_pids=False)
        assert n.wait_host(1) is False  # nobody recorded: the time passes
        pids, keys, out = spawn.Queue(), spawn.Queue(), spawn.Queue()
        p = spawn.Process(target=procs.notify_importer, args=(1, pids, keys, out))
        p.start()
        n.allow(pids.get(timeout=30))
        keys.put(key)
        assert n.wait_host(30) is True
        r = out.get(timeout=60)
        p.join(timeout=30)
        assert p.exitcode == 0
        assert r == {"creator": False, "wait": "NotPermittedError"}  # an importer records, never waits
    with pytest.raises(aclshm.ClosedError):
        n.signal()
    with pytest.raises(aclshm.InvalidArgumentError):
        aclshm.Notify.import_key("x" * 70)


def test_streams():
    with aclshm.Stream(0) as s:
        assert s.device == 0 and s.handle != 0
        s.synchronize()
    with pytest.raises(aclshm.ClosedError):
        s.synchronize()
