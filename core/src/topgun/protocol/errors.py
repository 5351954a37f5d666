"""The one exception decoding raises, and what the server does about each kind (PROTOCOL.md §1.2,
§1.4, §5).

`ProtocolError.code` is short and machine-readable; `close_code` and `error_reply()` turn it into
the connection close or the `ERROR` reply the spec prescribes, so that mapping lives here only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from topgun.protocol.auth import Error, ErrorPayload

__all__ = ["ErrorCode", "ProtocolError"]


class ErrorCode(StrEnum):
    """Why a frame was refused."""

    FRAME_TOO_LARGE = "frame_too_large"
    """Larger than the configured maximum: close 1009."""
    UNDECODABLE = "undecodable"
    """Neither msgpack nor JSON: close 1002."""
    TOO_DEEP = "too_deep"
    """A value nests deeper than the configured maximum: ERROR 400."""
    INVALID_MESSAGE = "invalid_message"
    """Decoded, but not a map with a string `type`: ERROR 400."""
    UNSUPPORTED_TYPE = "unsupported_type"
    """An unknown `type`, or one not valid in this direction: ERROR 400."""
    INVALID_FIELD = "invalid_field"
    """A known type whose fields do not validate: ERROR 400."""


_CLOSE_CODES: Final[dict[ErrorCode, int]] = {
    ErrorCode.FRAME_TOO_LARGE: 1009,
    ErrorCode.UNDECODABLE: 1002,
}
_REPLY_MESSAGES: Final[dict[ErrorCode, str]] = {
    ErrorCode.TOO_DEEP: "Invalid message format",
    ErrorCode.INVALID_MESSAGE: "Invalid message format",
    ErrorCode.UNSUPPORTED_TYPE: "Unsupported message type",
    ErrorCode.INVALID_FIELD: "Invalid message format",
}


class ProtocolError(Exception):
    """A frame that cannot be turned into a valid message.

    `path` locates the offending value (`$.payload.ops[0].key`) when known. `message_type` is the
    frame's `type` and `correlation` its correlation ids (`queryId`, `requestId`,
    `subscriptionId`; `opId` for `CLIENT_OP`) when they could be read, so that the server can
    address its answer (e.g. `AUTH_FAIL` for a bad `AUTH`, `OP_REJECTED` for a bad `CLIENT_OP`).
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        path: str | None = None,
        message_type: str | None = None,
        correlation: dict[str, str] | None = None,
    ) -> None:
        where = f" at {path}" if path else ""
        super().__init__(f"{code.value}: {detail}{where}")
        self.code = code
        self.detail = detail
        self.path = path
        self.message_type = message_type
        self.correlation: dict[str, str] = correlation or {}

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code this error requires, or None when the connection stays open."""
        return _CLOSE_CODES.get(self.code)

    def details(self) -> dict[str, Any]:
        """`ERROR.payload.details`: `{type, issues, <correlation ids>}` (§5)."""
        issue: dict[str, str] = {"code": self.code.value, "message": self.detail}
        if self.path:
            issue["path"] = self.path
        return {"type": self.message_type, "issues": [issue], **self.correlation}

    def error_reply(self) -> Error | None:
        """The `ERROR` message to send, or None when the connection must be closed instead."""
        if self.code in _CLOSE_CODES:
            return None
        return Error(
            payload=ErrorPayload(
                code=400, message=_REPLY_MESSAGES[self.code], details=self.details()
            )
        )
