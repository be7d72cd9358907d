"""A node of the Mooncake tests: its own simulator directory (set by the test in its environment), a KV
pool, and one role, talking to the test on stdin/stdout one JSON line at a time."""

import json
import sys
import threading
import time

import aclshm
from aclshm.mooncake import KvStore, KvTransfer, TransferError

BLOCK = 256 << 10


def pattern(i):
    return bytes(((i * 7 + j) & 0xFF) for j in range(256)) * (BLOCK // 256)


def say(**kv):
    print(json.dumps(kv), flush=True)


def hear():
    return json.loads(sys.stdin.readline())


def main(role, n):
    kv = aclshm.KvPool(BLOCK, 0, chunk_bytes=2 << 20, reserve_bytes=64 << 20)
    blocks = kv.alloc_many(n)
    try:
        if role == "prefill":
            # Writes a prompt's blocks, exposes them; then takes what a peer pushes, and checks it.
            for i, b in enumerate(blocks):
                kv.write(b, pattern(i))
            with KvTransfer(kv, staging_blocks=n) as t:
                say(session=t.session, addrs=t.expose(blocks), registrations=t.registrations, mode=t.mode)
                hear()  # the peer pulled them
                landing = t.landing(n)
                say(landing=landing)
                hear()  # the peer pushed
                back = kv.alloc_many(n)
                t.take(back)
                say(ok=all(kv.read(b) == pattern(i + 100) for i, b in enumerate(back)))
                kv.free(back)
        elif role == "decode":
            peer = hear()
            with KvTransfer(kv, staging_blocks=max(1, n // 4)) as t:
                # Bad input first: an unknown peer, a stale block, a block of no pool here.
                errors = {}
                try:
                    t.pull("127.0.0.1:1", peer["addrs"][:1], blocks[:1])
                except TransferError:
                    errors["unknown_peer"] = "TransferError"
                stale = kv.alloc()
                kv.free(stale)
                try:
                    t.pull(peer["session"], peer["addrs"][:1], [stale])
                except aclshm.errors.StaleBlockError:
                    errors["stale_block"] = "StaleBlockError"
                other = aclshm.KvPool(BLOCK, 0, chunk_bytes=2 << 20, reserve_bytes=8 << 20)
                theirs = other.alloc()
                try:
                    t.pull(peer["session"], peer["addrs"][:1], [theirs])
                except aclshm.errors.BadDescriptorError:
                    errors["other_pool_block"] = "BadDescriptorError"
                finally:
                    other.free([theirs])
                    other.close()
                t.pull(peer["session"], peer["addrs"], blocks)
                ok = all(kv.read(b) == pattern(i) for i, b in enumerate(blocks))
                say(ok=ok, bytes=t.bytes_moved, registrations=t.registrations, errors=errors)
                landing = hear()["landing"]
                for i, b in enumerate(blocks):
                    kv.write(b, pattern(i + 100))
                t.push(peer["session"], blocks, landing)
                say(pushed=True)
        elif role == "decode-loop":
            # Pulls again and again until the peer is gone (the test kills it): a typed error, no hang;
            # then the pool still works and everything is released.
            peer = hear()
            pulls, error = 0, None
            with KvTransfer(kv, staging_blocks=n) as t:
                say(started=True)
                while error is None and pulls < 10000:
                    try:
                        t.pull(peer["session"], peer["addrs"], blocks)
                        pulls += 1
                    except TransferError as e:
                        error = type(e).__name__
            extra = kv.alloc()
            kv.write(extra, pattern(3))
            usable = kv.read(extra) == pattern(3)
            kv.free([extra])
            say(pulls=pulls, error=error, usable=usable)
        elif role == "decode-trim":
            # Pulls in one thread while another allocates, frees and trims the same pool: every pull
            # verifies, chunks come and go meanwhile, and the registered buffer is never touched by a trim.
            peer = hear()
            with KvTransfer(kv, staging_blocks=8) as t:
                stop, pulls, bad = threading.Event(), [0], [0]

                def puller():
                    while not stop.is_set() and pulls[0] < 200:
                        t.pull(peer["session"], peer["addrs"], blocks)
                        bad[0] += sum(kv.read(b) != pattern(i) for i, b in enumerate(blocks))
                        pulls[0] += 1

                th = threading.Thread(target=puller)
                th.start()
                trims = trimmed = 0
                while th.is_alive() and trims < 60:
                    extra = kv.alloc_many(64)
                    kv.write(extra[0], pattern(5))
                    kv.free(extra)
                    trimmed += kv.trim()
                    trims += 1
                stop.set()
                th.join()
                say(pulls=pulls[0], bad=bad[0], trims=trims, trimmed=trimmed, registrations=t.registrations)
        elif role == "bad-start":
            # Engines and stores that cannot start: each a TransferError at once, nothing left behind.
            refused = {}
            for name, make in (
                ("protocol", lambda: KvTransfer(kv, protocol="carrier-pigeon")),
                ("hostname", lambda: KvTransfer(kv, hostname="no-such-host.invalid")),
                ("no_master", lambda: KvStore(kv, "127.0.0.1:1")),
                ("bad_master", lambda: KvStore(kv, "nowhere")),
            ):
                t0 = time.monotonic()
                try:
                    make().close()
                except TransferError:
                    refused[name] = round(time.monotonic() - t0, 3)
            say(refused=refused)
        elif role in ("put", "get"):
            master = hear()["master"]
            keys = [f"prompt/{i}" for i in range(n)]
            with KvStore(kv, master, segment_bytes=32 << 20, staging_blocks=max(1, n // 2)) as s:
                if role == "put":
                    for i, b in enumerate(blocks):
                        kv.write(b, pattern(i + 7))
                    s.put_blocks(keys, blocks)
                    say(put=n)
                    hear()  # the other client got them
                else:
                    s.get_blocks(keys, blocks)
                    say(ok=all(kv.read(b) == pattern(i + 7) for i, b in enumerate(blocks)))
        else:
            raise SystemExit(f"no role {role}")
    finally:
        kv.free(blocks)
        kv.close()
    # Nothing of this node is left in its simulator.
    left = {k: v for k, v in aclshm.simulator_stats().items() if k.startswith("local_") and v}
    say(left=left)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
