"""The server's Prometheus metrics, in a registry of its own (served at `/metrics`).

Each `Server` has its own `CollectorRegistry`, so several servers in one process (tests,
simulations, an embedding application) never mix their figures. Latencies are measured
with `time.monotonic`, not the injected wall clock: they are operational figures, not
protocol time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from topgun.storage import StorageStatus

M = TypeVar("M", Counter, Histogram)

OP_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    60.0,
)
"""Seconds: from sub-millisecond in-memory acks up to the 60 s maximum write timeout."""


class ServerMetrics:
    """The metrics one server exports; `registry` is what `/metrics` renders.

    - `topgun_connections`: connections open now; `topgun_connections_accepted_total`: accepted
      since start; `topgun_connection_closes_total{code}`: closes by close code.
    - `topgun_messages_in_total{type}` / `topgun_messages_out_total{type}`: messages by
      wire type (an inbound frame that does not decode counts as `INVALID`).
    - `topgun_op_latency_seconds{kind}`: from receipt of an `OP_BATCH` / `CLIENT_OP` to its
      acknowledgement being queued.
    - `topgun_auth_failures_total`: `AUTH_FAIL`s sent (bad tokens, plugin refusals).
    - `topgun_storage_queue_depth`: changes waiting for a storage transaction;
      `topgun_storage_last_flush_seconds`: how long the last transaction took.
    - `topgun_storage_available`: 1 while the backend can commit, 0 while it cannot (a lost
      database connection being retried); `topgun_storage_retries`: failed storage attempts
      retried since start; `topgun_storage_staged`: changes accepted but not yet durable
      (a write-behind backlog).
    - under a storage memory budget (tiering): `topgun_tier_budget_bytes`,
      `topgun_tier_hot_bytes` (map values in memory and what live views keep, as the
      budget counts them), and the cold-value loads and evictions since start,
      `topgun_tier_loads` / `topgun_tier_evictions`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "topgun_connections", "Client connections open now.", registry=registry
        )
        self.connections_accepted = Counter(
            "topgun_connections_accepted", "Client connections accepted.", registry=registry
        )
        self.closes = Counter(
            "topgun_connection_closes",
            "Connections closed by the server or the client, by WebSocket close code.",
            ["code"],
            registry=registry,
        )
        self.messages_in = Counter(
            "topgun_messages_in", "Messages received, by wire type.", ["type"], registry=registry
        )
        self.messages_out = Counter(
            "topgun_messages_out", "Messages sent, by wire type.", ["type"], registry=registry
        )
        self.op_latency = Histogram(
            "topgun_op_latency_seconds",
            "Time from receiving a write request to queueing its acknowledgement.",
            ["kind"],
            buckets=OP_LATENCY_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "topgun_auth_failures", "Authentications refused (AUTH_FAIL sent).", registry=registry
        )
        self.storage_queue_depth = Gauge(
            "topgun_storage_queue_depth",
            "Storage changes submitted and not yet in a transaction.",
            registry=registry,
        )
        self.storage_last_flush = Gauge(
            "topgun_storage_last_flush_seconds",
            "Duration of the last storage transaction.",
            registry=registry,
        )
        self.storage_available = Gauge(
            "topgun_storage_available",
            "1 while the storage backend can commit, 0 while it cannot.",
            registry=registry,
        )
        self.storage_retries = Gauge(
            "topgun_storage_retries",
            "Failed storage attempts retried since the server started.",
            registry=registry,
        )
        self.storage_staged = Gauge(
            "topgun_storage_staged",
            "Storage changes accepted but not yet durable (write-behind backlog).",
            registry=registry,
        )
        self.storage_available.set(1)
        self._in: dict[str, Counter] = {}
        self._out: dict[str, Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def message_in(self, message_type: str) -> None:
        """Count one received message of wire type `message_type`."""
        _child(self._in, self.messages_in, message_type).inc()

    def message_out(self, message_type: str, count: int = 1) -> None:
        """Count `count` sent messages of wire type `message_type`."""
        _child(self._out, self.messages_out, message_type).inc(count)

    def op_done(self, message_type: str, seconds: float) -> None:
        """Observe the latency of one write request (`OP_BATCH`, `CLIENT_OP`), from its
        arrival to its acknowledgement."""
        _child(self._latency, self.op_latency, message_type).observe(seconds)

    def watch_tiering(
        self,
        budget_bytes: int,
        hot_bytes: Callable[[], float],
        loads: Callable[[], float],
        evictions: Callable[[], float],
    ) -> None:
        """Export the memory budget's gauges (only servers with one have them)."""
        for name, help_text, read in (
            ("topgun_tier_budget_bytes", "Memory budget for map values.", lambda: budget_bytes),
            ("topgun_tier_hot_bytes", "Map values and live views (estimated bytes).", hot_bytes),
            ("topgun_tier_loads", "Cold values loaded from storage since start.", loads),
            ("topgun_tier_evictions", "Values evicted from memory since start.", evictions),
        ):
            Gauge(name, help_text, registry=self.registry).set_function(read)

    def watch_storage(
        self,
        queue_depth: Callable[[], float],
        last_flush_seconds: Callable[[], float],
        status: Callable[[], StorageStatus] = StorageStatus,
    ) -> None:
        """Read the storage gauges from these callables whenever metrics are collected."""
        self.storage_queue_depth.set_function(queue_depth)
        self.storage_last_flush.set_function(last_flush_seconds)
        self.storage_available.set_function(lambda: float(status().available))
        self.storage_retries.set_function(lambda: status().retries)
        self.storage_staged.set_function(lambda: status().staged)


def _child(cache: dict[str, M], metric: M, label: str) -> M:
    """`metric.labels(label)`, kept in `cache`: `labels` takes a lock and builds a tuple, and
    these run for every message."""
    child = cache.get(label)
    if child is None:
        child = cache[label] = metric.labels(label)
    return child
