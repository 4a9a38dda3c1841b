"""SiteState: the low-level operations every site register module builds on.

It owns the item layout (the fields every item carries), the copies handed to
callers, the item data trees with their change trigger, datachange numbering
and the table cache map. Everything lives in the ``SiteStore``; SiteState only
holds the store, the clock and the site name.

Change trigger. A data tree is written only inside ``writing_data``, which
subscribes a collector to the tree for the duration of the write and then
applies the collected events:

- an inserted or updated node with attribute ``_caching_table=T`` is
  remembered under table T in the table cache map (not for the global item);
- a change at a path that starts with one of the item's ``subscribed_paths``
  queues a DataChange (reason ``serverChange``) numbered like every other
  change of the item.

Because the trigger is attached per write and never pickled, it works the
same on trees restored by ``load()`` and on stores that return fresh copies.
"""

import contextlib
import copy
import functools
import itertools
import json
import logging

from .constants import (
    INDEX_ITEM_TABLE_CACHE,
    INDEX_TABLE_CACHE,
    META_KIND_SUBSCRIPTION_MARKS,
    meta_name,
)
from .datachange import DataChange
from .datatree import DataTree

__all__ = ["SiteState", "atomic", "item_copy", "walk_nodes"]

log = logging.getLogger(__name__)

SERVER_CHANGE_REASON = "serverChange"

# Pages whose route (connection and users) is remembered for prefetching;
# beyond this many the remembered routes are all forgotten at once.
MAX_PAGE_ROUTES = 100_000

_trigger_keys = itertools.count()


def atomic(method):
    """Run a register method as one atomic read-modify-write of its site store.

    On the memory store this is a plain call. A networked store may run the
    method more than once (see ``SiteStore.run_atomic``), so a method marked
    atomic changes nothing but the store.
    """

    @functools.wraps(method)
    def run_atomically(self, *args, **kwargs):
        return self._state.store.run_atomic(method, self, *args, **kwargs)

    return run_atomically


def item_copy(item):
    """Return a copy of ``item`` that shares no mutable container with it.

    Datachanges are copied one by one; other list, set and dict values are
    copied one level deep, and frozensets (stored for memory) are handed out
    as sets, as callers expect. A ``data`` key is never part of a stored item,
    and is dropped if one got there.
    """
    result = {}
    for key, value in item.items():
        if key == "data":
            continue
        if key == "datachanges":
            value = [change.copy() for change in value]
        elif isinstance(value, (list, set, dict)):
            value = type(value)(value)
        elif isinstance(value, frozenset):
            value = set(value)
        result[key] = value
    return result


def walk_nodes(tree):
    """Yield every node of ``tree`` and of its nested trees, depth first in tree order."""
    for node in tree:
        yield node
        if isinstance(node.value, DataTree):
            yield from walk_nodes(node.value)


def copy_value(value):
    """Return ``value``, or an independent copy when it is a DataTree."""
    return value.deepcopy() if isinstance(value, DataTree) else value


def encode_member(*parts):
    """Encode several ids as one JSON array: an index key or member no other ids encode to."""
    return json.dumps(parts, separators=(",", ":"))


class SiteState:
    """Items, data trees, datachanges and the table cache map of one site."""

    def __init__(self, sitename, store, clock):
        self.sitename = sitename
        self.store = store
        self.clock = clock
        self._page_routes = {}

    def now(self):
        return self.clock()

    # -- prefetch hints (they only save round trips on a networked store)

    def prefetch(self, items=(), data=(), meta=()):
        """Pass a prefetch hint to the store when it uses them."""
        if self.store.prefetches:
            self.store.prefetch(items=items, data=data, meta=meta)

    def remember_page_route(self, page_id, connection_id, users):
        """Remember the connection and users that calls on ``page_id`` read.

        ``prefetch_pages`` uses the route to read them in the same round trip
        as the page. A stale route costs one extra round trip, never a wrong
        result, because the values are read again where they are used.
        """
        if not self.store.prefetches:
            return
        if len(self._page_routes) >= MAX_PAGE_ROUTES:
            self._page_routes.clear()
        self._page_routes[page_id] = (connection_id, tuple(user for user in users if user))

    def prefetch_pages(self, page_ids, users=(), routes=True):
        """Prefetch the items and data of pages, with their remembered connection and users.

        ``users`` adds user items, data and subscription marks to the
        prefetch; ``routes`` false leaves the remembered routes out.
        """
        if not self.store.prefetches:
            return
        items, data = [], []
        users = list(users)
        for page_id in page_ids:
            items.append(("page", page_id))
            data.append(("page", page_id))
            route = self._page_routes.get(page_id) if routes else None
            if route is not None:
                items.append(("connection", route[0]))
                users.extend(route[1])
        meta = []
        for user in dict.fromkeys(users):
            if user:
                items.append(("user", user))
                data.append(("user", user))
                meta.append(meta_name(META_KIND_SUBSCRIPTION_MARKS, user))
        self.store.prefetch(items=items, data=data, meta=meta)

    # -- items

    def create_item(self, register, item_id, data=None, **fields):
        """Store a new item with the common fields, ``fields`` and an empty data tree.

        ``data`` (a dict or a DataTree) seeds the tree through the trigger.
        Return the stored item.
        """
        item = {"register_item_id": item_id, "register_name": register, "start_ts": self.now()}
        item.update(fields)
        item["datachanges"] = []
        item["datachanges_idx"] = 0
        # Immutable and, while empty, the shared frozenset() singleton: an
        # empty set() would cost 216 bytes on every item.
        item["subscribed_paths"] = frozenset()
        self.store.put_item(register, item_id, item)
        self.store.put_data(register, item_id, DataTree())
        if data:
            with self.writing_data(register, item_id) as tree:
                tree.update(data)
        return item

    def forget_item(self, register, item_id):
        """Delete an item with its data tree, lock record and table cache entries."""
        self.forget_item_cache(register, item_id)
        self.store.delete_data(register, item_id)
        self.store.delete_lock(register, item_id)
        self.store.delete_item(register, item_id)

    def public_item(self, register, item, include_data=False):
        """Return a copy of ``item`` for a caller, with ``data`` when ``include_data`` is true.

        ``"lazy"`` is resolved by the client, so here it means no data.
        """
        result = item_copy(item)
        if include_data and include_data != "lazy":
            tree = self.store.get_data(register, item["register_item_id"])
            result["data"] = copy.deepcopy(tree) if tree is not None else DataTree()
        return result

    # -- item data

    def read_data(self, register, item_id):
        """Return the data tree of an item for reading, or None.

        On the memory store this is the live tree: callers must not change it.
        """
        return self.store.get_data(register, item_id)

    @contextlib.contextmanager
    def writing_data(self, register, item_id):
        """Yield the data tree of an item for writing, then store it and apply the trigger.

        An unknown item yields a throwaway empty tree, so writes to it are lost.
        The tree is stored and the collected events applied even when the body
        raises, because on the memory store the changes already made are live.
        Callers must not hold an item dict across this block: the trigger may
        rewrite the item.
        """
        tree = self.store.get_data(register, item_id)
        if tree is None:
            if self.store.get_item(register, item_id) is None:
                yield DataTree()
                return
            tree = DataTree()
        events = []

        def collect(event, path, node):
            events.append((event, path, node.value, dict(node.attr)))

        key = ("gnr_daemon.trigger", next(_trigger_keys))
        tree.subscribe(key, collect)
        try:
            yield tree
        finally:
            tree.unsubscribe(key)
            self.store.put_data(register, item_id, tree)
            if events:
                self._apply_data_events(register, item_id, events)

    def _apply_data_events(self, register, item_id, events):
        item = self.store.get_item(register, item_id)
        if item is None:
            return
        subscribed_paths = item["subscribed_paths"]
        queued = False
        for event, path, value, attributes in events:
            deleted = event == "del"
            table = attributes.get("_caching_table")
            if table and not deleted and register != "global":
                self.remember_cached_path(table, register, item_id, path)
            if subscribed_paths and any(path.startswith(prefix) for prefix in subscribed_paths):
                change = DataChange(
                    path,
                    None if deleted else copy_value(value),
                    attributes=attributes or None,
                    reason=SERVER_CHANGE_REASON,
                    change_ts=self.now(),
                    delete=deleted,
                )
                self.append_datachange(item, change)
                queued = True
        if queued:
            self.store.put_item(register, item_id, item)

    # -- datachanges

    def append_datachange(self, item, change, replace=False):
        """Number ``change`` with the item's next index and queue it; the caller puts the item.

        With ``replace`` an equal change (same path, reason and fired flag)
        already queued is removed first. The index never moves backwards.
        """
        index = item["datachanges_idx"] + 1
        item["datachanges_idx"] = index
        change.change_idx = index
        if replace:
            item["datachanges"] = [queued for queued in item["datachanges"] if queued != change]
        item["datachanges"].append(change)

    def queue_datachange(self, register, item_id, change, replace=False):
        """Queue ``change`` on an item; return False when the item is unknown."""
        item = self.store.get_item(register, item_id)
        if item is None:
            return False
        self.append_datachange(item, change, replace=replace)
        self.store.put_item(register, item_id, item)
        return True

    # -- table cache map

    def remember_cached_path(self, table, register, item_id, path):
        self.store.index_add(INDEX_TABLE_CACHE, table, encode_member(register, item_id, path))
        self.store.index_add(
            INDEX_ITEM_TABLE_CACHE, encode_member(register, item_id), encode_member(table, path)
        )

    def forget_item_cache(self, register, item_id):
        item_key = encode_member(register, item_id)
        for member in self.store.index_members(INDEX_ITEM_TABLE_CACHE, item_key):
            table, path = json.loads(member)
            cache_member = encode_member(register, item_id, path)
            self.store.index_remove(INDEX_TABLE_CACHE, table, cache_member)
            self.store.index_remove(INDEX_ITEM_TABLE_CACHE, item_key, member)

    def cached_paths(self):
        """Return the table cache map as a list of ``[table, register, item_id, path]``."""
        entries = []
        for table in self.store.index_keys(INDEX_TABLE_CACHE):
            for member in self.store.index_members(INDEX_TABLE_CACHE, table):
                entries.append([table] + json.loads(member))
        return entries

    def invalidate_table(self, table):
        """Set every remembered path of ``table`` to None and forget the table's entries."""
        by_item = {}
        for member in self.store.index_members(INDEX_TABLE_CACHE, table):
            register, item_id, path = json.loads(member)
            by_item.setdefault((register, item_id), []).append(path)
        for (register, item_id), paths in by_item.items():
            with self.writing_data(register, item_id) as tree:
                for path in paths:
                    # A node deleted since it was remembered is not created again.
                    if tree.getNode(path) is not None:
                        tree.setItem(path, None)
        # The writes above re-remember nodes that still carry _caching_table,
        # so the entries are forgotten only now.
        for member in self.store.index_members(INDEX_TABLE_CACHE, table):
            register, item_id, path = json.loads(member)
            self.store.index_remove(INDEX_TABLE_CACHE, table, member)
            self.store.index_remove(
                INDEX_ITEM_TABLE_CACHE, encode_member(register, item_id), encode_member(table, path)
            )
        log.debug("site %r: cached data of table %r invalidated in %d item(s)",
                  self.sitename, table, len(by_item))
