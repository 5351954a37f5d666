"""Entry processors (topgun/server/processors.py): ENTRY_PROCESS / ENTRY_PROCESS_BATCH.

PROTOCOL.md checklist items covered here: P-52, P-53.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from msgspec import UNSET

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    EntryProcess,
    EntryProcessBatch,
    EntryProcessBatchResponse,
    EntryProcessResponse,
    JournalRead,
    JournalReadResponse,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    ProcessorSpec,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    ServerEvent,
)
from topgun.server import InMemoryClient
from topgun.server.config import ProcessorConfig
from topgun.server.processors import BUILTIN_PROCESSORS, DELETE, UNCHANGED

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def process(key: str, name: str, args: Any = None, request_id: str = "r", **spec: Any) -> Any:
    return EntryProcess(
        request_id=request_id,
        map_name="m",
        key=key,
        processor=ProcessorSpec(name=name, args=args, **spec),
    )


async def run(client: InMemoryClient, key: str, name: str, args: Any = None, **spec: Any) -> Any:
    await client.send(process(key, name, args, **spec))
    response, _ = await client.receive_until(EntryProcessResponse)
    return response


async def test_an_unknown_processor_is_an_error_and_code_is_never_run_p52(harness: Any) -> None:
    client = await harness.login()
    response = await run(client, "k", "mine", code="globalThis.x = 1; return 42")
    assert (response.success, response.error) == (False, "Unknown processor: mine")
    assert harness.server.maps.lww("m") is None  # nothing was written


async def test_increment_on_a_missing_key_yields_one_p53(harness: Any) -> None:
    client = await harness.login()
    response = await run(client, "k", "builtin:increment", code="ignored JS")
    assert (response.success, response.result, response.new_value) == (True, 1, 1)
    assert response.timestamp is not None
    assert harness.server.maps.lww("m").get_record("k").timestamp == response.timestamp
    response = await run(client, "k", "builtin:increment", 5)
    assert response.new_value == 6


async def test_100_concurrent_increments_from_10_clients_give_exactly_100_p53(
    harness: Any,
) -> None:
    clients = [await harness.login() for _ in range(10)]
    for client in clients:
        for i in range(10):
            await client.send(process("n", "builtin:increment", request_id=str(i)))
    results: list[Any] = []
    for client in clients:
        for _ in range(10):
            response, _ = await client.receive_until(EntryProcessResponse)
            results.append(response.new_value)
    assert sorted(results) == list(range(1, 101))
    assert harness.server.maps.lww("m").get("n") == 100


class Plugin:
    """Processors that misbehave: one raises, one spins until told to stop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.seen_ops: list[tuple[str, Any]] = []

    @hookimpl
    def register_entry_processors(self, register: Any) -> None:
        register("test:boom", self.boom)
        register("test:spin", self.spin)

    @hookimpl
    def before_op(self, op: ClientOp, context: Any) -> None:
        self.seen_ops.append((op.key, op.record.value if op.record is not None else None))

    def boom(self, value: Any, key: str, args: Any) -> tuple[Any, Any]:
        raise RuntimeError("boom")

    def spin(self, value: Any, key: str, args: Any) -> tuple[Any, Any]:
        while not self.stop.is_set():  # an infinite loop, as far as the server can tell
            pass
        return UNCHANGED, None


@pytest.fixture
def plugin() -> Any:
    made = Plugin()
    yield made
    made.stop.set()  # let the abandoned thread return


def with_plugin(plugin: Plugin) -> Any:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    return pm


async def test_a_raising_processor_returns_an_error(start: Any, plugin: Plugin) -> None:
    async with start(pm=with_plugin(plugin)) as h:
        client = await h.login()
        response = await run(client, "k", "test:boom")
        assert (response.success, response.error) == (False, "Processor failed: boom")


async def test_a_runaway_processor_times_out_while_other_clients_are_served(
    start: Any, plugin: Plugin
) -> None:
    async with start(pm=with_plugin(plugin), processors=ProcessorConfig(timeout_ms=300)) as h:
        runaway = await h.login()
        other = await h.login()
        await runaway.send(process("k", "test:spin"))
        for i in range(3):  # answered while the processor spins
            assert (await run(other, f"o{i}", "builtin:increment")).new_value == 1
            await other.send(Ping(timestamp=i))
            assert isinstance(await other.receive(), Pong)
        response, _ = await runaway.receive_until(EntryProcessResponse)
        assert (response.success, response.error) == (False, "Processor timeout")
        assert h.server.processors.abandoned == 1


async def test_abandoned_threads_are_bounded(start: Any, plugin: Plugin) -> None:
    config = ProcessorConfig(timeout_ms=50, max_abandoned=1)
    async with start(pm=with_plugin(plugin), processors=config) as h:
        client = await h.login()
        assert (await run(client, "k", "test:spin")).error == "Processor timeout"
        refused = await run(client, "k", "builtin:increment")
        assert (refused.success, refused.error) == (False, "Processor timeout")
        assert h.server.maps.lww("m") is None


async def test_processor_writes_take_the_write_path(start: Any, plugin: Plugin) -> None:
    """Interceptors see the write; subscribers (the requester too) get SERVER_EVENT; the
    journal records it."""
    async with start(pm=with_plugin(plugin)) as h:
        client = await h.login()
        await client.send(
            QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query()))
        )
        await client.receive_until(QueryResp)
        await client.send(process("k", "builtin:array_push", "x"))
        event, _ = await client.receive_until(ServerEvent)
        response, _ = await client.receive_until(EntryProcessResponse)
        assert event.payload.record.value == ["x"] == response.new_value
        assert response.result == 1
        assert plugin.seen_ops == [("k", ["x"])]
        await client.send(JournalRead(request_id="j", from_sequence="0"))
        journal, _ = await client.receive_until(JournalReadResponse)
        assert [(e.type, e.value) for e in journal.events] == [("PUT", ["x"])]


async def test_conditional_builtins_and_deletes(harness: Any) -> None:
    client = await harness.login()
    assert (await run(client, "k", "builtin:put_if_absent", "a")).result is True
    absent = await run(client, "k", "builtin:put_if_absent", "b")
    assert (absent.result, absent.new_value, absent.timestamp) == (False, UNSET, None)
    swap = await run(client, "k", "builtin:replace_if_equals", {"expected": "a", "newValue": "c"})
    assert (swap.result, swap.new_value) == (True, "c")
    kept = await run(client, "k", "builtin:delete_if_equals", "a")
    assert kept.result is False
    deleted = await run(client, "k", "builtin:delete_if_equals", "c")
    assert (deleted.result, deleted.new_value) == (True, UNSET)
    assert deleted.timestamp is not None
    assert harness.server.maps.lww("m").get("k") is None


async def test_permission_and_map_kind_are_checked(harness: Any) -> None:
    admin = await harness.login()
    stamp = Timestamp(T, 0, "c")
    op = ClientOp(
        map_name="o", key="k", op_type="OR_ADD", or_record=ORMapRecord(1, stamp, str(stamp))
    )
    await admin.send(OpBatch(payload=OpBatchPayload(ops=[op])))
    await admin.receive_until(OpAck)
    await admin.send(
        EntryProcess(
            request_id="r", map_name="o", key="k", processor=ProcessorSpec(name="builtin:get")
        )
    )
    wrong_kind, _ = await admin.receive_until(EntryProcessResponse)
    assert wrong_kind.error == "Entry processors require an LWW map"
    user = await harness.login(roles=("USER",))
    assert (await run(user, "k", "builtin:increment")).error == "Access denied"


async def test_batch_runs_each_distinct_key_once_in_order(harness: Any) -> None:
    client = await harness.login()
    await client.send(
        EntryProcessBatch(
            request_id="b",
            map_name="m",
            keys=["x", "y", "x"],
            processor=ProcessorSpec(name="builtin:increment"),
        )
    )
    response, _ = await client.receive_until(EntryProcessBatchResponse)
    assert list(response.results) == ["x", "y"]
    assert [r.new_value for r in response.results.values()] == [1, 1]


@pytest.mark.parametrize(
    ("name", "value", "args", "expected"),
    [
        ("builtin:decrement", 5, 2, (3, 3)),
        ("builtin:decrement_floor", 1, 3, (0, {"newValue": 0, "wasFloored": True})),
        ("builtin:multiply", None, 4, (4, 4)),
        ("builtin:replace", None, 1, (UNCHANGED, UNSET)),
        ("builtin:replace", 2, 1, (1, 2)),
        ("builtin:array_pop", [1, 2], None, ([1], 2)),
        ("builtin:array_remove", [1, 2, 1], 1, ([2, 1], True)),
        ("builtin:set_property", {"a": 1}, {"path": "b.c", "value": 2}, None),
        ("builtin:delete_property", {"a": {"b": 1}}, "a.b", ({"a": {}}, 1)),
        ("builtin:get", 7, None, (UNCHANGED, 7)),
        (
            "builtin:conditional_update",
            {"version": 1, "x": 0},
            {"expectedVersion": 1, "newData": {"x": 5}},
            ({"version": 2, "x": 5}, {"updated": True, "conflict": False}),
        ),
        ("builtin:merge", {"a": 1}, {"b": 2}, ({"a": 1, "b": 2}, {"a": 1, "b": 2})),
        ("builtin:delete_if_equals", [1], [1], (DELETE, True)),
    ],
)
def test_builtins(name: str, value: Any, args: Any, expected: Any) -> None:
    outcome = BUILTIN_PROCESSORS[name](value, "k", args)
    if expected is None:  # set_property
        assert outcome == ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}})
    else:
        assert outcome == expected


def test_builtins_refuse_values_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="not a number"):
        BUILTIN_PROCESSORS["builtin:increment"]("x", "k", 1)
    with pytest.raises(TypeError, match="not an array"):
        BUILTIN_PROCESSORS["builtin:array_push"](3, "k", 1)


async def test_an_ordinary_write_during_a_run_makes_it_run_again(harness: Any) -> None:
    """Atomic per key: the processor's answer is computed on the value it overwrites."""
    processors = harness.server.processors
    gate = threading.Event()
    calls: list[Any] = []

    def slow_increment(value: Any, key: str, args: Any) -> tuple[Any, Any]:
        calls.append(value)
        if len(calls) == 1:
            gate.wait(5)
        return (value or 0) + 1, None

    processors.processors["test:slow"] = slow_increment
    processors.timeout_ms = 5000
    client = await harness.login()
    writer = await harness.login()
    await client.send(process("k", "test:slow"))
    with anyio.fail_after(5):
        while not calls:  # the processor runs (and waits at the gate) before the write
            await anyio.sleep(0.001)
    await writer.send(
        OpBatch(
            payload=OpBatchPayload(
                ops=[ClientOp(map_name="m", key="k", record=LWWRecord(10, Timestamp(T, 0, "w")))]
            )
        )
    )
    await writer.receive_until(OpAck)
    gate.set()
    with anyio.fail_after(5):
        response, _ = await client.receive_until(EntryProcessResponse)
    assert calls == [None, 10]
    assert response.new_value == 11


async def test_executions_are_rate_limited_per_connection(start: Any) -> None:
    async with start(processors=ProcessorConfig(max_per_second=3)) as h:
        client = await h.login()
        other = await h.login()
        answers = [await run(client, "k", "builtin:increment") for _ in range(4)]
        assert [a.error for a in answers] == [None, None, None, "Rate limited"]
        assert (await run(other, "k", "builtin:increment")).new_value == 4  # its own budget
        h.clock.advance(1000)
        assert (await run(client, "k", "builtin:increment")).new_value == 5


async def test_args_over_one_mib_are_refused(harness: Any) -> None:
    client = await harness.login()
    response = await run(client, "k", "builtin:put_if_absent", "x" * (1024 * 1024))
    assert (response.success, response.error) == (False, "Processor args exceed 1 MiB")
    assert harness.server.maps.lww("m") is None
