"""COUNTER_REQUEST / COUNTER_SYNC as this server answers them (topgun/server/counters.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from topgun.hooks import DROP, Rejected, hookimpl, make_plugin_manager
from topgun.protocol import (
    CounterRequest,
    CounterRequestPayload,
    CounterResponse,
    CounterState,
    CounterStatePayload,
    CounterSync,
    CounterUpdate,
    Error,
    OpResult,
    Ping,
    Pong,
)
from topgun.server import Policy, StorageConfig
from topgun.server.counters import CounterRegistry
from topgun.storage import MemoryBackend, PutMeta

pytestmark = pytest.mark.anyio


def ask(name: str = "likes") -> CounterRequest:
    return CounterRequest(payload=CounterRequestPayload(name=name))


def sync(p: dict[str, float], n: dict[str, float], name: str = "likes") -> CounterSync:
    return CounterSync(payload=CounterStatePayload(name=name, state=CounterState(p=p, n=n)))


def pairs(message: Any) -> dict[str, Any]:
    """The state as sent on the wire (both spellings)."""
    return msgspec.to_builtins(message.payload.state)  # type: ignore[no-any-return]


async def synced(client: Any) -> None:
    """Round-trip a PING and check nothing else was waiting for the client before its PONG."""
    await client.send(Ping(timestamp=1))
    _, before = await client.receive_until(Pong)
    assert before == []


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.wait_all_tasks_blocked()


async def test_request_subscribes_and_answers_the_state_with_both_pairs(harness: Any) -> None:
    client = await harness.login()
    await client.send(ask())
    response = await client.receive()
    assert isinstance(response, CounterResponse)
    assert response.payload.name == "likes"
    assert pairs(response) == {"p": {}, "n": {}, "positive": {}, "negative": {}}
    assert harness.server.counters.subscribers("likes") == 1


async def test_sync_merges_and_updates_the_sender_and_every_subscriber_p51(
    harness: Any,
) -> None:
    """P-51 (the captured scenario h): `{p,n}` in, `COUNTER_UPDATE` with both pairs out."""
    a, b, watcher = [await harness.login() for _ in range(3)]
    await watcher.send(ask())
    assert isinstance(await watcher.receive(), CounterResponse)
    await a.send(sync({"node-A": 5}, {}))
    for client in (a, watcher):
        update = await client.receive()
        assert isinstance(update, CounterUpdate)
        assert pairs(update) == {
            "p": {"node-A": 5},
            "n": {},
            "positive": {"node-A": 5},
            "negative": {},
        }
    await b.send(sync({"node-B": 3}, {"node-B": 1}))
    expected = {"node-A": 5, "node-B": 3}, {"node-B": 1}
    for client in (a, b, watcher):  # the sender was subscribed by its sync
        update = await client.receive()
        assert isinstance(update, CounterUpdate)
        assert (update.payload.state.p, update.payload.state.n) == expected
        assert (update.payload.state.positive, update.payload.state.negative) == expected
    assert harness.server.counters.value("likes") == 7


async def test_sync_accepts_positive_negative_and_both_spellings_at_once_p51(
    harness: Any,
) -> None:
    """What every Feb 2026 TS client sends; with both pairs present, both are merged."""
    client = await harness.login()
    await client.send(
        {
            "type": "COUNTER_SYNC",
            "payload": {"name": "c", "state": {"positive": {"N1": 5}, "negative": {"N1": 2}}},
        }
    )
    update = await client.receive()
    assert isinstance(update, CounterUpdate)
    assert pairs(update)["positive"] == {"N1": 5}
    assert pairs(update)["negative"] == {"N1": 2}
    await client.send(
        {
            "type": "COUNTER_SYNC",
            "payload": {
                "name": "c",
                "state": {"p": {"N2": 1.5}, "positive": {"N1": 4, "N3": 2}, "n": {}},
            },
        }
    )
    update = await client.receive()
    assert isinstance(update, CounterUpdate)
    assert pairs(update)["p"] == {"N1": 5, "N2": 1.5, "N3": 2}
    assert harness.server.counters.value("c") == 6.5


@pytest.mark.parametrize(
    "state",
    [{"p": {"A": -1}}, {"p": {"A": "1"}}, {"negative": {"A": float("inf")}}, {"p": [1]}],
)
async def test_invalid_entries_get_error_400_and_merge_nothing(
    harness: Any, state: dict[str, Any]
) -> None:
    client = await harness.login()
    await client.send({"type": "COUNTER_SYNC", "payload": {"name": "c", "state": state}})
    error = await client.receive()
    assert isinstance(error, Error)
    assert error.payload.code == 400
    await synced(client)
    assert harness.server.counters.value("c") == 0


async def test_read_to_request_and_put_to_sync(start: Any) -> None:
    """D27: READ on `counter:<name>` for COUNTER_REQUEST, PUT for COUNTER_SYNC; else 403."""
    policies = [
        Policy(role="USER", map_name_pattern="counter:public-*", actions=("READ",)),
        Policy(role="WRITER", map_name_pattern="counter:public-*", actions=("READ", "PUT")),
    ]
    async with start(policies=policies) as h:
        reader = await h.login(roles=["USER"])
        writer = await h.login(roles=["WRITER"])
        for client, message in (
            (reader, ask("private")),
            (reader, sync({"r": 1}, {}, name="public-1")),
            (writer, sync({"w": 1}, {}, name="private")),
        ):
            await client.send(message)
            error = await client.receive()
            assert isinstance(error, Error)
            assert error.payload.code == 403
        assert h.server.counters.value("public-1") == 0
        await writer.send(sync({"w": 2}, {}, name="public-1"))
        assert isinstance(await writer.receive(), CounterUpdate)


async def test_subscriptions_end_on_disconnect(harness: Any) -> None:
    a, b = await harness.login(), await harness.login()
    await b.send(ask())
    await b.receive()
    await b.disconnect()
    await until(lambda: harness.server.counters.subscribers("likes") == 0)
    await a.send(sync({"A": 1}, {}))
    assert isinstance(await a.receive(), CounterUpdate)
    assert harness.server.counters.subscribers("likes") == 1


async def test_counters_survive_a_restart(start: Any) -> None:
    for node, expected in (("A", 2), ("B", 5)):
        async with start(storage=StorageConfig(backend="sqlite")) as h:
            client = await h.login()
            await client.send(sync({node: 3}, {"A": 1}))
            update = await client.receive()
            assert isinstance(update, CounterUpdate)
            assert h.server.counters.value("likes") == expected


async def test_concurrent_syncs_from_many_clients_converge(harness: Any) -> None:
    """Ten clients each send a stream of their own growing state, plus stale and foreign
    copies, all at once: every subscriber's last update is the per-node maximum."""
    clients = [await harness.login() for _ in range(10)]
    for client in clients:
        await client.send(ask())
        assert isinstance(await client.receive(), CounterResponse)

    async def hammer(i: int, client: Any) -> None:
        for step in range(1, 11):
            await client.send(sync({f"n{i}": step}, {f"n{i}": step // 2}))
            await client.send(sync({f"n{(i + 1) % 10}": step}, {}))  # a stale foreign copy

    async with anyio.create_task_group() as tg:
        for i, client in enumerate(clients):
            tg.start_soon(hammer, i, client)
    expected_p = {f"n{i}": 10 for i in range(10)}
    expected_n = {f"n{i}": 5 for i in range(10)}
    for client in clients:
        await client.send(ask())
        response, _ = await client.receive_until(CounterResponse)
        assert (response.payload.state.p, response.payload.state.n) == (expected_p, expected_n)
    assert harness.server.counters.value("likes") == 50


class Interceptor:
    """before_op: doubles `p` of counter "double", drops "dropped", rejects "rejected";
    after_op: records every op and result."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.after: list[tuple[Any, OpResult]] = []

    @hookimpl
    def before_op(self, op: Any, context: Any) -> Any:
        self.seen.append((op, context.principal.user_id))
        name = op.payload.name
        if name == "dropped":
            return DROP
        if name == "rejected":
            raise Rejected("no counters today", code=409)
        if name == "double":
            p, n = op.payload.state.totals()
            return sync({k: v * 2 for k, v in p.items()}, n, name=name)
        return None

    @hookimpl
    def after_op(self, op: Any, context: Any, result: Any) -> None:
        self.after.append((op, result))


async def test_counter_syncs_pass_through_before_op_and_after_op(start: Any) -> None:
    """The op the hooks see is the CounterSync; a replacement is what is merged; DROP and
    Rejected refuse it with ERROR and merge nothing; after_op sees every outcome."""
    plugin = Interceptor()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    async with start(pm=pm) as h:
        client = await h.login()
        await client.send(sync({"A": 2}, {}, name="double"))
        update = await client.receive()
        assert isinstance(update, CounterUpdate)
        assert update.payload.state.p == {"A": 4}
        for name, code, reason in (
            ("dropped", 403, "Dropped by server policy"),
            ("rejected", 409, "no counters today"),
        ):
            await client.send(sync({"A": 1}, {}, name=name))
            error = await client.receive()
            assert isinstance(error, Error)
            assert (error.payload.code, error.payload.message) == (code, reason)
            assert h.server.counters.value(name) == 0
    assert [op.payload.name for op, _ in plugin.seen] == ["double", "dropped", "rejected"]
    assert all(isinstance(op, CounterSync) for op, _ in plugin.seen)
    assert plugin.seen[0][1] == "alice"
    outcomes = [(op.payload.name, r.op_id, r.success, r.error) for op, r in plugin.after]
    assert outcomes == [
        ("double", "counter:double", True, None),
        ("dropped", "counter:dropped", False, "Dropped by server policy"),
        ("rejected", "counter:rejected", False, "no counters today"),
    ]
    assert plugin.after[0][0].payload.state.p == {"A": 4}  # the op as merged


class FakeSubscriber:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes, message_type: str) -> None:
        assert message_type == "COUNTER_UPDATE"
        self.frames.append(frame)


async def test_registry_rejects_corrupt_stored_state() -> None:
    backend = MemoryBackend()
    await backend.initialize()
    await backend.store_batch([PutMeta("counters", "bad", b"\x01")])
    registry = CounterRegistry(node_id="s", encode=lambda m: b"")
    with pytest.raises(ValueError, match="counter 'bad'"):
        await registry.load(backend, store=None)  # type: ignore[arg-type]
    registry.subscribe(FakeSubscriber(), "x")
    assert registry.broadcast("x") == 1


GOLDEN_FRAMES = Path(__file__).resolve().parents[3].parent / "shared" / "golden-frames"


def golden(name: str) -> bytes:
    path = GOLDEN_FRAMES / name
    if not path.is_file():
        pytest.skip(f"golden frame corpus not found at {GOLDEN_FRAMES}")
    return path.read_bytes()


async def test_captured_counter_frames_are_accepted_including_the_ts_client_api_p51(
    harness: Any,
) -> None:
    """Golden frames 0055/0057 (wire `{p,n}`) and 0061/0062 (the TS client API's
    `{positive,negative}`, which the reference server refused with 400, quirk 12); a re-sync
    that changes nothing is still answered with `COUNTER_UPDATE`, as captured (0059)."""
    client = await harness.login()
    await client.send_raw(golden("0055-c2s-COUNTER_REQUEST.msgpack"))
    response = await client.receive()
    assert isinstance(response, CounterResponse)
    assert pairs(response) == {"p": {}, "n": {}, "positive": {}, "negative": {}}
    for _ in range(2):
        await client.send_raw(golden("0057-c2s-COUNTER_SYNC.msgpack"))
        update = await client.receive()
        assert isinstance(update, CounterUpdate)
        assert update.payload.state.p == {"node-A-rwvjtvb": 5}
    await client.send_raw(golden("0061-c2s-COUNTER_REQUEST.msgpack"))
    assert isinstance(await client.receive(), CounterResponse)
    await client.send_raw(golden("0062-c2s-COUNTER_SYNC.msgpack"))
    update = await client.receive()
    assert isinstance(update, CounterUpdate)
    assert update.payload.name == "likes-api-rwvjtvb"
    assert pairs(update)["positive"] == {"N1-rwvjtvb-6b6390b5": 5}
    assert pairs(update)["p"] == {"N1-rwvjtvb-6b6390b5": 5}
