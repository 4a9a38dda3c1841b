"""Encoding of the values a networked store keeps: pickle, an allow-list and an HMAC tag.

A stored value is one format byte followed by the payload:

- ``0x01`` + 32-byte tag + pickle, when the daemon has an HMAC key. The tag is
  HMAC-SHA256 over the length of the key name (4 bytes, big-endian), the key
  name and the pickle, computed with a key derived from the daemon's key.
  A value copied to another key name, changed, or written by someone
  without the key fails the check.
- ``0x00`` + pickle, when the daemon has no key.

Reading checks the tag with ``hmac.compare_digest`` before any byte is
unpickled, then unpickles with the dump file's restricted unpickler
(``persistence.restricted_loads``), which accepts the classes of the
daemon's unpickling policy only (``gnr_daemon.safepickle``). So write access to Redis alone does not
let anyone run code in the daemon. Writing checks the same allow-list while
pickling, so a value that could not be read back is rejected before it is
stored.
"""

import hashlib
import hmac
import logging
import importlib
import io
import pickle
import struct

from ..errors import StoreError

__all__ = ["ValueCodec", "FORMAT_PLAIN", "FORMAT_SIGNED"]

FORMAT_PLAIN = 0x00
FORMAT_SIGNED = 0x01
TAG_SIZE = 32
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL

# Context string of the derived key, so that store tags can never be
# confused with the tags of wire frames made with the same daemon key.
_KEY_CONTEXT = b"gnr_daemon store values v1"

log = logging.getLogger(__name__)

_allowed_cache = {}


def _allowed():
    """Return the classes the daemon's unpickling policy allows, or None when it allows all."""
    from ..safepickle import current_policy

    policy = current_policy()
    if not policy.restricted:
        return None
    classes = _allowed_cache.get(policy)
    if classes is None:
        classes = set()
        for module, name in policy.allowed:
            try:
                classes.add(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):
                log.warning("allowed class %s.%s cannot be imported", module, name)
        classes = frozenset(classes)
        _allowed_cache.clear()
        _allowed_cache[policy] = classes
    return classes


class _CheckingPickler(pickle.Pickler):
    """Pickler that rejects every class outside the daemon's unpickling policy.

    ``reducer_override`` is called for every object that is not None, a
    bool, an int, a float, bytes, str, or an exact dict, set, frozenset,
    list or tuple (those are pickled natively and are allowed anyway).
    """

    def reducer_override(self, obj):
        allowed = _allowed()
        if allowed is None:
            return NotImplemented
        cls = obj if isinstance(obj, type) else type(obj)
        if cls not in allowed:
            raise StoreError(
                f"cannot store a value of type {cls.__module__}.{cls.__qualname__}: the store "
                "accepts only built-in types, date and time values, Decimal, UUID, "
                "DataTree, DataChange and classes allowed with --allow-class"
            )
        return NotImplemented


def _derive(hmac_key):
    """Return the value-tagging key derived from a daemon key, or None."""
    if isinstance(hmac_key, str):
        hmac_key = hmac_key.encode("utf-8")
    return hmac.new(hmac_key, _KEY_CONTEXT, hashlib.sha256).digest() if hmac_key else None


class ValueCodec:
    """Encoder and decoder of stored values; ``hmac_key`` (bytes or None) turns on tags."""

    def __init__(self, hmac_key=None, previous_key=None):
        self._key = _derive(hmac_key)
        # During a key rotation values tagged with the previous key are still
        # read; retagging (RedisStore.retag) rewrites them with the current one.
        self._previous = _derive(previous_key) if self._key is not None else None

    @property
    def signed(self):
        return self._key is not None

    def dumps(self, value):
        """Return the pickle of ``value``; raise StoreError for a class outside the allow-list."""
        buffer = io.BytesIO()
        _CheckingPickler(buffer, protocol=PICKLE_PROTOCOL).dump(value)
        return buffer.getvalue()

    def loads(self, pickled, key_name):
        """Return the value of a checked pickle; raise StoreError naming ``key_name``."""
        from ..registers.persistence import InvalidDump, restricted_loads

        try:
            return restricted_loads(pickled)
        except InvalidDump as error:
            raise StoreError(f"the value of Redis key {key_name!r} was not loaded: {error}") from None
        except Exception as error:
            raise StoreError(f"the value of Redis key {key_name!r} is not a valid pickle "
                             f"({type(error).__name__}: {error})") from None

    def _tag(self, key_name, pickled, key=None):
        name = key_name.encode("utf-8")
        return hmac.digest(key or self._key, struct.pack(">I", len(name)) + name + pickled,
                           "sha256")

    def tagged_with_previous(self, key_name, stored):
        """Tell whether ``stored`` carries a valid tag of the previous key (not the current one)."""
        if self._previous is None or not stored or stored[0] != FORMAT_SIGNED:
            return False
        tag, pickled = stored[1:1 + TAG_SIZE], stored[1 + TAG_SIZE:]
        return (len(tag) == TAG_SIZE
                and not hmac.compare_digest(tag, self._tag(key_name, pickled))
                and hmac.compare_digest(tag, self._tag(key_name, pickled, self._previous)))

    def seal(self, key_name, pickled):
        """Return the bytes to store under ``key_name`` for a pickle made by ``dumps``."""
        if self._key is None:
            return bytes((FORMAT_PLAIN,)) + pickled
        return bytes((FORMAT_SIGNED,)) + self._tag(key_name, pickled) + pickled

    def open(self, key_name, stored):
        """Return the pickle inside bytes read from ``key_name``, after checking its tag.

        Raises StoreError, without unpickling anything, when the format byte
        is unknown, when a tag is missing or wrong, or when the value is
        tagged but this daemon has no key.
        """
        if not stored:
            raise StoreError(f"the value of Redis key {key_name!r} is empty")
        kind = stored[0]
        if kind == FORMAT_SIGNED:
            if self._key is None:
                raise StoreError(
                    f"the value of Redis key {key_name!r} carries an HMAC tag but this daemon "
                    "has no HMAC key: start every daemon of this store with the same key"
                )
            tag = stored[1:1 + TAG_SIZE]
            pickled = stored[1 + TAG_SIZE:]
            if len(tag) != TAG_SIZE or not (
                    hmac.compare_digest(tag, self._tag(key_name, pickled))
                    or (self._previous is not None
                        and hmac.compare_digest(tag, self._tag(key_name, pickled, self._previous)))):
                raise StoreError(
                    f"the value of Redis key {key_name!r} failed the HMAC check: it was written "
                    "with another key or changed outside gnr_daemon, so it is not unpickled"
                )
            return pickled
        if kind == FORMAT_PLAIN:
            if self._key is not None:
                raise StoreError(
                    f"the value of Redis key {key_name!r} has no HMAC tag but this daemon "
                    "requires one: it was written by a daemon without a key or by someone "
                    "else, so it is not unpickled"
                )
            return stored[1:]
        raise StoreError(f"the value of Redis key {key_name!r} has unknown format byte "
                         f"{kind:#04x}: it was not written by gnr_daemon")
