"""Calls from a Genropy web worker to gnr_daemon: conversion, re-registration, read cache.

``RegisterCalls`` sends the calls of one site register (one domain
identifier) through a ``DaemonClient``. Every argument goes through
``to_wire`` and every result through ``from_wire``, so Genropy code gets
Bags and ClientDataChanges while the daemon receives DataTrees and
DataChanges.
When the daemon replies that the site is not registered (because it
restarted, for example), the site is registered again with its storage name
and cleanup settings and the call is sent once more. The daemon rejects
such a call before running anything, so nothing runs twice.
Other errors reach the caller unchanged: nothing is retried or turned into
None.

Read cache. Genropy reads the same global-store timestamps and page-store
values many times while it serves one request. Inside one request (the
site's ``currentRequest``, per thread), a store read (``getItem`` or ``get``
of a non-empty path) made again with the same arguments is answered from a
per-thread cache, at most ``read_cache_seconds`` after the daemon answered it.
Any call from the same thread that can write (every call not in
``READ_ONLY_METHODS``, and every store operation that is not a read) empties
that thread's cache first, so a worker always reads its own writes. A write
made by another process or thread shows up in this thread's reads at its
next request or after ``read_cache_seconds``, whichever comes first. Outside
a request (background threads, scripts) nothing is cached.
``GNR_DAEMON_GENROPY_READ_CACHE`` sets the age limit in seconds, 0 turns the
cache off.
"""

import copy
import logging
import os
import threading
import time

from ..errors import ConfigurationError, SiteNotFound, rebuild_error
from ..registers.storeops import STORE_OPS
from ._convert import from_wire, to_wire

__all__ = [
    "RegisterCalls",
    "SiteProxy",
    "DaemonProxy",
    "READ_ONLY_METHODS",
    "CACHED_READ_OPS",
    "DEFAULT_READ_CACHE_SECONDS",
    "read_cache_seconds_from_environment",
    "first_value",
]

log = logging.getLogger(__name__)

#: Default age limit of a cached store read, in seconds.
DEFAULT_READ_CACHE_SECONDS = 1.0
#: Environment variable that overrides it (0 turns the read cache off).
READ_CACHE_ENV = "GNR_DAEMON_GENROPY_READ_CACHE"

#: Store operations whose results may be served from the read cache.
CACHED_READ_OPS = frozenset({"getItem", "get"})

#: Store operations that never change anything.
STORE_READ_OPS = frozenset({
    "getItem", "get", "getNode", "getNodeByAttr", "getAttr", "keys", "values", "items",
    "digest", "asDict", "asString", "len", "contains", "equals", "get_item",
})

#: Site register methods that never change data. Every other call empties the read cache.
READ_ONLY_METHODS = frozenset({
    "get_item", "get_item_data", "page", "connection", "user", "pages", "connections",
    "users", "exists", "keys", "items", "values", "get_dbenv", "counters",
    "filter_subscribed_tables", "subscribed_table_pages", "subscribed_table_page_keys",
    "subscribed_table_page_items", "connection_page_keys", "connection_page_items",
    "connection_pages", "user_connection_keys", "user_connection_items", "user_connections",
    "isInMaintenance", "allowedUsers", "pageInMaintenance", "lock_item", "unlock_item",
})


def read_cache_seconds_from_environment(environ=None):
    """Return the read cache age limit from the environment, or the default."""
    environ = os.environ if environ is None else environ
    text = environ.get(READ_CACHE_ENV)
    if text in (None, ""):
        return DEFAULT_READ_CACHE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigurationError(f"invalid {READ_CACHE_ENV}={text!r}: expected a number of "
                                 "seconds (0 turns the read cache off)") from None
    if seconds < 0:
        raise ConfigurationError(f"invalid {READ_CACHE_ENV}={text!r}: the number of seconds "
                                 "cannot be negative")
    return seconds


def first_value(outcomes):
    """Return the value of the first ``store_call`` outcome, or raise the error it reports."""
    ok, value = outcomes[0]
    if not ok:
        raise rebuild_error(*value)
    return value


class _ThreadReadCache(threading.local):
    """Cached store reads of one thread, valid for one request object."""

    def __init__(self):
        self.scope = None
        self.entries = {}


class RegisterCalls:
    """The register of one site on gnr_daemon, as seen from a web worker.

    Any public register method is available as an attribute
    (``calls.pages(connection_id=...)``); ``store_call`` and ``remotebag_call``
    carry the store operations. ``scope`` returns the current request object
    (or None), which bounds the read cache.
    """

    def __init__(self, client, sitename, storage_name=None, cleanup=None, scope=None,
                 read_cache_seconds=DEFAULT_READ_CACHE_SECONDS):
        self.client = client
        self.sitename = sitename
        self.storage_name = storage_name
        self.cleanup = dict(cleanup) if cleanup else None
        self._scope = scope
        self.read_cache_seconds = read_cache_seconds
        self._cache = _ThreadReadCache()

    def __repr__(self):
        return f"<RegisterCalls {self.sitename!r} via {self.client!r}>"

    # registration

    def register(self):
        """Create the site's register on the daemon (idempotent) and send its cleanup settings."""
        with self.client.batch(stop_on_error=True) as batch:
            added = batch.addSiteRegister(self.sitename, storage_path=self.storage_name,
                                          autorestore=True)
            configured = batch.site(self.sitename).setConfiguration(cleanup=self.cleanup)
        for result in (added, configured):
            result.value  # reading the value of a failed call raises its error

    def _send(self, method, args, kwargs):
        args = to_wire(tuple(args))
        kwargs = to_wire(dict(kwargs))
        try:
            return self.client.call_site(self.sitename, method, args, kwargs)
        except SiteNotFound:
            log.warning("site %r is not registered on gnr_daemon at %s (the daemon restarted?): "
                        "registering it again", self.sitename, self.client.address_text)
            self.register()
            return self.client.call_site(self.sitename, method, args, kwargs)

    def call(self, method, *args, **kwargs):
        """Call a register method; arguments and result are converted."""
        if method not in READ_ONLY_METHODS:
            self.clear_read_cache()
        return from_wire(self._send(method, args, kwargs))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def remote_method(*args, **kwargs):
            return self.call(name, *args, **kwargs)

        remote_method.__name__ = name
        return remote_method

    # store operations

    def store_call(self, register_name, item_id, ops, lock_reason=None, acquire=False,
                   release=False):
        """Run ``ops`` on one item with ``store_ops``; return ``(granted, outcomes)``.

        Each op is ``(name, args, kwargs)``. ``outcomes`` has one ``(True,
        value)`` per op that ran, or ``(False, failure)`` for the op that
        failed (the last one): ``first_value`` raises that failure. A single
        cacheable read may be served from the read cache.
        """
        for name, _, _ in ops:
            if name not in STORE_OPS:
                raise AttributeError(f"{name!r} is not a store operation gnr_daemon runs; "
                                     f"allowed: {', '.join(sorted(STORE_OPS))}")
        key = None
        if len(ops) == 1 and not release:
            key = self._cache_key((register_name, item_id, None), ops[0])
            if key is not None and not acquire:
                hit, value = self._cached(key)
                if hit:
                    return True, [(True, from_wire(value))]
        if any(name not in STORE_READ_OPS for name, _, _ in ops):
            self.clear_read_cache()

        granted, outcomes = self._send("store_ops", (register_name, item_id, list(ops)),
                                       {"lock_reason": lock_reason, "acquire": acquire,
                                        "release": release})
        if key is not None and outcomes and outcomes[0][0]:
            self._remember(key, outcomes[0][1])
        return granted, [(ok, from_wire(value) if ok else value) for ok, value in outcomes]

    def remotebag_call(self, register_name, item_id, rootpath, op, args, kwargs):
        """Run one DataTree operation with ``remotebag_<op>`` on an item's data (or its subtree)."""
        key = self._cache_key((register_name, item_id, rootpath or None), (op, args, kwargs))
        if key is not None:
            hit, value = self._cached(key)
            if hit:
                return from_wire(value)
        if op not in STORE_READ_OPS:
            self.clear_read_cache()
        routing = {"_siteregister_register_name": register_name,
                   "_siteregister_register_item_id": item_id}
        if rootpath:
            routing["_pyrosubbag"] = rootpath
        value = self._send(f"remotebag_{op}", args, dict(kwargs, **routing))
        if key is not None:
            self._remember(key, value)
        return from_wire(value)

    # read cache

    def clear_read_cache(self):
        """Forget this thread's cached reads."""
        if self._cache.entries:
            self._cache.entries = {}

    def _cache_key(self, target, op):
        if self.read_cache_seconds <= 0 or self._scope is None:
            return None
        name, args, kwargs = op
        if name not in CACHED_READ_OPS or not args or args[0] in (None, ""):
            return None
        key = (target, name, tuple(args), tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def _current_cache(self):
        scope = self._scope()
        cache = self._cache
        if scope is None:
            if cache.entries:
                cache.entries = {}
            cache.scope = None
            return None
        if cache.scope is not scope:
            cache.scope = scope
            cache.entries = {}
        return cache

    def _cached(self, key):
        cache = self._current_cache()
        if cache is None:
            return False, None
        entry = cache.entries.get(key)
        if entry is None:
            return False, None
        stored_at, value = entry
        if time.monotonic() - stored_at > self.read_cache_seconds:
            del cache.entries[key]
            return False, None
        # A copy per hit: the caller may change what it receives.
        return True, copy.deepcopy(value)

    def _remember(self, key, value):
        cache = self._current_cache()
        if cache is not None:
            cache.entries[key] = (time.monotonic(), copy.deepcopy(value))


class SiteProxy:
    """Any site's register by name, with converted values; a context manager for old callers."""

    def __init__(self, client, sitename):
        self._client = client
        self.sitename = sitename

    def __repr__(self):
        return f"<SiteProxy {self.sitename!r} via {self._client!r}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        client, sitename = self._client, self.sitename

        def remote_method(*args, **kwargs):
            result = client.call_site(sitename, name, to_wire(tuple(args)), to_wire(kwargs))
            return from_wire(result)

        remote_method.__name__ = name
        return remote_method


class DaemonProxy:
    """Daemon-level calls with converted values, plus ``siteRegisterProxy(sitename)``."""

    def __init__(self, client):
        self._client = client

    def __repr__(self):
        return f"<DaemonProxy via {self._client!r}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    @property
    def client(self):
        """The underlying ``DaemonClient``."""
        return self._client

    def siteRegisterProxy(self, sitename):
        """Return a proxy of the register of ``sitename`` (a context manager)."""
        return SiteProxy(self._client, sitename)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        client = self._client

        def remote_method(*args, **kwargs):
            return from_wire(client.call(name, *to_wire(tuple(args)), **to_wire(kwargs)))

        remote_method.__name__ = name
        return remote_method
