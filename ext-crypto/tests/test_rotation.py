"""Key rotation: every value ends under the active key, beside concurrent writes, after
an interruption, from the command line and in a running server's background."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner

from topgun.cli import build_cli
from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.server import Server
from topgun.storage import (
    AddORRecord,
    CodecPipeline,
    LWWSnapshot,
    PutMeta,
    PutRecord,
    SQLiteBackend,
    StorageWriter,
    ValueCodecError,
)
from topgun_compress import ZstdCodec
from topgun_crypto import AesGcmCodec, CryptoError, KeyRing, key_usage, rotate

pytestmark = pytest.mark.anyio

K1, K2 = b"1" * 32, b"2" * 32


def crypto(*names: str) -> AesGcmCodec:
    keys = {"k1": K1, "k2": K2}
    return AesGcmCodec(KeyRing([(name, keys[name]) for name in names]))


def backend(path: Path, codec: AesGcmCodec) -> SQLiteBackend:
    pipeline = CodecPipeline([("compress", ZstdCodec()), ("crypto", codec)])
    return SQLiteBackend(path, codecs=pipeline, synchronous="normal")


def ts(millis: int) -> Timestamp:
    return Timestamp(millis, 0, "n")


async def seed(path: Path, count: int) -> None:
    """`count` LWW values, an OR record and a meta value, all under key k1."""
    old = backend(path, crypto("k1"))
    await old.initialize()
    await old.store_batch(
        [
            PutRecord("m", f"key-{i:04}", LWWRecord({"i": i, "text": "x" * 50}, ts(1)))
            for i in range(count)
        ]
        + [AddORRecord("o", "k", ORMapRecord("or value", ts(1), str(ts(1))))]
        + [PutMeta("journal", "1", b"journal entry")]
    )
    await old.close()


async def test_rotation_moves_every_kind_of_value_to_the_active_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await seed(path, 100)
    codec = crypto("k1", "k2")
    store = backend(path, codec)
    await store.initialize()
    assert await key_usage(store, codec) == {"k1": 102}
    seen: list[tuple[int, int]] = []
    report = await rotate(store, codec, batch=7, progress=lambda d, t: seen.append((d, t)))
    assert (report.scanned, report.rotated, report.overwritten) == (102, 102, 0)
    assert seen[-1] == (102, 102)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert await key_usage(store, codec) == {"k2": 102}
    await store.close()
    only_new = backend(path, crypto("k2"))  # the old key can now leave the ring
    await only_new.initialize()
    snapshot = await only_new.load_map("m")
    assert isinstance(snapshot, LWWSnapshot)
    assert snapshot.records["key-0042"].value == {"i": 42, "text": "x" * 50}
    assert await only_new.load_meta("journal") == {"1": b"journal entry"}
    await only_new.close()


async def test_rotation_beside_concurrent_writes_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await seed(path, 300)
    codec = crypto("k1", "k2")
    store = backend(path, codec)
    await store.initialize()
    expected = {f"key-{i:04}": {"i": i, "text": "x" * 50} for i in range(300)}
    rotating = anyio.Event()
    writes_during_rotation = 0
    async with StorageWriter(store, max_batch=50) as writer:

        async def write() -> None:
            nonlocal writes_during_rotation
            for round_ in range(2, 40):
                batch = []
                for i in range(round_ % 7, 300, 11):  # overwrite some keys, add others
                    key = f"key-{i:04}" if round_ % 2 else f"new-{round_}-{i}"
                    expected[key] = {"round": round_, "i": i}
                    batch.append(PutRecord("m", key, LWWRecord(expected[key], ts(round_))))
                await (await writer.submit(batch)).wait()
                writes_during_rotation += rotating.is_set()
                await anyio.sleep(0)

        def progress(done: int, total: int) -> None:
            rotating.set()

        async with anyio.create_task_group() as group:
            group.start_soon(write)
            report = await rotate(store, codec, batch=5, progress=progress)
    assert writes_during_rotation > 0
    assert report.rotated + report.overwritten >= 1
    assert await key_usage(store, codec) == {"k2": len(expected) + 2}
    snapshot = await store.load_map("m")
    assert isinstance(snapshot, LWWSnapshot)
    assert {key: record.value for key, record in snapshot.records.items()} == expected
    await store.close()


class Interrupted(Exception):
    pass


async def test_an_interrupted_rotation_resumes_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await seed(path, 100)
    codec = crypto("k1", "k2")
    store = backend(path, codec)
    await store.initialize()

    def stop_after_three_pages(done: int, total: int) -> None:
        if done >= 30:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rotate(store, codec, batch=10, progress=stop_after_three_pages)
    assert await key_usage(store, codec) == {"k1": 72, "k2": 30}
    report = await rotate(store, codec, batch=10)
    assert (report.scanned, report.rotated) == (102, 72)
    assert await key_usage(store, codec) == {"k2": 102}
    await store.close()


async def test_a_tampered_value_stops_rotation_naming_map_and_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await seed(path, 10)
    codec = crypto("k1", "k2")
    store = backend(path, codec)
    await store.initialize()
    scanned = await store.scan_values(None, 100)
    victim = next(v for v in scanned if v.context.key == "key-0004")
    assert await store.replace_values([(victim, victim.data[:-1] + b"\x00")]) == 1
    with pytest.raises(CryptoError, match="key 'key-0004' of map 'm' failed authentication"):
        await rotate(store, codec)
    with pytest.raises(ValueCodecError, match="key 'key-0004' of map 'm'"):
        await store.load_map("m")
    await store.close()


def test_the_rotate_and_status_commands(
    configure: Callable[..., Any], plugins: Any, kit: Any, tmp_path: Path
) -> None:
    config = configure(keys=kit.ring("k1"))

    async def fill() -> None:
        async with Server(config, pm=plugins) as server:
            await kit.write_every_kind(server)

    anyio.run(fill)
    toml = tmp_path / "topgun.toml"
    toml.write_text(
        f'data_dir = "{config.data_dir}"\n[storage]\nbackend = "sqlite"\n'
        'codecs = ["compress", "crypto"]\n'
    )
    cli = build_cli(plugins)
    runner = CliRunner()
    env = {"TOPGUN_CRYPTO_KEYS": kit.ring("k1", "k2")}
    status = runner.invoke(cli, ["crypto", "status", "--config", str(toml)], env=env)
    assert status.exit_code == 0, status.output
    stored = int(status.stdout.split("k1: ")[1].split()[0])
    assert stored >= 21  # 20 LWW values, an OR record, journal entries, lock, counter
    result = runner.invoke(cli, ["crypto", "rotate", "--config", str(toml)], env=env)
    assert result.exit_code == 0, result.output
    assert f"rotated {stored} of {stored} value(s) to key 'k2'" in result.stdout
    assert "rotating to key k2 " in result.stderr  # the progress bar, at its end:
    assert f" {stored}/{stored} " in result.stderr
    status = runner.invoke(cli, ["crypto", "status", "--config", str(toml)], env=env)
    assert status.stdout == f"k2: {stored} value(s) (active)\n"
    again = runner.invoke(cli, ["crypto", "rotate", "--config", str(toml)], env=env)
    assert f"rotated 0 of {stored} value(s)" in again.stdout

    async def hold_and_rotate() -> Any:
        async with Server(configure(keys=kit.ring("k1", "k2")), pm=plugins):
            args = ["crypto", "rotate", "--config", str(toml)]
            return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args, env=env))

    busy = anyio.run(hold_and_rotate)
    assert busy.exit_code == 1
    assert "in use by another process" in busy.stderr
    assert "[crypto] rotate_on_startup" in busy.stderr
    bad = runner.invoke(cli, ["crypto", "rotate", "--config", str(toml)], env={})
    assert bad.exit_code == 1
    assert "no key is: set TOPGUN_CRYPTO_KEYS" in bad.stderr
    keygen = runner.invoke(cli, ["crypto", "keygen", "2027-01"])
    assert keygen.stdout.startswith("2027-01:")


async def test_a_running_server_rotates_in_the_background(
    configure: Callable[..., Any], plugins: Any, kit: Any
) -> None:
    async with Server(configure(keys=kit.ring("k1")), pm=plugins) as server:
        await kit.write_every_kind(server)
    config = configure(keys=kit.ring("k1", "k2"), toml="[crypto]\nrotate_on_startup = true\n")
    codec = AesGcmCodec(KeyRing([(name, kit.KEYS[name]) for name in ("k1", "k2")]))
    async with Server(config, pm=plugins) as server:
        await kit.write_every_kind(server, millis=1_800_000_000_000)  # beside the rotation
        assert server.backend is not None
        with anyio.fail_after(30):
            while set(await key_usage(server.backend, codec)) != {"k2"}:  # type: ignore[arg-type]
                await anyio.sleep(0.01)
        todos = server.maps.lww("todos")
        assert todos is not None
        assert todos.get("t1") == {"title": f"{kit.MARKER} todo 1", "done": False}


def test_rotate_with_url_drives_a_running_server_with_a_progress_bar(
    configure: Callable[..., Any], plugins: Any, kit: Any
) -> None:
    """`topgun crypto rotate --url` has the running server rotate in the background, beside
    its writes, and shows the server's progress; a token without ADMIN is refused."""
    from topgun.server.app import create_app
    from topgun.server.serve import bound_address, host, listen_socket

    async def fill() -> None:
        async with Server(configure(keys=kit.ring("k1")), pm=plugins) as server:
            await kit.write_every_kind(server)

    anyio.run(fill)
    config = configure(keys=kit.ring("k1", "k2"))
    codec = AesGcmCodec(KeyRing([(name, kit.KEYS[name]) for name in ("k1", "k2")]))
    cli, runner = build_cli(plugins), CliRunner()

    async def serve_and_rotate() -> tuple[Any, Any, set[str | None]]:
        listener = listen_socket("127.0.0.1", 0)
        url = f"http://127.0.0.1:{bound_address(listener)[1]}"
        stop = anyio.Event()
        async with Server(config, pm=plugins) as server, anyio.create_task_group() as tg:

            async def stopped() -> None:
                await stop.wait()
                await server.shutdown()

            tg.start_soon(
                lambda: host(create_app(server), listener, config, shutdown_trigger=stopped)
            )
            args = ["crypto", "rotate", "--url", url, "--token", kit.token()]
            done = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args))
            user = kit.token(roles=["USER"])
            refused = await anyio.to_thread.run_sync(
                lambda: runner.invoke(cli, ["crypto", "rotate", "--url", url, "--token", user])
            )
            assert server.backend is not None
            usage = set(await key_usage(server.backend, codec))  # type: ignore[arg-type]
            stop.set()
        return done, refused, usage

    done, refused, usage = anyio.run(serve_and_rotate)
    assert done.exit_code == 0, done.output
    assert "to key 'k2'" in done.stdout
    assert "rotating to key k2" in done.stderr  # the progress bar
    assert usage == {"k2"}
    assert refused.exit_code == 1
    assert "403" in refused.stderr
    assert "ADMIN" in refused.stderr
