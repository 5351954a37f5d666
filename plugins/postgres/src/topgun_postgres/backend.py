"""The PostgreSQL backend: the storage contract in one schema of a PostgreSQL database.

One row per (map, key) for LWW records and one per (map, key, tag) for OR-Map records,
never whole-key blobs. The LWW merge happens in SQL: an upsert that replaces a row only
when its timestamp is older, so several servers writing the same database converge on
the newest record. Names, keys, tags and node ids are stored as their UTF-8 bytes
(`bytea`): PostgreSQL text cannot hold NUL, and bytes compare in code-point order, as
Python strings do. TTLs keep their type (an integer and a float column). Runs of LWW
puts, OR adds and meta upserts go to the database as one multi-row statement each.

It is a `RecodableBackend` too: stored value bytes can be scanned and re-encoded in place
(what key rotation of an encrypting codec needs).

Every call runs on a connection of an asyncpg pool. A lost connection (refused, reset,
the server restarting) is retried with exponential backoff for `retry_for_s` seconds
before the call fails with `StorageUnavailableError`; meanwhile `status()` reports the
backend unavailable, which the server shows in `/ready` and `/metrics`. Changes are
idempotent, so a batch whose commit was cut off is simply applied again.

The schema is versioned (`settings.schema_version`) and migrated on `initialize()` under
an advisory lock, so servers starting together migrate it once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

import anyio
import asyncpg
import msgspec

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.server.config import Secret
from topgun.storage import (
    AddORRecord,
    Change,
    CodecContext,
    CodecPipeline,
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
    StorageClosedError,
    StorageConfigError,
    StorageCorruptError,
    StorageError,
    StorageOpenError,
    StorageStatus,
    StorageUnavailableError,
    StoredValue,
    check_batch,
    check_page_request,
)
from topgun.storage.contract import CREATING_CHANGES, encoded_value, kind_mismatch, kind_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
"""The schema version this topgun writes (`settings.schema_version`)."""

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # _MIGRATIONS[v] takes a schema from version v to v + 1 ({s} is the quoted schema).
    (  # 0 -> 1: the first schema.
        "CREATE TABLE {s}.maps (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " name bytea NOT NULL UNIQUE, kind text NOT NULL CHECK (kind IN ('lww', 'ormap')))",
        "CREATE TABLE {s}.lww_records (map_id integer NOT NULL, key bytea NOT NULL,"
        " value bytea, millis bigint NOT NULL, counter bigint NOT NULL,"
        " node_id bytea NOT NULL, ttl_int numeric, ttl_float double precision,"
        " PRIMARY KEY (map_id, key))",
        "CREATE TABLE {s}.or_records (map_id integer NOT NULL, key bytea NOT NULL,"
        " tag bytea NOT NULL, value bytea NOT NULL, millis bigint NOT NULL,"
        " counter bigint NOT NULL, node_id bytea NOT NULL, ttl_int numeric,"
        " ttl_float double precision, PRIMARY KEY (map_id, key, tag))",
        "CREATE INDEX or_records_by_tag ON {s}.or_records (map_id, tag)",
        "CREATE TABLE {s}.or_tombstones (map_id integer NOT NULL, tag bytea NOT NULL,"
        " key bytea, PRIMARY KEY (map_id, tag))",
        "CREATE INDEX or_tombstones_by_key ON {s}.or_tombstones (map_id, key)",
        "CREATE TABLE {s}.meta (namespace bytea NOT NULL, key bytea NOT NULL,"
        " value bytea NOT NULL, PRIMARY KEY (namespace, key))",
        # schema_version, and the codec list the values were written with ('codecs').
        "CREATE TABLE {s}.settings (name text PRIMARY KEY, value bytea NOT NULL)",
    ),
)

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection was closed under the call
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    TimeoutError,
)
"""Errors after which the same call may succeed: retried with backoff."""

_MSGPACK = msgspec.msgpack.Encoder()
_CODEC_LIST = msgspec.msgpack.Decoder(list[str])

Positive = Annotated[int, msgspec.Meta(ge=1)]


class PostgresConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[postgres]` section of the server configuration."""

    dsn: str = "postgresql://127.0.0.1:5432/topgun"
    """libpq connection URI (`postgresql://user@host:port/database`)."""
    password: Secret | None = None
    """The password, when it is not in `dsn` (or set `PGPASSWORD`); never shown."""
    schema: str = "topgun"
    """The schema holding topgun's tables (created when missing)."""
    min_connections: Annotated[int, msgspec.Meta(ge=0)] = 1
    max_connections: Positive = 4
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """How long one connection attempt may take."""
    retry_for_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """How long a call retries a lost connection before it fails."""

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise ValueError(
                f"schema {self.schema!r} must be a lower-case identifier (letters, digits, _)"
            )
        if self.min_connections > self.max_connections:
            raise ValueError(
                f"min_connections ({self.min_connections}) is more than max_connections "
                f"({self.max_connections})"
            )


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _ttl(ttl_ms: float | None) -> tuple[int | None, float | None]:
    if ttl_ms is None:
        return None, None
    if isinstance(ttl_ms, int):
        return ttl_ms, None
    return None, ttl_ms


def _ttl_back(ttl_int: Any, ttl_float: float | None) -> float | None:
    return int(ttl_int) if ttl_int is not None else ttl_float


class PostgresBackend:
    """The storage contract on a PostgreSQL schema (see the module docstring)."""

    def __init__(
        self,
        config: PostgresConfig | None = None,
        *,
        codecs: CodecPipeline | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.config = config if config is not None else PostgresConfig()
        self.codecs = codecs if codecs is not None else CodecPipeline()
        self.retries = 0
        """Failed attempts retried since the backend was made."""
        self._sleep = sleep
        self._pool: asyncpg.Pool | None = None
        self._closed = False
        self._problem: str | None = None
        self._maps: dict[str, tuple[int, MapKind]] = {}
        self._s = f'"{self.config.schema}"'

    def __repr__(self) -> str:
        return f"PostgresBackend(schema={self.config.schema!r}, codecs={self.codecs!r})"

    @property
    def where(self) -> str:
        """The database and schema, for messages (no password)."""
        dsn = re.sub(r"//[^@/]*@", "//", self.config.dsn)
        return f"{dsn} schema {self.config.schema}"

    def status(self) -> StorageStatus:
        return StorageStatus(
            available=self._problem is None, problem=self._problem, retries=self.retries
        )

    def _checked_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            state = "closed" if self._closed else "not initialized"
            raise StorageClosedError(f"the PostgreSQL storage backend on {self.where} is {state}")
        return self._pool

    async def _retrying(self, doing: str, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`call(connection)` on a pooled connection, retried while the error is transient
        (for `retry_for_s` seconds, with backoff 50 ms doubling to 2 s)."""
        deadline = time.monotonic() + self.config.retry_for_s
        delay = 0.05
        while True:
            pool = self._checked_pool()
            try:
                async with pool.acquire(timeout=self.config.connect_timeout_s) as conn:
                    result = await call(conn)
            except asyncpg.ClientConfigurationError as exc:
                raise StorageConfigError(f"[postgres] dsn {self.where}: {exc}") from exc
            except _TRANSIENT as exc:
                delay = await self._failed(doing, exc, deadline, delay)
                continue
            except asyncpg.PostgresError as exc:
                raise StorageError(f"PostgreSQL at {self.where}: {doing} failed: {exc}") from exc
            self._recovered()
            return result

    async def _failed(self, doing: str, exc: BaseException, deadline: float, delay: float) -> float:
        """Record a transient failure; raise `StorageUnavailableError` when the next try
        would be past `deadline`, else wait `delay`. Returns the next delay."""
        problem = f"PostgreSQL at {self.where}: {doing}: {type(exc).__name__}: {exc}"
        if self._problem is None:
            logger.warning("%s; retrying for up to %.0f s", problem, self.config.retry_for_s)
        self._problem = problem
        if time.monotonic() + delay > deadline:
            raise StorageUnavailableError(
                f"{problem} (retried for {self.config.retry_for_s:g} s)"
            ) from exc
        self.retries += 1
        await self._sleep(delay)
        return min(delay * 2, 2.0)

    def _recovered(self) -> None:
        if self._problem is not None:
            logger.warning("PostgreSQL at %s: reachable again", self.where)
            self._problem = None

    # --- lifecycle ---------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._closed:
            raise StorageClosedError(
                f"the PostgreSQL backend on {self.where} is closed; make a new one"
            )
        if self._pool is not None:
            return
        try:
            self._pool = await self._open_pool()
            await self._retrying("migrating the schema", self._migrate)
        except StorageUnavailableError as exc:
            await self._drop_pool()
            raise StorageOpenError(str(exc)) from exc.__cause__
        except BaseException:
            await self._drop_pool()
            raise

    async def _open_pool(self) -> asyncpg.Pool:
        """A pool with `min_connections` open, retried like any call."""
        config = self.config
        deadline = time.monotonic() + config.retry_for_s
        delay = 0.05
        while True:
            try:
                pool = await asyncpg.create_pool(
                    config.dsn,
                    password=config.password.reveal() if config.password is not None else None,
                    min_size=config.min_connections,
                    max_size=config.max_connections,
                    timeout=config.connect_timeout_s,
                )
            except (ValueError, asyncpg.ClientConfigurationError) as exc:
                raise StorageConfigError(f"[postgres] dsn {self.where}: {exc}") from exc
            except _TRANSIENT as exc:
                delay = await self._failed("connecting", exc, deadline, delay)
                continue
            self._recovered()
            return pool

    async def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        s = self._s
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"topgun:{s}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            has_settings = await conn.fetchval("SELECT to_regclass($1)", f"{s}.settings")
            version = 0
            if has_settings is None:
                tables = await conn.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = $1", self.config.schema
                )
                if tables:
                    raise StorageCorruptError(
                        f"schema {self.config.schema!r} of {self.where} holds tables of another "
                        "application (no topgun settings table); configure another schema"
                    )
            else:
                stored = await conn.fetchval(
                    f"SELECT value FROM {s}.settings WHERE name = 'schema_version'"
                )
                version = int(stored) if stored is not None else 0
            if version > SCHEMA_VERSION:
                raise StorageCorruptError(
                    f"{self.where} has schema version {version}, written by a newer topgun "
                    f"(this one knows up to {SCHEMA_VERSION}); upgrade topgun to use it"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    await conn.execute(statement.format(s=s))
            if version != SCHEMA_VERSION:
                await conn.execute(
                    f"INSERT INTO {s}.settings VALUES ('schema_version', $1)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    str(SCHEMA_VERSION).encode(),
                )
            names = list(self.codecs.names)
            stored_codecs = await conn.fetchval(
                f"SELECT value FROM {s}.settings WHERE name = 'codecs'"
            )
            if stored_codecs is None:
                await conn.execute(
                    f"INSERT INTO {s}.settings VALUES ('codecs', $1)", _MSGPACK.encode(names)
                )
            elif (listed := _CODEC_LIST.decode(stored_codecs)) != names:
                raise StorageConfigError(
                    f"{self.where} was written with codecs {listed}, but the configuration "
                    f"lists {names}; values cannot be read with other codecs"
                )
            rows = await conn.fetch(f"SELECT id, name, kind FROM {s}.maps")
        self._maps = {_s(row["name"]): (row["id"], row["kind"]) for row in rows}

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(10) as scope:
                await pool.close()
            if scope.cancelled_caught:
                pool.terminate()

    # --- reads -------------------------------------------------------------------------

    async def list_maps(self) -> list[MapInfo]:
        async def fetch(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(f"SELECT name, kind FROM {self._s}.maps"))

        rows = await self._retrying("listing maps", fetch)
        return [MapInfo(name, kind) for name, kind in sorted((_s(n), k) for n, k in rows)]

    async def load_map(self, name: str) -> MapSnapshot | None:
        return await self._load(name, None)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return await self._load(name, sorted(set(keys)))

    async def _load(self, name: str, keys: list[str] | None) -> MapSnapshot | None:
        s = self._s
        key_filter = "" if keys is None else " AND key = ANY($2::bytea[])"
        args: list[Any] = [_b(name)] if keys is None else [_b(name), [_b(k) for k in keys]]

        async def fetch(conn: asyncpg.Connection) -> MapSnapshot | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                found = await conn.fetchrow(
                    f"SELECT id, kind FROM {s}.maps WHERE name = $1", _b(name)
                )
                if found is None:
                    return None
                map_args = [found["id"], *args[1:]]
                if found["kind"] == "lww":
                    rows = await conn.fetch(
                        "SELECT key, value, millis, counter, node_id, ttl_int, ttl_float"
                        f" FROM {s}.lww_records WHERE map_id = $1{key_filter} ORDER BY key",
                        *map_args,
                    )
                    return self._lww_snapshot(name, rows)
                rows = await conn.fetch(
                    "SELECT key, tag, value, millis, counter, node_id, ttl_int, ttl_float"
                    f" FROM {s}.or_records WHERE map_id = $1{key_filter} ORDER BY key, tag",
                    *map_args,
                )
                tombstones = await conn.fetch(
                    f"SELECT tag, key FROM {s}.or_tombstones WHERE map_id = $1{key_filter}"
                    " ORDER BY tag",
                    *map_args,
                )
                return self._or_snapshot(name, rows, tombstones)

        return await self._retrying(f"loading map {name!r}", fetch)

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        """Keys in bytes order (UTF-8 bytes order is code-point order), along the primary
        key, in one read-only transaction."""
        check_page_request(after, limit)
        s = self._s
        where, after_args = ("", []) if after is None else (" AND key > $3", [_b(after)])

        async def fetch(conn: asyncpg.Connection) -> MapPage | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                found = await conn.fetchrow(
                    f"SELECT id, kind FROM {s}.maps WHERE name = $1", _b(name)
                )
                if found is None:
                    return None
                map_id, kind = found["id"], found["kind"]
                table = "lww_records" if kind == "lww" else "or_records"
                rows = await conn.fetch(
                    f"SELECT DISTINCT key FROM {s}.{table} WHERE map_id = $1{where}"
                    " ORDER BY key LIMIT $2",
                    map_id,
                    limit + 1,
                    *after_args,
                )
                keys = [row["key"] for row in rows[:limit]]
                next_after = _s(keys[-1]) if len(rows) > limit else None
                snapshot: MapSnapshot
                if kind == "lww":
                    records = await conn.fetch(
                        "SELECT key, value, millis, counter, node_id, ttl_int, ttl_float"
                        f" FROM {s}.lww_records WHERE map_id = $1 AND key = ANY($2::bytea[])"
                        " ORDER BY key",
                        map_id,
                        keys,
                    )
                    snapshot = self._lww_snapshot(name, records)
                else:
                    records = await conn.fetch(
                        "SELECT key, tag, value, millis, counter, node_id, ttl_int, ttl_float"
                        f" FROM {s}.or_records WHERE map_id = $1 AND key = ANY($2::bytea[])"
                        " ORDER BY key, tag",
                        map_id,
                        keys,
                    )
                    tombstones = (
                        await conn.fetch(
                            f"SELECT tag, key FROM {s}.or_tombstones WHERE map_id = $1"
                            " ORDER BY tag",
                            map_id,
                        )
                        if after is None
                        else []
                    )
                    snapshot = self._or_snapshot(name, records, tombstones)
                return MapPage(snapshot, next_after)

        return await self._retrying(f"loading a page of map {name!r}", fetch)

    def _lww_snapshot(self, name: str, rows: list[Any]) -> LWWSnapshot:
        unpack = self.codecs.unpack
        records: dict[str, LWWRecord] = {}
        for key_bytes, blob, millis, counter, node_id, ttl_int, ttl_float in rows:
            key = _s(key_bytes)
            value = None if blob is None else unpack(blob, CodecContext("lww", name, key))
            records[key] = LWWRecord(
                value, Timestamp(millis, counter, _s(node_id)), _ttl_back(ttl_int, ttl_float)
            )
        return LWWSnapshot(name, records)

    def _or_snapshot(self, name: str, rows: list[Any], tombstones: list[Any]) -> ORSnapshot:
        unpack = self.codecs.unpack
        records: dict[str, list[ORMapRecord]] = {}
        for key_bytes, tag, blob, millis, counter, node_id, ttl_int, ttl_float in rows:
            key = _s(key_bytes)
            records.setdefault(key, []).append(
                ORMapRecord(
                    unpack(blob, CodecContext("ormap", name, key)),
                    Timestamp(millis, counter, _s(node_id)),
                    _s(tag),
                    _ttl_back(ttl_int, ttl_float),
                )
            )
        return ORSnapshot(
            name,
            records,
            {_s(tag): None if key is None else _s(key) for tag, key in tombstones},
        )

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        async def fetch(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT key, value FROM {self._s}.meta WHERE namespace = $1 ORDER BY key",
                    _b(namespace),
                )
            )

        rows = await self._retrying(f"loading meta namespace {namespace!r}", fetch)
        result: dict[str, bytes] = {}
        for key_bytes, blob in rows:
            key = _s(key_bytes)
            result[key] = self.codecs.decode(blob, CodecContext("meta", namespace, key))
        return result

    # --- re-encoding in place (RecodableBackend) ----------------------------------------

    async def count_values(self) -> int:
        s = self._s

        async def count(conn: asyncpg.Connection) -> int:
            return int(
                await conn.fetchval(
                    f"SELECT (SELECT count(*) FROM {s}.lww_records WHERE value IS NOT NULL)"
                    f" + (SELECT count(*) FROM {s}.or_records) + (SELECT count(*) FROM {s}.meta)"
                )
            )

        return await self._retrying("counting values", count)

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        """Map by map in name order, each read along its primary key from where the scan
        stopped (bytes order is code-point order, the order of `StoredValue.position`)."""
        s = self._s
        rank, name, key, tag = after.position() if after is not None else (0, "", "", "")

        async def scan(conn: asyncpg.Connection) -> list[StoredValue]:
            found: list[StoredValue] = []
            maps = sorted(
                (_s(row["name"]), row["id"], row["kind"])
                for row in await conn.fetch(f"SELECT id, name, kind FROM {s}.maps")
            )
            areas: tuple[Literal["lww", "ormap"], ...] = ("lww", "ormap")
            for area_rank, area in enumerate(areas):
                if area_rank < rank:
                    continue
                for map_name, map_id, kind in maps:
                    if kind != area or (area_rank == rank and map_name < name):
                        continue
                    resume = area_rank == rank and map_name == name
                    if area == "lww":
                        where = " AND key > $3" if resume else ""
                        rows = await conn.fetch(
                            f"SELECT key, NULL::bytea AS tag, value FROM {s}.lww_records"
                            f" WHERE map_id = $1 AND value IS NOT NULL{where}"
                            " ORDER BY key LIMIT $2",
                            map_id,
                            limit - len(found),
                            *([_b(key)] if resume else []),
                        )
                    else:
                        where = " AND (key, tag) > ($3, $4)" if resume else ""
                        rows = await conn.fetch(
                            f"SELECT key, tag, value FROM {s}.or_records WHERE map_id = $1{where}"
                            " ORDER BY key, tag LIMIT $2",
                            map_id,
                            limit - len(found),
                            *([_b(key), _b(tag)] if resume else []),
                        )
                    found += [
                        StoredValue(
                            CodecContext(area, map_name, _s(k)), None if t is None else _s(t), v
                        )
                        for k, t, v in rows
                    ]
                    if len(found) >= limit:
                        return found
            where = " WHERE (namespace, key) > ($2, $3)" if rank == 2 else ""
            rows = await conn.fetch(
                f"SELECT namespace, key, value FROM {s}.meta{where}"
                " ORDER BY namespace, key LIMIT $1",
                limit - len(found),
                *([_b(name), _b(key)] if rank == 2 else []),
            )
            found += [
                StoredValue(CodecContext("meta", _s(ns), _s(k)), None, v) for ns, k, v in rows
            ]
            return found

        return await self._retrying("scanning stored values", scan)

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        """Compare and swap each value's bytes, in one transaction."""
        s = self._s
        pairs = list(replacements)

        async def replace(conn: asyncpg.Connection) -> int:
            replaced = 0
            async with conn.transaction():
                ids = {
                    _s(row["name"]): row["id"]
                    for row in await conn.fetch(f"SELECT id, name FROM {s}.maps")
                }
                for old, new in pairs:
                    context = old.context
                    if context.area == "meta":
                        status = await conn.execute(
                            f"UPDATE {s}.meta SET value = $1 WHERE namespace = $2 AND key = $3"
                            " AND value = $4",
                            new,
                            _b(context.name),
                            _b(context.key),
                            old.data,
                        )
                    elif (map_id := ids.get(context.name)) is None:
                        continue
                    elif context.area == "lww":
                        status = await conn.execute(
                            f"UPDATE {s}.lww_records SET value = $1 WHERE map_id = $2"
                            " AND key = $3 AND value = $4",
                            new,
                            map_id,
                            _b(context.key),
                            old.data,
                        )
                    else:
                        status = await conn.execute(
                            f"UPDATE {s}.or_records SET value = $1 WHERE map_id = $2"
                            " AND key = $3 AND tag = $4 AND value = $5",
                            new,
                            map_id,
                            _b(context.key),
                            _b(old.tag or ""),
                            old.data,
                        )
                    replaced += int(status.rsplit(" ", 1)[1])
            return replaced

        return await self._retrying(f"replacing {len(pairs)} value(s)", replace)

    # --- writes ------------------------------------------------------------------------

    async def store_batch(self, changes: Sequence[Change]) -> None:
        self._checked_pool()
        check_batch(changes)
        values = [encoded_value(change, self.codecs) for change in changes]
        created: dict[str, tuple[int, MapKind]] = {}

        async def write(conn: asyncpg.Connection) -> None:
            created.clear()
            async with conn.transaction():
                await _Batch(self, conn, created).apply(changes, values)

        await self._retrying(f"writing a batch of {len(changes)} change(s)", write)
        self._maps.update(created)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.store_batch([DeleteKey(name, key) for key in keys])


class _Batch:
    """One batch inside one transaction: runs of rows, then each other change."""

    def __init__(
        self,
        backend: PostgresBackend,
        conn: asyncpg.Connection,
        created: dict[str, tuple[int, MapKind]],
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.s = backend._s
        self.created = created
        self.lww: dict[tuple[int, bytes], tuple[Any, ...]] = {}
        self.or_adds: list[tuple[Any, ...]] = []
        self.meta: dict[tuple[bytes, bytes], bytes | None] = {}

    async def apply(self, changes: Sequence[Change], values: list[bytes | None]) -> None:
        for change, value in zip(changes, values, strict=True):
            if isinstance(change, PutMeta):
                self.meta[_b(change.namespace), _b(change.key)] = value
                continue
            found = await self.map_id(change)
            if found is None:
                continue
            map_id = found[0]
            if isinstance(change, PutRecord):
                record = change.record
                ts = record.timestamp
                row = (map_id, _b(change.key), value, ts.millis, ts.counter, _b(ts.node_id))
                slot = (map_id, row[1])
                current = self.lww.get(slot)
                # One statement cannot upsert a row twice: keep the newest of a run.
                if current is None or (ts.millis, ts.counter, row[5]) > current[3:6]:
                    self.lww[slot] = (*row, *_ttl(record.ttl_ms))
                continue
            if isinstance(change, AddORRecord):
                added = change.record
                at = added.timestamp
                self.or_adds.append(
                    (
                        map_id,
                        _b(change.key),
                        _b(added.tag),
                        value,
                        at.millis,
                        at.counter,
                        _b(at.node_id),
                        *_ttl(added.ttl_ms),
                    )
                )
                continue
            await self.flush()
            await self.single(change, map_id, found[1])
        await self.flush()

    async def map_id(self, change: Change) -> tuple[int, MapKind] | None:
        """The map `change` applies to (created if the change creates maps); `None` when
        it is not stored (the change is then a no-op)."""
        assert not isinstance(change, PutMeta)
        name = change.map_name
        kind = kind_of(change)
        found = self.backend._maps.get(name) or self.created.get(name)
        if found is None:
            row = await self.conn.fetchrow(
                f"SELECT id, kind FROM {self.s}.maps WHERE name = $1", _b(name)
            )
            if row is None and kind is not None and isinstance(change, CREATING_CHANGES):
                row = await self.conn.fetchrow(
                    f"INSERT INTO {self.s}.maps (name, kind) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO NOTHING RETURNING id, kind",
                    _b(name),
                    kind,
                )
                if row is None:  # another server created it meanwhile
                    row = await self.conn.fetchrow(
                        f"SELECT id, kind FROM {self.s}.maps WHERE name = $1", _b(name)
                    )
            if row is None:
                return None
            found = self.created[name] = (row["id"], row["kind"])
        if kind is not None and found[1] != kind:
            raise kind_mismatch(name, found[1], change)
        return found

    async def flush(self) -> None:
        """Write the pending runs of rows, each as one statement (rows in key order, so
        concurrent servers lock rows in the same order)."""
        s, conn = self.s, self.conn
        if self.lww:
            rows = [self.lww[slot] for slot in sorted(self.lww)]
            self.lww = {}
            await conn.execute(
                f"INSERT INTO {s}.lww_records AS r"
                " SELECT * FROM unnest($1::integer[], $2::bytea[], $3::bytea[], $4::bigint[],"
                " $5::bigint[], $6::bytea[], $7::numeric[], $8::float8[])"
                " ON CONFLICT (map_id, key) DO UPDATE SET value = excluded.value,"
                " millis = excluded.millis, counter = excluded.counter,"
                " node_id = excluded.node_id, ttl_int = excluded.ttl_int,"
                " ttl_float = excluded.ttl_float"
                " WHERE (excluded.millis, excluded.counter, excluded.node_id)"
                " > (r.millis, r.counter, r.node_id)",
                *_columns(rows, 8),
            )
        if self.or_adds:
            rows = sorted(self.or_adds, key=lambda row: row[:3])
            self.or_adds = []
            await conn.execute(
                f"INSERT INTO {s}.or_records"
                " SELECT * FROM unnest($1::integer[], $2::bytea[], $3::bytea[], $4::bytea[],"
                " $5::bigint[], $6::bigint[], $7::bytea[], $8::numeric[], $9::float8[])"
                " AS u(map_id, key, tag, value, millis, counter, node_id, ttl_int, ttl_float)"
                f" WHERE NOT EXISTS (SELECT 1 FROM {s}.or_tombstones t"
                " WHERE t.map_id = u.map_id AND t.tag = u.tag)"
                " ON CONFLICT (map_id, key, tag) DO NOTHING",
                *_columns(rows, 9),
            )
        if self.meta:
            items = sorted(self.meta.items())
            self.meta = {}
            puts = [(ns, key, value) for (ns, key), value in items if value is not None]
            gone = [(ns, key) for (ns, key), value in items if value is None]
            if gone:
                await conn.execute(
                    f"DELETE FROM {s}.meta m USING unnest($1::bytea[], $2::bytea[]) AS u(ns, k)"
                    " WHERE m.namespace = u.ns AND m.key = u.k",
                    *_columns(gone, 2),
                )
            if puts:
                await conn.execute(
                    f"INSERT INTO {s}.meta SELECT * FROM unnest($1::bytea[], $2::bytea[],"
                    " $3::bytea[]) ON CONFLICT (namespace, key) DO UPDATE"
                    " SET value = excluded.value",
                    *_columns(puts, 3),
                )

    async def single(self, change: Change, map_id: int, kind: MapKind) -> None:
        s, conn = self.s, self.conn
        if isinstance(change, PruneRecord):
            at = change.older_than
            await conn.execute(
                f"DELETE FROM {s}.lww_records WHERE map_id = $1 AND key = $2 AND value IS NULL"
                " AND (millis, counter, node_id) < ($3, $4, $5)",
                map_id,
                _b(change.key),
                at.millis,
                at.counter,
                _b(at.node_id),
            )
        elif isinstance(change, RemoveORTag):
            tag = _b(change.tag)
            holders = sorted(
                row["key"]
                for row in await conn.fetch(
                    f"DELETE FROM {s}.or_records WHERE map_id = $1 AND tag = $2 RETURNING key",
                    map_id,
                    tag,
                )
            )
            held_by = _b(change.key) if change.key is not None else next(iter(holders), None)
            await conn.execute(
                f"INSERT INTO {s}.or_tombstones AS t VALUES ($1, $2, $3)"
                " ON CONFLICT (map_id, tag) DO UPDATE SET key = coalesce(t.key, excluded.key)",
                map_id,
                tag,
                held_by,
            )
        elif isinstance(change, PruneORTag):
            await conn.execute(
                f"DELETE FROM {s}.or_tombstones WHERE map_id = $1 AND tag = $2",
                map_id,
                _b(change.tag),
            )
        elif isinstance(change, DeleteKey):
            key = _b(change.key)
            if kind == "lww":
                await conn.execute(
                    f"DELETE FROM {s}.lww_records WHERE map_id = $1 AND key = $2", map_id, key
                )
            else:
                await conn.execute(
                    f"DELETE FROM {s}.or_records WHERE map_id = $1 AND key = $2", map_id, key
                )
                await conn.execute(
                    f"DELETE FROM {s}.or_tombstones WHERE map_id = $1 AND key = $2", map_id, key
                )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as `width` column arrays (for `unnest`)."""
    return [[row[i] for row in rows] for i in range(width)]
