"""Genropy's daemon settings, read the way Genropy reads them, turned into gnr_daemon settings.

Two ``<gnrdaemon>`` nodes matter. ``gnr web daemon`` reads the one in
``environment.xml`` of Genropy's configuration folder (``gnrConfigPath()``),
and a site's register client reads the one in its site configuration
(``site.config``, built from ``siteconfig/default.xml`` and the instance).
``initgenropy`` writes the same address and key into both. Attributes used:
``host``, ``port``, ``socket``, ``sockets`` and ``hmac_key``.
"""

import hashlib
import logging
import os
import re

from ..config import MIN_KEY_LENGTH

__all__ = [
    "SOCKETS_FOLDER_NAME",
    "SOCKET_FILE_NAME",
    "daemon_options",
    "environment_daemon_node",
    "wire_key",
    "storage_name",
]

log = logging.getLogger(__name__)

#: Folder under Genropy's configuration folder used when ``sockets="true"``.
SOCKETS_FOLDER_NAME = "sockets"
#: Socket file name inside the sockets folder when no ``socket`` is given.
SOCKET_FILE_NAME = "gnrdaemon.sock"

# Prefix of the digest that replaces a key shorter than MIN_KEY_LENGTH.
# Changing it changes every stretched key, so both sides must agree.
_KEY_STRETCH_PREFIX = b"gnr_daemon genropy key v1\x00"

_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")

_warned_short_key = False


def _config_folder():
    from gnr.core.gnrconfig import gnrConfigPath

    return gnrConfigPath()


def environment_daemon_node():
    """Return the attributes of ``<gnrdaemon>`` in Genropy's environment.xml ({} when absent)."""
    from gnr.core.gnrbag import Bag

    folder = _config_folder()
    if not folder:
        return {}
    path = os.path.join(folder, "environment.xml")
    if not os.path.isfile(path):
        return {}
    return dict(Bag(path).getAttr("gnrdaemon") or {})


def daemon_options(node):
    """Return host, port, socket and hmac_key from ``<gnrdaemon>`` attributes.

    ``sockets`` set to ``t``, ``true`` or ``y`` means the ``sockets`` folder
    of Genropy's configuration folder, and any other value is a folder path.
    The folder is created, and ``socket`` defaults to ``gnrdaemon.sock``
    inside it. Missing values are None.
    """
    node = dict(node or {})
    socket_path = node.get("socket") or None
    sockets = node.get("sockets")
    if sockets and not socket_path:
        folder = str(sockets)
        if folder.lower() in ("t", "true", "y"):
            folder = os.path.join(_config_folder(), SOCKETS_FOLDER_NAME)
        os.makedirs(folder, exist_ok=True)
        socket_path = os.path.join(folder, SOCKET_FILE_NAME)
    port = node.get("port")
    if port in ("", None):
        port = None
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"invalid <gnrdaemon port={port!r}>: expected a TCP port "
                             "number") from None
    return {
        "host": node.get("host") or None,
        "port": port,
        "socket": socket_path,
        "hmac_key": node.get("hmac_key") or None,
    }


def wire_key(key):
    """Return the key gnr_daemon uses for Genropy's ``hmac_key`` (None when there is none).

    A key of at least ``MIN_KEY_LENGTH`` bytes is used as it is. A shorter
    one, such as the 12-character key ``gnr app initgenropy`` generates, is
    replaced by the hex SHA-256 digest of a fixed prefix and the key, which
    gnr_daemon accepts. This adds no secrecy: the digest is as hard to guess
    as the short key, and a longer random key is the fix.
    """
    global _warned_short_key
    if key is None or key == "":
        return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) >= MIN_KEY_LENGTH:
        return raw.decode("utf-8")
    if not _warned_short_key:
        _warned_short_key = True
        log.warning("the <gnrdaemon> hmac_key is %d bytes long, shorter than the %d gnr_daemon "
                    "requires: using its SHA-256 digest as the key; set a random key of at "
                    "least 32 characters in environment.xml and siteconfig", len(raw),
                    MIN_KEY_LENGTH)
    return hashlib.sha256(_KEY_STRETCH_PREFIX + raw).hexdigest()


def storage_name(domain_identifier):
    """Return the dump file name, relative to the daemon's state directory, of one register.

    Characters other than letters, digits, ``_``, ``.`` and ``-`` become
    ``_``. When any was replaced, 8 hex digits of the identifier's SHA-256
    are appended, so ``site|dom`` and ``site_dom`` get different files.
    """
    safe = _UNSAFE_NAME_CHARACTERS.sub("_", domain_identifier).strip(".")
    if safe != domain_identifier or not safe:
        digest = hashlib.sha256(domain_identifier.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe or 'site'}-{digest}"
    return f"{safe}.pik"
