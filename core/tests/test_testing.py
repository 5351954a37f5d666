"""`topgun.testing`: services are found, or the test skips — or fails when required."""

from __future__ import annotations

import socket

import pytest

from topgun import testing


def test_reachable_sees_a_listening_socket_and_not_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert testing.reachable("127.0.0.1", port)
    assert not testing.reachable("127.0.0.1", port, timeout=0.5)


def test_unreachable_service_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    monkeypatch.setitem(testing.SERVICES, "postgres", ("127.0.0.1", free_port))
    monkeypatch.delenv("TOPGUN_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="postgres is not reachable"):
        testing.require_service("postgres")
    monkeypatch.setenv("TOPGUN_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="TOPGUN_REQUIRE_SERVICES=1"):
        testing.require_service("postgres")


def test_unknown_service_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown service 'mysql'"):
        testing.require_service("mysql")
