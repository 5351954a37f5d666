"""An in-memory connection to a `Server`: both ends of a client connection, no sockets.

`InMemoryTransport` is the server's end (a `Transport`); `InMemoryClient` is the client's
end, which sends frames into the server's inbound stream and reads what the server sent.
Tests drive the real server through it, and simulations use it as their network's last hop.

    async with anyio.create_task_group() as tg, InMemoryClient.connect(server, tg) as client:
        await client.send(Auth(token=token))
        assert isinstance(await client.receive(), AuthRequired)
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from topgun.protocol import DEFAULT_MAX_FRAME_BYTES, Codec, Message, ServerMessage
from topgun.server.server import shared_codec

if TYPE_CHECKING:
    from topgun.server.server import Server

DEFAULT_RECEIVE_TIMEOUT = 5.0
"""Seconds `InMemoryClient.receive` waits before it fails (a deadline, not a sleep)."""


class ConnectionClosed(Exception):
    """The server closed the connection (`code`, `reason`) while the client waited."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server: {code} {reason}")
        self.code = code
        self.reason = reason


class InMemoryTransport:
    """The server's end of an in-memory connection."""

    def __init__(self, remote_address: str | None = "in-memory") -> None:
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._send: MemoryObjectSendStream[bytes] = send
        self.outbox: MemoryObjectReceiveStream[bytes] = receive
        """The frames the server sent, in order; the client reads them here."""
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._remote_address = remote_address

    @property
    def is_open(self) -> bool:
        return self.close_code is None

    @property
    def remote_address(self) -> str | None:
        return self._remote_address

    async def send(self, frame: bytes) -> None:
        """Hand a frame to the client (raises `anyio.ClosedResourceError` once closed)."""
        await self._send.send(frame)

    async def close(self, code: int, reason: str) -> None:
        """Record the close; the client sees its frames, then the close."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            await self._send.aclose()


class InMemoryClient:
    """The client's end: send frames to the server, receive its messages."""

    def __init__(self, *, codec: Codec | None = None) -> None:
        self.codec = codec if codec is not None else shared_codec(DEFAULT_MAX_FRAME_BYTES)
        self.transport = InMemoryTransport()
        send, receive = anyio.create_memory_object_stream[bytes | str](math.inf)
        self._inbound: MemoryObjectSendStream[bytes | str] = send
        self.frames: MemoryObjectReceiveStream[bytes | str] = receive
        """What the server reads (pass to `Server.handle_connection`)."""
        self._pending: deque[ServerMessage] = deque()
        self.raw_frames: list[bytes] = []
        """Every frame received so far, as sent (a `BATCH` stays one frame)."""

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, server: Server, task_group: TaskGroup, *, codec: Codec | None = None
    ) -> AsyncIterator[InMemoryClient]:
        """A client connected to `server`, its session served in `task_group`; leaving the
        block disconnects it."""
        client = cls(codec=codec)
        task_group.start_soon(client.serve, server)
        try:
            yield client
        finally:
            await client.disconnect()

    async def serve(self, server: Server) -> None:
        """Run this connection's session on `server` until it ends (what `connect` starts)."""
        with self.frames:
            await server.handle_connection(self.transport, self.frames)
        self.transport._send.close()

    async def send(self, message: Message | dict[str, Any]) -> None:
        """Send a message as a msgpack binary frame (a dict is encoded as it is)."""
        if isinstance(message, dict):
            await self.send_raw(msgspec.msgpack.encode(message))
        else:
            await self.send_raw(self.codec.encode(message))

    async def send_raw(self, frame: bytes | str) -> None:
        """Send a frame as it is: `bytes` is a binary frame, `str` a text frame."""
        await self._inbound.send(frame)

    async def disconnect(self) -> None:
        """Go away: the server's inbound stream ends; nothing more is received."""
        self._inbound.close()
        self.transport.outbox.close()

    async def receive_frame(self, timeout: float = DEFAULT_RECEIVE_TIMEOUT) -> bytes:
        """The next frame as sent; `ConnectionClosed` if the server closed instead."""
        with anyio.fail_after(timeout):
            try:
                frame = await self.transport.outbox.receive()
            except anyio.EndOfStream:
                code = self.transport.close_code
                assert code is not None
                raise ConnectionClosed(code, self.transport.close_reason or "") from None
        self.raw_frames.append(frame)
        return frame

    async def receive(self, timeout: float = DEFAULT_RECEIVE_TIMEOUT) -> ServerMessage:
        """The next message (the messages of a `BATCH` one by one)."""
        while not self._pending:
            frame = await self.receive_frame(timeout)
            self._pending.extend(self.codec.decode_server_frame(frame))
        return self._pending.popleft()

    async def receive_until(
        self, kind: type[Message], timeout: float = DEFAULT_RECEIVE_TIMEOUT
    ) -> tuple[Any, list[ServerMessage]]:
        """Receive until a message of type `kind`; returns it and the ones before it."""
        skipped: list[ServerMessage] = []
        with anyio.fail_after(timeout):
            while True:
                message = await self.receive(timeout)
                if isinstance(message, kind):
                    return message, skipped
                skipped.append(message)

    async def closed(self, timeout: float = DEFAULT_RECEIVE_TIMEOUT) -> tuple[int, str]:
        """Wait for the server to close; returns `(code, reason)`. Messages still arriving
        before the close are dropped."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    await self.receive_frame(timeout)
                except ConnectionClosed as closed:
                    return closed.code, closed.reason
