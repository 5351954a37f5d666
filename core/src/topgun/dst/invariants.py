"""What must hold after a simulated run, checked against what the run recorded.

- **convergence**: after quiescence every client's live data (and counters) equal the
  server's; **or-convergence**: likewise each OR-Map key's values;
- **no acknowledged write lost**: the server's record of each key is at least as new as every
  write to it the server acknowledged;
- **no resurrection**: every final record is one that some client wrote (nothing from
  nowhere), so a removed key is live only if a newer write set it;
- **HLC monotonic**: the timestamps each node (server, every client) issued strictly increase;
- **live queries**: each client's live query view equals a fresh run of the same query;
- **counters**: every replica's counter equals the sum of all increments made;
- **fencing**: lock fencing tokens strictly increase in grant order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from topgun.crdt import LWWRecord, Timestamp

__all__ = ["InvariantChecker", "Violation", "WriteRecord"]


@dataclass(frozen=True)
class Violation:
    """A broken invariant: its name and what was seen."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass(frozen=True)
class WriteRecord:
    """One write a client made: the record it carried, and whether the server acked it."""

    client: str
    map_name: str
    key: str
    record: LWWRecord


@dataclass
class InvariantChecker:
    """Collects what a run did; `check(...)` lists what it violated."""

    writes: list[WriteRecord] = field(default_factory=list)
    acked: set[tuple[str, str, Timestamp]] = field(default_factory=set)
    """(map, key, timestamp) of each write the server acknowledged."""
    issued: dict[str, list[Timestamp]] = field(default_factory=dict)
    """Node id -> every timestamp it issued, in order."""
    increments: float = 0.0
    fencing: list[tuple[str, int]] = field(default_factory=list)
    """(lock, token) in grant order."""

    def wrote(self, write: WriteRecord) -> None:
        self.writes.append(write)

    def acknowledged(self, write: WriteRecord) -> None:
        self.acked.add((write.map_name, write.key, write.record.timestamp))

    def stamped(self, node_id: str, timestamp: Timestamp) -> None:
        self.issued.setdefault(node_id, []).append(timestamp)

    def check(
        self,
        *,
        server_maps: Mapping[str, Mapping[str, LWWRecord]],
        client_maps: Mapping[str, Mapping[str, Mapping[str, LWWRecord]]],
        server_counter: float | None,
        client_counters: Mapping[str, float],
        live_views: Iterable[tuple[str, str, Any, Any]] = (),
        server_sets: Mapping[str, list[Any]] | None = None,
        client_sets: Mapping[str, Mapping[str, list[Any]]] | None = None,
    ) -> list[Violation]:
        """Every violation, given the final state: the server's maps (name -> key -> record),
        each client's maps, the counter's value on the server and each client, and
        (client, query, live rows, fresh rows) per live query."""
        found: list[Violation] = []
        found += self._convergence(server_maps, client_maps)
        found += self._set_convergence(server_sets or {}, client_sets or {})
        found += self._durability(server_maps)
        found += self._provenance(server_maps)
        found += self._monotonic()
        found += self._counters(server_counter, client_counters)
        found += self._fencing()
        for client, query, live, fresh in live_views:
            if live != fresh:
                found.append(
                    Violation("live-query", f"{client} {query}: live view {live} != fresh {fresh}")
                )
        return found

    @staticmethod
    def _convergence(
        server_maps: Mapping[str, Mapping[str, LWWRecord]],
        client_maps: Mapping[str, Mapping[str, Mapping[str, LWWRecord]]],
    ) -> list[Violation]:
        found = []
        for client, maps in client_maps.items():
            for name, held in maps.items():
                # Live data must be equal; a tombstone of a key the client never held need
                # not reach it (the server sends events only for keys its queries watch).
                records = {k: r for k, r in held.items() if r.value is not None}
                server = {k: r for k, r in server_maps.get(name, {}).items() if r.value is not None}
                if records != server:
                    keys = sorted(set(records) | set(server))
                    diff = [
                        (k, records.get(k), server.get(k))
                        for k in keys
                        if records.get(k) != server.get(k)
                    ][:3]
                    found.append(
                        Violation(
                            "convergence", f"{client} differs from the server on {name}: {diff}"
                        )
                    )
        return found

    @staticmethod
    def _set_convergence(
        server: Mapping[str, list[Any]], clients: Mapping[str, Mapping[str, list[Any]]]
    ) -> list[Violation]:
        """OR-Map: every client holds the server's values under each key (as multisets)."""

        def normal(sets: Mapping[str, list[Any]]) -> dict[str, list[str]]:
            return {key: sorted(map(repr, values)) for key, values in sets.items() if values}

        expected = normal(server)
        found = []
        for client, sets in clients.items():
            held = normal(sets)
            if held != expected:
                keys = sorted(
                    k for k in set(held) | set(expected) if held.get(k) != expected.get(k)
                )
                detail = f"{client} differs from the server on the OR-Map at {keys[:3]}"
                found.append(Violation("or-convergence", detail))
        return found

    def _durability(self, server_maps: Mapping[str, Mapping[str, LWWRecord]]) -> list[Violation]:
        found = []
        for map_name, key, timestamp in sorted(self.acked, key=repr):
            final = server_maps.get(map_name, {}).get(key)
            if final is None or final.timestamp < timestamp:
                found.append(
                    Violation(
                        "acked-write-lost",
                        f"{map_name}/{key}: acknowledged write at {timestamp}, server has "
                        f"{None if final is None else final.timestamp}",
                    )
                )
        return found

    def _provenance(self, server_maps: Mapping[str, Mapping[str, LWWRecord]]) -> list[Violation]:
        written = {(w.map_name, w.key, w.record.timestamp): w.record for w in self.writes}
        found = []
        for map_name, records in server_maps.items():
            for key, record in records.items():
                if written.get((map_name, key, record.timestamp)) != record:
                    found.append(
                        Violation("resurrection", f"{map_name}/{key}: {record} was never written")
                    )
        return found

    def _monotonic(self) -> list[Violation]:
        found = []
        for node, stamps in self.issued.items():
            for before, after in itertools.pairwise(stamps):
                if not before < after:
                    found.append(
                        Violation("hlc-monotonic", f"{node} issued {after} after {before}")
                    )
                    break
        return found

    def _counters(
        self, server_counter: float | None, client_counters: Mapping[str, float]
    ) -> list[Violation]:
        found = []
        expected = self.increments
        for name, value in [("server", server_counter), *client_counters.items()]:
            if value is not None and value != expected:
                found.append(
                    Violation("counter", f"{name} counts {value}, increments sum to {expected}")
                )
        return found

    def _fencing(self) -> list[Violation]:
        found = []
        last: dict[str, int] = {}
        for lock, token in self.fencing:
            if lock in last and token <= last[lock]:
                found.append(
                    Violation("fencing", f"lock {lock}: token {token} granted after {last[lock]}")
                )
            last[lock] = token
        return found
