"""The exceptions aclshm raises: one class per kind of failure of the Rust library's ``aclshm::Error``.

Every exception is an :class:`Error` and carries:

* ``kind``: the Rust variant (``"Acl"``, ``"OutOfMemory"``, ...);
* ``code`` and ``name``: the ACL status and its name (``507899``, ``"ACL_ERROR_RT_DRV_INTERNAL_ERROR"``)
  when a runtime call failed, else ``None`` (for :class:`DeferredError`, those of the first inner error
  that has one);
* ``call``: the ACL function that failed (:class:`AclError`, :class:`UnsupportedError`);
* the variant's fields where it has some (``offset``, ``len``, ``id``, ``generation``, ...).

Where a builtin means the same, the class also derives from it: ``InvalidArgumentError`` is a
``ValueError``, ``OutOfMemoryError`` a ``MemoryError``, ``NotPermittedError`` a ``PermissionError``,
``TimeoutError`` the builtin ``TimeoutError``.
"""

import builtins
from typing import List, Optional

__all__ = [
    "Error",
    "AclError",
    "UnsupportedError",
    "BackendError",
    "IoError",
    "InvalidArgumentError",
    "MisalignedError",
    "OutOfMemoryError",
    "NotAllocatedError",
    "WrongPoolError",
    "NotPermittedError",
    "ProtocolError",
    "RefusedError",
    "BadDescriptorError",
    "StaleDescriptorError",
    "TimeoutError",
    "StaleBlockError",
    "NotPinnedError",
    "NotSharedError",
    "ClosedError",
    "DeferredError",
    "AsleepError",
]


class Error(Exception):
    """Base class of everything aclshm raises."""

    kind: str = "Error"
    code: Optional[int] = None
    name: Optional[str] = None
    call: Optional[str] = None

    def __str__(self) -> str:
        return self.args[0] if self.args else self.kind


class AclError(Error):
    """A runtime call returned an error status: ``code``, ``name`` and ``call`` say which."""


class UnsupportedError(Error):
    """The loaded runtime lacks the function (an older CANN release): ``call`` names it."""


class BackendError(Error):
    """No ACL runtime could be set up (``ACLSHM_BACKEND`` / ``ACLSHM_ACL_LIB``, or the installation)."""


class InvalidArgumentError(Error, ValueError):
    """An argument was refused before any runtime call."""


class MisalignedError(InvalidArgumentError):
    """A size or alignment is not a multiple of what it must be (``what``, ``value``, ``align``)."""


class OutOfMemoryError(Error, MemoryError):
    """The device or the pool's range has no room, even after giving back free chunks (``requested``)."""


class NotAllocatedError(Error):
    """What was freed or used is not a live allocation (freed already?): ``pool``, ``offset``, ``len``."""


class WrongPoolError(Error):
    """A handle of one pool was given to another (``expected``, ``found``)."""


class NotPermittedError(Error, PermissionError):
    """The runtime's sharing rules forbid this (import in the exporting process, a second export, ...)."""


class ProtocolError(Error):
    """A rendezvous peer or a shared table broke the protocol."""


class RefusedError(Error):
    """The pool's owner turned this worker away."""


class BadDescriptorError(Error, ValueError):
    """A descriptor is malformed, of another pool, out of bounds, or from the future."""


class StaleDescriptorError(Error):
    """A descriptor's memory was freed and given back since it was made (``offset``, ``len``)."""


class TimeoutError(Error, builtins.TimeoutError):
    """A wait ran out of time."""


class StaleBlockError(Error):
    """A KV block reference names a block freed since (``id``, ``generation``)."""


class NotPinnedError(Error):
    """An unpin of a block this worker does not pin (``id``)."""


class NotSharedError(Error):
    """The pool is not shared (call ``share()`` first)."""


class ClosedError(Error):
    """The object was closed."""


class DeferredError(Error):
    """Earlier releases failed (reported by the next call): ``errors`` lists them."""

    errors: List[Error] = []


class AsleepError(Error):
    """The pool is asleep (``Pool.sleep``, ``KvPool.sleep``): nothing can be allocated from it, and its
    sleeping memory cannot be reached (copies, a mirror's ``ptr``) until ``wake_up``. Addresses,
    allocations, blocks and descriptors stay valid."""


class IoError(Error, OSError):
    """An operating-system call failed (a shared file, a socket, a directory): the message says what was
    being done and the system's reason (a full ``/dev/shm``, too many open files, a permission)."""
