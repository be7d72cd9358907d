"""The pyACL IPC Notify flow across two processes, written as for pyACL.

Process A creates a notify, exports it, whitelists B's pid and waits on it; process B imports it by key
and records it. This is pyACL's documented sequence (create_notify -> notify_get_export_key ->
notify_set_import_pid -> wait_and_reset_notify -> destroy_notify; device_get_bare_tgid ->
notify_import_by_key -> record_notify -> destroy_notify), and the program would run on pyACL with
``import acl`` in place of the import line below. Run it as ``python py/examples/notify_flow.py``.
"""

import multiprocessing as mp
import sys

import aclshm.acl as acl  # pyACL: import acl

ACL_SUCCESS = 0
NOTIFY_KEY_LEN = 65
# The wait's timeout: pyACL's page counts it in milliseconds, the C API's 9.0 page in seconds; 30000 is
# 30 s on the first reading and bounded on the second.
WAIT_TIMEOUT = 30000


def check(ret, what):
    if ret != ACL_SUCCESS:
        raise RuntimeError(f"{what} failed: ret {ret}")


def waiter(device, to_b, from_b, log):
    check(acl.init(), "acl.init")
    check(acl.rt.set_device(device), "set_device")
    notify, ret = acl.rt.create_notify(0)
    check(ret, "create_notify")
    key, ret = acl.rt.notify_get_export_key(notify, NOTIFY_KEY_LEN, 0)
    check(ret, "notify_get_export_key")
    stream, ret = acl.rt.create_stream()
    check(ret, "create_stream")
    pid = from_b.get(timeout=30)
    check(acl.rt.notify_set_import_pid(notify, [pid]), "notify_set_import_pid")
    check(acl.rt.wait_and_reset_notify(notify, stream, WAIT_TIMEOUT), "wait_and_reset_notify")
    to_b.put(key)
    check(acl.rt.synchronize_stream(stream), "synchronize_stream")
    log.put("A: the notify was recorded by B")
    from_b.get(timeout=30)  # B destroyed its import
    check(acl.rt.destroy_notify(notify), "destroy_notify")
    check(acl.rt.destroy_stream(stream), "destroy_stream")
    check(acl.rt.reset_device(device), "reset_device")
    check(acl.finalize(), "acl.finalize")


def recorder(device, to_b, from_b, log):
    check(acl.init(), "acl.init")
    check(acl.rt.set_device(device), "set_device")
    pid, ret = acl.rt.device_get_bare_tgid()
    check(ret, "device_get_bare_tgid")
    from_b.put(pid)
    key = to_b.get(timeout=30)
    notify, ret = acl.rt.notify_import_by_key(key, 0)
    check(ret, "notify_import_by_key")
    stream, ret = acl.rt.create_stream()
    check(ret, "create_stream")
    check(acl.rt.record_notify(notify, stream), "record_notify")
    check(acl.rt.synchronize_stream(stream), "synchronize_stream")
    log.put(f"B (pid {pid}): imported {key[:16]}... and recorded it")
    check(acl.rt.destroy_notify(notify), "destroy_notify")
    check(acl.rt.destroy_stream(stream), "destroy_stream")
    from_b.put("done")
    check(acl.rt.reset_device(device), "reset_device")
    check(acl.finalize(), "acl.finalize")


def main():
    ctx = mp.get_context("spawn")
    to_b, from_b, log = ctx.Queue(), ctx.Queue(), ctx.Queue()
    a = ctx.Process(target=waiter, args=(0, to_b, from_b, log))
    b = ctx.Process(target=recorder, args=(0, to_b, from_b, log))
    a.start()
    b.start()
    for p in (a, b):
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    lines = []
    while not log.empty():
        lines.append(log.get())
    for line in sorted(lines):
        print(line)
    ok = a.exitcode == 0 and b.exitcode == 0 and len(lines) == 2
    print("result:", "ok" if ok else f"FAILED (exit codes {a.exitcode}, {b.exitcode})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
