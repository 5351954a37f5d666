"""`SQLiteStore`: the client's durable local store in one SQLite file.

Mutations are queued in memory by the store's synchronous methods and committed by
`flush()` in one transaction, in a worker thread: the event loop never waits on the disk,
and a burst of writes costs one commit. Values (record values and the values inside oplog
entries) are serialized through a `CodecPipeline`, the seam where encryption or compression
of stored values applies.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from topgun.client.store import StoredState
from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import ClientOp
from topgun.storage.codecs import CodecContext, CodecPipeline

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS lww (
    map TEXT NOT NULL, key TEXT NOT NULL, value BLOB, millis INTEGER NOT NULL,
    counter INTEGER NOT NULL, node TEXT NOT NULL, ttl REAL, PRIMARY KEY (map, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS or_records (
    map TEXT NOT NULL, tag TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    millis INTEGER NOT NULL, counter INTEGER NOT NULL, node TEXT NOT NULL, ttl REAL,
    PRIMARY KEY (map, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS or_tombstones (
    map TEXT NOT NULL, tag TEXT NOT NULL, key TEXT, PRIMARY KEY (map, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oplog (
    id INTEGER PRIMARY KEY, map TEXT NOT NULL, key TEXT NOT NULL, op BLOB NOT NULL,
    value BLOB
);
"""

_Step = Callable[[sqlite3.Connection], object]


class SQLiteStore:
    """A client store in the SQLite file at `path` (created if missing).

    `codecs` transforms stored values (default: plain msgpack); a store must be reopened
    with the same codecs it was written with.
    """

    def __init__(self, path: str | Path, *, codecs: CodecPipeline | None = None) -> None:
        self.path = Path(path)
        self.codecs = codecs if codecs is not None else CodecPipeline()
        self._db: sqlite3.Connection | None = None
        self._queue: list[_Step] = []
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- loading -------------------------------------------------------------------------

    async def open(self) -> StoredState:
        if self._db is not None:
            raise RuntimeError(f"{self!r} is already open")
        return await anyio.to_thread.run_sync(self._open, limiter=self._limiter)

    def _open(self) -> StoredState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            state = self._load(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return state

    def _load(self, db: sqlite3.Connection) -> StoredState:
        state = StoredState()
        unpack = self.codecs.unpack
        for name, value in db.execute("SELECT name, value FROM meta"):
            state.meta[name] = msgspec.msgpack.decode(value)
        for map_name, key, value, millis, counter, node, ttl in db.execute("SELECT * FROM lww"):
            plain = None if value is None else unpack(value, CodecContext("lww", map_name, key))
            state.lww.setdefault(map_name, {})[key] = LWWRecord(
                plain, Timestamp(millis, counter, node), ttl
            )
        for map_name, tag, key, value, millis, counter, node, ttl in db.execute(
            "SELECT * FROM or_records"
        ):
            record = ORMapRecord(
                unpack(value, CodecContext("ormap", map_name, key)),
                Timestamp(millis, counter, node),
                tag,
                ttl,
            )
            state.or_records.setdefault(map_name, {}).setdefault(key, {})[tag] = record
        for map_name, tag, key in db.execute("SELECT map, tag, key FROM or_tombstones"):
            state.or_tombstones.setdefault(map_name, {})[tag] = key
        for op_id, map_name, key, op, value in db.execute(
            "SELECT id, map, key, op, value FROM oplog ORDER BY id"
        ):
            state.oplog[op_id] = self._decode_op(map_name, key, op, value)
        return state

    def _decode_op(self, map_name: str, key: str, op: bytes, value: bytes | None) -> ClientOp:
        decoded = msgspec.msgpack.decode(op, type=ClientOp)
        if value is None:
            return decoded
        if decoded.or_record is not None:
            plain = self.codecs.unpack(value, CodecContext("ormap", map_name, key))
            return msgspec.structs.replace(
                decoded, or_record=msgspec.structs.replace(decoded.or_record, value=plain)
            )
        assert decoded.record is not None
        plain = self.codecs.unpack(value, CodecContext("lww", map_name, key))
        return msgspec.structs.replace(
            decoded, record=msgspec.structs.replace(decoded.record, value=plain)
        )

    # -- queued mutations ------------------------------------------------------------------

    def put_lww(self, map_name: str, items: list[tuple[str, LWWRecord]]) -> None:
        pack = self.codecs.pack

        def step(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO lww VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        map_name,
                        key,
                        None
                        if r.value is None
                        else pack(r.value, CodecContext("lww", map_name, key)),
                        r.timestamp.millis,
                        r.timestamp.counter,
                        r.timestamp.node_id,
                        r.ttl_ms,
                    )
                    for key, r in items
                ],
            )

        self._queue.append(step)

    def delete_lww(self, map_name: str, keys: list[str]) -> None:
        self._queue.append(
            lambda db: db.executemany(
                "DELETE FROM lww WHERE map = ? AND key = ?", [(map_name, k) for k in keys]
            )
        )

    def put_or_record(self, map_name: str, key: str, record: ORMapRecord) -> None:
        def step(db: sqlite3.Connection) -> None:
            ts = record.timestamp
            db.execute(
                "INSERT OR REPLACE INTO or_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    map_name,
                    record.tag,
                    key,
                    self.codecs.pack(record.value, CodecContext("ormap", map_name, key)),
                    ts.millis,
                    ts.counter,
                    ts.node_id,
                    record.ttl_ms,
                ),
            )

        self._queue.append(step)

    def put_or_tombstones(self, map_name: str, tags: list[tuple[str, str | None]]) -> None:
        def step(db: sqlite3.Connection) -> None:
            for tag, key in tags:
                if key is None:
                    db.execute(
                        "INSERT OR IGNORE INTO or_tombstones VALUES (?, ?, NULL)", (map_name, tag)
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO or_tombstones VALUES (?, ?, ?)",
                        (map_name, tag, key),
                    )
                db.execute("DELETE FROM or_records WHERE map = ? AND tag = ?", (map_name, tag))

        self._queue.append(step)

    def delete_or_tombstones(self, map_name: str, tags: list[str]) -> None:
        self._queue.append(
            lambda db: db.executemany(
                "DELETE FROM or_tombstones WHERE map = ? AND tag = ?",
                [(map_name, t) for t in tags],
            )
        )

    def clear_map(self, map_name: str) -> None:
        def step(db: sqlite3.Connection) -> None:
            for table in ("lww", "or_records", "or_tombstones"):
                db.execute(f"DELETE FROM {table} WHERE map = ?", (map_name,))

        self._queue.append(step)

    def append_ops(self, ops: list[tuple[int, ClientOp]]) -> None:
        def step(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO oplog VALUES (?, ?, ?, ?, ?)",
                [self._encode_op(i, op) for i, op in ops],
            )

        self._queue.append(step)

    def _encode_op(self, op_id: int, op: ClientOp) -> tuple[int, str, str, bytes, bytes | None]:
        value: bytes | None = None
        bare = op
        if op.record is not None and op.record.value is not None:
            value = self.codecs.pack(op.record.value, CodecContext("lww", op.map_name, op.key))
            bare = msgspec.structs.replace(
                op, record=msgspec.structs.replace(op.record, value=None)
            )
        elif op.or_record is not None:
            value = self.codecs.pack(op.or_record.value, CodecContext("ormap", op.map_name, op.key))
            bare = msgspec.structs.replace(
                op, or_record=msgspec.structs.replace(op.or_record, value=None)
            )
        return op_id, op.map_name, op.key, msgspec.msgpack.encode(bare), value

    def remove_ops(self, op_ids: list[int]) -> None:
        self._queue.append(
            lambda db: db.executemany("DELETE FROM oplog WHERE id = ?", [(i,) for i in op_ids])
        )

    def set_meta(self, name: str, value: Any) -> None:
        data = msgspec.msgpack.encode(value)
        self._queue.append(
            lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, data))
        )

    # -- committing ----------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._lock:
            if not self._queue:
                return
            steps, self._queue = self._queue, []
            await anyio.to_thread.run_sync(self._commit, steps, limiter=self._limiter)

    def _commit(self, steps: list[_Step]) -> None:
        db = self._db
        if db is None:
            raise RuntimeError(f"{self!r} is not open")
        db.execute("BEGIN")
        try:
            for step in steps:
                step(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._db is not None:
                await self.flush()
                db, self._db = self._db, None
                await anyio.to_thread.run_sync(db.close, limiter=self._limiter)
