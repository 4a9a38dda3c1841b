"""Several operations on one item's store in one call, optionally under its lock.

``run_store_ops`` serves ``SiteRegister.store_ops``. A web worker that reads or
writes an item's data (``getItem``, ``setItem``, ...) or its datachanges
sends the whole step as one request, which can also take and release the
item's advisory lock. It replaces the sequence
``lock_item``, ``get_item``, ``remotebag_<op>``, ``unlock_item`` of separate
calls. A data operation on an unknown item returns None, as it did for a
worker that first fetched the item.

Each operation is ``(name, args, kwargs)``. The names are the DataTree
operations that ``remotebag`` allows, plus the item operations in
``ITEM_OPS``. Every name is checked before anything runs. The operations run
in order and stop at the first failure; the result has one ``(True, value)``
or ``(False, (class_name, message, traceback_text, builtin_base))`` per
operation that ran, as the daemon's ``batch`` call reports.
"""

import logging

from ..errors import MethodNotFound, StoreError, describe_exception
from .remotebag import ALLOWED_OPS as DATA_OPS
from .remotebag import RemoteBag

__all__ = ["ITEM_OPS", "STORE_OPS", "MAX_STORE_OPS", "run_store_ops"]

log = logging.getLogger(__name__)

#: Item operations: the sub-register methods of the same name, and get_item.
ITEM_OPS = frozenset({
    "get_item", "set_datachange", "drop_datachanges", "reset_datachanges", "subscribe_path",
})
STORE_OPS = DATA_OPS | ITEM_OPS

#: Most operations one call may carry.
MAX_STORE_OPS = 1000


def _check_ops(ops):
    """Return ``ops`` as a list of ``(name, args, kwargs)`` or raise naming the bad entry."""
    if not isinstance(ops, (list, tuple)):
        raise ValueError(f"invalid ops: expected a list of (name, args, kwargs), got "
                         f"{type(ops).__name__}")
    if len(ops) > MAX_STORE_OPS:
        raise ValueError(f"invalid ops: {len(ops)} operations, at most {MAX_STORE_OPS} "
                         "per call")
    checked = []
    for index, entry in enumerate(ops):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise ValueError(f"invalid operation {index}: expected (name, args, kwargs)")
        name, args, kwargs = entry
        if not isinstance(name, str) or name not in STORE_OPS:
            raise MethodNotFound(
                f"store operation {name!r} is not allowed; allowed operations are "
                f"{', '.join(sorted(STORE_OPS))}"
            )
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise ValueError(f"invalid operation {index} ({name}): args must be a list or "
                             "tuple and kwargs a dict")
        if any(not isinstance(key, str) or not key.isidentifier() or key.startswith("_")
               for key in kwargs):
            raise ValueError(f"invalid operation {index} ({name}): keyword names must be "
                             "identifiers that do not start with '_'")
        checked.append((name, tuple(args), dict(kwargs)))
    return checked


def _run_one(state, register, item_id, name, args, kwargs, exists):
    if name == "get_item":
        item = state.store.get_item(register._name, item_id)
        return None if item is None else state.public_item(register._name, item)
    if name in ITEM_OPS:
        return getattr(register, name)(item_id, *args, **kwargs)
    if not exists:
        return None
    return getattr(RemoteBag(state, register._name, item_id), name)(*args, **kwargs)


def run_store_ops(state, register, item_id, ops, lock_reason=None, acquire=False,
                  release=False):
    """Run ``ops`` on one item of ``register`` (a sub-register); return ``(granted, results)``.

    With ``acquire`` the item's lock is taken for ``lock_reason`` first. When
    it is not granted nothing runs and the result is ``(False, [])``. With
    ``release`` one level of the lock is released after the operations, also
    when one of them failed. Data operations on an unknown item return None
    without running. A write changes the live store, so the item's change
    trigger fires as for ``remotebag_<op>`` calls. A StoreError is raised,
    not reported as an operation's result, so that the caller's atomic
    wrapper can retry or fail the whole call.
    """
    checked = _check_ops(ops)
    if (acquire or release) and lock_reason is None:
        raise ValueError("store_ops with acquire or release needs a lock_reason")
    if acquire and not register.lock_item(item_id, reason=lock_reason):
        return False, []

    results = []
    try:
        for name, args, kwargs in checked:
            # Checked per operation: an earlier one (reset, a write) cannot
            # create or drop the item, but the check is cheap and exact.
            exists = state.store.get_item(register._name, item_id) is not None
            try:
                value = _run_one(state, register, item_id, name, args, kwargs, exists)
            except StoreError:
                # The store failed or must retry the whole call (a conflict on
                # a networked store): that is not a result of this operation.
                raise
            except Exception as exc:
                log.debug("store_ops %s on %s item %r failed: %s", name, register._name,
                          item_id, exc)
                results.append((False, describe_exception(exc)))
                break
            results.append((True, value))
    finally:
        if release:
            register.unlock_item(item_id, reason=lock_reason)
    return True, results
