"""The ASGI app (topgun/server/app.py): /health, /ready, /metrics, and plugin routes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import AuthRequired

pytestmark = pytest.mark.anyio


async def test_health_answers_200(live_server: Any) -> None:
    status, content_type, body = await live_server.get("/health")
    assert (status, content_type, body) == (200, "application/json", b'{"status": "ok"}')


async def test_ready_is_200_when_ready_and_503_once_shutting_down(live_server: Any) -> None:
    assert await live_server.get("/ready") == (200, "application/json", b'{"ready": true}')
    await live_server.server.shutdown()
    assert await live_server.get("/ready") == (503, "application/json", b'{"ready": false}')
    assert (await live_server.get("/health"))[0] == 200


async def test_metrics_are_prometheus_text_of_the_server_registry(live_server: Any) -> None:
    client = await live_server.client()
    status, content_type, body = await live_server.get("/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert [sample.value for sample in families["topgun_connections"].samples] == [1.0]
    assert "topgun_messages_in" in families
    assert "topgun_op_latency_seconds" in families
    await client.aclose()


async def test_plugins_add_http_and_websocket_routes(start_server: Any) -> None:
    class Routes:
        @hookimpl
        def register_routes(self, app: Any, server: Any) -> None:
            from quart import websocket

            @app.get("/hello")
            async def hello() -> str:
                return f"ready={server.ready}"

            @app.websocket("/plugin-ws")
            async def plugin_ws() -> None:
                await websocket.accept()
                await websocket.send(b"from the plugin")

    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(Routes(), name="routes")
    async with start_server(pm=pm) as live:
        assert await live.get("/hello") == (200, "text/html; charset=utf-8", b"ready=True")
        plugin = await live.connect("/plugin-ws")
        assert await plugin.ws.recv() == b"from the plugin"
        await plugin.aclose()
        topgun = await live.connect("/plugin-ws/other")
        await topgun.expect(AuthRequired)
        await topgun.aclose()
