"""Helpers for test suites (topgun's own and plugins'): real external services.

A test that needs PostgreSQL, Redis or NATS uses the real service. When it is unreachable the
test is skipped with the reason — unless `TOPGUN_REQUIRE_SERVICES=1` (CI), where a missing
service is a failure, so a broken machine cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

SERVICES: Final = {
    "postgres": ("127.0.0.1", 5432),
    "redis": ("127.0.0.1", 6379),
    "nats": ("127.0.0.1", 4222),
}
"""Where each service is expected on a development or CI machine."""


def services_required() -> bool:
    """True when `TOPGUN_REQUIRE_SERVICES=1`: an unreachable service fails the test."""
    return os.environ.get("TOPGUN_REQUIRE_SERVICES", "") == "1"


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to (`host`, `port`) opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> tuple[str, int]:
    """(host, port) of service `name`; skips the calling test when it is unreachable, or
    fails it under `TOPGUN_REQUIRE_SERVICES=1`."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(sorted(SERVICES))}")
    host, port = SERVICES[name]
    if not reachable(host, port):
        reason = f"{name} is not reachable on {host}:{port}"
        if services_required():
            pytest.fail(f"{reason} (TOPGUN_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return host, port


class LocalServer:
    """A server `local_server()` runs: its `url` and a way to mint tokens it accepts."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self._secret = secret

    def token(self, user: str = "alice", roles: tuple[str, ...] = ("ADMIN",)) -> str:
        """An HS256 JWT for `user` with `roles`, valid for an hour."""
        import time

        import jwt

        claims = {"sub": user, "roles": list(roles), "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self._secret, algorithm="HS256")


@contextlib.asynccontextmanager
async def local_server(**config: Any) -> AsyncIterator[LocalServer]:
    """Run a topgun server on 127.0.0.1 (a free port, memory storage, a random JWT secret)
    for the length of the block: for tests and runnable documentation. `config` overrides
    `ServerConfig` fields. Runs on asyncio (the server's ASGI host needs it)."""
    import secrets
    import tempfile
    from pathlib import Path

    import anyio

    from topgun.hooks import make_plugin_manager
    from topgun.server import AuthConfig, Secret, Server, ServerConfig, StorageConfig
    from topgun.server.app import create_app
    from topgun.server.serve import bound_address, host, listen_socket

    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=Path(data_dir),
            storage=StorageConfig(backend="memory"),
            auth=AuthConfig(jwt_secret=Secret(secret)),
            **config,
        )
        listener = listen_socket("127.0.0.1", 0)
        port = bound_address(listener)[1]
        pm = make_plugin_manager(entry_points=(), environ={})
        async with Server(settings, pm=pm) as server, anyio.create_task_group() as tg:
            stop = anyio.Event()

            async def shutdown_trigger() -> None:
                await stop.wait()
                await server.shutdown()

            tg.start_soon(
                lambda: host(
                    create_app(server), listener, settings, shutdown_trigger=shutdown_trigger
                )
            )
            try:
                yield LocalServer(f"ws://127.0.0.1:{port}", secret)
            finally:
                stop.set()
