"""In-process store: every site's state lives in plain dicts and sets of this process.

Items, data trees and lock records are kept as given and returned as the same
objects (no copies), so a put after a change costs one assignment. Listing
methods (``items``, ``item_ids``, ``index_members``, ``locks``) return new
containers, so a caller may drop items while it iterates over a listing.
Nothing survives the process; the site register's ``dump``/``load`` covers
restarts.

``CopyingMemoryStore`` is a test aid: it deep-copies every value that goes
in or comes out, as a networked backend does, so register code that changes
a value without putting it back loses the change there too.
"""

import copy
import logging

from .base import SiteStore, Store

__all__ = ["MemoryStore", "MemorySiteStore", "CopyingMemoryStore", "CopyingMemorySiteStore"]

log = logging.getLogger(__name__)


class _Transaction:
    """Re-entrant no-op context: register code never yields between a read and a write."""

    __slots__ = ("depth",)

    def __init__(self):
        self.depth = 0

    def __enter__(self):
        self.depth += 1
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.depth -= 1
        return False


class MemorySiteStore(SiteStore):
    """The state of one site, kept in dicts keyed by register, index and meta name."""

    def __init__(self, sitename):
        self.sitename = sitename
        self._transaction = _Transaction()
        self.clear()

    # -- items

    def get_item(self, register, item_id):
        return self._items.get(register, {}).get(item_id)

    def put_item(self, register, item_id, item):
        self._items.setdefault(register, {})[item_id] = item

    def delete_item(self, register, item_id):
        self._items.get(register, {}).pop(item_id, None)

    def item_ids(self, register):
        return list(self._items.get(register, ()))

    def items(self, register):
        return dict(self._items.get(register, {}))

    def count_items(self, register):
        return len(self._items.get(register, ()))

    # -- item data

    def get_data(self, register, item_id):
        return self._data.get(register, {}).get(item_id)

    def put_data(self, register, item_id, tree):
        self._data.setdefault(register, {})[item_id] = tree

    def delete_data(self, register, item_id):
        self._data.get(register, {}).pop(item_id, None)

    # -- secondary indexes

    def index_add(self, index, key, member):
        self._indexes.setdefault(index, {}).setdefault(key, set()).add(member)

    def index_remove(self, index, key, member):
        keys = self._indexes.get(index)
        if not keys:
            return
        members = keys.get(key)
        if members is None:
            return
        members.discard(member)
        if not members:
            del keys[key]

    def index_members(self, index, key):
        return set(self._indexes.get(index, {}).get(key, ()))

    def index_keys(self, index):
        return list(self._indexes.get(index, ()))

    # -- locks

    def get_lock(self, register, item_id):
        return self._locks.get(register, {}).get(item_id)

    def put_lock(self, register, item_id, record):
        self._locks.setdefault(register, {})[item_id] = record

    def delete_lock(self, register, item_id):
        self._locks.get(register, {}).pop(item_id, None)

    def locks(self, register):
        return dict(self._locks.get(register, {}))

    # -- meta values

    def get_meta(self, name, default=None):
        return self._meta.get(name, default)

    def put_meta(self, name, value):
        self._meta[name] = value

    def delete_meta(self, name):
        self._meta.pop(name, None)

    # -- atomicity and reset

    def transaction(self):
        return self._transaction

    def run_atomic(self, function, *args, **kwargs):
        # Register code never yields between a read and a write here, so a
        # plain call is atomic.
        return function(*args, **kwargs)

    def clear(self):
        self._items = {}
        self._data = {}
        self._indexes = {}
        self._locks = {}
        self._meta = {}


class MemoryStore(Store):
    """Store backend that keeps every site in this process (URL ``memory:``)."""

    url = "memory:"
    site_store_class = MemorySiteStore

    def __init__(self):
        self._sites = {}

    def site_store(self, sitename):
        site_store = self._sites.get(sitename)
        if site_store is None:
            site_store = self._sites[sitename] = self.site_store_class(sitename)
        return site_store

    def drop_site(self, sitename):
        site_store = self._sites.pop(sitename, None)
        if site_store is not None:
            site_store.clear()

    def health(self):
        return {"ok": True, "detail": f"memory store with {len(self._sites)} site(s)"}

    def close(self):
        log.debug("memory store closed with %d site(s)", len(self._sites))
        self._sites.clear()


class CopyingMemorySiteStore(MemorySiteStore):
    """MemorySiteStore whose gets return copies and whose puts store copies."""

    def get_item(self, register, item_id):
        return copy.deepcopy(super().get_item(register, item_id))

    def put_item(self, register, item_id, item):
        super().put_item(register, item_id, copy.deepcopy(item))

    def items(self, register):
        return copy.deepcopy(super().items(register))

    def get_data(self, register, item_id):
        return copy.deepcopy(super().get_data(register, item_id))

    def put_data(self, register, item_id, tree):
        super().put_data(register, item_id, copy.deepcopy(tree))

    def get_lock(self, register, item_id):
        return copy.deepcopy(super().get_lock(register, item_id))

    def put_lock(self, register, item_id, record):
        super().put_lock(register, item_id, copy.deepcopy(record))

    def locks(self, register):
        return copy.deepcopy(super().locks(register))

    def get_meta(self, name, default=None):
        return copy.deepcopy(super().get_meta(name, default))

    def put_meta(self, name, value):
        super().put_meta(name, copy.deepcopy(value))


class CopyingMemoryStore(MemoryStore):
    """MemoryStore that copies values like a networked backend; for testing register code."""

    url = "memory:copying"
    site_store_class = CopyingMemorySiteStore
