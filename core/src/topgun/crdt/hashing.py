"""FNV-1a hashing, partitions and the strings the Merkle tries hash (PROTOCOL.md §3.1–3.4).

Every hash here is wire-visible: TS clients compute the same numbers and compare them
with ours, so each function reproduces the JavaScript computation exactly — FNV-1a over
UTF-16 code units (lone surrogates included), JS number formatting, JS `JSON.stringify`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from topgun.crdt.records import ORMapRecord, Timestamp

FNV_OFFSET = 0x811C9DC5
"""FNV-1a 32-bit offset basis: the hash of the empty string."""

FNV_PRIME = 0x01000193

PARTITION_COUNT = 271
"""Number of partitions keys are spread over (PROTOCOL.md §3.2)."""

_MAX_SAFE_INTEGER = 2**53


def fnv1a32(text: str, state: int = FNV_OFFSET) -> int:
    """FNV-1a 32-bit hash of `text`'s UTF-16 code units, as JS `charCodeAt` yields them.

    `state` continues an earlier hash: `fnv1a32(a + b) == fnv1a32(b, fnv1a32(a))`, which
    lets the Merkle trie reuse a key's routing hash as the prefix of its item hash.
    """
    units: Iterable[int]
    if text.isascii():
        units = text.encode("ascii")
    else:
        units = memoryview(text.encode("utf-16-le", "surrogatepass")).cast("H")
    h = state
    for unit in units:
        h = ((h ^ unit) * FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(key: str) -> int:
    """The partition (0..270) that owns `key`: `fnv1a32(key) % 271`."""
    return fnv1a32(key) % PARTITION_COUNT


def merkle_path(key_hash: int) -> str:
    """The depth-3 leaf path of a key with FNV-1a hash `key_hash`: its first 3 hex digits."""
    return f"{key_hash >> 20:03x}"


def lww_item_hash(key: str, timestamp: Timestamp) -> int:
    """Hash of one LWW record in the trie: `fnv1a32(key + ":" + str(timestamp))`.

    The value is not hashed, so a tombstone is an item like any other.
    """
    return fnv1a32(f"{key}:{timestamp}")


def utf16_sort_key(text: str) -> bytes:
    """Sort key that orders strings by UTF-16 code units, as JS `Array.prototype.sort` does."""
    return text.encode("utf-16-be", "surrogatepass")


def sorted_utf16(texts: Iterable[str]) -> list[str]:
    """`texts` in UTF-16 code-unit order (code-point order differs above U+FFFF)."""
    items = list(texts)
    if all(t.isascii() for t in items):
        return sorted(items)
    return sorted(items, key=utf16_sort_key)


def js_number(x: float) -> str:
    """JS `String(x)` for a number: `5.0` → `"5"`, `1e21` → `"1e+21"`, `-0` → `"0"`."""
    if isinstance(x, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(x, int):
        if -_MAX_SAFE_INTEGER < x < _MAX_SAFE_INTEGER:
            return str(x)
        try:
            x = float(x)  # JS holds every number as a double: print what it would hold
        except OverflowError:
            return "Infinity" if x > 0 else "-Infinity"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    if x < 0:
        return "-" + js_number(-x)
    # repr gives the shortest round-trip digits, as ECMAScript's Number::toString requires;
    # only the layout differs. Value = 0.<digits> × 10^n.
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    n = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    n -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{head}e{'+' if e >= 0 else '-'}{abs(e)}"


_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
# A surrogate pair stays literal (JS sees one character); a lone surrogate is escaped.
_JSON_SPECIAL = re.compile('[\ud800-\udbff][\udc00-\udfff]|[\x00-\x1f"\\\\\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if len(ch) == 2:
        return ch
    return _JSON_ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _json_string(text: str) -> str:
    """JS `JSON.stringify` of a string: `\\n`-style escapes, `\\u00xx` controls, lone surrogates."""
    return '"' + _JSON_SPECIAL.sub(_escape, text) + '"'


def _json(value: Any, allowed: list[str]) -> str:
    """Compact JSON where every map emits only the keys in `allowed`, in that order."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return js_number(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(item, allowed) for item in value) + "]"
    if isinstance(value, bytes | bytearray | memoryview):
        return _json(_bytes_as_object(value), allowed)
    if isinstance(value, Mapping):
        _check_keys(value)
        parts = [f"{_json_string(k)}:{_json(value[k], allowed)}" for k in allowed if k in value]
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"cannot hash a value of type {type(value).__name__} (not a msgpack value)")


def _bytes_as_object(value: bytes | bytearray | memoryview) -> dict[str, int]:
    # msgpackr decodes `bin` as a Uint8Array, which JSON.stringify serializes as an object
    # of its indices. PROTOCOL.md calls binary OR-Map values' hashes undefined; this keeps
    # them at least deterministic.
    return {str(i): b for i, b in enumerate(bytes(value))}


def _check_keys(value: Mapping[Any, Any]) -> None:
    for k in value:
        if not isinstance(k, str):
            raise TypeError(f"map keys must be strings (PROTOCOL.md J4), got {k!r}")


def stable_json(
    value: Mapping[str, Any] | list[Any] | tuple[Any, ...] | bytes | bytearray | memoryview,
) -> str:
    """`S(value)` of PROTOCOL.md §3.4: `JSON.stringify(value, sortedTopLevelKeys)`.

    The top level's own keys (an array's indices as strings), sorted by UTF-16 order, are
    the only keys any nested map emits: `{"b":1,"a":{"z":1,"b":2}}` → `{"a":{"b":2},"b":1}`.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        value = _bytes_as_object(value)
    if isinstance(value, Mapping):
        _check_keys(value)
        allowed = sorted_utf16(value)
    elif isinstance(value, list | tuple):
        allowed = sorted(str(i) for i in range(len(value)))
    else:
        raise TypeError(f"stable_json needs a map or an array, got {type(value).__name__}")
    return _json(value, allowed)


def js_value_string(value: Any) -> str:
    """`V(value)` of PROTOCOL.md §3.4: how an OR-Map record's value enters its entry hash."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return js_number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple | bytes | bytearray | memoryview):
        return stable_json(value)
    raise TypeError(f"cannot hash a value of type {type(value).__name__} (not a msgpack value)")


def or_record_string(record: ORMapRecord) -> str:
    """A record's part of its entry hash input: `tag:V(value):millis:counter:nodeId[:ttl=N]`."""
    part = f"{record.tag}:{js_value_string(record.value)}:{record.timestamp}"
    if record.ttl_ms is not None:
        part += f":ttl={js_number(record.ttl_ms)}"
    return part


def or_entry_hash(key: str, record_strings: Mapping[str, str]) -> int:
    """Hash of one OR-Map key: `fnv1a32("key:" + key + "|" + join("|", R))`.

    `record_strings` maps each non-tombstoned tag of the key to its `or_record_string`;
    they are joined in ascending UTF-16 tag order. A key without records hashes to 0 (a
    "dead key" contributes nothing to the trie).
    """
    if not record_strings:
        return 0
    if len(record_strings) == 1:
        (joined,) = record_strings.values()
    else:
        joined = "|".join([record_strings[tag] for tag in sorted_utf16(record_strings)])
    return fnv1a32(f"key:{key}|{joined}")
