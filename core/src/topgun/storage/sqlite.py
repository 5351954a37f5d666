"""The SQLite backend (built-in `sqlite`, the default): one file in the data directory.

The database runs in WAL mode with `synchronous=FULL` by default, so a batch whose
`store_batch` returned is in the write-ahead log and synced to disk: it survives a crash
of the process and of the machine (given a disk that honours fsync). `synchronous =
"normal"` syncs only at checkpoints: a committed batch still survives a crash of the
process, but a power loss may drop the last ones (never corrupting the file).

One connection, opened in exclusive locking mode (a second server on the same data
directory fails to open it instead of silently diverging from the first), is used from
worker threads one call at a time (a `CapacityLimiter` of 1), so the event loop never
waits on disk. The schema is versioned with `PRAGMA user_version` and migrated on
`initialize()`. Timestamps and TTLs have their own columns, so they read back exactly;
values are msgpack passed through the codec pipeline.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import msgspec

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import Register, hookimpl
from topgun.storage.codecs import CodecContext, CodecPipeline
from topgun.storage.contract import (
    CREATING_CHANGES,
    AddORRecord,
    BackendConfig,
    BackendFactory,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    ORSnapshot,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RemoveORTag,
    StorageBackend,
    StoredValue,
    check_batch,
    check_page_request,
    encoded_value,
    kind_mismatch,
    kind_of,
)
from topgun.storage.errors import (
    StorageClosedError,
    StorageConfigError,
    StorageCorruptError,
    StorageError,
    StorageOpenError,
)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The schema version this topgun writes (`PRAGMA user_version`)."""

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # _MIGRATIONS[v] takes a database from schema version v to v + 1.
    (  # 0 -> 1: the first schema.
        "CREATE TABLE maps (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " kind TEXT NOT NULL CHECK (kind IN ('lww', 'ormap')))",
        # `ttl_ms` has no declared type, so an int stays an int and a float a float.
        "CREATE TABLE lww_records (map_id INTEGER NOT NULL, key TEXT NOT NULL, value BLOB,"
        " millis INTEGER NOT NULL, counter INTEGER NOT NULL, node_id TEXT NOT NULL, ttl_ms,"
        " PRIMARY KEY (map_id, key)) WITHOUT ROWID",
        "CREATE TABLE or_records (map_id INTEGER NOT NULL, key TEXT NOT NULL, tag TEXT NOT NULL,"
        " value BLOB NOT NULL, millis INTEGER NOT NULL, counter INTEGER NOT NULL,"
        " node_id TEXT NOT NULL, ttl_ms, PRIMARY KEY (map_id, key, tag)) WITHOUT ROWID",
        "CREATE INDEX or_records_by_tag ON or_records (map_id, tag)",
        "CREATE TABLE or_tombstones (map_id INTEGER NOT NULL, tag TEXT NOT NULL, key TEXT,"
        " PRIMARY KEY (map_id, tag)) WITHOUT ROWID",
        "CREATE INDEX or_tombstones_by_key ON or_tombstones (map_id, key)",
        "CREATE TABLE meta (namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY (namespace, key)) WITHOUT ROWID",
        # The codec list the values were written with, under the name 'codecs'.
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    ),
)

# SQLite primary result codes (the low byte of an extended code).
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_OPEN_CODES = {3, 8, 14, 23}  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_AUTH
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED

_LOAD_CHUNK = 500
"""Keys per `IN (...)` query of `load_keys`."""

_MSGPACK = msgspec.msgpack.Encoder()
_CODEC_LIST = msgspec.msgpack.Decoder(list[str])


class SQLiteOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `sqlite` backend's options (`[storage.options]`)."""

    file: str = "topgun.db"
    """The database file, relative to the data directory."""
    synchronous: Literal["full", "normal"] = "full"
    """`full`: a committed batch survives power loss; `normal`: only a process crash."""


class SQLiteBackend:
    """The storage contract on one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        codecs: CodecPipeline | None = None,
        synchronous: Literal["full", "normal"] = "full",
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise StorageConfigError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = Path(path)
        self.codecs = codecs if codecs is not None else CodecPipeline()
        self.synchronous = synchronous
        self._limiter = anyio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._maps: dict[str, tuple[int, MapKind]] = {}

    def __repr__(self) -> str:
        return f"SQLiteBackend({str(self.path)!r}, codecs={self.codecs!r})"

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` in a worker thread, one call at a time."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    def _error(self, exc: sqlite3.Error, doing: str) -> StorageError:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in _CORRUPT_CODES:
            return StorageCorruptError(
                f"{self.path} is not a readable SQLite database ({doing}: {exc}); "
                "restore it from a backup or move it away to start empty"
            )
        if code in _BUSY_CODES:
            return StorageOpenError(
                f"{self.path} is in use by another process (another topgun server on the same "
                f"data directory?): {doing}: {exc}"
            )
        if code in _OPEN_CODES:
            return StorageOpenError(f"cannot open {self.path} for writing ({doing}): {exc}")
        return StorageError(f"{self.path}: {doing} failed: {exc}")

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            state = "closed" if self._closed else "not initialized"
            raise StorageClosedError(f"the SQLite storage backend on {self.path} is {state}")
        return self._conn

    # --- lifecycle ---------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._closed:
            raise StorageClosedError(f"the SQLite backend on {self.path} is closed; make a new one")
        if self._conn is None:
            await self._call(self._open)

    def _open(self) -> None:
        if self._conn is not None:
            return
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageOpenError(
                f"cannot create the data directory {directory}: {exc.strerror or exc}"
            ) from exc
        if self.path.exists() and not self.path.is_file():
            raise StorageOpenError(f"{self.path} exists and is not a file")
        with self._translated("opening"):
            # timeout=0: the one connection never waits for a lock; a busy file means
            # another process holds it, which is reported at once.
            conn = sqlite3.connect(
                self.path,
                timeout=0,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=_STATEMENT_CACHE,
            )
        try:
            with self._translated("opening"):
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StorageOpenError(f"{self.path}: SQLite refused WAL mode ({mode})")
                conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                conn.execute("BEGIN IMMEDIATE")
                self._migrate(conn)
                self._check_codecs(conn)
                self._maps = {
                    name: (map_id, kind)
                    for map_id, name, kind in conn.execute("SELECT id, name, kind FROM maps")
                }
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageCorruptError(
                f"{self.path} has schema version {version}, written by a newer topgun "
                f"(this one knows up to {SCHEMA_VERSION}); upgrade topgun to open it"
            )
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StorageCorruptError(
                    f"{self.path} is a SQLite database of another application (it has tables "
                    "but no topgun schema version); point topgun at another data directory"
                )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_codecs(self, conn: sqlite3.Connection) -> None:
        names = list(self.codecs.names)
        row = conn.execute("SELECT value FROM settings WHERE name = 'codecs'").fetchone()
        if row is None:
            conn.execute("INSERT INTO settings VALUES ('codecs', ?)", (_MSGPACK.encode(names),))
        elif (stored := _CODEC_LIST.decode(row[0])) != names:
            raise StorageConfigError(
                f"{self.path} was written with codecs {stored}, but the configuration lists "
                f"{names}; values cannot be read with other codecs"
            )

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._close)
        self._closed = True

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._translated("closing"):
                conn.close()

    # --- reads -------------------------------------------------------------------------

    async def list_maps(self) -> list[MapInfo]:
        return await self._call(self._list_maps)

    def _list_maps(self) -> list[MapInfo]:
        self._connection()
        return [MapInfo(name, kind) for name, (_, kind) in sorted(self._maps.items())]

    async def load_map(self, name: str) -> MapSnapshot | None:
        return await self._call(self._load, name, None)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return await self._call(self._load, name, sorted(set(keys)))

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        check_page_request(after, limit)
        return await self._call(self._load_page, name, after, limit)

    def _load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        conn = self._connection()
        found = self._maps.get(name)
        if found is None:
            return None
        map_id, kind = found
        table = "lww_records" if kind == "lww" else "or_records"
        where, args = ("", (map_id,)) if after is None else (" AND key > ?", (map_id, after))
        with self._translated(f"loading a page of map {name!r}"):
            keys = [
                key
                for (key,) in conn.execute(
                    f"SELECT DISTINCT key FROM {table} WHERE map_id = ?{where}"
                    " ORDER BY key LIMIT ?",
                    (*args, limit + 1),
                )
            ]
            page = keys[:limit]
            snapshot: MapSnapshot
            if kind == "lww":
                snapshot = self._load_lww(conn, name, map_id, page)
            else:
                snapshot = self._load_or(conn, name, map_id, page, all_tombstones=after is None)
        return MapPage(snapshot, page[-1] if len(keys) > limit else None)

    def _load(self, name: str, keys: list[str] | None) -> MapSnapshot | None:
        conn = self._connection()
        found = self._maps.get(name)
        if found is None:
            return None
        map_id, kind = found
        with self._translated(f"loading map {name!r}"):
            if kind == "lww":
                return self._load_lww(conn, name, map_id, keys)
            return self._load_or(conn, name, map_id, keys)

    def _rows(
        self, conn: sqlite3.Connection, query: str, map_id: int, keys: list[str] | None
    ) -> list[Any]:
        """Rows of `query` (which ends in a `WHERE map_id = ?` clause) for all keys, or for
        `keys` only, a chunk of keys per query."""
        if keys is None:
            return conn.execute(f"{query} ORDER BY key", (map_id,)).fetchall()
        rows: list[Any] = []
        for start in range(0, len(keys), _LOAD_CHUNK):
            chunk = keys[start : start + _LOAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += conn.execute(f"{query} AND key IN ({marks}) ORDER BY key", (map_id, *chunk))
        return rows

    def _load_lww(
        self, conn: sqlite3.Connection, name: str, map_id: int, keys: list[str] | None
    ) -> LWWSnapshot:
        unpack = self.codecs.unpack
        query = (
            "SELECT key, value, millis, counter, node_id, ttl_ms FROM lww_records WHERE map_id = ?"
        )
        records = {
            key: LWWRecord(
                None if blob is None else unpack(blob, CodecContext("lww", name, key)),
                Timestamp(millis, counter, node_id),
                ttl,
            )
            for key, blob, millis, counter, node_id, ttl in self._rows(conn, query, map_id, keys)
        }
        return LWWSnapshot(name, records)

    def _load_or(
        self,
        conn: sqlite3.Connection,
        name: str,
        map_id: int,
        keys: list[str] | None,
        *,
        all_tombstones: bool | None = None,
    ) -> ORSnapshot:
        """The records of `keys` (every key when `None`) and their tombstones; a page
        (`all_tombstones` not `None`) has every tombstone of the map, or none."""
        unpack = self.codecs.unpack
        query = (
            "SELECT key, tag, value, millis, counter, node_id, ttl_ms FROM or_records"
            " WHERE map_id = ?"
        )
        records: dict[str, list[ORMapRecord]] = {}
        for key, tag, blob, millis, counter, node_id, ttl in self._rows(conn, query, map_id, keys):
            value = unpack(blob, CodecContext("ormap", name, key))
            records.setdefault(key, []).append(
                ORMapRecord(value, Timestamp(millis, counter, node_id), tag, ttl)
            )
        for tag_list in records.values():
            tag_list.sort(key=lambda record: record.tag)
        query = "SELECT key, tag FROM or_tombstones WHERE map_id = ?"
        if all_tombstones is None:
            rows = self._rows(conn, query, map_id, keys)
        else:
            rows = self._rows(conn, query, map_id, None) if all_tombstones else []
        pairs = sorted((tag, key) for key, tag in rows)
        return ORSnapshot(name, records, dict(pairs))

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        return await self._call(self._load_meta, namespace)

    def _load_meta(self, namespace: str) -> dict[str, bytes]:
        conn = self._connection()
        with self._translated(f"loading meta namespace {namespace!r}"):
            rows = conn.execute(
                "SELECT key, value FROM meta WHERE namespace = ? ORDER BY key", (namespace,)
            ).fetchall()
        return {
            key: self.codecs.decode(blob, CodecContext("meta", namespace, key))
            for key, blob in rows
        }

    # --- writes ------------------------------------------------------------------------

    async def store_batch(self, changes: Sequence[Change]) -> None:
        check_batch(changes)
        await self._call(self._store, changes)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.store_batch([DeleteKey(name, key) for key in keys])

    def _store(self, changes: Sequence[Change]) -> None:
        conn = self._connection()
        values = self._values(changes)
        created: dict[str, tuple[int, MapKind]] = {}
        with self._translated(f"writing a batch of {len(changes)} change(s)"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Runs of LWW puts go through multi-row statements, their parameters
                # collected flat. Meta rows are independent of map rows and only a key's
                # last change in the batch counts, so they are coalesced per key and
                # written at the end: one multi-row upsert, one multi-row delete.
                lww: list[object] = []
                meta: dict[tuple[str, str], bytes | None] = {}
                map_name: str | None = None
                map_id = 0
                for change, value in zip(changes, values, strict=True):
                    if change.__class__ is PutMeta:
                        meta[(change.namespace, change.key)] = value
                        continue
                    if change.__class__ is PutRecord:
                        if change.map_name != map_name:
                            found = self._map_id(conn, change, change.map_name, created)
                            assert found is not None  # a PutRecord creates its map
                            map_name, map_id = change.map_name, found[0]
                        record = change.record
                        ts = record.timestamp
                        lww += (map_id, change.key, value, ts.millis, ts.counter, ts.node_id)
                        lww.append(record.ttl_ms)
                        continue
                    _upsert(conn, _put_lww, lww, _LWW_COLUMNS)
                    self._apply(conn, change, value, created)
                    map_name = None  # it may have changed what `_map_id` finds
                _upsert(conn, _put_lww, lww, _LWW_COLUMNS)
                _write_meta(conn, meta)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._maps.update(created)

    def _values(self, changes: Sequence[Change]) -> list[bytes | None]:
        """`encoded_value` of each change. With no codecs configured, a plain LWW value is
        just its msgpack and a meta value its bytes: taken directly (in the writer thread,
        where every bit of Python work waits for the GIL); anything else, and any value
        msgpack refuses, goes through `encoded_value` (and its errors)."""
        codecs = self.codecs
        if codecs.names:
            return [encoded_value(change, codecs) for change in changes]
        encode = _MSGPACK.encode
        values: list[bytes | None] = []
        for change in changes:
            if change.__class__ is PutMeta:
                values.append(change.value)
                continue
            if change.__class__ is PutRecord:
                value = change.record.value
                if value is None:
                    values.append(None)
                    continue
                try:
                    values.append(encode(value))
                    continue
                except (TypeError, ValueError, OverflowError):
                    pass
            values.append(encoded_value(change, codecs))
        return values

    # --- re-encoding in place (`RecodableBackend`) ---------------------------------------

    async def count_values(self) -> int:
        return await self._call(self._count_values)

    def _count_values(self) -> int:
        conn = self._connection()
        with self._translated("counting values"):
            return int(
                conn.execute(
                    "SELECT (SELECT count(*) FROM lww_records WHERE value IS NOT NULL)"
                    " + (SELECT count(*) FROM or_records) + (SELECT count(*) FROM meta)"
                ).fetchone()[0]
            )

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        return await self._call(self._scan_values, after, limit)

    def _scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        """Map by map in name order, each read along its primary key from where the scan
        stopped, so every page costs its own size, whatever the table holds."""
        conn = self._connection()
        rank, name, key, tag = after.position() if after is not None else (0, "", "", "")
        found: list[StoredValue] = []
        with self._translated("scanning stored values"):
            for area_rank, area in enumerate(("lww", "ormap")):
                if area_rank < rank:
                    continue
                for map_name, (map_id, kind) in sorted(self._maps.items()):
                    if kind != area or (area_rank == rank and map_name < name):
                        continue
                    resume = area_rank == rank and map_name == name
                    found += self._scan_map(
                        conn, area, map_name, map_id, resume, key, tag, limit - len(found)
                    )
                    if len(found) >= limit:
                        return found
            where, params = (
                ("WHERE (namespace, key) > (?, ?)", [name, key]) if rank == 2 else ("", [])
            )
            rows = conn.execute(
                f"SELECT namespace, key, value FROM meta {where} ORDER BY namespace, key LIMIT ?",
                (*params, limit - len(found)),
            )
            found += [StoredValue(CodecContext("meta", ns, k), None, blob) for ns, k, blob in rows]
        return found

    @staticmethod
    def _scan_map(
        conn: sqlite3.Connection,
        area: Literal["lww", "ormap"],
        name: str,
        map_id: int,
        resume: bool,
        key: str,
        tag: str,
        limit: int,
    ) -> list[StoredValue]:
        if area == "lww":
            where, params = (" AND key > ?", [key]) if resume else ("", [])
            rows = conn.execute(
                f"SELECT key, NULL, value FROM lww_records WHERE map_id = ?{where}"
                " AND value IS NOT NULL ORDER BY key LIMIT ?",
                (map_id, *params, limit),
            )
        else:
            where, params = (" AND (key, tag) > (?, ?)", [key, tag]) if resume else ("", [])
            rows = conn.execute(
                f"SELECT key, tag, value FROM or_records WHERE map_id = ?{where}"
                " ORDER BY key, tag LIMIT ?",
                (map_id, *params, limit),
            )
        return [StoredValue(CodecContext(area, name, k), t, blob) for k, t, blob in rows]

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        return await self._call(self._replace_values, list(replacements))

    def _replace_values(self, replacements: list[tuple[StoredValue, bytes]]) -> int:
        conn = self._connection()
        replaced = 0
        with self._translated(f"replacing {len(replacements)} value(s)"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for old, new in replacements:
                    context = old.context
                    if context.area == "meta":
                        cursor = conn.execute(
                            "UPDATE meta SET value = ? WHERE namespace = ? AND key = ?"
                            " AND value = ?",
                            (new, context.name, context.key, old.data),
                        )
                    elif (found := self._maps.get(context.name)) is None:
                        continue
                    elif context.area == "lww":
                        cursor = conn.execute(
                            "UPDATE lww_records SET value = ? WHERE map_id = ? AND key = ?"
                            " AND value = ?",
                            (new, found[0], context.key, old.data),
                        )
                    else:
                        cursor = conn.execute(
                            "UPDATE or_records SET value = ? WHERE map_id = ? AND key = ?"
                            " AND tag = ? AND value = ?",
                            (new, found[0], context.key, old.tag, old.data),
                        )
                    replaced += cursor.rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return replaced

    def _map_id(
        self,
        conn: sqlite3.Connection,
        change: Change,
        name: str,
        created: dict[str, tuple[int, MapKind]],
    ) -> tuple[int, MapKind] | None:
        """The stored map `change` applies to, created if the change creates maps; `None`
        when it is not stored (the change is then a no-op)."""
        kind = kind_of(change)
        found = self._maps.get(name) or created.get(name)
        if found is not None:
            if kind is not None and found[1] != kind:
                raise kind_mismatch(name, found[1], change)
            return found
        if kind is None or not isinstance(change, CREATING_CHANGES):
            return None
        cursor = conn.execute("INSERT INTO maps (name, kind) VALUES (?, ?)", (name, kind))
        assert cursor.lastrowid is not None
        created[name] = (cursor.lastrowid, kind)
        return created[name]

    def _apply(
        self,
        conn: sqlite3.Connection,
        change: Change,
        value: bytes | None,
        created: dict[str, tuple[int, MapKind]],
    ) -> None:
        """One change to a map (meta rows are written by `_write_meta`)."""
        assert not isinstance(change, PutMeta)
        found = self._map_id(conn, change, change.map_name, created)
        if found is None:
            return
        map_id, kind = found
        if isinstance(change, PutRecord):
            conn.execute(_put_lww(1), _lww_row(map_id, change, value))
        elif isinstance(change, PruneRecord):
            conn.execute(
                "DELETE FROM lww_records WHERE map_id = ? AND key = ? AND value IS NULL"
                " AND (millis, counter, node_id) < (?, ?, ?)",
                (map_id, change.key, *_columns(change.older_than)),
            )
        elif isinstance(change, AddORRecord):
            record = change.record
            conn.execute(
                "INSERT INTO or_records SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8"
                " WHERE NOT EXISTS (SELECT 1 FROM or_tombstones WHERE map_id = ?1 AND tag = ?3)"
                " ON CONFLICT (map_id, key, tag) DO NOTHING",
                (map_id, change.key, record.tag, value, *_columns(record.timestamp), record.ttl_ms),
            )
        elif isinstance(change, RemoveORTag):
            holders = sorted(
                key
                for (key,) in conn.execute(
                    "DELETE FROM or_records WHERE map_id = ? AND tag = ? RETURNING key",
                    (map_id, change.tag),
                ).fetchall()
            )
            held_by = change.key if change.key is not None else next(iter(holders), None)
            conn.execute(
                "INSERT INTO or_tombstones VALUES (?, ?, ?) ON CONFLICT (map_id, tag)"
                " DO UPDATE SET key = coalesce(or_tombstones.key, excluded.key)",
                (map_id, change.tag, held_by),
            )
        elif isinstance(change, PruneORTag):
            conn.execute(
                "DELETE FROM or_tombstones WHERE map_id = ? AND tag = ?", (map_id, change.tag)
            )
        elif kind == "lww":  # DeleteKey
            conn.execute(
                "DELETE FROM lww_records WHERE map_id = ? AND key = ?", (map_id, change.key)
            )
        else:
            conn.execute(
                "DELETE FROM or_records WHERE map_id = ? AND key = ?", (map_id, change.key)
            )
            conn.execute(
                "DELETE FROM or_tombstones WHERE map_id = ? AND key = ?", (map_id, change.key)
            )


def _upsert(
    conn: sqlite3.Connection, statement: Callable[[int], str], params: list[object], width: int
) -> None:
    """Run `statement` over the rows whose parameters `params` holds (`width` each, flat),
    in order, as few statements as SQLite's parameter limit allows (at most
    `_ROWS_PER_STATEMENT` rows each), and clear them."""
    if not params:
        return
    rows = len(params) // width
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    per_statement = max(1, min(_ROWS_PER_STATEMENT, limit))
    for start in range(0, rows, per_statement):
        size = min(per_statement, rows - start)
        chunk = params[start * width : (start + size) * width]
        if size > _PAD_STEP:
            # Round up to a multiple of `_PAD_STEP` by repeating the last row (a no-op the
            # second time: an upsert of what the row just stored, or a delete of what is
            # gone), so a few dozen statement shapes serve every batch size from the
            # connection's statement cache instead of compiling one per transaction.
            padded = min(-(-size // _PAD_STEP) * _PAD_STEP, per_statement)
            chunk += chunk[-width:] * (padded - size)
            size = padded
        conn.execute(statement(size), chunk)
    params.clear()


def _write_meta(conn: sqlite3.Connection, meta: dict[tuple[str, str], bytes | None]) -> None:
    """Store each meta key's value (delete the key for `None`), in multi-row statements: the
    sqlite3 module releases and retakes the GIL around every prepare and step, and retaking
    it waits while the event loop runs, so fewer statements commit faster."""
    puts: list[object] = []
    gone: list[object] = []
    for (namespace, key), value in meta.items():
        if value is None:
            gone += (namespace, key)
        else:
            puts += (namespace, key, value)
    _upsert(conn, _put_meta, puts, _META_COLUMNS)
    _upsert(conn, _delete_meta, gone, 2)  # a repeated last key is deleted twice: harmless


_LWW_COLUMNS: Final = 7
_META_COLUMNS: Final = 3
_ROWS_PER_STATEMENT: Final = 1000
"""Rows per multi-row upsert at most (the writer's default transaction size)."""

_PAD_STEP: Final = 16
"""Multi-row upserts of more rows than this have a multiple of it (see `_upsert`)."""

_STATEMENT_CACHE: Final = 256
"""Compiled statements kept per connection: every upsert shape of both tables, and more."""


@functools.lru_cache(maxsize=_STATEMENT_CACHE)
def _put_lww(rows: int) -> str:
    """Upsert `rows` LWW records, in order, each unless the stored one is newer."""
    return (
        "INSERT INTO lww_records VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
        + " ON CONFLICT (map_id, key) DO UPDATE SET value = excluded.value,"
        " millis = excluded.millis, counter = excluded.counter,"
        " node_id = excluded.node_id, ttl_ms = excluded.ttl_ms"
        " WHERE (excluded.millis, excluded.counter, excluded.node_id)"
        " > (lww_records.millis, lww_records.counter, lww_records.node_id)"
    )


@functools.lru_cache(maxsize=_STATEMENT_CACHE)
def _delete_meta(rows: int) -> str:
    """Delete `rows` meta keys."""
    return (
        "DELETE FROM meta WHERE (namespace, key) IN (VALUES " + ", ".join(["(?, ?)"] * rows) + ")"
    )


@functools.lru_cache(maxsize=_STATEMENT_CACHE)
def _put_meta(rows: int) -> str:
    """Upsert `rows` meta rows, in order."""
    return (
        "INSERT INTO meta VALUES "
        + ", ".join(["(?, ?, ?)"] * rows)
        + " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value"
    )


def _lww_row(map_id: int, change: PutRecord, value: bytes | None) -> tuple[object, ...]:
    record = change.record
    ts = record.timestamp
    return (map_id, change.key, value, ts.millis, ts.counter, ts.node_id, record.ttl_ms)


def _columns(ts: Timestamp) -> tuple[int, int, str]:
    """A timestamp as its three columns, in the order they compare."""
    return ts.millis, ts.counter, ts.node_id


def open_sqlite(config: BackendConfig) -> StorageBackend:
    """The `sqlite` backend factory: `<data_dir>/<file>` with the configured codecs."""
    options = config.options_as(SQLiteOptions, "sqlite")
    return SQLiteBackend(
        config.data_dir / options.file, codecs=config.codecs, synchronous=options.synchronous
    )


@hookimpl
def register_storage(register: Register[BackendFactory]) -> None:
    """Register the built-in `sqlite` backend."""
    register("sqlite", open_sqlite)
