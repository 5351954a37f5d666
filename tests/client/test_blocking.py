"""The blocking facade `topgun.client.sync.TopGunClient`, from plain (non-async) code,
against a `topgun serve` process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from topgun.client import AuthError, Backoff
from topgun.client.live import Change
from topgun.client.sync import TopGunClient


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_client_writes_reads_and_queries(
    serve_process: Callable[..., Any], kit: Any, backend: str
) -> None:
    process = serve_process(
        "--port", "0", "--data-dir", "data", env={"TOPGUN_AUTH_JWT_SECRET": kit.SECRET}
    )
    process.banner()
    url = f"ws://127.0.0.1:{process.port}"
    fast = Backoff(initial=0.02, max_delay=0.2)
    with (
        TopGunClient(url, token=kit.mint(), backend=backend, backoff=fast) as a,
        TopGunClient(url, token=kit.mint(), backend=backend, backoff=fast) as b,
    ):
        a.connected(timeout=kit.DEADLINE)
        todos = a.map("todos")
        assert todos.set("t1", {"done": False}, write_concern="PERSISTED") == "PERSISTED"
        assert todos.set("t2", {"done": True}) is None  # returns at once
        assert todos.get("t2") == {"done": True}
        a.ormap("tags").add("t1", "home")
        a.settled(timeout=kit.DEADLINE)
        live = b.query("todos", where={"done": False})
        assert live.items() == [("t1", {"done": False})]
        changes: list[Change] = []
        live.on_change(changes.append)
        todos.set("t3", {"done": False})
        deadline = time.monotonic() + kit.DEADLINE
        while not changes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert changes == [Change("ENTER", "t3", {"done": False})]
        b_todos, b_tags = b.map("todos"), b.ormap("tags")
        b.settled(timeout=kit.DEADLINE)
        assert sorted(b_todos.items())[0] == ("t1", {"done": False})
        assert b_tags.values("t1") == ["home"]
        assert a.process("todos", "n", "builtin:increment", 5).result == 5
        live.close()
    with (
        TopGunClient(url, token=kit.mint(secret="wrong-" + "s" * 40), backend=backend) as bad,
        pytest.raises(AuthError),
    ):
        bad.connected(timeout=kit.DEADLINE)


def test_blocking_locks_and_journal(serve_process: Callable[..., Any], kit: Any) -> None:
    process = serve_process(
        "--port", "0", "--data-dir", "data", env={"TOPGUN_AUTH_JWT_SECRET": kit.SECRET}
    )
    process.banner()
    url = f"ws://127.0.0.1:{process.port}"
    with TopGunClient(url, token=kit.mint(), backoff=Backoff(initial=0.02, max_delay=0.2)) as a:
        a.connected(timeout=kit.DEADLINE)
        with a.lock("nightly-job", timeout=kit.DEADLINE) as first:
            assert first >= 1
        with a.lock("nightly-job", timeout=kit.DEADLINE) as second:
            assert second > first  # fencing tokens only grow
        a.map("todos").set("t1", {"done": False}, write_concern="PERSISTED")
        page = a.journal_read(0, map_name="todos")
        assert [(e.type, e.key) for e in page.events] == [("PUT", "t1")]
