"""Storage backends of the site registers, and ``open_store`` to pick one by URL.

``memory:`` (also ``memory://`` and None) keeps everything in the daemon's
process. ``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``
keep everything in Redis (``redis_store.py``); ``urls.py`` lists every URL
form. The interface every backend implements is in ``base.py``.
"""

from .base import SiteStore, Store
from .memory import CopyingMemoryStore, MemorySiteStore, MemoryStore
from .urls import StoreURL, parse_store_url

__all__ = [
    "Store",
    "SiteStore",
    "MemoryStore",
    "MemorySiteStore",
    "CopyingMemoryStore",
    "StoreURL",
    "parse_store_url",
    "open_store",
]


def open_store(url=None, hmac_key=None, previous_key=None):
    """Return a new store backend for ``url``.

    ``hmac_key`` (bytes or None) is the daemon's key; a Redis store uses it
    to tag the values it writes and to check them before unpickling, and
    ``previous_key`` (during a key rotation) to read values tagged before. Raises
    ConfigurationError for a URL that is invalid or of an unsupported
    scheme. An unreachable Redis is not an error here: the store starts
    down and reconnects in the background.
    """
    parsed = parse_store_url(url)
    if parsed.is_memory:
        return MemoryStore()
    from .redis_store import RedisStore

    return RedisStore(parsed, hmac_key=hmac_key, previous_key=previous_key)
