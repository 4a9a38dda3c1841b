"""Abstract storage interface of the site registers.

A ``Store`` is one backend instance per daemon. It hands out one ``SiteStore``
per site, and a site register keeps every piece of its state there: items,
item data trees, secondary indexes, locks and small named values ("meta").

Register code follows one rule so that it runs unchanged on every backend:
read a value, change it, write it back with the matching ``put_*`` method.
On the memory store a get returns the stored object itself and a put is a
plain assignment. On a networked backend every get returns a fresh copy and
every put is a write, so a change that is not put back is lost.
"""

import abc

__all__ = ["Store", "SiteStore"]


class Store(abc.ABC):
    """A storage backend shared by every site of one daemon."""

    #: Backend address that is safe to log: any password is masked.
    url = ""

    #: True when other daemon processes may read and write the same state,
    #: so a site stopped here must keep its keys.
    shared = False

    @abc.abstractmethod
    def site_store(self, sitename):
        """Return the ``SiteStore`` namespace of ``sitename``, creating it if needed."""
        raise NotImplementedError

    @abc.abstractmethod
    def drop_site(self, sitename):
        """Delete every key of ``sitename``; an unknown site is not an error."""
        raise NotImplementedError

    @abc.abstractmethod
    def health(self):
        """Return ``{"ok": bool, "detail": str}`` describing whether the backend responds."""
        raise NotImplementedError

    @abc.abstractmethod
    def close(self):
        """Release connections and other resources held by the backend."""
        raise NotImplementedError


class SiteStore(abc.ABC):
    """The state of one site.

    ``register`` arguments are register names (``"global"``, ``"user"``,
    ``"connection"``, ``"page"``). Item ids, index keys and index members are
    strings chosen by callers and may contain any character, ``":"``
    included: a backend must keep them apart from its own key separators.
    """

    # -- items: one mapping per register name

    @abc.abstractmethod
    def get_item(self, register, item_id):
        """Return the item dict stored under ``item_id``, or None."""
        raise NotImplementedError

    @abc.abstractmethod
    def put_item(self, register, item_id, item):
        """Store ``item`` under ``item_id``, replacing any previous item."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete_item(self, register, item_id):
        """Delete the item ``item_id``; a missing item is not an error."""
        raise NotImplementedError

    @abc.abstractmethod
    def item_ids(self, register):
        """Return a new list of the item ids of ``register``, in insertion order."""
        raise NotImplementedError

    @abc.abstractmethod
    def items(self, register):
        """Return a new dict ``item_id -> item`` of ``register``, in insertion order."""
        raise NotImplementedError

    def get_items(self, register, item_ids):
        """Return a new dict ``item_id -> item`` of the ids that exist, in the order given.

        A networked backend reads them in one round trip.
        """
        result = {}
        for item_id in item_ids:
            item = self.get_item(register, item_id)
            if item is not None:
                result[item_id] = item
        return result

    @abc.abstractmethod
    def count_items(self, register):
        """Return the number of items in ``register``."""
        raise NotImplementedError

    # -- item data: one DataTree per item

    @abc.abstractmethod
    def get_data(self, register, item_id):
        """Return the DataTree of the item ``item_id``, or None when none is stored."""
        raise NotImplementedError

    @abc.abstractmethod
    def put_data(self, register, item_id, tree):
        """Store ``tree`` as the data of the item ``item_id``."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete_data(self, register, item_id):
        """Delete the data tree of the item ``item_id``; a missing tree is not an error."""
        raise NotImplementedError

    # -- secondary indexes: index name -> key -> set of member ids

    @abc.abstractmethod
    def index_add(self, index, key, member):
        """Add ``member`` to the set stored under ``key`` in ``index``."""
        raise NotImplementedError

    @abc.abstractmethod
    def index_remove(self, index, key, member):
        """Remove ``member`` from the set under ``key``, and drop the key once its set is empty.

        A missing key or member is not an error.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def index_members(self, index, key):
        """Return a new set of the members under ``key``; an unknown key gives an empty set.

        Looking up an unknown key never creates an entry for it.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def index_keys(self, index):
        """Return a new list of the keys of ``index`` that have at least one member."""
        raise NotImplementedError

    # -- locks: one record per (register, item id)

    @abc.abstractmethod
    def get_lock(self, register, item_id):
        """Return the lock record of the item ``item_id``, or None when it is not locked."""
        raise NotImplementedError

    @abc.abstractmethod
    def put_lock(self, register, item_id, record):
        """Store the lock record of the item ``item_id``."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete_lock(self, register, item_id):
        """Delete the lock record of the item ``item_id``; a missing record is not an error."""
        raise NotImplementedError

    @abc.abstractmethod
    def locks(self, register):
        """Return a new dict ``item_id -> lock record`` of ``register``."""
        raise NotImplementedError

    # -- small per-site values: configuration, cleanup times, mailboxes, ...

    @abc.abstractmethod
    def get_meta(self, name, default=None):
        """Return the value stored under ``name``, or ``default``."""
        raise NotImplementedError

    @abc.abstractmethod
    def put_meta(self, name, value):
        """Store ``value`` under ``name``."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete_meta(self, name):
        """Delete the value stored under ``name``; a missing name is not an error."""
        raise NotImplementedError

    # -- atomicity and reset

    #: True when ``prefetch`` saves round trips, so callers may spend work on naming keys.
    prefetches = False

    @abc.abstractmethod
    def transaction(self):
        """Return a re-entrant context manager that makes a read-modify-write atomic.

        On the memory store it does nothing, because register code never
        yields to another greenlet between a read and a write. A networked
        backend turns the outermost block into one atomic unit, tried once:
        it raises StoreError when another writer got in the way, and
        ``run_atomic`` is the form that tries again.
        """
        raise NotImplementedError

    def run_atomic(self, function, *args, **kwargs):
        """Call ``function(*args, **kwargs)`` as one atomic read-modify-write; return its result.

        Every register method that reads and then writes runs through it. A
        networked backend may call ``function`` several times, until no other
        writer changed what it read, so ``function`` must not have effects
        outside the store other than logging. A call inside another
        ``run_atomic`` or ``transaction()`` joins it.
        """
        with self.transaction():
            return function(*args, **kwargs)

    def prefetch(self, items=(), data=(), meta=(), indexes=()):
        """Hint that the running transaction will read these values; the default does nothing.

        ``items`` and ``data`` are ``(register, item_id)`` pairs, ``meta``
        meta names and ``indexes`` ``(index, key)`` pairs. A networked
        backend reads them all in one round trip.
        """

    @abc.abstractmethod
    def clear(self):
        """Delete all the state of this site: items, data, indexes, locks and meta values."""
        raise NotImplementedError
