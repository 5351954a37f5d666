"""The client's view of a transport: frames in, frames out, nothing about the protocol.

The sync engine talks to a `Connection` that a `Connector` opened, and knows nothing else
about the transport: the WebSocket connector is one implementation; HTTP polling, SSE and
the in-memory transport of deterministic simulation plug in the same way.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

__all__ = ["Connection", "ConnectionClosed", "ConnectionState", "Connector"]


class ConnectionState(enum.Enum):
    """Where a client is in its connection life cycle (`client.state`)."""

    OFFLINE = "offline"
    """Not connected: before the first attempt, or waiting to retry after a failure."""
    CONNECTING = "connecting"
    """Opening the transport."""
    AUTHENTICATING = "authenticating"
    """Transport open, `AUTH` sent, waiting for `AUTH_ACK`."""
    CONNECTED = "connected"
    """Authenticated: writes flow, subscriptions are live."""
    AUTH_FAILED = "auth_failed"
    """The server refused the token; the client stops retrying (no loop against a bad token)."""
    CLOSED = "closed"
    """The client was closed."""


class ConnectionClosed(Exception):
    """The transport closed; `code` and `reason` are the peer's, when it gave them."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{' ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


@runtime_checkable
class Connection(Protocol):
    """One open transport carrying whole protocol frames (msgpack bytes)."""

    @property
    def is_open(self) -> bool:
        """False once either side closed it."""

    async def send(self, frame: bytes) -> None:
        """Send one frame; raises `ConnectionClosed` once closed. Safe to call concurrently."""

    async def receive(self) -> bytes:
        """The next frame from the server; raises `ConnectionClosed` when the transport ends."""

    async def aclose(self) -> None:
        """Close (idempotent)."""


@runtime_checkable
class Connector(Protocol):
    """Opens connections to one server; the client calls it on every (re)connect."""

    async def connect(self) -> Connection:
        """A new open connection; raises `OSError` (or `ConnectionClosed`) when it cannot."""
