"""Restricted unpickling: only classes on an allow-list can be built.

A pickle names every class or function it needs as ``module.name``. The
unpickler here resolves only names on the allow-list, and raises
``ForbiddenClass`` for any other name before anything of the payload runs. The
allow-list contains Python's containers and scalars, ``datetime``,
``decimal``, ``uuid`` and ``collections`` types, and gnr_daemon's own data
classes (``DataTree``, ``DataNode``, ``DataChange``); operators add classes
with ``--allow-class module.Class``. The same policy serves requests on the
wire, dump files and values read from Redis, so a value that crossed the
wire can always be saved and restored.

``--unrestricted-pickle`` turns the check off for a fully trusted legacy
setup: then any signed payload can run code in the daemon.
"""

import io
import logging
import pickle

__all__ = [
    "DEFAULT_ALLOWED_CLASSES",
    "ForbiddenClass",
    "UnpicklePolicy",
    "configure",
    "current_policy",
    "restricted_loads",
    "parse_class_names",
]

log = logging.getLogger(__name__)

#: ``(module, name)`` pairs every policy allows.
DEFAULT_ALLOWED_CLASSES = frozenset({
    ("builtins", name) for name in (
        "set", "frozenset", "bytearray", "complex", "slice", "range",
        "list", "dict", "tuple", "str", "bytes", "int", "float", "bool",
    )
} | {
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("datetime", "tzinfo"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"), ("uuid", "SafeUUID"),
    ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"),
    ("collections", "defaultdict"),
    ("gnr_daemon.registers.datatree", "DataTree"),
    ("gnr_daemon.registers.datatree", "DataNode"),
    ("gnr_daemon.registers.datachange", "DataChange"),
})


class ForbiddenClass(pickle.UnpicklingError):
    """A pickle referenced a class or function outside the allow-list."""

    def __init__(self, module, name):
        self.class_name = f"{module}.{name}"
        super().__init__(
            f"class {self.class_name} is not allowed: only data classes belong on the "
            "allow-list; if a trusted client must send this one and it is a data class, start "
            f"the daemon with --allow-class {self.class_name} (or add it to "
            "GNR_DAEMON_ALLOW_CLASSES)"
        )


def parse_class_names(text):
    """Turn ``"mod.Class, other.mod.Name"`` (or a list) into ``(module, name)`` pairs."""
    if not text:
        return frozenset()
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    pairs = set()
    for item in items:
        item = item.strip()
        if not item:
            continue
        module, dot, name = item.rpartition(".")
        if not dot or not module or not name.isidentifier() or \
                not all(part.isidentifier() for part in module.split(".")):
            raise ValueError(f"invalid class name {item!r}: write it as module.Class, "
                             "for example decimal.Decimal")
        pairs.add((module, name))
    return frozenset(pairs)


class UnpicklePolicy:
    """Set of classes that may be unpickled; ``restricted=False`` allows every class."""

    def __init__(self, extra_classes=(), restricted=True):
        self.restricted = restricted
        self.allowed = DEFAULT_ALLOWED_CLASSES | frozenset(extra_classes)

    def __repr__(self):
        if not self.restricted:
            return "<UnpicklePolicy unrestricted>"
        return f"<UnpicklePolicy {len(self.allowed)} classes>"

    def loads(self, data):
        """Unpickle ``data`` under this policy."""
        if not self.restricted:
            return pickle.loads(data)
        return _RestrictedUnpickler(io.BytesIO(data), self.allowed).load()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed):
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise ForbiddenClass(module, name)
        return super().find_class(module, name)


_policy = [UnpicklePolicy()]


def configure(extra_classes=(), restricted=True):
    """Set the process-wide policy used for requests, dumps and stored values."""
    _policy[0] = UnpicklePolicy(extra_classes, restricted)
    return _policy[0]


def current_policy():
    """Return the process-wide policy."""
    return _policy[0]


def restricted_loads(data):
    """Unpickle ``data`` under the process-wide policy."""
    return _policy[0].loads(data)
