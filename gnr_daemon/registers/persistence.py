"""Dump and restore of a site register's state to one pickle file.

Dump format, version 1: a pickle (highest protocol) of one dict::

    {
        "format": "gnr_daemon.siteregister",
        "version": 1,
        "sitename": str,
        "dumped_ts": datetime,
        "registers": {
            <"global" | "user" | "connection" | "page">: {
                "items": {item_id: item dict},   # datachanges, datachanges_idx and
                                                 # subscribed_paths included
                "data": {item_id: DataTree},
                "locks": {item_id: {"reason": ..., "count": int, "last_lock_ts": datetime}},
            },
        },
        "table_cache": [[table, register, item_id, path], ...],
    }

The file contains built-in types, date and time values, Decimal and UUID
values, DataTree and DataChange objects, and nothing else. ``read_dump``
rejects any other class (see ``SAFE_GLOBALS``). Keep that list in step with the classes
the wire protocol accepts, or values that crossed the wire cannot be restored.

Not in the dump, because the restore rebuilds them from the items and the
page stores: the secondary indexes and the user-subscription marks.

Not restored at all: the cleanup configuration, cleanup times and eviction
counts, maintenance mode, process mailboxes and page profilers. The site
sends its configuration again when it registers. A load keeps the running
register's values of all of these except the page profilers, which belong to
the replaced pages.

``write_dump`` writes a temporary file in the target's folder, flushes and
fsyncs it, then renames it over the target, so a crash mid-dump leaves the
previous dump intact.
"""

import contextlib
import io
import logging
import os
import pickle
import tempfile

from ..safepickle import DEFAULT_ALLOWED_CLASSES, current_policy
from . import lifecycle, subscriptions
from .constants import (
    META_CLEANUP_CLAIM_TS,
    META_CLEANUP_CONFIG,
    META_CLEANUP_EVICTIONS,
    META_CLEANUP_LAST_RUN,
    META_CREATED_TS,
    META_MAINTENANCE,
    META_PROCESS_MAILBOXES,
    REGISTER_NAMES,
)
from .datatree import DataTree

__all__ = [
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "SAFE_GLOBALS",
    "InvalidDump",
    "build_payload",
    "write_dump",
    "read_dump",
    "restricted_loads",
    "restore",
    "loaded_path",
]

log = logging.getLogger(__name__)

DUMP_FORMAT = "gnr_daemon.siteregister"
DUMP_VERSION = 1

#: The (module, name) globals a dump file may reference by default; the
#: daemon's unpickling policy (``--allow-class``) extends them.
SAFE_GLOBALS = DEFAULT_ALLOWED_CLASSES

# Meta values that a load keeps from the running register.
_PRESERVED_META = (
    META_CREATED_TS,
    META_CLEANUP_CONFIG,
    META_CLEANUP_LAST_RUN,
    META_CLEANUP_CLAIM_TS,
    META_CLEANUP_EVICTIONS,
    META_MAINTENANCE,
    META_PROCESS_MAILBOXES,
)


class InvalidDump(ValueError):
    """A dump file is empty, truncated, corrupt or of an unknown format."""


class _DumpUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        policy = current_policy()
        if policy.restricted and (module, name) not in policy.allowed:
            raise InvalidDump(f"the data references {module}.{name}, which is not an allowed "
                              f"class: start the daemon with --allow-class {module}.{name} if "
                              "it is trusted")
        return super().find_class(module, name)


def restricted_loads(data):
    """Unpickle ``data`` allowing only the classes of the daemon's unpickling policy.

    Raises InvalidDump when the data references any other class or function.
    The Redis store reads its values with this function too.
    """
    return _DumpUnpickler(io.BytesIO(data)).load()


# -- writing


def build_payload(state):
    """Return the dump dict of the site's current state."""
    store = state.store
    registers = {}
    for register in REGISTER_NAMES:
        items = store.items(register)
        state.prefetch(data=[(register, item_id) for item_id in items])
        data = {}
        for item_id in items:
            tree = store.get_data(register, item_id)
            if tree is not None:
                data[item_id] = tree
        registers[register] = {"items": items, "data": data, "locks": store.locks(register)}
    return {
        "format": DUMP_FORMAT,
        "version": DUMP_VERSION,
        "sitename": state.sitename,
        "dumped_ts": state.now(),
        "registers": registers,
        "table_cache": state.cached_paths(),
    }


def write_dump(path, payload):
    """Write ``payload`` to ``path`` atomically: temporary file, fsync, rename."""
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(
        dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself is durable only once the folder entry is synced.
    with contextlib.suppress(OSError):
        folder = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# -- reading


def read_dump(path):
    """Return the validated dump dict at ``path``.

    Raises FileNotFoundError when there is no file, and InvalidDump when it
    is empty, truncated, corrupt or of another format.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise InvalidDump("the file is empty")
        try:
            payload = _DumpUnpickler(handle).load()
        except InvalidDump:
            raise
        except Exception as error:
            # Truncated or corrupt pickle data can raise almost any exception
            # type (EOFError, UnpicklingError, ValueError, IndexError, ...).
            raise InvalidDump(f"the file is truncated or corrupt ({type(error).__name__}: "
                              f"{error})") from None
    _check_payload(payload)
    return payload


def _check_payload(payload):
    if not isinstance(payload, dict) or payload.get("format") != DUMP_FORMAT:
        raise InvalidDump(f"the file is not a {DUMP_FORMAT} dump")
    if payload.get("version") != DUMP_VERSION:
        raise InvalidDump(f"dump version {payload.get('version')!r} is not supported "
                          f"(this version reads {DUMP_VERSION})")
    registers = payload.get("registers")
    if not isinstance(registers, dict):
        raise InvalidDump("the dump has no registers")
    for register in REGISTER_NAMES:
        section = registers.get(register)
        if not isinstance(section, dict):
            raise InvalidDump(f"the dump has no {register} register")
        for part in ("items", "data", "locks"):
            if not isinstance(section.get(part), dict):
                raise InvalidDump(f"the {register} register of the dump has no {part} dict")
        for item_id, item in section["items"].items():
            if not isinstance(item, dict):
                raise InvalidDump(f"{register} item {item_id!r} of the dump is not a dict")
        for item_id, tree in section["data"].items():
            if not isinstance(tree, DataTree):
                raise InvalidDump(f"the data of {register} item {item_id!r} is not a DataTree")
    if not isinstance(payload.get("table_cache", []), list):
        raise InvalidDump("the dump's table_cache is not a list")


def _restored_item(state, register, item_id, item):
    """Return a copy of a dumped item with every field the registers rely on."""
    item = dict(item)
    item["register_item_id"] = item_id
    item["register_name"] = register
    item.setdefault("start_ts", state.now())
    item["datachanges"] = list(item.get("datachanges") or ())
    item["datachanges_idx"] = int(item.get("datachanges_idx") or 0)
    item["subscribed_paths"] = frozenset(item.get("subscribed_paths") or ())
    if register == "page":
        item["subscribed_tables"] = lifecycle.parse_tables(item.get("subscribed_tables"))
    return item


def restore(state, payload):
    """Replace the site's items, data and locks with those of a checked dump; rebuild the indexes.

    Raises InvalidDump before anything is changed when an item cannot be restored.
    """
    store = state.store
    try:
        restored = {
            register: {
                item_id: _restored_item(state, register, item_id, item)
                for item_id, item in payload["registers"][register]["items"].items()
            }
            for register in REGISTER_NAMES
        }
    except (TypeError, ValueError) as error:
        raise InvalidDump(f"the dump contains an invalid item ({error})") from None

    preserved = {name: store.get_meta(name) for name in _PRESERVED_META}
    store.clear()
    for name, value in preserved.items():
        if value is not None:
            store.put_meta(name, value)

    for register in REGISTER_NAMES:
        section = payload["registers"][register]
        for item_id, item in restored[register].items():
            store.put_item(register, item_id, item)
            store.put_data(register, item_id, section["data"].get(item_id) or DataTree())
        for item_id, record in section["locks"].items():
            if isinstance(record, dict):
                store.put_lock(register, item_id, dict(record))

    for register in ("connection", "page"):
        for item in restored[register].values():
            lifecycle.index_item(state, register, item)
    for entry in payload.get("table_cache", ()):
        if isinstance(entry, (list, tuple)) and len(entry) == 4:
            table, register, item_id, path = entry
            if register in restored and item_id in restored[register]:
                state.remember_cached_path(table, register, item_id, path)
    for page_id, page in restored["page"].items():
        subscriptions.rebuild_marks(state, page_id, page.get("user"))


def loaded_path(path):
    """Return the name a loaded dump is renamed to: ``<name>_loaded.pik``."""
    root, _extension = os.path.splitext(path)
    return root + "_loaded.pik"
