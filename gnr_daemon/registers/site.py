"""SiteRegister: the remote API of one site.

Every public method of ``SiteRegister`` is callable remotely by name, so the
class body is the site-level API and nothing else. Helpers start with ``_``.
``_route`` sends two kinds of calls elsewhere. A call that carries
``register_name=`` and names no site-level method goes to one of the four
sub-registers (``items.py``). A ``remotebag_<op>`` call goes to one item's
data tree (``remotebag.py``).

The register keeps no state in its attributes beyond its configuration
(site name, storage path, clock): items, data, indexes, locks and meta values
live in the ``SiteStore``. Each method delegates to the module that owns the
concept (lifecycle, ping, subscriptions, cleanup, persistence, ...).

The daemon calls these private hooks: ``_route(name, kwargs)``,
``_dump()``, ``_load()``, ``_info()``, ``_close()`` and
``_set_storage_path(storage_path)``.
"""

import copy
import inspect
import logging
import os
import types
from datetime import datetime

from ..errors import ConfigurationError, MethodNotFound, StoreError
from . import cleanup as cleanup_module
from . import lifecycle, mailboxes, maintenance, persistence, ping, storeops, subscriptions
from .constants import (
    META_CLEANUP_EVICTIONS,
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_CONNECTION_MAX_AGE,
    DEFAULT_GUEST_CONNECTION_MAX_AGE,
    DEFAULT_PAGE_MAX_AGE,
    GLOBAL_ITEM_ID,
    INDEX_CONNECTIONS_BY_USER,
    INDEX_PAGES_BY_CONNECTION,
    INDEX_PAGES_BY_TABLE,
    INDEX_PAGES_BY_USER,
    LOCK_EXPIRY_SECONDS,
    META_CREATED_TS,
    PROCESS_SELFDESTROY_TIMEOUT,
    REGISTER_NAMES,
)
from .datatree import DataTree
from .filters import item_matches, parse_filters
from .items import REGISTER_CLASSES
from .remotebag import RemoteBag, check_op
from .state import SiteState, atomic

__all__ = [
    "SiteRegister",
    "DEFAULT_CLEANUP_INTERVAL",
    "DEFAULT_PAGE_MAX_AGE",
    "DEFAULT_GUEST_CONNECTION_MAX_AGE",
    "DEFAULT_CONNECTION_MAX_AGE",
    "LOCK_EXPIRY_SECONDS",
    "PROCESS_SELFDESTROY_TIMEOUT",
]

log = logging.getLogger(__name__)

REMOTEBAG_PREFIX = "remotebag_"

# Names defined both on SiteRegister and on the sub-registers: with
# register_name= the call goes to the sub-register's single-item version.
_SUB_REGISTER_FIRST = frozenset({"refresh"})


def _defines_method(cls, name):
    return not name.startswith("_") and isinstance(
        inspect.getattr_static(cls, name, None), types.FunctionType
    )


def _check_register_name(register_name, argument="register_name"):
    if register_name not in REGISTER_NAMES:
        raise ValueError(f"invalid {argument} {register_name!r}: expected one of "
                         f"{', '.join(REGISTER_NAMES)}")


class SiteRegister:
    """Users, connections, pages and the global item of one site, with the site's remote API."""

    def __init__(self, sitename, site_store, storage_path=None, clock=None):
        self._sitename = sitename
        self._storage_path = storage_path
        self._state = SiteState(sitename, site_store, clock or datetime.now)
        self._registers = {
            name: REGISTER_CLASSES[name](self._state, name) for name in REGISTER_NAMES
        }
        site_store.run_atomic(self._ensure_site_items)

    def _ensure_site_items(self):
        store = self._state.store
        if store.get_meta(META_CREATED_TS) is None:
            store.put_meta(META_CREATED_TS, self._state.now())
        if store.get_item("global", GLOBAL_ITEM_ID) is None:
            self._state.create_item("global", GLOBAL_ITEM_ID)

    # -- hooks for the daemon (private: never callable remotely)

    def _route(self, name, kwargs):
        """Return ``(target, name)`` for a call that a sub-register or an item tree serves.

        Return None for a call the register itself serves or that nothing serves.
        ``kwargs`` loses the routing arguments it carried.
        """
        if name.startswith(REMOTEBAG_PREFIX):
            return self._route_remotebag(name[len(REMOTEBAG_PREFIX):], kwargs)
        register_name = kwargs.get("register_name")
        if _defines_method(SiteRegister, name) and (
            register_name is None or name not in _SUB_REGISTER_FIRST
        ):
            return None
        if register_name is None:
            if any(_defines_method(cls, name) for cls in REGISTER_CLASSES.values()):
                raise MethodNotFound(f"method {name!r} works on one register: call it with "
                                     f"register_name set to one of {', '.join(REGISTER_NAMES)}")
            return None
        _check_register_name(register_name)
        del kwargs["register_name"]
        return self._registers[register_name], name

    def _route_remotebag(self, op, kwargs):
        check_op(op)
        register_name = kwargs.pop("_siteregister_register_name", None)
        item_id = kwargs.pop("_siteregister_register_item_id", None)
        subpath = kwargs.pop("_pyrosubbag", None)
        _check_register_name(register_name, "_siteregister_register_name")
        return RemoteBag(self._state, register_name, item_id, subpath), op

    def _set_storage_path(self, storage_path):
        self._storage_path = storage_path

    def _info(self):
        """Return the site's name, storage path, counters and start time.

        The daemon calls this while it stops a site, so a store that cannot
        be reached gives None counters and start time instead of an error.
        """
        try:
            counters = self.counters()
            start_ts = self._state.store.get_meta(META_CREATED_TS)
        except StoreError as error:
            log.warning("site %r: counters not read: %s", self._sitename, error)
            counters = start_ts = None
        return {
            "sitename": self._sitename,
            "storage_path": self._storage_path,
            "counters": counters,
            "start_ts": start_ts,
        }

    def _cleanup_evictions(self):
        """Return the cumulative eviction counts, ``{register name: count}``."""
        return dict(self._state.store.get_meta(META_CLEANUP_EVICTIONS) or {})

    def _cleanup_interval(self):
        """Return the configured pull-all cleanup interval, in seconds."""
        return cleanup_module.current_config(self._state)["interval"]

    def _close(self):
        # Nothing runs in the background: the daemon drives cleanup() itself.
        log.debug("site %r: register closed", self._sitename)

    def _dump(self):
        if not self._storage_path:
            raise ConfigurationError(
                f"site {self._sitename!r} has no storage path, so its state cannot be dumped; "
                "register the site with storage_path set"
            )
        payload = self._state.store.run_atomic(persistence.build_payload, self._state)
        persistence.write_dump(self._storage_path, payload)
        log.info("site %r: state dumped to %s", self._sitename, self._storage_path)

    def _load(self):
        path = self._storage_path
        if not path:
            log.debug("site %r: no storage path, nothing to load", self._sitename)
            return False
        try:
            payload = persistence.read_dump(path)
            self._state.store.run_atomic(self._restore, payload)
        except FileNotFoundError:
            log.debug("site %r: no dump file at %s", self._sitename, path)
            return False
        except (persistence.InvalidDump, OSError) as error:
            log.warning("site %r: dump file %s not loaded: %s", self._sitename, path, error)
            return False
        try:
            os.replace(path, persistence.loaded_path(path))
        except OSError as error:
            # The state is loaded; only the guard against a second restore is missing.
            log.error("site %r: state loaded from %s but the file could not be renamed to %s: %s",
                      self._sitename, path, persistence.loaded_path(path), error)
        log.info("site %r: state restored from %s", self._sitename, path)
        return True

    def _restore(self, payload):
        persistence.restore(self._state, payload)
        self._ensure_site_items()

    # -- lifecycle and configuration

    @atomic
    def setConfiguration(self, cleanup=None):
        """Set the cleanup settings (seconds); missing keys take their defaults."""
        cleanup_module.configure(self._state, cleanup)

    def on_site_stop(self):
        log.info("site %r: the web site reported that it stopped", self._sitename)

    def on_reloader_restart(self):
        log.debug("site %r: the web site reloaded its code", self._sitename)

    def stop(self):
        """Ignore a site-scoped stop: stopping the daemon is a daemon-level call."""
        log.info("site %r: site-scoped stop ignored; use the daemon's stop or "
                 "siteregister_stop", self._sitename)

    @atomic
    def checkCachedTables(self, table):
        """Set the cached data of ``table`` to None in every page, connection and user store."""
        self._state.invalidate_table(table)

    def counters(self):
        store = self._state.store
        return {
            "users": store.count_items("user"),
            "connections": store.count_items("connection"),
            "pages": store.count_items("page"),
        }

    # -- generic item access

    def _public(self, register, item, include_data=None):
        return self._state.public_item(register, item, include_data)

    def _items_by_ids(self, register, item_ids, include_data=None):
        items = self._state.store.get_items(register, sorted(item_ids))
        return [self._public(register, item, include_data) for item in items.values()]

    def get_item(self, register_item_id, include_data=False, register_name=None):
        """Return a copy of the item, or None.

        Without ``register_name`` the registers are searched in the order
        page, connection, user, global.
        """
        if register_name is not None:
            _check_register_name(register_name)
        for name in (register_name,) if register_name else REGISTER_NAMES:
            item = self._state.store.get_item(name, register_item_id)
            if item is not None:
                return self._public(name, item, include_data)
        return None

    @atomic
    def store_ops(self, register_name, register_item_id, ops, lock_reason=None, acquire=False,
                  release=False):
        """Run data and datachange operations on one item in one call; return ``(granted, results)``.

        ``ops`` is a list of ``(name, args, kwargs)``; see ``storeops.py`` for
        the allowed names, the optional lock taken and released around them,
        and the result format.
        """
        _check_register_name(register_name)
        return storeops.run_store_ops(self._state, self._registers[register_name],
                                      register_item_id, ops, lock_reason=lock_reason,
                                      acquire=acquire, release=release)

    def get_item_data(self, register_item_id, register_name=None):
        """Return a copy of the item's data tree; an unknown item gives an empty tree."""
        if register_name is not None:
            _check_register_name(register_name)
        for name in (register_name,) if register_name else REGISTER_NAMES:
            tree = self._state.read_data(name, register_item_id)
            if tree is not None:
                return copy.deepcopy(tree)
        return DataTree()

    # -- users

    @atomic
    def new_user(self, user=None, user_tags=None, user_id=None, user_name=None, avatar_extra=None):
        item = lifecycle.create_user(self._state, user, user_tags=user_tags, user_id=user_id,
                                     user_name=user_name, avatar_extra=avatar_extra)
        return self._public("user", item)

    def user(self, user):
        item = self._state.store.get_item("user", user)
        return None if item is None else self._public("user", item)

    def users(self, include_data=None):
        return [self._public("user", item, include_data)
                for item in self._state.store.items("user").values()]

    @atomic
    def drop_user(self, user):
        lifecycle.drop_user(self._state, user)

    @atomic
    def drop_connections(self, user):
        for connection_id in self.user_connection_keys(user):
            lifecycle.drop_connection(self._state, connection_id)

    # -- connections

    @atomic
    def new_connection(self, connection_id, connection_name=None, user=None, user_id=None,
                       user_name=None, user_tags=None, user_ip=None, user_agent=None,
                       browser_name=None, avatar_extra=None, electron_static=None):
        self._state.prefetch(items=[("connection", connection_id), ("user", user)])
        item = lifecycle.create_connection(
            self._state, connection_id, connection_name=connection_name, user=user,
            user_id=user_id, user_name=user_name, user_tags=user_tags, user_ip=user_ip,
            user_agent=user_agent, browser_name=browser_name, avatar_extra=avatar_extra,
            electron_static=electron_static,
        )
        return self._public("connection", item)

    def connection(self, connection_id):
        item = self._state.store.get_item("connection", connection_id)
        return None if item is None else self._public("connection", item)

    def connections(self, user=None, include_data=None):
        if user is not None:
            return self._items_by_ids("connection", self.user_connection_keys(user), include_data)
        return [self._public("connection", item, include_data)
                for item in self._state.store.items("connection").values()]

    def user_connection_keys(self, user):
        return sorted(self._state.store.index_members(INDEX_CONNECTIONS_BY_USER, user))

    def user_connection_items(self, user):
        return [(item["register_item_id"], item) for item in self.user_connections(user)]

    def user_connections(self, user):
        return self._items_by_ids("connection", self.user_connection_keys(user))

    @atomic
    def change_connection_user(self, connection_id, user=None, user_tags=None, user_id=None,
                               user_name=None, avatar_extra=None):
        """Move a connection and its pages to ``user`` (login); an unknown connection is ignored."""
        lifecycle.change_connection_user(self._state, connection_id, user=user, user_tags=user_tags,
                                         user_id=user_id, user_name=user_name,
                                         avatar_extra=avatar_extra)

    @atomic
    def drop_connection(self, connection_id, cascade=None):
        lifecycle.drop_connection(self._state, connection_id, cascade=bool(cascade))

    @atomic
    def drop_pages(self, connection_id):
        for page_id in self.connection_page_keys(connection_id):
            lifecycle.drop_page(self._state, page_id)

    # -- pages

    @atomic
    def new_page(self, page_id, pagename=None, connection_id=None, subscribed_tables=None,
                 user=None, user_ip=None, user_agent=None, relative_url=None, data=None):
        """Create a page and return it.

        ``subscribed_tables`` is a comma-separated string and ``data`` seeds the page store.
        """
        self._state.prefetch(items=[("page", page_id)], data=[("page", page_id)])
        item = lifecycle.create_page(
            self._state, page_id, pagename=pagename, connection_id=connection_id,
            subscribed_tables=subscribed_tables, user=user, user_ip=user_ip,
            user_agent=user_agent, relative_url=relative_url, data=data,
        )
        return self._public("page", item)

    def page(self, page_id):
        item = self._state.store.get_item("page", page_id)
        return None if item is None else self._public("page", item)

    def pages(self, connection_id=None, user=None, index_name=None, filters=None,
              include_data=None):
        """Return the pages that match every given restriction.

        ``index_name`` restricts to pages subscribed to that table. ``filters``
        is ``"field:regex AND field:regex ..."`` (see ``filters.py``).
        """
        clauses = parse_filters(filters)
        store = self._state.store
        restrictions = [
            (INDEX_PAGES_BY_TABLE, index_name),
            (INDEX_PAGES_BY_CONNECTION, connection_id),
            (INDEX_PAGES_BY_USER, user),
        ]
        page_ids = None
        for index, key in restrictions:
            if key is not None and key != "":
                members = store.index_members(index, key)
                page_ids = members if page_ids is None else page_ids & members
        if page_ids is None:
            candidates = store.items("page").values()
        else:
            candidates = store.get_items("page", sorted(page_ids)).values()
        return [self._public("page", item, include_data) for item in candidates
                if clauses is None or item_matches(item, clauses)]

    def connection_page_keys(self, connection_id):
        return sorted(self._state.store.index_members(INDEX_PAGES_BY_CONNECTION, connection_id))

    def connection_page_items(self, connection_id):
        return [(item["register_item_id"], item) for item in self.connection_pages(connection_id)]

    def connection_pages(self, connection_id):
        return self._items_by_ids("page", self.connection_page_keys(connection_id))

    def subscribed_table_pages(self, table=None):
        if table is None:
            return []
        page_ids = self._state.store.index_members(INDEX_PAGES_BY_TABLE, table)
        return self._items_by_ids("page", page_ids)

    @atomic
    def drop_page(self, page_id, cascade=None):
        """Drop a page; with ``cascade`` also its connection once that has no pages left."""
        lifecycle.drop_page(self._state, page_id, cascade=bool(cascade))

    # -- refresh, ping and datachanges

    @atomic
    def refresh(self, page_id, last_user_ts=None, last_rpc_ts=None, pageProfilers=None):
        """Refresh a page, its connection and its user; return the user item or None."""
        self._state.prefetch_pages([page_id])
        item = ping.refresh_page(self._state, page_id, last_user_ts, last_rpc_ts, pageProfilers)
        return None if item is None else self._public("user", item)

    @atomic
    def handle_ping(self, page_id=None, reason=None, _serverstore_changes=None, **kwargs):
        """Run a page's keep-alive; return the envelope tree, or False when the page is unknown.

        ``reason`` is accepted and not used.
        """
        return ping.handle_ping(self._state, page_id, _serverstore_changes, kwargs)

    @atomic
    def handle_ping_get_datachanges(self, page_id, user=None):
        """Return the page's pending changes as ``sc_<n>`` nodes, emptying its queue."""
        self._state.prefetch_pages([page_id], users=[user])
        pending = subscriptions.collect_page_changes(self._state, user, page_id)
        return ping.render_datachanges(pending)

    @atomic
    def set_serverstore_changes(self, page_id=None, datachanges=None):
        """Write browser changes (path -> typed text or value) into the page store, all or none."""
        changes = ping.decode_store_changes(datachanges, page_id)
        self._state.prefetch_pages([page_id], routes=False)
        ping.apply_store_changes(self._state, page_id, changes)

    @atomic
    def subscription_storechanges(self, user, page_id):
        """Return the page's own pending changes (emptying them), then its user-store changes."""
        self._state.prefetch_pages([page_id], users=[user])
        return subscriptions.collect_page_changes(self._state, user, page_id)

    # -- subscriptions

    @atomic
    def subscribeTable(self, page_id, table, subscribe, subscribeMode=None):
        """Add or remove a page's subscription to the database table ``table``.

        ``subscribeMode`` is accepted and not used.
        """
        lifecycle.set_table_subscription(self._state, page_id, table, subscribe)

    @atomic
    def setStoreSubscription(self, page_id, storename=None, client_path=None, active=None):
        subscriptions.set_store_subscription(self._state, page_id, storename, client_path, active)

    # -- maintenance

    @atomic
    def setMaintenance(self, status, allowed_users=None):
        """Turn maintenance on (any status but False) with optional allowed users, or off."""
        maintenance.set_maintenance(self._state, status, allowed_users)

    def isInMaintenance(self, user=None):
        return maintenance.is_in_maintenance(self._state, user)

    def allowedUsers(self):
        return maintenance.allowed_users(self._state)

    # -- inter-process commands

    @atomic
    def pendingProcessCommands(self, pid=None):
        """Return and clear the commands queued for the calling worker's ``pid``."""
        return mailboxes.pending_commands(self._state, pid)

    @atomic
    def sendProcessCommand(self, command, pid=None):
        """Queue ``command`` for worker ``pid``, or for every worker when ``pid`` is None."""
        mailboxes.send_command(self._state, command, pid)

    # -- cleanup

    def cleanup(self):
        """Evict stale pages and connections, at most once per interval.

        Return the ids of the dropped connections. Each eviction is its own
        atomic step, so a long cleanup does not hold back other calls.
        """
        return cleanup_module.run_cleanup(self._state)

    @atomic
    def claim_cleanup(self, min_gap_seconds):
        return cleanup_module.claim_cleanup(self._state, min_gap_seconds)

    @atomic
    def expire_pages(self, connection_id):
        return cleanup_module.expire_pages(self._state, connection_id)

    @atomic
    def expire_connection(self, connection_id):
        return cleanup_module.expire_connection(self._state, connection_id)

    # -- persistence

    def dump(self):
        """Write the site's state to its storage path (temporary file, fsync, rename)."""
        self._dump()

    def load(self):
        """Restore the state dumped at the storage path; return whether it was restored."""
        return self._load()
