"""The WebSocket transport (topgun/server/websocket.py): ASGI adapter, routing, frame limits."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
import websockets

from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import AuthRequired, Ping, Pong
from topgun.server.websocket import ASGIWebSocket

pytestmark = pytest.mark.anyio


class FakeASGI:
    """The two ASGI callables, scripted: `inbound` is what `receive` returns in turn."""

    def __init__(self, inbound: list[dict[str, Any]]) -> None:
        self.inbound = list(inbound)
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.inbound.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)


async def test_frames_keep_binary_text_and_empty_frames_and_end_on_disconnect() -> None:
    asgi = FakeASGI(
        [
            {"type": "websocket.receive", "bytes": b"\x80", "text": None},
            {"type": "websocket.receive", "bytes": None, "text": '{"type":"PING"}'},
            {"type": "websocket.receive", "bytes": b"", "text": None},
            {"type": "websocket.disconnect", "code": 4321},
        ]
    )
    socket = ASGIWebSocket({"client": ("10.1.2.3", 5555)}, asgi.receive, asgi.send)
    assert (socket.remote_address, socket.is_open) == ("10.1.2.3:5555", True)
    assert [frame async for frame in socket.frames()] == [b"\x80", '{"type":"PING"}', b""]
    assert (socket.is_open, socket.close_code) == (False, 4321)
    await socket.send(b"dropped")
    await socket.close(1000, "too late")
    assert asgi.sent == []


async def test_close_is_sent_once_and_later_sends_are_dropped() -> None:
    asgi = FakeASGI([])
    socket = ASGIWebSocket({}, asgi.receive, asgi.send)
    assert socket.remote_address is None
    await socket.send(b"one")
    await socket.close(4001, "Unauthorized")
    await socket.close(1000, "")
    await socket.send(b"two")
    assert asgi.sent == [
        {"type": "websocket.send", "bytes": b"one"},
        {"type": "websocket.close", "code": 4001, "reason": "Unauthorized"},
    ]
    assert socket.close_code == 4001


async def test_a_peer_gone_mid_send_counts_as_closed() -> None:
    async def broken_send(message: MutableMapping[str, Any]) -> None:
        raise ConnectionResetError("peer gone")

    socket = ASGIWebSocket({}, FakeASGI([]).receive, broken_send)
    await socket.send(b"frame")
    assert not socket.is_open


@pytest.mark.parametrize("path", ["/", "/ws", "/deep/path?token=x"])
async def test_every_path_speaks_the_protocol(live_server: Any, path: str) -> None:
    client = await live_server.connect(path)
    await client.expect(AuthRequired)
    await client.send(Ping(timestamp=1.0))
    assert (await client.expect(Pong)).ping_timestamp == 1.0
    await client.aclose()


async def test_without_the_built_in_plugin_there_is_no_websocket(start_server: Any) -> None:
    pm = make_plugin_manager(
        entry_points=(), environ={"TOPGUN_DISABLE_PLUGINS": "topgun.server.websocket"}
    )
    async with start_server(pm=pm) as live:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await live.connect("/")
        assert refused.value.response.status_code in (403, 404)
        status, _, _ = await live.get("/health")
        assert status == 200


@pytest.mark.parametrize("asgi_server", ["hypercorn", "uvicorn"])
async def test_a_frame_over_the_limit_closes_1009_and_others_carry_on(
    start_server: Any, asgi_server: str
) -> None:
    async with start_server(max_frame_bytes=4096, asgi_server=asgi_server) as live:
        bystander = await live.client()
        big = await live.client()
        await big.send(b"\x91" + b"\xc0" * 5000)  # a msgpack array of 5000 nils, 5001 bytes
        assert (await big.closed())[0] == 1009
        await bystander.send(Ping(timestamp=2.0))
        assert (await bystander.expect(Pong)).ping_timestamp == 2.0
        await bystander.aclose()


async def test_a_client_that_disconnects_ends_its_session(start_server: Any) -> None:
    class Watch:
        def __init__(self) -> None:
            self.codes: list[int] = []
            self.closed = anyio.Event()

        @hookimpl
        def on_disconnect(self, connection: Any, code: int, reason: str) -> None:
            self.codes.append(code)
            self.closed.set()

    pm = make_plugin_manager(entry_points=(), environ={})
    watch = Watch()
    pm.register(watch, name="watch")
    async with start_server(pm=pm) as live:
        client = await live.client()
        await client.aclose()
        with anyio.fail_after(5):
            await watch.closed.wait()
        assert len(watch.codes) == 1
        assert live.server.metrics.connections._value.get() == 0
