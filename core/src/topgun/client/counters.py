"""PN counters shared through the server (PROTOCOL.md §5.11, §6.10).

Each client owns one entry per side (`p`, `n`) under its node id and only ever grows it, so
merges by per-node maximum sum every client's increments exactly. Increments made before the
server's state arrived (offline, or just after start) are added on top of what the server
holds for this node, so none is hidden by the maximum.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from topgun.client.engine import Engine
from topgun.crdt import PNCounter
from topgun.protocol import (
    CounterRequest,
    CounterRequestPayload,
    CounterResponse,
    CounterState,
    CounterStatePayload,
    CounterSync,
    CounterUpdate,
    Message,
)

__all__ = ["Counter"]

logger = logging.getLogger("topgun.client")


class Counter:
    """`increment(by)`, `decrement(by)`, `value`, `on_change(cb)`; synced in the background."""

    def __init__(self, engine: Engine, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"counter name must be a non-empty str, got {name!r}")
        self._engine = engine
        self.name = name
        self._key = f"counter:{name}"
        self._state = PNCounter(engine.node_id)
        self._early_p = 0.0
        self._early_n = 0.0
        self._loaded = False
        self._listeners: list[Callable[[float], None]] = []
        self.error: Exception | None = None
        engine.subscribe(self._key, self)

    @property
    def value(self) -> float:
        """Σp − Σn as this client knows it (its own changes included at once)."""
        return self._state.value + self._early_p - self._early_n

    def increment(self, by: float = 1) -> float:
        """Add `by` (finite, ≥ 0); returns the new value."""
        return self._change(by, 0)

    def decrement(self, by: float = 1) -> float:
        """Subtract `by` (finite, ≥ 0); returns the new value."""
        return self._change(0, by)

    def _change(self, p: float, n: float) -> float:
        if not self._loaded:
            PNCounter(self._engine.node_id).increment(p)  # validates `by`
            PNCounter(self._engine.node_id).decrement(n)
            self._early_p += p
            self._early_n += n
        else:
            self._state.increment(p)
            self._state.decrement(n)
            self._sync()
        self._notify()
        return self.value

    def on_change(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Call `listener(value)` after every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(self.value)
            except Exception:
                logger.exception("counter listener failed")

    def _sync(self) -> None:
        state = self._state.state
        self._engine.send(
            CounterSync(
                payload=CounterStatePayload(
                    name=self.name, state=CounterState.of(state["p"], state["n"])
                )
            )
        )

    # -- engine side -------------------------------------------------------------------------

    def subscribe_message(self) -> Message:
        if self._loaded:
            self._sync()  # changes made while offline
        return CounterRequest(payload=CounterRequestPayload(name=self.name))

    def handle(self, message: Message) -> None:
        if not isinstance(message, CounterResponse | CounterUpdate):
            return
        state = message.payload.state
        try:
            self._state.merge(*state.totals())
        except (TypeError, ValueError) as exc:
            logger.warning("ignored invalid counter state for %s: %s", self.name, exc)
            return
        if not self._loaded:
            self._loaded = True
            early_p, early_n, self._early_p, self._early_n = self._early_p, self._early_n, 0.0, 0.0
            if early_p or early_n:
                self._state.increment(early_p)
                self._state.decrement(early_n)
                self._sync()
        self._notify()

    def disconnected(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        self.error = error
        logger.warning("counter %s: %s", self.name, error)
