"""The write pipeline (topgun/server/writes.py) through OP_BATCH and CLIENT_OP.

PROTOCOL.md checklist items covered here: P-27, P-28, P-29, P-30, P-31, P-32.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import DROP, Rejected, hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    ClientOpMessage,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    Ping,
    Pong,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUpdate,
)
from topgun.server import HLCConfig, Policy
from topgun.server.writes import OpFailed, classify

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def put(
    key: str, value: Any, millis: int = T, counter: int = 0, node: str = "c", **op: Any
) -> ClientOp:
    record = LWWRecord(value, Timestamp(millis, counter, node))
    return ClientOp(map_name=op.pop("map_name", "m"), key=key, record=record, **op)


def or_add(key: str, value: Any, counter: int = 0, **op: Any) -> ClientOp:
    ts = Timestamp(T, counter, "c")
    return ClientOp(
        map_name=op.pop("map_name", "o"),
        key=key,
        or_record=ORMapRecord(value, ts, op.pop("tag", str(ts))),
        **op,
    )


def batch(*ops: ClientOp, **options: Any) -> OpBatch:
    return OpBatch(payload=OpBatchPayload(ops=list(ops), **options))


async def test_one_ack_with_one_result_per_op_in_order_p27(harness: Any) -> None:
    """P-27: exactly one OP_ACK; `results` one per op in order; `lastId` = the last op id."""
    client = await harness.login()
    await client.send(batch(put("a", 1, id="1"), put("b", 2, id="2"), put("c", 3)))
    ack = await client.receive()
    assert isinstance(ack, OpAck)
    assert ack.payload.last_id == "2"  # the last op that has an id
    assert ack.payload.achieved_level == "MEMORY"
    assert [(r.op_id, r.success, r.achieved_level) for r in ack.payload.results] == [
        ("1", True, "MEMORY"),
        ("2", True, "MEMORY"),
        ("#2", True, "MEMORY"),
    ]
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.receive(), Pong)  # nothing else was sent


async def test_denied_ops_fail_alone_p28(start: Any) -> None:
    """P-28: an op on a map the principal may not write is not applied and fails with
    "Access denied" (OP_REJECTED 403); the batch's other ops are applied."""
    policies = (Policy(role="USER", map_name_pattern="open*", actions=("PUT", "READ")),)
    async with start(policies=policies) as h:
        client = await h.login(roles=["USER"])
        await client.send(
            batch(
                put("k", 1, map_name="open-1", id="1"),
                put("k", 1, map_name="closed", id="2"),
                put("k", None, map_name="open-1", millis=T + 1, id="3"),  # REMOVE: not granted
            )
        )
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        assert [(r.success, r.error) for r in ack.payload.results] == [
            (True, None),
            (False, "Access denied"),
            (False, "Access denied"),
        ]
        assert ack.payload.achieved_level == "FIRE_AND_FORGET"
        rejected = [await client.receive(), await client.receive()]
        assert [(r.payload.op_id, r.payload.code) for r in rejected] == [("2", 403), ("3", 403)]
        assert h.server.maps.kind("closed") is None
        assert h.server.maps.lww("open-1").get("k") == 1


async def test_persisted_is_acknowledged_only_after_the_commit_p29(
    gated_start: Any, gated: Any
) -> None:
    """P-29: PERSISTED is not acknowledged before its storage write completed; meanwhile
    the connection goes on with later messages, and acks keep their OP_BATCH order."""
    async with gated_start() as h:
        client = await h.login()
        gated.hold()
        await client.send(batch(put("k", 1, id="1"), write_concern="PERSISTED"))
        await client.send(batch(put("j", 2, id="2")))  # MEMORY, but must not overtake
        await client.send(Ping(timestamp=1))
        assert isinstance(await client.receive(), Pong)  # not blocked by the wait
        assert gated.batches == []
        gated.release()
        first = await client.receive()
        second = await client.receive()
        assert isinstance(first, OpAck)
        assert isinstance(second, OpAck)
        assert (first.payload.last_id, second.payload.last_id) == ("1", "2")
        assert first.payload.results[0].achieved_level == "PERSISTED"
        assert gated.batches  # committed before the ack


async def test_persisted_timeout_reports_the_level_reached_p29(
    gated_start: Any, gated: Any
) -> None:
    """P-29: a timeout reports `success: false` and the highest level reached."""
    async with gated_start() as h:
        client = await h.login()
        gated.hold()
        await client.send(
            batch(put("k", 1, id="1", write_concern="PERSISTED", timeout=0), put("j", 1, id="2"))
        )
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        first, second = ack.payload.results
        assert (first.success, first.achieved_level, first.error) == (
            False,
            "REPLICATED",
            "Timeout: achieved REPLICATED, requested PERSISTED",
        )
        assert second.success
        assert ack.payload.achieved_level == "MEMORY"  # the lowest over the results
        rejected = await client.receive()
        assert isinstance(rejected, OpRejected)
        assert rejected.payload.code == 500
        assert h.server.maps.lww("m").get("k") == 1  # applied all the same
        gated.release()


async def test_a_replay_asking_persisted_waits_for_the_pending_commit(
    gated_start: Any, gated: Any
) -> None:
    """A replayed op changes nothing, yet its PERSISTED waits for the commit holding the
    key's state (the TS client resends unacked ops)."""
    async with gated_start() as h:
        client = await h.login()
        gated.hold()
        await client.send(batch(put("k", 1, id="1")))
        assert isinstance(await client.receive(), OpAck)  # MEMORY: at once
        await client.send(batch(put("k", 1, id="1"), write_concern="PERSISTED"))
        await client.send(Ping(timestamp=1))
        assert isinstance(await client.receive(), Pong)
        gated.release()
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        assert ack.payload.results[0].achieved_level == "PERSISTED"


async def test_replaying_a_batch_succeeds_without_new_events_p30(harness: Any) -> None:
    """P-30: replaying an applied OP_BATCH succeeds and produces no events."""
    writer = await harness.login()
    watcher = await harness.login()
    await watcher.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query())))
    assert isinstance(await watcher.receive(), QueryResp)
    ops = batch(put("a", 1, id="1"), put("b", 2, id="2"))
    await writer.send(ops)
    assert isinstance(await writer.receive(), OpAck)
    first = await watcher.receive()
    assert first.payload.events[0].key == "a"
    for key in ("a", "b"):  # the live query's deltas follow the event
        update = await watcher.receive()
        assert isinstance(update, QueryUpdate)
        assert update.payload.key == key
    await writer.send(ops)
    replay = await writer.receive()
    assert isinstance(replay, OpAck)
    assert all(r.success for r in replay.payload.results)
    await watcher.send(Ping(timestamp=1))
    assert isinstance(await watcher.receive(), Pong)  # no event came before it


async def test_lww_applies_only_strictly_newer_timestamps_p31(harness: Any) -> None:
    """P-31: strictly newer wins; ties break by counter, then node id; equal is ignored."""
    client = await harness.login()
    await client.send(
        batch(
            put("k", "b-node", counter=1, node="b"),
            put("k", "a-node", counter=1, node="a"),  # same counter, smaller node id: loses
            put("k", "old", counter=0, node="z"),  # smaller counter: loses
            put("k", "same", counter=1, node="b"),  # equal timestamp: not applied
            put("j", "first", millis=T),
            put("j", "later", millis=T + 1),
        )
    )
    ack = await client.receive()
    assert all(r.success for r in ack.payload.results)  # not applied is not a failure
    lww = harness.server.maps.lww("m")
    assert lww.get("k") == "b-node"
    assert lww.get("j") == "later"


async def test_or_add_of_a_tombstoned_tag_is_not_applied_and_a_wrong_tag_is_rejected_p32(
    harness: Any,
) -> None:
    """P-32: an OR_ADD whose tag is tombstoned is not applied; one whose tag differs from its
    HLC string is rejected ("Invalid op")."""
    client = await harness.login()
    added = or_add("k", "v", id="1")
    assert added.or_record is not None
    tag = added.or_record.tag
    await client.send(batch(added, ClientOp(map_name="o", key="k", or_tag=tag, id="2")))
    await client.receive()
    await client.send(batch(added, or_add("k", "w", counter=5, tag="1:2:x", id="3")))
    ack = await client.receive()
    assert isinstance(ack, OpAck)
    assert ack.payload.results[0].success
    assert not ack.payload.results[1].success
    assert ack.payload.results[1].error.startswith("Invalid op: orRecord tag '1:2:x' differs")
    rejected = await client.receive()
    assert (rejected.payload.op_id, rejected.payload.code) == ("3", 400)
    assert harness.server.maps.ormap("o").values("k") == []


async def test_invalid_ops_fail_alone_with_their_reason(harness: Any) -> None:
    client = await harness.login()
    good = {
        "mapName": "m",
        "key": "k",
        "record": {"value": 1, "timestamp": {"millis": T, "counter": 0, "nodeId": "c"}},
        "id": "1",
    }
    bad_field = {"mapName": "m", "key": 5, "id": "2"}
    no_record = {"mapName": "m", "key": "k", "opType": "PUT", "id": "3"}
    remove_with_value = {**good, "opType": "REMOVE", "id": "4"}
    negative = {
        **good,
        "record": {"value": 1, "timestamp": {"millis": -1, "counter": 0, "nodeId": "c"}},
        "id": "5",
    }
    await client.send(
        {
            "type": "OP_BATCH",
            "payload": {"ops": [good, bad_field, no_record, remove_with_value, negative]},
        }
    )
    ack = await client.receive()
    results = ack.payload.results
    assert [r.success for r in results] == [True, False, False, False, False]
    assert results[1].error.startswith("Invalid op:")
    assert results[2].error == "Invalid op: PUT needs a record"
    assert results[3].error == "Invalid op: REMOVE needs a record with a nil value"
    assert results[4].error.startswith("Invalid op: record timestamp:")
    assert {r.achieved_level for r in results[1:]} == {"FIRE_AND_FORGET"}


async def test_map_kind_is_fixed_by_the_first_write(harness: Any) -> None:
    client = await harness.login()
    await client.send(batch(put("k", 1, map_name="x"), or_add("k", "v", map_name="x")))
    ack = await client.receive()
    assert [r.error for r in ack.payload.results] == [None, "Map type mismatch"]
    assert harness.server.maps.kind("x") == "lww"


async def test_or_remove_needs_remove_permission(start: Any) -> None:
    """D31: OR_REMOVE is checked as REMOVE, OR_ADD as PUT."""
    policies = (Policy(role="USER", map_name_pattern="*", actions=("PUT",)),)
    async with start(policies=policies) as h:
        client = await h.login(roles=["USER"])
        added = or_add("k", "v")
        assert added.or_record is not None
        await client.send(batch(added, ClientOp(map_name="o", key="k", or_tag=added.or_record.tag)))
        ack = await client.receive()
        assert [r.error for r in ack.payload.results] == [None, "Access denied"]


class _Interceptors:
    def __init__(self) -> None:
        self.after: list[tuple[str, bool, str | None]] = []

    @hookimpl
    def before_op(self, op: ClientOp, context: Any) -> Any:
        assert context.principal.user_id == "alice"
        if op.key == "drop":
            return DROP
        if op.key == "reject":
            raise Rejected("not today", code=409)
        if op.key == "upper" and op.record is not None:
            record = LWWRecord(op.record.value.upper(), op.record.timestamp)
            return ClientOp(map_name=op.map_name, key=op.key, record=record, id=op.id)
        return None

    @hookimpl
    async def after_op(self, op: Any, context: Any, result: Any) -> None:
        self.after.append((result.op_id, result.success, result.error))


async def test_before_op_may_transform_drop_or_reject_and_after_op_sees_results(start: Any) -> None:
    plugin = _Interceptors()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    async with start(pm=pm) as h:
        client = await h.login()
        await client.send(
            batch(put("upper", "abc", id="1"), put("drop", 1, id="2"), put("reject", 1, id="3"))
        )
        ack = await client.receive()
        assert [(r.success, r.error) for r in ack.payload.results] == [
            (True, None),
            (False, "Dropped by server policy"),
            (False, "not today"),
        ]
        codes = [(await client.receive()).payload.code for _ in range(2)]
        assert codes == [403, 409]
        assert h.server.maps.lww("m").get("upper") == "ABC"
        assert h.server.maps.lww("m").get("drop") is None
        assert plugin.after == [
            ("1", True, None),
            ("2", False, "Dropped by server policy"),
            ("3", False, "not today"),
        ]


async def test_strict_clock_rejects_drifting_ops(start: Any, clock: Any) -> None:
    async with start(hlc=HLCConfig(max_drift_ms=1000, strict=True)) as h:
        client = await h.login()
        await client.send(
            batch(put("k", 1, millis=clock.now + 5000), put("j", 1, millis=clock.now))
        )
        ack = await client.receive()
        assert [r.error for r in ack.payload.results] == ["Clock drift", None]


async def test_write_concern_levels_are_reported_as_requested(harness: Any) -> None:
    client = await harness.login()
    await client.send(
        batch(
            put("a", 1, write_concern="FIRE_AND_FORGET"),
            put("b", 1, write_concern="APPLIED"),
            put("c", 1),
            write_concern="REPLICATED",
        )
    )
    ack = await client.receive()
    assert [r.achieved_level for r in ack.payload.results] == [
        "FIRE_AND_FORGET",
        "APPLIED",
        "REPLICATED",
    ]
    assert ack.payload.achieved_level == "FIRE_AND_FORGET"


async def test_client_op_success_is_acked_and_failure_only_rejected(start: Any) -> None:
    policies = (Policy(role="USER", map_name_pattern="m", actions=("PUT",)),)
    async with start(policies=policies) as h:
        client = await h.login(roles=["USER"])
        await client.send(ClientOpMessage(payload=put("k", 1, id="7")))
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        assert (ack.payload.last_id, len(ack.payload.results)) == ("7", 1)
        await client.send(ClientOpMessage(payload=put("k", 1, map_name="other", id="8")))
        rejected = await client.receive()
        assert isinstance(rejected, OpRejected)
        assert (rejected.payload.op_id, rejected.payload.reason, rejected.payload.code) == (
            "8",
            "Access denied",
            403,
        )
        await client.send({"type": "CLIENT_OP", "payload": {"id": "9", "mapName": "m", "key": 1}})
        invalid = await client.receive()
        assert isinstance(invalid, OpRejected)
        assert (invalid.payload.op_id, invalid.payload.code) == ("9", 400)
        assert invalid.payload.reason.startswith("Invalid op:")


def test_classify_infers_the_op_type() -> None:
    ts = Timestamp(T, 0, "c")
    assert classify(ClientOp(map_name="m", key="k", record=LWWRecord(1, ts))) == (
        "PUT",
        "PUT",
        "lww",
    )
    assert classify(ClientOp(map_name="m", key="k", record=LWWRecord(None, ts))) == (
        "REMOVE",
        "REMOVE",
        "lww",
    )
    put_nil = ClientOp(map_name="m", key="k", op_type="PUT", record=LWWRecord(None, ts))
    assert classify(put_nil)[0] == "REMOVE"
    assert classify(ClientOp(map_name="m", key="k", or_tag=str(ts))) == (
        "OR_REMOVE",
        "REMOVE",
        "ormap",
    )
    with pytest.raises(OpFailed, match="not an HLC string"):
        classify(ClientOp(map_name="m", key="k", or_tag="007:1:x"))
    with pytest.raises(OpFailed, match="no record, orRecord or orTag"):
        classify(ClientOp(map_name="m", key="k"))


async def test_an_ack_waiting_for_persisted_does_not_hold_other_connections(
    gated_start: Any, gated: Any
) -> None:
    async with gated_start() as h:
        slow = await h.login()
        fast = await h.login()
        gated.hold()
        await slow.send(batch(put("k", 1), write_concern="PERSISTED"))
        await fast.send(batch(put("j", 1)))
        assert isinstance(await fast.receive(), OpAck)
        gated.release()
        with anyio.fail_after(5):
            assert isinstance(await slow.receive(), OpAck)
