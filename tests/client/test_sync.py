"""Offline-first sync against a real `topgun serve` process over real sockets (issue 7 item 4).

- two clients converge on random concurrent writes;
- a client writes 1,000 keys while the server is down, its process is restarted, then the
  server comes up: every key reaches the server and the other client;
- the connection is cut at random points during 5,000 writes: every write arrives exactly
  once (one journal event per key) and none is lost.

Each runs under asyncio and trio (the `anyio_backend` fixture of this folder).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from topgun.client import Backoff, ConnectionState, TopGunClient

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.02, factor=2.0, max_delay=0.5, jitter=0.5)
"""Reconnect quickly in tests (the default starts at 250 ms)."""


async def start_serve(serve_process: Callable[..., Any], kit: Any, *args: str) -> Any:
    """`topgun serve` with SQLite storage in ./data; returns the process once it listens."""
    process = serve_process("--data-dir", "data", *args, env={"TOPGUN_AUTH_JWT_SECRET": kit.SECRET})
    await anyio.to_thread.run_sync(process.banner)
    return process


async def serve_url(serve_process: Callable[..., Any], kit: Any) -> str:
    process = await start_serve(serve_process, kit, "--port", "0")
    return f"ws://127.0.0.1:{process.port}"


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for `condition` with a deadline, yielding to the event loop between checks."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


async def test_two_clients_converge_on_random_concurrent_writes(
    serve_process: Callable[..., Any], kit: Any
) -> None:
    url = await serve_url(serve_process, kit)
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(40)]
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(sub="bob"), backoff=FAST) as b,
    ):
        ma, mb = a.map("shared"), b.map("shared")
        oa, ob = a.ormap("tags"), b.ormap("tags")
        await a.connected()
        await b.connected()

        async def writer(m: Any, o: Any, name: str, seed: int) -> None:
            local = random.Random(seed)
            for i in range(300):
                key = local.choice(keys)
                if local.random() < 0.15:
                    m.remove(key)
                else:
                    m.set(key, {"by": name, "i": i})
                if local.random() < 0.2:
                    o.add(key, f"{name}{i % 5}")
                if local.random() < 0.05:
                    o.remove(key, f"{name}{i % 5}")
                if i % 10 == 0:
                    await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, ma, oa, "a", rng.random())
            tg.start_soon(writer, mb, ob, "b", rng.random())
        with anyio.fail_after(kit.DEADLINE):
            await a.settled()
            await b.settled()
        await until(
            lambda: sorted(ma.items()) == sorted(mb.items()),
            kit.DEADLINE,
            "LWW maps converge",
        )
        await until(
            lambda: sorted(oa.items()) == sorted(ob.items()),
            kit.DEADLINE,
            "OR-Maps converge",
        )
        assert len(ma.items()) > 10
        # A third client that syncs from scratch (Merkle) sees the same state.
        async with TopGunClient(url, token=kit.mint(), backoff=FAST) as c:
            mc, oc = c.map("shared"), c.ormap("tags")
            with anyio.fail_after(kit.DEADLINE):
                await c.settled()
            assert sorted(mc.items()) == sorted(ma.items())
            assert sorted(oc.items()) == sorted(oa.items())


WRITER = """
import sys, anyio
from topgun.client import SQLiteStore, TopGunClient, Backoff

async def main() -> None:
    url, token, path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    async with TopGunClient(url, token=token, store=SQLiteStore(path),
                            backoff=Backoff(initial=0.02, max_delay=0.2)) as client:
        m = client.map("offline")
        if count:
            for i in range(count):
                m.set(f"key{i:04d}", {"i": i})
            await client.flush()
            print("written", client.pending_writes, flush=True)
            sys.stdout.flush()
            import os
            os._exit(0)  # die without closing: only what the store made durable survives
        print("pending", client.pending_writes, flush=True)
        with anyio.fail_after(60):
            await client.settled()
        print("settled", client.pending_writes, len(m.items()), flush=True)

anyio.run(main, backend=sys.argv[5])
"""


def free_port() -> int:
    """A port nothing listens on now (the server binds it later, when it comes up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_writer(*args: str) -> list[str]:
    result = await anyio.run_process(
        [sys.executable, "-c", WRITER, *args], stderr=subprocess.PIPE, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().split()


async def test_offline_writes_survive_a_process_restart_and_reach_everyone(
    serve_process: Callable[..., Any], kit: Any, tmp_path: Path, anyio_backend: str
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    store = str(tmp_path / "writer.sqlite")
    # The server is down: the writer process writes 1,000 keys locally and dies.
    out = await run_writer(url, kit.mint(), store, "1000", anyio_backend)
    assert out == ["written", "1000"]
    # The server comes up; the other client is watching the map.
    await start_serve(serve_process, kit, "--port", str(port))
    async with TopGunClient(url, token=kit.mint(sub="bob"), backoff=FAST) as other:
        watched = other.map("offline")
        with anyio.fail_after(kit.DEADLINE):
            await other.settled()
        assert watched.items() == []
        # The writer's process restarts: its store still holds the 1,000 writes.
        out = await run_writer(url, kit.mint(), store, "0", anyio_backend)
        assert out == ["pending", "1000", "settled", "0", "1000"]
        await until(lambda: len(watched.items()) == 1000, kit.DEADLINE, "other client has all")
        assert dict(watched.items()) == {f"key{i:04d}": {"i": i} for i in range(1000)}
    async with TopGunClient(url, token=kit.mint(), backoff=FAST) as fresh:
        m = fresh.map("offline")
        with anyio.fail_after(kit.DEADLINE):
            await fresh.settled()
        assert len(m.items()) == 1000


async def test_every_write_arrives_exactly_once_across_random_connection_cuts(
    serve_process: Callable[..., Any], kit: Any
) -> None:
    process = await start_serve(serve_process, kit, "--port", "0")
    rng = random.Random(5000)
    count = 5000
    async with anyio.create_task_group() as tg:
        proxy = await kit.start_proxy(tg, process.port)
        direct = f"ws://127.0.0.1:{process.port}"
        async with (
            TopGunClient(proxy.url, token=kit.mint(), backoff=FAST) as writer,
            TopGunClient(direct, token=kit.mint(sub="reader"), backoff=FAST) as reader,
        ):
            m = writer.map("cuts")
            await writer.connected()
            cut_at = 0
            for i in range(count):
                m.set(f"w{i:05d}", i)
                if rng.random() < 0.004:
                    # Cut a live connection (a new one since the last cut), mid-stream.
                    await until(
                        lambda cut_at=cut_at: (
                            proxy.accepted > cut_at and writer.state is ConnectionState.CONNECTED
                        ),
                        kit.DEADLINE,
                        "the writer reconnected",
                    )
                    for _ in range(rng.randrange(3)):
                        await anyio.sleep(0)
                    cut_at = proxy.accepted
                    proxy.cut()
                if i % 25 == 0:
                    await anyio.sleep(0)
            assert proxy.cuts >= 10
            with anyio.fail_after(60):
                await writer.settled()
            assert writer.pending_writes == 0
            seen = reader.map("cuts")
            with anyio.fail_after(kit.DEADLINE):
                await reader.settled()
            assert dict(seen.items()) == {f"w{i:05d}": i for i in range(count)}
            events = await reader.journal.read_all(0, map_name="cuts")
            per_key: dict[str, int] = {}
            for event in events:
                per_key[event.key] = per_key.get(event.key, 0) + 1
            assert len(per_key) == count
            assert set(per_key.values()) == {1}, "a write was applied more than once"
            assert writer.state is ConnectionState.CONNECTED
        tg.cancel_scope.cancel()
