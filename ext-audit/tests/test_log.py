"""`AuditLog`: ordered, chained, rotated, bounded, never dropping an entry."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from topgun_audit import AuditLog, AuditLogClosed, entries, verify
from topgun_audit import log as log_module
from topgun_audit.chain import ACTIVE, log_files

from .conftest import lines_of, write_log

DEADLINE = 10.0


class GatedLog(AuditLog):
    """A log whose writer waits for `gate` before each batch: the queue can be filled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def _write_batch(self, batch: list[dict[str, Any]]) -> int:
        assert self.gate.wait(DEADLINE), "the test never opened the gate"
        return super()._write_batch(batch)


def test_concurrent_producers_across_rotations_lose_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_file_bytes=4096, queue_size=16, fsync=False)
    log.open()

    def produce(producer: int) -> None:
        for n in range(250):
            log.put_blocking({"event": "write", "producer": producer, "n": n})

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    log.close()
    assert len(log_files(tmp_path)) > 3
    assert verify(tmp_path).ok
    found = [(e["producer"], e["n"]) for e in entries(tmp_path)]
    assert sorted(found) == [(p, n) for p in range(4) for n in range(250)]
    for producer in range(4):  # each producer's entries stay in its order
        assert [n for p, n in found if p == producer] == list(range(250))
    assert [e["seq"] for e in entries(tmp_path)] == list(range(1, 1001))


def test_a_full_queue_refuses_try_put_and_put_blocking_waits(tmp_path: Path) -> None:
    log = GatedLog(tmp_path, queue_size=2, fsync=False)
    log.open()
    assert log.try_put({"event": "a"})
    assert log.try_put({"event": "b"})
    assert not log.has_room()
    assert not log.try_put({"event": "refused"})
    waiting = threading.Thread(target=log.put_blocking, args=({"event": "c"},))
    waiting.start()
    assert waiting.is_alive()
    log.gate.set()
    waiting.join(DEADLINE)
    assert not waiting.is_alive()
    log.close()
    assert [e["event"] for e in entries(tmp_path)] == ["a", "b", "c"]


@pytest.mark.anyio
async def test_put_waits_for_room_without_blocking_the_event_loop(tmp_path: Path) -> None:
    log = GatedLog(tmp_path, queue_size=1, fsync=False)
    log.open()
    await log.put({"event": "first"})
    done = anyio.Event()

    async def second() -> None:
        await log.put({"event": "second"})
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()  # the loop still runs while the put waits
        log.gate.set()
        with anyio.fail_after(DEADLINE):
            await done.wait()
    log.close()
    assert [e["event"] for e in entries(tmp_path)] == ["first", "second"]


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    write_log(tmp_path, 5)
    write_log(tmp_path, 5, first=5)
    assert verify(tmp_path).ok
    assert [e["key"] for e in entries(tmp_path)] == [f"k{n}" for n in range(10)]
    assert [e["seq"] for e in entries(tmp_path)] == list(range(1, 11))


def test_a_torn_last_line_is_cut_and_recorded_at_open(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    with (tmp_path / ACTIVE).open("ab") as file:
        file.write(b'{"event":"write","seq":4,"prev":"')
    write_log(tmp_path, 1, first=3)
    assert verify(tmp_path).ok
    events = [e["event"] for e in entries(tmp_path)]
    assert events == ["write", "write", "write", "audit.recovered", "write"]
    recovered = list(entries(tmp_path))[3]
    assert "cut an incomplete last line of 33 byte(s)" in recovered["detail"]


def test_a_damaged_last_entry_stops_the_open_with_a_clear_error(tmp_path: Path) -> None:
    write_log(tmp_path, 2)
    lines = lines_of(tmp_path / ACTIVE)
    (tmp_path / ACTIVE).write_bytes(lines[0] + b"garbage\n")
    with pytest.raises(ValueError, match="the last line is not an audit entry"):
        AuditLog(tmp_path).open()


def test_a_refused_batch_is_retried_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "RETRY_SECONDS", 0.01)

    class FlakyLog(AuditLog):
        failures = 2

        def _commit(self, chunk: list[bytes], *args: Any) -> None:
            if self.failures:
                self.failures -= 1
                assert self._file is not None
                self._file.write(chunk[0][:10])  # a partial write, then the failure
                raise OSError(28, "No space left on device")
            super()._commit(chunk, *args)

    log = FlakyLog(tmp_path, fsync=False)
    log.open()
    log.put_blocking({"event": "kept"})
    assert log.flush(DEADLINE)
    assert log.failure is None
    log.close()
    assert [e["event"] for e in entries(tmp_path)] == ["kept"]
    assert verify(tmp_path).ok


def test_a_closed_log_refuses_entries(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    with pytest.raises(AuditLogClosed):
        log.try_put({"event": "early"})
    log.open()
    log.close()
    with pytest.raises(AuditLogClosed, match="is not open"):
        log.put_blocking({"event": "late"})
    assert list(entries(tmp_path)) == []


def test_a_dead_disk_cannot_hang_close_and_the_loss_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(log_module, "RETRY_SECONDS", 0.01)

    class DeadLog(AuditLog):
        def _commit(self, chunk: list[bytes], *args: Any) -> None:
            raise OSError(5, "Input/output error")

    log = DeadLog(tmp_path, fsync=False)
    log.open()
    log.put_blocking({"event": "lost"})
    log.close()
    assert "closing with 1 entries that could not be written" in caplog.text
    assert isinstance(log.failure, OSError)


def test_entries_cut_while_closed_are_recorded_at_the_next_open(tmp_path: Path) -> None:
    write_log(tmp_path, 5)
    active = tmp_path / ACTIVE
    active.write_bytes(b"".join(lines_of(active)[:3]))
    assert not verify(tmp_path).ok  # before the server starts again, verify sees the cut
    write_log(tmp_path, 1, first=5)
    found = list(entries(tmp_path))
    assert [e["event"] for e in found] == ["write"] * 3 + ["audit.head_mismatch", "write"]
    assert "the head recorded entry 5" in found[3]["detail"]
    assert "log ends at entry 3" in found[3]["detail"]
    assert verify(tmp_path).ok  # the chain goes on, and it holds the evidence


def test_a_producer_waiting_when_close_is_called_still_gets_written(tmp_path: Path) -> None:
    log = GatedLog(tmp_path, queue_size=1, fsync=False)
    log.open()
    log.put_blocking({"event": "first"})
    waiting = threading.Thread(target=log.put_blocking, args=({"event": "second"},))
    waiting.start()
    deadline = time.monotonic() + DEADLINE
    while log.waiting != 1:
        assert time.monotonic() < deadline, "the producer never waited"
        time.sleep(0.001)  # polling for the producer to block, with a deadline
    closing = threading.Thread(target=log.close)
    closing.start()
    log.gate.set()
    closing.join(DEADLINE)
    waiting.join(DEADLINE)
    assert not closing.is_alive()
    assert [e["event"] for e in entries(tmp_path)] == ["first", "second"]
