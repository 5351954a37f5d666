"""Fixtures of the client tests: real servers (in-process and `topgun serve` subprocesses,
from tests/server/conftest.py), tokens, and a TCP proxy that cuts connections on demand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest

_spec = importlib.util.spec_from_file_location(
    "topgun_tests_server_conftest", Path(__file__).parents[1] / "server" / "conftest.py"
)
assert _spec is not None
assert _spec.loader is not None
server_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = server_fixtures
_spec.loader.exec_module(server_fixtures)

SECRET = server_fixtures.SECRET
mint = server_fixtures.mint
running = server_fixtures.running
make_config = server_fixtures.make_config
ServeProcess = server_fixtures.ServeProcess
server_config = server_fixtures.server_config
live_server = server_fixtures.live_server
start_server = server_fixtures.start_server
serve_process = server_fixtures.serve_process

DEADLINE = 20.0
"""Seconds a whole client flow may take before a test fails (generous: loaded machines)."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Client flows run under both anyio backends."""
    return str(request.param)


class CuttingProxy:
    """A TCP proxy in front of a server: `cut()` drops every open connection abruptly,
    at whatever point of the byte stream it happens to be."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0
        self.accepted = 0
        self._scopes: set[anyio.CancelScope] = set()
        self._flowing = anyio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Stop forwarding bytes (connections stay open) until `resume()`."""
        self._flowing = anyio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self.cuts += 1
        for scope in list(self._scopes):
            scope.cancel()

    async def _pipe(self, source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in source:
                await self._flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            except OSError:
                return
            async with upstream:
                with anyio.CancelScope() as scope:
                    self._scopes.add(scope)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pipe, client, upstream)
                        await self._pipe(upstream, client)
                        tg.cancel_scope.cancel()
                self._scopes.discard(scope)


async def start_proxy(tg: anyio.abc.TaskGroup, upstream_port: int) -> CuttingProxy:
    proxy = CuttingProxy(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve() -> None:
        async with listener:
            await listener.serve(proxy._handle)

    tg.start_soon(serve)
    return proxy


@pytest.fixture
def kit() -> object:
    """Helpers for tests: `mint`, `running`, `make_config`, `start_proxy`, `DEADLINE`."""
    from types import SimpleNamespace

    return SimpleNamespace(
        mint=mint,
        running=running,
        make_config=make_config,
        start_proxy=start_proxy,
        DEADLINE=DEADLINE,
        SECRET=SECRET,
    )
