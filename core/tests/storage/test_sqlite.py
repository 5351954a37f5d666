"""The SQLite backend: the conformance suite, plus files, pragmas, schema and errors."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import (
    SCHEMA_VERSION,
    BackendConfig,
    Change,
    CodecContext,
    CodecPipeline,
    DeleteKey,
    LWWSnapshot,
    MemoryBackend,
    PutMeta,
    PutRecord,
    SQLiteBackend,
    StorageConfigError,
    StorageCorruptError,
    StorageError,
    StorageOpenError,
)
from topgun.storage.conformance import BackendConformance, OpenBackend
from topgun.storage.sqlite import open_sqlite


class TestSQLiteBackend(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> OpenBackend:
        def open_backend(codecs: CodecPipeline | None = None) -> SQLiteBackend:
            return SQLiteBackend(tmp_path / "data" / "topgun.db", codecs=codecs)

        return open_backend


def put(key: str = "k", value: object = 1) -> PutRecord:
    return PutRecord("m", key, LWWRecord(value, Timestamp(1, 0, "n")))


def pragma(path: Path, name: str) -> object:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.anyio
async def test_the_file_is_in_wal_mode_with_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "topgun.db"
    backend = SQLiteBackend(path)
    await backend.initialize()
    await backend.store_batch([put()])
    assert (tmp_path / "topgun.db-wal").exists()
    await backend.close()
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "user_version") == SCHEMA_VERSION == 1


@pytest.mark.anyio
async def test_the_factory_places_the_file_in_the_data_directory(tmp_path: Path) -> None:
    backend = open_sqlite(
        BackendConfig(tmp_path / "new" / "dir", options={"file": "x.db", "synchronous": "normal"})
    )
    assert isinstance(backend, SQLiteBackend)
    assert (backend.path, backend.synchronous) == (tmp_path / "new" / "dir" / "x.db", "normal")
    await backend.initialize()
    await backend.close()
    assert backend.path.is_file()
    default = open_sqlite(BackendConfig(tmp_path))
    assert isinstance(default, SQLiteBackend)
    assert (default.path, default.synchronous) == (tmp_path / "topgun.db", "full")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"synchronous": "off"}, r"\$\.synchronous"),
        ({"fiel": "x.db"}, "unknown field `fiel`"),
        ({"file": 3}, r"\$\.file"),
    ],
)
def test_bad_options_name_the_option(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(StorageConfigError, match=message):
        open_sqlite(BackendConfig(tmp_path, options=options))


@pytest.mark.anyio
async def test_a_second_server_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = SQLiteBackend(tmp_path / "topgun.db")
    await first.initialize()
    second = SQLiteBackend(tmp_path / "topgun.db")
    with pytest.raises(StorageOpenError, match="in use by another process"):
        await second.initialize()
    await first.store_batch([put()])
    await first.close()
    await second.initialize()  # free again
    assert [m.name for m in await second.list_maps()] == ["m"]
    await second.close()


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "topgun.db"
    path.write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(StorageCorruptError, match=f"{path} is not a readable SQLite database"):
        await SQLiteBackend(path).initialize()


@pytest.mark.anyio
async def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topgun.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageCorruptError, match="another application"):
        await SQLiteBackend(path).initialize()


@pytest.mark.anyio
async def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topgun.db"
    backend = SQLiteBackend(path)
    await backend.initialize()
    await backend.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageCorruptError, match="written by a newer topgun"):
        await SQLiteBackend(path).initialize()


@pytest.mark.anyio
async def test_a_data_directory_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageOpenError, match=f"cannot create the data directory {blocker}"):
        await SQLiteBackend(blocker / "topgun.db").initialize()


@pytest.mark.anyio
async def test_a_database_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "topgun.db").mkdir()
    with pytest.raises(StorageOpenError, match="is not a file"):
        await SQLiteBackend(tmp_path / "topgun.db").initialize()


def test_synchronous_must_be_full_or_normal(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError, match="'off'"):
        SQLiteBackend(tmp_path / "x.db", synchronous="off")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_encoding_and_sqlite_work_run_off_the_event_loop(tmp_path: Path) -> None:
    threads: set[int] = set()

    class ThreadRecorder:
        def encode_for(self, data: bytes, context: CodecContext) -> bytes:
            threads.add(threading.get_ident())
            return data

        def decode_for(self, data: bytes, context: CodecContext) -> bytes:
            threads.add(threading.get_ident())
            return data

    backend = SQLiteBackend(tmp_path / "t.db", codecs=CodecPipeline([("rec", ThreadRecorder())]))
    await backend.initialize()
    await backend.store_batch([put(), PutMeta("ns", "k", b"v")])
    await backend.load_map("m")
    await backend.close()
    assert threads
    assert threading.get_ident() not in threads


@pytest.mark.anyio
async def test_concurrent_batches_are_serialized(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "t.db")
    await backend.initialize()
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(backend.store_batch, [put(f"k{i}", i)])
    snapshot = await backend.load_map("m")
    await backend.close()
    assert snapshot is not None
    assert len(snapshot.records) == 20


@pytest.mark.parametrize(
    ("code", "error_type", "message"),
    [
        (14, StorageOpenError, "cannot open .* for writing"),  # SQLITE_CANTOPEN
        (8 | (1 << 8), StorageOpenError, "cannot open .* for writing"),  # READONLY_RECOVERY
        (5, StorageOpenError, "in use by another process"),  # SQLITE_BUSY
        (11, StorageCorruptError, "not a readable SQLite database"),  # SQLITE_CORRUPT
        (13, StorageError, "writing failed"),  # SQLITE_FULL: disk full
    ],
)
def test_sqlite_errors_map_to_typed_errors_naming_the_file(
    tmp_path: Path, code: int, error_type: type[StorageError], message: str
) -> None:
    """Result codes that cannot be provoked portably (a read-only disk as root, a full
    disk) are mapped like the ones the other tests provoke for real."""
    path = tmp_path / "t.db"
    cause = sqlite3.OperationalError("the driver's message")
    cause.sqlite_errorcode = code  # type: ignore[attr-defined]
    error = SQLiteBackend(path)._error(cause, "writing")
    assert type(error) is error_type
    assert re.search(message, str(error))
    assert str(path) in str(error)
    assert "the driver's message" in str(error)


CRASHING_WRITER = """
import os, sys
import anyio
from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import PutRecord, SQLiteBackend, StorageWriter

async def main():
    backend = SQLiteBackend(sys.argv[1])
    await backend.initialize()
    async with StorageWriter(backend, max_batch=100) as writer:
        for i in range(1000):
            await writer.write([PutRecord("m", f"k{i}", LWWRecord(i, Timestamp(i, 0, "n")))])
        print("committed", flush=True)
        os._exit(3)  # die with the WAL not checkpointed and the connection open

anyio.run(main)
"""


@pytest.mark.anyio
async def test_committed_batches_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "topgun.db"
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (3, "committed\n"), result.stderr
    assert (tmp_path / "topgun.db-wal").exists()
    backend = SQLiteBackend(path)
    await backend.initialize()
    snapshot = await backend.load_map("m")
    await backend.close()
    assert snapshot is not None
    assert snapshot.records == {f"k{i}": LWWRecord(i, Timestamp(i, 0, "n")) for i in range(1000)}


@pytest.mark.anyio
async def test_large_batches_of_puts_and_meta_rows_apply_in_order(tmp_path: Path) -> None:
    """Runs of puts and meta rows go through multi-row statements: repeated keys in one
    batch (newer, then older timestamps; a meta row rewritten, then deleted) end as the
    memory backend, which applies changes one by one, ends."""
    batch: list[Change] = []
    for i in range(2500):
        key = f"k{i % 300}"
        batch.append(PutRecord("m", key, LWWRecord(i, Timestamp(1 + i % 700, 0, "n"))))
        batch.append(PutMeta("ns", f"{i % 450:04d}", str(i).encode()))
        if i % 997 == 0:
            batch.append(PutMeta("ns", f"{i % 450:04d}", None))
            batch.append(DeleteKey("m", key))
    sqlite_backend = SQLiteBackend(tmp_path / "topgun.db")
    memory = MemoryBackend()
    for backend in (sqlite_backend, memory):
        await backend.initialize()
        await backend.store_batch(batch)
    assert await sqlite_backend.load_map("m") == await memory.load_map("m")
    assert await sqlite_backend.load_meta("ns") == await memory.load_meta("ns")
    await sqlite_backend.close()
    await memory.close()


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 15, 16, 17, 33, 999, 1000, 1001, 1017])
async def test_every_batch_size_stores_every_row_once(tmp_path: Path, size: int) -> None:
    """Multi-row upserts are padded to a few statement shapes by repeating the last row:
    whatever the run's length, every row lands, the last one included, and nothing else."""
    backend = SQLiteBackend(tmp_path / "topgun.db")
    await backend.initialize()
    await backend.store_batch(
        [PutRecord("m", f"k{i}", LWWRecord(i, Timestamp(1 + i, 0, "n"))) for i in range(size)]
        + [PutMeta("ns", f"{i:05d}", str(i).encode()) for i in range(size)]
    )
    snapshot = await backend.load_map("m")
    assert isinstance(snapshot, LWWSnapshot)
    assert {key: r.value for key, r in snapshot.records.items()} == {
        f"k{i}": i for i in range(size)
    }
    assert await backend.load_meta("ns") == {f"{i:05d}": str(i).encode() for i in range(size)}
    await backend.store_batch(
        [PutMeta("ns", f"{i:05d}", None) for i in range(0, size, 2)]  # every other key goes
        + [PutMeta("ns", "back", b"1"), PutMeta("ns", "back", None), PutMeta("ns", "back", b"2")]
    )
    kept = {f"{i:05d}": str(i).encode() for i in range(1, size, 2)}
    assert await backend.load_meta("ns") == {**kept, "back": b"2"}
    await backend.close()
