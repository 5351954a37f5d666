"""The client stores: `MemoryStore` and `SQLiteStore` keep the same state through the same
calls (records, OR-Map records and tombstones, oplog, meta), and SQLite keeps it across a
reopen, with stored values passed through the codec pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from topgun.client import MemoryStore, SQLiteStore, Store
from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import ClientOp
from topgun.storage.codecs import CodecPipeline
from topgun.storage.errors import ValueCodecError

pytestmark = pytest.mark.anyio

T1 = Timestamp(1_700_000_000_000, 0, "node-a")
T2 = Timestamp(1_700_000_000_001, 3, "node-a")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Reverse:
    """A value codec that reverses bytes: stored values are then not plain msgpack."""

    def encode(self, data: bytes) -> bytes:
        return data[::-1]

    def decode(self, data: bytes) -> bytes:
        return data[::-1]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory returning the same store again (memory) or a reopened file (SQLite)."""
    if request.param == "memory":
        store = MemoryStore()
        return lambda: store
    codecs = CodecPipeline([("reverse", Reverse())])
    return lambda: SQLiteStore(tmp_path / "client.sqlite", codecs=codecs)


async def test_state_round_trips(make_store: Callable[[], Store]) -> None:
    store = make_store()
    assert (await store.open()).oplog == {}
    op = ClientOp(map_name="m", key="k", op_type="PUT", record=LWWRecord({"v": 1}, T1), id="1")
    or_op = ClientOp(
        map_name="o", key="x", op_type="OR_ADD", or_record=ORMapRecord("blue", T2, str(T2))
    )
    store.put_lww("m", [("k", LWWRecord({"v": 1}, T1, 5000.0)), ("gone", LWWRecord(None, T2))])
    store.put_or_record("o", "x", ORMapRecord("blue", T2, str(T2)))
    store.put_or_record("o", "x", ORMapRecord("red", T1, str(T1)))
    store.put_or_tombstones("o", [(str(T1), "x"), ("1:0:elsewhere", None)])
    store.append_ops([(1, op), (2, or_op), (3, ClientOp(map_name="o", key="x", or_tag="9:9:z"))])
    store.remove_ops([3])
    store.set_meta("node_id", "abc")
    store.set_meta("sync:m", 1_700_000_000_500)
    store.put_lww("cleared", [("a", LWWRecord(1, T1))])
    store.clear_map("cleared")
    await store.flush()
    await store.aclose()

    state = await make_store().open()
    assert state.lww == {"m": {"k": LWWRecord({"v": 1}, T1, 5000.0), "gone": LWWRecord(None, T2)}}
    assert state.or_records == {"o": {"x": {str(T2): ORMapRecord("blue", T2, str(T2))}}}
    assert state.or_tombstones == {"o": {str(T1): "x", "1:0:elsewhere": None}}
    assert state.oplog == {1: op, 2: or_op}
    assert state.meta == {"node_id": "abc", "sync:m": 1_700_000_000_500}


async def test_sqlite_values_pass_through_the_codecs(tmp_path: Path) -> None:
    path = tmp_path / "coded.sqlite"
    store = SQLiteStore(path, codecs=CodecPipeline([("reverse", Reverse())]))
    await store.open()
    store.put_lww("m", [("k", LWWRecord("very-secret-value", T1))])
    store.append_ops(
        [(1, ClientOp(map_name="m", key="k", record=LWWRecord("very-secret-oplog", T1)))]
    )
    await store.aclose()
    raw = path.read_bytes() + (
        path.with_suffix(".sqlite-wal").read_bytes()
        if path.with_suffix(".sqlite-wal").exists()
        else b""
    )
    assert b"very-secret-value" not in raw
    assert b"very-secret-oplog" not in raw
    assert b"eulav-terces-yrev" in raw
    # Read back without the codec: a clear error, nothing silently wrong.
    plain = SQLiteStore(path)
    with pytest.raises(ValueCodecError, match=r"deserialize|decode"):
        await plain.open()


async def test_sqlite_refuses_a_second_open(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "x.sqlite")
    await store.open()
    with pytest.raises(RuntimeError, match="already open"):
        await store.open()
    await store.aclose()
