"""DataChange: one change to a client data path, queued for delivery to a browser page.

Two changes are equal when they have the same path, reason and fired flag,
whatever their values, so a queue can replace a pending change to a path with
a newer one. ``change_ts`` defaults to the local naive time of construction.
"""

from __future__ import annotations

import reprlib
from datetime import datetime
from typing import Any

__all__ = ['DataChange']

_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxstring = 60
_VALUE_REPR.maxother = 60


class DataChange:
    """A queued change: the new ``value`` at ``path`` plus delivery metadata.

    ``fired`` marks an event: the client fires ``path`` instead of storing the
    value. ``delete`` marks the removal of ``path``. ``change_idx`` is an
    optional sequence number set by whoever queues the change.
    """

    __slots__ = ('path', 'value', 'reason', 'fired', 'attributes',
                 'change_ts', 'delete', 'change_idx')

    def __init__(self, path: str, value: Any, attributes: dict | None = None,
                 fired: bool = False, reason: Any = None, change_ts: datetime | None = None,
                 change_idx: int | None = None, delete: bool = False) -> None:
        self.path = path
        self.value = value
        self.reason = reason
        self.fired = fired
        self.attributes = attributes
        self.change_ts = change_ts if change_ts is not None else datetime.now()
        self.delete = delete
        self.change_idx = change_idx

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataChange):
            return NotImplemented
        return (self.path == other.path
                and self.reason == other.reason
                and self.fired == other.fired)

    def __hash__(self) -> int:
        return hash((self.path, self.reason, self.fired))

    def __repr__(self) -> str:
        return ('DataChange(path=%r, value=%s, reason=%r, fired=%r, delete=%r, '
                'change_idx=%r, change_ts=%s)' % (
                    self.path, _VALUE_REPR.repr(self.value), self.reason, self.fired,
                    self.delete, self.change_idx, self.change_ts.isoformat()))

    def copy(self) -> DataChange:
        """Return a shallow copy whose ``attributes`` dict is independent of this one."""
        return DataChange(
            self.path, self.value,
            attributes=dict(self.attributes) if self.attributes is not None else None,
            fired=self.fired, reason=self.reason, change_ts=self.change_ts,
            change_idx=self.change_idx, delete=self.delete)
