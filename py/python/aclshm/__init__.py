"""aclshm: share Ascend NPU memory between processes through the ACL runtime.

Two levels:

* :mod:`aclshm.acl` -- pyACL's calling convention for the ACL subset aclshm covers (VMM, shareable
  handles, IPC memory keys, IPC notifies, IPC events, devices, contexts, streams, memcpy): ``import
  aclshm.acl as acl`` in place of ``import acl`` and a pyACL program for those flows runs unchanged.
* The safe API below: :class:`Pool` (shared with :meth:`Pool.share`), :class:`Mirror` (another process's
  pool, attached through the owner's rendezvous), :class:`KvPool` / :class:`KvMirror` (KV-cache blocks with
  pins), :class:`Notify`, :class:`Event` and :class:`Stream`, errors raised as the exceptions of
  :mod:`aclshm.errors`. Pools sleep and wake as vLLM's do (``Pool.sleep(offload_tags)``,
  ``Pool.wake_up(tags)``, ``KvPool.sleep(discard_kv)``).

Everything runs on the runtime the library selects once per process: CANN's ``libascendcl.so`` when an
NPU is there, else the embedded simulator (``ACLSHM_BACKEND=acl|sim|auto`` and ``ACLSHM_ACL_LIB`` choose).
Processes sharing memory must each import aclshm themselves: use ``multiprocessing`` with the ``spawn``
start method (a forked child shares its parent's runtime state, which the runtime does not support).
"""

from . import errors
from ._aclshm import (
    Allocation,
    Event,
    KvBlock,
    KvMirror,
    KvPool,
    Mirror,
    Notify,
    Pinned,
    Pool,
    Sleeping,
    Stream,
    __version__,
    backend,
    bare_tgid,
    device_count,
    error_name,
    is_simulator,
    kv_block_bytes,
    reset_device,
    set_device,
    simulator_stats,
)
from .errors import *  # noqa: F401,F403  (the exception classes, re-exported)

__all__ = [
    "Allocation",
    "Event",
    "KvBlock",
    "KvMirror",
    "KvPool",
    "Mirror",
    "Notify",
    "Pinned",
    "Pool",
    "Sleeping",
    "Stream",
    "__version__",
    "backend",
    "bare_tgid",
    "device_count",
    "error_name",
    "errors",
    "is_simulator",
    "kv_block_bytes",
    "reset_device",
    "set_device",
    "simulator_stats",
] + errors.__all__
