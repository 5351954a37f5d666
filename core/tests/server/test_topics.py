"""TOPIC_SUB / TOPIC_UNSUB / TOPIC_PUB as this server answers them (topgun/server/topics.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from topgun.protocol import (
    Auth,
    Error,
    Ping,
    Pong,
    TopicMessage,
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
    TopicUnsub,
)
from topgun.server import Policy
from topgun.server.topics import TopicLimitError, TopicRegistry

pytestmark = pytest.mark.anyio


def sub(topic: str) -> TopicSub:
    return TopicSub(payload=TopicSubPayload(topic=topic))


def pub(topic: str, data: Any) -> TopicPub:
    return TopicPub(payload=TopicPubPayload(topic=topic, data=data))


async def synced(client: Any) -> None:
    """Round-trip a PING and check nothing else was waiting for the client before its PONG."""
    await client.send(Ping(timestamp=1))
    _, before = await client.receive_until(Pong)
    assert before == []


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.wait_all_tasks_blocked()


async def test_pub_reaches_every_other_subscriber_with_publisher_and_time_p46(
    harness: Any, clock: Any
) -> None:
    """P-46: in publish order, with the publisher's clientId and the server's ms time; the
    publisher (subscribed too) gets no echo."""
    alice, bob, carol = [await harness.login() for _ in range(3)]
    for client in (alice, bob, carol):
        await client.send(sub("chat"))
        await synced(client)
    await alice.send(pub("chat", {"text": "hello", "n": 1}))
    await alice.send(pub("chat", {"text": "world", "n": 2}))
    await synced(alice)  # no echo
    publishers = set()
    for client in (bob, carol):
        first, second = await client.receive(), await client.receive()
        assert isinstance(first, TopicMessage)
        assert isinstance(second, TopicMessage)
        assert [first.payload.data, second.payload.data] == [
            {"text": "hello", "n": 1},
            {"text": "world", "n": 2},
        ]
        assert (first.payload.topic, first.payload.timestamp) == ("chat", clock.now)
        publishers.add(first.payload.publisher_id)
    sessions = {s.client_id: s for s in harness.server.sessions}
    (publisher_id,) = publishers
    await carol.send(pub("chat", "from carol"))
    from_carol = await bob.receive()
    assert isinstance(from_carol, TopicMessage)
    assert from_carol.payload.publisher_id != publisher_id
    assert {publisher_id, from_carol.payload.publisher_id} <= sessions.keys()


async def test_unsubscribe_and_disconnect_end_delivery(harness: Any) -> None:
    """TOPIC_UNSUB (an unknown topic is ignored) and disconnect remove the subscription."""
    alice, bob, carol = [await harness.login() for _ in range(3)]
    for client in (bob, carol):
        await client.send(sub("news"))
    await bob.send(TopicUnsub(payload=TopicSubPayload(topic="news")))
    await bob.send(TopicUnsub(payload=TopicSubPayload(topic="never-subscribed")))
    await synced(bob)
    await synced(carol)
    topics = harness.server.topics
    assert topics.subscriber_count("news") == 1
    await carol.disconnect()
    await until(lambda: topics.subscriber_count("news") == 0)
    await alice.send(pub("news", 1))
    await synced(alice)
    await synced(bob)


@pytest.mark.parametrize("topic", ["", "x" * 257, "bad name", "ümlaut", "a#b"])
async def test_invalid_topic_names_get_error_400_p47(harness: Any, topic: str) -> None:
    """P-47, for both TOPIC_SUB and TOPIC_PUB; the socket stays open."""
    client = await harness.login()
    for message in ({"topic": topic}, {"topic": topic, "data": 1}):
        kind = "TOPIC_SUB" if "data" not in message else "TOPIC_PUB"
        await client.send({"type": kind, "payload": message})
        error = await client.receive()
        assert isinstance(error, Error)
        assert error.payload.code == 400
    await synced(client)


async def test_longest_valid_name_and_every_legal_character_are_accepted(harness: Any) -> None:
    client = await harness.login()
    for topic in ("x" * 256, "A-z_0.9:/-"):
        await client.send(sub(topic))
    await synced(client)
    assert len(harness.server.topics.topics_of(next(iter(harness.server.sessions)))) == 2


async def test_more_than_100_topics_per_connection_is_400(harness: Any) -> None:
    client = await harness.login()
    for i in range(100):
        await client.send(sub(f"t{i}"))
    await client.send(sub("t0"))  # already subscribed: not a new one
    await synced(client)
    await client.send(sub("one-too-many"))
    error = await client.receive()
    assert isinstance(error, Error)
    assert error.payload.code == 400
    assert error.payload.details == {"type": "TOPIC_SUB", "topic": "one-too-many"}


async def test_permissions_read_to_subscribe_put_to_publish(start: Any) -> None:
    """READ on `topic:<name>` for TOPIC_SUB, PUT for TOPIC_PUB; else ERROR 403."""
    policies = [
        Policy(role="USER", map_name_pattern="topic:public*", actions=("READ",)),
        Policy(role="WRITER", map_name_pattern="topic:public*", actions=("PUT",)),
    ]
    async with start(policies=policies) as h:
        reader = await h.login(roles=["USER"])
        writer = await h.login(roles=["WRITER"])
        await reader.send(sub("public-1"))
        await synced(reader)
        for client, message in (
            (reader, sub("private")),
            (reader, pub("public-1", 1)),
            (writer, sub("public-1")),
        ):
            await client.send(message)
            error = await client.receive()
            assert isinstance(error, Error)
            assert error.payload.code == 403
        await writer.send(pub("public-1", "ok"))
        delivered = await reader.receive()
        assert isinstance(delivered, TopicMessage)
        assert delivered.payload.data == "ok"


async def test_a_slow_subscriber_never_blocks_the_publisher_or_others(
    start: Any, stalled_transport: type[Any]
) -> None:
    """A subscriber that stops reading is closed with 4003 by its own outbound limit; the
    publisher and a reading subscriber carry on and get everything, in order."""
    async with start(max_outbound_bytes=16 * 1024) as h:
        publisher, fast = await h.login(), await h.login()
        transport = stalled_transport(accept=2)  # AUTH_REQUIRED, AUTH_ACK, then stalls
        send, frames = anyio.create_memory_object_stream[bytes | str](10)

        async def serve() -> None:
            with frames:
                await h.server.handle_connection(transport, frames)

        async with send:
            h.task_group.start_soon(serve)
            await send.send(h.server.codec.encode(Auth(token=h.token())))
            await send.send(h.server.codec.encode(sub("firehose")))
            await fast.send(sub("firehose"))
            await synced(fast)
            await until(lambda: h.server.topics.subscriber_count("firehose") == 2)
            blob = "x" * 1000
            for i in range(100):  # ~100 KB: far beyond the stalled subscriber's 16 KB
                await publisher.send(pub("firehose", {"i": i, "blob": blob}))
                received = await fast.receive()
                assert isinstance(received, TopicMessage)
                assert received.payload.data["i"] == i
            await synced(publisher)
            with anyio.fail_after(5):
                await transport.close_event.wait()
        assert transport.closed == (4003, "Slow consumer")


class FakeSubscriber:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes, message_type: str) -> None:
        assert message_type == "TOPIC_MESSAGE"
        self.frames.append(frame)


def test_registry_encodes_once_and_skips_the_publisher() -> None:
    encoded: list[Any] = []

    def encode(message: TopicMessage) -> bytes:
        encoded.append(message)
        return b"frame"

    registry = TopicRegistry(clock=lambda: 42, encode=encode, max_per_connection=2)
    a, b, c = FakeSubscriber("a"), FakeSubscriber("b"), FakeSubscriber("c")
    for s in (a, b, c):
        registry.subscribe(s, "t")
    assert registry.publish("t", 1, a) == 2
    assert registry.publish("nobody", 1, a) == 0
    assert (a.frames, b.frames, c.frames) == ([], [b"frame"], [b"frame"])
    assert len(encoded) == 1
    assert encoded[0].payload.publisher_id == "a"
    assert encoded[0].payload.timestamp == 42
    registry.subscribe(a, "u")
    with pytest.raises(TopicLimitError, match="at most 2 topics"):
        registry.subscribe(a, "v")
    registry.drop(a)
    assert registry.topics_of(a) == frozenset()
    assert registry.subscriber_count("t") == 2


GOLDEN_FRAMES = Path(__file__).resolve().parents[3].parent / "shared" / "golden-frames"


def golden(name: str) -> bytes:
    path = GOLDEN_FRAMES / name
    if not path.is_file():
        pytest.skip(f"golden frame corpus not found at {GOLDEN_FRAMES}")
    return path.read_bytes()


async def test_the_captured_topic_scenario_delivers_like_the_reference(harness: Any) -> None:
    """Golden frames 0051–0054 (scenario g): the captured publishes reach the captured
    subscriber as `TOPIC_MESSAGE`s with the same fields as the reference server's."""
    publisher, subscriber = await harness.login(), await harness.login()
    await subscriber.send_raw(golden("0051-c2s-TOPIC_SUB.msgpack"))
    await synced(subscriber)
    await publisher.send_raw(golden("0052-c2s-TOPIC_PUB.msgpack"))
    await publisher.send_raw(golden("0053-c2s-TOPIC_PUB.msgpack"))
    captured_batch = msgspec.msgpack.decode(golden("0054-s2c-BATCH.msgpack"))
    assert captured_batch["count"] == 2
    for expected in ({"text": "hello", "n": 1}, {"text": "world", "n": 2}):
        message = await subscriber.receive()
        assert isinstance(message, TopicMessage)
        wire = msgspec.to_builtins(message)
        assert sorted(wire["payload"]) == ["data", "publisherId", "timestamp", "topic"]
        assert (wire["payload"]["topic"], wire["payload"]["data"]) == ("chat-robekzv", expected)
