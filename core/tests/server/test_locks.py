"""LOCK_REQUEST / LOCK_RELEASE as this server answers them (topgun/server/locks.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from topgun.protocol import (
    Error,
    LockGranted,
    LockRelease,
    LockReleased,
    LockReleasePayload,
    LockRequest,
    LockRequestPayload,
    Ping,
    Pong,
)
from topgun.server import CoalescingConfig, Policy, StorageConfig
from topgun.server.locks import (
    DEFAULT_TTL_MS,
    LOCK_WAIT_TIMEOUT_MS,
    MAX_TTL_MS,
    MIN_TTL_MS,
    LockManager,
    clamp_ttl,
    decode_token,
    encode_token,
)
from topgun.storage import Change, Commit, MemoryBackend, PutMeta

pytestmark = pytest.mark.anyio


def request(request_id: str, name: str = "job", ttl: int | None = None) -> LockRequest:
    return LockRequest(payload=LockRequestPayload(request_id=request_id, name=name, ttl=ttl))


def release(token: int, name: str = "job", request_id: str | None = "rel") -> LockRelease:
    return LockRelease(
        payload=LockReleasePayload(name=name, fencing_token=token, request_id=request_id)
    )


async def synced(client: Any) -> None:
    """Round-trip a PING and check nothing else was waiting for the client before its PONG."""
    await client.send(Ping(timestamp=1))
    _, before = await client.receive_until(Pong)
    assert before == []


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` with a deadline. (Not `wait_all_tasks_blocked`: a task that wakes
    every millisecond, like the expiry loop under test, can keep that from ever returning.)"""
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


async def granted(client: Any) -> LockGranted:
    message = await client.receive()
    assert isinstance(message, LockGranted), message
    return message


async def released(client: Any) -> LockReleased:
    message = await client.receive()
    assert isinstance(message, LockReleased), message
    return message


async def test_a_held_lock_queues_and_goes_to_the_next_waiter_on_release_p48(
    harness: Any,
) -> None:
    """P-48 (the captured scenario i): tokens 1 then 2; the waiter hears nothing until then."""
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1"))
    first = await granted(alice)
    assert (first.payload.request_id, first.payload.name, first.payload.fencing_token) == (
        "a1",
        "job",
        1,
    )
    await bob.send(request("b1"))
    await synced(bob)  # queued: no reply
    assert harness.server.locks.waiting("job") == 1
    await alice.send(release(1))
    assert (await released(alice)).payload.success is True
    second = await granted(bob)
    assert (second.payload.request_id, second.payload.fencing_token) == ("b1", 2)


async def test_waiters_are_granted_in_fifo_order(harness: Any) -> None:
    holder = await harness.login()
    waiters = [await harness.login() for _ in range(3)]
    await holder.send(request("h"))
    token = (await granted(holder)).payload.fencing_token
    for i, waiter in enumerate(waiters):
        await waiter.send(request(f"w{i}"))
        await synced(waiter)
    previous = holder
    for i, waiter in enumerate(waiters):
        await previous.send(release(token))
        assert (await released(previous)).payload.success is True
        grant = await granted(waiter)
        assert grant.payload.request_id == f"w{i}"
        assert grant.payload.fencing_token == token + 1
        token, previous = grant.payload.fencing_token, waiter


async def test_the_holder_requesting_again_extends_its_lease_with_the_same_token(
    harness: Any, clock: Any
) -> None:
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1", ttl=5000))
    assert (await granted(alice)).payload.fencing_token == 1
    await bob.send(request("b1"))
    clock.advance(4000)
    await alice.send(request("a2", ttl=5000))
    again = await granted(alice)
    assert (again.payload.request_id, again.payload.fencing_token) == ("a2", 1)
    clock.advance(4000)  # 8 s after the first grant, 4 s after the extension
    assert await harness.server.locks.expire() == 0
    await synced(bob)
    clock.advance(1000)
    assert await harness.server.locks.expire() == 1
    assert (await granted(bob)).payload.fencing_token == 2


async def test_release_with_a_wrong_token_or_by_a_non_holder_fails_p50(harness: Any) -> None:
    """P-50; LOCK_RELEASED always answers, with requestId "" when the request had none."""
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1"))
    token = (await granted(alice)).payload.fencing_token
    await alice.send(release(token + 1))
    assert (await released(alice)).payload.success is False
    await bob.send(release(token))
    assert (await released(bob)).payload.success is False
    await bob.send(release(token, name="unknown", request_id=None))
    answer = await released(bob)
    assert (answer.payload.request_id, answer.payload.name, answer.payload.success) == (
        "",
        "unknown",
        False,
    )
    assert harness.server.locks.holder("job") is not None
    await alice.send(release(token))
    assert (await released(alice)).payload.success is True


async def test_an_expired_lease_goes_to_the_next_waiter_and_its_token_is_dead(
    harness: Any, clock: Any
) -> None:
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1", ttl=2000))
    await granted(alice)
    await bob.send(request("b1"))
    await synced(bob)
    clock.advance(1999)
    assert await harness.server.locks.expire() == 0
    clock.advance(1)
    assert await harness.server.locks.expire() == 1
    assert (await granted(bob)).payload.fencing_token == 2
    await alice.send(release(1))
    assert (await released(alice)).payload.success is False


async def test_an_expired_lease_is_free_even_before_the_sweep(harness: Any, clock: Any) -> None:
    """A request or release after the lease ran out sees it expired (no sweep needed)."""
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1", ttl=1000))
    await granted(alice)
    clock.advance(1000)
    await alice.send(release(1))
    assert (await released(alice)).payload.success is False
    await bob.send(request("b1"))
    assert (await granted(bob)).payload.fencing_token == 2


async def test_a_disconnected_holder_frees_the_lock_for_the_next_waiter_at_once(
    harness: Any,
) -> None:
    """Within the lease TTL (the clock does not move), the disconnect alone hands the lock
    to the next waiter; a disconnected client's waiting requests go too."""
    alice, bob, carol, dave = [await harness.login() for _ in range(4)]
    await bob.send(request("b1", ttl=60_000))
    await granted(bob)
    await alice.send(request("a1", name="other", ttl=60_000))
    await granted(alice)
    await alice.send(request("a2"))  # first in line for "job"
    await carol.send(request("c1"))  # then carol
    await dave.send(request("d1", name="other"))  # waits for alice's "other"
    for client in (alice, carol, dave):
        await synced(client)
    await bob.disconnect()
    assert (await granted(alice)).payload.fencing_token == 2
    await alice.disconnect()  # holds "job" and "other"
    grant = await granted(carol)
    assert (grant.payload.request_id, grant.payload.fencing_token) == ("c1", 3)
    other = await granted(dave)
    assert (other.payload.request_id, other.payload.fencing_token) == ("d1", 2)
    await carol.send(request("c2", name="third"))
    await granted(carol)
    await carol.send(request("c3", name="other"))  # waits behind dave
    await synced(carol)
    await carol.disconnect()
    await until(lambda: harness.server.locks.holder("job") is None)
    assert harness.server.locks.waiting("other") == 0
    assert harness.server.locks.active == 1  # only dave's "other"


async def test_queued_requests_are_dropped_after_the_wait_timeout(harness: Any, clock: Any) -> None:
    alice, bob = await harness.login(), await harness.login()
    await alice.send(request("a1", ttl=MAX_TTL_MS))
    await granted(alice)
    await bob.send(request("b1"))
    await synced(bob)
    clock.advance(LOCK_WAIT_TIMEOUT_MS)
    await harness.server.locks.expire()
    assert harness.server.locks.waiting("job") == 0
    await alice.send(release(1))
    assert (await released(alice)).payload.success is True
    await synced(bob)  # never granted
    assert harness.server.locks.active == 0


async def test_tokens_keep_increasing_after_the_idle_lock_is_forgotten_p49(
    harness: Any,
) -> None:
    """P-49 / D12: the state of a free lock nobody waits for is discarded, its counter not."""
    client = await harness.login()
    for expected in (1, 2, 3):
        await client.send(request(f"r{expected}"))
        assert (await granted(client)).payload.fencing_token == expected
        await client.send(release(expected))
        assert (await released(client)).payload.success is True
        assert harness.server.locks.active == 0
    assert harness.server.locks.last_token("job") == 3


async def test_tokens_keep_increasing_across_restart_p49(start: Any) -> None:
    """P-49: the token counter lives in the storage meta area (SQLite here)."""
    tokens = []
    for _ in range(3):
        async with start(storage=StorageConfig(backend="sqlite")) as h:
            client = await h.login()
            await client.send(request("r"))
            tokens.append((await granted(client)).payload.fencing_token)
            await client.send(request("r", name="second-lock"))
            await granted(client)
    assert tokens == [1, 2, 3]


async def test_the_token_is_committed_before_lock_granted_is_sent(
    gated_start: Any, gated: Any
) -> None:
    async with gated_start(coalescing=CoalescingConfig(max_delay_ms=0)) as h:
        client = await h.login()
        gated.hold()
        await client.send(request("r"))
        await anyio.wait_all_tasks_blocked()
        assert h.server.locks.holder("job") is not None
        assert client.transport.outbox.statistics().current_buffer_used == 0  # not sent yet
        gated.release()
        assert (await granted(client)).payload.fencing_token == 1
        assert gated.store.meta["locks"] == {"job": encode_token(1)}


async def test_lock_request_needs_put_on_lock_name(start: Any) -> None:
    policies = [Policy(role="USER", map_name_pattern="lock:mine-*", actions=("PUT",))]
    async with start(policies=policies) as h:
        client = await h.login(roles=["USER"])
        await client.send(request("r1", name="theirs"))
        error = await client.receive()
        assert isinstance(error, Error)
        assert error.payload.code == 403
        assert error.payload.details == {
            "type": "LOCK_REQUEST",
            "name": "theirs",
            "requestId": "r1",
        }
        await client.send(request("r2", name="mine-1"))
        assert (await granted(client)).payload.fencing_token == 1


def test_ttl_is_defaulted_and_clamped() -> None:
    assert clamp_ttl(None) == DEFAULT_TTL_MS
    assert clamp_ttl(1) == MIN_TTL_MS
    assert clamp_ttl(10**9) == MAX_TTL_MS
    assert clamp_ttl(5000) == 5000


def test_stored_tokens_round_trip_and_bad_ones_are_named() -> None:
    assert decode_token("x", encode_token(2**53 - 1)) == 2**53 - 1
    with pytest.raises(ValueError, match="lock 'x'"):
        decode_token("x", b"\x01")


class FakeClient:
    def __init__(self) -> None:
        self.is_open = True
        self.sent: list[Any] = []
        self.errors: list[tuple[int, str, Any]] = []

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> None:
        self.sent.append(message)

    def send_error(self, code: int, message: str, details: object = None) -> None:
        self.errors.append((code, message, details))


async def test_a_token_that_cannot_be_stored_is_never_granted() -> None:
    """The requester gets ERROR 500 and the lock stays free; the counter still moved on,
    so the unsent token is never issued."""
    backend = MemoryBackend()
    await backend.initialize()
    stored: list[Sequence[Change]] = []

    async def failing_store(changes: Sequence[Change]) -> Commit:
        stored.append(changes)
        commit = Commit(len(changes))
        commit._finish(OSError("disk full"))
        return commit

    manager = LockManager(clock=lambda: 0)
    await manager.load(backend, failing_store)
    client = FakeClient()
    await manager.request(client, "r", "job", None)
    assert client.sent == []
    assert client.errors[0][0] == 500
    assert manager.holder("job") is None
    assert stored == [[PutMeta("locks", "job", encode_token(1))]]
    assert manager.last_token("job") == 1


async def test_load_resumes_every_stored_counter() -> None:
    backend = MemoryBackend()
    await backend.initialize()
    await backend.store_batch([PutMeta("locks", "job", encode_token(41))])
    manager = LockManager(clock=lambda: 0)

    async def store(changes: Sequence[Change]) -> Commit:
        commit = Commit(len(changes))
        commit._finish()
        return commit

    await manager.load(backend, store)
    client = FakeClient()
    await manager.request(client, "r", "job", None)
    assert client.sent[0].payload.fencing_token == 42


async def test_the_expiry_loop_frees_leases_without_a_manual_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run()` sweeps every `EXPIRY_CHECK_MS` by the injected clock (1 ms here)."""
    monkeypatch.setattr("topgun.server.locks.EXPIRY_CHECK_MS", 1)
    now = [0]
    manager = LockManager(clock=lambda: now[0])

    async def store(changes: Sequence[Change]) -> Commit:
        commit = Commit(len(changes))
        commit._finish()
        return commit

    backend = MemoryBackend()
    await backend.initialize()
    await manager.load(backend, store)
    holder, waiter = FakeClient(), FakeClient()
    await manager.request(holder, "h", "job", MIN_TTL_MS)
    await manager.request(waiter, "w", "job", None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        now[0] = MIN_TTL_MS
        await until(lambda: bool(waiter.sent))
        tg.cancel_scope.cancel()
    assert waiter.sent[0].payload.fencing_token == 2
    assert manager.holder("job") is waiter


GOLDEN_FRAMES = Path(__file__).resolve().parents[3].parent / "shared" / "golden-frames"


def golden(name: str) -> bytes:
    path = GOLDEN_FRAMES / name
    if not path.is_file():
        pytest.skip(f"golden frame corpus not found at {GOLDEN_FRAMES}")
    return path.read_bytes()


def golden_decoded(name: str) -> Any:
    return msgspec.msgpack.decode(golden(name))


async def test_the_captured_lock_scenario_replays_to_the_captured_replies(harness: Any) -> None:
    """Golden frames 0064–0071 (scenario i), sent as captured by two TS clients."""
    one, two = await harness.login(), await harness.login()
    replies = {}
    for client, request_frame, reply_frame in (
        (one, "0064-c2s-LOCK_REQUEST.msgpack", "0065-s2c-LOCK_GRANTED.msgpack"),
        (two, "0066-c2s-LOCK_REQUEST.msgpack", None),
        (one, "0067-c2s-LOCK_RELEASE.msgpack", "0069-s2c-LOCK_RELEASED.msgpack"),
        (two, None, "0068-s2c-LOCK_GRANTED.msgpack"),
        (two, "0070-c2s-LOCK_RELEASE.msgpack", "0071-s2c-LOCK_RELEASED.msgpack"),
    ):
        if request_frame is not None:
            await client.send_raw(golden(request_frame))
        if reply_frame is None:
            await synced(client)
            continue
        reply = await client.receive()
        replies[reply_frame] = msgspec.to_builtins(reply)
        assert replies[reply_frame] == golden_decoded(reply_frame)
    assert len(replies) == 4


async def test_the_expiry_loop_survives_a_failing_sweep(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("topgun.server.locks.EXPIRY_CHECK_MS", 1)
    sweeps: list[int] = []

    class Flaky(LockManager):
        async def expire(self, now: int | None = None) -> int:
            sweeps.append(len(sweeps))
            if len(sweeps) == 1:
                raise RuntimeError("boom")
            return 0

    async with anyio.create_task_group() as tg:
        tg.start_soon(Flaky(clock=lambda: 0).run)
        await until(lambda: len(sweeps) >= 2)
        tg.cancel_scope.cancel()
    assert "the lock expiry sweep failed" in caplog.text
