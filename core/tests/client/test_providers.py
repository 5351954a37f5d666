"""Connection providers: the URL's scheme picks the provider registered through the
`register_connection_providers` hook (built in: `ws`, `wss`)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from topgun.client import TopGunClient, WebSocketConnector
from topgun.client.client import connector_for
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.testing import local_server

pytestmark = pytest.mark.anyio


class RelayPlugin:
    """Reaches `relay://host:port` servers over WebSocket (a stand-in for HTTP or SSE)."""

    @hookimpl
    def register_connection_providers(self, register: Any) -> None:
        register("relay", lambda url: WebSocketConnector("ws://" + url.split("://", 1)[1]))
        register("broken", lambda url: object())


def test_builtin_ws_provider_is_a_plugin_and_unknown_schemes_are_named() -> None:
    pm = make_plugin_manager(entry_points=(), environ={})
    assert isinstance(connector_for("wss://example.com/", pm=pm), WebSocketConnector)
    unknown = r"no connection provider for 'gopher'.*known: http, https, ws, wss"
    with pytest.raises(ValueError, match=unknown):
        connector_for("gopher://example.com", pm=pm)
    pm.register(RelayPlugin(), name="relay")
    with pytest.raises(TypeError, match=r"not a topgun\.client\.Connector"):
        connector_for("broken://x", pm=pm)


async def test_a_plugin_provider_carries_a_client() -> None:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(RelayPlugin(), name="relay")
    async with local_server() as server:
        url = server.url.replace("ws://", "relay://")
        async with TopGunClient(url, token=server.token(), pm=pm) as client:
            with anyio.fail_after(20):
                assert await client.map("m").set("k", 1, write_concern="APPLIED") == "APPLIED"
