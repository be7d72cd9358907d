"""KV blocks between two simulated nodes through Mooncake (Transfer Engine and Store), staged through
registered page-locked host memory. Each node is a process with a simulator directory of its own, so the
nodes share nothing but TCP on 127.0.0.1.

Skipped where Mooncake is not installed, except when ``ACLSHM_REQUIRE_MOONCAKE=1`` (CI sets it): then a
missing Mooncake fails."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest

try:
    import mooncake.engine  # noqa: F401

    HAVE = True
except ImportError:
    HAVE = False

if not HAVE and os.environ.get("ACLSHM_REQUIRE_MOONCAKE") != "1":
    pytest.skip("Mooncake is not installed (pip install './py[mooncake]')", allow_module_level=True)

NODE = os.path.join(os.path.dirname(__file__), "mc_node.py")


class Node:
    """A node process with its own simulator and share directories."""

    def __init__(self, role, n):
        base = f"/dev/shm/aclshm-pytest-node-{os.getpid()}-{secrets.token_hex(3)}"
        self.dirs = (base, base + "-share")
        env = {**os.environ, "ACLSHM_SIM_DIR": base, "ACLSHM_SHARE_DIR": base + "-share", "GLOG_minloglevel": "2"}
        self.p = subprocess.Popen(
            [sys.executable, NODE, role, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, **kv):
        self.p.stdin.write(json.dumps(kv) + "\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        assert line, f"the node ended: {self.p.stderr.read()[-2000:]}"
        return json.loads(line)

    def finish(self):
        left = self.recv()["left"]
        assert self.p.wait(timeout=60) == 0, self.p.stderr.read()[-2000:]
        assert left == {}, f"left in the node's simulator: {left}"
        # The node's simulator directory went with its last process; its share directory is empty.
        assert not os.path.exists(self.dirs[0])
        share = self.dirs[1]
        assert not os.path.isdir(share) or os.listdir(share) == []
        shutil.rmtree(share, ignore_errors=True)


def test_kv_blocks_move_between_two_simulated_nodes_both_ways():
    n = 32
    prefill, decode = Node("prefill", n), Node("decode", n)
    offer = prefill.recv()
    assert offer["mode"] == "staged" and offer["registrations"] == 1, offer
    decode.send(**offer)
    got = decode.recv()
    assert got["ok"], "every byte pulled verifies"
    assert got["bytes"] == n * (256 << 10)
    assert got["registrations"] == 1, "one registered buffer, not one per block"
    assert got["errors"] == {
        "unknown_peer": "TransferError",
        "stale_block": "StaleBlockError",
        "other_pool_block": "BadDescriptorError",
    }, got
    prefill.send(pulled=True)
    decode.send(**prefill.recv())
    assert decode.recv()["pushed"]
    prefill.send(pushed=True)
    assert prefill.recv()["ok"], "every byte pushed verifies"
    prefill.finish()
    decode.finish()


def test_trimming_the_pool_during_transfers_never_touches_them():
    n = 32
    prefill, decode = Node("prefill", n), Node("decode-trim", n)
    decode.send(**prefill.recv())
    got = decode.recv()
    assert got["pulls"] >= 1 and got["bad"] == 0, got
    assert got["trims"] >= 1 and got["trimmed"] >= 1, "chunks were given back while transfers ran"
    assert got["registrations"] == 1, got
    decode.finish()
    # The prefill node's second half (taking a push) has nothing coming: walk it through to a clean end.
    prefill.send(pulled=True)
    prefill.recv()
    prefill.send(pushed=True)
    prefill.recv()
    prefill.finish()


def test_an_engine_or_store_that_cannot_start_is_a_typed_error_at_once():
    node = Node("bad-start", 4)
    refused = node.recv()["refused"]
    assert set(refused) == {"protocol", "hostname", "no_master", "bad_master"}, refused
    # No hang: Mooncake's own client would retry an absent master for about 90 seconds.
    assert all(s < 10 for s in refused.values()), refused
    node.finish()


def test_kv_blocks_round_trip_through_the_mooncake_store():
    from aclshm.multinode import mooncake_master

    with mooncake_master() as master:
        n = 16
        put, get = Node("put", n), Node("get", n)
        put.send(master=master)
        assert put.recv()["put"] == n
        get.send(master=master)
        assert get.recv()["ok"], "every byte got from the store verifies"
        put.send(done=True)
        put.finish()
        get.finish()


def test_a_peer_killed_mid_transfer_is_a_typed_error_and_leaves_nothing():
    n = 64
    prefill, decode = Node("prefill", n), Node("decode-loop", n)
    offer = prefill.recv()
    decode.send(**offer)
    assert decode.recv()["started"]
    time.sleep(0.3)  # some pulls go through first
    prefill.p.kill()
    prefill.p.wait(timeout=30)
    got = decode.recv()
    assert got["error"] == "TransferError", got
    assert got["pulls"] >= 1, got
    assert got["usable"], "the pool still works after the failed transfer"
    decode.finish()
    shutil.rmtree(prefill.dirs[1], ignore_errors=True)
    # The killed node's simulator directory: nobody is left to remove it but us.
    shutil.rmtree(prefill.dirs[0], ignore_errors=True)


def test_the_multinode_demo_moves_64_mib_and_says_how():
    env = {**os.environ, "GLOG_minloglevel": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "aclshm.multinode", "--store", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["ok"] and r["bad_blocks"] == 0 and r["store_bad_blocks"] == 0, r
    assert r["bytes"] == 64 << 20
    assert r["registrations"] == 1 and r["decode_registrations"] == 1, "registrations are buffers, not blocks"
    assert r["engine"].startswith("Mooncake") and r["protocol"] == "tcp" and r["mode"] == "staged"
    assert r["bare_pull_s"] > 0 and r["overhead_ratio"] > 0
    assert r["left"] == {}
