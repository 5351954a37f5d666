"""Deliberate bugs, switched on only inside a simulation run, to prove the checks can fail.

A simulator that never fails proves nothing: `topgun sim --bug lww-equal-lower-node` runs
with a broken LWW merge and must report a violation within a few hundred seeds (a test
holds it to that). The switch patches production code only for the duration of the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Final

from topgun.crdt.lww import LWWMap
from topgun.crdt.records import LWWRecord

__all__ = ["BUGS", "injected"]


def _lww_equal_lower_node(merge: Callable[[LWWMap, str, LWWRecord], bool]) -> Callable[..., bool]:
    """LWW merge that also accepts a record whose (millis, counter) equals the current one's
    when it comes from a *lower* node id — so the last arrival wins a tie, and replicas that
    see a tie in different orders diverge."""

    def buggy(self: LWWMap, key: str, record: LWWRecord) -> bool:
        current = self._records.get(key)
        if current is not None:
            mine, theirs = current.timestamp, record.timestamp
            if (mine.millis, mine.counter) == (theirs.millis, theirs.counter) and (
                theirs.node_id < mine.node_id
            ):
                self._hlc.update(theirs)
                self._store(key, record)
                return True
        return merge(self, key, record)

    return buggy


BUGS: Final = {"lww-equal-lower-node": (LWWMap, "merge", _lww_equal_lower_node)}
"""Name -> (class, method, wrapper) of each injectable bug."""


@contextlib.contextmanager
def injected(name: str | None) -> Iterator[None]:
    """Run the block with bug `name` switched on (`None`: no bug)."""
    if name is None:
        yield
        return
    if name not in BUGS:
        raise ValueError(f"unknown bug {name!r}; known: {', '.join(sorted(BUGS))}")
    owner, attribute, wrap = BUGS[name]
    original = getattr(owner, attribute)
    setattr(owner, attribute, wrap(original))
    try:
        yield
    finally:
        setattr(owner, attribute, original)
