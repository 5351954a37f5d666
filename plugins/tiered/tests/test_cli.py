"""`topgun tier status|archive|restore` on the configured storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
from click.testing import CliRunner
from topgun_tiered import TieredBackend

from topgun.cli import build_cli
from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.storage import AddORRecord, PutRecord, open_storage

OLD = 1_600_000_000_000


def write_config(tmp_path: Path, wrappers: str = '["tiered"]') -> Path:
    config = tmp_path / "topgun.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / "data"}"

[storage]
backend = "sqlite"
wrappers = {wrappers}

[storage.wrapper_options.tiered]
budget = "8MiB"
archive_after = "1d"
""",
        encoding="utf-8",
    )
    return config


def fill(tmp_path: Path, kit: Any) -> dict[str, bytes]:
    """Two old maps and a fresh one; returns their snapshots as msgpack."""

    async def main() -> dict[str, bytes]:
        backend = open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path / "data",
            wrappers=["tiered"],
            wrapper_options={"tiered": {}},
        )
        await backend.initialize()
        stamp = Timestamp(OLD, 0, "n")
        await backend.store_batch(
            [
                *(PutRecord("old", f"k{i}", LWWRecord({"i": i}, stamp)) for i in range(120)),
                AddORRecord("tags", "t", ORMapRecord("x", stamp, str(stamp))),
                PutRecord("fresh", "k", LWWRecord(1, Timestamp(kit.T, 0, "n"))),
            ]
        )
        found = {n: msgspec.msgpack.encode(await backend.load_map(n)) for n in ("old", "tags")}
        await backend.close()
        return found

    return anyio.run(main)


def snapshots(tmp_path: Path, kit: Any) -> dict[str, bytes]:
    async def main() -> dict[str, bytes]:
        backend = open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path / "data",
            wrappers=["tiered"],
            wrapper_options={"tiered": {}},
        )
        assert isinstance(backend, TieredBackend)
        await backend.initialize()
        assert await backend.archived_maps() == {}
        found = {n: msgspec.msgpack.encode(await backend.load_map(n)) for n in ("old", "tags")}
        await backend.close()
        return found

    return anyio.run(main)


def test_status_archive_and_restore_round_trip(tmp_path: Path, kit: Any) -> None:
    before = fill(tmp_path, kit)
    config = str(write_config(tmp_path))
    cli = build_cli(kit.plugin_manager())
    runner = CliRunner()

    status = runner.invoke(cli, ["tier", "status", "--config", config])
    assert status.exit_code == 0, status.output
    assert "storage: " in status.output
    assert "in 3 map(s)" in status.output
    assert "archive: 0 B compressed in 0 map(s)" in status.output
    assert "memory budget: 8.0 MiB" in status.output

    archived = runner.invoke(cli, ["tier", "archive", "--config", config])
    assert archived.exit_code == 0, archived.output
    assert "archived 2 map(s)" in archived.output  # old and tags, not fresh
    assert "archive old" in archived.output
    status = runner.invoke(cli, ["tier", "status", "--config", config])
    assert "in 1 map(s)" in status.output
    assert "compressed in 2 map(s)" in status.output
    assert (tmp_path / "data" / "archive" / "manifest.json").is_file()

    restored = runner.invoke(cli, ["tier", "restore", "--all", "--config", config])
    assert restored.exit_code == 0, restored.output
    assert "restored 2 map(s)" in restored.output
    assert snapshots(tmp_path, kit) == before

    named = runner.invoke(cli, ["tier", "archive", "--map", "fresh", "--config", config])
    assert named.exit_code == 0, named.output
    assert "archived 1 map(s)" in named.output


def test_bad_requests_are_reported_in_one_line(tmp_path: Path, kit: Any) -> None:
    fill(tmp_path, kit)
    cli = build_cli(kit.plugin_manager())
    runner = CliRunner()
    config = str(write_config(tmp_path))
    both = runner.invoke(cli, ["tier", "restore", "--config", config])
    assert both.exit_code == 2
    assert "--map, or give --all" in both.output
    unknown = runner.invoke(cli, ["tier", "restore", "--map", "nope", "--config", config])
    assert unknown.exit_code == 1
    assert "not archived: 'nope'" in unknown.output
    missing = runner.invoke(cli, ["tier", "archive", "--map", "nope", "--config", config])
    assert missing.exit_code == 1
    assert "map 'nope' is not stored" in missing.output
    age = runner.invoke(cli, ["tier", "archive", "--older-than", "soon", "--config", config])
    assert age.exit_code == 2
    assert "an age is" in age.output
    plain = str(write_config(tmp_path, wrappers="[]"))
    untiered = runner.invoke(cli, ["tier", "status", "--config", plain])
    assert untiered.exit_code == 1
    assert 'list "tiered" last in [storage] wrappers' in untiered.output


def test_archive_keys_of_live_maps_and_restore_them(tmp_path: Path, kit: Any) -> None:
    """`--keys` archives the old keys of LWW maps that stay live; `status` shows them;
    `restore --map` brings them back byte for byte."""
    config = str(write_config(tmp_path))

    async def mix() -> bytes:
        backend = open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path / "data",
            wrappers=["tiered"],
            wrapper_options={"tiered": {}},
        )
        await backend.initialize()
        old, new = Timestamp(OLD, 0, "n"), Timestamp(kit.T, 0, "n")
        await backend.store_batch(
            [
                *(PutRecord("mix", f"k{i:03}", LWWRecord({"i": i}, old)) for i in range(150)),
                *(PutRecord("mix", f"n{i:03}", LWWRecord({"i": i}, new)) for i in range(5)),
            ]
        )
        found = msgspec.msgpack.encode(await backend.load_map("mix"))
        await backend.close()
        return found

    before = anyio.run(mix)
    cli, runner = build_cli(kit.plugin_manager()), CliRunner()
    archived = runner.invoke(cli, ["tier", "archive", "--keys", "--config", config])
    assert archived.exit_code == 0, archived.output
    assert "archived 0 map(s) and 150 key(s) of 1 map(s)" in archived.output
    assert "archive keys of mix" in archived.output
    wide = {"COLUMNS": "200"}
    status = runner.invoke(cli, ["tier", "status", "--config", config], env=wide)
    (line,) = [line for line in status.output.splitlines() if " mix " in line]
    cells = [cell.strip() for cell in line.split("│")]
    assert (cells[3], cells[4], cells[6]) == ("storage+archive", "5", "150")
    assert "in 150 archived key(s)" in status.output
    again = runner.invoke(cli, ["tier", "archive", "--keys", "--config", config])
    assert "nothing to archive" in again.output
    restored = runner.invoke(cli, ["tier", "restore", "--map", "mix", "--config", config])
    assert restored.exit_code == 0, restored.output

    async def after() -> bytes:
        backend = open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path / "data",
            wrappers=["tiered"],
            wrapper_options={"tiered": {}},
        )
        assert isinstance(backend, TieredBackend)
        await backend.initialize()
        assert backend.archive.keys == {}
        found = msgspec.msgpack.encode(await backend.inner.load_map("mix"))
        await backend.close()
        return found

    assert anyio.run(after) == before
