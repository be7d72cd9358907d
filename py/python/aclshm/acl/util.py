"""``acl.util``: Python buffers and host pointers (``bytes_to_ptr``, ``numpy_to_ptr``,
``numpy_contiguous_to_ptr``, ``ptr_to_bytes``)."""

from .._aclshm import _acl_util as _native

__all__ = sorted(n for n in dir(_native) if not n.startswith("_"))
globals().update({n: getattr(_native, n) for n in __all__})
