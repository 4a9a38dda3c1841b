"""Store subscriptions: pages that receive the datachanges of their user's store.

A page subscribes to client paths of another store with
``setStoreSubscription``. The page store keeps, at ``_subscriptions.<storename>``,
a dict ``client_path -> {"on": bool, "offset": int}``. Only the ``user``
store is delivered. A page that collects its pending changes first gets its
own queue, which is emptied. Then it gets every change of its user's queue
whose path starts with an active client path and whose ``change_idx`` is
above that subscription's offset. The offset moves up to the delivered index.

Each delivered change is a per-page copy. It carries the attribute
``_new_datachange=True`` only for the first page that receives it: the user
store keeps a high-water mark per client path at ``_subscriptions.offsets``.

The user's queue is shared by all of the user's pages, so it is trimmed here:
a per-user meta value maps each page that has an active user subscription to
the user's ``datachanges_idx`` at that page's last collection (its mark).
Changes at or below the lowest mark have been seen by every such page and
are removed. A page that subscribes starts with the mark of its lowest
offset, so nothing it has not seen is trimmed.
"""

import bisect
import logging

from .constants import META_KIND_SUBSCRIPTION_MARKS, meta_name

__all__ = [
    "set_store_subscription",
    "collect_page_changes",
    "forget_page",
    "forget_user",
    "move_page",
    "rebuild_marks",
]

log = logging.getLogger(__name__)

SUBSCRIPTIONS_PATH = "_subscriptions"
USER_STORE = "user"
USER_HIGH_WATER_PATH = "_subscriptions.offsets"
NEW_CHANGE_ATTRIBUTE = "_new_datachange"


def _change_index(change):
    return change.change_idx or 0


def _store_subscriptions(tree, storename):
    """Return a copy of the page's subscriptions to ``storename`` (empty when none)."""
    if tree is None:
        return {}
    subscriptions = tree.getItem(f"{SUBSCRIPTIONS_PATH}.{storename}")
    if not isinstance(subscriptions, dict):
        return {}
    return {path: dict(entry) for path, entry in subscriptions.items() if isinstance(entry, dict)}


def _active_offsets(subscriptions):
    return [entry.get("offset") or 0 for entry in subscriptions.values() if entry.get("on")]


def set_store_subscription(state, page_id, storename, client_path, active):
    """Create or update the page's subscription to ``client_path`` of ``storename``."""
    if not isinstance(storename, str) or not storename or "." in storename:
        raise ValueError(
            f"invalid storename {storename!r}: expected a store name such as 'user', without dots"
        )
    if not isinstance(client_path, str) or not client_path:
        raise ValueError(f"invalid client_path {client_path!r}: expected a non-empty dotted path")
    page = state.store.get_item("page", page_id)
    if page is None:
        log.debug("site %r: store subscription for unknown page %r ignored",
                  state.sitename, page_id)
        return
    user = page.get("user")
    with state.writing_data("page", page_id) as tree:
        subscriptions = _store_subscriptions(tree, storename)
        entry = subscriptions.setdefault(client_path, {"offset": 0})
        entry["on"] = active
        entry.setdefault("offset", 0)
        tree.setItem(f"{SUBSCRIPTIONS_PATH}.{storename}", subscriptions)
    if storename != USER_STORE or not user:
        return
    offsets = _active_offsets(subscriptions)
    if not offsets:
        _set_mark(state, user, page_id, None)
        return
    marks = state.store.get_meta(meta_name(META_KIND_SUBSCRIPTION_MARKS, user)) or {}
    current = marks.get(page_id)
    lowest = min(offsets)
    _set_mark(state, user, page_id, lowest if current is None else min(current, lowest))


def collect_page_changes(state, user, page_id):
    """Return the page's pending changes and empty its own queue.

    The page's own changes come first, then per-page copies of the user-store
    changes it subscribed to. ``user`` defaults to the page's user.
    """
    page = state.store.get_item("page", page_id)
    if page is None:
        return []
    changes = page["datachanges"]
    if changes:
        page["datachanges"] = []
        state.store.put_item("page", page_id, page)
    if not user:
        user = page.get("user")
    if user:
        changes = changes + _collect_user_changes(state, user, page_id)
    return changes


def _collect_user_changes(state, user, page_id):
    subscriptions = _store_subscriptions(state.read_data("page", page_id), USER_STORE)
    active = {path: entry for path, entry in subscriptions.items() if entry.get("on")}
    if not active:
        return []
    user_item = state.store.get_item("user", user)
    if user_item is None:
        return []
    queue = user_item["datachanges"]
    scanned_up_to = user_item["datachanges_idx"]

    # The queue is ordered by change_idx, so changes every active
    # subscription has already passed are skipped with a binary search.
    lowest_offset = min(entry.get("offset") or 0 for entry in active.values())
    start = bisect.bisect_right(queue, lowest_offset, key=_change_index)
    delivered = []
    for change in queue[start:]:
        matched = []
        for client_path, entry in active.items():
            offset = entry.get("offset") or 0
            if change.path.startswith(client_path) and _change_index(change) > offset:
                entry["offset"] = _change_index(change)
                matched.append(client_path)
        if matched:
            delivered.append((change, matched))

    result = []
    if delivered:
        with state.writing_data("page", page_id) as tree:
            tree.setItem(f"{SUBSCRIPTIONS_PATH}.{USER_STORE}", subscriptions)
        result = _flag_new_changes(state, user, delivered)
    _set_mark(state, user, page_id, scanned_up_to)
    _trim_user_queue(state, user)
    return result


def _flag_new_changes(state, user, delivered):
    """Return per-page copies, with ``_new_datachange`` set on changes no page received before."""
    high_water = _read_high_water(state, user)
    changed = False
    result = []
    for change, client_paths in delivered:
        index = _change_index(change)
        is_new = False
        for client_path in client_paths:
            if index > (high_water.get(client_path) or 0):
                high_water[client_path] = index
                is_new = changed = True
        delivered_copy = change.copy()
        attributes = dict(delivered_copy.attributes or {})
        if is_new:
            attributes[NEW_CHANGE_ATTRIBUTE] = True
        else:
            attributes.pop(NEW_CHANGE_ATTRIBUTE, None)
        delivered_copy.attributes = attributes or None
        result.append(delivered_copy)
    if changed:
        with state.writing_data("user", user) as tree:
            tree.setItem(USER_HIGH_WATER_PATH, high_water)
    return result


def _read_high_water(state, user):
    tree = state.read_data("user", user)
    high_water = tree.getItem(USER_HIGH_WATER_PATH) if tree is not None else None
    return dict(high_water) if isinstance(high_water, dict) else {}


def _set_mark(state, user, page_id, mark):
    """Set the page's mark in its user's marks, or remove it when ``mark`` is None."""
    name = meta_name(META_KIND_SUBSCRIPTION_MARKS, user)
    marks = state.store.get_meta(name) or {}
    if mark is None:
        if page_id not in marks:
            return
        del marks[page_id]
    else:
        if marks.get(page_id) == mark:
            return
        marks[page_id] = mark
    if marks:
        state.store.put_meta(name, marks)
    else:
        state.store.delete_meta(name)


def _trim_user_queue(state, user):
    marks = state.store.get_meta(meta_name(META_KIND_SUBSCRIPTION_MARKS, user))
    if not marks:
        # NOTE: a user with no actively subscribed page keeps its whole queue;
        # only drop_datachanges, reset_datachanges or dropping the user empty it.
        return
    lowest_mark = min(marks.values())
    user_item = state.store.get_item("user", user)
    if user_item is None:
        return
    queue = user_item["datachanges"]
    cut = bisect.bisect_right(queue, lowest_mark, key=_change_index)
    if cut:
        user_item["datachanges"] = queue[cut:]
        state.store.put_item("user", user, user_item)


def forget_page(state, user, page_id):
    """Remove a dropped page from its user's marks."""
    if user:
        _set_mark(state, user, page_id, None)


def forget_user(state, user):
    state.store.delete_meta(meta_name(META_KIND_SUBSCRIPTION_MARKS, user))


def move_page(state, page_id, old_user, new_user):
    """Move a page's user-store subscriptions from ``old_user`` to ``new_user``.

    Offsets count the old user's changes, so they restart at 0: the page then
    receives the changes the new user's queue still holds.
    """
    forget_page(state, old_user, page_id)
    with state.writing_data("page", page_id) as tree:
        subscriptions = _store_subscriptions(tree, USER_STORE)
        if not subscriptions:
            return
        for entry in subscriptions.values():
            entry["offset"] = 0
        tree.setItem(f"{SUBSCRIPTIONS_PATH}.{USER_STORE}", subscriptions)
    if new_user and _active_offsets(subscriptions):
        _set_mark(state, new_user, page_id, 0)


def rebuild_marks(state, page_id, user):
    """Set a restored page's mark from its subscription offsets (the lowest active one)."""
    if not user:
        return
    offsets = _active_offsets(_store_subscriptions(state.read_data("page", page_id), USER_STORE))
    if offsets:
        _set_mark(state, user, page_id, min(offsets))
