"""Connection behaviour of the client against an in-process server on a real socket
(asyncio: the server runs in the test's loop): auth failures, token refresh, heartbeat,
write concerns, rejected writes, sync resets, offline writes and bad input."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from topgun.client import (
    AuthError,
    Backoff,
    ConnectionState,
    MemoryStore,
    RequestError,
    TopGunClient,
    WebSocketConnector,
    WriteRejectedError,
)
from topgun.crdt import LWWRecord, Timestamp

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.02, max_delay=0.2)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ws(live: Any) -> str:
    return f"ws://127.0.0.1:{live.port}"


async def test_a_refused_token_raises_and_is_not_retried(live_server: Any, kit: Any) -> None:
    async with anyio.create_task_group() as tg:
        proxy = await kit.start_proxy(tg, live_server.port)
        tokens = iter([kit.mint(secret="not-the-server-secret-" + "x" * 40), kit.mint()])
        states: list[ConnectionState] = []
        async with TopGunClient(
            proxy.url, token_provider=lambda: next(tokens), backoff=FAST
        ) as client:
            client.on_state_change(states.append)
            m = client.map("m")
            m.set("k", 1)  # offline writes work regardless
            with anyio.fail_after(kit.DEADLINE), pytest.raises(AuthError, match="signature"):
                await client.connected()
            assert client.state is ConnectionState.AUTH_FAILED
            assert proxy.accepted == 1
            assert m.get("k") == 1
            client.reconnect()  # the provider now returns a valid token
            with anyio.fail_after(kit.DEADLINE):
                await client.connected()
                await client.settled()
            assert proxy.accepted == 2
            assert ConnectionState.AUTH_FAILED in states
        tg.cancel_scope.cancel()


async def test_token_provider_is_asked_on_every_reconnect(live_server: Any, kit: Any) -> None:
    calls: list[str] = []

    async def provider() -> str:
        calls.append("token")
        return kit.mint()

    async with anyio.create_task_group() as tg:
        proxy = await kit.start_proxy(tg, live_server.port)
        async with TopGunClient(proxy.url, token_provider=provider, backoff=FAST) as client:
            await client.connected()
            proxy.cut()
            with anyio.fail_after(kit.DEADLINE):
                while proxy.accepted < 2 or client.state is not ConnectionState.CONNECTED:
                    await anyio.sleep(0.01)
            assert len(calls) == 2
        tg.cancel_scope.cancel()


async def test_a_silent_server_is_detected_by_the_heartbeat(live_server: Any, kit: Any) -> None:
    async with anyio.create_task_group() as tg:
        proxy = await kit.start_proxy(tg, live_server.port)
        async with TopGunClient(
            proxy.url,
            token=kit.mint(),
            backoff=FAST,
            heartbeat_interval=0.05,
            heartbeat_timeout=0.5,
        ) as client:
            await client.connected()
            proxy.stall()  # the socket stays open, nothing flows
            with anyio.fail_after(kit.DEADLINE):
                while client.state is ConnectionState.CONNECTED:
                    await anyio.sleep(0.01)
            proxy.resume()
            with anyio.fail_after(kit.DEADLINE):
                await client.connected()
            assert proxy.accepted >= 2
        tg.cancel_scope.cancel()


async def test_write_concerns_and_rejected_writes(live_server: Any, kit: Any) -> None:
    async with (
        TopGunClient(ws(live_server), token=kit.mint(), backoff=FAST) as admin,
        TopGunClient(ws(live_server), token=kit.mint(roles=["USER"]), backoff=FAST) as user,
    ):
        m = admin.map("wc")
        assert await m.set("a", 1, write_concern="PERSISTED") == "PERSISTED"
        assert await m.set("b", 2, write_concern="APPLIED") == "APPLIED"
        assert await m.remove("a") == "MEMORY"
        denied = user.map("wc").set("c", 3)
        assert user.map("wc").get("c") == 3  # applied locally at once
        with pytest.raises(WriteRejectedError, match="Access denied"):
            await denied
        assert user.pending_writes == 0  # a refused write is not retried forever
        with pytest.raises(ValueError, match="write_concern"):
            m.set("d", 4, write_concern="SOMETIMES")  # type: ignore[arg-type]


async def test_writes_made_offline_are_visible_at_once_and_sent_on_connect(
    start_server: Any, kit: Any, tmp_path: Any
) -> None:
    store = MemoryStore()
    async with TopGunClient(
        "ws://127.0.0.1:9", token=kit.mint(), store=store, backoff=FAST
    ) as offline:
        m = offline.map("later")
        handles = [m.set(f"k{i}", i) for i in range(50)]
        assert m.get("k7") == 7
        assert offline.pending_writes == 50
        assert offline.state is not ConnectionState.CONNECTED
        assert not any(h.acknowledged for h in handles)
    async with start_server() as live:
        async with TopGunClient(ws(live), token=kit.mint(), store=store, backoff=FAST) as online:
            assert online.pending_writes == 50
            with anyio.fail_after(kit.DEADLINE):
                await online.settled()
            assert online.pending_writes == 0
        async with TopGunClient(ws(live), token=kit.mint(), backoff=FAST) as other:
            seen = other.map("later")
            with anyio.fail_after(kit.DEADLINE):
                await other.settled()
            assert dict(seen.items()) == {f"k{i}": i for i in range(50)}


async def test_sync_reset_required_drops_the_map_and_resyncs(live_server: Any, kit: Any) -> None:
    store = MemoryStore()
    async with TopGunClient(ws(live_server), token=kit.mint(), store=store, backoff=FAST) as c:
        c.map("r").set("kept", "server value")
        await c.settled()
    state = await store.open()
    assert state.meta["sync:r"] > 1
    # Make the stored state look ancient and give it a key the server never had.
    store.set_meta("sync:r", 1)
    store.put_lww("r", [("ghost", LWWRecord("stale", Timestamp(5, 0, "old-node")))])
    async with TopGunClient(ws(live_server), token=kit.mint(), store=store, backoff=FAST) as c:
        r = c.map("r")
        assert r.get("ghost") == "stale"
        pending = r.set("fresh", "unacknowledged yet")
        with anyio.fail_after(kit.DEADLINE):
            await c.settled()
            await pending
        assert r.get("ghost") is None  # GC_AGE reset: the map was cleared, then re-synced
        assert dict(r.items()) == {"kept": "server value", "fresh": "unacknowledged yet"}
    state = await store.open()
    assert "ghost" not in state.lww["r"]
    assert state.meta["sync:r"] > 1


async def test_bad_arguments_get_clear_errors(kit: Any) -> None:
    with pytest.raises(ValueError, match=r"no connection provider for 'gopher'"):
        TopGunClient("gopher://example.com", token="t")
    with pytest.raises(ValueError, match=r"ws:// or wss://"):
        WebSocketConnector("http://example.com")
    with pytest.raises(ValueError, match="exactly one of token"):
        TopGunClient("ws://127.0.0.1:9", token="t", token_provider=lambda: "t")
    with pytest.raises(ValueError, match="exactly one of url"):
        TopGunClient(token="t")
    with pytest.raises(ValueError, match="heartbeat_interval"):
        TopGunClient("ws://127.0.0.1:9", token="t", heartbeat_interval=0)
    with pytest.raises(ValueError, match=r"Backoff\.jitter"):
        Backoff(jitter=2)
    async with TopGunClient("ws://127.0.0.1:9", token=kit.mint(), backoff=FAST) as client:
        m = client.map("m")
        with pytest.raises(ValueError, match="remove"):
            m.set("k", None)
        with pytest.raises(ValueError, match="ttl_ms"):
            m.set("k", 1, ttl=-5)
        with pytest.raises(TypeError, match="key must be a str"):
            m.set(3, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="LWW map"):
            client.ormap("m")
        with pytest.raises(ValueError, match="map name"):
            client.map("")
        assert client.pending_writes == 0  # nothing half-written


async def test_subscriptions_are_reestablished_after_a_reconnect(
    live_server: Any, kit: Any
) -> None:
    async with anyio.create_task_group() as tg:
        proxy = await kit.start_proxy(tg, live_server.port)
        async with (
            TopGunClient(proxy.url, token=kit.mint(), backoff=FAST) as watcher,
            TopGunClient(ws(live_server), token=kit.mint(), backoff=FAST) as writer,
        ):
            tasks = writer.map("re")
            tasks.set("a", {"open": True})
            await writer.settled()
            live = await watcher.query("re", where={"open": True}).ready()
            changes = live.__aiter__()
            mirror = watcher.map("re")
            heard: list[Any] = []
            watcher.topic("news").on_message(lambda event: heard.append(event.data))
            await watcher.settled()
            proxy.stall()  # the watcher hears nothing from here on...
            tasks.set("b", {"open": True})  # ...while these happen
            tasks.set("a", {"open": False})
            await writer.settled()
            proxy.cut()
            proxy.resume()
            with anyio.fail_after(kit.DEADLINE):
                first, second = await changes.__anext__(), await changes.__anext__()
            # The fresh snapshot is reconciled with the rows held: the gap shows as changes.
            assert {(first.type, first.key), (second.type, second.key)} == {
                ("REMOVE", "a"),
                ("ENTER", "b"),
            }
            assert live.items() == [("b", {"open": True})]
            with anyio.fail_after(kit.DEADLINE):
                await watcher.settled()
            assert mirror.get("b") == {"open": True}  # the map re-synced too
            await watcher.journal.read(0, limit=1)  # a round trip after TOPIC_SUB
            writer.topic("news").publish("after the reconnect")
            with anyio.fail_after(kit.DEADLINE):
                while heard != ["after the reconnect"]:
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_a_refused_sync_is_an_error_not_a_hang(live_server: Any, kit: Any) -> None:
    token = kit.mint(sub="eve", roles=["USER"])  # no policies: no READ anywhere
    async with TopGunClient(ws(live_server), token=token, backoff=FAST) as client:
        client.map("private")
        with anyio.fail_after(kit.DEADLINE), pytest.raises(RequestError, match="Access denied"):
            await client.settled()
        assert client.state is ConnectionState.CONNECTED
