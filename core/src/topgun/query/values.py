"""The value model of the query language (PROTOCOL.md §7.1): attribute lookup, equality,
ordering, the sort comparator and canonical JSON.

Row values are what msgpack/JSON decode to: `None`, `bool`, `int`, `float`, `str`, `bytes`,
`list` and `dict` (string keys). An attribute that a row does not have is `ABSENT`, which is
distinct from nil: `eq(x, nil)` matches `{"x": null}` but not `{}`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from topgun.crdt.hashing import js_number, sorted_utf16

__all__ = [
    "ABSENT",
    "NOT_EQUATABLE",
    "Absent",
    "attribute",
    "canonical_json",
    "equality_key",
    "js_json",
    "ordered",
    "sort_key",
    "values_equal",
]


class Absent:
    """The type of `ABSENT`: an attribute the row does not have."""

    _instance: Absent | None = None

    def __new__(cls) -> Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent()


def attribute(value: Any, name: str) -> Any:
    """`value[name]` if `value` is a map holding `name`, else `ABSENT` (no dot paths)."""
    if value.__class__ is dict:
        return value.get(name, ABSENT)
    if isinstance(value, Mapping):
        return value.get(name, ABSENT)
    return ABSENT


def _is_number(value: Any) -> bool:
    cls = value.__class__
    return cls is int or cls is float or (isinstance(value, int | float) and cls is not bool)


def values_equal(a: Any, b: Any) -> bool:
    """§7.1 equality: two scalars of one kind (numbers numerically, a bool never a number),
    nil only to nil, absent only to absent; a map, array or byte string equals nothing."""
    if a is ABSENT or b is ABSENT:
        return a is b
    if a is None or b is None:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if _is_number(a):
        return _is_number(b) and a == b
    return False


class _NotEquatable:
    def __repr__(self) -> str:
        return "NOT_EQUATABLE"


NOT_EQUATABLE: Final = _NotEquatable()
"""The `equality_key` of values that equal nothing (maps, arrays, bytes, NaN)."""


def equality_key(value: Any) -> Any:
    """A hashable key such that `values_equal(a, b)` implies `equality_key(a) ==
    equality_key(b)` (hash indexes bucket by it). Maps, arrays, bytes and NaN, which equal
    nothing, all get `NOT_EQUATABLE`."""
    if value is None or value is ABSENT:
        return value
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, str):
        return value
    if _is_number(value):
        if value != value:  # NaN
            return NOT_EQUATABLE
        return (float, value)  # 1 and 1.0 hash alike and compare equal
    return NOT_EQUATABLE


def ordered(a: Any, b: Any) -> int | None:
    """§7.1 ordering: -1, 0 or 1 for two numbers or two strings (code-point order); None
    for any other pair (every range comparison on it is false)."""
    if isinstance(a, str):
        if isinstance(b, str):
            return int(a > b) - int(a < b)
        return None
    if _is_number(a) and _is_number(b):
        if a != a or b != b:  # NaN: every comparison false
            return None
        return int(a > b) - int(a < b)
    return None


def sort_key(value: Any) -> tuple[Any, ...]:
    """The §7.1 sort comparator as a key: nil/absent < false < true < numbers < strings <
    anything else (by canonical JSON). NaN sorts before every other number."""
    if value is None or value is ABSENT:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if _is_number(value):
        if value != value:
            return (2, 0, 0)
        return (2, 1, value)
    if isinstance(value, str):
        return (3, value)
    return (4, canonical_json(value))


_JSON_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_JSON_SPECIAL: Final = re.compile('[\ud800-\udbff][\udc00-\udfff]|[\x00-\x1f"\\\\\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if len(ch) == 2:  # a surrogate pair is one character to JS: kept as is
        return ch
    return _JSON_ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _json_string(text: str) -> str:
    return '"' + _JSON_SPECIAL.sub(_escape, text) + '"'


def js_json(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON as JS `JSON.stringify` writes it (numbers as JS prints them, NaN and
    infinities as null, absent as null); with `sort_keys`, every map's keys in UTF-16 order
    (canonical JSON)."""
    if value is None or value is ABSENT:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "null"
        return js_number(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_json(item, sort_keys=sort_keys) for item in value) + "]"
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"map keys must be strings, got {k!r}")
        keys = sorted_utf16(value) if sort_keys else list(value)
        return (
            "{"
            + ",".join(f"{_json_string(k)}:{js_json(value[k], sort_keys=sort_keys)}" for k in keys)
            + "}"
        )
    if isinstance(value, bytes | bytearray | memoryview):
        # msgpackr gives a Uint8Array, which JSON.stringify writes as an object of indices.
        return js_json({str(i): b for i, b in enumerate(bytes(value))}, sort_keys=sort_keys)
    raise TypeError(f"cannot write a value of type {type(value).__name__} as JSON")


def canonical_json(value: Any) -> str:
    """`C(value)` of §7.4: recursively sorted keys, compact, integral numbers without fraction."""
    return js_json(value, sort_keys=True)
