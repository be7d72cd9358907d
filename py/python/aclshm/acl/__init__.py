"""pyACL's ``acl`` module for the subset of the ACL runtime aclshm covers.

``import aclshm.acl as acl`` where a pyACL program has ``import acl``: ``acl.init()``,
``acl.rt.malloc_physical(size, prop, 0)``, ``key, ret = acl.rt.notify_get_export_key(notify, 65, 0)``,
... take the same arguments and return the same ``(value, ret)`` tuples as pyACL's documentation says
(``ret`` 0 on success, else the aclError code). The calls run on the runtime aclshm selected: CANN on an
NPU, else the simulator.

Like pyACL, this level trusts the ints it is given (a bad host address given to ``memcpy`` is as fatal
as in C); the rest of :mod:`aclshm` is the safe API. The constants pyACL's pages give (``ACL_HBM_MEM_HUGE``,
``ACL_MEMCPY_HOST_TO_DEVICE``, ...) are attributes here too.
"""

from .._aclshm import _ACL_CONSTANTS, _acl
from . import rt, util

init = _acl.init
finalize = _acl.finalize
get_version = _acl.get_version

globals().update(_ACL_CONSTANTS)

__all__ = ["init", "finalize", "get_version", "rt", "util"] + sorted(_ACL_CONSTANTS)
