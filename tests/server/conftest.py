"""A real server on a real socket, and a raw TopGun v2 client to talk to it.

- `running(config)`: a `Server` with its Quart app hosted on Hypercorn (or uvicorn) on
  127.0.0.1 port 0, in the test's own event loop; the `live_server` fixture is one with
  the default test configuration (`server_config`).
- `RawClient`: the wire protocol over the `websockets` library, an implementation
  independent of the server's. Every receive has a deadline; nothing sleeps.
- `ServeProcess`: `python -m topgun serve` as a subprocess, for the CLI's own behaviour
  (banner, bind errors, signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import anyio
import jwt
import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from topgun.hooks import TopgunPluginManager, make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    QueryUpdate,
    ServerMessage,
    decode_server_frame,
    encode,
)
from topgun.server import AuthConfig, Secret, ServerConfig, StorageConfig
from topgun.server.app import create_app
from topgun.server.serve import AsgiServer, bound_address, host, listen_socket
from topgun.server.server import Server

SECRET = "edges-test-secret-" + "0123456789abcdef" * 3
"""The HS256 secret every test server is configured with."""

DEADLINE = 5.0
"""Seconds any single expected event may take before a test fails (never a sleep)."""

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_FRAMES = ROOT / "core" / "tests" / "protocol" / "golden-frames"
"""Real frames a TS client exchanged with the reference server."""


def mint(
    *,
    sub: str = "alice",
    roles: Sequence[str] | None = ("ADMIN",),
    expires_in: int = 3600,
    secret: str = SECRET,
    **claims: Any,
) -> str:
    """An HS256 token for the test servers (`roles=None` leaves the claim out)."""
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + expires_in, **claims}
    if roles is not None:
        payload["roles"] = list(roles)
    return jwt.encode(payload, secret, algorithm="HS256")


class Closed(Exception):
    """The server closed the connection while a message was expected."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawClient:
    """One WebSocket connection speaking the protocol message by message.

    `recv()` returns server messages one at a time, a `BATCH` unpacked in order; the
    frames themselves are kept in `frames` for tests about framing.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self._pending: deque[ServerMessage] = deque()

    async def send(self, message: msgspec.Struct | Mapping[str, Any] | bytes | str) -> None:
        """Send a typed message, a plain map (msgpack), or a raw binary / text frame."""
        if isinstance(message, msgspec.Struct):
            await self.ws.send(encode(message))
        elif isinstance(message, bytes | str):
            await self.ws.send(message)
        else:
            await self.ws.send(msgspec.msgpack.encode(message))

    async def recv_frame(self, timeout: float = DEADLINE) -> bytes:
        """The next raw frame from the server."""
        with anyio.fail_after(timeout):
            try:
                frame = await self.ws.recv()
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                raise Closed(code, exc.rcvd.reason if exc.rcvd else "") from None
        assert isinstance(frame, bytes), f"server sent a text frame: {frame!r}"
        self.frames.append(frame)
        return frame

    async def recv(self, timeout: float = DEADLINE) -> ServerMessage:
        """The next server message."""
        if not self._pending:
            self._pending.extend(decode_server_frame(await self.recv_frame(timeout)))
        return self._pending.popleft()

    async def expect(self, kind: type[T], timeout: float = DEADLINE) -> T:
        """The next message, which must be a `kind`."""
        message = await self.recv(timeout)
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def expect_past_updates(self, kind: type[T], timeout: float = DEADLINE) -> T:
        """The next message that is not a `QUERY_UPDATE` (the live query deltas a write
        brings its subscribers, the writer included), which must be a `kind`."""
        message = await self.recv(timeout)
        while isinstance(message, QueryUpdate):
            message = await self.recv(timeout)
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def closed(self, timeout: float = DEADLINE) -> tuple[int | None, str]:
        """Wait for the server to close; the close code and reason. Messages before it are
        skipped."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    await self.recv_frame(timeout)
                except Closed as closed:
                    return closed.code, closed.reason

    async def authenticate(self, token: str | None = None) -> None:
        """AUTH_REQUIRED, then AUTH with `token` (an ADMIN token by default) → AUTH_ACK."""
        await self.expect(AuthRequired)
        await self.send(Auth(token=token or mint()))
        await self.expect(AuthAck)

    async def aclose(self) -> None:
        await self.ws.close()


@dataclass
class LiveServer:
    """A server listening on a real socket, in this process."""

    server: Server
    config: ServerConfig
    port: int
    tls: ssl.SSLContext | None = None
    """The client-side context trusting the server's certificate, when it serves TLS."""

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def connect(self, path: str = "/") -> RawClient:
        """A new raw client connection (closed by the caller, or when the server stops)."""
        return await connect_raw(self.url + path, self.tls)

    async def client(self, token: str | None = None) -> RawClient:
        """A new connection, already authenticated (ADMIN unless `token` says otherwise)."""
        client = await self.connect()
        await client.authenticate(token)
        return client

    async def get(self, path: str) -> tuple[int, str, bytes]:
        """HTTP GET: status, content type, body."""
        return await http_get(self.http_url + path, self.tls)


async def connect_raw(url: str, tls: ssl.SSLContext | None = None) -> RawClient:
    """A raw client connected to `url`."""
    with anyio.fail_after(DEADLINE):
        ws = await connect(url, ssl=tls, max_size=None)
    return RawClient(ws)


async def http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    """A plain HTTP GET in a worker thread (the standard library's client)."""

    def get() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=DEADLINE, context=context) as response:
                return response.status, response.headers["content-type"], response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["content-type"], error.read()

    return await anyio.to_thread.run_sync(get)


def plugin_manager() -> TopgunPluginManager:
    """Built-in plugins only: stray installed plugins stay out of the tests."""
    return make_plugin_manager(entry_points=(), environ={})


@contextlib.asynccontextmanager
async def running(
    config: ServerConfig,
    *,
    pm: TopgunPluginManager | None = None,
    asgi_server: AsgiServer = "hypercorn",
    client_tls: ssl.SSLContext | None = None,
) -> AsyncIterator[LiveServer]:
    """Start a server as `topgun serve` would, on a free port; shut it down gracefully on
    exit (`Server.shutdown()`, then the ASGI server stops)."""
    listener = listen_socket("127.0.0.1", 0)
    port = bound_address(listener)[1]
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(listener.close)  # a no-op once the ASGI server took it over
        # No deadline here: the server's task group must not live inside a cancel scope
        # that ends before it.
        server = await stack.enter_async_context(Server(config, pm=pm or plugin_manager()))
        stop = anyio.Event()

        async def shutdown_trigger() -> None:
            await stop.wait()
            await server.shutdown()

        app = create_app(server)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: host(
                    app,
                    listener,
                    config,
                    shutdown_trigger=shutdown_trigger,
                    asgi_server=asgi_server,
                )
            )
            yield LiveServer(server, config, port, client_tls)
            stop.set()


def make_config(data_dir: Path, **changes: Any) -> ServerConfig:
    """The test configuration: memory storage, the test secret, port 0, with `changes`."""
    base = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        node_id="test-server",
        storage=StorageConfig(backend="memory"),
        auth=AuthConfig(jwt_secret=Secret(SECRET)),
    )
    return msgspec.structs.replace(base, **changes)


@pytest.fixture
def server_config(tmp_path: Path) -> ServerConfig:
    return make_config(tmp_path / "data")


@pytest.fixture
async def live_server(server_config: ServerConfig) -> AsyncIterator[LiveServer]:
    async with running(server_config) as live:
        yield live


@pytest.fixture
def wire() -> Any:
    """The helpers for servers the fixtures did not start: `connect_raw(url)`,
    `http_get(url)`, `mint(...)`, `Closed`, `DEADLINE`."""
    return SimpleNamespace(
        connect_raw=connect_raw, http_get=http_get, mint=mint, Closed=Closed, DEADLINE=DEADLINE
    )


@pytest.fixture
def start_server(server_config: ServerConfig) -> Callable[..., Any]:
    """`start_server(**changes, pm=..., asgi_server=..., client_tls=...)`: an async context
    manager running a server on the test configuration with `changes`."""

    def start(
        *,
        pm: TopgunPluginManager | None = None,
        asgi_server: AsgiServer = "hypercorn",
        client_tls: ssl.SSLContext | None = None,
        **changes: Any,
    ) -> contextlib.AbstractAsyncContextManager[LiveServer]:
        config = msgspec.structs.replace(server_config, **changes)
        return running(config, pm=pm, asgi_server=asgi_server, client_tls=client_tls)

    return start


class ServeProcess:
    """`python -m topgun serve ARGS` in a subprocess with its output collected."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        full_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("TOPGUN_") or key == "TOPGUN_REQUIRE_SERVICES"
        }
        full_env.update({"TOPGUN_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1", **env})
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "topgun", "serve", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def banner(self, timeout: float = 15.0) -> list[str]:
        """The banner's lines, once the server printed it (it is then ready)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no banner within {timeout} s: {self.stdout}") from None
            if line is None:
                raise AssertionError(f"exited without a banner: {self.finish()}")
            self.stdout.append(line)
            if line.startswith("Press Ctrl+C"):
                return self.stdout

    @property
    def port(self) -> int:
        first = self.stdout[0]
        return int(first.split("://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """Wait for the exit: status and stderr."""
        try:
            _, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
            raise AssertionError(f"did not exit within {timeout} s; stderr: {stderr}") from None
        return self.process.returncode, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def serve_process(tmp_path: Path) -> Any:
    """Start `topgun serve` subprocesses (killed at teardown if still running)."""
    started: list[ServeProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> ServeProcess:
        process = ServeProcess(args, cwd=tmp_path, env=env or {})
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


_FORK_SERVER = """
import json, os, signal, sys
# What `topgun serve` imports, once (many of them lazily, when it starts serving).
import asyncio, anyio._backends._asyncio, h11, h2.connection, wsproto
import hypercorn.asyncio, hypercorn.config, quart
import topgun.cli, topgun.server.app, topgun.server.serve, topgun.server.server
try:
    import topgun_postgres.plugin
except ImportError:
    pass
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        try:
            topgun.cli.main(["serve", *request["args"]])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
"""


class ForkedServe:
    """`topgun serve ARGS` forked from a `ForkServer` (which imported topgun once): the
    same command as `ServeProcess` runs, started in a fraction of the time. Output goes
    to files in `folder`; the process is a child of the fork server (reaped by it)."""

    def __init__(self, pid: int, stdout: Path, stderr: Path) -> None:
        self.pid = pid
        self.stdout_file = stdout
        self.stderr_file = stderr
        self.stdout: list[str] = []

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def banner(self, timeout: float = 15.0) -> list[str]:
        """The banner's lines, once the server printed it (polled with a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.stdout_file.read_text().splitlines()
            if any(line.startswith("Press Ctrl+C") for line in lines):
                self.stdout = lines
                return lines
            if not self.alive():
                raise AssertionError(f"exited without a banner: {self.stderr_file.read_text()}")
            time.sleep(0.01)
        raise AssertionError(f"no banner within {timeout} s: {self.stderr_file.read_text()}")

    @property
    def port(self) -> int:
        first = self.stdout[0]
        return int(first.split("://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])

    def signal(self, signum: int = signal.SIGTERM) -> None:
        os.kill(self.pid, signum)

    def finish(self, timeout: float = 15.0) -> str:
        """Wait until the process is gone; its stderr."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"pid {self.pid} did not exit within {timeout} s")
            time.sleep(0.01)
        return self.stderr_file.read_text()

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """A Python process that has imported `topgun serve` and forks a server on request."""

    def __init__(self) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("TOPGUN_") or key == "TOPGUN_REQUIRE_SERVICES"
        }
        self.base_env = {**env, "TOPGUN_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started: list[ForkedServe] = []
        self._lock = threading.Lock()

    def start(self, *args: str, cwd: Path, env: Mapping[str, str] | None = None) -> ForkedServe:
        """Fork `topgun serve ARGS` in `cwd` with `env` added to the environment."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        with self._lock:
            count = len(self.started)
            stdout, stderr = cwd / f"serve-{count}.out", cwd / f"serve-{count}.err"
            stdout.touch()
            stderr.touch()
            request = {
                "args": list(args),
                "cwd": str(cwd),
                "env": {**self.base_env, **(env or {})},
                "stdout": str(stdout),
                "stderr": str(stderr),
            }
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            forked = ForkedServe(int(self.process.stdout.readline()), stdout, stderr)
            self.started.append(forked)
        return forked

    def close(self) -> None:
        for forked in self.started:
            forked.kill()
        self.process.kill()
        self.process.communicate()


@pytest.fixture
def fork_server() -> Any:
    """A `ForkServer` for tests that start `topgun serve` many times (crash tests)."""
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture
def pg_scratch() -> Any:
    """`pg_scratch(prefix)`: a `topgun_postgres.PostgresConfig` on a fresh schema of the
    test PostgreSQL, dropped at teardown (skips, or fails under
    `TOPGUN_REQUIRE_SERVICES=1`, when PostgreSQL is unreachable)."""
    from topgun_postgres.testing import scratch_schema

    with contextlib.ExitStack() as stack:
        yield lambda prefix="topgun_test": stack.enter_context(scratch_schema(prefix))


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed certificate for 127.0.0.1 and a client context that trusts it."""

    cert_file: Path
    key_file: Path
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Made with `cryptography` for this run: no certificate is checked in."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = ssl.create_default_context(cafile=str(cert_file))
    return TLSFiles(cert_file, key_file, client)
