"""Page filters of ``pages(filters=...)`` and ``setInClientData(filters=...)``.

Syntax: ``"field:pattern AND field:pattern ..."``. A page matches when every
clause matches (logical AND). ``pattern`` is a regular expression matched at
the start of the field's value:

- a string value is matched as it is;
- a collection value (such as ``subscribed_tables``) matches when one of its
  elements matches;
- any other value (numbers, booleans, datetimes) is matched as ``str(value)``;
- a missing field, None, an empty string or an empty collection never matches.

``None``, ``""`` and ``"*"`` mean no filter.
"""

import re

__all__ = ["parse_filters", "item_matches"]

_CLAUSE_SEPARATOR = re.compile(r"\s+AND\s+")


def parse_filters(filters):
    """Return a list of ``(field, compiled pattern)``, or None when ``filters`` means no filter.

    Raises ValueError naming the clause or pattern that is invalid.
    """
    if filters is None:
        return None
    if not isinstance(filters, str):
        raise TypeError(f"invalid filters {filters!r}: expected a string such as "
                        "'user:alice AND pagename:index'")
    filters = filters.strip()
    if not filters or filters == "*":
        return None
    clauses = []
    for clause in _CLAUSE_SEPARATOR.split(filters):
        field, separator, pattern = clause.partition(":")
        field = field.strip()
        if not separator or not field:
            raise ValueError(f"invalid filter clause {clause!r} in {filters!r}: expected "
                             "'field:pattern', clauses joined by ' AND '")
        try:
            compiled = re.compile(pattern.strip())
        except re.error as error:
            raise ValueError(f"invalid regular expression {pattern.strip()!r} for field {field!r} "
                             f"in filters {filters!r}: {error}; escape special characters "
                             "with a backslash") from None
        clauses.append((field, compiled))
    return clauses


def item_matches(item, clauses):
    """Return whether ``item`` satisfies every ``(field, pattern)`` clause."""
    return all(_value_matches(item.get(field), pattern) for field, pattern in clauses)


def _value_matches(value, pattern):
    if value is None:
        return False
    if isinstance(value, (set, frozenset, list, tuple)):
        return any(_value_matches(element, pattern) for element in value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return bool(text) and pattern.match(text) is not None
