"""The server's ASGI application: operations endpoints, plus what plugins register.

`create_app(server)` builds a Quart app with `/health`, `/ready` and `/metrics`, then calls
the `register_routes` hook, through which the built-in WebSocket transport
(`topgun.server.websocket`) and plugins add their endpoints. The app is plain ASGI: any
ASGI server can host it (`topgun serve` uses Hypercorn, or uvicorn).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from prometheus_client.exposition import choose_encoder
from quart import Quart, Response, request

from topgun.hooks import call_hook_sync

if TYPE_CHECKING:
    from topgun.server.server import Server


def create_app(server: Server) -> Quart:
    """The ASGI app serving `server`: its WebSocket, operations endpoints and plugin routes."""
    app = Quart("topgun", static_folder=None)

    @app.get("/health")
    async def health() -> Response:
        """200 while the process answers: a liveness probe."""
        return Response('{"status": "ok"}', content_type="application/json")

    @app.get("/ready")
    async def ready() -> Response:
        """200 once every map is loaded and connections are accepted and while storage can
        commit, else 503 (with the storage problem when that is why)."""
        if not server.ready:
            return Response('{"ready": false}', status=503, content_type="application/json")
        status = server.storage_status()
        if not status.available:
            body = json.dumps({"ready": False, "storage": status.problem or "unavailable"})
            return Response(body, status=503, content_type="application/json")
        return Response('{"ready": true}', content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        """The server's metrics: Prometheus text, or OpenMetrics when the scraper asks."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(server.metrics.registry), content_type=content_type)

    @app.before_request
    async def not_before_ready() -> Response | None:
        """Until the server is first ready (its maps loading), only the operations
        endpoints answer; every other HTTP route gets 503, so nothing reads or writes the
        maps before they are loaded."""
        if server.ready or server.stopping.is_set() or request.path in _OPERATIONS:
            return None
        return Response(
            '{"error": "Server not ready"}',
            status=503,
            content_type="application/json",
            headers={"Retry-After": "1"},
        )

    call_hook_sync(server.pm.hook.register_routes, app=app, server=server)
    return app


_OPERATIONS: Final = frozenset({"/health", "/ready", "/metrics"})
"""The paths served while the server starts."""
