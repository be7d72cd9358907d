"""``python3 -m aclshm.multinode``: KV blocks between two simulated nodes through Mooncake.

Two nodes, each a process with a simulator directory of its own (they share nothing but TCP on
127.0.0.1): a prefill node writes a prompt's KV blocks into its :class:`aclshm.KvPool`; a decode node pulls
them through Mooncake's Transfer Engine into its own pool and verifies every byte. In the same run, the
same bytes move between two plain registered host buffers with the bare engine (the floor the staged path
is measured against), and, with ``--store``, the blocks make a round trip through a Mooncake Store
(a ``mooncake_master`` started and stopped here). Prints a summary (``--json`` for JSON).

    python3 -m aclshm.multinode                 # 64 MiB: 256 blocks of 256 KiB
    python3 -m aclshm.multinode --store --json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time

BLOCK = 256 << 10
#: Steady-state transfers timed after the first (the median is reported), for the staged and the bare path.
REPEAT = 5


def _pattern(i: int, block: int) -> bytes:
    return bytes(((i * 31 + j) & 0xFF) for j in range(256)) * (block // 256)


def _say(**kv) -> None:
    print(json.dumps(kv), flush=True)


def _hear() -> dict:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("the demo went away")
    return json.loads(line)


def _node(role: str, blocks_n: int, block: int) -> None:
    """A node (a child of the demo, in its own simulator directory)."""
    import aclshm
    from aclshm.mooncake import KvStore, KvTransfer

    chunk = 2 << 20
    kv = aclshm.KvPool(block, 0, chunk_bytes=chunk, reserve_bytes=max(4 * chunk, 2 * blocks_n * block))
    blocks = kv.alloc_many(blocks_n)
    try:
        if role == "prefill":
            for i, b in enumerate(blocks):
                kv.write(b, _pattern(i, block))
            with KvTransfer(kv, staging_blocks=blocks_n) as t:
                t0 = time.perf_counter()
                addrs = t.expose(blocks)
                _say(session=t.session, addrs=addrs, mode=t.mode, protocol=t.protocol,
                     registrations=t.registrations, expose_s=time.perf_counter() - t0)
                _hear()
        elif role == "decode":
            offer = _hear()
            with KvTransfer(kv, staging_blocks=blocks_n) as t:
                # The first pull pays the handshake (and, on the simulator, the first touch of the blocks'
                # pages); the second is the steady state. Both are verified.
                t0 = time.perf_counter()
                t.pull(offer["session"], offer["addrs"], blocks)
                first = time.perf_counter() - t0
                bad = sum(kv.read(b) != _pattern(i, block) for i, b in enumerate(blocks))
                times = []
                for _ in range(REPEAT):
                    for b in blocks:
                        kv.write(b, bytes(block))
                    t0 = time.perf_counter()
                    t.pull(offer["session"], offer["addrs"], blocks)
                    times.append(time.perf_counter() - t0)
                    bad += sum(kv.read(b) != _pattern(i, block) for i, b in enumerate(blocks))
                _say(bytes=t.bytes_moved // (REPEAT + 1), pull_s=statistics.median(times), first_pull_s=first,
                     bad_blocks=bad, registrations=t.registrations)
        elif role == "bare-server":
            # The floor: the engine alone, between plain registered host buffers (no device, no staging).
            _bare_server(blocks_n * block)
        elif role in ("put", "get"):
            master = _hear()["master"]
            keys = [f"prompt/{i}" for i in range(blocks_n)]
            with KvStore(kv, master, segment_bytes=2 * blocks_n * block + (16 << 20),
                         staging_blocks=blocks_n) as s:
                t0 = time.perf_counter()
                if role == "put":
                    for i, b in enumerate(blocks):
                        kv.write(b, _pattern(i, block))
                    s.put_blocks(keys, blocks)
                    _say(put_s=time.perf_counter() - t0)
                    _hear()
                else:
                    s.get_blocks(keys, blocks)
                    dt = time.perf_counter() - t0
                    bad = sum(kv.read(b) != _pattern(i, block) for i, b in enumerate(blocks))
                    _say(get_s=dt, bad_blocks=bad)
    finally:
        kv.free(blocks)
        kv.close()
    left = {k: v for k, v in aclshm.simulator_stats().items() if k.startswith("local_") and v}
    _say(left=left)


def _host_buffer(size: int):
    buf = (ctypes.c_char * size)()
    return buf, ctypes.addressof(buf)


def _bare_server(size: int) -> None:
    from mooncake.engine import TransferEngine

    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("the bare engine did not start")
    buf, addr = _host_buffer(size)
    e.register_memory(addr, size)
    _say(session=f"127.0.0.1:{e.get_rpc_port()}", addr=addr)
    _hear()
    e.unregister_memory(addr)


def _bare_pull(offer: dict, size: int, block: int) -> float:
    from mooncake.engine import TransferEngine

    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("the bare engine did not start")
    buf, addr = _host_buffer(size)
    e.register_memory(addr, size)
    n = size // block
    local = [addr + i * block for i in range(n)]
    remote = [offer["addr"] + i * block for i in range(n)]
    # A first transfer for the handshake, then the ones measured (as the staged path does): the median.
    times = []
    for _ in range(REPEAT + 1):
        t0 = time.perf_counter()
        if e.batch_transfer_sync_read(offer["session"], local, remote, [block] * n) != 0:
            raise SystemExit("the bare transfer failed")
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times[1:])
    e.unregister_memory(addr)
    return dt


class _Node:
    def __init__(self, role: str, n: int, block: int):
        base = f"/dev/shm/aclshm-node-{role}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dirs = (base, base + "-share")
        env = {**os.environ, "ACLSHM_SIM_DIR": base, "ACLSHM_SHARE_DIR": base + "-share",
               "GLOG_minloglevel": os.environ.get("GLOG_minloglevel", "2")}
        self.p = subprocess.Popen([sys.executable, "-m", "aclshm.multinode", "--role", role, "--blocks", str(n),
                                   "--block-size", str(block)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)

    def send(self, **kv) -> None:
        self.p.stdin.write(json.dumps(kv) + "\n")
        self.p.stdin.flush()

    def recv(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"a node ended early: {self.p.stderr.read()[-1500:]}")
        return json.loads(line)

    def finish(self) -> dict:
        left = self.recv().get("left", {})
        if self.p.wait(timeout=120) != 0:
            raise RuntimeError(f"a node failed: {self.p.stderr.read()[-1500:]}")
        shutil.rmtree(self.dirs[1], ignore_errors=True)
        return left


@contextlib.contextmanager
def mooncake_master():
    """A ``mooncake_master`` (the one in Mooncake's wheel) on a free port of 127.0.0.1, for as long as the
    block runs; yields its address (``host:port``)."""
    import mooncake

    port = _free_port()
    binary = os.path.join(os.path.dirname(mooncake.__file__), "mooncake_master")
    master = subprocess.Popen([binary, f"--rpc_port={port}", "--rpc_address=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or master.poll() is not None:
                    raise RuntimeError("mooncake_master did not start")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        master.terminate()
        master.wait(timeout=30)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(blocks_n: int, block: int, store: bool) -> dict:
    import mooncake

    report = {"ok": False, "engine": "Mooncake Transfer Engine", "engine_version": _version(mooncake),
              "nodes": 2, "blocks": blocks_n, "block_bytes": block, "bytes": blocks_n * block}
    t_all = time.perf_counter()
    prefill, decode = _Node("prefill", blocks_n, block), _Node("decode", blocks_n, block)
    offer = prefill.recv()
    report.update(mode=offer["mode"], protocol=offer["protocol"], registrations=offer["registrations"])
    decode.send(**offer)
    got = decode.recv()
    report.update(pull_s=got["pull_s"], first_pull_s=got["first_pull_s"], expose_s=offer["expose_s"],
                  bad_blocks=got["bad_blocks"], decode_registrations=got["registrations"])
    prefill.send(done=True)
    left = {"prefill": prefill.finish(), "decode": decode.finish()}
    # The floor: the same bytes, plain host buffers, the bare engine, in the same run.
    server = _Node("bare-server", blocks_n, block)
    bare_offer = server.recv()
    report["bare_pull_s"] = _bare_pull(bare_offer, blocks_n * block, block)
    server.send(done=True)
    server.finish()
    staged = report["expose_s"] + report["pull_s"]
    report["staged_s"] = staged
    report["overhead_ratio"] = staged / report["bare_pull_s"] if report["bare_pull_s"] > 0 else None
    if store:
        with mooncake_master() as master:
            put, get = _Node("put", blocks_n, block), _Node("get", blocks_n, block)
            put.send(master=master)
            report["store_put_s"] = put.recv()["put_s"]
            get.send(master=master)
            g = get.recv()
            report.update(store_get_s=g["get_s"], store_bad_blocks=g["bad_blocks"])
            put.send(done=True)
            left.update(put=put.finish(), get=get.finish())
    report["left"] = {k: v for k, v in left.items() if v}
    report["total_s"] = time.perf_counter() - t_all
    report["ok"] = report["bad_blocks"] == 0 and report.get("store_bad_blocks", 0) == 0 and not report["left"]
    return report


def _version(mod) -> str:
    try:
        from importlib.metadata import version

        return version("mooncake-transfer-engine-non-cuda")
    except Exception:  # noqa: BLE001 - any packaging of it
        return getattr(mod, "__version__", "unknown")


def _print(r: dict) -> None:
    mib = r["bytes"] / (1 << 20)
    print(f"engine:         {r['engine']} {r['engine_version']}, protocol {r['protocol']}, {r['mode']}"
          " (through registered page-locked host memory: device memory is not host-readable)")
    print(f"moved:          {mib:.1f} MiB ({r['blocks']} blocks of {r['block_bytes'] >> 10} KiB), prefill node -> "
          "decode node, two simulator directories")
    print(f"registrations:  {r['registrations']} per node (the staging buffer; never one per block)")
    print(f"time:           expose {r['expose_s'] * 1e3:.1f} ms + pull {r['pull_s'] * 1e3:.1f} ms = "
          f"{r['staged_s'] * 1e3:.1f} ms ({mib / r['staged_s']:.0f} MiB/s; the first pull, with the handshake, "
          f"{r['first_pull_s'] * 1e3:.1f} ms); bare engine, plain host buffers, same run: "
          f"{r['bare_pull_s'] * 1e3:.1f} ms; ratio {r['overhead_ratio']:.2f}x")
    if "store_get_s" in r:
        print(f"store:          put {r['store_put_s'] * 1e3:.1f} ms, get {r['store_get_s'] * 1e3:.1f} ms "
              f"(mooncake_master started and stopped here), {r['store_bad_blocks']} bad blocks")
    print(f"result:         {'ok: every byte verified' if r['ok'] else 'FAILED'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m aclshm.multinode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=256, help="KV blocks to move (default 256)")
    ap.add_argument("--block-size", type=int, default=BLOCK, help="bytes per block (a multiple of 512)")
    ap.add_argument("--nodes", type=int, default=2, choices=[2], help="simulated nodes (2)")
    ap.add_argument("--store", action="store_true", help="also a round trip through a Mooncake Store")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.blocks < 1 or a.block_size < 512 or a.block_size % 512:
        ap.error("--blocks must be at least 1 and --block-size a positive multiple of 512")
    if a.role:
        _node(a.role, a.blocks, a.block_size)
        return 0
    try:
        r = run(a.blocks, a.block_size, a.store)
    except (RuntimeError, ImportError) as e:
        print(f"aclshm.multinode: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        _print(r)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
