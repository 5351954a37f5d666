"""Base classes of every wire message and of the maps nested in messages (PROTOCOL.md §1.2, §5).

A message is one msgpack map whose string `type` names it; msgspec's tagged structs give exactly
that shape. Field names are the wire's camelCase, absent optional fields are omitted on encoding
(`None`, or `UNSET` where absent and nil mean different things), and unknown fields are ignored when
decoding, as §1.2 requires. Messages are trees, never cycles, so the garbage collector does not
track them (`gc=False`): decoding a large frame then does not trigger collections that rescan
every object alive.
"""

from __future__ import annotations

import msgspec

__all__ = ["Message", "Wire"]


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
