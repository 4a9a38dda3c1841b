"""Site registers: the per-site state of gnr_daemon and its remote API.

``SiteRegister`` (``site.py``) is the object the daemon dispatches a site's
calls to. The other modules are its parts: ``items.py`` (the four
sub-registers), ``lifecycle.py``, ``ping.py``, ``subscriptions.py``,
``cleanup.py``, ``persistence.py``, ``remotebag.py``, ``filters.py``,
``maintenance.py`` and ``mailboxes.py``, plus the value types ``DataTree``,
``DataChange`` and the typed-text decoder.
"""

from .constants import (
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_CONNECTION_MAX_AGE,
    DEFAULT_GUEST_CONNECTION_MAX_AGE,
    DEFAULT_PAGE_MAX_AGE,
    LOCK_EXPIRY_SECONDS,
    PROCESS_SELFDESTROY_TIMEOUT,
    REGISTER_NAMES,
)
from .datachange import DataChange
from .datatree import DataNode, DataTree
from .site import SiteRegister

__all__ = [
    "SiteRegister",
    "DataTree",
    "DataNode",
    "DataChange",
    "REGISTER_NAMES",
    "DEFAULT_CLEANUP_INTERVAL",
    "DEFAULT_PAGE_MAX_AGE",
    "DEFAULT_GUEST_CONNECTION_MAX_AGE",
    "DEFAULT_CONNECTION_MAX_AGE",
    "LOCK_EXPIRY_SECONDS",
    "PROCESS_SELFDESTROY_TIMEOUT",
]
