"""What live views keep and how they send under a memory budget (topgun/server/views.py):
projections that answer predicates and sorts exactly, and the outbox that keeps each
session's frames in order while a row is loaded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.hooks import Principal
from topgun.query import ABSENT, parse_query
from topgun.server.maps import MapRegistry
from topgun.server.views import Outbox, project, query_fields
from topgun.storage import DeleteKey, MemoryBackend, MemoryBudget, StorageWriter, value_size

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
VALUE = "x" * 1000


class Session:
    """A recipient that keeps what it is sent."""

    principal: Principal | None = None
    is_open = True

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, str]] = []

    def send_frame(self, frame: bytes, message_type: str) -> None:
        self.frames.append((frame, message_type))


@pytest.fixture
async def maps(clock: Any) -> AsyncIterator[MapRegistry]:
    """A registry whose budget holds 20 values, with 100 committed: most of them cold."""
    backend = MemoryBackend()
    await backend.initialize()
    registry = MapRegistry(HLC("s", clock))
    registry.set_budget(MemoryBudget(budget_bytes=20 * value_size(f"k000:{VALUE}")))
    await registry.load(backend)
    async with StorageWriter(backend) as writer:
        registry.writer = writer
        await write(registry, [f"k{i:03}" for i in range(100)])
        assert registry.enforce_budget() > 75  # committed now: the oldest go cold
        yield registry


async def write(maps: MapRegistry, keys: Iterable[str], millis: int = T) -> None:
    with maps.recording() as recording:
        for key in keys:
            maps.merge_lww("m", key, LWWRecord(f"{key}:{VALUE}", Timestamp(millis, 0, "c")))
    commit = await maps.persist(recording)
    assert commit is not None
    await commit.wait()


def backend_of(maps: MapRegistry) -> Any:
    writer = maps.writer
    assert writer is not None
    return writer.backend


def test_a_projection_answers_every_predicate_and_sort_as_the_whole_value() -> None:
    query = parse_query(
        {
            "predicate": {
                "op": "or",
                "children": [
                    {"op": "not", "children": [{"op": "eq", "attribute": "a", "value": 1}]},
                    {"op": "contains", "attribute": "t", "value": "mer"},
                ],
            },
            "sort": {"s": "desc"},
        }
    )
    assert query_fields(query) == {"a", "t", "s"}
    keep = frozenset(query_fields(query))
    values: list[Any] = [
        {"a": 1, "t": "merkle", "s": 3, "body": "x" * 100},
        {"a": 1, "t": "vector", "body": {"nested": [1, 2]}},
        {"a": 2},
        {"body": 1},
        [1, 2, 3],
        "a string",
        7,
    ]
    for value in values:
        kept = project(value, keep)
        assert query.predicate.matches(kept) == query.predicate.matches(value), value
        assert query.sort.order_key("k", kept) == query.sort.order_key("k", value), value
    assert project(values[0], keep) == {"a": 1, "t": "merkle", "s": 3}
    assert project({"body": 1}, keep) is None  # nothing the query reads: nothing kept
    assert project(ABSENT, keep) is ABSENT


async def test_a_frame_waiting_for_a_cold_row_holds_back_the_frames_after_it(
    maps: MapRegistry,
) -> None:
    lww = maps.lww("m")
    assert lww is not None
    assert lww.is_cold("k000")
    assert not lww.is_cold("k099")
    outbox = Outbox(maps)
    first, second = Session(), Session()
    outbox.put(first, b"before", "SERVER_EVENT")
    assert first.frames == [(b"before", "SERVER_EVENT")]  # nothing waits: sent at once
    outbox.put_row(first, "QUERY_UPDATE", "m", "k099", lambda value: value[:4].encode())
    assert first.frames[-1] == (b"k099", "QUERY_UPDATE")  # a hot row: sent at once too
    outbox.put_row(first, "QUERY_UPDATE", "m", "k000", lambda value: value[:4].encode())
    outbox.put(second, b"after", "SERVER_EVENT")
    outbox.put_row(second, "QUERY_UPDATE", "m", "k099", lambda value: None)  # sends nothing
    outbox.flush()
    assert len(first.frames) == 2
    assert second.frames == []  # behind the cold row, though it is for another session
    assert len(outbox) == 3
    loads = maps.hot.loads if maps.hot is not None else 0
    await outbox.settle()
    assert first.frames[-1] == (b"k000", "QUERY_UPDATE")
    assert second.frames == [(b"after", "SERVER_EVENT")]
    assert len(outbox) == 0
    assert maps.hot is not None
    assert maps.hot.loads == loads + 1


async def test_a_row_changed_since_is_sent_as_storage_holds_it(maps: MapRegistry) -> None:
    outbox = Outbox(maps)
    outbox.backend = backend_of(maps)
    session = Session()
    seen: list[Any] = []

    def build(value: Any) -> bytes:
        seen.append(value)
        return b"update"

    outbox.put_row(session, "QUERY_UPDATE", "m", "k001", build, stored=True)
    with maps.recording():  # changed in memory, not persisted yet
        maps.merge_lww("m", "k001", LWWRecord(None, Timestamp(T + 1, 0, "c")))
    outbox.put_row(session, "QUERY_UPDATE", "m", "k002", build)  # cold, then changed
    with maps.recording():
        maps.merge_lww("m", "k002", LWWRecord("new", Timestamp(T + 1, 0, "c")))
    await outbox.settle()
    assert seen == [f"k001:{VALUE}", f"k002:{VALUE}"]  # as computed, not as now
    assert session.frames == [(b"update", "QUERY_UPDATE")] * 2


async def test_a_row_storage_lost_is_dropped_without_wedging_the_queue(
    maps: MapRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    await backend_of(maps).store_batch([DeleteKey("m", "k003")])
    outbox = Outbox(maps)
    session = Session()
    outbox.put_row(session, "QUERY_UPDATE", "m", "k003", lambda value: b"lost")
    outbox.put(session, b"next", "SERVER_EVENT")
    await outbox.settle()
    assert session.frames == [(b"next", "SERVER_EVENT")]
    assert "dropped" in caplog.text
