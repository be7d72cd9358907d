"""KV blocks between nodes through Mooncake's Transfer Engine and Store, on aclshm's KV pools.

aclshm shares a pool between the processes of one node; serving stacks that outgrow a node (prefill /
decode disaggregation, a KV store across nodes) move KV blocks with Mooncake, as vllm-ascend does. This
module plugs an :class:`aclshm.KvPool` into that engine rather than growing a transport of its own.

``KvTransfer`` holds one ``mooncake.engine.TransferEngine`` for the process (metadata ``P2PHANDSHAKE``,
so peers are named by their session, ``host:port``) and registers memory once, never per block:

* **staged** (the simulator, or an engine without Ascend support): a page-locked host buffer
  (``aclrtMallocHost``) is registered once; blocks go device -> buffer -> engine -> peer's buffer -> device
  with ``aclrtMemcpy`` on each side, as LMCache does for CPU offload. Device memory is not host-readable
  (on an NPU as on the simulator), and Mooncake's ``tcp`` transport reads host memory only.
* **direct** (CANN with the ``-npu`` wheel, ``protocol="ascend"``): the pool's chunks are registered as
  they are. It needs an NPU and Mooncake's Ascend transport; this machine has neither, so it is refused with
  :class:`TransferError` saying so rather than guessed.

:attr:`KvTransfer.mode` says which is used. The flow of a prefill node and a decode node::

    prefill                                   decode
    t = KvTransfer(kv)                        t = KvTransfer(kv)
    addrs = t.expose(blocks)  ── session, addrs ──>  t.pull(session, addrs, my_blocks)

``expose`` copies the blocks into the registered buffer and returns where the peer reads them;
``pull`` reads them into this node's buffer and copies them into its own blocks (``push`` writes the other
way). ``KvStore`` puts and gets blocks by key through ``MooncakeDistributedStore`` the same way.

Needs ``pip install mooncake-transfer-engine-non-cuda`` (``-npu`` on Ascend) and, on Linux,
``libibverbs1`` for it to import.
"""

from __future__ import annotations

import ctypes
import socket
from typing import List, Optional, Sequence

from . import acl
from ._aclshm import KvBlock, KvPool, is_simulator
from .errors import Error

__all__ = ["KvTransfer", "KvStore", "TransferError"]


class TransferError(Error):
    """The transfer engine or store refused or failed (its status code is in the message), or the mode asked
    for is not available here."""


def _engine_class():
    try:
        from mooncake.engine import TransferEngine
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise TransferError(
            "Mooncake is not installed: pip install mooncake-transfer-engine-non-cuda "
            f"(and apt-get install libibverbs1): {e}"
        ) from e
    return TransferEngine


#: Mooncake protocols this module stages through host memory (``"ascend"`` registers device memory directly
#: and is handled apart). Mooncake itself accepts any name and fails only at the first transfer; checking
#: here makes a misspelt protocol an error at start.
STAGED_PROTOCOLS = ("tcp", "rdma")


def _check_host(hostname: str) -> None:
    """Refuse a host name that does not resolve: the engine would start, advertise it, and no peer could
    ever reach it."""
    host = hostname.rsplit(":", 1)[0] if hostname.count(":") == 1 else hostname
    try:
        socket.getaddrinfo(host, None)
    except OSError as e:
        raise TransferError(f"the transfer engine cannot serve on {hostname!r}: the name does not resolve ({e})")


def _check_master(master: str, timeout: float = 5.0) -> None:
    """Refuse a store master nobody answers at: Mooncake's client retries for about 90 seconds before it
    gives up, which to a caller is a hang."""
    host, sep, port = master.rpartition(":")
    if not sep or not port.isdigit():
        raise TransferError(f"the store master must be host:port, not {master!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise TransferError(f"no mooncake_master answers at {master}: {e}") from e


class _Staging:
    """A page-locked host buffer of ``slots`` blocks of ``block_bytes``, seen from Python as bytes."""

    def __init__(self, kv: KvPool, slots: int):
        self.block = kv.block_bytes
        self.slots = slots
        self.size = slots * self.block
        acl.rt.set_device(kv.device)
        ptr, ret = acl.rt.malloc_host(self.size)
        if ret != 0:
            raise TransferError(f"aclrtMallocHost of {self.size} bytes for the staging buffer failed: {ret}")
        self.ptr = ptr
        # Touch every page now, at setup: the first transfer should not pay the page faults.
        ctypes.memset(ptr, 0, self.size)
        self.view = memoryview((ctypes.c_char * self.size).from_address(ptr)).cast("B")

    def slot(self, i: int) -> memoryview:
        return self.view[i * self.block : (i + 1) * self.block]

    def slots_view(self, n: int) -> memoryview:
        """The first ``n`` slots, as one buffer."""
        return self.view[: n * self.block]

    def addr(self, i: int) -> int:
        return self.ptr + i * self.block

    def close(self) -> None:
        if self.ptr:
            self.view.release()
            acl.rt.free_host(self.ptr)
            self.ptr = 0


class KvTransfer:
    """A Mooncake transfer engine serving one KV pool of this process.

    ``staging_blocks`` bounds how many blocks move in one batch (the registered buffer holds that many);
    larger requests go in several batches. ``protocol`` is Mooncake's (``"tcp"``, ``"rdma"``,
    ``"ascend"``); ``None`` chooses: ``"ascend"`` direct on CANN when asked for, else ``"tcp"`` staged.
    """

    def __init__(
        self,
        kv: KvPool,
        *,
        hostname: str = "127.0.0.1",
        protocol: Optional[str] = None,
        device_name: str = "",
        staging_blocks: int = 64,
    ):
        if staging_blocks < 1:
            raise ValueError("staging_blocks must be at least 1")
        self.kv = kv
        self.protocol = protocol or "tcp"
        if self.protocol == "ascend":
            if is_simulator():
                raise TransferError(
                    "protocol 'ascend' registers device memory with Mooncake's Ascend transport: it needs CANN "
                    "and the mooncake-transfer-engine-npu wheel; on the simulator use 'tcp' (staged)"
                )
            raise TransferError(
                "direct registration of the pool's chunks (protocol 'ascend') is not built yet: it needs an NPU "
                "node to test; use 'tcp' or 'rdma' (staged)"
            )
        if self.protocol not in STAGED_PROTOCOLS:
            raise TransferError(f"unknown Mooncake protocol {self.protocol!r}: use one of {STAGED_PROTOCOLS} or 'ascend'")
        _check_host(hostname)
        self.mode = "staged"
        self.engine = _engine_class()()
        ret = self.engine.initialize(hostname, "P2PHANDSHAKE", self.protocol, device_name)
        if ret != 0:
            raise TransferError(f"the transfer engine did not start ({hostname}, {self.protocol}): status {ret}")
        self.session = f"{hostname}:{self.engine.get_rpc_port()}"
        self._staging = _Staging(kv, staging_blocks)
        ret = self.engine.register_memory(self._staging.ptr, self._staging.size)
        if ret != 0:
            self._staging.close()
            raise TransferError(f"registering the staging buffer failed: status {ret}")
        #: Memory regions registered with the engine (one: the staging buffer; never one per block).
        self.registrations = 1
        #: Bytes moved by pull and push.
        self.bytes_moved = 0

    # -- what a peer reads --------------------------------------------------------------------------------

    def expose(self, blocks: Sequence[KvBlock]) -> List[int]:
        """Copy ``blocks`` into the registered buffer and return, for each, the address a peer reads it
        from (with :meth:`pull`). At most ``staging_blocks`` at a time: the next ``expose`` reuses the
        buffer, so a peer must have pulled the previous ones."""
        if len(blocks) > self._staging.slots:
            raise ValueError(f"{len(blocks)} blocks do not fit the staging buffer of {self._staging.slots}")
        # One copy per run of blocks side by side in the pool.
        self.kv.readinto_blocks(list(blocks), self._staging.slots_view(len(blocks)))
        return [self._staging.addr(i) for i in range(len(blocks))]

    # -- moving blocks ------------------------------------------------------------------------------------

    def pull(self, peer: str, remote: Sequence[int], blocks: Sequence[KvBlock], *, pipeline: int = 8) -> None:
        """Read the blocks a peer exposed (``remote``: its addresses) into this pool's ``blocks``.

        The transfer goes in up to ``pipeline`` batches submitted at once; each batch is copied into the
        pool as soon as it has arrived, while the later ones are still on the wire."""
        if len(remote) != len(blocks):
            raise ValueError(f"{len(remote)} remote addresses for {len(blocks)} blocks")
        n = self._staging.slots
        for start in range(0, len(blocks), n):
            part = list(blocks[start : start + n])
            rem = list(remote[start : start + n])
            for blk in part:
                self.kv.ptr(blk)  # a stale block or one of another pool: aclshm's error, before any transfer
            size = self._staging.block
            step = max(1, -(-len(part) // max(1, pipeline)))
            groups = [(g, min(g + step, len(part))) for g in range(0, len(part), step)]
            batches = []
            for lo, hi in groups:
                local = [self._staging.addr(i) for i in range(lo, hi)]
                bid = self.engine.batch_transfer_async_read(peer, local, rem[lo:hi], [size] * (hi - lo))
                batches.append(bid)
            failed, error = None, None
            for (lo, hi), bid in zip(groups, batches):
                # Every submitted batch is waited for (a failed one too): none may land in the buffer later.
                st = self.engine.get_batch_transfer_status([bid]) if bid > 0 else -1
                if st != 0:
                    failed = failed or (hi - lo, st)
                    continue
                if failed is None and error is None:
                    try:
                        self.kv.write_blocks(part[lo:hi], self._staging.view[lo * size : hi * size])
                        self.bytes_moved += (hi - lo) * size
                    except Exception as e:  # noqa: BLE001 - raised once every batch is in
                        error = e
            if error is not None:
                raise error
            if failed is not None:
                raise TransferError(f"reading {failed[0]} blocks from {peer} failed: status {failed[1]}")

    def push(self, peer: str, blocks: Sequence[KvBlock], remote: Sequence[int]) -> None:
        """Write this pool's ``blocks`` to a peer's registered addresses ``remote`` (its staging buffer:
        the peer then copies them into its blocks with :meth:`take`)."""
        if len(remote) != len(blocks):
            raise ValueError(f"{len(remote)} remote addresses for {len(blocks)} blocks")
        n = self._staging.slots
        for start in range(0, len(blocks), n):
            part = blocks[start : start + n]
            local = self.expose(part)
            lens = [self._staging.block] * len(part)
            ret = self.engine.batch_transfer_sync_write(peer, local, list(remote[start : start + n]), lens)
            if ret != 0:
                raise TransferError(f"writing {len(part)} blocks to {peer} failed: status {ret}")
            self.bytes_moved += sum(lens)

    def landing(self, n: int) -> List[int]:
        """Addresses a peer may :meth:`push` ``n`` blocks to (this node's staging buffer)."""
        if n > self._staging.slots:
            raise ValueError(f"{n} blocks do not fit the staging buffer of {self._staging.slots}")
        return [self._staging.addr(i) for i in range(n)]

    def take(self, blocks: Sequence[KvBlock]) -> None:
        """Copy what a peer pushed into the staging buffer into this pool's ``blocks``."""
        self.kv.write_blocks(list(blocks), self._staging.slots_view(len(blocks)))

    def close(self) -> None:
        """Unregister the buffer from the engine and free it."""
        if self._staging.ptr:
            self.engine.unregister_memory(self._staging.ptr)
            self.registrations = 0
            self._staging.close()

    def __enter__(self) -> "KvTransfer":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


class KvStore:
    """KV blocks by key in a Mooncake Store (``MooncakeDistributedStore``), staged through a registered
    page-locked buffer as :class:`KvTransfer` is.

    ``master`` is the ``mooncake_master`` address (``host:port``); ``segment_bytes`` is what this client
    contributes to the store; ``staging_blocks`` bounds one batch.
    """

    def __init__(
        self,
        kv: KvPool,
        master: str,
        *,
        hostname: str = "127.0.0.1",
        protocol: str = "tcp",
        segment_bytes: int = 64 << 20,
        staging_blocks: int = 64,
        metadata: str = "P2PHANDSHAKE",
    ):
        try:
            from mooncake.store import MooncakeDistributedStore
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise TransferError(f"Mooncake Store is not installed: {e}") from e
        if protocol not in STAGED_PROTOCOLS:
            raise TransferError(f"unknown Mooncake protocol {protocol!r}: the store stages through {STAGED_PROTOCOLS}")
        _check_host(hostname)
        _check_master(master)
        self.kv = kv
        self.store = MooncakeDistributedStore()
        ret = self.store.setup(hostname, metadata, segment_bytes, 16 << 20, protocol, "", master)
        if ret != 0:
            raise TransferError(f"the store client did not start (master {master}): status {ret}")
        self._staging = _Staging(kv, staging_blocks)
        ret = self.store.register_buffer(self._staging.ptr, self._staging.size)
        if ret != 0:
            self._staging.close()
            raise TransferError(f"registering the staging buffer with the store failed: status {ret}")

    def put_blocks(self, keys: Sequence[str], blocks: Sequence[KvBlock]) -> None:
        """Store each block under its key."""
        if len(keys) != len(blocks):
            raise ValueError(f"{len(keys)} keys for {len(blocks)} blocks")
        n = self._staging.slots
        for start in range(0, len(blocks), n):
            part = blocks[start : start + n]
            self.kv.readinto_blocks(list(part), self._staging.slots_view(len(part)))
            addrs = [self._staging.addr(i) for i in range(len(part))]
            rets = self.store.batch_put_from(list(keys[start : start + n]), addrs, [self._staging.block] * len(part))
            bad = [r for r in rets if r != 0]
            if bad:
                raise TransferError(f"putting {len(bad)} of {len(part)} blocks failed: status {bad[0]}")

    def get_blocks(self, keys: Sequence[str], blocks: Sequence[KvBlock]) -> None:
        """Read the blocks stored under ``keys`` into this pool's ``blocks``."""
        if len(keys) != len(blocks):
            raise ValueError(f"{len(keys)} keys for {len(blocks)} blocks")
        n = self._staging.slots
        for start in range(0, len(blocks), n):
            part = blocks[start : start + n]
            addrs = [self._staging.addr(i) for i in range(len(part))]
            lens = [self._staging.block] * len(part)
            rets = self.store.batch_get_into(list(keys[start : start + n]), addrs, lens)
            bad = [r for r in rets if r != self._staging.block]
            if bad:
                raise TransferError(f"getting {len(bad)} of {len(part)} blocks failed: status {bad[0]}")
            self.kv.write_blocks(list(part), self._staging.slots_view(len(part)))

    def close(self) -> None:
        if self._staging.ptr:
            self.store.unregister_buffer(self._staging.ptr)
            self._staging.close()
            self.store.close()

    def __enter__(self) -> "KvStore":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False
