"""PROTOCOL.md §11 P-46..P-51 over real sockets: topics, locks, PN counters."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.protocol import (
    CounterRequest,
    CounterRequestPayload,
    CounterResponse,
    CounterUpdate,
    Error,
    LockGranted,
    LockRelease,
    LockReleased,
    LockReleasePayload,
    LockRequest,
    LockRequestPayload,
    Ping,
    Pong,
    TopicMessage,
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
)
from topgun.server import StorageConfig

pytestmark = pytest.mark.anyio


def lock(request_id: str, name: str = "job", ttl: int | None = None) -> LockRequest:
    return LockRequest(payload=LockRequestPayload(request_id=request_id, name=name, ttl=ttl))


def unlock(token: int, name: str = "job", request_id: str = "rel") -> LockRelease:
    return LockRelease(
        payload=LockReleasePayload(name=name, fencing_token=token, request_id=request_id)
    )


async def quiet(client: Any) -> None:
    """Round-trip a PING: nothing else was on its way to the client before the PONG."""
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.recv(), Pong)


async def test_p46_pub_reaches_every_other_subscriber_and_never_the_publisher(
    live_server: Any,
) -> None:
    """P-46."""
    alice, bob, carol = [await live_server.client() for _ in range(3)]
    for client in (alice, bob, carol):
        await client.send(TopicSub(payload=TopicSubPayload(topic="room")))
        await quiet(client)
    await alice.send(TopicPub(payload=TopicPubPayload(topic="room", data={"n": 1})))
    for client in (bob, carol):
        message = await client.expect(TopicMessage)
        assert (message.payload.topic, message.payload.data) == ("room", {"n": 1})
        assert isinstance(message.payload.timestamp, int)
        assert message.payload.publisher_id is not None
    await quiet(alice)


@pytest.mark.parametrize("topic", ["", "x" * 257, "white space", "semi;colon"])
async def test_p47_invalid_topic_names_get_error_400(live_server: Any, topic: str) -> None:
    """P-47, for TOPIC_SUB and TOPIC_PUB; the socket stays open."""
    client = await live_server.client()
    await client.send({"type": "TOPIC_SUB", "payload": {"topic": topic}})
    await client.send({"type": "TOPIC_PUB", "payload": {"topic": topic, "data": 1}})
    for _ in range(2):
        error = await client.expect(Error)
        assert error.payload.code == 400
    await quiet(client)


async def test_p48_a_second_request_is_queued_and_granted_with_a_larger_token(
    live_server: Any,
) -> None:
    """P-48."""
    alice, bob = await live_server.client(), await live_server.client()
    await alice.send(lock("a1"))
    first = await alice.expect(LockGranted)
    await bob.send(lock("b1"))
    await quiet(bob)
    await alice.send(unlock(first.payload.fencing_token))
    assert (await alice.expect(LockReleased)).payload.success is True
    second = await bob.expect(LockGranted)
    assert second.payload.request_id == "b1"
    assert second.payload.fencing_token > first.payload.fencing_token


async def test_p49_tokens_strictly_increase_across_release_idle_deletion_and_restart(
    start_server: Any,
) -> None:
    """P-49: the lock is released (so its state is discarded) between grants, and the
    server is restarted on the same SQLite file."""
    tokens = []
    for _ in range(2):
        async with start_server(storage=StorageConfig(backend="sqlite")) as live:
            client = await live.client()
            for i in range(2):
                await client.send(lock(f"r{i}"))
                token = (await client.expect(LockGranted)).payload.fencing_token
                tokens.append(token)
                await client.send(unlock(token))
                assert (await client.expect(LockReleased)).payload.success is True
            await client.aclose()
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 4


async def test_p50_release_with_a_wrong_token_or_by_a_non_holder_fails(live_server: Any) -> None:
    """P-50."""
    alice, bob = await live_server.client(), await live_server.client()
    await alice.send(lock("a1"))
    token = (await alice.expect(LockGranted)).payload.fencing_token
    await alice.send(unlock(token + 1))
    assert (await alice.expect(LockReleased)).payload.success is False
    await bob.send(unlock(token))
    assert (await bob.expect(LockReleased)).payload.success is False


async def test_a_lock_held_by_a_client_that_disconnects_goes_to_the_next_waiter(
    live_server: Any,
) -> None:
    """Within the lease TTL (a minute): closing the holder's socket is enough."""
    holder, waiter = await live_server.client(), await live_server.client()
    await holder.send(lock("h", ttl=60_000))
    token = (await holder.expect(LockGranted)).payload.fencing_token
    await waiter.send(lock("w", ttl=60_000))
    await quiet(waiter)
    await holder.aclose()
    granted = await waiter.expect(LockGranted)
    assert (granted.payload.request_id, granted.payload.fencing_token) == ("w", token + 1)


async def test_p51_counter_sync_accepts_both_spellings_and_updates_carry_both(
    live_server: Any,
) -> None:
    """P-51."""
    watcher, writer = await live_server.client(), await live_server.client()
    await watcher.send(CounterRequest(payload=CounterRequestPayload(name="likes")))
    await watcher.expect(CounterResponse)
    for state in ({"p": {"A": 2}, "n": {}}, {"positive": {"B": 3}, "negative": {"B": 1}}):
        await writer.send({"type": "COUNTER_SYNC", "payload": {"name": "likes", "state": state}})
        for client in (writer, watcher):
            update = await client.expect(CounterUpdate)
            wire = msgspec.to_builtins(update.payload.state)
            assert wire["p"] == wire["positive"]
            assert wire["n"] == wire["negative"]
    assert wire == {
        "p": {"A": 2, "B": 3},
        "n": {"B": 1},
        "positive": {"A": 2, "B": 3},
        "negative": {"B": 1},
    }
