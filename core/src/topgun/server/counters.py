"""PN counters (PROTOCOL.md §2.3, §5.11, §6.10).

`COUNTER_REQUEST` (READ on `counter:<name>`) subscribes the connection and answers
`COUNTER_RESPONSE` with the state. `COUNTER_SYNC` (PUT on `counter:<name>`) merges the
client's state (per-node maximum, `topgun.crdt.PNCounter`), subscribes the sender, and
sends `COUNTER_UPDATE` to the sender and every other subscriber. Input may use `{p, n}`,
`{positive, negative}` or both; output always carries both pairs with the same content.

**Interceptors**: a `COUNTER_SYNC` is a client write, so it passes through the
`before_op` and `after_op` hooks like a map op. The `op` those hooks see is the decoded
`topgun.protocol.CounterSync` message. `before_op` may keep it (`None`), replace it (with
another `CounterSync`, authorized again), drop it (`DROP`: `ERROR 403 "Dropped by server
policy"`) or reject it (`Rejected`: `ERROR` with its code, 403 by default); nothing is
merged then. `after_op` gets the op as merged (or refused) and an `OpResult` whose `opId`
is `counter:<name>` and whose `achievedLevel` is `APPLIED`.

**Persistence**: after each merge that changed a counter, its state is submitted to the
storage meta area (namespace `"counters"`, msgpack `{"p": {...}, "n": {...}}`) and loaded
back at start. Submissions are made one at a time with the state current at that moment,
so a later commit never stores an older state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import msgspec

from topgun.crdt import PNCounter
from topgun.hooks import DROP, Rejected, call_chain_async, call_hook_async
from topgun.protocol import (
    CounterRequest,
    CounterResponse,
    CounterState,
    CounterStatePayload,
    CounterSync,
    CounterUpdate,
    Message,
    OpResult,
)
from topgun.server.writes import WriteContext
from topgun.storage import PutMeta, StorageBackend, StorageError, Submit

if TYPE_CHECKING:
    from topgun.server.session import Session

logger = logging.getLogger(__name__)

META_NAMESPACE: Final = "counters"
"""The storage meta namespace holding each counter's state."""


class CounterSubscriber(Hashable, Protocol):
    """What a counter subscriber must offer: a non-blocking frame queue."""

    def send_frame(self, frame: bytes, message_type: str) -> None: ...


class _Stored(msgspec.Struct):
    """A counter as stored (integers stay integers, so sums stay exact)."""

    p: dict[str, int | float]
    n: dict[str, int | float]


class CounterRegistry:
    """Every counter of one server: its state, its subscribers, and its persistence."""

    def __init__(self, *, node_id: str, encode: Callable[[CounterUpdate], bytes]) -> None:
        self._node_id = node_id
        self._encode = encode
        self._counters: dict[str, PNCounter] = {}
        self._subscribers: dict[str, dict[CounterSubscriber, None]] = {}
        self._by_subscriber: dict[CounterSubscriber, set[str]] = {}
        self._store: Submit | None = None
        self._store_order = anyio.Lock()

    async def load(self, backend: StorageBackend, store: Submit) -> int:
        """Load every stored counter; later merges are stored via `store`. Returns how many."""
        stored = await backend.load_meta(META_NAMESPACE)
        for name, blob in stored.items():
            try:
                state = msgspec.msgpack.decode(blob, type=_Stored)
                self._counter(name).merge(state.p, state.n)
            except (msgspec.DecodeError, ValueError) as exc:
                raise ValueError(f"stored state of counter {name!r} is invalid: {exc}") from exc
        self._store = store
        return len(stored)

    def _counter(self, name: str) -> PNCounter:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = PNCounter(self._node_id)
        return counter

    def state(self, name: str) -> CounterState:
        """The counter's state with both pairs (an unknown counter is empty)."""
        counter = self._counters.get(name)
        p, n = ({}, {}) if counter is None else (counter.state["p"], counter.state["n"])
        return CounterState.of(p, n)

    def value(self, name: str) -> float:
        """Σp − Σn of the counter (0 if unknown)."""
        counter = self._counters.get(name)
        return 0 if counter is None else counter.value

    def subscribe(self, subscriber: CounterSubscriber, name: str) -> None:
        """Send this subscriber every later `COUNTER_UPDATE` of `name`."""
        self._subscribers.setdefault(name, {})[subscriber] = None
        self._by_subscriber.setdefault(subscriber, set()).add(name)

    def subscribers(self, name: str) -> int:
        """How many connections are subscribed to `name`."""
        return len(self._subscribers.get(name, ()))

    def drop(self, subscriber: CounterSubscriber) -> None:
        """End every subscription of `subscriber` (it disconnected)."""
        for name in self._by_subscriber.pop(subscriber, ()):
            members = self._subscribers[name]
            members.pop(subscriber, None)
            if not members:
                del self._subscribers[name]

    async def merge(self, name: str, state: CounterState) -> bool:
        """Merge `state` (either pair, or both); True if the counter grew (then it is
        submitted to storage). `ValueError` if an entry is invalid: nothing merged."""
        p, n = state.totals()
        changed = self._counter(name).merge(p, n)
        if changed:
            await self._persist(name)
        return changed

    def broadcast(self, name: str) -> int:
        """Queue `COUNTER_UPDATE` with the current state for every subscriber of `name`."""
        members = list(self._subscribers.get(name, ()))
        if members:
            frame = self._encode(
                CounterUpdate(payload=CounterStatePayload(name=name, state=self.state(name)))
            )
            for subscriber in members:
                subscriber.send_frame(frame, "COUNTER_UPDATE")
        return len(members)

    async def _persist(self, name: str) -> None:
        if self._store is None:
            raise RuntimeError("CounterRegistry.load() was not called: counters cannot be stored")
        try:
            async with self._store_order:  # each submission holds the newest state
                state = self._counters[name].state
                blob = msgspec.msgpack.encode(_Stored(p=state["p"], n=state["n"]))
                await self._store([PutMeta(META_NAMESPACE, name, blob)])
        except StorageError as exc:
            logger.error("storing counter %r failed: %s", name, exc)


def _details(type_name: str, name: str) -> dict[str, str]:
    return {"type": type_name, "name": name}


async def counter_request(session: Session, message: CounterRequest) -> None:
    """`COUNTER_REQUEST`: READ on `counter:<name>` (else 403); subscribe; the state."""
    name = message.payload.name
    principal = session.principal
    assert principal is not None
    server = session.server
    if not server.security.is_allowed(principal, f"counter:{name}", "READ"):
        session.send_error(
            403, f"Access denied for counter {name}", _details("COUNTER_REQUEST", name)
        )
        return
    server.counters.subscribe(session, name)
    session.send(
        CounterResponse(payload=CounterStatePayload(name=name, state=server.counters.state(name)))
    )


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _intercept(session: Session, op: CounterSync, context: WriteContext) -> CounterSync:
    """The op as the `before_op` plugins leave it; `_Refused` if dropped or rejected."""
    server = session.server
    try:
        result = await call_chain_async(server.pm.hook.before_op, "op", op=op, context=context)
    except Rejected as rejected:
        raise _Refused(rejected.code or 403, rejected.reason) from None
    except Exception:
        logger.exception("a before_op plugin failed on COUNTER_SYNC %r", op.payload.name)
        raise _Refused(500, "Internal error: a server plugin failed") from None
    if result is DROP:
        raise _Refused(403, "Dropped by server policy")
    if not isinstance(result, CounterSync):
        logger.error(
            "before_op returned %s for a COUNTER_SYNC; it must return None, DROP or a "
            "topgun.protocol.CounterSync",
            type(result).__name__,
        )
        raise _Refused(500, "Internal error: a server plugin failed")
    return result


def _authorize(session: Session, name: str) -> None:
    principal = session.principal
    assert principal is not None
    if not session.server.security.is_allowed(principal, f"counter:{name}", "PUT"):
        raise _Refused(403, f"Access denied for counter {name}")


async def counter_sync(session: Session, message: CounterSync) -> None:
    """`COUNTER_SYNC`: PUT on `counter:<name>` (else 403), `before_op`, merge, subscribe
    the sender, `COUNTER_UPDATE` to every subscriber, `after_op`."""
    server = session.server
    principal = session.principal
    assert principal is not None
    context = WriteContext(principal, session)
    op = message
    error: _Refused | None = None
    try:
        _authorize(session, op.payload.name)
        if server.pm.hook.before_op.get_hookimpls():
            replaced = await _intercept(session, op, context)
            if replaced is not op:
                op = replaced
                _authorize(session, op.payload.name)
        await server.counters.merge(op.payload.name, op.payload.state)
    except _Refused as refused:
        error = refused
        session.send_error(refused.code, refused.reason, _details("COUNTER_SYNC", op.payload.name))
    else:
        server.counters.subscribe(session, op.payload.name)
        server.counters.broadcast(op.payload.name)
    if server.pm.hook.after_op.get_hookimpls():
        result = OpResult(
            op_id=f"counter:{op.payload.name}",
            success=error is None,
            achieved_level="APPLIED",
            error=None if error is None else error.reason,
        )
        try:
            await call_hook_async(server.pm.hook.after_op, op=op, context=context, result=result)
        except Exception:
            logger.exception("an after_op plugin failed (the COUNTER_SYNC stands)")


COUNTER_HANDLERS: Final[dict[type[Message], Callable[[Session, Any], Awaitable[None]]]] = {
    CounterRequest: counter_request,
    CounterSync: counter_sync,
}
"""This module's entries of the dispatch table (`topgun.server.dispatch.HANDLERS`)."""
