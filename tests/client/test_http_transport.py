"""The HTTP providers (polling, SSE + POST) and the Auto provider, against a real server.

Each HTTP client converges with a WebSocket client under random writes; a server with
WebSockets disabled makes Auto fall back and still sync; Auto upgrades back to the
WebSocket once it is reachable; a late upload reaches HTTP clients; bad tokens are an
error, not a retry loop.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from topgun.client import AuthError, Backoff, TopGunClient
from topgun.client.http import AutoConnector, HttpConnector
from topgun.client.websocket import WebSocketConnector
from topgun.hooks import make_plugin_manager

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.02, factor=2.0, max_delay=0.5, jitter=0.5)


@pytest.fixture
def anyio_backend() -> str:
    """The server runs in-process on asyncio; the HTTP client is anyio/httpx all the same."""
    return "asyncio"


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


async def random_writes(m: Any, name: str, seed: int, keys: list[str]) -> None:
    rng = random.Random(seed)
    for i in range(150):
        key = rng.choice(keys)
        if rng.random() < 0.15:
            m.remove(key)
        else:
            m.set(key, {"by": name, "i": i})
        if i % 10 == 0:
            await anyio.sleep(0.005)


@pytest.mark.parametrize("events", ["poll", "sse"])
async def test_an_http_client_converges_with_a_websocket_client(
    live_server: Any, kit: Any, events: str
) -> None:
    keys = [f"k{i}" for i in range(30)]
    http = HttpConnector(live_server.http_url, events=events, poll_interval=0.1)  # type: ignore[arg-type]
    async with (
        TopGunClient(live_server.url, token=kit.mint(), backoff=FAST) as ws,
        TopGunClient(connector=http, token=kit.mint(sub="bob"), backoff=FAST) as web,
    ):
        mw, mh = ws.map("shared"), web.map("shared")
        with anyio.fail_after(kit.DEADLINE):
            await ws.connected()
            await web.connected()
        async with anyio.create_task_group() as tg:
            tg.start_soon(random_writes, mw, "ws", 1, keys)
            tg.start_soon(random_writes, mh, "http", 2, keys)
        with anyio.fail_after(kit.DEADLINE):
            await ws.settled()
            await web.settled()
        server = live_server.server.maps.lww("shared")
        await until(
            lambda: sorted(mw.items()) == sorted(mh.items()) == sorted(server.items()),
            kit.DEADLINE,
            "the HTTP client, the WebSocket client and the server converge",
        )
        assert len(mh.items()) > 10


async def test_live_queries_work_over_http(live_server: Any, kit: Any) -> None:
    http = HttpConnector(live_server.http_url, events="sse", poll_interval=0.1)
    async with (
        TopGunClient(live_server.url, token=kit.mint(), backoff=FAST) as ws,
        TopGunClient(connector=http, token=kit.mint(), backoff=FAST) as web,
    ):
        todos = ws.map("todos")
        todos.set("a", {"done": False, "rank": 1})
        await ws.settled()
        live = web.query("todos", where={"done": False})
        with anyio.fail_after(kit.DEADLINE):
            await live.ready()
        assert [key for key, _ in live.items()] == ["a"]
        changes: list[tuple[str, str]] = []
        live.on_change(lambda change: changes.append((change.type, change.key)))
        todos.set("b", {"done": False, "rank": 2})
        todos.set("a", {"done": True, "rank": 1})
        await until(
            lambda: [key for key, _ in live.items()] == ["b"], kit.DEADLINE, "b enters, a leaves"
        )
        assert ("ENTER", "b") in changes
        assert ("REMOVE", "a") in changes


async def test_auto_falls_back_to_http_when_websockets_are_disabled(
    start_server: Any, kit: Any
) -> None:
    pm = make_plugin_manager(
        entry_points=(), environ={"TOPGUN_DISABLE_PLUGINS": "topgun.server.websocket"}
    )
    async with start_server(pm=pm) as live:
        auto_a = AutoConnector(live.http_url, poll_interval=0.1)
        auto_b = AutoConnector(live.url, poll_interval=0.1)  # a ws:// URL works too
        async with (
            TopGunClient(connector=auto_a, token=kit.mint(), backoff=FAST) as a,
            TopGunClient(connector=auto_b, token=kit.mint(), backoff=FAST) as b,
        ):
            with anyio.fail_after(kit.DEADLINE):
                await a.connected()
                await b.connected()
            assert auto_a.last == auto_b.last == "sse"
            a.map("m").set("x", 1)
            b.map("m").set("y", 2)
            await until(
                lambda: (
                    sorted(a.map("m").items()) == sorted(b.map("m").items()) == [("x", 1), ("y", 2)]
                ),
                kit.DEADLINE,
                "both see both writes",
            )


async def test_auto_upgrades_to_the_websocket_once_it_is_reachable(
    live_server: Any, kit: Any
) -> None:
    with socket.socket() as probe:  # a port where no WebSocket answers, for now
        probe.bind(("127.0.0.1", 0))
        blocked_port = probe.getsockname()[1]
    auto = AutoConnector(live_server.http_url, upgrade_interval=0.1, poll_interval=0.1)
    auto.websocket = WebSocketConnector(f"ws://127.0.0.1:{blocked_port}")
    async with (
        anyio.create_task_group() as tg,
        TopGunClient(connector=auto, token=kit.mint(), backoff=FAST) as client,
    ):
        with anyio.fail_after(kit.DEADLINE):
            await client.connected()
        assert auto.last == "sse"
        client.map("m").set("before", 1)
        # The WebSocket gets through again: a proxy opens on that port.
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=blocked_port)

        async def pipe(source: Any, sink: Any, done: anyio.CancelScope) -> None:
            try:
                async for chunk in source:
                    await sink.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            done.cancel()

        async def forward(inbound: anyio.abc.SocketStream) -> None:
            upstream = await anyio.connect_tcp("127.0.0.1", live_server.port)
            async with inbound, upstream, anyio.create_task_group() as pipes:
                pipes.start_soon(pipe, inbound, upstream, pipes.cancel_scope)
                pipes.start_soon(pipe, upstream, inbound, pipes.cancel_scope)

        async def serve() -> None:
            async with listener:
                await listener.serve(forward)

        tg.start_soon(serve)
        await until(lambda: auto.last == "websocket", kit.DEADLINE, "upgraded to the WebSocket")
        with anyio.fail_after(kit.DEADLINE):
            await client.connected()
        client.map("m").set("after", 2)
        with anyio.fail_after(kit.DEADLINE):
            await client.settled()
        assert live_server.server.maps.lww("m").get("after") == 2
        assert live_server.server.maps.lww("m").get("before") == 1
        tg.cancel_scope.cancel()


async def test_a_late_upload_reaches_an_http_poller(live_server: Any, kit: Any) -> None:
    """A write stamped a day ago, uploaded after the poller caught up, still arrives."""
    from topgun.client import MemoryStore

    http = HttpConnector(live_server.http_url, events="poll", poll_interval=0.1)
    async with TopGunClient(connector=http, token=kit.mint(), backoff=FAST) as poller:
        seen = poller.map("m")
        with anyio.fail_after(kit.DEADLINE):
            await poller.settled()

        class DayAgo:
            def wall_ms(self) -> int:
                import time

                return time.time_ns() // 1_000_000 - 86_400_000

            def monotonic(self) -> float:
                return anyio.current_time()

            async def sleep(self, seconds: float) -> None:
                await anyio.sleep(seconds)

        async with TopGunClient(
            live_server.url, token=kit.mint(), store=MemoryStore(), clock=DayAgo(), backoff=FAST
        ) as offline:
            offline.map("m").set("late", "from yesterday")
            with anyio.fail_after(kit.DEADLINE):
                await offline.settled()
        await until(lambda: seen.get("late") == "from yesterday", kit.DEADLINE, "late write polled")


async def test_a_bad_token_over_http_is_an_auth_error_not_a_retry_loop(
    live_server: Any, kit: Any
) -> None:
    http = HttpConnector(live_server.http_url, events="poll")
    async with TopGunClient(connector=http, token="forged", backoff=FAST) as client:
        with (
            anyio.fail_after(kit.DEADLINE),
            pytest.raises(AuthError, match="Authentication failed"),
        ):
            await client.connected()


async def test_features_that_need_a_websocket_are_refused_clearly(
    live_server: Any, kit: Any
) -> None:
    http = HttpConnector(live_server.http_url, events="poll")
    async with TopGunClient(connector=http, token=kit.mint(), backoff=FAST) as client:
        with anyio.fail_after(kit.DEADLINE):
            await client.connected()
        with anyio.fail_after(kit.DEADLINE), pytest.raises(Exception, match="needs a WebSocket"):
            await client.process("m", "k", "builtin:increment")


def test_bad_connector_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpConnector("ftp://example.com")
    with pytest.raises(ValueError, match="events"):
        HttpConnector("http://127.0.0.1:1", events="carrier-pigeon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        HttpConnector("http://127.0.0.1:1", poll_interval=0)


@pytest.mark.parametrize("transport", ["auto", "sse", "poll"])
async def test_the_transport_argument_builds_the_connector(
    live_server: Any, kit: Any, transport: str
) -> None:
    async with TopGunClient(
        live_server.http_url,
        transport=transport,  # type: ignore[arg-type]
        token=kit.mint(),
        backoff=FAST,
    ) as client:
        client.map("m").set("k", transport)
        with anyio.fail_after(kit.DEADLINE):
            await client.settled()
    assert live_server.server.maps.lww("m").get("k") == transport
    with pytest.raises(ValueError, match="transport must be"):
        TopGunClient(live_server.http_url, transport="pigeon", token="t")  # type: ignore[arg-type]


def test_an_http_url_picks_the_auto_provider() -> None:
    from topgun.client.client import connector_for
    from topgun.hooks import make_plugin_manager

    assert isinstance(connector_for("http://127.0.0.1:1"), AutoConnector)
    pm = make_plugin_manager(entry_points=(), environ={})
    assert isinstance(connector_for("https://example.com", pm=pm), AutoConnector)
