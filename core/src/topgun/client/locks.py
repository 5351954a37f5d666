"""Distributed locks with fencing tokens (PROTOCOL.md §5.10, §6.9).

    async with client.lock("invoice:42") as lease:
        write_somewhere(token=lease.fencing_token)

The fencing token increases with every grant of the same lock name, for the deployment's
lifetime: a resource that remembers the largest token it saw can refuse a holder whose
lease already expired. A lease is lost when the connection drops (the server releases the
locks of a closed connection): `lease.lost` says so.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from topgun.client.connection import ConnectionState
from topgun.client.engine import Engine
from topgun.client.errors import NotConnectedError
from topgun.client.replies import Reply
from topgun.protocol import (
    LockGranted,
    LockRelease,
    LockReleased,
    LockReleasePayload,
    LockRequest,
    LockRequestPayload,
    Message,
)

__all__ = ["Lock"]


class _Grant:
    """The pending request (then the held lease) of one `Lock`, as the engine routes it."""

    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.reply: Reply[int] = Reply()

    def subscribe_message(self) -> Message | None:
        return None

    def handle(self, message: Message) -> None:
        if isinstance(message, LockGranted):
            self.reply.set(message.payload.fencing_token)

    def disconnected(self) -> None:
        if self.reply.done:
            self.lock.lost = True
        self.reply.fail(NotConnectedError("connection dropped while waiting for the lock"))

    def fail(self, error: Exception) -> None:
        self.reply.fail(error)


class Lock:
    """A named lock: `await lock.acquire()` / `await lock.release()`, or `async with`."""

    def __init__(self, engine: Engine, name: str, ttl_ms: int) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"lock name must be a non-empty str, got {name!r}")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be a positive int, got {ttl_ms!r}")
        self._engine = engine
        self.name = name
        self.ttl_ms = ttl_ms
        self.fencing_token: int | None = None
        """The token of the current lease (None while not held)."""
        self.lost = False
        """True if the connection dropped while the lease was held."""
        self._request_id: str | None = None

    @property
    def held(self) -> bool:
        return self.fencing_token is not None and not self.lost

    async def acquire(self) -> int:
        """Wait until the lock is granted; returns the fencing token. Requests again after a
        reconnect if the connection dropped while waiting."""
        if self.held:
            raise RuntimeError(f"lock {self.name!r} is already held by this handle")
        engine = self._engine
        while True:
            await engine.wait_state(ConnectionState.CONNECTED)
            request_id = engine.new_id()
            grant = _Grant(self)
            engine.subscriptions[request_id] = grant
            engine.send(
                LockRequest(
                    payload=LockRequestPayload(
                        request_id=request_id, name=self.name, ttl=self.ttl_ms
                    )
                )
            )
            try:
                token = await grant.reply.wait()
            except NotConnectedError:
                engine.subscriptions.pop(request_id, None)
                continue
            except BaseException:
                engine.subscriptions.pop(request_id, None)
                raise
            self._request_id, self.fencing_token, self.lost = request_id, token, False
            return token

    async def release(self) -> bool:
        """Release the lease; True if the server still held it for this client."""
        token, request_id = self.fencing_token, self._request_id
        if token is None or request_id is None:
            raise RuntimeError(f"lock {self.name!r} is not held by this handle")
        self.fencing_token = self._request_id = None
        self._engine.subscriptions.pop(request_id, None)
        if self.lost:
            return False
        reply = await self._engine.request(
            release_id := self._engine.new_id(),
            LockRelease(
                payload=LockReleasePayload(
                    name=self.name, fencing_token=token, request_id=release_id
                )
            ),
        )
        return isinstance(reply, LockReleased) and reply.payload.success

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.fencing_token is not None:
            with contextlib.suppress(NotConnectedError):  # released with the connection
                await self.release()
