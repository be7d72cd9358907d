"""Test setup: a simulator directory and a share directory of the session's own (inherited by every
process the tests start), and a check at the end that nothing is left in the simulator."""

import os
import secrets
import shutil
import sys

import pytest

_base = f"/dev/shm/aclshm-pytest-{os.getpid()}-{secrets.token_hex(4)}"
os.environ["ACLSHM_SIM_DIR"] = _base
os.environ["ACLSHM_SHARE_DIR"] = _base + "-share"
# The embedded simulator, whatever the machine has: the tests check its exact codes and objects.
os.environ.setdefault("ACLSHM_BACKEND", "sim")
sys.path.insert(0, os.path.dirname(__file__))

import aclshm  # noqa: E402  (after the environment is set)

LIVE_KEYS = (
    "physical_objects",
    "ipc_keys",
    "notifies",
    "local_handles",
    "local_reservations",
    "local_mappings",
    "local_device_allocs",
    "local_host_allocs",
    "local_notifies",
    "local_ipc_imports",
    "ipc_events",
    "local_events",
    "local_contexts",
)


def live_objects():
    """Simulator objects alive now (every process's, and this process's own), by kind, zeros left out."""
    return {k: v for k, v in aclshm.simulator_stats().items() if k in LIVE_KEYS and v}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_the_simulator():
    yield
    left = live_objects()
    share = os.environ["ACLSHM_SHARE_DIR"]
    files = os.listdir(share) if os.path.isdir(share) else []
    shutil.rmtree(share, ignore_errors=True)
    assert not left, f"simulator objects left after the tests: {left}"
    assert not files, f"shared files left after the tests: {files}"
    # The simulator's directory goes when this process (the last one in it) exits.


@pytest.fixture
def spawn():
    """multiprocessing's spawn context (every process imports aclshm itself)."""
    import multiprocessing

    return multiprocessing.get_context("spawn")
