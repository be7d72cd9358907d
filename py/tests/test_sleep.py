"""Sleep mode (vLLM's): tagged allocations, `sleep(offload_tags)` giving the device memory back and keeping
what is offloaded in host memory, `wake_up(tags)` at the same addresses, the `sleeping()` context manager,
KV pools, and workers in other processes while their owner's pool sleeps."""

import os

import pytest

import aclshm
import aclshm.acl as acl
import procs

MB = 1 << 20


@pytest.fixture
def device0():
    """Device 0 current (for `acl.rt` calls), reset afterwards."""
    assert acl.rt.set_device(0) == 0
    yield
    assert acl.rt.reset_device(0) == 0


def free_device_bytes():
    free, _, ret = acl.rt.get_mem_info(acl.ACL_HBM_MEM)
    assert ret == 0
    return free


def read_at(ptr, n):
    """`n` bytes of device memory at `ptr`, copied with `acl.rt.memcpy` (the address, not the object)."""
    buf = bytearray(n)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(buf), n, ptr, n, acl.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    return bytes(buf)


def test_sleep_offloads_weights_gives_memory_back_and_wakes_at_the_same_address(device0):
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        weights = pool.alloc("2M", tag="weights")  # chunk 0
        other = pool.alloc("1M")  # chunk 1 (tag "default")
        spare = pool.alloc("2M")  # reaches into chunk 2, which is free once it goes
        spare.free()
        assert (weights.tag, other.tag) == ("weights", "default")
        w_data, o_data = os.urandom(weights.size), os.urandom(other.size)
        weights.write(w_data)
        other.write(o_data)
        w_ptr = weights.ptr
        before = pool.stats()
        assert before["mapped_bytes"] == 6 * MB and before["free_chunks"] == 1
        assert (before["sleeping_chunks"], before["host_bytes"]) == (0, 0)
        free_awake = free_device_bytes()

        report = pool.sleep(offload_tags=("weights",))
        assert report == {"slept_chunks": 2, "trimmed_chunks": 1, "released_bytes": 6 * MB,
                          "kept_bytes": weights.size}
        assert pool.is_asleep
        s = pool.stats()
        assert s["mapped_bytes"] == 0 and s["host_bytes"] == weights.size and s["sleeping_chunks"] == 2
        assert s["live_allocations"] == 2  # allocations stay
        free_asleep = free_device_bytes()
        assert free_asleep - free_awake == before["mapped_bytes"]
        # Nothing is allocated, nothing copied, and no second sleep while asleep.
        for call in (lambda: pool.alloc(512), lambda: pool.alloc(512, tag="weights"), lambda: weights.read(16),
                     lambda: other.write(b"x"), lambda: pool.sleep()):
            with pytest.raises(aclshm.AsleepError) as info:
                call()
            assert info.value.kind == "Asleep" and isinstance(info.value, aclshm.Error)
        assert weights.ptr == w_ptr and weights.is_live

        # Wake the weights only (vLLM: load weights first): their chunk maps again, with their bytes.
        pool.wake_up(tags=["weights"])
        assert pool.is_asleep  # the default chunk still sleeps
        s = pool.stats()
        assert s["sleeping_chunks"] == 1 and s["mapped_bytes"] == 2 * MB
        assert free_asleep - free_device_bytes() == 2 * MB
        assert weights.ptr == w_ptr and read_at(w_ptr, weights.size) == w_data
        assert weights.read(64, offset=4096) == w_data[4096:4160]
        with pytest.raises(aclshm.AsleepError):
            other.read(16)
        with pytest.raises(aclshm.AsleepError):
            pool.alloc(512)
        with pytest.raises(aclshm.AsleepError, match="asleep already"):
            pool.sleep()  # refused: what woke stays awake
        assert weights.read(16) == w_data[:16]

        pool.wake_up()  # the rest
        assert not pool.is_asleep
        s = pool.stats()
        assert (s["sleeping_chunks"], s["host_bytes"], s["mapped_bytes"]) == (0, 0, 4 * MB)
        # The default allocation's bytes were discarded: it is usable again, its contents undefined.
        other.write(o_data[:100])
        assert other.read(100) == o_data[:100]
        assert read_at(w_ptr, weights.size) == w_data
        more = pool.alloc(512, tag="weights")
        assert more.tag == "weights"
        pool.wake_up()  # awake already: nothing to do
        for a in (weights, other, more):
            a.free()


def test_tags_and_their_arguments():
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        a = pool.alloc(1000, 512, tag="weights")
        assert a.size == 1024 and a.tag == "weights" and "weights" in repr(a)
        b = pool.alloc(4096, align=1 << 20, tag="default")
        assert b.offset % (1 << 20) == 0 and b.tag == "default"
        with pytest.raises(aclshm.InvalidArgumentError, match="tagged allocations"):
            pool.alloc(4096, align=1 << 20, tag="weights")
        a.write(b"kept")
        # One tag as a str is that tag (not its letters).
        assert pool.sleep("weights")["kept_bytes"] == a.size
        assert "asleep" in repr(pool)
        pool.wake_up("weights")
        assert not pool.is_asleep and a.read(4) == b"kept"  # b's chunk is a's: woken with it
        assert pool.sleep(offload_tags=None, release_timeout=1.5)["kept_bytes"] == 0
        pool.wake_up()
        with pytest.raises(aclshm.InvalidArgumentError):
            pool.sleep(release_timeout=-1)
        assert not pool.is_asleep
        a.free()
        b.free()


def test_sleeping_wakes_when_the_block_ends_or_raises():
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        w = pool.alloc(4096, tag="weights")
        data = os.urandom(4096)
        w.write(data)
        ctx = pool.sleeping(offload_tags=("weights",))
        assert isinstance(ctx, aclshm.Sleeping)
        with ctx as report:
            assert pool.is_asleep and report["kept_bytes"] == 4096
            assert pool.stats()["mapped_bytes"] == 0
        assert not pool.is_asleep and w.read() == data
        with pytest.raises(RuntimeError, match="boom"):
            with pool.sleeping(("weights",)):
                assert pool.is_asleep
                raise RuntimeError("boom")
        assert not pool.is_asleep and w.read() == data and pool.stats()["host_bytes"] == 0
        # A pool asleep already: entering raises, and the pool stays asleep (it was not this block's sleep).
        pool.sleep(("weights",))
        with pytest.raises(aclshm.AsleepError):
            with pool.sleeping():
                pytest.fail("the block ran")
        assert pool.is_asleep
        pool.wake_up()
        assert w.read() == data
        w.free()


def test_a_kv_pool_sleeps_keeping_or_discarding_its_blocks():
    with aclshm.KvPool(16384, 0, chunk_bytes="2M") as kv:
        blocks = kv.alloc_many(4)
        data = [os.urandom(16384) for _ in blocks]
        for b, d in zip(blocks, data):
            kv.write(b, d)
        ptrs = [kv.ptr(b) for b in blocks]
        r = kv.sleep(discard_kv=False)
        assert r == {"slept_chunks": 1, "trimmed_chunks": 0, "released_bytes": 2 * MB, "kept_bytes": 4 * 16384}
        assert kv.is_asleep and "asleep" in repr(kv)
        s = kv.stats()
        assert s["allocated"] == 4 and s["pool"]["mapped_bytes"] == 0
        assert (s["pool"]["host_bytes"], s["pool"]["sleeping_chunks"]) == (4 * 16384, 1)
        with pytest.raises(aclshm.AsleepError):
            kv.alloc()
        with pytest.raises(aclshm.AsleepError):
            kv.read(blocks[0], 16)
        assert [kv.ptr(b) for b in blocks] == ptrs  # the scheduler's addresses stay
        kv.free(blocks[3])  # frees are allowed while asleep
        kv.wake_up()
        assert not kv.is_asleep and kv.stats()["pool"]["host_bytes"] == 0
        assert [kv.read(b) for b in blocks[:3]] == data[:3]
        with pytest.raises(RuntimeError, match="boom"):
            with kv.sleeping() as r:  # discard_kv=True: nothing kept
                assert r["kept_bytes"] == 0 and kv.is_asleep and kv.stats()["pool"]["host_bytes"] == 0
                raise RuntimeError("boom")
        assert not kv.is_asleep and kv.stats()["pool"]["mapped_bytes"] == 2 * MB
        kv.write(blocks[0], b"after")  # the blocks stay allocated, their bytes undefined
        assert kv.read(blocks[0], 5) == b"after"
        kv.free(kv.alloc())
        kv.free(blocks[:3])


def run_sleep_worker(spawn, kind, desc, ref, n, seed, sleep, wake):
    """Start `procs.sleep_worker`; put the pool to sleep (`sleep()`, its report returned) once it read the
    pattern, wake it (`wake()`) once it checked its refusals; return what the worker saw."""
    cmds, acks, out = spawn.Queue(), spawn.Queue(), spawn.Queue()
    p = spawn.Process(target=procs.sleep_worker, args=(kind, desc, ref, n, seed, cmds, acks, out))
    p.start()
    try:
        assert acks.get(timeout=60) == "attached"
        report = sleep()
        cmds.put("asleep")
        assert acks.get(timeout=60) == "checked"
        wake()
        cmds.put("awake")
        r = out.get(timeout=60)
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0
    return report, r


def assert_worker_saw_the_sleep(r, n_chunks):
    assert (r["awake_ret"], r["awake_ok"]) == (0, True)
    assert r["ptr_asleep"] == ("AsleepError", "Asleep") and r["read_asleep"] == ("AsleepError", "Asleep")
    assert r["chunks_asleep"] == 0  # unmapped in the worker too
    assert r["same_ptr"] and (r["woken_ret"], r["woken_ok"]) == (0, True)
    assert r["chunks_awake"] == n_chunks and r["reset"] == 0


def test_a_kv_workers_blocks_sleep_and_wake_at_the_same_address(spawn):
    with aclshm.KvPool(16384, 0, chunk_bytes="2M") as kv:
        b = kv.alloc()
        kv.write(b, procs.pattern(16384, 11))

        def sleep():
            report = kv.sleep(discard_kv=False)
            s = kv.stats()["pool"]
            assert (s["mapped_bytes"], s["host_bytes"]) == (0, 16384)
            return report

        report, r = run_sleep_worker(spawn, "kv", kv.desc, b, 16384, 11, sleep, kv.wake_up)
        assert report["kept_bytes"] == 16384 and report["slept_chunks"] == 1
        assert_worker_saw_the_sleep(r, 1)
        assert r["pinned_read_asleep"] == ("AsleepError", "Asleep") and r["pin_asleep"] == ("AsleepError", "Asleep")
        assert r["pins_kept"] == 1 and r["pinned_read_woken"]
        assert kv.pins(b) == 0  # released
        assert kv.read(b, 15) == b"worker was here"
        assert kv.read(b, 100, offset=15) == procs.pattern(16384, 11)[15:115]
        kv.free(b)


def test_a_mirrors_allocation_sleeps_and_wakes_with_its_tag(spawn):
    with aclshm.Pool(0, chunk_bytes="2M") as pool:
        desc = pool.share()
        w = pool.alloc(8192, tag="weights")
        w.write(procs.pattern(8192, 12))
        report, r = run_sleep_worker(spawn, "pool", desc, w.descriptor(), 8192, 12,
                                     lambda: pool.sleep(offload_tags="weights"),
                                     lambda: pool.wake_up(tags=("weights",)))
        assert report["kept_bytes"] == 8192
        assert_worker_saw_the_sleep(r, 1)
        assert not pool.is_asleep and pool.stats()["share"]["chunks"] == 1
        assert w.read(15) == b"worker was here"
        w.free()


def test_asleep_error_is_mapped():
    with pytest.raises(aclshm.AsleepError) as info:
        aclshm._aclshm._error_for_test("Asleep", "wake it first")
    assert str(info.value) == "the pool is asleep: wake it first" and info.value.kind == "Asleep"
    assert issubclass(aclshm.AsleepError, aclshm.Error) and "AsleepError" in aclshm.errors.__all__
