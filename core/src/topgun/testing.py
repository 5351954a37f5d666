"""Helpers for test suites (topgun's own and plugins'): real external services.

A test that needs PostgreSQL, Redis or NATS uses the real service. When it is unreachable the
test is skipped with the reason — unless `TOPGUN_REQUIRE_SERVICES=1` (CI), where a missing
service is a failure, so a broken machine cannot pass by skipping.
"""

from __future__ import annotations

import os
import socket
from typing import Final

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
