"""What the PostgreSQL backend adds to the contract: its rows, migrations, two servers on
one database, the plugin and its configuration, and an unreachable database."""

from __future__ import annotations

import socket

import anyio
import asyncpg
import pytest

import topgun_postgres.plugin
from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.server.config import ConfigError, config_sections, load_config
from topgun.storage import (
    AddORRecord,
    LWWSnapshot,
    PutRecord,
    StorageConfigError,
    StorageCorruptError,
    StorageOpenError,
    open_storage,
)
from topgun_postgres import SCHEMA_VERSION, PostgresBackend, PostgresConfig

pytestmark = pytest.mark.anyio


def ts(millis: int, counter: int = 0, node: str = "n") -> Timestamp:
    return Timestamp(millis, counter, node)


async def test_records_are_rows_not_blobs(pg_config: PostgresConfig) -> None:
    backend = PostgresBackend(pg_config)
    await backend.initialize()
    tag = str(ts(3))
    await backend.store_batch(
        [
            PutRecord("m", "a", LWWRecord("x", ts(1), ttl_ms=500)),
            PutRecord("m", "b", LWWRecord("y", ts(2))),
            AddORRecord("o", "k", ORMapRecord("v", ts(3), tag)),
            AddORRecord("o", "k", ORMapRecord("w", ts(4), str(ts(4)))),
        ]
    )
    await backend.close()
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        s = pg_config.schema
        lww = await conn.fetch(f"SELECT key, millis, ttl_int FROM {s}.lww_records ORDER BY key")
        assert [(r["key"], r["millis"], r["ttl_int"]) for r in lww] == [
            (b"a", 1, 500),
            (b"b", 2, None),
        ]
        tags = await conn.fetch(f"SELECT key, tag FROM {s}.or_records ORDER BY tag")
        assert [(r["key"], r["tag"]) for r in tags] == [(b"k", tag.encode()), (b"k", b"4:0:n")]
        version = await conn.fetchval(
            f"SELECT value FROM {s}.settings WHERE name = 'schema_version'"
        )
        assert version == str(SCHEMA_VERSION).encode()
    finally:
        await conn.close()


async def test_two_servers_writing_one_database_converge(pg_config: PostgresConfig) -> None:
    """The LWW merge is in SQL: whatever order two writers commit in, the newest wins."""
    first, second = PostgresBackend(pg_config), PostgresBackend(pg_config)
    await first.initialize()
    await second.initialize()
    keys = [f"k{i}" for i in range(200)]

    async def write(backend: PostgresBackend, node: str, offset: int) -> None:
        for round_ in range(10):
            await backend.store_batch(
                [
                    PutRecord(
                        "m",
                        key,
                        LWWRecord(f"{node}{round_}", ts(100 + round_, (i + offset) % 3, node)),
                    )
                    for i, key in enumerate(keys)
                ]
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, first, "a", 0)
        tg.start_soon(write, second, "b", 1)
    snapshots = [await first.load_map("m"), await second.load_map("m")]
    await first.close()
    await second.close()
    assert snapshots[0] == snapshots[1]
    assert isinstance(snapshots[0], LWWSnapshot)
    for i, key in enumerate(keys):
        a, b = ts(109, i % 3, "a"), ts(109, (i + 1) % 3, "b")
        newest = max(a, b)
        assert snapshots[0].records[key].timestamp == newest


async def test_a_newer_schema_version_is_refused(pg_config: PostgresConfig) -> None:
    backend = PostgresBackend(pg_config)
    await backend.initialize()
    await backend.close()
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        await conn.execute(
            f"UPDATE {pg_config.schema}.settings SET value = '99' WHERE name = 'schema_version'"
        )
    finally:
        await conn.close()
    with pytest.raises(StorageCorruptError, match=r"schema version 99.*upgrade topgun"):
        await PostgresBackend(pg_config).initialize()


async def test_a_schema_of_another_application_is_refused(pg_config: PostgresConfig) -> None:
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {pg_config.schema}")
        await conn.execute(f"CREATE TABLE {pg_config.schema}.users (id int)")
    finally:
        await conn.close()
    with pytest.raises(StorageCorruptError, match="another application"):
        await PostgresBackend(pg_config).initialize()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_database_fails_start_up_after_retrying() -> None:
    config = PostgresConfig(
        dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/test", retry_for_s=0.3
    )
    backend = PostgresBackend(config)
    with pytest.raises(StorageOpenError, match=r"PostgreSQL at .*retried for 0.3 s"):
        await backend.initialize()
    assert not backend.status().available
    assert backend.status().retries > 0


async def test_the_plugin_registers_the_backend_and_its_section(
    pg_config: PostgresConfig,
) -> None:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_postgres.plugin, name="postgres")
    sections = config_sections(pm)
    assert sections["postgres"] is PostgresConfig
    config = load_config(
        f'[storage]\nbackend = "postgres"\n[postgres]\nschema = "{pg_config.schema}"\n',
        environ={"TOPGUN_POSTGRES_DSN": pg_config.dsn},
        sections=sections,
    )
    assert config.section("postgres") == PostgresConfig(dsn=pg_config.dsn, schema=pg_config.schema)
    backend = open_storage(pm, data_dir=".", backend="postgres", sections=config.sections)
    assert isinstance(backend, PostgresBackend)
    await backend.initialize()
    assert await backend.list_maps() == []
    await backend.close()
    with pytest.raises(StorageConfigError, match=r"configure it in the \[postgres\] section"):
        open_storage(pm, data_dir=".", backend="postgres", options={"dsn": "x"})
    with pytest.raises(ConfigError, match="schema"):
        load_config('[postgres]\nschema = "Robert; DROP TABLE"\n', sections=sections)
    with pytest.raises(ConfigError, match="max_connections"):
        load_config("[postgres]\nmax_connections = 0\n", sections=sections)


async def test_a_bad_dsn_is_a_config_error() -> None:
    with pytest.raises(StorageConfigError, match=r"\[postgres\] dsn"):
        await PostgresBackend(PostgresConfig(dsn="mysql://nowhere")).initialize()
