"""Eviction of stale pages and connections, and the cleanup configuration.

An item is stale when more than its maximum age (in seconds) has passed
since its last refresh, or since its creation when it was never refreshed.
Pages use ``page_max_age`` and connections ``connection_max_age``; both use
``guest_connection_max_age`` when their user is a guest (``guest_...``).

Two styles exist and both are offered:

- pull-all: ``cleanup()`` runs at most once per ``interval`` seconds (the
  first run is possible ``interval`` seconds after the register was created);
- on-event, as Genropy sites drive it: ``claim_cleanup(seconds)`` grants one
  caller a run, which then calls ``expire_pages`` and ``expire_connection``
  per connection.

Each eviction is logged at DEBUG; ``cleanup()`` logs one INFO summary when it
evicted something. Cumulative counts per register are kept in the meta value
``cleanup_evictions`` (``{"page": n, "connection": n, "user": n}``), items
dropped by a cascade included.
"""

import logging

from ..errors import ConfigurationError
from . import lifecycle
from .constants import (
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_CONNECTION_MAX_AGE,
    DEFAULT_GUEST_CONNECTION_MAX_AGE,
    DEFAULT_PAGE_MAX_AGE,
    GUEST_USER_PREFIX,
    INDEX_PAGES_BY_CONNECTION,
    META_CLEANUP_CLAIM_TS,
    META_CLEANUP_CONFIG,
    META_CLEANUP_EVICTIONS,
    META_CLEANUP_LAST_RUN,
    META_CREATED_TS,
)

__all__ = [
    "DEFAULT_CONFIG",
    "configure",
    "current_config",
    "run_cleanup",
    "claim_cleanup",
    "expire_pages",
    "expire_connection",
]

log = logging.getLogger(__name__)

#: Cleanup settings and their defaults, in seconds.
DEFAULT_CONFIG = {
    "interval": DEFAULT_CLEANUP_INTERVAL,
    "page_max_age": DEFAULT_PAGE_MAX_AGE,
    "guest_connection_max_age": DEFAULT_GUEST_CONNECTION_MAX_AGE,
    "connection_max_age": DEFAULT_CONNECTION_MAX_AGE,
}

# Attributes of a site's <cleanup> element that only the Genropy site reads.
_SITE_ONLY_KEYS = frozenset({"threshold", "interval_minutes"})


def configure(state, cleanup):
    """Validate and store the cleanup settings; missing, None or empty values take the default.

    Values are cast with ``int()``. Raises ConfigurationError naming the
    setting and value when one is not a non-negative whole number; the
    stored settings are then unchanged.
    """
    if cleanup is None:
        cleanup = {}
    if not isinstance(cleanup, dict):
        raise ConfigurationError(
            f"invalid cleanup configuration {cleanup!r}: expected a dict such as "
            "{'page_max_age': 600, 'connection_max_age': 7200}"
        )
    config = {}
    for key, default in DEFAULT_CONFIG.items():
        value = cleanup.get(key)
        if value is None or value == "":
            config[key] = default
            continue
        try:
            seconds = int(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"invalid cleanup setting {key}={value!r}: expected a whole number of seconds"
            ) from None
        if seconds < 0:
            raise ConfigurationError(
                f"invalid cleanup setting {key}={value!r}: the number of seconds cannot be negative"
            )
        config[key] = seconds
    unknown = sorted(set(cleanup) - set(DEFAULT_CONFIG) - _SITE_ONLY_KEYS, key=str)
    if unknown:
        log.warning("site %r: unknown cleanup setting(s) %s ignored; known settings are %s",
                    state.sitename, ", ".join(map(repr, unknown)), ", ".join(DEFAULT_CONFIG))
    state.store.put_meta(META_CLEANUP_CONFIG, config)
    return config


def current_config(state):
    return state.store.get_meta(META_CLEANUP_CONFIG) or dict(DEFAULT_CONFIG)


def _max_age(item, register, config):
    user = item.get("user")
    if isinstance(user, str) and user.startswith(GUEST_USER_PREFIX):
        return config["guest_connection_max_age"]
    return config["page_max_age" if register == "page" else "connection_max_age"]


def _idle_seconds(item, now):
    reference = item.get("last_refresh_ts") or item["start_ts"]
    return (now - reference).total_seconds()


def _stale_seconds(item, register, config, now):
    """Return the item's idle time when it is stale, else None."""
    idle = _idle_seconds(item, now)
    return idle if idle > _max_age(item, register, config) else None


def _record_evictions(state, dropped):
    if not dropped:
        return
    counts = dict(state.store.get_meta(META_CLEANUP_EVICTIONS) or {})
    for register, item_id in dropped:
        counts[register] = counts.get(register, 0) + 1
        log.debug("site %r: evicted %s %r", state.sitename, register, item_id)
    state.store.put_meta(META_CLEANUP_EVICTIONS, counts)


def run_cleanup(state):
    """Drop stale pages, then stale connections with cascade; return the dropped connection ids.

    Return an empty list without doing anything when less than ``interval``
    seconds passed since the previous run (or since the register's creation).
    Only one caller gets each run, also across daemons sharing a store. The
    candidates are listed outside any transaction, and each one is checked
    again and dropped in its own atomic step, so that the pings of other
    pages do not make a long run start over.
    """
    store = state.store
    now = state.now()
    config = store.run_atomic(_claim_run, state, now)
    if config is None:
        return []

    dropped = []
    for page_id, page in store.items("page").items():
        if _stale_seconds(page, "page", config, now) is not None:
            dropped.extend(store.run_atomic(_drop_if_stale, state, "page", page_id, config, now))

    expired = []
    for connection_id, connection in store.items("connection").items():
        if _stale_seconds(connection, "connection", config, now) is not None:
            evicted = store.run_atomic(_drop_if_stale, state, "connection", connection_id,
                                       config, now)
            if evicted:
                expired.append(connection_id)
                dropped.extend(evicted)

    store.run_atomic(_record_evictions, state, dropped)
    if dropped:
        kinds = [register for register, _ in dropped]
        log.info("site %r: cleanup evicted %d page(s), %d connection(s), %d user(s)",
                 state.sitename, kinds.count("page"), kinds.count("connection"),
                 kinds.count("user"))
    return expired


def _claim_run(state, now):
    """Record a cleanup run at ``now`` and return the settings, or None when it is too early."""
    config = current_config(state)
    last_run = state.store.get_meta(META_CLEANUP_LAST_RUN) or state.store.get_meta(META_CREATED_TS)
    if last_run is not None and (now - last_run).total_seconds() < config["interval"]:
        return None
    state.store.put_meta(META_CLEANUP_LAST_RUN, now)
    return config


def _drop_if_stale(state, register, item_id, config, now):
    """Drop one page (no cascade) or connection (with cascade) if it is still stale.

    Return the list of ``(register, item_id)`` dropped, empty when the item
    is gone or was refreshed meanwhile.
    """
    item = state.store.get_item(register, item_id)
    if item is None:
        return []
    idle = _stale_seconds(item, register, config, now)
    if idle is None:
        return []
    log.debug("site %r: %s %r idle for %.0f s", state.sitename, register, item_id, idle)
    dropped = []
    if register == "page":
        lifecycle.drop_page(state, item_id, cascade=False, dropped=dropped)
    else:
        lifecycle.drop_connection(state, item_id, cascade=True, dropped=dropped)
    return dropped


def claim_cleanup(state, min_gap_seconds):
    """Grant a cleanup run when ``min_gap_seconds`` passed since the last granted claim.

    The first claim after the site's state was created is always granted.
    """
    try:
        min_gap = float(min_gap_seconds)
    except (TypeError, ValueError):
        raise ValueError(f"invalid min_gap_seconds {min_gap_seconds!r}: expected a number "
                         "of seconds") from None
    now = state.now()
    last_claim = state.store.get_meta(META_CLEANUP_CLAIM_TS)
    if last_claim is not None and (now - last_claim).total_seconds() < min_gap:
        return False
    state.store.put_meta(META_CLEANUP_CLAIM_TS, now)
    return True


def expire_pages(state, connection_id):
    """Drop the stale pages of one connection (no cascade); return their ids."""
    now = state.now()
    config = current_config(state)
    dropped = []
    expired = []
    for page_id in sorted(state.store.index_members(INDEX_PAGES_BY_CONNECTION, connection_id)):
        page = state.store.get_item("page", page_id)
        if page is None:
            continue
        idle = _stale_seconds(page, "page", config, now)
        if idle is not None:
            log.debug("site %r: page %r idle for %.0f s", state.sitename, page_id, idle)
            lifecycle.drop_page(state, page_id, cascade=False, dropped=dropped)
            expired.append(page_id)
    _record_evictions(state, dropped)
    return expired


def expire_connection(state, connection_id):
    """Drop one connection with cascade when it is stale; return whether it was dropped."""
    connection = state.store.get_item("connection", connection_id)
    if connection is None:
        return False
    idle = _stale_seconds(connection, "connection", current_config(state), state.now())
    if idle is None:
        return False
    log.debug("site %r: connection %r idle for %.0f s", state.sitename, connection_id, idle)
    dropped = []
    lifecycle.drop_connection(state, connection_id, cascade=True, dropped=dropped)
    _record_evictions(state, dropped)
    return True
