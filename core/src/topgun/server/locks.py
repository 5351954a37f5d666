"""Distributed locks with fencing tokens (PROTOCOL.md §5.10, §6.9).

A lock is a lease: `LOCK_REQUEST` grants it at once when it is free (or its lease ran out)
and queues the request otherwise (FIFO, no reply until granted); a request from the
connection already holding it extends the lease and keeps its token. `LOCK_RELEASE`
succeeds only for the holder with its token. Expiry, release and the holder's disconnect
all hand the lock to the next waiter still connected and not waiting longer than
`wait_timeout_ms` (stale waiters are dropped silently).

**Fencing tokens** come from a counter per lock name that never decreases: it outlives the
lock's state (which is discarded once the lock is free with nobody waiting) and is stored in
the storage meta area (namespace `"locks"`, 8 bytes big-endian). A token is committed to
storage *before* its `LOCK_GRANTED` is sent, so after a restart the counter resumes above
every token a client ever saw (a renewal's `LOCK_GRANTED` waits for that commit too).
Submissions to storage are made in token order under one lock, so a later commit never
stores a smaller value. A grant whose token cannot be stored
is not sent: the requester gets `ERROR 500` and the lock moves on.

Expiry uses a heap of deadlines (no scan over all locks): `expire(now)` pops what is due;
`run()` calls it every `EXPIRY_CHECK_MS`.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import msgspec

from topgun.protocol import (
    LockGranted,
    LockGrantedPayload,
    LockRelease,
    LockReleased,
    LockReleasedPayload,
    LockRequest,
    Message,
)
from topgun.server.periodic import every
from topgun.storage import PutMeta, StorageBackend, StorageError, Submit

if TYPE_CHECKING:
    from topgun.server.session import Session

logger = logging.getLogger(__name__)

META_NAMESPACE: Final = "locks"
"""The storage meta namespace holding each lock name's last fencing token."""

DEFAULT_TTL_MS: Final = 10_000
MIN_TTL_MS: Final = 1_000
MAX_TTL_MS: Final = 300_000
LOCK_WAIT_TIMEOUT_MS: Final = 30_000
"""Queued requests older than this are dropped silently (the TS client's wait)."""
EXPIRY_CHECK_MS: Final = 1_000
"""`run()` checks leases and waiters at least this often."""
MAX_TOKEN: Final = 2**53 - 1


class LockClient(Hashable, Protocol):
    """What a lock holder or waiter must offer (a `Session` does)."""

    @property
    def is_open(self) -> bool: ...

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> None: ...

    def send_error(self, code: int, message: str, details: object = None) -> None: ...


@dataclass(slots=True)
class _Request:
    client: LockClient
    request_id: str
    ttl_ms: int
    queued_ms: int


@dataclass(slots=True)
class _Lock:
    holder: LockClient | None = None
    token: int = 0
    expiry_ms: int = 0
    waiters: deque[_Request] = field(default_factory=deque)


def clamp_ttl(ttl: int | None) -> int:
    """The lease length for a requested `ttl` (default 10 000, clamped to [1 000, 300 000])."""
    if ttl is None:
        return DEFAULT_TTL_MS
    return min(max(ttl, MIN_TTL_MS), MAX_TTL_MS)


def encode_token(token: int) -> bytes:
    """A fencing token as stored in the meta area."""
    return token.to_bytes(8, "big")


def decode_token(name: str, blob: bytes) -> int:
    """A stored fencing token; `ValueError` naming the lock if it is not 8 bytes."""
    if len(blob) != 8:
        raise ValueError(f"stored fencing token of lock {name!r} is not 8 bytes")
    return int.from_bytes(blob, "big")


class LockManager:
    """Every lock of one server: holders, FIFO waiters, leases and fencing tokens."""

    def __init__(
        self, *, clock: Callable[[], int], wait_timeout_ms: int = LOCK_WAIT_TIMEOUT_MS
    ) -> None:
        self._clock = clock
        self.wait_timeout_ms = wait_timeout_ms
        self._locks: dict[str, _Lock] = {}
        self._tokens: dict[str, int] = {}
        self._durable: dict[str, int] = {}
        """The highest token of each name known to be committed to storage."""
        self._by_client: dict[LockClient, set[str]] = {}
        """The lock names each client asked for (what its disconnect must clean up)."""
        self._deadlines: list[tuple[int, int, str]] = []
        self._sequence = 0
        self._store: Submit | None = None
        self._store_order = anyio.Lock()

    async def load(self, backend: StorageBackend, store: Submit) -> None:
        """Resume every lock name's token counter from storage; store new tokens via `store`."""
        for name, blob in (await backend.load_meta(META_NAMESPACE)).items():
            self._tokens[name] = max(self._tokens.get(name, 0), decode_token(name, blob))
            self._durable[name] = self._tokens[name]
        self._store = store

    # -- queries ------------------------------------------------------------------------------

    def last_token(self, name: str) -> int:
        """The last fencing token issued for `name` (0: never granted)."""
        return self._tokens.get(name, 0)

    def holder(self, name: str) -> LockClient | None:
        """Who holds `name` now (an expired lease not yet swept still counts)."""
        lock = self._locks.get(name)
        return None if lock is None else lock.holder

    def waiting(self, name: str) -> int:
        """How many requests wait for `name`."""
        lock = self._locks.get(name)
        return 0 if lock is None else len(lock.waiters)

    @property
    def active(self) -> int:
        """How many lock names have a holder or waiters (idle ones are forgotten)."""
        return len(self._locks)

    # -- messages -----------------------------------------------------------------------------

    async def request(
        self, client: LockClient, request_id: str, name: str, ttl: int | None
    ) -> None:
        """`LOCK_REQUEST`: grant now, extend the caller's lease, or queue."""
        now = self._clock()
        ttl_ms = clamp_ttl(ttl)
        lock = self._locks.get(name)
        grants = [] if lock is None else self._expire_holder(name, lock, now)
        lock = self._locks.setdefault(name, lock or _Lock())
        self._by_client.setdefault(client, set()).add(name)
        if lock.holder is client:  # a renewal: same token (sent once it is committed)
            lock.expiry_ms = now + ttl_ms
            self._schedule(lock.expiry_ms, name)
            grants.append((name, _Request(client, request_id, ttl_ms, now), lock.token))
        else:
            lock.waiters.append(_Request(client, request_id, ttl_ms, now))
            self._schedule(now + self.wait_timeout_ms, name)
            if lock.holder is None:
                grants += self._grant_next(name, lock, now)
        await self._send_grants(grants)

    async def release(self, client: LockClient, name: str, token: int) -> bool:
        """`LOCK_RELEASE`: True iff `client` holds `name` with `token` (then the next
        waiter is granted)."""
        now = self._clock()
        lock = self._locks.get(name)
        if lock is None:
            return False
        grants = self._expire_holder(name, lock, now)
        released = lock.holder is client and lock.token == token
        if released:
            lock.holder = None
            if all(w.client is not client for w in lock.waiters):
                self._by_client.get(client, set()).discard(name)
            grants += self._grant_next(name, lock, now)
        await self._send_grants(grants)
        return released

    async def disconnected(self, client: LockClient) -> None:
        """Release every lock `client` holds and drop its waiting requests."""
        now = self._clock()
        grants: list[tuple[str, _Request, int]] = []
        for name in self._by_client.pop(client, ()):
            lock = self._locks.get(name)
            if lock is None:
                continue
            lock.waiters = deque(w for w in lock.waiters if w.client is not client)
            if lock.holder is client:
                lock.holder = None
            if lock.holder is None:
                grants += self._grant_next(name, lock, now)
        await self._send_grants(grants)

    async def expire(self, now: int | None = None) -> int:
        """End the leases and drop the waiters due by `now` (default: the clock); grant
        the freed locks. Returns how many leases ended."""
        now = self._clock() if now is None else now
        ended = 0
        grants: list[tuple[str, _Request, int]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, name = heapq.heappop(self._deadlines)
            lock = self._locks.get(name)
            if lock is None:
                continue
            had = lock.holder
            self._drop_stale(lock, now)
            grants += self._expire_holder(name, lock, now)
            if had is not None and lock.holder is not had:
                ended += 1
            if lock.holder is None and not lock.waiters and self._locks.get(name) is lock:
                del self._locks[name]
        await self._send_grants(grants)
        return ended

    async def run(self) -> None:
        """Check leases and waiters every `EXPIRY_CHECK_MS` (runs until cancelled)."""
        # Keep sweeping after a failure: one bad lock must not stop every lease.
        await every(EXPIRY_CHECK_MS / 1000, self.expire, logger, "the lock expiry sweep failed")

    # -- internals ----------------------------------------------------------------------------

    def _schedule(self, deadline: int, name: str) -> None:
        self._sequence += 1
        heapq.heappush(self._deadlines, (deadline, self._sequence, name))

    def _drop_stale(self, lock: _Lock, now: int) -> None:
        waiters = lock.waiters
        while waiters and (
            now - waiters[0].queued_ms >= self.wait_timeout_ms or not waiters[0].client.is_open
        ):
            waiters.popleft()

    def _expire_holder(self, name: str, lock: _Lock, now: int) -> list[tuple[str, _Request, int]]:
        if lock.holder is not None and lock.expiry_ms <= now:
            lock.holder = None
            return self._grant_next(name, lock, now)
        return []

    def _grant_next(self, name: str, lock: _Lock, now: int) -> list[tuple[str, _Request, int]]:
        """Hand a free lock to the first valid waiter (new token); forget an idle lock."""
        self._drop_stale(lock, now)
        if not lock.waiters:
            if self._locks.get(name) is lock:
                del self._locks[name]
            return []
        waiter = lock.waiters.popleft()
        token = self._tokens.get(name, 0) + 1
        if token > MAX_TOKEN:
            raise OverflowError(f"fencing tokens of lock {name!r} are exhausted")
        self._tokens[name] = token
        lock.holder = waiter.client
        lock.token = token
        lock.expiry_ms = now + waiter.ttl_ms
        self._schedule(lock.expiry_ms, name)
        return [(name, waiter, token)]

    async def _send_grants(self, grants: list[tuple[str, _Request, int]]) -> None:
        """Commit each granted token to storage, then send `LOCK_GRANTED`."""
        for name, waiter, token in grants:
            if self._durable.get(name, 0) >= token or await self._persist(name):
                waiter.client.send(
                    LockGranted(
                        payload=LockGrantedPayload(
                            request_id=waiter.request_id, name=name, fencing_token=token
                        )
                    )
                )
                continue
            waiter.client.send_error(
                500,
                "Lock not granted: its fencing token could not be stored",
                {"type": "LOCK_REQUEST", "requestId": waiter.request_id, "name": name},
            )
            lock = self._locks.get(name)
            if lock is not None and lock.holder is waiter.client and lock.token == token:
                lock.holder = None
                await self._send_grants(self._grant_next(name, lock, self._clock()))

    async def _persist(self, name: str) -> bool:
        if self._store is None:
            raise RuntimeError("LockManager.load() was not called: tokens cannot be stored")
        try:
            async with self._store_order:  # submissions in token order
                value = self._tokens[name]
                commit = await self._store([PutMeta(META_NAMESPACE, name, encode_token(value))])
            await commit.wait()
        except StorageError as exc:
            logger.error("storing the fencing token of lock %r failed: %s", name, exc)
            return False
        self._durable[name] = max(self._durable.get(name, 0), value)
        return True


def _details(type_name: str, request_id: str | None, name: str) -> dict[str, str]:
    details = {"type": type_name, "name": name}
    if request_id is not None:
        details["requestId"] = request_id
    return details


async def lock_request(session: Session, message: LockRequest) -> None:
    """`LOCK_REQUEST`: PUT on `lock:<name>` (else `ERROR 403`), then grant or queue."""
    request = message.payload
    principal = session.principal
    assert principal is not None
    server = session.server
    if not server.security.is_allowed(principal, f"lock:{request.name}", "PUT"):
        session.send_error(
            403,
            f"Access denied for lock {request.name}",
            _details("LOCK_REQUEST", request.request_id, request.name),
        )
        return
    await server.locks.request(session, request.request_id, request.name, request.ttl)


async def lock_release(session: Session, message: LockRelease) -> None:
    """`LOCK_RELEASE`: always answered with `LOCK_RELEASED{success}`."""
    request = message.payload
    success = await session.server.locks.release(session, request.name, request.fencing_token)
    session.send(
        LockReleased(
            payload=LockReleasedPayload(
                request_id=request.request_id or "", name=request.name, success=success
            )
        )
    )


LOCK_HANDLERS: Final[dict[type[Message], Callable[[Session, Any], Awaitable[None]]]] = {
    LockRequest: lock_request,
    LockRelease: lock_release,
}
"""This module's entries of the dispatch table (`topgun.server.dispatch.HANDLERS`)."""
