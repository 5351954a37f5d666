"""Hybrid logical clock (PROTOCOL.md §2.1): timestamps that follow wall time yet never go back.

The wall clock is a callable the caller injects (`clock() -> int` milliseconds), so the
clock is deterministic under test and simulation; this module never reads time itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from topgun.crdt.records import Timestamp

logger = logging.getLogger(__name__)

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest `millis`/`counter` a peer may send: JS numbers are exact only up to here."""

_SERVER_NODE_ID = re.compile(r"[0-9a-z-]+")


class ClockDriftError(Exception):
    """A remote timestamp is further ahead of the local clock than `max_drift_ms` (strict mode).

    `str(error)` is `"Clock drift"`, the op error string PROTOCOL.md §2.4 prescribes.
    """

    def __init__(self, remote: Timestamp, drift_ms: int, max_drift_ms: int) -> None:
        super().__init__("Clock drift")
        self.remote = remote
        self.drift_ms = drift_ms
        self.max_drift_ms = max_drift_ms


def check_node_id(node_id: str) -> str:
    """Return `node_id` if it can name an HLC node (non-empty, no `:`), else raise ValueError."""
    if not isinstance(node_id, str):
        raise TypeError(f"node id must be a str, got {type(node_id).__name__}")
    if not node_id:
        raise ValueError("node id must not be empty")
    if ":" in node_id:
        raise ValueError(
            f"node id {node_id!r} must not contain ':' (it separates HLC string parts)"
        )
    return node_id


def is_server_node_id(node_id: str) -> bool:
    """True if `node_id` follows the server rule `^[0-9a-z-]+$`, under which plain string order
    and the TS clients' locale collation agree (PROTOCOL.md §2.1, D1)."""
    return _SERVER_NODE_ID.fullmatch(node_id) is not None


def validate_timestamp(ts: Timestamp) -> Timestamp:
    """Return `ts` if it is a well-formed HLC reading (PROTOCOL.md §2.1), else raise ValueError."""
    if not isinstance(ts, Timestamp):
        raise TypeError(f"expected a Timestamp, got {type(ts).__name__}")
    millis, counter, node_id = ts.millis, ts.counter, ts.node_id
    if type(millis) is not int or not 0 <= millis <= MAX_SAFE_INTEGER:
        raise ValueError(f"timestamp millis must be an int in [0, 2^53), got {millis!r}")
    if type(counter) is not int or not 0 <= counter <= MAX_SAFE_INTEGER:
        raise ValueError(f"timestamp counter must be an int in [0, 2^53), got {counter!r}")
    if not isinstance(node_id, str) or ":" in node_id:
        raise ValueError(f"timestamp node id must be a str without ':', got {node_id!r}")
    return ts


class HLC:
    """A node's hybrid logical clock.

    `now()` stamps local events; `update(remote)` folds in a timestamp received from
    another node, so every later `now()` sorts after it. Readings from one clock strictly
    increase. A remote timestamp more than `max_drift_ms` ahead of the wall clock is logged
    and accepted, or, with `strict=True`, rejected with `ClockDriftError`.
    """

    __slots__ = ("_counter", "_millis", "clock", "max_drift_ms", "node_id", "strict")

    def __init__(
        self,
        node_id: str,
        clock: Callable[[], int],
        *,
        max_drift_ms: int = 60_000,
        strict: bool = False,
    ) -> None:
        if not callable(clock):
            raise TypeError("clock must be a callable returning epoch milliseconds")
        if isinstance(max_drift_ms, bool) or not isinstance(max_drift_ms, int) or max_drift_ms < 0:
            raise ValueError(f"max_drift_ms must be a non-negative int, got {max_drift_ms!r}")
        self.node_id = check_node_id(node_id)
        self.clock = clock
        self.max_drift_ms = max_drift_ms
        self.strict = strict
        self._millis = 0
        self._counter = 0

    @property
    def last(self) -> Timestamp:
        """The latest reading issued or observed (millis 0, counter 0 before any)."""
        return Timestamp(self._millis, self._counter, self.node_id)

    def wall_ms(self) -> int:
        """Read the injected clock, checking it returns non-negative integer milliseconds."""
        t = self.clock()
        if type(t) is not int or t < 0:
            raise ValueError(f"clock must return non-negative int milliseconds, got {t!r}")
        return t

    def now(self) -> Timestamp:
        """A new timestamp for a local event, greater than every earlier reading."""
        t = self.wall_ms()
        if t > self._millis:
            self._millis, self._counter = t, 0
        else:
            self._counter += 1
        return Timestamp(self._millis, self._counter, self.node_id)

    def now_many(self, count: int) -> list[Timestamp]:
        """`count` new timestamps, in increasing order, as `count` calls of `now` would
        give them but with one reading of the clock."""
        t = self.wall_ms()
        if t > self._millis:
            self._millis, self._counter = t, -1
        first = self._counter + 1
        self._counter += count
        millis, node_id = self._millis, self.node_id
        return [Timestamp(millis, counter, node_id) for counter in range(first, first + count)]

    def restore(self, mark: Timestamp) -> None:
        """Advance to at least `mark`, a reading this node issued before (its high-water mark
        kept across a restart), so every later reading sorts after it even if the wall clock
        went back meanwhile. Unlike `update`, no drift is checked and the counter is not
        stepped: `mark` is an old reading of this clock, not a received one."""
        validate_timestamp(mark)
        if (mark.millis, mark.counter) > (self._millis, self._counter):
            self._millis, self._counter = mark.millis, mark.counter

    def update(self, remote: Timestamp, *, checked: bool = False) -> None:
        """Fold in a received timestamp (§2.1), so that later readings sort after it.

        Raises ClockDriftError (strict mode) without changing the clock if `remote` is more
        than `max_drift_ms` ahead of the wall clock, and ValueError if it is malformed
        (unless `checked`: the caller validated it already).
        """
        if not checked:
            validate_timestamp(remote)
        t = self.wall_ms()
        drift = remote.millis - t
        if drift > self.max_drift_ms:
            if self.strict:
                raise ClockDriftError(remote, drift, self.max_drift_ms)
            logger.warning(
                "clock drift: remote timestamp %s is %d ms ahead of the local clock (max %d ms)",
                remote,
                drift,
                self.max_drift_ms,
            )
        last_millis, last_counter = self._millis, self._counter
        m = max(last_millis, t, remote.millis)
        if m == last_millis == remote.millis:
            counter = max(last_counter, remote.counter) + 1
        elif m == last_millis:
            counter = last_counter + 1
        elif m == remote.millis:
            counter = remote.counter + 1
        else:
            counter = 0
        self._millis, self._counter = m, counter
