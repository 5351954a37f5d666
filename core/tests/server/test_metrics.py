"""Server metrics (topgun/server/metrics.py)."""

from __future__ import annotations

from prometheus_client import generate_latest

from topgun.server import ServerMetrics


def test_each_server_has_its_own_registry_with_the_documented_metrics() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.message_in("AUTH")
    first.message_out("PONG", 2)
    first.watch_storage(lambda: 7, lambda: 0.25)
    text = generate_latest(first.registry).decode()
    assert 'topgun_messages_in_total{type="AUTH"} 1.0' in text
    assert 'topgun_messages_out_total{type="PONG"} 2.0' in text
    assert "topgun_storage_queue_depth 7.0" in text
    assert "topgun_storage_last_flush_seconds 0.25" in text
    for name in (
        "topgun_connections",
        "topgun_connections_accepted_total",
        "topgun_auth_failures_total",
        "topgun_op_latency_seconds",
        "topgun_connection_closes_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name}" in text
    assert 'type="AUTH"' not in generate_latest(second.registry).decode()
