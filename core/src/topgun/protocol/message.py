"""Base classes of every wire message and of the maps nested in messages (PROTOCOL.md §1.2, §5).

A message is one msgpack map whose string `type` names it; msgspec's tagged structs give exactly
that shape. Field names are the wire's camelCase, absent optional fields are omitted on encoding
(`None`, or `UNSET` where absent and nil mean different things), and unknown fields are ignored when
decoding, as §1.2 requires. Messages are trees, never cycles, so the garbage collector does not
track them (`gc=False`): decoding a large frame then does not trigger collections that rescan
every object alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

__all__ = ["CORRELATION_FIELDS", "Message", "Wire", "correlation_ids"]

CORRELATION_FIELDS: Final = ("query_id", "request_id", "subscription_id")
"""Fields that tie an answer (or an `ERROR`) to its request."""


class Message(
    msgspec.Struct,
    tag_field="type",
    rename="camel",
    omit_defaults=True,
    kw_only=True,
    gc=False,
):
    """A wire message: each subclass sets `tag=` to its PROTOCOL.md `type`."""


class Wire(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    """A map nested inside a message (a `payload`, a result row, an op, …)."""


def correlation_ids(message: Any, fields: Iterable[str] = CORRELATION_FIELDS) -> dict[str, str]:
    """The string values of `fields` on `message` or its `payload`, by camelCase wire name:
    what an `ERROR` about the message puts in its `details`."""
    found: dict[str, str] = {}
    for holder in (message, getattr(message, "payload", None)):
        for name in fields:
            value = getattr(holder, name, None)
            if isinstance(value, str):
                first, *rest = name.split("_")
                found[first + "".join(part.title() for part in rest)] = value
    return found
