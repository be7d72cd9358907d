"""Bodies of the processes the tests start (multiprocessing, spawn: importable by module name).

Each reports what it saw to `out` as a dict; the test asserts on it. The pyACL-style ones are written
as pyACL code would be (`acl.rt.*`, `(value, ret)` tuples)."""

import aclshm
import aclshm.acl as acl

MB2 = 2 << 20
PROP = {
    "handleType": acl.ACL_MEM_HANDLE_TYPE_NONE,
    "allocationType": acl.ACL_MEM_ALLOCATION_TYPE_PINNED,
    "memAttr": acl.ACL_HBM_MEM_HUGE,
    "location": {"id": 0, "type": acl.ACL_MEM_LOCATION_TYPE_DEVICE},
    "reserve": 0,
}


def pattern(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def prop_on(device):
    p = dict(PROP)
    p["location"] = {"id": device, "type": acl.ACL_MEM_LOCATION_TYPE_DEVICE}
    return p


# ---- physical memory: export in A, import in B ----


def phys_exporter(to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(0) == 0
    handle, r["malloc"] = acl.rt.malloc_physical(MB2, prop_on(0), 0)
    va, r["reserve"] = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    r["map"] = acl.rt.map_mem(va, MB2, 0, handle, 0)
    data = pattern(4096, 1)
    r["h2d"] = acl.rt.memcpy(va, MB2, acl.util.bytes_to_ptr(data), len(data), acl.ACL_MEMCPY_HOST_TO_DEVICE)
    shareable, r["export"] = acl.rt.mem_export_to_shareable_handle(handle, 0, 0)
    _, r["export_again"] = acl.rt.mem_export_to_shareable_handle(handle, 0, 0)
    _, r["import_own"] = acl.rt.mem_import_from_shareable_handle(shareable, 0)
    to_b.put(shareable)
    pid = from_b.get(timeout=30)
    r["set_pid"] = acl.rt.mem_set_pid_to_shareable_handle(shareable, [pid])
    to_b.put("whitelisted")
    assert from_b.get(timeout=30) == "imported"
    # Freeing before the importer unmapped is allowed once it imported: memory goes with the last free.
    r["unmap"] = acl.rt.unmap_mem(va)
    r["free"] = acl.rt.free_physical(handle)
    r["release"] = acl.rt.release_mem_address(va)
    to_b.put("freed")
    assert from_b.get(timeout=30) == "done"
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def phys_importer(device, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(device) == 0
    shareable = to_b.get(timeout=30)
    _, r["import_unlisted"] = acl.rt.mem_import_from_shareable_handle(shareable, device)
    pid, r["tgid"] = acl.rt.device_get_bare_tgid()
    from_b.put(pid)
    assert to_b.get(timeout=30) == "whitelisted"
    handle, r["import"] = acl.rt.mem_import_from_shareable_handle(shareable, device)
    _, r["import_twice"] = acl.rt.mem_import_from_shareable_handle(shareable, device)
    va, r["reserve"] = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    r["map"] = acl.rt.map_mem(va, MB2, 0, handle, 0)
    from_b.put("imported")
    assert to_b.get(timeout=30) == "freed"
    got = bytearray(4096)
    r["d2h"] = acl.rt.memcpy(acl.util.bytes_to_ptr(got), len(got), va, len(got), acl.ACL_MEMCPY_DEVICE_TO_HOST)
    r["data_ok"] = bytes(got) == pattern(4096, 1)
    r["unmap"] = acl.rt.unmap_mem(va)
    r["free"] = acl.rt.free_physical(handle)
    r["release"] = acl.rt.release_mem_address(va)
    r["reset"] = acl.rt.reset_device(device)
    from_b.put("done")
    out.put(r)


# ---- IPC memory by key ----


def ipc_exporter(to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(0) == 0
    ptr, r["malloc"] = acl.rt.malloc(MB2, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    data = pattern(8192, 3)
    r["h2d"] = acl.rt.memcpy(ptr, MB2, acl.util.bytes_to_ptr(data), len(data), acl.ACL_MEMCPY_HOST_TO_DEVICE)
    key, r["export"] = acl.rt.ipc_mem_get_export_key(ptr, MB2, 65, 0)
    _, r["export_short_len"] = acl.rt.ipc_mem_get_export_key(ptr, MB2, 64, 0)
    to_b.put(key)
    pid = from_b.get(timeout=30)
    r["set_pid"] = acl.rt.ipc_mem_set_import_pid(key, [pid])
    to_b.put("whitelisted")
    assert from_b.get(timeout=30) == "closed"
    r["close"] = acl.rt.ipc_mem_close(key)
    r["free"] = acl.rt.free(ptr)
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def ipc_importer(device, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(device) == 0
    key = to_b.get(timeout=30)
    _, r["import_unlisted"] = acl.rt.ipc_mem_import_by_key(key, 0)
    pid, _ = acl.rt.device_get_bare_tgid()
    from_b.put(pid)
    assert to_b.get(timeout=30) == "whitelisted"
    ptr, r["import"] = acl.rt.ipc_mem_import_by_key(key, acl.ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS)
    got = bytearray(8192)
    r["d2h"] = acl.rt.memcpy(acl.util.bytes_to_ptr(got), len(got), ptr, len(got), acl.ACL_MEMCPY_DEVICE_TO_HOST)
    r["data_ok"] = bytes(got) == pattern(8192, 3)
    r["close"] = acl.rt.ipc_mem_close(key)
    r["reset"] = acl.rt.reset_device(device)
    from_b.put("closed")
    out.put(r)


# ---- IPC notify: a process that is not whitelisted ----


def notify_outsider(key, out):
    """Import a notify this process was not whitelisted for, at both levels."""
    r = {}
    assert acl.rt.set_device(0) == 0
    _, r["ret"] = acl.rt.notify_import_by_key(key, 0)
    try:
        aclshm.Notify.import_key(key, 0)
        r["exception"] = None
    except aclshm.AclError as e:
        r["exception"] = (type(e).__name__, e.code, e.name, e.call)
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def notify_importer(device, pids, keys, out):
    """High-level: send our pid, get the key once whitelisted, import, signal, close."""
    pids.put(aclshm.bare_tgid())
    key = keys.get(timeout=30)
    with aclshm.Notify.import_key(key, device) as n:
        r = {"creator": n.is_creator}
        try:
            n.wait_host(1)
            r["wait"] = "allowed"
        except aclshm.NotPermittedError as e:
            r["wait"] = type(e).__name__
        n.signal()
    out.put(r)


# ---- a shared pool and a mirror ----


def mirror_worker(desc, device, descs, out):
    r = {}
    with aclshm.Mirror(desc, device) as m:
        d, n, seed = descs.get(timeout=30)
        r["read_ok"] = m.read(d, n) == pattern(n, seed)
        buf = bytearray(16)
        r["readinto"] = m.readinto(d, buf, offset=16) == 16 and bytes(buf) == pattern(n, seed)[16:32]
        m.write(d, b"reply from the worker", offset=1024)
        r["ptr_in_range"] = m.ptr(d) != 0
        try:
            m.read("00" * 64)
            r["bad_desc"] = None
        except aclshm.BadDescriptorError as e:
            r["bad_desc"] = type(e).__name__
        try:
            m.read(d, 16, offset=n)
            r["out_of_bounds"] = None
        except ValueError as e:
            r["out_of_bounds"] = type(e).__name__
        r["stats"] = m.stats()
    try:
        m.sync()
        r["closed"] = None
    except aclshm.ClosedError as e:
        r["closed"] = type(e).__name__
    out.put(r)


# ---- KV blocks: a worker's errors ----


def kv_worker_errors(desc, live, freed, out):
    """A worker's refusals: unpinning what it does not pin, pinning or reading a freed block."""
    r = {}
    with aclshm.KvMirror(desc, 0) as kv:
        try:
            kv.unpin(live)
        except aclshm.NotPinnedError as e:
            r["not_pinned"] = (type(e).__name__, e.id == live.id)
        kv.pin(live)
        kv.pin([live])
        r["pins_nested"] = kv.pins(live)
        kv.unpin([live, live])
        r["pins_after"] = kv.pins(live)
        for what, call in (("pin", lambda: kv.pin(freed)), ("read", lambda: kv.read(freed))):
            try:
                call()
                r[what + "_freed"] = None
            except aclshm.StaleBlockError as e:
                r[what + "_freed"] = (type(e).__name__, e.id, e.generation)
        r["read_live"] = kv.read(live, 5)
    out.put(r)
