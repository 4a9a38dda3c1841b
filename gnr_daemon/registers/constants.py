"""Names and numbers shared by the site register modules.

The register names, the cleanup defaults, the lock expiry and the mailbox
timeout are part of the interface Genropy relies on. Index and meta names
are the keys under which a register keeps its state in a ``SiteStore``.
"""

__all__ = [
    "REGISTER_NAMES",
    "GLOBAL_ITEM_ID",
    "GUEST_USER_PREFIX",
    "FORCED_MAINTENANCE_USER",
    "DEFAULT_CLEANUP_INTERVAL",
    "DEFAULT_PAGE_MAX_AGE",
    "DEFAULT_GUEST_CONNECTION_MAX_AGE",
    "DEFAULT_CONNECTION_MAX_AGE",
    "LOCK_EXPIRY_SECONDS",
    "PROCESS_SELFDESTROY_TIMEOUT",
    "RUNNING_BATCH_SECONDS",
]

#: The four sub-registers of a site, in the order ``get_item`` searches them
#: when no ``register_name`` is given (global last).
REGISTER_NAMES = ("page", "connection", "user", "global")

#: Id of the single item of the global register.
GLOBAL_ITEM_ID = "*"

#: Users whose name starts with this prefix are guests (not logged in) and
#: expire after ``guest_connection_max_age``.
GUEST_USER_PREFIX = "guest_"

#: User name for which ``isInMaintenance`` is always False.
FORCED_MAINTENANCE_USER = "*forced*"

# Cleanup defaults, in seconds. Page and connection ages match the folder
# cleanup of Genropy sites, so the daemon and the site agree on staleness.
DEFAULT_CLEANUP_INTERVAL = 120
DEFAULT_PAGE_MAX_AGE = 600
DEFAULT_GUEST_CONNECTION_MAX_AGE = 40
DEFAULT_CONNECTION_MAX_AGE = 7200

#: A lock held by another reason is released when it was last acquired or
#: re-entered more than this many seconds ago.
LOCK_EXPIRY_SECONDS = 10

#: A process mailbox not polled for this many seconds is discarded on the next send.
PROCESS_SELFDESTROY_TIMEOUT = 600

#: A user-store ``lastBatchUpdate`` younger than this many seconds makes the
#: ping envelope carry ``runningBatch``.
RUNNING_BATCH_SECONDS = 5

# Secondary indexes: index name -> key -> set of member ids.
INDEX_CONNECTIONS_BY_USER = "connections_by_user"
INDEX_PAGES_BY_CONNECTION = "pages_by_connection"
INDEX_PAGES_BY_USER = "pages_by_user"
INDEX_PAGES_BY_TABLE = "pages_by_table"
# Table cache map: table -> JSON [register, item_id, path], and the reverse
# map JSON [register, item_id] -> JSON [table, path] used when an item is dropped.
INDEX_TABLE_CACHE = "table_cache"
INDEX_ITEM_TABLE_CACHE = "item_table_cache"

# Meta values of one site.
META_CREATED_TS = "created_ts"
META_CLEANUP_CONFIG = "cleanup_config"
META_CLEANUP_LAST_RUN = "cleanup_last_run"
META_CLEANUP_CLAIM_TS = "cleanup_claim_ts"
META_CLEANUP_EVICTIONS = "cleanup_evictions"
META_MAINTENANCE = "maintenance"
META_PROCESS_MAILBOXES = "process_mailboxes"
# Per-key meta values are named "<kind>/<key>"; see ``meta_name``.
META_KIND_PAGE_PROFILERS = "page_profilers"
META_KIND_SUBSCRIPTION_MARKS = "user_subscription_marks"


def meta_name(kind, key):
    """Return the meta name of ``key`` under ``kind``.

    ``kind`` is a fixed word without ``/``, so two different keys of one kind
    never share a name, whatever characters the key contains.
    """
    return f"{kind}/{key}"
