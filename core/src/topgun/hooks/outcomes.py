"""What an interceptor hook raises or returns to refuse what it was asked about."""

from __future__ import annotations

import enum
from typing import Final


class Rejected(Exception):
    """Raised by `on_connection`, `on_authenticated`, `verify_token` or `before_op` to refuse.

    The server turns it into the protocol's answer for that place: close 4000 for a
    connection, `AUTH_FAIL` + close 4001 for authentication, a failed op result and
    `OP_REJECTED` for an op. `reason` is shown to the client, so keep it free of secrets;
    `code` overrides the op's rejection code (PROTOCOL.md §5.17; default 403).
    """

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        if not isinstance(reason, str) or not reason:
            raise TypeError(f"Rejected needs a non-empty reason string, got {reason!r}")
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Drop(enum.Enum):
    DROP = "DROP"

    def __repr__(self) -> str:
        return "DROP"


DROP: Final = _Drop.DROP
"""Returned by `before_op` to drop the op: it fails with "Dropped by server policy" and
no later `before_op` implementation sees it."""
