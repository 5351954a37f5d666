"""Opaque pagination cursors (PROTOCOL.md §6.6, §7.4).

A cursor is base64url (no padding) of UTF-8 JSON in the reference format:

    {"nodeValues": {"local": <last sort value>}, "nodeKeys": {"local": <last key>},
     "sortField": ..., "sortDirection": ..., "predicateHash": ..., "sortHash": ...,
     "timestamp": <ms>}

Clients never look inside; the server checks one on the way back in and reports what it found
(`valid`, `expired`, `invalid`, or `none` for no cursor). A cursor is data, never code: it is
decoded with a typed schema and only its position is used, to compare rows with. A forged
cursor that passes every check is harmless: it can only choose where in the query's own result
a page starts. Cursors never read the clock: the caller passes `now_ms`.

For a sort with more than one field the reference format cannot say where a page ended
(rows tied on the first field are ordered by the next ones, not by key), so topgun adds
`"sortValues": [...]`, one value per sort field; with one sort field the cursor is exactly the
reference's.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from topgun.crdt.hashing import fnv1a32
from topgun.protocol.queries import CursorStatus
from topgun.query.sort import OrderKey, SortSpec
from topgun.query.values import canonical_json, js_json

__all__ = [
    "CURSOR_MAX_AGE_MS",
    "CURSOR_MAX_LENGTH",
    "CURSOR_MAX_SKEW_MS",
    "CursorCheck",
    "check_cursor",
    "encode_cursor",
    "query_hash",
]

CURSOR_MAX_AGE_MS: Final = 10 * 60 * 1000
"""A cursor older than this is `expired` (§7.4)."""
CURSOR_MAX_SKEW_MS: Final = 60 * 1000
"""A cursor stamped further than this in the future was not made by a server: `invalid`."""
CURSOR_MAX_LENGTH: Final = 16 * 1024
"""Longer strings are `invalid` without being decoded."""

_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_MAX_SAFE_INTEGER: Final = 2**53


def query_hash(value: Any) -> int:
    """`fnv1a32(C(value))`: the `predicateHash`/`sortHash` of §7.4."""
    return fnv1a32(canonical_json(value))


class _CursorData(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    node_values: dict[str, Any]
    node_keys: dict[str, str]
    sort_field: str
    sort_direction: Literal["asc", "desc"]
    predicate_hash: int
    sort_hash: int
    timestamp: int
    sort_values: list[Any] | None = None


def _as_written(value: Any) -> Any:
    """A decoded sort value as the number it was written from: JS prints a double beyond 2^53
    as an integer (`6.2e16` → `62000000000000000`), which must compare as that double."""
    if value.__class__ is int and abs(value) > _MAX_SAFE_INTEGER:
        return float(value)
    return value


@dataclass(frozen=True, slots=True)
class CursorCheck:
    """What an incoming cursor turned out to be; `position` (the order key of the last row
    of the previous page) is set only when `status` is `valid`."""

    status: CursorStatus
    position: OrderKey | None = None


_NONE: Final = CursorCheck("none")
_INVALID: Final = CursorCheck("invalid")
_EXPIRED: Final = CursorCheck("expired")


def encode_cursor(
    *,
    sort: SortSpec,
    sort_values: tuple[Any, ...],
    key: str,
    predicate_hash: int,
    sort_hash: int,
    now_ms: int,
) -> str:
    """The cursor that resumes after the row `key` whose sort-field values are `sort_values`."""
    first = sort.first
    text = (
        '{"nodeValues":{"local":'
        + js_json(sort_values[0])
        + '},"nodeKeys":{"local":'
        + js_json(key)
        + '},"sortField":'
        + js_json(first.field)
        + ',"sortDirection":"'
        + first.direction
        + f'","predicateHash":{predicate_hash},"sortHash":{sort_hash},"timestamp":{now_ms}'
    )
    if len(sort.fields) > 1:
        text += ',"sortValues":' + js_json(list(sort_values))
    raw = (text + "}").encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(cursor: str) -> _CursorData | None:
    if len(cursor) > CURSOR_MAX_LENGTH or not _BASE64URL.fullmatch(cursor):
        return None
    body = cursor.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return msgspec.json.decode(raw, type=_CursorData)
    except (binascii.Error, ValueError, msgspec.DecodeError, RecursionError):
        return None


def check_cursor(
    cursor: str | None,
    *,
    sort: SortSpec,
    predicate_hash: int,
    sort_hash: int,
    now_ms: int,
) -> CursorCheck:
    """Validate `cursor` against the current query (§7.4): undecodable, inconsistent or made
    for another filter or sort → `invalid`; older than 10 minutes → `expired`."""
    if cursor is None:
        return _NONE
    data = _decode(cursor)
    if data is None:
        return _INVALID
    first = sort.first
    if (
        set(data.node_values) != {"local"}
        or set(data.node_keys) != {"local"}
        or data.sort_field != first.field
        or data.sort_direction != first.direction
        or data.predicate_hash != predicate_hash
        or data.sort_hash != sort_hash
        or data.timestamp > now_ms + CURSOR_MAX_SKEW_MS
    ):
        return _INVALID
    local = data.node_values["local"]
    if len(sort.fields) == 1:
        if data.sort_values is not None:
            return _INVALID
        values: tuple[Any, ...] = (local,)
    else:
        if data.sort_values is None or len(data.sort_values) != len(sort.fields):
            return _INVALID
        values = tuple(data.sort_values)
        if js_json(values[0]) != js_json(local):
            return _INVALID
    if now_ms - data.timestamp > CURSOR_MAX_AGE_MS:
        return _EXPIRED
    values = tuple(_as_written(v) for v in values)
    return CursorCheck("valid", sort.order_key_from_values(values, data.node_keys["local"]))
