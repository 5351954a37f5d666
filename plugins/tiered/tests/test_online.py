"""Archiving inside a running server: untouched keys leave storage and memory beside the
server's writes (on request, every `archive_interval`, or from `topgun tier archive
--url`), Merkle sync and queries stay as they were, and no write is lost to a pass."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import jwt
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from topgun_tiered import TieredBackend
from topgun_tiered.online import archiver_of

from topgun.cli import build_cli
from topgun.crdt import LWWRecord, Timestamp, fnv1a32
from topgun.crdt.hashing import merkle_path
from topgun.protocol import (
    MerkleReqBucket,
    MerkleReqBucketPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    SyncInit,
    SyncRespLeaf,
    SyncRespRoot,
)
from topgun.server import InMemoryClient, Server

pytestmark = pytest.mark.anyio

OLD, FRESH = range(300), range(300, 350)
"""Keys written a minute ago (archived past `archive_after = "30s"`) and just now."""


def key(i: int) -> str:
    return f"k{i:05}"


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Poll `condition` until it holds (fails after `seconds`)."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


async def root_of(client: InMemoryClient, name: str) -> int:
    await client.send(SyncInit(map_name=name))
    response, _ = await client.receive_until(SyncRespRoot)
    return int(response.payload.root_hash)


async def query_all(client: InMemoryClient, query_id: str) -> list[tuple[str, Any]]:
    query = Query(sort={"n": "asc"})
    await client.send(
        QuerySub(payload=QuerySubPayload(query_id=query_id, map_name="m", query=query))
    )
    response, _ = await client.receive_until(QueryResp, timeout=30)
    return [(r.key, r.value) for r in response.payload.results]


async def fill(data_dir: Path, kit: Any) -> tuple[int, list[tuple[str, Any]]]:
    """Write the old and fresh rows with a server that does not archive; returns the
    map's Merkle root and its rows."""
    async with kit.running(kit.tiered_config(data_dir, budget="64MiB")) as first:
        client = await first.login()
        await kit.write_rows(client, "m", OLD)
        await kit.write_rows(client, "m", FRESH, millis=int(time.time() * 1000))
        return await root_of(client, "m"), await query_all(client, "q0")


async def test_a_running_server_archives_untouched_keys_and_serves_them_back(
    tmp_path: Path, kit: Any
) -> None:
    root, rows = await fill(tmp_path, kit)
    config = kit.tiered_config(tmp_path, budget="64MiB", archive_after="30s", segment_keys=100)
    async with kit.running(config) as running:
        server = running.server
        backend = server.backend
        assert isinstance(backend, TieredBackend)
        archiver = archiver_of(server)
        assert archiver is not None
        hot, lww = server.maps.hot, server.maps.lww("m")
        assert hot is not None
        assert lww is not None
        used = hot.used
        progress = archiver.begin()
        await archiver.finish(progress)
        assert progress.error is None
        assert not progress.running
        assert (progress.keys, progress.segments, progress.evicted) == (300, 3, 300)
        assert (progress.maps_done, progress.maps_total) == (1, 1)
        assert sorted(backend.archive.keys["m"]) == [key(i) for i in OLD]
        held = await backend.inner.load_map("m")
        assert held is not None
        assert sorted(held.records) == [key(i) for i in FRESH]
        assert lww.cold_keys() == {key(i) for i in OLD}  # timestamps and hashes stay
        assert hot.used < used / 5
        metrics = generate_latest(server.metrics.registry).decode()
        assert "topgun_tier_archived_keys 300.0" in metrics
        assert f"topgun_tier_archived_bytes {float(progress.bytes)}" in metrics

        client = await running.login()
        assert await root_of(client, "m") == root
        # Merkle sync of a fresh client: every leaf is served from the archive, correct.
        served = 0
        for path in sorted({merkle_path(fnv1a32(key(i))) for i in OLD}):
            await client.send(
                MerkleReqBucket(payload=MerkleReqBucketPayload(map_name="m", path=path))
            )
            leaf, _ = await client.receive_until(SyncRespLeaf)
            for entry in leaf.payload.records:
                i = int(entry.key[1:])
                if i in OLD:
                    assert entry.record == LWWRecord(kit.row(i), Timestamp(kit.T, i, "writer"))
                    served += 1
        assert served == len(OLD)
        assert backend.restores == 3
        assert backend.archive.keys == {}
        assert await query_all(client, "q1") == rows
        metrics = generate_latest(server.metrics.registry).decode()
        assert "topgun_tier_archive_restores 3.0" in metrics
        assert "topgun_tier_archive_restored_records 300.0" in metrics

        again = archiver.begin()  # archived again: a restart must read them in place
        await archiver.finish(again)
        assert again.keys == 300

    async with kit.running(config) as restarted:
        client = await restarted.login()
        assert await root_of(client, "m") == root
        assert await query_all(client, "q2") == rows


async def test_archive_interval_archives_in_the_background(tmp_path: Path, kit: Any) -> None:
    await fill(tmp_path, kit)
    config = kit.tiered_config(
        tmp_path, budget="64MiB", archive_after="30s", archive_interval="10ms"
    )
    async with kit.running(config) as running:
        server = running.server
        archiver = archiver_of(server)
        assert archiver is not None
        await until(lambda: archiver.passes >= 2)
        assert archiver.current is not None
        assert archiver.current.error is None
        assert isinstance(server.backend, TieredBackend)
        assert len(server.backend.archive.keys["m"]) == len(OLD)
        lww = server.maps.lww("m")
        assert lww is not None
        assert lww.cold_keys() == {key(i) for i in OLD}


async def test_writes_racing_archive_passes_are_never_lost(tmp_path: Path, kit: Any) -> None:
    """Passes every millisecond over small segments while the same old keys are written
    again and again: every key ends with its last write, in memory and in storage."""
    keys, rounds = range(60), 15
    config = kit.tiered_config(
        tmp_path, budget="64MiB", archive_after="30s", archive_interval="1ms", segment_keys=7
    )
    last: dict[str, LWWRecord] = {}
    async with kit.running(config) as running:
        server = running.server
        backend = server.backend
        assert isinstance(backend, TieredBackend)
        archiver = archiver_of(server)
        assert archiver is not None
        client = await running.login()
        for n in range(rounds):
            # Counters grow by round, millis stay a minute old: each write wins, and each
            # written record is old enough to be archived by the next pass.
            await kit.write_rows(client, "m", keys, millis=kit.T + n)
            await until(lambda n=n: archiver.passes >= n + 1)
        for i in keys:
            last[key(i)] = LWWRecord(kit.row(i), Timestamp(kit.T + rounds - 1, i, "writer"))
        assert backend.restores > 0  # writes met archived keys
        await until(lambda: not archiver.running)
        lww = server.maps.lww("m")
        assert lww is not None
        async with server.maps.holding("m"):
            assert {k: lww.get_record(k) for k in last} == last
    assert archiver.current is not None
    assert archiver.current.error is None

    async with kit.running(kit.tiered_config(tmp_path, budget="64MiB")) as restarted:
        backend = restarted.server.backend
        assert isinstance(backend, TieredBackend)
        whole = await backend.load_map("m")
        assert whole is not None
        assert dict(whole.records) == last


class Gate:
    """An object store whose segment uploads wait for `go` (after setting `uploading`)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.description = store.description
        self.uploading = anyio.Event()
        self.go = anyio.Event()

    async def open(self) -> None:
        await self.store.open()

    async def get(self, name: str) -> bytes | None:
        data: bytes | None = await self.store.get(name)
        return data

    async def put(self, name: str, data: bytes) -> None:
        if name.startswith("segments/"):
            self.uploading.set()
            await self.go.wait()
        await self.store.put(name, data)

    async def delete(self, name: str) -> None:
        await self.store.delete(name)

    async def close(self) -> None:
        await self.store.close()


async def test_a_write_landing_while_its_key_is_uploaded_stays(tmp_path: Path, kit: Any) -> None:
    """A client's write acknowledged while the pass uploads the segment of its key keeps
    that key in storage and its value in memory; the other keys are archived."""
    await fill(tmp_path, kit)
    config = kit.tiered_config(tmp_path, budget="64MiB", archive_after="30s")
    async with kit.running(config) as running:
        server = running.server
        backend = server.backend
        assert isinstance(backend, TieredBackend)
        gate = backend.archive.store = Gate(backend.archive.store)
        archiver = archiver_of(server)
        assert archiver is not None
        client = await running.login()
        progress = archiver.start(names=["m"])
        with anyio.fail_after(20):
            await gate.uploading.wait()
        await kit.write_rows(client, "m", [7], millis=kit.T + 1)  # PERSISTED meanwhile
        gate.go.set()
        await until(lambda: not progress.running)
        assert progress.error is None
        assert (progress.keys, progress.evicted) == (len(OLD) - 1, len(OLD) - 1)
        assert key(7) not in backend.archive.keys["m"]
        written = LWWRecord(kit.row(7), Timestamp(kit.T + 1, 7, "writer"))
        stored = await backend.inner.load_keys("m", [key(7)])
        assert stored is not None
        assert stored.records == {key(7): written}
        lww = server.maps.lww("m")
        assert lww is not None
        assert not lww.is_cold(key(7))
        assert lww.get_record(key(7)) == written


def test_archive_with_url_drives_a_running_server_with_a_progress_bar(
    tmp_path: Path, kit: Any
) -> None:
    """`topgun tier archive --url` has the running server archive beside its writes and
    shows its progress; a token without ADMIN is refused; the metrics show the archive."""
    from topgun.server.app import create_app
    from topgun.server.serve import bound_address, host, listen_socket

    anyio.run(fill, tmp_path, kit)
    config = kit.tiered_config(tmp_path, budget="64MiB", archive_after="30s")
    cli, runner = build_cli(kit.plugin_manager()), CliRunner()

    def token(roles: list[str]) -> str:
        claims = {"sub": "op", "roles": roles, "exp": int(time.time()) + 3600}
        return jwt.encode(claims, config.auth.jwt_secret.reveal(), algorithm="HS256")

    async def serve_and_archive() -> tuple[Any, Any, Any, str, int]:
        listener = listen_socket("127.0.0.1", 0)
        url = f"http://127.0.0.1:{bound_address(listener)[1]}"
        stop = anyio.Event()
        async with (
            Server(config, pm=kit.plugin_manager()) as server,
            anyio.create_task_group() as tg,
        ):

            async def stopped() -> None:
                await stop.wait()
                await server.shutdown()

            tg.start_soon(
                lambda: host(create_app(server), listener, config, shutdown_trigger=stopped)
            )
            admin = {"Authorization": f"Bearer {token(['ADMIN'])}"}
            async with httpx.AsyncClient() as http:
                endpoint = url + "/admin/tier/archive"
                none_yet = await http.get(endpoint, headers=admin)
                bad = await http.post(endpoint, headers=admin, json={"older_than": "soon"})
                anonymous = await http.get(endpoint)
            assert none_yet.status_code == 404
            assert (bad.status_code, "Bad archive request" in bad.text) == (400, True)
            assert anonymous.status_code == 401
            args = ["tier", "archive", "--url", url, "--token", token(["ADMIN"])]
            done = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args))
            user = ["tier", "archive", "--url", url, "--token", token(["USER"])]
            refused = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, user))
            nope = [*args, "--map", "nope"]
            unknown = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, nope))
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(url + "/metrics")).text
            assert isinstance(server.backend, TieredBackend)
            archived = len(server.backend.archive.keys.get("m", {}))
            stop.set()
        return done, refused, unknown, metrics, archived

    done, refused, unknown, metrics, archived = anyio.run(serve_and_archive)
    assert done.exit_code == 0, done.output
    assert "archived 300 key(s) of 1 map(s) in 1 segment(s)" in done.stdout
    assert "archiving: 300 key(s)" in done.stderr  # the progress bar
    assert archived == 300
    assert "topgun_tier_archived_keys 300.0" in metrics
    assert refused.exit_code == 1
    assert "403" in refused.stderr
    assert "ADMIN" in refused.stderr
    assert unknown.exit_code == 1
    assert "No such map: 'nope'" in unknown.stderr
