"""Creation and removal of users, connections and pages, with their cascades and indexes.

Every function here keeps the secondary indexes in step with the items in
the same call: connections by user, pages by connection, pages by user and
pages by subscribed table. An index key is dropped as soon as its last
member goes, so lookups never see stale or empty entries.

Cascades:

- dropping a page with ``cascade`` drops its connection once that has no pages;
- dropping a connection always drops its pages first, and with ``cascade``
  drops its user once that has no connections;
- dropping a user always drops its connections (and so their pages).

Drop functions take an optional ``dropped`` list and append
``(register, item_id)`` for every item they remove, so cleanup can count
and log evictions.
"""

import logging

from . import subscriptions
from .constants import (
    INDEX_CONNECTIONS_BY_USER,
    INDEX_PAGES_BY_CONNECTION,
    INDEX_PAGES_BY_TABLE,
    INDEX_PAGES_BY_USER,
    META_KIND_PAGE_PROFILERS,
    meta_name,
)
from .datatree import DataTree

__all__ = [
    "parse_tables",
    "create_user",
    "create_connection",
    "create_page",
    "drop_page",
    "drop_connection",
    "drop_user",
    "change_connection_user",
    "set_table_subscription",
    "reindex_item",
    "index_item",
]

log = logging.getLogger(__name__)

def _index_add(store, index, key, member):
    if key is not None and key != "":
        store.index_add(index, key, member)


def _index_remove(store, index, key, member):
    if key is not None and key != "":
        store.index_remove(index, key, member)


def parse_tables(subscribed_tables):
    """Return a set of table names from a comma-separated string, a collection or None.

    No tables give the shared empty frozenset, which costs no memory per page.
    """
    if subscribed_tables is None:
        return frozenset()
    if isinstance(subscribed_tables, str):
        names = subscribed_tables.split(",")
    elif isinstance(subscribed_tables, (list, tuple, set, frozenset)):
        names = list(subscribed_tables)
    else:
        raise TypeError(
            f"invalid subscribed_tables {subscribed_tables!r}: expected a comma-separated "
            "string of table names such as 'pkg.table1,pkg.table2', or a list of them"
        )
    tables = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"invalid table name {name!r} in subscribed_tables: expected a string")
        name = name.strip()
        if name:
            tables.add(name)
    return tables or frozenset()


# -- creation


def create_user(state, user, user_tags=None, user_id=None, user_name=None, avatar_extra=None):
    """Create the user item, or update the user fields of an existing one; return it.

    An existing user keeps its start time, datachanges and data.
    """
    if not user:
        raise ValueError(f"invalid user {user!r}: a user item needs a non-empty user name")
    fields = {
        "user": user,
        "user_id": user_id,
        "user_name": user_name,
        "user_tags": user_tags,
        "avatar_extra": avatar_extra,
    }
    item = state.store.get_item("user", user)
    if item is None:
        return state.create_item("user", user, **fields)
    item.update(fields)
    state.store.put_item("user", user, item)
    return item


def create_connection(state, connection_id, connection_name=None, user=None, user_id=None,
                      user_name=None, user_tags=None, user_ip=None, user_agent=None,
                      browser_name=None, avatar_extra=None, electron_static=None):
    """Create a connection item (and its user when missing); return it.

    A connection id that is already registered replaces the old connection,
    whose pages are dropped with it.
    """
    if connection_id is None or connection_id == "":
        raise ValueError(
            f"invalid connection_id {connection_id!r}: a connection needs a non-empty id"
        )
    previous = state.store.get_item("connection", connection_id)
    if previous is not None:
        log.warning(
            "site %r: connection %r registered again; dropping the previous connection "
            "and its pages", state.sitename, connection_id,
        )
        # The previous user goes too when it loses its last connection to another user.
        drop_connection(state, connection_id, cascade=previous.get("user") != user)
    if user and state.store.get_item("user", user) is None:
        create_user(state, user, user_tags=user_tags, user_id=user_id, user_name=user_name,
                    avatar_extra=avatar_extra)
    item = state.create_item(
        "connection", connection_id,
        connection_name=connection_name, user=user, user_id=user_id, user_name=user_name,
        user_tags=user_tags, user_ip=user_ip, user_agent=user_agent,
        browser_name=browser_name, electron_static=electron_static,
    )
    _index_add(state.store, INDEX_CONNECTIONS_BY_USER, user, connection_id)
    return item


def create_page(state, page_id, pagename=None, connection_id=None, subscribed_tables=None,
                user=None, user_ip=None, user_agent=None, relative_url=None, data=None):
    """Create a page item, seed its store with ``data`` and index it; return it.

    A page id that is already registered replaces the old page.
    """
    if page_id is None or page_id == "":
        raise ValueError(f"invalid page_id {page_id!r}: a page needs a non-empty id")
    tables = parse_tables(subscribed_tables)
    if data is not None and not isinstance(data, (dict, DataTree)):
        raise TypeError(f"invalid data for page {page_id!r}: expected a dict or a DataTree, "
                        f"got {type(data).__name__}")
    if state.store.get_item("page", page_id) is not None:
        log.warning("site %r: page %r registered again; replacing it", state.sitename, page_id)
        drop_page(state, page_id)
    item = state.create_item(
        "page", page_id, data=data,
        pagename=pagename, connection_id=connection_id, user=user, user_ip=user_ip,
        user_agent=user_agent, relative_url=relative_url, subscribed_tables=tables,
    )
    index_item(state, "page", item)
    state.remember_page_route(page_id, connection_id, (user,))
    return state.store.get_item("page", page_id)


def index_item(state, register, item):
    """Add ``item`` to the secondary indexes of its register."""
    store = state.store
    item_id = item["register_item_id"]
    if register == "connection":
        _index_add(store, INDEX_CONNECTIONS_BY_USER, item.get("user"), item_id)
    elif register == "page":
        _index_add(store, INDEX_PAGES_BY_CONNECTION, item.get("connection_id"), item_id)
        _index_add(store, INDEX_PAGES_BY_USER, item.get("user"), item_id)
        for table in item.get("subscribed_tables") or ():
            _index_add(store, INDEX_PAGES_BY_TABLE, table, item_id)


# -- removal


def drop_page(state, page_id, cascade=False, dropped=None):
    """Drop a page; with ``cascade`` also its connection once that has no pages left."""
    store = state.store
    item = store.get_item("page", page_id)
    if item is None:
        return
    connection_id = item.get("connection_id")
    user = item.get("user")
    _index_remove(store, INDEX_PAGES_BY_CONNECTION, connection_id, page_id)
    _index_remove(store, INDEX_PAGES_BY_USER, user, page_id)
    for table in item.get("subscribed_tables") or ():
        _index_remove(store, INDEX_PAGES_BY_TABLE, table, page_id)
    store.delete_meta(meta_name(META_KIND_PAGE_PROFILERS, page_id))
    subscriptions.forget_page(state, user, page_id)
    state.forget_item("page", page_id)
    if dropped is not None:
        dropped.append(("page", page_id))
    if not cascade or not connection_id:
        return
    if not store.index_members(INDEX_PAGES_BY_CONNECTION, connection_id):
        drop_connection(state, connection_id, cascade=False, dropped=dropped)


def drop_connection(state, connection_id, cascade=False, dropped=None):
    """Drop a connection and its pages.

    With ``cascade`` the user goes too once it has no connections left.
    """
    store = state.store
    for page_id in sorted(store.index_members(INDEX_PAGES_BY_CONNECTION, connection_id)):
        drop_page(state, page_id, cascade=False, dropped=dropped)
    item = store.get_item("connection", connection_id)
    if item is None:
        return
    user = item.get("user")
    _index_remove(store, INDEX_CONNECTIONS_BY_USER, user, connection_id)
    state.forget_item("connection", connection_id)
    if dropped is not None:
        dropped.append(("connection", connection_id))
    if cascade and user and not store.index_members(INDEX_CONNECTIONS_BY_USER, user):
        drop_user(state, user, dropped=dropped)


def drop_user(state, user, dropped=None):
    """Drop a user and all of its connections with their pages."""
    store = state.store
    for connection_id in sorted(store.index_members(INDEX_CONNECTIONS_BY_USER, user)):
        drop_connection(state, connection_id, cascade=False, dropped=dropped)
    if store.get_item("user", user) is None:
        return
    subscriptions.forget_user(state, user)
    state.forget_item("user", user)
    if dropped is not None:
        dropped.append(("user", user))


# -- changes


def change_connection_user(state, connection_id, user=None, user_tags=None, user_id=None,
                           user_name=None, avatar_extra=None):
    """Move a connection and its pages to ``user``; return False for an unknown connection.

    The user item is created when missing, and the previous user is dropped
    once it has no connections left.
    """
    if not user:
        raise ValueError(f"invalid user {user!r}: change_connection_user needs the new user name")
    store = state.store
    connection = store.get_item("connection", connection_id)
    if connection is None:
        log.warning("site %r: change_connection_user on unknown connection %r ignored",
                    state.sitename, connection_id)
        return False
    if store.get_item("user", user) is None:
        create_user(state, user, user_tags=user_tags, user_id=user_id, user_name=user_name,
                    avatar_extra=avatar_extra)
    previous_user = connection.get("user")
    connection.update(user=user, user_tags=user_tags, user_name=user_name, user_id=user_id,
                      avatar_extra=avatar_extra)
    store.put_item("connection", connection_id, connection)
    if previous_user != user:
        _index_remove(store, INDEX_CONNECTIONS_BY_USER, previous_user, connection_id)
        _index_add(store, INDEX_CONNECTIONS_BY_USER, user, connection_id)

    for page_id in sorted(store.index_members(INDEX_PAGES_BY_CONNECTION, connection_id)):
        page = store.get_item("page", page_id)
        if page is None or page.get("user") == user:
            continue
        page_user = page.get("user")
        page["user"] = user
        store.put_item("page", page_id, page)
        _index_remove(store, INDEX_PAGES_BY_USER, page_user, page_id)
        _index_add(store, INDEX_PAGES_BY_USER, user, page_id)
        subscriptions.move_page(state, page_id, page_user, user)

    if previous_user and previous_user != user and not store.index_members(
        INDEX_CONNECTIONS_BY_USER, previous_user
    ):
        drop_user(state, previous_user)
    return True


def set_table_subscription(state, page_id, table, subscribe):
    """Add or remove ``table`` in the page's subscribed tables and in the table index."""
    if not isinstance(table, str) or not table.strip():
        raise ValueError(f"invalid table {table!r}: expected a table name such as 'pkg.table'")
    table = table.strip()
    store = state.store
    page = store.get_item("page", page_id)
    if page is None:
        log.debug("site %r: table subscription of unknown page %r ignored", state.sitename, page_id)
        return
    tables = set(page.get("subscribed_tables") or ())
    if subscribe:
        if table not in tables:
            tables.add(table)
            page["subscribed_tables"] = tables
            store.put_item("page", page_id, page)
        store.index_add(INDEX_PAGES_BY_TABLE, table, page_id)
    else:
        if table in tables:
            tables.discard(table)
            page["subscribed_tables"] = tables
            store.put_item("page", page_id, page)
        store.index_remove(INDEX_PAGES_BY_TABLE, table, page_id)


def reindex_item(state, register, item_id, before, after):
    """Move an item between index keys after an update changed its indexed fields.

    ``before`` and ``after`` are the item's field values before and after the update.
    """
    store = state.store
    if register == "connection":
        _move(store, INDEX_CONNECTIONS_BY_USER, before.get("user"), after.get("user"), item_id)
    elif register == "page":
        _move(store, INDEX_PAGES_BY_CONNECTION, before.get("connection_id"),
              after.get("connection_id"), item_id)
        old_user, new_user = before.get("user"), after.get("user")
        if old_user != new_user:
            _move(store, INDEX_PAGES_BY_USER, old_user, new_user, item_id)
            subscriptions.move_page(state, item_id, old_user, new_user)
        old_tables = set(before.get("subscribed_tables") or ())
        new_tables = set(after.get("subscribed_tables") or ())
        for table in old_tables - new_tables:
            store.index_remove(INDEX_PAGES_BY_TABLE, table, item_id)
        for table in new_tables - old_tables:
            store.index_add(INDEX_PAGES_BY_TABLE, table, item_id)


def _move(store, index, old_key, new_key, member):
    if old_key != new_key:
        _index_remove(store, index, old_key, member)
        _index_add(store, index, new_key, member)
