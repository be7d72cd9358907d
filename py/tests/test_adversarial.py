"""Extreme sizes, counts and values through every entry point of the Python package: each one is a typed
exception (an ``aclshm.Error``, or the ``TypeError`` / ``OverflowError`` / ``ValueError`` Python raises
for a value no argument of its type can hold), promptly, changing nothing; never a crash, a hang or an
abort. The Rust and command-line suites cover the same ground for their entry points (docs/security.md).
"""

import os

import pytest

import aclshm
from aclshm import acl

MIB = 1 << 20
U64 = (1 << 64) - 1

#: What "refused" may be: the package's own errors, or Python's for a value its argument cannot hold.
REFUSED = (aclshm.Error, TypeError, OverflowError, ValueError)

TRIED = []


def attack(name, call, refused=REFUSED):
    """Run `call`: it must raise one of `refused`. Counted for the report at the end of the module."""
    TRIED.append(name)
    with pytest.raises(refused):
        call()


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\npython adversarial: {len(TRIED)} attacks tried, {len(TRIED)} held")


@pytest.fixture
def pool():
    aclshm.set_device(0)
    p = aclshm.Pool(0, chunk_bytes="2M", reserve_bytes="32M")
    yield p
    p.close()


def unchanged(pool, call):
    """`call` is refused and the pool maps and allocates what it did before."""
    before = (pool.stats()["chunks"], pool.stats()["allocated_bytes"])
    call()
    assert (pool.stats()["chunks"], pool.stats()["allocated_bytes"]) == before


@pytest.mark.parametrize("size", [U64, U64 - 511, 1 << 63, 33 * MIB, "16777215T", -1, 0, 1 << 64, 2**200, "lots", 1.5, None])
def test_extreme_allocation_sizes(pool, size):
    unchanged(pool, lambda: attack(f"Pool.alloc({size!r})", lambda: pool.alloc(size)))


@pytest.mark.parametrize("align", [0, 3, 1 << 63, U64, -4096, 4 * MIB])
def test_extreme_alignments(pool, align):
    unchanged(pool, lambda: attack(f"Pool.alloc(4096, align={align})", lambda: pool.alloc(4096, align)))


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_bytes": U64},
        {"chunk_bytes": 0},
        {"chunk_bytes": "3M"},
        {"reserve_bytes": U64},
        {"reserve_chunks": 1 << 32},
        {"reserve_chunks": -1},
        {"trim_watermark": -1},
        {"page": "huge"},
        {"chunk_bytes": 2**70},
    ],
)
def test_extreme_pool_configurations(kw):
    attack(f"Pool({kw})", lambda: aclshm.Pool(0, **kw))


@pytest.mark.parametrize("device", [-1, 64, 2**31 - 1, 2**31, -(2**31) - 1, 2**64])
def test_devices_that_are_not_there(device):
    attack(f"Pool(device={device})", lambda: aclshm.Pool(device, chunk_bytes="2M", reserve_bytes="8M"))
    attack(f"Stream({device})", lambda: aclshm.Stream(device))
    attack(f"Notify({device})", lambda: aclshm.Notify(device))


def test_extreme_copies(pool):
    a = pool.alloc(MIB)
    for name, call in [
        ("read past the end", lambda: a.read(MIB + 1)),
        ("read at an offset past the end", lambda: a.read(1, MIB)),
        ("read at offset 2**64-1", lambda: a.read(1, U64)),
        ("read a negative size", lambda: a.read(-1)),
        ("write past the end", lambda: a.write(b"x" * 16, MIB - 8)),
        ("write at a negative offset", lambda: a.write(b"x", -1)),
        ("readinto past the end", lambda: a.readinto(bytearray(16), MIB - 8)),
    ]:
        attack(name, call)
    a.free()
    attack("read a freed allocation", lambda: a.read(1))
    attack("free it twice", a.free)


def test_extreme_kv_counts_and_references():
    aclshm.set_device(0)
    with aclshm.KvPool("256K", 0, chunk_bytes="2M", reserve_bytes="16M") as kv:
        for n in [2**63, 10**9, U64, -1, 65]:
            attack(f"KvPool.alloc_many({n})", lambda: kv.alloc_many(n))
        assert kv.stats()["allocated"] == 0 and kv.stats()["pool"]["chunks"] == 0
        b = kv.alloc()
        attack("free one block a million times", lambda: kv.free([b] * 1_000_000))
        for text in ["", "zz:1:1", f"{b.pool:016x}:{2**32}:1", f"{b.pool:016x}:{b.id}:{b.generation + 1}", "1:1:1:1"]:
            attack(f"KvBlock.parse({text!r}) then use", lambda: kv.ptr(aclshm.KvBlock.parse(text)))
        attack("wait_unpinned(-1)", lambda: kv.wait_unpinned(-1))
        attack("wait_unpinned(nan)", lambda: kv.wait_unpinned(float("nan")))
        attack("wait_unpinned(1e30)", lambda: kv.wait_unpinned(1e30))
        # The longest bound a timeout can have: with nothing pinned, answered at once.
        assert kv.wait_unpinned(1.8e19) is True
        kv.free([b])
    for block in [0, 1, U64, "9G", -512]:
        attack(f"KvPool(block_bytes={block!r})", lambda: aclshm.KvPool(block, 0, chunk_bytes="2M", reserve_bytes="8M"))


def test_descriptors_and_keys_that_are_not():
    for text in ["", "aclshm-share:1:", "aclshm-share:1:0:/x", "aclshm-share:1:ab:" + "x" * 5000, "\x00"]:
        attack(f"Mirror({text[:30]!r})", lambda: aclshm.Mirror(text, 0))
        attack(f"KvMirror({text[:30]!r})", lambda: aclshm.KvMirror(text, 0))
    attack("Mirror of a socket that is not there", lambda: aclshm.Mirror("aclshm-share:1:ab:/nonexistent/x.sock", 0))
    for key in ["", "x" * 65, "\x00" * 3, "é" * 40]:
        attack(f"Notify.import_key({key[:10]!r})", lambda: aclshm.Notify.import_key(key, 0))


def test_pyacl_calls_with_extreme_values_return_codes_not_crashes():
    # pyACL reports failures as a status code, not an exception: every call returns one.
    aclshm.set_device(0)
    for size in [0, U64, 1 << 63]:
        ptr, ret = acl.rt.malloc(size, 0)
        TRIED.append(f"acl.rt.malloc({size})")
        assert ret != 0 and ptr == 0
    for size in [U64, 1 << 63]:
        ret = acl.rt.memset(0, size, 0, size)
        TRIED.append(f"acl.rt.memset(NULL, {size})")
        assert ret != 0
    addr, ret = acl.rt.reserve_mem_address(U64, 0, 0, 0)
    TRIED.append("acl.rt.reserve_mem_address(2**64-1)")
    assert ret != 0 and addr == 0


def test_nothing_is_left_in_the_share_directory():
    share = os.environ["ACLSHM_SHARE_DIR"]
    left = [f for f in os.listdir(share)] if os.path.isdir(share) else []
    assert left == [], left
