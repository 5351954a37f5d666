"""The blocking facade: the async client on a background event loop, for scripts and
notebooks.

    from topgun.client.sync import TopGunClient

    with TopGunClient("ws://localhost:8080", token=token) as client:
        todos = client.map("todos")
        todos.set("t1", {"title": "write docs"})
        print(todos.get("t1"))

Every call runs on the client's own event loop thread (an anyio blocking portal) and
returns when it finished there; callbacks (`on_change`, `on_message`, …) are called on
that thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from topgun.client import client as aio
from topgun.client.connection import ConnectionState
from topgun.client.counters import Counter
from topgun.client.engine import ConflictEvent
from topgun.client.journal import JournalPage
from topgun.client.live import Change, LiveQuery
from topgun.client.locks import Lock
from topgun.client.maps import LWWMapHandle, ORMapHandle
from topgun.client.topics import Topic, TopicEvent
from topgun.client.writes import WriteHandle
from topgun.crdt import LWWRecord
from topgun.protocol import WriteConcern

T = TypeVar("T")

__all__ = ["LWWMap", "LiveQueryView", "ORMap", "TopGunClient"]


class LWWMap:
    """Blocking view of an LWW map. `set`/`remove` return at once unless a
    `write_concern` is given: then they wait for the server's acknowledgement."""

    def __init__(self, portal: BlockingPortal, handle: LWWMapHandle) -> None:
        self._portal = portal
        self._handle = handle

    def get(self, key: str) -> Any:
        return self._portal.call(self._handle.get, key)

    def get_record(self, key: str) -> LWWRecord | None:
        return self._portal.call(self._handle.get_record, key)

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        write_concern: WriteConcern | None = None,
    ) -> WriteConcern | None:
        """Write; returns the achieved level when `write_concern` was given, else None."""
        return self._portal.call(_write, self._handle.set, (key, value, ttl, write_concern))

    def remove(self, key: str, write_concern: WriteConcern | None = None) -> WriteConcern | None:
        return self._portal.call(_write, self._handle.remove, (key, write_concern))

    def items(self) -> list[tuple[str, Any]]:
        return self._portal.call(self._handle.items)

    def on_change(self, listener: Callable[[str, Any], None]) -> Callable[[], None]:
        return self._portal.call(self._handle.on_change, listener)


class ORMap:
    """Blocking view of an OR-Map."""

    def __init__(self, portal: BlockingPortal, handle: ORMapHandle) -> None:
        self._portal = portal
        self._handle = handle

    def add(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._portal.call(self._handle.add, key, value, ttl)

    def remove(self, key: str, value: Any) -> None:
        self._portal.call(self._handle.remove, key, value)

    def values(self, key: str) -> list[Any]:
        return self._portal.call(self._handle.values, key)

    def items(self) -> list[tuple[str, list[Any]]]:
        return self._portal.call(self._handle.items)


class LiveQueryView:
    """Blocking view of a live query: current rows and a change callback."""

    def __init__(self, portal: BlockingPortal, live: LiveQuery) -> None:
        self._portal = portal
        self._live = live

    def items(self) -> list[tuple[str, Any]]:
        return self._portal.call(self._live.items)

    def on_change(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        return self._portal.call(self._live.on_change, listener)

    def close(self) -> None:
        self._portal.call(self._live.close)


class TopGunClient:
    """The async `topgun.client.TopGunClient` behind blocking calls (same arguments, plus
    `backend="asyncio"|"trio"` for the background loop). Use it as a context manager or
    call `close()`."""

    def __init__(self, url: str | None = None, *, backend: str = "asyncio", **options: Any):
        self._portal_cm = start_blocking_portal(backend)
        self._portal = self._portal_cm.__enter__()
        try:
            self._client: aio.TopGunClient = self._portal.call(
                lambda: aio.TopGunClient(url, **options)
            )
            # One task of the loop enters and exits the client's task group.
            self._running = self._portal.wrap_async_context_manager(self._client)
            self._running.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    def __enter__(self) -> TopGunClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Flush local writes, disconnect, stop the background loop (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self._running.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    @property
    def pending_writes(self) -> int:
        return self._client.pending_writes

    def connected(self, timeout: float | None = None) -> None:
        """Block until connected (raises AuthError for a refused token, TimeoutError)."""
        self._portal.call(_with_timeout, self._client.connected, timeout)

    def settled(self, timeout: float | None = None) -> None:
        """Block until every write is acknowledged and every open map synced."""
        self._portal.call(_with_timeout, self._client.settled, timeout)

    def flush(self) -> None:
        self._portal.call(self._client.flush)

    def map(self, name: str) -> LWWMap:
        return LWWMap(self._portal, self._portal.call(self._client.map, name))

    def ormap(self, name: str) -> ORMap:
        return ORMap(self._portal, self._portal.call(self._client.ormap, name))

    def query(
        self, map_name: str, where: Mapping[str, Any] | None = None, **kw: Any
    ) -> LiveQueryView:
        live = self._portal.call(lambda: self._client.query(map_name, where, **kw))
        self._portal.call(live.ready)
        return LiveQueryView(self._portal, live)

    def search(self, map_name: str, text: str, **kw: Any) -> aio.SearchResult:
        return self._portal.call(lambda: self._client.search(map_name, text, **kw))

    def process(
        self, map_name: str, key: str, processor: str, args: Any = None
    ) -> aio.ProcessResult:
        result: aio.ProcessResult = self._portal.call(
            self._client.process, map_name, key, processor, args
        )
        return result

    def counter_increment(self, name: str, by: float = 1) -> float:
        """Increment the counter `name`; returns its value as this client knows it."""
        counter: Counter = self._portal.call(self._client.counter, name)
        return self._portal.call(counter.increment, by)

    def counter_value(self, name: str) -> float:
        counter: Counter = self._portal.call(self._client.counter, name)
        return counter.value

    def publish(self, topic: str, data: Any) -> None:
        handle: Topic = self._portal.call(self._client.topic, topic)
        self._portal.call(handle.publish, data)

    def on_message(self, topic: str, listener: Callable[[TopicEvent], None]) -> Callable[[], None]:
        handle: Topic = self._portal.call(self._client.topic, topic)
        return self._portal.call(handle.on_message, listener)

    def on_conflict(self, listener: Callable[[ConflictEvent], None]) -> Callable[[], None]:
        return self._portal.call(self._client.on_conflict, listener)

    def vector_search(
        self, map_name: str, query: Any, k: int = 10, **kw: Any
    ) -> aio.VectorSearchResult:
        """`vector_search` of the async client (text or vector; filters, weights)."""
        return self._portal.call(lambda: self._client.vector_search(map_name, query, k, **kw))

    def journal_read(
        self, from_sequence: str | int = 0, *, limit: int = 100, map_name: str | None = None
    ) -> JournalPage:
        """One page of the server's event journal (`client.journal.read`)."""
        journal = self._client.journal
        return self._portal.call(
            lambda: journal.read(from_sequence, limit=limit, map_name=map_name)
        )

    @contextlib.contextmanager
    def lock(
        self, name: str, *, ttl_ms: int = 10_000, timeout: float | None = None
    ) -> Iterator[int]:
        """Hold the lock `name` for the block; yields its fencing token. Waits while another
        client holds it (at most `timeout` seconds: TimeoutError)."""
        lock: Lock = self._portal.call(lambda: self._client.lock(name, ttl_ms=ttl_ms))
        token: int = self._portal.call(_with_timeout_result, lock.acquire, timeout)
        try:
            yield token
        finally:
            self._portal.call(lock.release)


async def _write(write: Callable[..., WriteHandle], args: tuple[Any, ...]) -> WriteConcern | None:
    """Make a write on the loop; wait for its acknowledgement only if a level was asked."""
    handle = write(*args)
    return None if handle.write_concern is None else await handle.wait()


async def _with_timeout(wait: Callable[[], Any], timeout: float | None) -> None:
    with anyio.fail_after(timeout):
        await wait()


async def _with_timeout_result(wait: Callable[[], Awaitable[T]], timeout: float | None) -> T:
    with anyio.fail_after(timeout):
        return await wait()
