"""The four sub-registers of a site: global, user, connection and page.

A sub-register receives the calls that carry ``register_name=`` and are not
site-level methods. Every public method here is callable remotely, so
helpers are private. The objects hold no state: items, data, datachanges
and locks live in the site store (see ``state.py``).
"""

import logging

from . import lifecycle, maintenance
from .constants import INDEX_PAGES_BY_TABLE, LOCK_EXPIRY_SECONDS
from .datachange import DataChange
from .datatree import DataTree
from .filters import item_matches, parse_filters
from .ping import as_timestamp, refresh_item
from .state import atomic, copy_value, walk_nodes

__all__ = ["ItemRegister", "GlobalRegister", "UserRegister", "ConnectionRegister", "PageRegister",
           "REGISTER_CLASSES"]

log = logging.getLogger(__name__)

# Fields that identify an item and that update_item must not change.
_IDENTITY_FIELDS = ("register_item_id", "register_name")
# Fields that update_item maintains indexes for.
_INDEXED_FIELDS = ("user", "connection_id", "subscribed_tables")


class ItemRegister:
    """Methods shared by the four sub-registers (called with ``register_name=``)."""

    def __init__(self, state, register_name):
        self._state = state
        self._name = register_name

    def _get(self, register_item_id):
        return self._state.store.get_item(self._name, register_item_id)

    def _put(self, register_item_id, item):
        self._state.store.put_item(self._name, register_item_id, item)

    # -- items

    def exists(self, register_item_id):
        return self._get(register_item_id) is not None

    def keys(self):
        return self._state.store.item_ids(self._name)

    def items(self, include_data=False):
        return [
            (item_id, self._state.public_item(self._name, item, include_data))
            for item_id, item in self._state.store.items(self._name).items()
        ]

    def values(self, include_data=False):
        return [self._state.public_item(self._name, item, include_data)
                for item in self._state.store.items(self._name).values()]

    @atomic
    def update_item(self, register_item_id, upddict=None):
        """Merge ``upddict`` into the item and keep the indexes in step; return the item or None.

        A ``data`` key is ignored, because item data lives in the data tree
        (write it with ``remotebag_setItem`` or ``remotebag_update``).
        """
        item = self._get(register_item_id)
        if item is None:
            return None
        if upddict:
            if not isinstance(upddict, dict):
                raise TypeError(f"invalid upddict {upddict!r}: expected a dict of item fields")
            for field in _IDENTITY_FIELDS:
                if field in upddict and upddict[field] != item[field]:
                    raise ValueError(f"cannot change {field} of {self._name} item "
                                     f"{register_item_id!r} with update_item")
            if upddict.get("datachanges_idx", item["datachanges_idx"]) < item["datachanges_idx"]:
                raise ValueError(f"cannot move datachanges_idx of {self._name} item "
                                 f"{register_item_id!r} backwards")
            updates = dict(upddict)
            updates.pop("data", None)
            if "subscribed_tables" in updates:
                updates["subscribed_tables"] = lifecycle.parse_tables(updates["subscribed_tables"])
            before = {field: item.get(field) for field in _INDEXED_FIELDS}
            item.update(updates)
            after = {field: item.get(field) for field in _INDEXED_FIELDS}
            self._put(register_item_id, item)
            lifecycle.reindex_item(self._state, self._name, register_item_id, before, after)
            item = self._get(register_item_id)
        return self._state.public_item(self._name, item)

    @atomic
    def refresh(self, register_item_id, last_user_ts=None, last_rpc_ts=None, refresh_ts=None):
        """Advance this one item's timestamps (never backwards); return the item or None."""
        item = refresh_item(
            self._state, self._name, register_item_id,
            as_timestamp(last_user_ts, "last_user_ts"),
            as_timestamp(last_rpc_ts, "last_rpc_ts"),
            as_timestamp(refresh_ts, "refresh_ts") or self._state.now(),
        )
        return None if item is None else self._state.public_item(self._name, item)

    # -- datachanges and data

    @atomic
    def set_datachange(self, register_item_id, path, value=None, attributes=None, fired=False,
                       reason=None, replace=False, delete=False):
        """Queue a change on the item; an unknown item is ignored."""
        change = DataChange(path, value, attributes=attributes, fired=fired, reason=reason,
                            change_ts=self._state.now(), delete=delete)
        self._state.queue_datachange(self._name, register_item_id, change, replace=replace)

    @atomic
    def get_datachanges(self, register_item_id, reset=False):
        """Return copies of the queued changes, or None for an unknown item.

        ``reset`` empties the queue.
        Emptying the queue keeps ``datachanges_idx``, so later changes still
        number above the offsets that pages hold.
        """
        item = self._get(register_item_id)
        if item is None:
            return None
        changes = [change.copy() for change in item["datachanges"]]
        if reset and item["datachanges"]:
            item["datachanges"] = []
            self._put(register_item_id, item)
        return changes

    @atomic
    def reset_datachanges(self, register_item_id):
        """Empty the queue (``datachanges_idx`` is kept); return the item or None."""
        item = self._get(register_item_id)
        if item is None:
            return None
        item["datachanges"] = []
        self._put(register_item_id, item)
        return self._state.public_item(self._name, item)

    @atomic
    def drop_datachanges(self, register_item_id, path):
        """Remove the queued changes whose path starts with ``path``."""
        item = self._get(register_item_id)
        if item is None:
            return
        remaining = [change for change in item["datachanges"] if not change.path.startswith(path)]
        if len(remaining) != len(item["datachanges"]):
            item["datachanges"] = remaining
            self._put(register_item_id, item)

    @atomic
    def subscribe_path(self, register_item_id, path):
        """Queue a change whenever the item's data changes at a path starting with ``path``."""
        item = self._get(register_item_id)
        if item is None:
            raise KeyError(f"cannot subscribe path {path!r}: no {self._name} item "
                           f"{register_item_id!r}")
        if not isinstance(path, str) or not path:
            raise ValueError(f"invalid path {path!r}: expected a non-empty dotted path")
        if path not in item["subscribed_paths"]:
            item["subscribed_paths"] = frozenset(item["subscribed_paths"]) | {path}
            self._put(register_item_id, item)

    def get_dbenv(self, register_item_id):
        """Return a new tree with the item's database environment.

        It merges the data's ``dbenv`` and ``rootenv`` trees, then adds every
        node carrying the attribute ``dbenv``: under the node's label when the
        attribute is True, else under the attribute's value.
        """
        tree = self._state.read_data(self._name, register_item_id)
        result = DataTree()
        if tree is None:
            return result
        for section in ("dbenv", "rootenv"):
            value = tree.getItem(section)
            if isinstance(value, DataTree):
                result.update(value)
        for node in walk_nodes(tree):
            target = node.attr.get("dbenv")
            if target:
                result.setItem(node.label if target is True else target, copy_value(node.value))
        return result

    # -- locks

    @atomic
    def lock_item(self, register_item_id, reason=None):
        """Take or re-enter the item's lock for ``reason``; return whether it was granted.

        A lock held by another reason that was last taken more than
        ``LOCK_EXPIRY_SECONDS`` ago is released while this call is rejected,
        so the caller's next attempt succeeds. The item need not exist.
        """
        store = self._state.store
        now = self._state.now()
        record = store.get_lock(self._name, register_item_id)
        if record is None:
            store.put_lock(self._name, register_item_id,
                           {"reason": reason, "count": 1, "last_lock_ts": now})
            return True
        if record["reason"] == reason:
            record["count"] += 1
            record["last_lock_ts"] = now
            store.put_lock(self._name, register_item_id, record)
            return True
        held_for = (now - record["last_lock_ts"]).total_seconds()
        if held_for > LOCK_EXPIRY_SECONDS:
            store.delete_lock(self._name, register_item_id)
            log.warning("site %r: lock on %s item %r held by %r expired after %.1f s; released",
                        self._state.sitename, self._name, register_item_id, record["reason"],
                        held_for)
        return False

    @atomic
    def unlock_item(self, register_item_id, reason=None):
        """Release one level of the lock; return False when another reason holds it, else None."""
        store = self._state.store
        record = store.get_lock(self._name, register_item_id)
        if record is None:
            return None
        if record["reason"] != reason:
            return False
        record["count"] -= 1
        if record["count"] <= 0:
            store.delete_lock(self._name, register_item_id)
        else:
            store.put_lock(self._name, register_item_id, record)
        return None


class GlobalRegister(ItemRegister):
    """The site-wide register; its single item is ``"*"``."""


class UserRegister(ItemRegister):
    """Users, keyed by user name."""


class ConnectionRegister(ItemRegister):
    """Browser connections, keyed by connection id."""


# Pages that one atomic step of notifyDbEvents or setInClientData queues changes on.
_PAGES_PER_STEP = 64


class PageRegister(ItemRegister):
    """Browser pages, with the page-only operations."""

    def _queue_on_pages(self, page_ids, build_changes, replace=False):
        """Queue the changes ``build_changes()`` returns on each page, a few pages per atomic step.

        The steps are separate so that pings of the target pages, which
        rewrite the page items, do not make one large step start over.
        """
        store = self._state.store
        for start in range(0, len(page_ids), _PAGES_PER_STEP):
            store.run_atomic(self._queue_step, page_ids[start:start + _PAGES_PER_STEP],
                             build_changes, replace)

    def _queue_step(self, page_ids, build_changes, replace):
        self._state.prefetch(items=[("page", page_id) for page_id in page_ids])
        for page_id in page_ids:
            for change in build_changes():
                self._state.queue_datachange("page", page_id, change, replace=replace)

    def _target_page_ids(self, page_id, filters):
        if filters:
            clauses = parse_filters(filters)
            return [item_id for item_id, item in self._state.store.items("page").items()
                    if clauses is None or item_matches(item, clauses)]
        return [page_id] if page_id is not None else []

    @atomic
    def setPendingContext(self, page_id, pendingContext):
        """Write ``(serverpath, value[, attributes])`` entries into the page store.

        Each serverpath is then subscribed, so later changes there reach the page.
        """
        entries = []
        for entry in pendingContext or ():
            if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
                raise ValueError(f"invalid pendingContext entry {entry!r}: expected "
                                 "(serverpath, value, attributes)")
            path, value = entry[0], entry[1]
            attributes = entry[2] if len(entry) == 3 else None
            if not isinstance(path, str) or not path:
                raise ValueError(f"invalid serverpath {path!r} in pendingContext: expected a "
                                 "dotted path")
            if attributes is not None and not isinstance(attributes, dict):
                raise ValueError(f"invalid attributes {attributes!r} for {path!r} in "
                                 "pendingContext: expected a dict or None")
            entries.append((path, value, attributes))
        if not entries or self._get(page_id) is None:
            return
        with self._state.writing_data("page", page_id) as tree:
            for path, value, attributes in entries:
                tree.setItem(path, value, _attributes=attributes)
        item = self._get(page_id)
        item["subscribed_paths"] = frozenset(item["subscribed_paths"]).union(
            path for path, _, _ in entries)
        self._put(page_id, item)

    def setInClientData(self, path, value=None, attributes=None, page_id=None, filters=None,
                        fired=False, reason=None, public=False, replace=False):
        """Queue a client data change on the pages matching ``filters``, else on ``page_id``.

        ``filters="*"`` selects every page. When ``path`` is a DataTree each
        node is one change: its path comes from the node attribute
        ``_client_path`` (else the label) and its fired flag from the
        attribute ``fired``. ``replace`` replaces an equal
        queued change. ``public`` has no effect here: the target pages come
        from ``filters`` and ``page_id`` only.
        """
        if isinstance(path, DataTree):
            changes = []
            for node in path:
                node_attributes = dict(node.attr)
                client_path = node_attributes.pop("_client_path", None) or node.label
                node_fired = bool(node_attributes.pop("fired", False))
                changes.append((client_path, node.value, node_attributes or None, node_fired))
        else:
            changes = [(path, value, attributes, fired)]
        now = self._state.now()

        def build_changes():
            return [
                DataChange(change_path, copy_value(change_value),
                           attributes=dict(change_attributes) if change_attributes else None,
                           fired=change_fired, reason=reason, change_ts=now)
                for change_path, change_value, change_attributes, change_fired in changes
            ]

        self._queue_on_pages(self._target_page_ids(page_id, filters), build_changes,
                             replace=replace)

    def filter_subscribed_tables(self, table_list):
        """Return the tables of ``table_list`` that at least one page subscribes to."""
        if isinstance(table_list, str):
            raise TypeError(f"invalid table_list {table_list!r}: expected a list of table names "
                            "such as ['pkg.table1', 'pkg.table2']")
        store = self._state.store
        return [table for table in table_list or ()
                if store.index_members(INDEX_PAGES_BY_TABLE, table)]

    def subscribed_table_page_keys(self, table):
        return sorted(self._state.store.index_members(INDEX_PAGES_BY_TABLE, table))

    def subscribed_table_page_items(self, table):
        result = []
        for page_id in self.subscribed_table_page_keys(table):
            item = self._get(page_id)
            if item is not None:
                result.append((page_id, self._state.public_item("page", item)))
        return result

    def notifyDbEvents(self, dbeventsDict=None, origin_page_id=None, dbevent_reason=None,
                       **kwargs):
        """Invalidate cached data of changed tables and queue their events on subscribed pages.

        Each subscribed page gets a change at ``gnr.dbchanges.<pkg_table>``
        whose value is the table's event list.
        """
        if dbeventsDict is not None and not isinstance(dbeventsDict, dict):
            raise TypeError(f"invalid dbeventsDict {dbeventsDict!r}: expected a dict "
                            "table -> list of events")
        store = self._state.store
        for table, events in (dbeventsDict or {}).items():
            if not events:
                continue
            store.run_atomic(self._state.invalidate_table, table)
            path = "gnr.dbchanges." + table.replace(".", "_")
            attributes = {"from_page_id": origin_page_id, "dbevent_reason": dbevent_reason}
            now = self._state.now()

            def build_changes(path=path, events=events, attributes=attributes, now=now):
                return [DataChange(path, list(events), attributes=dict(attributes), change_ts=now)]

            page_ids = sorted(store.index_members(INDEX_PAGES_BY_TABLE, table))
            self._queue_on_pages(page_ids, build_changes)

    def pageInMaintenance(self, page_id=None):
        """Return whether the page's user is locked out by maintenance; None for an unknown page."""
        item = self._get(page_id)
        if item is None:
            return None
        return maintenance.is_in_maintenance(self._state, item.get("user"))


REGISTER_CLASSES = {
    "global": GlobalRegister,
    "user": UserRegister,
    "connection": ConnectionRegister,
    "page": PageRegister,
}
