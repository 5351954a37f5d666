"""Entry bodies: every form a write takes, its outcome, and nothing secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from topgun_audit import events

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    CounterState,
    CounterStatePayload,
    CounterSync,
    InvalidOp,
    OpResult,
)

TS = Timestamp(1_700_000_000_000, 3, "node-a")


@dataclass(frozen=True)
class User:
    user_id: str | None = "ada"
    roles: tuple[str, ...] = ("USER",)
    claims: dict[str, Any] = field(default_factory=lambda: {"secret": "claim"})


@dataclass(frozen=True)
class Ctx:
    principal: User
    connection: Any = None


APPLIED = OpResult(op_id="1", success=True, achieved_level="MEMORY")


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (
            ClientOp(map_name="m", key="k", record=LWWRecord({"v": 1}, TS)),
            ("m", "k", "PUT", str(TS)),
        ),
        (
            ClientOp(map_name="m", key="k", record=LWWRecord(None, TS)),
            ("m", "k", "REMOVE", str(TS)),
        ),
        (
            ClientOp(map_name="m", key="k", op_type="PUT", record=LWWRecord(None, TS)),
            ("m", "k", "REMOVE", str(TS)),
        ),
        (
            ClientOp(map_name="o", key="k", or_record=ORMapRecord("x", TS, str(TS))),
            ("o", "k", "OR_ADD", str(TS)),
        ),
        (ClientOp(map_name="o", key="k", or_tag=str(TS)), ("o", "k", "OR_REMOVE", str(TS))),
        (
            InvalidOp(0, "#0", "Invalid op: no record", {"mapName": "m", "key": 7}),
            ("m", None, None, None),
        ),
        (
            CounterSync(payload=CounterStatePayload(name="likes", state=CounterState(p={"a": 1}))),
            ("counter:likes", None, "COUNTER_SYNC", None),
        ),
    ],
)
def test_every_form_of_write_gives_map_key_op_and_hlc(op: Any, expected: tuple[Any, ...]) -> None:
    body = events.write(op, Ctx(User()), APPLIED)  # type: ignore[arg-type]
    assert (body["map"], body["key"], body["op"], body["hlc"]) == expected
    assert (body["event"], body["principal"], body["admin"]) == ("write", "ada", False)


def test_outcomes() -> None:
    rejected = OpResult(op_id="1", success=False, achieved_level="FIRE_AND_FORGET", error="no")
    incomplete = OpResult(
        op_id="1", success=False, achieved_level="REPLICATED", error="Timeout: achieved ..."
    )
    assert [events.outcome(r) for r in (APPLIED, rejected, incomplete)] == [
        "applied",
        "rejected",
        "incomplete",
    ]
    body = events.write(ClientOp(map_name="m", key="k"), Ctx(User()), rejected)  # type: ignore[arg-type]
    assert (body["outcome"], body["reason"]) == ("rejected", "no")


def test_values_and_claims_are_never_recorded() -> None:
    op = ClientOp(map_name="m", key="k", record=LWWRecord({"card": "4111-1111"}, TS))
    body = events.write(op, Ctx(User(roles=("ADMIN",))), APPLIED)  # type: ignore[arg-type]
    assert "4111" not in repr(body)
    assert "claim" not in repr(body)
    assert body["admin"] is True


def test_times_are_utc_iso_with_milliseconds() -> None:
    stamp = events.now()
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-11-26T06:00:00.000Z")
    assert events.parse_time(stamp).utcoffset() is not None
