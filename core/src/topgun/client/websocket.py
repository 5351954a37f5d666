"""The WebSocket connector: RFC 6455 with `wsproto` over anyio TCP/TLS streams.

wsproto is a sans-I/O protocol state machine (the one Hypercorn uses on the server side),
so the same code runs under asyncio and trio: anyio supplies the socket, wsproto the
framing, handshake, ping replies and close handshake.
"""

from __future__ import annotations

import contextlib
import ssl
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from topgun.client.connection import Connection, ConnectionClosed
from topgun.hooks import Register, hookimpl

__all__ = ["WebSocketConnection", "WebSocketConnector", "register_connection_providers"]

_READ_SIZE = 65536


class WebSocketConnection(Connection):
    """An open client WebSocket; frames are whole messages (fragments are joined)."""

    def __init__(
        self, stream: anyio.abc.ByteStream, ws: WSConnection, buffered: list[Event]
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._events = buffered
        self._send_lock = anyio.Lock()
        self._parts: list[bytes] = []
        self._closed: ConnectionClosed | None = None

    @property
    def is_open(self) -> bool:
        return self._closed is None

    async def send(self, frame: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        await self._send_raw(BytesMessage(data=frame))

    async def _send_raw(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError as exc:
            raise self._close_with(None, str(exc)) from None
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise self._close_with(None, str(exc)) from None

    def _close_with(self, code: int | None, reason: str) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
        return self._closed

    async def receive(self) -> bytes:
        while True:
            if self._closed is not None:
                raise self._closed
            while self._events:
                event = self._events.pop(0)
                frame = await self._handle(event)
                if frame is not None:
                    return frame
            try:
                data = await self._stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                await self._abort()
                raise self._close_with(1006, str(exc) or "connection lost") from None
            except anyio.ClosedResourceError:
                raise self._close_with(1006, "closed locally") from None
            try:
                self._ws.receive_data(data)
                self._events.extend(self._ws.events())
            except RemoteProtocolError as exc:
                await self._abort()
                raise self._close_with(1002, str(exc)) from None

    async def _handle(self, event: Event) -> bytes | None:
        if isinstance(event, Message):
            data = event.data
            self._parts.append(data if isinstance(data, bytes) else data.encode("utf-8"))
            if not event.message_finished:
                return None
            frame = b"".join(self._parts)
            self._parts = []
            if isinstance(event, TextMessage):
                return frame  # the server never sends text; JSON bytes fail decoding clearly
            return frame
        if isinstance(event, Ping):
            await self._send_quietly(event.response())
        elif isinstance(event, CloseConnection):
            await self._send_quietly(event.response())
            await self._abort()
            raise self._close_with(event.code, event.reason or "")
        return None

    async def _send_quietly(self, event: Event) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._send_raw(event)

    async def _abort(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await self._stream.aclose()

    async def aclose(self) -> None:
        if self._closed is None:
            try:
                with anyio.move_on_after(1):
                    await self._send_raw(CloseConnection(code=1000, reason="client closing"))
            except ConnectionClosed:
                pass
            self._close_with(1000, "closed by the client")
        await self._abort()


class WebSocketConnector:
    """Opens WebSocket connections to `url` (`ws://` or `wss://`).

    `ssl_context` is used for `wss://` (default: the system's trusted CAs);
    `connect_timeout` bounds the TCP connect, TLS and upgrade handshake.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"server url must start with ws:// or wss://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"server url {url!r} has no host")
        self.url = url
        self.tls = parts.scheme == "wss"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return f"WebSocketConnector({self.url!r})"

    async def connect(self) -> WebSocketConnection:
        with anyio.fail_after(self.connect_timeout):
            stream: anyio.abc.ByteStream
            if self.tls:
                stream = await anyio.connect_tcp(
                    self.host,
                    self.port,
                    ssl_context=self.ssl_context or ssl.create_default_context(),
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(self.host, self.port)
            try:
                return await self._handshake(stream)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise

    async def _handshake(self, stream: anyio.abc.ByteStream) -> WebSocketConnection:
        ws = WSConnection(ConnectionType.CLIENT)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        await stream.send(ws.send(Request(host=f"{host}:{self.port}", target=self.target)))
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                raise ConnectionClosed(None, "closed during the WebSocket handshake") from None
            try:
                ws.receive_data(data)
            except RemoteProtocolError as exc:
                raise ConnectionClosed(None, f"bad WebSocket handshake: {exc}") from None
            events = list(ws.events())
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    return WebSocketConnection(stream, ws, events[index + 1 :])
                if isinstance(event, RejectConnection | RejectData):
                    status = getattr(event, "status_code", None)
                    raise ConnectionClosed(None, f"WebSocket upgrade refused (HTTP {status})")


@hookimpl
def register_connection_providers(register: Register[object]) -> None:
    """The built-in providers: `ws://` and `wss://` URLs connect with `WebSocketConnector`."""
    register("ws", WebSocketConnector)
    register("wss", WebSocketConnector)
