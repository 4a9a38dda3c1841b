"""Refresh, the per-tab keep-alive ping, and server-store changes sent by browsers.

``handle_ping`` refreshes a page (and its connection and user), writes the
store changes the browser sent for the page and its child pages, and returns
the envelope tree:

- ``result``: always None;
- ``dataChanges``: the page's pending changes as ``sc_0``, ``sc_1``, ... nodes
  whose value is the change value and whose attributes are ``change_path``,
  ``change_reason``, ``change_fired``, ``change_attr``, ``change_ts`` and
  ``change_delete`` (present only when there are changes);
- ``childDataChanges.<page_id>``: the same for each child page with changes;
- ``runningBatch``: True while the user store's ``lastBatchUpdate`` is
  younger than ``RUNNING_BATCH_SECONDS``.

Values sent by browsers arrive as Genropy typed text (``"12::L"``). A call
decodes and checks all of its input before it changes anything, so a
malformed value raises an error naming the page, path and text, and nothing
of that call is applied.
"""

import logging
from datetime import date, datetime

from . import subscriptions
from .constants import META_KIND_PAGE_PROFILERS, RUNNING_BATCH_SECONDS, meta_name
from .datatree import DataTree
from .state import copy_value
from .typedtext import TypedTextError, decode_typed_text

__all__ = [
    "as_timestamp",
    "refresh_item",
    "refresh_page",
    "handle_ping",
    "render_datachanges",
    "decode_store_changes",
    "apply_store_changes",
]

log = logging.getLogger(__name__)

# Keys of a child page's entry in _children_pages_info that are not store changes.
_CHILD_TIMESTAMP_KEYS = ("_lastUserEventTs", "_lastRpc")
_CHILD_PROFILERS_KEY = "_pageProfilers"


def as_timestamp(value, name):
    """Return ``value`` as a naive local datetime, or None.

    Typed text is decoded, an aware datetime is converted to local time and a
    date becomes its midnight. Anything else raises ValueError (TypedTextError
    for malformed typed text) naming ``name``, which describes the value.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        try:
            decoded = decode_typed_text(value)
        except TypedTextError as error:
            raise TypedTextError(error.text, f"{error.reason} ({name})") from None
        if decoded is None or decoded == "":
            return None
        value = decoded
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise ValueError(f"invalid {name} {value!r}: expected a datetime or typed text "
                     "such as '2024-05-01T10:00:00::DH'")


def _advance(item, field, value):
    """Set ``item[field]`` to ``value`` unless that would move it backwards; None keeps it."""
    current = item.get(field)
    if value is None:
        item.setdefault(field, None)
    elif current is None or value > current:
        item[field] = value


def refresh_item(state, register, item_id, last_user_ts=None, last_rpc_ts=None, refresh_ts=None):
    """Advance the refresh timestamps of one item; return the item or None when unknown."""
    item = state.store.get_item(register, item_id)
    if item is None:
        return None
    _advance(item, "last_user_ts", last_user_ts)
    _advance(item, "last_rpc_ts", last_rpc_ts)
    _advance(item, "last_refresh_ts", refresh_ts)
    state.store.put_item(register, item_id, item)
    return item


def refresh_page(state, page_id, last_user_ts=None, last_rpc_ts=None, page_profilers=None):
    """Refresh a page, its connection and that connection's user; return the user item.

    Return None when the page, its connection or its user is unknown; the
    items that exist are refreshed all the same.

    NOTE: every refresh rewrites the connection and user items. On a shared
    store the concurrent pings of one user's pages therefore conflict and
    run again, which only users with very many busy tabs notice.
    """
    last_user_ts = as_timestamp(last_user_ts, "last_user_ts")
    last_rpc_ts = as_timestamp(last_rpc_ts, "last_rpc_ts")
    now = state.now()
    page = refresh_item(state, "page", page_id, last_user_ts, last_rpc_ts, now)
    if page is None:
        return None
    if page_profilers is not None:
        state.store.put_meta(meta_name(META_KIND_PAGE_PROFILERS, page_id), page_profilers)
    connection_id = page.get("connection_id")
    if connection_id is None:
        return None
    connection = refresh_item(state, "connection", connection_id, last_user_ts, last_rpc_ts, now)
    if connection is None:
        return None
    state.remember_page_route(page_id, connection_id, (page.get("user"), connection.get("user")))
    if not connection.get("user"):
        return None
    return refresh_item(state, "user", connection["user"], last_user_ts, last_rpc_ts, now)


def decode_store_changes(changes, page_id):
    """Return ``[(path, value)]`` from a dict of path -> value, decoding typed text.

    Raises TypedTextError or ValueError naming the page and path; nothing is applied.
    """
    if not changes:
        return []
    if not isinstance(changes, dict):
        raise TypeError(f"invalid store changes for page {page_id!r}: expected a dict "
                        f"path -> value, got {type(changes).__name__}")
    decoded = []
    for path, value in changes.items():
        _check_store_path(path, page_id)
        try:
            value = decode_typed_text(value)
        except TypedTextError as error:
            raise TypedTextError(
                error.text, f"{error.reason} (store path {path!r} of page {page_id!r})"
            ) from None
        decoded.append((path, value))
    return decoded


def _check_store_path(path, page_id):
    # Positional ('#0') and attribute ('a?b') selectors are rejected here,
    # because a write could fail half-way through a batch on them.
    labels = path.split(".") if isinstance(path, str) else []
    if not any(labels) or any(label.startswith("#") or "?" in label for label in labels):
        raise ValueError(f"invalid store path {path!r} for page {page_id!r}: expected a "
                         "dotted path of plain labels such as 'form.record.name'")


def apply_store_changes(state, page_id, changes):
    """Write decoded ``[(path, value)]`` changes into the page store (the trigger fires)."""
    if not changes:
        return
    with state.writing_data("page", page_id) as tree:
        for path, value in changes:
            tree.setItem(path, value)


def _decode_children(children_info):
    """Decode ``_children_pages_info`` into a list of child page tuples.

    Each tuple is ``(child_id, user_ts, rpc_ts, profilers, changes)``.
    """
    if not children_info:
        return []
    if not isinstance(children_info, dict):
        raise TypeError("invalid _children_pages_info: expected a dict child page id -> dict, "
                        f"got {type(children_info).__name__}")
    children = []
    for child_id, info in children_info.items():
        if info is None:
            info = {}
        if not isinstance(info, dict):
            raise TypeError(f"invalid _children_pages_info entry for page {child_id!r}: "
                            f"expected a dict, got {type(info).__name__}")
        info = dict(info)
        timestamps = [as_timestamp(info.pop(key, None), f"{key} of child page {child_id!r}")
                      for key in _CHILD_TIMESTAMP_KEYS]
        profilers = info.pop(_CHILD_PROFILERS_KEY, None)
        changes = decode_store_changes(info, child_id)
        children.append((child_id, timestamps[0], timestamps[1], profilers, changes))
    return children


def handle_ping(state, page_id, serverstore_changes, options):
    """Run the keep-alive of one page; return the envelope, or False for an unknown page.

    ``options`` contains the ping's other keyword arguments (``_lastUserEventTs``,
    ``_lastRpc``, ``_pageProfilers``, ``_children_pages_info``); others are ignored.
    """
    children_info = options.get("_children_pages_info")
    child_ids = list(children_info) if isinstance(children_info, dict) else []
    # Every key this call reads is fetched in one round trip when the store
    # uses hints; the pages' connections and users come from remembered routes.
    state.prefetch_pages([page_id, *child_ids])
    page = state.store.get_item("page", page_id)
    if page is None:
        return False
    user = page.get("user")

    # Decode and check everything before the first write.
    last_user_ts = as_timestamp(options.get("_lastUserEventTs"),
                                f"_lastUserEventTs of page {page_id!r}")
    last_rpc_ts = as_timestamp(options.get("_lastRpc"), f"_lastRpc of page {page_id!r}")
    own_changes = decode_store_changes(serverstore_changes, page_id)
    children = _decode_children(children_info)

    refresh_page(state, page_id, last_user_ts, last_rpc_ts, options.get("_pageProfilers"))
    apply_store_changes(state, page_id, own_changes)
    for child_id, child_user_ts, child_rpc_ts, profilers, changes in children:
        apply_store_changes(state, child_id, changes)
        refresh_page(state, child_id, child_user_ts, child_rpc_ts, profilers)

    envelope = DataTree()
    envelope.setItem("result", None)
    datachanges = render_datachanges(subscriptions.collect_page_changes(state, user, page_id))
    if len(datachanges):
        envelope.setItem("dataChanges", datachanges)
    for child_id, *_ in children:
        pending = subscriptions.collect_page_changes(state, user, child_id)
        child_changes = render_datachanges(pending)
        if len(child_changes):
            envelope.setItem(f"childDataChanges.{child_id}", child_changes)
    if user and _running_batch(state, user):
        envelope.setItem("runningBatch", True)
    return envelope


def _running_batch(state, user):
    """Return whether the user's last batch update is recent; clear an old one.

    A value that is not a datetime counts as old.
    """
    tree = state.read_data("user", user)
    last_update = tree.getItem("lastBatchUpdate") if tree is not None else None
    if last_update is None:
        return False
    if isinstance(last_update, datetime):
        age = (state.now() - as_timestamp(last_update, "lastBatchUpdate")).total_seconds()
        if age < RUNNING_BATCH_SECONDS:
            return True
    with state.writing_data("user", user) as tree:
        tree.setItem("lastBatchUpdate", None)
    return False


def render_datachanges(changes):
    """Return a DataTree with one ``sc_<n>`` node per change."""
    tree = DataTree()
    for index, change in enumerate(changes):
        tree.setItem(
            f"sc_{index}",
            copy_value(change.value),
            _attributes={
                "change_path": change.path,
                "change_reason": change.reason,
                "change_fired": change.fired,
                "change_attr": change.attributes,
                "change_ts": change.change_ts,
                "change_delete": change.delete,
            },
        )
    return tree
