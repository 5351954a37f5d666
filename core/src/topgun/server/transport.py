"""The transport interface sessions talk to: WebSocket, SSE and in-memory all implement it.

Session logic never imports Quart or a WebSocket library; it sends encoded frames and
closes through a `Transport`. (Plugins see the session itself, `topgun.hooks.Connection`.)
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    """One client's byte pipe, as the session needs it."""

    @property
    def is_open(self) -> bool:
        """False once either side closed; sends after that are dropped by the session."""

    @property
    def remote_address(self) -> str | None:
        """The peer's `"host:port"`, when the transport knows it."""

    async def send(self, frame: bytes) -> None:
        """Send one binary frame; returns once the transport accepted it (backpressure)."""

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code (PROTOCOL.md §1.4) and a short reason."""
