"""The state of one site in Redis, and the optimistic transactions that keep it consistent.

Key layout. Every key of a site starts with the hash tag ``{<prefix><site>}``,
so all of them live in one Redis Cluster slot and one transaction may touch
any of them. The site name and every item id, index key or meta name in a
key are percent-encoded (``urllib.parse.quote`` with no safe characters), so
``:``, ``{`` and ``}`` inside them cannot collide with the separators::

    {P S}:item:<register>:<id>   string  pickled item dict
    {P S}:order:<register>       zset    item ids; the score is the insertion sequence
    {P S}:seq                    string  counter behind the order scores
    {P S}:data:<register>:<id>   string  pickled DataTree of the item
    {P S}:lock:<register>:<id>   string  pickled lock record
    {P S}:locks:<register>       set     ids that have a lock record
    {P S}:idx:<index>:<key>      set     members of one secondary-index key
    {P S}:meta:<name>            string  pickled meta value

Strings hold values encoded by ``codec.ValueCodec``. Set and zset members
are the raw ids (UTF-8). A set key exists only while it has members, which
is how ``index_keys`` lists the non-empty keys of an index.

Transactions. A ``_Transaction`` belongs to one greenlet. Inside
``run_atomic`` (watch mode) every read sends ``WATCH`` for its keys and the
read command in the same round trip, on one connection held until the end,
and caches the reply; later reads of the same key in the call use the cache.
Writes only change the cache and are sent at the end as one
``MULTI ... EXEC``. When another client changed a watched key, ``EXEC``
returns nil, the writes are discarded and ``run_atomic`` runs the whole
method again after a short random backoff. Outside a transaction each store
call is its own small transaction without ``WATCH``.
"""

import contextlib
import functools
import logging
import random
import time
from urllib.parse import quote, unquote

from gevent.local import local as greenlet_local

from ..errors import StoreError
from .base import SiteStore

__all__ = ["RedisSiteStore", "TransactionConflict", "RoundTripFailure", "MAX_ATTEMPTS"]

log = logging.getLogger(__name__)

#: Times ``run_atomic`` runs a method before it gives up on conflicting writers.
MAX_ATTEMPTS = 30
# Random backoff before attempt n + 1 (n >= 2) is up to min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**n) s.
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.05

# Appends ids to an order zset unless present, scoring each with the next
# value of the site's sequence counter. KEYS: order zset, counter. ARGV: ids.
ORDER_ADD_SCRIPT = """
for i = 1, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[i])
  end
end
return #ARGV
"""

_DELETE_CHUNK = 512
_SCAN_COUNT = 1000
_UNKNOWN = object()


class TransactionConflict(StoreError):
    """Another client changed a key that this transaction read; nothing was written."""


@functools.lru_cache(maxsize=65536)
def _quoted(value):
    return quote(value, safe="")


def _part(value, kind="item id"):
    if not isinstance(value, str):
        raise TypeError(f"invalid {kind} {value!r}: the Redis store accepts string ids only")
    return _quoted(value)


def _glob_escape(text):
    return "".join("\\" + character if character in "*?[]\\" else character for character in text)


def _text(raw):
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


class _SetView:
    """A Redis set within one transaction: the members read plus the local changes."""

    __slots__ = ("base", "changes")

    def __init__(self):
        self.base = None
        self.changes = {}

    def members(self):
        members = set(self.base)
        for member, present in self.changes.items():
            if present:
                members.add(member)
            else:
                members.discard(member)
        return members


class _OrderView:
    """An order zset within one transaction: the ids read plus the local adds and removals."""

    __slots__ = ("base", "operations")

    def __init__(self):
        self.base = None
        self.operations = []

    def ids(self):
        ordered = dict.fromkeys(self.base)
        for added, item_id in self.operations:
            if added:
                ordered.setdefault(item_id)
            else:
                ordered.pop(item_id, None)
        return list(ordered)

    def grouped_operations(self):
        """Yield ``(added, [ids])`` for each run of consecutive adds or removals."""
        run_kind, run = None, []
        for added, item_id in self.operations:
            if added is not run_kind and run:
                yield run_kind, run
                run = []
            run_kind = added
            run.append(item_id)
        if run:
            yield run_kind, run


class _Transaction:
    """The reads, cache and buffered writes of one call on one site store."""

    def __init__(self, site, watch):
        self.site = site
        self.store = site._store
        self.watch = watch
        self.connection = None
        self.fresh = True
        self.strings = {}
        self.loaded = {}
        self.dirty = {}
        self.sets = {}
        self.orders = {}
        self.cleared = None

    # -- connection

    def round_trip(self, commands, reads_only=True):
        """Send ``commands`` in one write and return their replies, in order.

        The first batch on a connection starts with ``UNWATCH``, which clears
        any ``WATCH`` a previous user of the pooled connection left behind.
        A read-only first batch that fails with a broken connection is sent
        once more on a new connection (the pooled one may predate a Redis
        restart).
        """
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = self.store._acquire()
                self.fresh = True
            prefixed = self.fresh
            batch = [("UNWATCH",)] + list(commands) if prefixed else commands
            try:
                replies = self.store._execute(self.connection, batch)
            except RoundTripFailure as failure:
                self._drop_connection()
                if attempt == 1 and prefixed and reads_only and failure.retryable:
                    log.debug("store %s: retrying a read on a new connection after: %s",
                              self.store.url, failure.error)
                    continue
                raise self.store._unavailable(failure.error) from None
            except BaseException:
                self._drop_connection()
                raise
            self.fresh = False
            return replies[1:] if prefixed else replies
        raise AssertionError("unreachable")

    def _drop_connection(self):
        if self.connection is not None:
            connection, self.connection = self.connection, None
            self.store._release(connection, broken=True)

    def release(self):
        if self.connection is not None:
            connection, self.connection = self.connection, None
            self.store._release(connection)

    # -- reads

    def fetch(self, strings=(), sets=(), orders=()):
        """Load the keys not cached yet in one round trip (WATCHed first in watch mode)."""
        strings = [key for key in dict.fromkeys(strings) if key not in self.strings]
        sets = [key for key in dict.fromkeys(sets) if self.set_view(key).base is None]
        orders = [key for key in dict.fromkeys(orders) if self.order_view(key).base is None]
        if not (strings or sets or orders):
            return

        if self.cleared is not None:
            # clear() deleted everything this transaction had not written.
            for key in strings:
                self.strings[key] = None
            for key in sets:
                self.sets[key].base = set()
            for key in orders:
                self.orders[key].base = []
            return

        commands = []
        if self.watch:
            commands.append(("WATCH", *strings, *sets, *orders))
        if strings:
            commands.append(("MGET", *strings))
        commands.extend(("SMEMBERS", key) for key in sets)
        commands.extend(("ZRANGE", key, 0, -1) for key in orders)
        replies = self.round_trip(commands)
        if self.watch:
            replies = replies[1:]
        self._check_replies(replies)

        position = 0
        if strings:
            codec = self.store.codec
            for key, raw in zip(strings, replies[0]):
                pickled = None if raw is None else codec.open(key, raw)
                self.strings[key] = pickled
                self.loaded[key] = pickled
            position = 1
        for key in sets:
            self.sets[key].base = {_text(member) for member in replies[position]}
            position += 1
        for key in orders:
            self.orders[key].base = [_text(member) for member in replies[position]]
            position += 1

    def count(self, key):
        """Return the size of an order zset, local adds and removals included."""
        view = self.order_view(key)
        if view.base is not None or view.operations or self.cleared is not None:
            self.fetch(orders=(key,))
            return len(view.ids())
        commands = [("WATCH", key)] if self.watch else []
        commands.append(("ZCARD", key))
        replies = self.round_trip(commands)
        self._check_replies(replies)
        return replies[-1]

    def scan(self, pattern):
        """Return the existing keys that match ``pattern`` (a Redis glob), without WATCH."""
        if self.cleared is not None:
            return []
        keys, cursor = [], b"0"
        while True:
            reply = self.round_trip([("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)])
            self._check_replies(reply)
            cursor, batch = reply[0]
            keys.extend(_text(key) for key in batch)
            if cursor in (b"0", 0, "0"):
                return list(dict.fromkeys(keys))

    def _check_replies(self, replies):
        for reply in replies:
            if isinstance(reply, Exception):
                raise StoreError(f"store {self.store.url}: Redis rejected a read: {reply}")

    def set_view(self, key):
        view = self.sets.get(key)
        if view is None:
            view = self.sets[key] = _SetView()
            if self.cleared is not None:
                view.base = set()
        return view

    def order_view(self, key):
        view = self.orders.get(key)
        if view is None:
            view = self.orders[key] = _OrderView()
            if self.cleared is not None:
                view.base = []
        return view

    # -- writes

    def set_string(self, key, pickled):
        self.strings[key] = pickled
        self.dirty[key] = None

    def clear(self, keys):
        """Forget every key of the site: ``keys`` are deleted first when the transaction commits."""
        self.cleared = list(keys)
        self.strings = dict.fromkeys(self.strings)
        self.dirty = {}
        for view in self.sets.values():
            view.base, view.changes = set(), {}
        for view in self.orders.values():
            view.base, view.operations = [], []

    def write_commands(self):
        commands = []
        for start in range(0, len(self.cleared or ()), _DELETE_CHUNK):
            commands.append(("DEL", *self.cleared[start:start + _DELETE_CHUNK]))
        codec = self.store.codec
        for key in self.dirty:
            pickled = self.strings[key]
            if key in self.loaded and self.loaded[key] == pickled and self.cleared is None:
                continue
            if pickled is None:
                commands.append(("DEL", key))
            else:
                commands.append(("SET", key, codec.seal(key, pickled)))
        for key, view in self.sets.items():
            added = [member for member, present in view.changes.items() if present]
            removed = [member for member, present in view.changes.items() if not present]
            if removed:
                commands.append(("SREM", key, *removed))
            if added:
                commands.append(("SADD", key, *added))
        sequence_key = self.site._sequence_key
        for key, view in self.orders.items():
            for added, ids in view.grouped_operations():
                if added:
                    commands.append(("EVAL", ORDER_ADD_SCRIPT, 2, key, sequence_key, *ids))
                else:
                    commands.append(("ZREM", key, *ids))
        return commands

    def commit(self):
        """Send the buffered writes as one MULTI/EXEC; raise TransactionConflict when it aborts."""
        commands = self.write_commands()
        if not commands:
            return
        replies = self.round_trip([("MULTI",), *commands, ("EXEC",)], reads_only=False)
        result = replies[-1]
        if result is None:
            self.store._count("conflicts")
            raise TransactionConflict(
                f"store {self.store.url}: site {self.site.sitename!r} changed during the call"
            )
        if isinstance(result, Exception):
            queued = [reply for reply in replies[1:-1] if isinstance(reply, Exception)]
            cause = queued[0] if queued else result
            raise StoreError(f"store {self.store.url}: Redis rejected the writes: {cause}")
        failed = [reply for reply in result if isinstance(reply, Exception)]
        if failed:
            # NOTE: Redis has no rollback, so the other writes of this
            # transaction were applied. A queued write fails only when it
            # runs, for example on a key that another program gave another type.
            raise StoreError(f"store {self.store.url}: Redis failed {len(failed)} of the "
                             f"writes of one transaction: {failed[0]}")


class RoundTripFailure(Exception):
    """The Redis connection broke or timed out during a round trip; ``error`` is the cause.

    Raised by ``RedisStore._execute`` and turned into StoreUnavailable here.
    """

    def __init__(self, error, retryable=False):
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


class _TransactionContext:
    """Re-entrant context of ``RedisSiteStore.transaction()``: one attempt, no retry."""

    def __init__(self, site):
        self.site = site
        self.own = None

    def __enter__(self):
        if self.site._current() is None:
            self.own = self.site._begin(watch=True)
        return self

    def __exit__(self, exc_type, exc, traceback):
        transaction, self.own = self.own, None
        if transaction is None:
            return False
        try:
            if exc_type is None or (issubclass(exc_type, Exception)
                                    and not issubclass(exc_type, StoreError)):
                transaction.commit()
        finally:
            self.site._end(transaction)
        return False


class RedisSiteStore(SiteStore):
    """The ``SiteStore`` of one site, kept in Redis (see the module docstring for the layout)."""

    prefetches = True

    def __init__(self, store, sitename):
        self._store = store
        self.sitename = sitename
        self._tag = "{" + store.prefix + quote(sitename, safe="") + "}"
        self._sequence_key = f"{self._tag}:seq"
        self._local = greenlet_local()

    def __repr__(self):
        return f"<RedisSiteStore {self.sitename!r} at {self._store.url}>"

    # -- keys

    def _item_key(self, register, item_id):
        return f"{self._tag}:item:{_part(register, 'register')}:{_part(item_id)}"

    def _order_key(self, register):
        return f"{self._tag}:order:{_part(register, 'register')}"

    def _data_key(self, register, item_id):
        return f"{self._tag}:data:{_part(register, 'register')}:{_part(item_id)}"

    def _lock_key(self, register, item_id):
        return f"{self._tag}:lock:{_part(register, 'register')}:{_part(item_id)}"

    def _lock_set_key(self, register):
        return f"{self._tag}:locks:{_part(register, 'register')}"

    def _index_prefix(self, index):
        return f"{self._tag}:idx:{_part(index, 'index name')}:"

    def _index_key(self, index, key):
        return self._index_prefix(index) + _part(key, "index key")

    def _meta_key(self, name):
        return f"{self._tag}:meta:{_part(name, 'meta name')}"

    # -- transactions

    def _current(self):
        return getattr(self._local, "transaction", None)

    def _begin(self, watch):
        transaction = _Transaction(self, watch)
        self._local.transaction = transaction
        return transaction

    def _end(self, transaction):
        self._local.transaction = None
        transaction.release()

    @contextlib.contextmanager
    def _using(self):
        """Yield the greenlet's transaction, or a one-call transaction committed on exit."""
        transaction = self._current()
        if transaction is not None:
            yield transaction
            return
        transaction = _Transaction(self, watch=False)
        try:
            yield transaction
            transaction.commit()
        finally:
            transaction.release()

    def transaction(self):
        return _TransactionContext(self)

    def run_atomic(self, function, *args, **kwargs):
        """Run ``function`` as one optimistic transaction, again after each conflict.

        Inside an outer transaction the call joins it. When the function
        raises an ordinary exception, the writes it made before are still
        committed, as they would be live on the memory store, and the
        exception is raised again. After ``MAX_ATTEMPTS`` conflicts
        StoreError is raised and nothing of the call is written.
        """
        if self._current() is not None:
            return function(*args, **kwargs)
        name = getattr(function, "__qualname__", repr(function))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            transaction = self._begin(watch=True)
            try:
                try:
                    result = function(*args, **kwargs)
                except StoreError:
                    raise
                except Exception:
                    transaction.commit()
                    raise
                transaction.commit()
                return result
            except TransactionConflict:
                log.debug("site %r: %s conflicted with another writer (attempt %d)",
                          self.sitename, name, attempt)
            finally:
                self._end(transaction)
            if attempt > 1:
                # The first retry runs at once: most conflicts are one other
                # call that has already committed.
                time.sleep(random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt)))
        self._store._count("gave_up")
        log.warning("site %r: %s gave up after %d conflicting attempts", self.sitename, name,
                    MAX_ATTEMPTS)
        raise StoreError(
            f"store {self._store.url}: {name} on site {self.sitename!r} gave up after "
            f"{MAX_ATTEMPTS} attempts because other calls kept changing the same keys; "
            "retry the call"
        )

    def prefetch(self, items=(), data=(), meta=(), indexes=()):
        """Read and WATCH the named keys in one round trip; outside a transaction, do nothing.

        ``items`` and ``data`` are ``(register, item_id)`` pairs, ``meta``
        names and ``indexes`` ``(index, key)`` pairs. Entries whose id is
        not a string are skipped.
        """
        transaction = self._current()
        if transaction is None:
            return
        strings = []
        for register, item_id in items:
            if isinstance(item_id, str):
                strings.append(self._item_key(register, item_id))
        for register, item_id in data:
            if isinstance(item_id, str):
                strings.append(self._data_key(register, item_id))
        for name in meta:
            if isinstance(name, str):
                strings.append(self._meta_key(name))
        sets = [self._index_key(index, key) for index, key in indexes if isinstance(key, str)]
        transaction.fetch(strings=strings, sets=sets)

    # -- string values

    def _get_value(self, key):
        transaction = self._current()
        if transaction is not None and key in transaction.strings:
            pickled = transaction.strings[key]
        else:
            with self._using() as transaction:
                transaction.fetch(strings=(key,))
                pickled = transaction.strings[key]
        return None if pickled is None else self._store.codec.loads(pickled, key)

    def _get_values(self, keys):
        with self._using() as transaction:
            transaction.fetch(strings=keys)
            pickles = [transaction.strings[key] for key in keys]
        loads = self._store.codec.loads
        return [None if pickled is None else loads(pickled, key)
                for key, pickled in zip(keys, pickles)]

    # -- items

    def get_item(self, register, item_id):
        if not isinstance(item_id, str):
            return None
        return self._get_value(self._item_key(register, item_id))

    def get_items(self, register, item_ids):
        item_ids = [item_id for item_id in item_ids if isinstance(item_id, str)]
        values = self._get_values([self._item_key(register, item_id) for item_id in item_ids])
        return {item_id: item for item_id, item in zip(item_ids, values) if item is not None}

    def put_item(self, register, item_id, item):
        key = self._item_key(register, item_id)
        pickled = self._store.codec.dumps(item)
        with self._using() as transaction:
            known = transaction.strings.get(key, _UNKNOWN)
            transaction.set_string(key, pickled)
            if known is _UNKNOWN or known is None:
                transaction.order_view(self._order_key(register)).operations.append(
                    (True, item_id))

    def delete_item(self, register, item_id):
        if not isinstance(item_id, str):
            return
        key = self._item_key(register, item_id)
        with self._using() as transaction:
            if transaction.strings.get(key, _UNKNOWN) is None:
                return
            transaction.set_string(key, None)
            transaction.order_view(self._order_key(register)).operations.append(
                (False, item_id))

    def item_ids(self, register):
        key = self._order_key(register)
        with self._using() as transaction:
            transaction.fetch(orders=(key,))
            return transaction.orders[key].ids()

    def items(self, register):
        return self.get_items(register, self.item_ids(register))

    def count_items(self, register):
        with self._using() as transaction:
            return transaction.count(self._order_key(register))

    # -- item data

    def get_data(self, register, item_id):
        if not isinstance(item_id, str):
            return None
        return self._get_value(self._data_key(register, item_id))

    def put_data(self, register, item_id, tree):
        key = self._data_key(register, item_id)
        pickled = self._store.codec.dumps(tree)
        with self._using() as transaction:
            transaction.set_string(key, pickled)

    def delete_data(self, register, item_id):
        if not isinstance(item_id, str):
            return
        with self._using() as transaction:
            transaction.set_string(self._data_key(register, item_id), None)

    # -- secondary indexes

    def index_add(self, index, key, member):
        _part(member, "index member")
        with self._using() as transaction:
            transaction.set_view(self._index_key(index, key)).changes[member] = True

    def index_remove(self, index, key, member):
        if not isinstance(key, str) or not isinstance(member, str):
            return
        with self._using() as transaction:
            transaction.set_view(self._index_key(index, key)).changes[member] = False

    def index_members(self, index, key):
        if not isinstance(key, str):
            return set()
        redis_key = self._index_key(index, key)
        with self._using() as transaction:
            transaction.fetch(sets=(redis_key,))
            return transaction.sets[redis_key].members()

    def index_keys(self, index):
        prefix = self._index_prefix(index)
        with self._using() as transaction:
            found = transaction.scan(_glob_escape(prefix) + "*")
            candidates = list(dict.fromkeys(
                found + [key for key in transaction.sets if key.startswith(prefix)]
            ))
            transaction.fetch(sets=candidates)
            return [unquote(key[len(prefix):]) for key in candidates
                    if transaction.sets[key].members()]

    # -- locks

    def get_lock(self, register, item_id):
        if not isinstance(item_id, str):
            return None
        return self._get_value(self._lock_key(register, item_id))

    def put_lock(self, register, item_id, record):
        key = self._lock_key(register, item_id)
        pickled = self._store.codec.dumps(record)
        with self._using() as transaction:
            transaction.set_string(key, pickled)
            transaction.set_view(self._lock_set_key(register)).changes[item_id] = True

    def delete_lock(self, register, item_id):
        if not isinstance(item_id, str):
            return
        with self._using() as transaction:
            transaction.set_string(self._lock_key(register, item_id), None)
            transaction.set_view(self._lock_set_key(register)).changes[item_id] = False

    def locks(self, register):
        set_key = self._lock_set_key(register)
        with self._using() as transaction:
            transaction.fetch(sets=(set_key,))
            item_ids = sorted(transaction.sets[set_key].members())
        values = self._get_values([self._lock_key(register, item_id) for item_id in item_ids])
        return {item_id: record for item_id, record in zip(item_ids, values)
                if record is not None}

    # -- meta values

    def get_meta(self, name, default=None):
        key = self._meta_key(name)
        with self._using() as transaction:
            transaction.fetch(strings=(key,))
            pickled = transaction.strings[key]
        return default if pickled is None else self._store.codec.loads(pickled, key)

    def put_meta(self, name, value):
        key = self._meta_key(name)
        pickled = self._store.codec.dumps(value)
        with self._using() as transaction:
            transaction.set_string(key, pickled)

    def delete_meta(self, name):
        with self._using() as transaction:
            transaction.set_string(self._meta_key(name), None)

    # -- reset

    def clear(self):
        """Delete every key of the site.

        NOTE: the keys are found with SCAN and are not watched, so a key
        another daemon creates between the SCAN and the commit survives.
        """
        with self._using() as transaction:
            transaction.clear(transaction.scan(_glob_escape(self._tag) + ":*"))
