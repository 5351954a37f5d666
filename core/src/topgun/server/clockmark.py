"""The HLC high-water mark: the server's timestamps keep increasing across restarts.

Loading the maps advances the server's HLC past every stored record, but not every reading
ends up in a record: event and sync-response timestamps, OR-Map removals, journal events of
records since replaced or collected. If the wall clock is behind the last reading when the
server starts again (a clock stepped back, a host with a slower clock taking over the data
directory), new readings could sort before ones clients already hold. So the newest reading
is kept in the storage meta area (namespace `hlc`) — saved once a second while it moves, and
at shutdown — and the HLC is advanced to it on start (`HLC.restore`).

After a crash, readings of the last second may not have been saved; they are at risk only if
the wall clock also went back by more than that before the restart.
"""

from __future__ import annotations

import logging
from typing import Final

from topgun.crdt import HLC, Timestamp
from topgun.server.periodic import every
from topgun.storage import PutMeta, StorageBackend, Submit

logger = logging.getLogger(__name__)

HLC_NAMESPACE: Final = "hlc"
"""Meta-area namespace of the mark: key `last`, the reading's string form (UTF-8)."""
_KEY: Final = "last"
SAVE_INTERVAL_S: Final = 1.0
"""How often a moving mark is saved."""


class ClockMark:
    """Saves and restores the server HLC's newest reading."""

    def __init__(self, hlc: HLC) -> None:
        self.hlc = hlc
        self.saved: tuple[int, int] = (0, 0)
        """(millis, counter) of the reading last submitted for storage (a clock never read
        is at (0, 0): nothing to save)."""

    async def load(self, backend: StorageBackend) -> Timestamp | None:
        """Advance the HLC to the stored mark; returns it (`None` when none is stored).

        A mark that does not parse is logged and ignored: it can only make the clock
        advance, so losing it is no worse than not having it."""
        raw = (await backend.load_meta(HLC_NAMESPACE)).get(_KEY)
        if raw is None:
            return None
        try:
            mark = Timestamp.parse(raw.decode("utf-8"))
            self.hlc.restore(mark)
        except (UnicodeDecodeError, ValueError) as exc:
            logger.warning("ignoring the stored HLC high-water mark %r: %s", raw, exc)
            return None
        self.saved = (mark.millis, mark.counter)
        behind = mark.millis - self.hlc.wall_ms()
        if behind > self.hlc.max_drift_ms:
            logger.warning(
                "the wall clock is %d ms behind this server's last reading before the restart; "
                "its readings continue from that one (%s)",
                behind,
                mark,
            )
        return mark

    async def save(self, submit: Submit) -> bool:
        """Submit the newest reading if it moved since the last save; True if it did."""
        last = self.hlc.last
        if (last.millis, last.counter) <= self.saved:
            return False
        await submit([PutMeta(HLC_NAMESPACE, _KEY, str(last).encode("utf-8"))])
        self.saved = (last.millis, last.counter)
        return True

    async def run(self, submit: Submit) -> None:
        """Save every `SAVE_INTERVAL_S`, forever (a server background task)."""
        await every(
            SAVE_INTERVAL_S,
            lambda: self.save(submit),
            logger,
            "saving the HLC high-water mark failed; retrying next interval",
        )
