"""Timestamps and records: the values CRDTs store and the wire carries (PROTOCOL.md §2.1–2.2).

They are msgspec Structs so that `topgun.protocol` embeds them in messages as they are:
one definition, validated while decoding, with the wire's field names (`nodeId`, `ttlMs`).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Timestamp(msgspec.Struct, frozen=True, order=True, rename="camel"):
    """A hybrid logical clock reading: ordered by millis, then counter, then node id."""

    millis: int
    counter: int
    node_id: str

    def __str__(self) -> str:
        return f"{self.millis}:{self.counter}:{self.node_id}"

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse the string form `"<millis>:<counter>:<nodeId>"` (exactly three parts)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"timestamp {text!r} must have exactly 3 ':'-separated parts")
        millis, counter, node_id = parts
        if not (
            millis.isascii() and counter.isascii() and millis.isdecimal() and counter.isdecimal()
        ):
            raise ValueError(f"timestamp {text!r} must have decimal millis and counter")
        return cls(int(millis), int(counter), node_id)


ZERO = Timestamp(0, 0, "")
"""Sorts before every real timestamp."""


class LWWRecord(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A last-writer-wins value; `value is None` marks a tombstone."""

    value: Any
    timestamp: Timestamp
    ttl_ms: float | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def expired(self, now_ms: int) -> bool:
        """True once `timestamp.millis + ttl_ms < now_ms` (PROTOCOL.md §2.2)."""
        return self.ttl_ms is not None and self.timestamp.millis + self.ttl_ms < now_ms


class ORMapRecord(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One observed-remove record; its `tag` is the string form of its timestamp."""

    value: Any
    timestamp: Timestamp
    tag: str
    ttl_ms: float | None = None

    def expired(self, now_ms: int) -> bool:
        """True once `timestamp.millis + ttl_ms < now_ms`."""
        return self.ttl_ms is not None and self.timestamp.millis + self.ttl_ms < now_ms
