"""`AuditLog`: the writer of the hash-chained log, fed through a bounded queue.

Producers (the hooks, on the server's event loop) hand entry bodies to `try_put`, `put`
or `put_blocking`; one writer thread takes them in order, chains them (`seq`, `prev`,
`hash`), appends them to the active file, rotates it by size, and after each batch flushes,
fsyncs and rewrites the head file. The queue holds at most `queue_size` bodies: when it is
full, `try_put` says so and the other two wait for room, so an entry is never dropped.

A batch the disk refuses (full, read-only) stays queued and is retried, so the queue fills
and the configured `on_full` policy applies; `failure` says why meanwhile.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Final

import anyio

from topgun_audit.chain import (
    ACTIVE,
    GENESIS,
    HEAD,
    log_files,
    read_head,
    rotated_files,
    rotated_name,
    seal,
)

logger = logging.getLogger(__name__)

BATCH: Final = 1000
"""Entries the writer takes from the queue at most per flush."""

RETRY_SECONDS: Final = 1.0
"""How long the writer waits before retrying a batch the disk refused."""

CLOSING_RETRIES: Final = 5
"""Retries of a refused batch once `close` was called, before the writer gives up (and
logs how many entries it could not write) so that a dead disk cannot hang a shutdown."""

_TAIL_BYTES: Final = 1 << 20


class AuditLogClosed(RuntimeError):
    """An entry was handed to a log that is not open."""


class AuditLog:
    """The audit log in `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        queue_size: int = 10_000,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.queue_size = queue_size
        self.fsync = fsync
        self.written = 0
        """Entries written since `open`."""
        self.failure: BaseException | None = None
        """The last error of the writer, until a batch succeeds again."""
        self.waiting = 0
        """Producers waiting for room in the full queue right now."""
        self._queue: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition()
        self._open = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._file: io.FileIO | None = None
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._recovered: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Find where the chain ends (repairing a torn last line) and start the writer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._resume()
        mismatch = self._head_mismatch()
        self._file = (self.directory / ACTIVE).open("ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size
        self._write_head()
        self._open = True
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"topgun-audit {self.directory}", daemon=True
        )
        self._thread.start()
        if self._recovered is not None:
            self.put_blocking({"event": "audit.recovered", "detail": self._recovered})
        if mismatch is not None:
            logger.warning("audit log %s: %s", self.directory, mismatch)
            self.put_blocking({"event": "audit.head_mismatch", "detail": mismatch})

    def close(self) -> None:
        """Write what is queued, then stop the writer and close the file."""
        with self._changed:
            if not self._open:
                return
            self._closing = True
            self._changed.notify_all()
        assert self._thread is not None
        self._thread.join()
        with self._changed:
            self._open = False
            self._changed.notify_all()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _resume(self) -> None:
        files = log_files(self.directory)
        for path in reversed(files):
            last, cut = _last_line(path)
            if cut:
                self._recovered = f"cut an incomplete last line of {cut} byte(s) from {path.name}"
            if last is None:
                continue
            self._seq, self._prev = int(last["seq"]), str(last["hash"])
            break

    def _head_mismatch(self) -> str | None:
        """Why the head file disagrees with where the chain ends (`None`: it agrees, or it
        is merely behind, as after a crash). Rewriting the head at open must not erase the
        evidence of entries cut from the end while the server was down: the disagreement
        becomes an entry of the chain."""
        try:
            head = read_head(self.directory)
        except ValueError as exc:
            return str(exc)
        if head is None:
            return (
                None
                if self._seq == 0
                else f"the head file was missing; the log ends at {self._seq}"
            )
        if head["seq"] > self._seq or (head["seq"] == self._seq and head["hash"] != self._prev):
            return (
                f"the head recorded entry {head['seq']} ({head['hash']}) but the log ends at "
                f"entry {self._seq} ({self._prev}): entries were removed or changed while closed"
            )
        return None

    # -- producers ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Entries waiting to be written (those being written included)."""
        return len(self._queue)

    def has_room(self) -> bool:
        """Whether a `try_put` now would succeed (a hint: other producers may come first)."""
        return len(self._queue) < self.queue_size

    def try_put(self, body: dict[str, Any]) -> bool:
        """Queue `body` if there is room; False (and nothing queued) when the queue is full."""
        with self._changed:
            self._check_open()
            if len(self._queue) >= self.queue_size:
                return False
            self._enqueue(body)
            return True

    def put_blocking(self, body: dict[str, Any]) -> None:
        """Queue `body`, waiting in this thread for room. A producer already waiting when
        `close` is called still gets its entry written (the writer waits for it)."""
        with self._changed:
            self._check_open()
            self.waiting += 1
            try:
                while len(self._queue) >= self.queue_size:
                    self._changed.wait()
                    if not self._open:
                        raise AuditLogClosed(f"the audit log {self.directory} was closed")
            finally:
                self._stop_waiting()
            self._enqueue(body)

    async def put(self, body: dict[str, Any]) -> None:
        """Queue `body`; when the queue is full, wait for room in a worker thread."""
        if not self.try_put(body):
            await anyio.to_thread.run_sync(self.put_blocking, body)

    def wait_for_room(self) -> None:
        """Return once the queue has room (blocks this thread)."""
        with self._changed:
            self.waiting += 1
            try:
                while self._open and len(self._queue) >= self.queue_size:
                    self._changed.wait()
            finally:
                self._stop_waiting()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued entry is written; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue, timeout)

    def _stop_waiting(self) -> None:
        """One producer stopped waiting (the lock held); a closing writer may be waiting
        for the last of them."""
        self.waiting -= 1
        if self._closing:
            self._changed.notify_all()

    def _enqueue(self, body: dict[str, Any]) -> None:
        """Queue `body` (the lock held); wake the writer if it waits for an empty queue."""
        self._queue.append(body)
        if len(self._queue) == 1:
            self._changed.notify_all()

    def _check_open(self) -> None:
        if not self._open or self._closing:
            raise AuditLogClosed(f"the audit log {self.directory} is not open")

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        retries_left = CLOSING_RETRIES
        while True:
            with self._changed:
                while not self._queue and not (self._closing and not self.waiting):
                    self._changed.wait()
                if not self._queue:
                    return
                batch = list(itertools.islice(self._queue, BATCH))
            done = self._write_batch(batch)
            with self._changed:
                for _ in range(done):
                    self._queue.popleft()
                self._changed.notify_all()
                if done == len(batch):
                    continue
                if self._closing:
                    retries_left -= 1
                    if retries_left < 0:
                        logger.error(
                            "audit log %s: closing with %d entries that could not be written: %s",
                            self.directory,
                            len(self._queue) + self.waiting,
                            self.failure,
                        )
                        self._open = False  # producers still waiting hear it was closed
                        self._changed.notify_all()
                        return
                self._changed.wait(RETRY_SECONDS)

    def _write_batch(self, batch: list[dict[str, Any]]) -> int:
        """Write the bodies of `batch` in order, in one write per file; how many are now
        durably in the log. After a failure the active file is cut back to its last
        durable size, so a retry writes the rest exactly once."""
        committed = 0
        chunk: list[bytes] = []
        seq, prev, size = self._seq, self._prev, self._size
        try:
            for body in batch:
                data, digest = seal(body, seq + 1, prev)
                if size and size + len(data) > self.max_file_bytes:
                    self._commit(chunk, seq, prev, size)
                    committed += len(chunk)
                    chunk = []
                    self._rotate()
                    size = 0
                chunk.append(data)
                seq, prev, size = seq + 1, digest, size + len(data)
            self._commit(chunk, seq, prev, size)
            committed += len(chunk)
            self._write_head()
        except OSError as exc:
            self._roll_back()
            if self.failure is None:
                logger.error("audit log %s: writing failed, will retry: %s", self.directory, exc)
            self.failure = exc
            self.written += committed
            return committed
        self.failure = None
        self.written += committed
        return committed

    def _commit(self, chunk: list[bytes], seq: int, prev: str, size: int) -> None:
        """Append `chunk` to the active file durably; the chain then ends at `seq`/`prev`."""
        assert self._file is not None
        data = memoryview(b"".join(chunk))
        while data:
            data = data[self._file.write(data) :]
        self._sync()
        self._seq, self._prev, self._size = seq, prev, size

    def _roll_back(self) -> None:
        """Cut the active file back to its last durable size (best effort)."""
        try:
            if self._file is not None:
                os.ftruncate(self._file.fileno(), self._size)
        except OSError as exc:
            logger.error("audit log %s: cannot cut back a failed write: %s", self.directory, exc)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        existing = rotated_files(self.directory)
        number = existing[-1][0] + 1 if existing else 1
        os.replace(self.directory / ACTIVE, self.directory / rotated_name(number))
        self._file = (self.directory / ACTIVE).open("ab", buffering=0)
        self._size = 0
        self._sync_directory()

    def _sync(self) -> None:
        assert self._file is not None
        if self.fsync:
            os.fsync(self._file.fileno())

    def _write_head(self) -> None:
        head = self.directory / HEAD
        temporary = head.with_suffix(".tmp")
        data = json.dumps({"seq": self._seq, "hash": self._prev}).encode()
        with temporary.open("wb") as file:
            file.write(data)
            if self.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, head)
        self._sync_directory()

    def _sync_directory(self) -> None:
        if self.fsync and os.name == "posix":
            descriptor = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def __repr__(self) -> str:
        return f"<AuditLog {self.directory} seq={self._seq} queued={self.queued}>"


def _last_line(path: Path) -> tuple[dict[str, Any] | None, int]:
    """The last entry of `path` (`None` if it has none), after cutting off an incomplete
    last line (a torn write); and how many bytes were cut."""
    size = path.stat().st_size
    cut_bytes = 0
    if size == 0:
        return None, 0
    with path.open("r+b") as file:
        start = max(0, size - _TAIL_BYTES)
        file.seek(start)
        tail = file.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start + cut + 1 if cut >= 0 else start
            cut_bytes = size - keep
            logger.warning(
                "audit log %s: cutting an incomplete last line of %d byte(s)", path, cut_bytes
            )
            file.truncate(keep)
            tail = tail[: cut + 1] if cut >= 0 else b""
        lines = tail.splitlines()
    if not lines:
        return None, cut_bytes
    try:
        entry = json.loads(lines[-1])
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "seq" not in entry or "hash" not in entry:
        raise ValueError(
            f"{path}: the last line is not an audit entry, so the chain cannot be continued; "
            "`topgun audit verify` says where the log was damaged"
        )
    return entry, cut_bytes
