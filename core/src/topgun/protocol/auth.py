"""Authentication, liveness and connection-level messages (PROTOCOL.md §5.1, §4).

These carry their fields at the top level, except `ERROR` (under `payload`). `BATCH` is the
coalesced frame of §1.3; `topgun.protocol.batch` packs and unpacks its `data`.
"""

from __future__ import annotations

from typing import Any

from topgun.protocol.message import Message, Wire

__all__ = [
    "Auth",
    "AuthAck",
    "AuthFail",
    "AuthRequired",
    "Batch",
    "Error",
    "ErrorPayload",
    "Ping",
    "Pong",
    "ShutdownPending",
]


class AuthRequired(Message, tag="AUTH_REQUIRED"):
    """S→C, first frame after accept: the client must authenticate."""


class Auth(Message, tag="AUTH"):
    """C→S: a bearer token (JWT). `protocolVersion` is accepted and ignored."""

    token: str
    protocol_version: int | None = None


class AuthAck(Message, tag="AUTH_ACK"):
    """S→C: the connection is authenticated."""

    protocol_version: int | None = None


class AuthFail(Message, tag="AUTH_FAIL"):
    """S→C: authentication failed; close 4001 follows."""

    error: str
    code: int | None = None


class Ping(Message, tag="PING"):
    """C→S heartbeat carrying the client's clock in ms."""

    timestamp: float


class Pong(Message, tag="PONG"):
    """S→C heartbeat reply; deliberately no top-level `timestamp` (rule J7).

    topgun always sends `pingTimestamp`; it is optional here only so that the Python client can
    read the reference server's PONG (`{timestamp, serverTime}`, §10 D9).
    """

    server_time: int
    ping_timestamp: float | None = None


class ShutdownPending(Message, tag="SHUTDOWN_PENDING"):
    """S→C: the server is shutting down; reconnect after `retryAfter` ms (close 1001 follows)."""

    retry_after: int


class Batch(Message, tag="BATCH"):
    """S→C: `count` coalesced messages packed into `data` (layout in §1.3)."""

    count: int
    data: bytes


class ErrorPayload(Wire):
    """`code` is one of §5.17 (400, 403, 409, 429, 500, 501, 503)."""

    code: int
    message: str
    details: Any = None


class Error(Message, tag="ERROR"):
    """S→C: a request failed; the connection stays open."""

    payload: ErrorPayload
