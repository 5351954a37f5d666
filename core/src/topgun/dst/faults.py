"""The fault kinds a simulation can inject."""

from __future__ import annotations

from typing import Final

__all__ = ["ALL_FAULTS", "DEFAULT_FAULTS"]

DEFAULT_FAULTS: Final = frozenset({"latency", "drop", "partition", "restart", "crash", "skew"})
"""Faults of a default run: each keeps the transport's guarantees (ordered frames).

- `latency`: 1-80 ms per frame instead of 1 ms;
- `drop`: the network drops a client's connection;
- `partition`: a client is cut off for up to 30 s (its frames wait, heartbeats may close);
- `restart`: the server restarts gracefully (drains storage, closes with 1001);
- `crash`: a restart is a crash half the time (only committed storage survives);
- `skew`: half the clients run with a wall clock up to 500 ms off."""

ALL_FAULTS: Final = DEFAULT_FAULTS | {"loss", "duplicate", "reorder"}
"""Also frame faults that a stream transport (TCP) does not have: `loss` (a lost frame takes
its connection down with it), `duplicate`, `reorder`."""
