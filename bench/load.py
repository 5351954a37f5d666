"""Server load: acknowledged ops/s over real WebSockets, ack latency, and the ASGI ceiling.

    python3 dev.py run python bench/load.py [--connections C] [--batch B] [--duration D]
        [--rate R] [--servers hypercorn,uvicorn] [--storage sqlite|memory]
        [--variants poll,no-journal] [--repeat N]

For each ASGI server, `topgun serve` runs in its own process (127.0.0.1, a free port) and
this process is the load generator:

1. throughput: C connections authenticate, then each sends an `OP_BATCH` of B fresh LWW
   writes (new timestamps, so every op is a real merge) as soon as the previous one's
   `OP_ACK` arrived, for D seconds: acknowledged ops/s, ack latency p50/p99, the server
   process's CPU (100% = one core), its CPU time per acknowledged op (µs/op) and RSS, read
   from /proc;
2. fixed rate: the same connections send R ops/s in total (batches of B, evenly spaced):
   ack latency p50/p99 at that rate;
3. echo: the same ASGI server, hosted by the same code (`topgun.server.serve.host`), runs a
   ten-line echo app instead of topgun, and the same connections send the same frames and
   wait for their echo for D seconds: the raw WebSocket round-trip rate, in ops/s of the same
   batches, and topgun's share of it.

With `--variants`, each server is measured again per variant (row `NAME+VARIANT`, no echo
phase): `poll`, the map first read by one `POST /sync`, so its changes are sequenced for HTTP
pollers from then on (what HTTP sync costs the WebSocket write path); `no-journal`, the
event journal off (`[journal] enabled = false`).

With `--repeat N`, every row is measured N times in alternation and a median (with its
range) is printed per row: run-to-run variation on a shared machine is often larger than
the change being measured.

Targets (2-core machine, 50 connections, batches of 10): >= 30,000 acked ops/s; p99 < 20
ms at 1,000 ops/s. The load generator shares the machine with the server, so the figures
are a floor. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import jwt
import msgspec
from websockets.asyncio.client import ClientConnection, connect

SECRET = "bench-load-secret-" + "0123456789abcdef" * 2
MAP = "load"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- the servers under load ------------------------------------------------------------


class ServerProcess:
    """A server in its own process; `port` once it printed where it listens."""

    def __init__(self, args: list[str], env: dict[str, str], ready_prefix: str) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOPGUN_")}
        full_env.update({"TOPGUN_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1", **env})
        self.process = subprocess.Popen(
            args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(ready_prefix):
                self.port = int(line.split("127.0.0.1:", 1)[1].split()[0].split("/")[0])
                break
        else:
            raise SystemExit(f"server did not start: {self.process.stderr.read()}")  # type: ignore[union-attr]
        if ready_prefix.startswith("topgun"):
            for line in self.process.stdout:
                if line.startswith("Press Ctrl+C"):
                    break

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def rss_mib(self) -> float:
        resident = int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1])
        return resident * PAGE / 2**20

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


VARIANTS = ("poll", "no-journal")


def start_topgun(
    asgi_server: str, storage: str, data_dir: Path, variant: str | None
) -> ServerProcess:
    args = [sys.executable, "-m", "topgun", "serve", "--port", "0", "--server", asgi_server]
    args += ["--storage", storage, "--data-dir", str(data_dir)]
    env = {"TOPGUN_AUTH_JWT_SECRET": SECRET}
    if variant == "no-journal":
        env["TOPGUN_JOURNAL_ENABLED"] = "false"
    return ServerProcess(args, env, "topgun ")


def start_echo(asgi_server: str) -> ServerProcess:
    args = [sys.executable, __file__, "--echo-server", asgi_server]
    return ServerProcess(args, {}, "echo ")


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """The whole echo server: every WebSocket frame goes back as it came."""
    if scope["type"] != "websocket":
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message.get("bytes")})
        else:
            return


def serve_echo(asgi_server: str) -> None:
    """`--echo-server`: host `echo_app` exactly as `topgun serve` hosts topgun."""
    from topgun.server import ServerConfig
    from topgun.server.serve import host, listen_socket

    async def main() -> None:
        listener = listen_socket("127.0.0.1", 0)
        print(f"echo listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def first_signal() -> None:
                async for _ in signals:
                    return

            await host(
                echo_app,
                listener,
                ServerConfig(),
                shutdown_trigger=first_signal,  # type: ignore[arg-type]
                asgi_server=asgi_server,
            )  # type: ignore[arg-type]

    anyio.run(main)


# --- the load --------------------------------------------------------------------------


@dataclass
class Tally:
    ops: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


class Writer:
    """One connection's stream of fresh OP_BATCHes."""

    def __init__(self, index: int, batch: int) -> None:
        self.index = index
        self.batch = batch
        self.counter = 0
        self.node = f"load-{index}"

    def frame(self) -> bytes:
        millis = int(time.time() * 1000)
        ops = []
        for _ in range(self.batch):
            self.counter += 1
            n = self.counter
            ops.append(
                {
                    "id": str(n),
                    "mapName": MAP,
                    "key": f"{self.node}-{n % 1000}",
                    "opType": "PUT",
                    "record": {
                        "value": {"title": "load test", "n": n},
                        "timestamp": {"millis": millis, "counter": n, "nodeId": self.node},
                    },
                }
            )
        return msgspec.msgpack.encode({"type": "OP_BATCH", "payload": {"ops": ops}})


_decode = msgspec.msgpack.Decoder()


async def open_connections(port: int, count: int, *, authenticate: bool) -> list[ClientConnection]:
    token = jwt.encode({"sub": "load", "roles": ["ADMIN"]}, SECRET, algorithm="HS256")
    connections = []
    for _ in range(count):
        ws = await connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None)
        if authenticate:
            assert _decode.decode(await ws.recv())["type"] == "AUTH_REQUIRED"
            await ws.send(msgspec.msgpack.encode({"type": "AUTH", "token": token}))
            assert _decode.decode(await ws.recv())["type"] == "AUTH_ACK"
        connections.append(ws)
    return connections


def check_ack(frame: bytes | str, tally: Tally, batch: int) -> None:
    message = _decode.decode(frame)
    assert message["type"] == "OP_ACK", message["type"]
    results = message["payload"]["results"]
    failed = sum(1 for r in results if not r["success"])
    tally.failed += failed
    tally.ops += batch - failed


async def closed_loop(
    connections: list[ClientConnection],
    batch: int,
    duration: float,
    check: Callable[[bytes | str, Tally, int], None],
) -> tuple[Tally, float]:
    """Every connection: send, wait for the reply, repeat, until the deadline."""
    tally = Tally()
    deadline = time.perf_counter() + duration

    async def run(index: int, ws: ClientConnection) -> None:
        writer = Writer(index, batch)
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await ws.send(writer.frame())
            check(await ws.recv(), tally, batch)
            tally.latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index, ws in enumerate(connections):
            tg.start_soon(run, index, ws)
    return tally, time.perf_counter() - started


async def fixed_rate(
    connections: list[ClientConnection], batch: int, rate: int, duration: float
) -> Tally:
    """Open loop: batches at `rate` ops/s in total, evenly spread over the connections."""
    tally = Tally()
    interval = len(connections) * batch / rate  # seconds between one connection's batches
    start = time.perf_counter() + 0.1
    rounds = max(1, int(duration / interval))

    async def run(index: int, ws: ClientConnection) -> None:
        writer = Writer(index, batch)
        offset = interval * index / len(connections)
        for n in range(rounds):
            due = start + offset + n * interval
            await anyio.sleep(max(0.0, due - time.perf_counter()))  # pacing, not syncing
            sent = time.perf_counter()
            await ws.send(writer.frame())
            check_ack(await ws.recv(), tally, batch)
            tally.latencies.append(time.perf_counter() - sent)

    async with anyio.create_task_group() as tg:
        for index, ws in enumerate(connections):
            tg.start_soon(run, index, ws)
    return tally


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else 0.0


@dataclass
class Figures:
    server: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_percent: float
    rss_mib: float
    echo_ops_per_s: float
    rate: int
    rate_p50_ms: float
    rate_p99_ms: float
    failed: int


def poll(port: int) -> None:
    """One `POST /sync` delta of the written map: from then on the server sequences its
    changes for HTTP pollers (docs/transports.md)."""
    token = jwt.encode({"sub": "load", "roles": ["ADMIN"]}, SECRET, algorithm="HS256")
    body = {
        "clientId": "load-poller",
        "clientHlc": {"millis": int(time.time() * 1000), "counter": 0, "nodeId": "load-poller"},
        "syncMaps": [{"mapName": MAP}],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sync",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status


async def measure(
    asgi_server: str, args: argparse.Namespace, data_dir: Path, variant: str | None = None
) -> Figures:
    name = f"{asgi_server}+{variant}" if variant else asgi_server
    topgun = start_topgun(asgi_server, args.storage, data_dir / name, variant)
    try:
        if variant == "poll":
            await anyio.to_thread.run_sync(poll, topgun.port)
        connections = await open_connections(topgun.port, args.connections, authenticate=True)
        await closed_loop(connections, args.batch, 1.0, check_ack)  # warm-up
        cpu_before = topgun.cpu_seconds()
        tally, elapsed = await closed_loop(connections, args.batch, args.duration, check_ack)
        cpu = (topgun.cpu_seconds() - cpu_before) / elapsed * 100
        rss = topgun.rss_mib()
        paced = await fixed_rate(connections, args.batch, args.rate, args.duration)
        for ws in connections:
            await ws.close()
    finally:
        topgun.stop()

    echoed_ops = 0.0
    if not variant:
        echoed_ops = await measure_echo(asgi_server, args)
    return Figures(
        server=name,
        ops_per_s=tally.ops / elapsed,
        p50_ms=percentile(tally.latencies, 0.5) * 1000,
        p99_ms=percentile(tally.latencies, 0.99) * 1000,
        cpu_percent=cpu,
        rss_mib=rss,
        echo_ops_per_s=echoed_ops,
        rate=args.rate,
        rate_p50_ms=percentile(paced.latencies, 0.5) * 1000,
        rate_p99_ms=percentile(paced.latencies, 0.99) * 1000,
        failed=tally.failed + paced.failed,
    )


async def measure_echo(asgi_server: str, args: argparse.Namespace) -> float:
    """Echoed ops/s of the same ASGI server and connections (the stack's ceiling)."""
    echo = start_echo(asgi_server)
    try:
        connections = await open_connections(echo.port, args.connections, authenticate=False)

        def count_echo(frame: bytes | str, tally: Tally, batch: int) -> None:
            tally.ops += batch

        await closed_loop(connections, args.batch, 1.0, count_echo)
        echoed, echo_elapsed = await closed_loop(connections, args.batch, args.duration, count_echo)
        for ws in connections:
            await ws.close()
    finally:
        echo.stop()
    return echoed.ops / echo_elapsed


def cpu_us_per_op(figures: Figures) -> float:
    """Server CPU time (all its threads) per acknowledged op: compares builds across runs
    better than ops/s, which also depends on what else the machine is doing."""
    return figures.cpu_percent / 100 / figures.ops_per_s * 1e6 if figures.ops_per_s else 0.0


def report(results: list[Figures], args: argparse.Namespace) -> None:
    print(
        f"{args.connections} connections, OP_BATCH of {args.batch} LWW writes, "
        f"{args.duration:g} s per phase, storage {args.storage}; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{'server':<20} {'acked ops/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'CPU %':>6} "
        f"{'µs/op':>6} {'RSS MiB':>8} {'echo ops/s':>11} {'share':>6} "
        f"{f'@{args.rate}/s p50':>13} {'p99':>6}"
    )
    for f in results:
        echo = "" if not f.echo_ops_per_s else f"{f.echo_ops_per_s:,.0f}"
        share = "" if not f.echo_ops_per_s else f"{f.ops_per_s / f.echo_ops_per_s:.0%}"
        print(
            f"{f.server:<20} {f.ops_per_s:>12,.0f} {f.p50_ms:>7.2f} {f.p99_ms:>7.2f} "
            f"{f.cpu_percent:>6.0f} {cpu_us_per_op(f):>6.1f} {f.rss_mib:>8.0f} {echo:>11} "
            f"{share:>6} {f.rate_p50_ms:>13.2f} {f.rate_p99_ms:>6.2f}"
        )
        if f.failed:
            print(f"  {f.server}: {f.failed} ops were not acknowledged as successful")
    if args.repeat > 1:
        print(f"over {args.repeat} rounds (alternating):")
        names = list(dict.fromkeys(f.server for f in results))
        for name in names:
            ops = [f.ops_per_s for f in results if f.server == name]
            cost = statistics.median(cpu_us_per_op(f) for f in results if f.server == name)
            print(
                f"{name:<20} median {statistics.median(ops):>8,.0f} acked ops/s "
                f"(range {min(ops):,.0f}-{max(ops):,.0f}), {cost:.1f} µs of server CPU an op"
            )
    print("targets: >= 30,000 acked ops/s; p99 < 20 ms at 1,000 ops/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=int, default=1000, help="ops/s of the fixed-rate phase")
    parser.add_argument("--servers", default="hypercorn,uvicorn")
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument(
        "--variants",
        default="",
        help="extra rows per server, comma-separated: poll (map read over HTTP sync first), "
        "no-journal (journal off)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: every row measured this many times, alternating, then medians",
    )
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(
            f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}"
        )
    if args.echo_server:
        serve_echo(args.echo_server)
        return

    async def run_all() -> list[Figures]:
        with tempfile.TemporaryDirectory(prefix="topgun-load-") as folder:
            results = []
            for round_ in range(args.repeat):
                data_dir = Path(folder) / str(round_)
                for name in args.servers.split(","):
                    results.append(await measure(name, args, data_dir))
                    for variant in filter(None, args.variants.split(",")):
                        results.append(await measure(name, args, data_dir, variant))
            return results

    report(anyio.run(run_all), args)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
