"""Live queries, live search, topics, locks, counters, entry processors, the journal and the
conflict listener, against one `topgun serve` process (real sockets), under asyncio and trio."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from topgun.client import (
    Backoff,
    ConflictEvent,
    ProcessorError,
    RequestError,
    TopGunClient,
    WriteRejectedError,
)
from topgun.client.live import Change
from topgun.query import QueryError

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.02, max_delay=0.5)
CONFIG = """
[maps.articles]
search_fields = ["title", "body"]
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `topgun serve` (SQLite, full-text search on `articles`) for this module."""
    from topgun_tests_server_conftest import SECRET, ServeProcess  # type: ignore[import-not-found]

    folder = tmp_path_factory.mktemp("serve")
    (folder / "topgun.toml").write_text(CONFIG)
    process = ServeProcess(
        ["--config", "topgun.toml", "--port", "0", "--data-dir", "data"],
        cwd=folder,
        env={"TOPGUN_AUTH_JWT_SECRET": SECRET},
    )
    try:
        process.banner()
        yield f"ws://127.0.0.1:{process.port}"
    finally:
        process.kill()


async def next_change(changes: Any, timeout: float = 10.0) -> Change:
    with anyio.fail_after(timeout):
        change: Change = await changes.__anext__()
    return change


async def test_live_query_delivers_enter_update_remove(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as watcher,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as writer,
    ):
        todos = writer.map(f"todos-q-{anyio_backend}")
        todos.set("t1", {"done": False, "rank": 1})
        todos.set("t2", {"done": True, "rank": 2})
        await writer.settled()
        live = watcher.query(
            f"todos-q-{anyio_backend}", where={"done": False}, sort={"rank": "asc"}
        )
        with anyio.fail_after(kit.DEADLINE):
            await live.ready()
        assert live.items() == [("t1", {"done": False, "rank": 1})]
        seen: list[Change] = []
        live.on_change(seen.append)
        changes = live.__aiter__()
        todos.set("t3", {"done": False, "rank": 0})
        assert await next_change(changes) == Change("ENTER", "t3", {"done": False, "rank": 0})
        assert [k for k, _ in live.items()] == ["t3", "t1"]  # kept in the query's order
        todos.set("t1", {"done": False, "rank": 5})
        assert await next_change(changes) == Change("UPDATE", "t1", {"done": False, "rank": 5})
        todos.set("t3", {"done": True, "rank": 0})  # stops matching
        assert await next_change(changes) == Change("REMOVE", "t3", None)
        todos.remove("t1")
        assert await next_change(changes) == Change("REMOVE", "t1", None)
        assert live.items() == []
        assert [c.type for c in seen] == ["ENTER", "UPDATE", "REMOVE", "REMOVE"]
        await live.close()


async def test_bad_queries_are_refused_before_sending(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with TopGunClient(url, token=kit.mint(), backoff=FAST) as client:
        with pytest.raises(QueryError):
            client.query("m", predicate={"op": "nope", "attribute": "a", "value": 1})
        with pytest.raises(QueryError):
            client.query("m", where={"a": {"$between": 1}})


async def test_live_search_delivers_enter_update_remove(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as watcher,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as writer,
    ):
        articles = writer.map("articles")
        word = f"merkle{anyio_backend}"  # this run's documents only
        k1, k2 = f"a1-{anyio_backend}", f"a2-{anyio_backend}"
        articles.set(k1, {"title": f"{word} trees", "body": "sync by hashing"})
        articles.set(k2, {"title": "Gardening", "body": "roses"})
        await writer.settled()
        found = await watcher.search("articles", word)
        assert [row.key for row in found.rows] == [k1]
        assert found.total_count == 1
        assert found.rows[0].matched_terms == (word,)
        live = watcher.live_search("articles", word)
        with anyio.fail_after(kit.DEADLINE):
            await live.ready()
        assert [row.key for row in live.rows()] == [k1]
        changes = live.__aiter__()
        articles.set(k2, {"title": f"{word} roses", "body": "gardening"})
        change = await next_change(changes)
        assert (change.type, change.key) == ("ENTER", k2)
        assert change.score is not None
        assert change.score > 0
        articles.set(k1, {"title": f"{word} trees", "body": f"sync by {word} hashing"})
        change = await next_change(changes)
        assert (change.type, change.key) == ("UPDATE", k1)
        articles.remove(k2)
        assert await next_change(changes) == Change("REMOVE", k2, None)
        assert [row.key for row in live.rows()] == [k1]
        await live.close()
        with pytest.raises(RequestError, match="not enabled"):
            await watcher.search(f"todos-q-{anyio_backend}", "anything")


async def test_topics_reach_other_subscribers_and_not_the_publisher(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as b,
    ):
        mine: list[Any] = []
        a.topic(f"chat-{anyio_backend}").on_message(lambda event: mine.append(event.data))
        received = b.topic(f"chat-{anyio_backend}").__aiter__()
        await a.connected()
        await b.connected()
        await a.settled()
        await b.settled()
        # Subscriptions are registered in order with later frames: a round trip settles them.
        await b.journal.read(0, limit=1)
        a.topic(f"chat-{anyio_backend}").publish({"text": "hello"})
        with anyio.fail_after(kit.DEADLINE):
            event = await received.__anext__()
        assert event.data == {"text": "hello"}
        assert event.publisher_id
        await a.journal.read(0, limit=1)  # a round trip: an echo would have arrived by now
        assert mine == []
        with pytest.raises(ValueError, match="topic name"):
            a.topic("")


async def test_locks_contend_and_fencing_tokens_increase(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as b,
    ):
        order: list[str] = []
        first = a.lock(f"invoice-7-{anyio_backend}")
        second = b.lock(f"invoice-7-{anyio_backend}")
        token1 = await first.acquire()
        got_second = anyio.Event()

        async def contender() -> None:
            async with second as lease:
                order.append("b")
                assert lease.fencing_token is not None
                got_second.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(contender)
            await b.journal.read(0, limit=1)  # b's request reached the server
            await a.journal.read(0, limit=1)
            assert not got_second.is_set(), "the lock was granted twice"
            order.append("a")
            assert await first.release()
            with anyio.fail_after(kit.DEADLINE):
                await got_second.wait()
        assert order == ["a", "b"]
        token3 = await a.lock(f"invoice-7-{anyio_backend}").acquire()
        assert token1 < token3
        # Releasing twice, or a lock not held, is refused.
        with pytest.raises(RuntimeError, match="not held"):
            await first.release()


async def test_concurrent_counter_increments_sum_exactly(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as b,
    ):
        ca, cb = a.counter(f"likes-{anyio_backend}"), b.counter(f"likes-{anyio_backend}")

        async def bump(counter: Any, times: int) -> None:
            for i in range(times):
                counter.increment()
                if i % 7 == 0:
                    await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(bump, ca, 300)
            tg.start_soon(bump, cb, 200)
        cb.decrement(50)
        expected = 300 + 200 - 50
        with anyio.fail_after(kit.DEADLINE):
            while not (ca.value == expected and cb.value == expected):
                await anyio.sleep(0.01)
        async with TopGunClient(url, token=kit.mint(), backoff=FAST) as c:
            cc = c.counter(f"likes-{anyio_backend}")
            with anyio.fail_after(kit.DEADLINE):
                while cc.value != expected:
                    await anyio.sleep(0.01)
        with pytest.raises(ValueError, match="finite and >= 0"):
            ca.increment(-1)


async def test_entry_processors_serialize_and_report_errors(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as b,
    ):
        stock = a.map(f"stock-{anyio_backend}")

        async def add(client: Any, times: int) -> None:
            for _ in range(times):
                await client.process(f"stock-{anyio_backend}", "apples", "builtin:increment", 2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(add, a, 20)
            tg.start_soon(add, b, 20)
        result = await a.process(f"stock-{anyio_backend}", "apples", "builtin:get")
        assert result.result == 80
        with anyio.fail_after(kit.DEADLINE):
            while stock.get("apples") != 80:  # the processor's write reached the local map
                await anyio.sleep(0.01)
        with pytest.raises(ProcessorError, match="Unknown processor"):
            await a.process(f"stock-{anyio_backend}", "apples", "no-such-processor")


async def test_journal_read_and_stream(url: str, kit: Any, anyio_backend: str) -> None:
    async with TopGunClient(url, token=kit.mint(), backoff=FAST) as client:
        notes = client.map(f"notes-j-{anyio_backend}")
        stream = client.journal.subscribe(map_name=f"notes-j-{anyio_backend}")
        events = stream.__aiter__()
        await client.connected()
        await client.journal.read(0, limit=1)  # the subscription is registered
        notes.set("n1", "first")
        with anyio.fail_after(kit.DEADLINE):
            event = await events.__anext__()
        assert (event.type, event.key, event.value) == ("PUT", "n1", "first")
        notes.set("n1", "second")
        with anyio.fail_after(kit.DEADLINE):
            event = await events.__anext__()
        assert (event.type, event.value, event.previous_value) == ("UPDATE", "second", "first")
        await stream.close()
        page = await client.journal.read(0, map_name=f"notes-j-{anyio_backend}")
        assert [e.type for e in page.events] == ["PUT", "UPDATE"]
        assert int(page.events[0].sequence) < int(page.events[1].sequence)
        with pytest.raises(ValueError, match="limit"):
            await client.journal.read(0, limit=0)


async def test_conflict_listener_hears_merge_rejected(
    url: str, kit: Any, anyio_backend: str
) -> None:
    async with (
        TopGunClient(url, token=kit.mint(), backoff=FAST) as a,
        TopGunClient(url, token=kit.mint(), backoff=FAST) as b,
    ):
        await a.register_resolver(f"claims-{anyio_backend}", "builtin:first_write_wins")
        with pytest.raises(RequestError, match="failed"):
            await a.register_resolver(f"claims-{anyio_backend}", "no-such-resolver")
        conflicts: list[ConflictEvent] = []
        b.on_conflict(conflicts.append)
        await a.map(f"claims-{anyio_backend}").set("seat-1", "alice")
        late = b.map(f"claims-{anyio_backend}").set("seat-1", "bob")
        with pytest.raises(WriteRejectedError, match="conflict resolver"):
            await late
        assert [(c.key, c.attempted_value) for c in conflicts] == [("seat-1", "bob")]
        # The server's compensating write brings b back to the winning value.
        with anyio.fail_after(kit.DEADLINE):
            while b.map(f"claims-{anyio_backend}").get("seat-1") != "alice":
                await anyio.sleep(0.01)
