"""The WebSocket transport: the protocol endpoint on `/` and on every other path (PROTOCOL.md §1.1).

This module is a built-in plugin (`topgun.hooks.DEFAULT_PLUGINS`): its `register_routes`
implementation puts `WebSocketRouter` in front of the Quart app, so
`TOPGUN_DISABLE_PLUGINS=topgun.server.websocket` serves no WebSocket at all.

The endpoint speaks ASGI directly instead of being a Quart websocket route, for three
reasons. Quart cancels a websocket handler when the client disconnects, which would cancel
the session in the middle of a step and lose the close code; here a disconnect simply ends
the inbound frame iterator. Quart queues inbound messages without bound; here the next
frame is read from the ASGI server only when the session asks for it, so a client that
sends faster than the server processes is held back by TCP flow control. And an empty
binary frame stays `b""`. WebSocket routes that plugins add to the Quart app keep working:
a path one of them matches goes to Quart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from topgun.hooks import hookimpl

if TYPE_CHECKING:
    from quart import Quart

    from topgun.server.server import Server

logger = logging.getLogger(__name__)

ASGIMessage = MutableMapping[str, Any]
ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

NO_STATUS: Final = 1005
"""The close code reported when the peer closed without one (RFC 6455 §7.1.5)."""
INTERNAL_ERROR: Final = 1011
"""Close code for a session that failed unexpectedly (PROTOCOL.md §1.4)."""


class ASGIWebSocket:
    """One accepted ASGI WebSocket connection: a `Transport`, and its inbound frames.

    Sends after either side closed are dropped, as the `Transport` contract says; a peer
    that vanished mid-send (the ASGI server raising `OSError`) counts as closed.
    """

    def __init__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        self._receive = receive
        self._send = send
        client = scope.get("client")
        self._remote = f"{client[0]}:{client[1]}" if client else None
        self._open = True
        self.close_code: int | None = None
        """Who closed with what: the code the server sent, else the client's, else `None`."""

    @property
    def is_open(self) -> bool:
        """False once either side closed."""
        return self._open

    @property
    def remote_address(self) -> str | None:
        """The peer's `"host:port"` from the ASGI scope."""
        return self._remote

    async def send(self, frame: bytes) -> None:
        """Send one binary frame; waits while the ASGI server's write buffer is full."""
        if not self._open:
            return
        try:
            await self._send({"type": "websocket.send", "bytes": frame})
        except OSError:
            self._open = False

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason`; a no-op once closed."""
        if not self._open:
            return
        self._open = False
        self.close_code = code
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def frames(self) -> AsyncIterator[bytes | str]:
        """Inbound frames (`bytes` binary, `str` text) until the client disconnects."""
        while True:
            message = await self._receive()
            if message["type"] == "websocket.receive":
                data = message.get("bytes")
                yield data if data is not None else message.get("text") or ""
            elif message["type"] == "websocket.disconnect":
                if self._open:
                    self._open = False
                    self.close_code = int(message.get("code", NO_STATUS))
                return


async def serve_websocket(
    server: Server, scope: ASGIScope, receive: ASGIReceive, send: ASGISend
) -> None:
    """Accept one WebSocket and run its session on `server` until it is over."""
    if (await receive())["type"] != "websocket.connect":
        return  # the client left before the handshake finished
    await send({"type": "websocket.accept"})
    socket = ASGIWebSocket(scope, receive, send)
    try:
        await server.handle_connection(socket, socket.frames())
    except Exception:
        logger.exception("session of %s failed", socket.remote_address or "a client")
        await socket.close(INTERNAL_ERROR, "Internal error")
    # ASGI servers close a socket the application leaves open with 1011: say it ended well.
    await socket.close(1000, "")


class WebSocketRouter:
    """ASGI middleware: WebSocket requests that no Quart websocket route claims go to the
    server's sessions; everything else goes to the wrapped application."""

    def __init__(self, app: Quart, server: Server) -> None:
        self.wrapped: ASGIApp = app.asgi_app
        self.url_map = app.url_map
        self.server = server

    def _quart_route(self, path: str) -> bool:
        # Imported here: this module is loaded with every plugin manager, even by commands
        # that never build an app.
        from werkzeug.exceptions import HTTPException

        try:
            self.url_map.bind("").match(path, websocket=True)
        except HTTPException:
            return False
        return True

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "websocket" and not self._quart_route(scope["path"]):
            await serve_websocket(self.server, scope, receive, send)
        else:
            await self.wrapped(scope, receive, send)


@hookimpl
def register_routes(app: Any, server: Any) -> None:
    """Serve the protocol's WebSocket on `/` and every path no other websocket route takes."""
    app.asgi_app = WebSocketRouter(app, server)
