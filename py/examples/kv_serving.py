"""A scheduler and two worker processes share KV-cache blocks (aclshm's high-level API).

The scheduler owns a ``KvPool``; a *prefill* worker writes the blocks it is given, a *decode* worker pins
them as a shared prefix and reads them back -- after the scheduler has freed them, which the pins make
safe: the scheduler keeps pinned blocks until the pins go. Workers run on device 1 when there is one
(cross-device sharing), else on device 0. Run it as ``python py/examples/kv_serving.py``; it prints
``result: ok`` when every worker saw every block's data.

Workers are started with multiprocessing's ``spawn`` method: each imports aclshm itself.
"""

import multiprocessing as mp
import random
import sys

import aclshm

BLOCKS = 8


def content(block, n):
    """What block ``block`` holds once written: a function of its id and generation."""
    return random.Random(block.id * 1_000_003 + block.generation).randbytes(n)


def prefill(desc, device, todo, results):
    with aclshm.KvMirror(desc, device) as kv:
        blocks = todo.get(timeout=30)
        for b in blocks:
            kv.write(b, content(b, kv.block_bytes))
        results.put(("prefill", device, len(blocks)))


def decode(desc, device, todo, results):
    with aclshm.KvMirror(desc, device) as kv:
        blocks = todo.get(timeout=30)
        with kv.pinned(blocks) as prefix:
            results.put(("pinned", device, len(prefix)))
            todo.get(timeout=30)  # the scheduler freed the blocks meanwhile
            ok = sum(prefix.read(i) == content(b, kv.block_bytes) for i, b in enumerate(blocks))
            try:
                kv.read(blocks[0])
                refused = False
            except aclshm.StaleBlockError:
                refused = True  # a freed block cannot be read without a pin
        results.put(("decode", device, ok, refused))


def main():
    ctx = mp.get_context("spawn")
    worker_device = 1 if aclshm.device_count() > 1 else 0
    # A small model's blocks: 4 layers, 2 KV heads of 64, fp16, 16 tokens -> 32 KiB.
    block_bytes = aclshm.kv_block_bytes(layers=4, kv_heads=2, head_dim=64, dtype_bytes=2, block_tokens=16)
    print(f"backend: {aclshm.backend()}; block {block_bytes} bytes; workers on device {worker_device}")
    with aclshm.KvPool(block_bytes, device=0, chunk_bytes="2M") as kv:
        results = ctx.Queue()
        queues = {name: ctx.Queue() for name in ("prefill", "decode")}
        procs = {
            name: ctx.Process(target=fn, args=(kv.desc, worker_device, queues[name], results))
            for name, fn in (("prefill", prefill), ("decode", decode))
        }
        for p in procs.values():
            p.start()
        try:
            blocks = kv.alloc_many(BLOCKS)
            queues["prefill"].put(blocks)
            print("prefill:", results.get(timeout=60))
            written = sum(kv.read(b) == content(b, kv.block_bytes) for b in blocks)
            print(f"scheduler: {written}/{BLOCKS} blocks hold what prefill wrote")

            queues["decode"].put(blocks)
            print("decode:", results.get(timeout=60))
            kv.free(blocks)
            deferred = kv.stats()["deferred"]
            print(f"scheduler: freed {BLOCKS} blocks; {deferred} kept for the decode worker's pins")
            queues["decode"].put("read")
            _, _, ok, refused = results.get(timeout=60)
            print(f"decode: {ok}/{BLOCKS} pinned blocks verified; unpinned read of a freed block refused: {refused}")
            for p in procs.values():
                p.join(timeout=60)
            unpinned = kv.wait_unpinned(10)
            codes = [p.exitcode for p in procs.values()]
        finally:
            for p in procs.values():
                if p.is_alive():
                    p.kill()
    good = written == BLOCKS and deferred == BLOCKS and ok == BLOCKS and refused and unpinned and codes == [0, 0]
    print("result:", "ok" if good else f"FAILED (exit codes {codes}, unpinned {unpinned})")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
