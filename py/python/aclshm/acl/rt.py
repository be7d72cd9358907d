"""``acl.rt``: devices, contexts, streams, events and IPC events, memory, virtual memory, shareable handles
(V1 and V2), IPC memory and IPC notifies, with pyACL's names, argument order and ``(value, ret)`` returns (see :mod:`aclshm.acl`)."""

from .._aclshm import _acl_rt as _native

__all__ = sorted(n for n in dir(_native) if not n.startswith("_"))
globals().update({n: getattr(_native, n) for n in __all__})
