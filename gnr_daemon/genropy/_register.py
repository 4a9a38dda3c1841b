"""The register client a Genropy site uses: ``site.register`` and its stores.

``SiteRegisterClient(site)`` is what ``GnrWsgiSite`` builds for each domain.
It reads the site configuration's ``<gnrdaemon>`` node, registers the
domain identifier (``sitename`` or ``sitename|domain``) on gnr_daemon, and
offers the methods Genropy calls on ``site.register``.

Round trips compared with Genropy's own client:

- a store operation (``pageStore().getItem(...)``) is one ``store_ops``
  call, where Genropy's client fetched the whole item twice before each;
- ``with store:`` takes the item's lock together with the first operation
  inside the block and releases it on exit (no call at all when the block
  makes none), where Genropy's client sent ``lock_item`` on entry;
- ``counters()`` is one call, where Genropy's client listed every user,
  connection and page;
- nothing is retried behind the caller's back: Genropy's client repeated a
  failing call up to 4 times and then returned None.
"""

import logging
import os
import socket
import threading
import time
from datetime import datetime

from gnr.core.gnrbag import Bag, BagResolver

from ..client import DaemonClient
from ..errors import GnrDaemonLocked
from ..registers.remotebag import ALLOWED_OPS as DATA_OPS
from ._client import (
    DaemonProxy,
    RegisterCalls,
    SiteProxy,
    first_value,
    read_cache_seconds_from_environment,
)
from ._config import daemon_options, storage_name, wire_key

__all__ = [
    "SiteRegisterClient",
    "ServerStore",
    "RemoteStoreBag",
    "RegisterResolver",
    "LOCK_MAX_RETRY",
    "RETRY_DELAY",
    "LOCAL_READ_OPS",
]

log = logging.getLogger(__name__)

#: Attempts to take a store's lock before GnrDaemonLocked is raised.
LOCK_MAX_RETRY = 50
#: Seconds between two attempts to take a store's lock.
RETRY_DELAY = 0.2

#: Bag methods gnr_daemon does not run remotely but that only read: a store
#: or a remote data proxy runs them on a copy of the data it fetches first.
#: Changes made to what they return are not saved.
LOCAL_READ_OPS = frozenset({
    "asDictDeeply", "columns", "deepcopy", "diff", "findNodeByAttr", "getDeepestNode",
    "getFormattedValue", "getIndex", "getIndexList", "getLeaves", "getNodeByValue", "getNodes",
    "has_key", "isEmpty", "nodesByAttr", "sum", "toJson", "toXml", "traverse",
})

_warned_sitedaemon = set()


def _lock_reason():
    """Return a lock holder name unique across hosts, processes and threads."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _as_dict(items, attach):
    return {item["register_item_id"]: attach(item) for item in items}


class RemoteStoreBag:
    """A live view of one item's data on the daemon (``item['data']`` of a lazy item).

    Every read or write is one call. ``chunk(path)`` returns a view of the
    subtree at ``path``.
    """

    def __init__(self, calls, register_name, register_item_id, rootpath=None):
        self._calls = calls
        self.register_name = register_name
        self.register_item_id = register_item_id
        self.rootpath = rootpath or None

    def __repr__(self):
        where = f" at {self.rootpath!r}" if self.rootpath else ""
        return f"<RemoteStoreBag {self.register_name} {self.register_item_id!r}{where}>"

    def _call(self, op, *args, **kwargs):
        return self._calls.remotebag_call(self.register_name, self.register_item_id,
                                          self.rootpath, op, args, kwargs)

    def chunk(self, path):
        """Return a view of the subtree at ``path`` of this view."""
        rootpath = f"{self.rootpath}.{path}" if self.rootpath else path
        return RemoteStoreBag(self._calls, self.register_name, self.register_item_id, rootpath)

    # Python operators map to the public DataTree operations the daemon allows.
    def __getitem__(self, path):
        return self._call("getItem", path)

    def __setitem__(self, path, value):
        return self._call("setItem", path, value)

    def __len__(self):
        return self._call("len")

    def __contains__(self, path):
        return self._call("contains", path)

    def __eq__(self, other):
        if isinstance(other, RemoteStoreBag):
            return NotImplemented
        return self._call("equals", other)

    __hash__ = None

    def __str__(self):
        return self._call("asString")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in DATA_OPS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        if name in LOCAL_READ_OPS:
            return lambda *args, **kwargs: getattr(self._snapshot(), name)(*args, **kwargs)
        raise AttributeError(f"RemoteStoreBag has no operation {name!r}: gnr_daemon runs "
                             f"{', '.join(sorted(DATA_OPS))} on the daemon and "
                             f"{', '.join(sorted(LOCAL_READ_OPS))} on a copy")

    def _snapshot(self):
        data = self._call("getItem", "")
        return data if isinstance(data, Bag) else Bag()


class ServerStore:
    """One item's store: Bag operations on its data, its datachanges, and its lock.

    Outside a ``with`` block each operation is one call. Inside one, the
    item's lock (held for ``hostname:pid:thread``) is taken together with the
    first operation and released on exit. A refused lock is tried again every
    ``retry_delay`` seconds, and after ``max_retry`` attempts GnrDaemonLocked
    is raised.

    NOTE: Genropy's own store takes the lock on entry, so code in the block
    before the first store operation runs before the lock is held here, and
    runs even when the lock is never granted.
    """

    def __init__(self, parent, register_name=None, register_item_id=None, triggered=True,
                 max_retry=None, retry_delay=None):
        self.siteregister = parent
        self.register_name = register_name
        self.register_item_id = register_item_id
        self.triggered = triggered
        self.max_retry = max_retry or LOCK_MAX_RETRY
        self.retry_delay = retry_delay or RETRY_DELAY
        self.lock_reason = _lock_reason()
        self._depth = 0
        self._lock_held = False

    def __repr__(self):
        return f"<ServerStore {self.register_name} {self.register_item_id!r}>"

    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._depth -= 1
        if self._depth == 0 and self._lock_held:
            self._lock_held = False
            self.siteregister.calls.unlock_item(self.register_item_id, reason=self.lock_reason,
                                                register_name=self.register_name)
        return False

    def _run(self, name, *args, **kwargs):
        """Run one store operation, taking the lock first inside a ``with`` block."""
        calls = self.siteregister.calls
        ops = [(name, args, kwargs)]
        if self._depth == 0 or self._lock_held:
            return first_value(calls.store_call(self.register_name, self.register_item_id, ops)[1])
        attempts = 0
        while True:
            granted, outcomes = calls.store_call(self.register_name, self.register_item_id, ops,
                                                 lock_reason=self.lock_reason, acquire=True)
            if granted:
                # Held even when the operation failed, so that __exit__ releases it.
                self._lock_held = True
                return first_value(outcomes)
            attempts += 1
            if attempts > self.max_retry:
                log.error("store of %s item %r still locked by another holder after %d "
                          "attempts", self.register_name, self.register_item_id, attempts)
                raise GnrDaemonLocked(
                    f"{self.register_name} item {self.register_item_id!r} stayed locked by "
                    f"another holder for {attempts} attempts {self.retry_delay} s apart"
                )
            time.sleep(self.retry_delay)

    # item operations

    def reset_datachanges(self):
        return self._run("reset_datachanges")

    def set_datachange(self, path, value=None, attributes=None, fired=False, reason=None,
                       replace=False, delete=False):
        return self._run("set_datachange", path, value=value, attributes=attributes,
                         fired=fired, reason=reason, replace=replace, delete=delete)

    def drop_datachanges(self, path):
        self._run("drop_datachanges", path)

    def subscribe_path(self, path):
        self._run("subscribe_path", path)

    @property
    def register_item(self):
        """The item (a copy) with ``data`` as a live view, or None for an unknown item."""
        item = self._run("get_item")
        if item is not None:
            self.siteregister.add_data_to_register_item(item)
        return item

    @property
    def data(self):
        """A live view of the item's data, or None for an unknown item."""
        item = self.register_item
        return item["data"] if item else None

    @property
    def datachanges(self):
        return self.register_item["datachanges"]

    @property
    def subscribed_paths(self):
        return self.register_item["subscribed_paths"]

    # Bag operations on the item's data

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in DATA_OPS:
            return lambda *args, **kwargs: self._run(name, *args, **kwargs)
        if name in LOCAL_READ_OPS:
            return lambda *args, **kwargs: self._local_read(name, args, kwargs)
        raise AttributeError(f"register_item has no attribute {name!r}")

    def _local_read(self, name, args, kwargs):
        data = self._run("getItem", "")
        if data is None:
            return None
        return getattr(data, name)(*args, **kwargs)


class SiteRegisterClient:
    """``site.register``: the register of the site's current domain on gnr_daemon."""

    #: File name Genropy's own daemon dumps a register to, inside the site folder.
    STORAGE_PATH = "siteregister_data.pik"

    def __init__(self, site):
        self.site = site
        self.locked_exception = GnrDaemonLocked
        self.domain_identifier = site.currentDomainIdentifier
        self._warn_about_sitedaemon()
        options = daemon_options(site.config.getAttr("gnrdaemon"))
        self.client = DaemonClient(host=options["host"], port=options["port"],
                                   socket=options["socket"], hmac_key=wire_key(options["hmac_key"]),
                                   use_config_file=False)
        cleanup = site.custom_config.getAttr("cleanup") if site.custom_config else None
        self.calls = RegisterCalls(
            self.client, self.domain_identifier,
            storage_name=storage_name(self.domain_identifier), cleanup=cleanup,
            scope=self._current_request, read_cache_seconds=read_cache_seconds_from_environment(),
        )
        self.calls.register()
        self.gnrdaemon_proxy = DaemonProxy(self.client)
        # Genropy's admin pages read these names. Here a register's address is its name.
        self.siteregister_uri = self.siteregisterserver_uri = self.domain_identifier
        log.debug("site register %r on gnr_daemon at %s", self.domain_identifier,
                  self.client.address_text)

    def __repr__(self):
        return f"<SiteRegisterClient {self.domain_identifier!r} via {self.client!r}>"

    def _current_request(self):
        return getattr(self.site, "currentRequest", None)

    def _warn_about_sitedaemon(self):
        path = os.path.join(self.site.site_path, "sitedaemon.xml")
        if os.path.exists(path) and path not in _warned_sitedaemon:
            _warned_sitedaemon.add(path)
            log.warning("%s exists but per-site daemons are not supported with gnr_daemon: "
                        "site %r uses the shared gnr_daemon", path, self.domain_identifier)

    @property
    def siteregister(self):
        """The raw register calls: lists instead of dicts, no lazy data views."""
        return self.calls

    def pyroProxy(self, uri):
        """Return a proxy of the register named ``uri`` (its site name on gnr_daemon)."""
        return SiteProxy(self.client, uri)

    # items

    def add_data_to_register_item(self, register_item):
        register_item["data"] = RemoteStoreBag(self.calls, register_item["register_name"],
                                               register_item["register_item_id"])
        return register_item

    def _listing(self, items, lazy):
        attach = self.add_data_to_register_item if lazy else (lambda item: item)
        return _as_dict(items, attach)

    def new_page(self, page_id, page, data=None):
        item = self.calls.new_page(page_id, pagename=page.pagename,
                                   connection_id=page.connection_id, user=page.user,
                                   user_ip=page.user_ip, user_agent=page.user_agent,
                                   relative_url=page.request.path_info, data=data)
        return self.add_data_to_register_item(item)

    def new_connection(self, connection_id, connection):
        item = self.calls.new_connection(
            connection_id, connection_name=connection.connection_name, user=connection.user,
            user_id=connection.user_id, user_tags=connection.user_tags, user_ip=connection.ip,
            browser_name=connection.browser_name, user_agent=connection.user_agent,
            avatar_extra=connection.avatar_extra, electron_static=connection.electron_static,
        )
        return self.add_data_to_register_item(item)

    def pages(self, connection_id=None, user=None, index_name=None, filters=None,
              include_data=None):
        lazy = include_data == "lazy"
        items = self.calls.pages(connection_id=connection_id, user=user, index_name=index_name,
                                 filters=filters, include_data=False if lazy else include_data)
        return self._listing(items, lazy)

    def connections(self, user=None, include_data=None):
        lazy = include_data == "lazy"
        items = self.calls.connections(user=user, include_data=False if lazy else include_data)
        return self._listing(items, lazy)

    def users(self, include_data=None):
        lazy = include_data == "lazy"
        return self._listing(self.calls.users(include_data=False if lazy else include_data), lazy)

    def counters(self):
        return self.calls.counters()

    def get_item(self, register_item_id, include_data=False, register_name=None):
        lazy = include_data == "lazy"
        item = self.calls.get_item(register_item_id, include_data=False if lazy else include_data,
                                   register_name=register_name)
        if item and lazy:
            self.add_data_to_register_item(item)
        return item

    def page(self, page_id, include_data=None):
        return self.get_item(page_id, include_data=include_data, register_name="page")

    def connection(self, connection_id, include_data=None):
        return self.get_item(connection_id, include_data=include_data, register_name="connection")

    def user(self, user, include_data=None):
        return self.get_item(user, include_data=include_data, register_name="user")

    def refresh(self, page_id, ts=None, lastRpc=None, pageProfilers=None):
        return self.calls.refresh(page_id, last_user_ts=ts, last_rpc_ts=lastRpc,
                                  pageProfilers=pageProfilers)

    # stores

    def make_store(self, register_name, register_item_id, triggered=None):
        return ServerStore(self, register_name, register_item_id=register_item_id,
                           triggered=triggered)

    def globalStore(self, triggered=False):
        return self.make_store("global", "*", triggered=triggered)

    def userStore(self, user, triggered=False):
        return self.make_store("user", user, triggered=triggered)

    def connectionStore(self, connection_id, triggered=False):
        return self.make_store("connection", connection_id, triggered=triggered)

    def pageStore(self, page_id, triggered=False):
        return self.make_store("page", page_id, triggered=triggered)

    # persistence

    def dump(self):
        self.calls.dump()
        log.debug("site register %r dumped", self.domain_identifier)

    def load(self):
        loaded = self.calls.load()
        if loaded:
            log.info("site register %r loaded", self.domain_identifier)
        else:
            log.info("site register %r: no saved state loaded", self.domain_identifier)
        return loaded

    def __getattr__(self, name):
        # "calls" is missing only while __init__ has not finished (or failed).
        if name.startswith("_") or "calls" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.calls, name)


class RegisterResolver(BagResolver):
    """Lazy Bag of the register for admin pages: users, a user's connections, a connection's pages."""

    classKwargs = {"cacheTime": 1, "readOnly": False, "user": None, "connection_id": None,
                   "_page": None}
    classArgs = ["user"]

    @property
    def register(self):
        return self._page.site.register

    def load(self):
        if not self.user:
            return self._users_bag()
        if not self.connection_id:
            return self._connections_bag(self.user)
        return self._pages_bag(self.connection_id)

    def resolverSerialize(self):
        serialized = super().resolverSerialize()
        serialized["kwargs"].pop("_page", None)
        return serialized

    @staticmethod
    def _entry(info):
        entry = Bag()
        data = info.pop("data", None)
        info.pop("datachanges", None)
        info.pop("datachanges_idx", None)
        entry["info"] = Bag(info)
        entry["data"] = data
        return entry

    @staticmethod
    def _age_label(name, start_ts):
        seconds = int((datetime.now() - start_ts).total_seconds()) if start_ts else 0
        return f"{name} ({seconds})"

    def _users_bag(self):
        result = Bag()
        for user, info in self.register.users(include_data=True).items():
            entry = self._entry(info)
            entry.setItem("connections", RegisterResolver(user=user), cacheTime=3)
            result.setItem(user, entry, user=user)
        return result

    def _connections_bag(self, user):
        result = Bag()
        for connection_id, info in self.register.connections(user=user, include_data=True).items():
            label = self._age_label(info.get("connection_name"), info.get("start_ts"))
            entry = self._entry(info)
            entry.setItem("pages", RegisterResolver(user=user, connection_id=connection_id),
                          cacheTime=2)
            result.setItem(label, entry, user=user, connection_id=connection_id)
        return result

    def _pages_bag(self, connection_id):
        result = Bag()
        for page_id, info in self.register.pages(connection_id=connection_id,
                                                 include_data=True).items():
            pagename = (info.get("pagename") or "").replace(".py", "")
            label = self._age_label(pagename, info.get("start_ts"))
            user = info.get("user")
            entry = self._entry(info)
            result.setItem(label, entry, user=user, connection_id=connection_id, page_id=page_id)
        return result
