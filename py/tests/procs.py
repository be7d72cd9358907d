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


def run_pair(spawn, a, a_args, b, b_args):
    """Run two processes that talk over two queues (`to_b`, `from_b`, after their own arguments); return
    what each reported."""
    to_b, from_b, out_a, out_b = spawn.Queue(), spawn.Queue(), spawn.Queue(), spawn.Queue()
    pa = spawn.Process(target=a, args=(*a_args, to_b, from_b, out_a))
    pb = spawn.Process(target=b, args=(*b_args, to_b, from_b, out_b))
    pa.start()
    pb.start()
    try:
        ra, rb = out_a.get(timeout=60), out_b.get(timeout=60)
    finally:
        for p in (pa, pb):
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert (pa.exitcode, pb.exitcode) == (0, 0)
    return ra, rb


def pattern(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def prop_on(device):
    p = dict(PROP)
    p["location"] = {"id": device, "type": acl.ACL_MEM_LOCATION_TYPE_DEVICE}
    return p


# ---- the handshake of both sharing flows: export in A, whitelist B, import in B ----
# A sends what it exported (a shareable handle, a key); B tries to import it (refused: not whitelisted yet)
# and answers with its pid; A whitelists that pid and says so.


def offer(to_b, from_b, exported, whitelist):
    """A's half: returns the ret of `whitelist(pid)`."""
    to_b.put(exported)
    ret = whitelist(from_b.get(timeout=30))
    to_b.put("whitelisted")
    return ret


def accept(to_b, from_b, import_):
    """B's half: returns what A exported, the ret of importing it before the whitelist, and that of
    device_get_bare_tgid."""
    exported = to_b.get(timeout=30)
    _, unlisted = import_(exported)
    pid, tgid = acl.rt.device_get_bare_tgid()
    from_b.put(pid)
    assert to_b.get(timeout=30) == "whitelisted"
    return exported, unlisted, tgid


def put_pattern(dev_ptr, n, seed):
    """Copy `pattern(n, seed)` to device memory; the memcpy's ret."""
    data = pattern(n, seed)
    return acl.rt.memcpy(dev_ptr, MB2, acl.util.bytes_to_ptr(data), n, acl.ACL_MEMCPY_HOST_TO_DEVICE)


def check_pattern(dev_ptr, n, seed):
    """The memcpy's ret, and whether device memory holds `pattern(n, seed)`."""
    got = bytearray(n)
    ret = acl.rt.memcpy(acl.util.bytes_to_ptr(got), n, dev_ptr, n, acl.ACL_MEMCPY_DEVICE_TO_HOST)
    return ret, bytes(got) == pattern(n, seed)


# ---- physical memory ----


def phys_exporter(to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(0) == 0
    handle, r["malloc"] = acl.rt.malloc_physical(MB2, prop_on(0), 0)
    va, r["reserve"] = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    r["map"] = acl.rt.map_mem(va, MB2, 0, handle, 0)
    r["h2d"] = put_pattern(va, 4096, 1)
    shareable, r["export"] = acl.rt.mem_export_to_shareable_handle(handle, 0, 0)
    _, r["export_again"] = acl.rt.mem_export_to_shareable_handle(handle, 0, 0)
    _, r["import_own"] = acl.rt.mem_import_from_shareable_handle(shareable, 0)
    r["set_pid"] = offer(
        to_b, from_b, shareable, lambda pid: acl.rt.mem_set_pid_to_shareable_handle(shareable, [pid])
    )
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
    shareable, r["import_unlisted"], r["tgid"] = accept(
        to_b, from_b, lambda s: acl.rt.mem_import_from_shareable_handle(s, device)
    )
    handle, r["import"] = acl.rt.mem_import_from_shareable_handle(shareable, device)
    _, r["import_twice"] = acl.rt.mem_import_from_shareable_handle(shareable, device)

    def exporter_freed():
        from_b.put("imported")
        assert to_b.get(timeout=30) == "freed"

    map_check_release(r, handle, device, 1, before_check=exporter_freed)
    from_b.put("done")
    out.put(r)


def map_check_release(r, handle, device, seed, before_check=None, attrs=False):
    """An importer's end: map `handle` (2 MiB) in a range of its own, check the exporter's pattern of
    `seed` (after `before_check`, if any), then unmap, free, release and reset `device`, noting each code
    in `r`."""
    va, r["reserve"] = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    r["map"] = acl.rt.map_mem(va, MB2, 0, handle, 0)
    if attrs:
        r["attrs"] = acl.rt.pointer_get_attributes(va)
    if before_check is not None:
        before_check()
    r["d2h"], r["data_ok"] = check_pattern(va, 4096, seed)
    r["unmap"] = acl.rt.unmap_mem(va)
    r["free"] = acl.rt.free_physical(handle)
    r["release"] = acl.rt.release_mem_address(va)
    r["reset"] = acl.rt.reset_device(device)


# ---- IPC memory by key ----


def ipc_exporter(to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(0) == 0
    ptr, r["malloc"] = acl.rt.malloc(MB2, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    r["h2d"] = put_pattern(ptr, 8192, 3)
    key, r["export"] = acl.rt.ipc_mem_get_export_key(ptr, MB2, 65, 0)
    _, r["export_short_len"] = acl.rt.ipc_mem_get_export_key(ptr, MB2, 64, 0)
    r["set_pid"] = offer(to_b, from_b, key, lambda pid: acl.rt.ipc_mem_set_import_pid(key, [pid]))
    assert from_b.get(timeout=30) == "closed"
    r["close"] = acl.rt.ipc_mem_close(key)
    r["free"] = acl.rt.free(ptr)
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def ipc_importer(device, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(device) == 0
    key, r["import_unlisted"], _ = accept(to_b, from_b, lambda k: acl.rt.ipc_mem_import_by_key(k, 0))
    ptr, r["import"] = acl.rt.ipc_mem_import_by_key(key, acl.ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS)
    r["d2h"], r["data_ok"] = check_pattern(ptr, 8192, 3)
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


# ---- physical memory, version 2 (shareable handles of type DEFAULT or FABRIC) ----


def phys_v2_exporter(share_type, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(0) == 0
    handle, r["malloc"] = acl.rt.malloc_physical(MB2, prop_on(0), 0)
    va, r["reserve"] = acl.rt.reserve_mem_address(MB2, 0, 0, 0)
    r["map"] = acl.rt.map_mem(va, MB2, 0, handle, 0)
    r["h2d"] = put_pattern(va, 4096, 5)
    shareable, r["export"] = acl.rt.mem_export_to_shareable_handle_v2(handle, 0, share_type)
    r["shareable"] = type(shareable).__name__, len(shareable) if isinstance(shareable, bytes) else None
    _, r["import_own"] = acl.rt.mem_import_from_shareable_handle_v2(shareable, share_type, 0)
    r["set_pid"] = offer(
        to_b, from_b, shareable, lambda pid: acl.rt.mem_set_pid_to_shareable_handle_v2(shareable, share_type, [pid])
    )
    assert from_b.get(timeout=30) == "done"
    r["unmap"] = acl.rt.unmap_mem(va)
    r["free"] = acl.rt.free_physical(handle)
    r["release"] = acl.rt.release_mem_address(va)
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def phys_v2_importer(share_type, device, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(device) == 0
    shareable, r["import_unlisted"], r["tgid"] = accept(
        to_b, from_b, lambda s: acl.rt.mem_import_from_shareable_handle_v2(s, share_type, 0)
    )
    # Import flags are reserved: a non-zero one reaches the runtime, which refuses it.
    _, r["import_flags"] = acl.rt.mem_import_from_shareable_handle_v2(shareable, share_type, 1)
    handle, r["import"] = acl.rt.mem_import_from_shareable_handle_v2(shareable, share_type, 0)
    map_check_release(r, handle, device, 5, attrs=True)
    from_b.put("done")
    out.put(r)


# ---- IPC events ----


def event_creator(to_b, from_b, out):
    """pyACL flow, creator's side: an IPC event whose record waits, on its stream, for a gate (a 64-bit
    word of device memory that `value_write` opens), so that the opener sees it not ready, then ready."""
    r = {}
    assert acl.rt.set_device(0) == 0
    stream, r["stream"] = acl.rt.create_stream()
    other, _ = acl.rt.create_stream()
    gate, r["malloc"] = acl.rt.malloc(64, acl.ACL_MEM_MALLOC_HUGE_FIRST)
    r["memset"] = acl.rt.memset(gate, 64, 0, 64)
    event, r["create"] = acl.rt.create_event_ex_with_flag(acl.ACL_EVENT_IPC)
    handle, r["export"] = acl.rt.ipc_get_event_handle(event)
    r["handle"] = type(handle).__name__, len(handle)
    r["export_again_same"] = acl.rt.ipc_get_event_handle(event) == (handle, 0)
    _, r["open_own"] = acl.rt.ipc_open_event_handle(handle)
    r["value_wait"] = acl.rt.value_wait(gate, 1, acl.ACL_STREAM_WAIT_VALUE_EQ, stream)
    r["record"] = acl.rt.record_event(event, stream)
    r["status_gated"] = acl.rt.query_event_status(event)
    to_b.put(handle)
    r["b_saw_gated"] = from_b.get(timeout=30)
    r["value_write"] = acl.rt.value_write(gate, 1, 0, other)
    r["sync_other"] = acl.rt.synchronize_stream(other)
    r["sync_event"] = acl.rt.synchronize_event(event)
    r["status_open"] = acl.rt.query_event_status(event)
    to_b.put("gate open")
    assert from_b.get(timeout=30) == "done"
    _, r["elapsed"] = acl.rt.event_elapsed_time(event, event)  # IPC events record no time
    r["destroy"] = acl.rt.destroy_event(event)
    r["free"] = acl.rt.free(gate)
    r["destroy_streams"] = (acl.rt.destroy_stream(stream), acl.rt.destroy_stream(other))
    r["reset"] = acl.rt.reset_device(0)
    out.put(r)


def event_opener(device, to_b, from_b, out):
    r = {}
    assert acl.rt.set_device(device) == 0
    handle = to_b.get(timeout=30)
    _, r["open_short"] = acl.rt.ipc_open_event_handle(handle[:63])
    event, r["open"] = acl.rt.ipc_open_event_handle(handle)
    r["status_gated"] = acl.rt.query_event_status(event)
    _, r["export_opened"] = acl.rt.ipc_get_event_handle(event)  # the creator exports, not an opener
    from_b.put(r["status_gated"])
    assert to_b.get(timeout=30) == "gate open"
    r["sync"] = acl.rt.synchronize_event(event)
    r["status_open"] = acl.rt.query_event_status(event)
    # Either side records: a record here, waited for on a stream of ours.
    stream, _ = acl.rt.create_stream()
    waiter, _ = acl.rt.create_stream()
    r["record"] = acl.rt.record_event(event, stream)
    r["stream_wait"] = acl.rt.stream_wait_event(waiter, event)
    r["sync_streams"] = (acl.rt.synchronize_stream(stream), acl.rt.synchronize_stream(waiter))
    r["status_recorded"] = acl.rt.query_event_status(event)
    r["destroy_streams"] = (acl.rt.destroy_stream(stream), acl.rt.destroy_stream(waiter))
    r["destroy"] = acl.rt.destroy_event(event)
    r["reset"] = acl.rt.reset_device(device)
    from_b.put("done")
    out.put(r)


def event_open_high_level(handle, device, out):
    """The safe API in a process that did not create the event: open (by bytes and by hex), signal."""
    r = {}
    with aclshm.Event.open(handle, device) as e, aclshm.Event.open(handle.hex(), device) as again:
        r["ipc"], r["device"] = e.is_ipc, e.device
        try:
            e.export()
            r["export"] = None
        except aclshm.NotPermittedError as x:
            r["export"] = type(x).__name__
        e.signal()
        r["complete"] = e.is_complete() and again.is_complete()
    try:
        e.is_complete()
        r["closed"] = None
    except aclshm.ClosedError as x:
        r["closed"] = type(x).__name__
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


def kv_pinner(desc, block, cmds, acks, out):
    """Pin `block`, say so, unpin it when told."""
    with aclshm.KvMirror(desc, 0) as kv:
        kv.pin(block)
        acks.put("pinned")
        assert cmds.get(timeout=60) == "unpin"
        kv.unpin(block)
    out.put("done")


# ---- sleep mode: a worker while its owner's pool sleeps and wakes ----


def sleep_worker(kind, desc, ref, n, seed, cmds, acks, out):
    """Attach (a `Mirror` for kind "pool", ref an allocation descriptor; a `KvMirror` for "kv", ref a
    block) on device 1 and read `pattern(n, seed)` through the local pointer with `acl.rt.memcpy`; once
    the owner says the pool sleeps, try the pointer and a copy; once it says the pool woke, read the bytes
    again through the same pointer, and write a reply at offset 0 with the safe API."""
    r = {}
    assert acl.rt.set_device(1) == 0
    mirror = aclshm.KvMirror if kind == "kv" else aclshm.Mirror
    with mirror(desc, 1) as m:
        ptr = m.ptr(ref)
        r["awake_ret"], r["awake_ok"] = check_pattern(ptr, n, seed)
        # A KV worker also holds a pin across the sleep: its copies are refused meanwhile, not its pin.
        pinned = m.pinned([ref]) if kind == "kv" else None
        acks.put("attached")
        assert cmds.get(timeout=60) == "asleep"
        calls = [("ptr", lambda: m.ptr(ref)), ("read", lambda: m.read(ref, 16))]
        if pinned is not None:
            calls.append(("pinned_read", lambda: pinned.read(0, 16)))
            calls.append(("pin", lambda: m.pinned([ref])))
        for what, call in calls:
            try:
                call()
                r[what + "_asleep"] = None
            except aclshm.AsleepError as e:
                r[what + "_asleep"] = (type(e).__name__, e.kind)
        r["chunks_asleep"] = m.stats()["chunks"]
        acks.put("checked")
        assert cmds.get(timeout=60) == "awake"
        r["same_ptr"] = m.ptr(ref) == ptr
        r["woken_ret"], r["woken_ok"] = check_pattern(ptr, n, seed)
        r["chunks_awake"] = m.stats()["chunks"]
        if pinned is not None:
            r["pins_kept"] = m.pins(ref)
            r["pinned_read_woken"] = pinned.read(0) == pattern(n, seed) and pinned.ptrs == [ptr]
            pinned.release()
        m.write(ref, b"worker was here")
    r["reset"] = acl.rt.reset_device(1)
    out.put(r)
