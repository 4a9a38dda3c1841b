"""Storage backends of the site registers, and ``open_store`` to pick one by URL.

``memory:`` (also ``memory://`` and None) keeps everything in the daemon's
process. The interface every backend implements is in ``base.py``.
"""

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import SiteStore, Store
from .memory import CopyingMemoryStore, MemorySiteStore, MemoryStore

__all__ = [
    "Store",
    "SiteStore",
    "MemoryStore",
    "MemorySiteStore",
    "CopyingMemoryStore",
    "open_store",
]

_SUPPORTED = "memory: (or memory://)"


def open_store(url=None):
    """Return a new store backend for ``url``; raise ConfigurationError for an unsupported one."""
    if url is None or url in ("memory:", "memory://"):
        return MemoryStore()
    if not isinstance(url, str):
        raise ConfigurationError(
            f"invalid store URL {url!r}: expected a string such as {_SUPPORTED}"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss"):
        raise ConfigurationError(
            f"store URL {_describe_url(url)!r}: the {scheme}:// store is not available yet "
            f"in this version of gnr_daemon; use {_SUPPORTED}"
        )
    raise ConfigurationError(
        f"unsupported store URL {_describe_url(url)!r}: supported schemes are {_SUPPORTED}"
    )


def _describe_url(url):
    """Return ``url`` with any password replaced by ``***``, cut to 100 characters."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            url = parts._replace(netloc=netloc).geturl()
    except ValueError:
        pass
    return url if len(url) <= 100 else url[:97] + "..."
