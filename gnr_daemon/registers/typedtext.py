"""Decoding of Genropy typed text ("12::L", "2024-05-01::D") into Python values.

Browsers send values as ``text::CODE``. Only the last ``::`` splits, and only
when CODE is made of uppercase ASCII letters. Any other string, such as
``"a::b"`` or ``"plain"``, is returned unchanged. Bytes are decoded as UTF-8
first. Values that are neither str nor bytes are returned unchanged, as
Genropy's GnrClassCatalog.fromTypedText does.

Type codes and their aliases follow GnrClassCatalog.standardClasses
(gnrpy/gnr/core/gnrclasses.py in genropy/genropy):

====================================  ==================  ===============
codes                                 result              empty text
====================================  ==================  ===============
T, TEXT, P, A                         str                 ``''``
L, I, INT, INTEGER, LONG, LONGINT     int                 ``0``
R, F, FLOAT, REAL                     float               ``0.0``
N, NUMERIC, DECIMAL                   Decimal             ``Decimal('0')``
B, BOOL, BOOLEAN                      bool                ``False``
D, DATE                               date                None
DH, DHZ, DT, DATETIME                 datetime            None
H, HZ, TIME                           time                None
JS                                    JSON value          None
NN, NONE, NULL                        None                None
====================================  ==================  ===============

This decoder is stricter than Genropy's, so a malformed value raises
TypedTextError instead of becoming a wrong value:

* int: optional sign and ASCII digits only.
* float and Decimal: decimal notation with optional exponent. NaN and
  infinities are rejected (Genropy turns ``inf::R`` into None).
* bool: true, yes, y, 1 and false, no, n, 0, in any letter case. Genropy
  reads every other text as False.
* date: ``YYYY-M-D`` with ``-``, ``/`` or ``.`` separators, ``0000-00-00``
  (None), or an ISO 8601 date-time whose date part is taken. Genropy also
  parses locale-dependent phrases ("today"), which need a workdate and locale
  that the daemon does not have.
* datetime and time: ISO 8601 as ``datetime.fromisoformat`` reads it (``Z``
  and offsets included). The result is naive or aware exactly as the text is.
* JS: invalid JSON raises (Genropy returns the raw text). NaN and Infinity
  literals are rejected.
* NN: only empty text, ``None`` or ``null``.

Codes that Genropy knows but the daemon cannot decode raise TypedTextError:
BAG/GNRBAG/X (Bag XML needs genropy), TD/TIMEDELTA (Genropy has no parser
either), RPC and CLS (CLS imports a class by name, which the daemon must never
do for browser input). Any other uppercase code is unknown and raises as well,
because guessing would hand a wrong type to the caller.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ['TypedTextError', 'decode_typed_text']

# Texts longer than this are shortened in error messages.
MAX_SHOWN_CHARS = 80

_TYPE_CODE = re.compile(r'[A-Z]+')
_INTEGER = re.compile(r'[+-]?[0-9]+')
_DECIMAL_NUMBER = re.compile(r'[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?')
_DATE_ONLY = re.compile(r'([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})')

_TRUE_WORDS = frozenset({'true', 'yes', 'y', '1'})
_FALSE_WORDS = frozenset({'false', 'no', 'n', '0'})
_NULL_WORDS = frozenset({'', 'None', 'null'})


class TypedTextError(ValueError):
    """Invalid typed text. ``text`` is the input and ``reason`` describes what is wrong with it."""

    def __init__(self, text: str | bytes, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__('invalid typed text %s: %s' % (_shorten(text), reason))


def decode_typed_text(text: Any) -> Any:
    """Return the Python value encoded by Genropy typed text (see the module docstring).

    Raises TypedTextError for invalid UTF-8, a malformed value, or a type code
    that is unknown or not supported by the daemon.
    """
    original = text
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode('utf-8')
        except UnicodeDecodeError as error:
            raise TypedTextError(original, 'not valid UTF-8 (%s)' % error.reason) from None
    elif not isinstance(text, str):
        return text
    value_text, separator, code = text.rpartition('::')
    if not separator or not _TYPE_CODE.fullmatch(code):
        return text
    decoder = _DECODERS.get(code)
    if decoder is None:
        if code in _UNSUPPORTED_CODES:
            raise TypedTextError(original, 'type code %r (%s) is not supported by the daemon'
                                 % (code, _UNSUPPORTED_CODES[code]))
        raise TypedTextError(original, 'unknown type code %r: send plain text without a '
                             '"::" suffix or use a Genropy type code such as T, L, R, N, '
                             'B, D, DH, H, JS or NN' % (code,))
    try:
        return decoder(value_text)
    except _InvalidValue as error:
        raise TypedTextError(original, str(error)) from None


class _InvalidValue(Exception):
    """Reason raised by a decoder, which decode_typed_text wraps in TypedTextError with the full text."""


def _shorten(text: str | bytes) -> str:
    shown = repr(text)
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS - 3] + '...'
    return shown


def _decode_text(text: str) -> str:
    return text


def _decode_int(text: str) -> int:
    if not text:
        return 0
    if not _INTEGER.fullmatch(text):
        raise _InvalidValue('%s is not an integer' % _shorten(text))
    try:
        return int(text)
    except ValueError as error:
        # int() rejects texts beyond sys.get_int_max_str_digits() (4300 by default).
        raise _InvalidValue('%s is not a usable integer (%s)' % (_shorten(text), error)) from None


def _decode_float(text: str) -> float:
    if not text:
        return 0.0
    if not _DECIMAL_NUMBER.fullmatch(text):
        raise _InvalidValue('%s is not a decimal number' % _shorten(text))
    value = float(text)
    if not math.isfinite(value):
        raise _InvalidValue('%s is out of the float range' % _shorten(text))
    return value


def _decode_decimal(text: str) -> Decimal:
    if not text:
        return Decimal('0')
    if not _DECIMAL_NUMBER.fullmatch(text):
        raise _InvalidValue('%s is not a decimal number' % _shorten(text))
    try:
        return Decimal(text)
    except InvalidOperation:
        raise _InvalidValue('%s is not a usable decimal number' % _shorten(text)) from None


def _decode_bool(text: str) -> bool:
    if not text:
        return False
    word = text.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise _InvalidValue('%s is not a boolean (use true/false, yes/no, y/n or 1/0)'
                        % _shorten(text))


def _decode_date(text: str) -> date | None:
    if not text or text == '0000-00-00':
        return None
    match = _DATE_ONLY.fullmatch(text)
    if match:
        year, _separator, month, day = match.groups()
        try:
            return date(int(year), int(month), int(day))
        except ValueError as error:
            # date() names the field out of range, e.g. "month must be in 1..12".
            raise _InvalidValue('%s is not a valid date (%s)' % (_shorten(text), error)) from None
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        raise _InvalidValue('%s is not a date (expected YYYY-MM-DD)' % _shorten(text)) from None


def _decode_datetime(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise _InvalidValue('%s is not an ISO 8601 date-time' % _shorten(text)) from None


def _decode_time(text: str) -> time | None:
    if not text:
        return None
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise _InvalidValue('%s is not an ISO 8601 time' % _shorten(text)) from None


def _reject_json_constant(name: str) -> None:
    raise _InvalidValue('JSON constant %s is not allowed' % name)


def _decode_json(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=_reject_json_constant)
    except json.JSONDecodeError as error:
        raise _InvalidValue('%s is not valid JSON (%s)' % (_shorten(text), error)) from None
    except RecursionError:
        raise _InvalidValue('JSON nesting is too deep') from None


def _decode_null(text: str) -> None:
    if text not in _NULL_WORDS:
        raise _InvalidValue('%s is not empty, None or null, as a ::NN value must be'
                            % _shorten(text))
    return None


def _build_decoders() -> dict[str, Callable[[str], Any]]:
    table: dict[Callable[[str], Any], tuple[str, ...]] = {
        _decode_text: ('T', 'TEXT', 'P', 'A'),
        _decode_int: ('L', 'I', 'INT', 'INTEGER', 'LONG', 'LONGINT'),
        _decode_float: ('R', 'F', 'FLOAT', 'REAL'),
        _decode_decimal: ('N', 'NUMERIC', 'DECIMAL'),
        _decode_bool: ('B', 'BOOL', 'BOOLEAN'),
        _decode_date: ('D', 'DATE'),
        _decode_datetime: ('DH', 'DHZ', 'DT', 'DATETIME'),
        _decode_time: ('H', 'HZ', 'TIME'),
        _decode_json: ('JS',),
        _decode_null: ('NN', 'NONE', 'NULL'),
    }
    return {code: decoder for decoder, codes in table.items() for code in codes}


_DECODERS = _build_decoders()

_UNSUPPORTED_CODES = {
    'BAG': 'Genropy Bag XML',
    'GNRBAG': 'Genropy Bag XML',
    'X': 'Genropy Bag XML',
    'TD': 'time delta, which Genropy cannot parse either',
    'TIMEDELTA': 'time delta, which Genropy cannot parse either',
    'RPC': 'Genropy RPC method reference',
    'CLS': 'Python class reference',
}
