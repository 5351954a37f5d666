"""Entry processors (PROTOCOL.md §5.12, §8.1): named server-side callables run on one key.

A processor is `processor(value, key, args) -> (outcome, result)`: `value` is a copy of the
key's live value (`None` if absent, removed or expired), `outcome` the new value or one of
the sentinels `DELETE` / `UNCHANGED`, and `result` goes back to the client. The built-ins of
§8.1 are registered under their `builtin:*` names; plugins add more through the
`register_entry_processors` hook. The `code` a client sends is never looked at.

`ENTRY_PROCESS` / `ENTRY_PROCESS_BATCH` run processors serialized per (map, key) (a FIFO lock
per key) and atomically: a write of the key by anyone else while the processor ran makes it
run again on the new value. The callable runs in a worker thread under a deadline
(`processors.timeout_ms`): one that runs past it is abandoned with `"Processor timeout"`, and
the event loop keeps serving everyone. Python cannot stop a thread, so an abandoned
processor keeps its thread until it returns; at most `processors.max_abandoned` such threads
may exist, beyond that processors are refused (`"Processor timeout"`) until one returns.
Each connection may run `processors.max_per_second` executions per second (`"Rate
limited"` beyond), with `args` of at most 1 MiB.

A new outcome is written through the write pipeline with the server's `hlc.now()` as the
writer's own op (authorized as PUT, or REMOVE for deletes; intercepted by `before_op`;
persisted, journaled, and sent as `SERVER_EVENT` to every subscriber including the writer).
"""

from __future__ import annotations

import copy
import enum
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import msgspec
from msgspec import UNSET

from topgun.crdt import LWWRecord, Timestamp
from topgun.crdt.ormap import same_value
from topgun.hooks import (
    EntryProcessor,
    PluginError,
    TopgunPluginManager,
    collect_registrations,
)
from topgun.protocol import (
    ClientOp,
    EntryProcess,
    EntryProcessBatch,
    EntryProcessBatchResponse,
    EntryProcessResponse,
    EntryResult,
)
from topgun.server.maps import MapRegistry
from topgun.server.security import Security
from topgun.server.writes import WriteContext, WritePipeline

if TYPE_CHECKING:
    from topgun.server.session import Session

logger = logging.getLogger(__name__)

MAX_ARGS_BYTES: Final = 1024 * 1024
"""Larger `args` (msgpack-encoded) are refused."""

MAX_ATTEMPTS: Final = 3
"""How often a processor runs again when the key changed under it before giving up."""


def _stamp(record: LWWRecord | None) -> Timestamp | None:
    """What identifies a key's state: its record's timestamp (the value may be evicted)."""
    return None if record is None else record.timestamp


class Outcome(enum.Enum):
    """What a processor may return instead of a new value."""

    DELETE = "DELETE"
    UNCHANGED = "UNCHANGED"


DELETE: Final = Outcome.DELETE
"""Outcome: remove the key."""
UNCHANGED: Final = Outcome.UNCHANGED
"""Outcome: leave the key as it is."""


# -- built-ins (§8.1) -----------------------------------------------------------------------


def _number(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the value is {type(value).__name__}, not a number")
    return value


def _delta(args: Any, default: float = 1) -> float:
    return _number(args, default)


def _increment(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    new = _number(value, 0) + _delta(args)
    return new, new


def _decrement(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    new = _number(value, 0) - _delta(args)
    return new, new


def _decrement_floor(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    wanted = _number(value, 0) - _delta(args)
    new = max(0, wanted)
    return new, {"newValue": new, "wasFloored": wanted < 0}


def _multiply(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    new = _number(value, 1) * _number(args, 1)
    return new, new


def _put_if_absent(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    return (args, True) if value is None else (UNCHANGED, False)


def _replace(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    return (UNCHANGED, UNSET) if value is None else (args, value)


def _replace_if_equals(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    if not isinstance(args, Mapping) or "expected" not in args or "newValue" not in args:
        raise ValueError("args must be {expected, newValue}")
    if same_value(value, args["expected"]):
        return args["newValue"], True
    return UNCHANGED, False


def _delete_if_equals(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    if value is not None and same_value(value, args):
        return DELETE, True
    return UNCHANGED, False


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"the value is {type(value).__name__}, not an array")
    return value


def _array_push(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    new = [*_list(value), args]
    return new, len(new)


def _array_pop(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    items = _list(value)
    if not items:
        return [], UNSET
    return items[:-1], items[-1]


def _array_remove(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    items = _list(value)
    for index, item in enumerate(items):
        if same_value(item, args):
            return items[:index] + items[index + 1 :], True
    return UNCHANGED, False


def _path(path: Any) -> list[str]:
    if not isinstance(path, str) or not path:
        raise ValueError("path must be a non-empty dot-separated string")
    return path.split(".")


def _set_property(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    if not isinstance(args, Mapping) or "path" not in args:
        raise ValueError("args must be {path, value}")
    *parents, last = _path(args["path"])
    root = dict(value) if isinstance(value, Mapping) else {}
    node = root
    for name in parents:
        child = node.get(name)
        node[name] = dict(child) if isinstance(child, Mapping) else {}
        node = node[name]
    node[last] = args.get("value")
    return root, root


def _delete_property(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    *parents, last = _path(args)
    if not isinstance(value, Mapping):
        return UNCHANGED, UNSET
    root = dict(value)
    node = root
    for name in parents:
        child = node.get(name)
        if not isinstance(child, Mapping):
            return UNCHANGED, UNSET
        node[name] = dict(child)
        node = node[name]
    if last not in node:
        return UNCHANGED, UNSET
    return root, node.pop(last)


def _get(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    return UNCHANGED, value


def _conditional_update(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    if not isinstance(args, Mapping) or not isinstance(args.get("newData"), Mapping):
        raise ValueError("args must be {expectedVersion, newData: map}")
    current = value if isinstance(value, Mapping) else {}
    version = current.get("version")
    if not same_value(version, args.get("expectedVersion")):
        return UNCHANGED, {"updated": False, "conflict": True}
    new = {**current, **args["newData"], "version": _number(version, 0) + 1}
    return new, {"updated": True, "conflict": False}


def _merge(value: Any, key: str, args: Any) -> tuple[Any, Any]:
    if not isinstance(args, Mapping):
        raise ValueError("args must be a map")
    new = {**(value if isinstance(value, Mapping) else {}), **args}
    return new, new


BUILTIN_PROCESSORS: Final[Mapping[str, EntryProcessor]] = {
    "builtin:increment": _increment,
    "builtin:decrement": _decrement,
    "builtin:decrement_floor": _decrement_floor,
    "builtin:multiply": _multiply,
    "builtin:put_if_absent": _put_if_absent,
    "builtin:replace": _replace,
    "builtin:replace_if_equals": _replace_if_equals,
    "builtin:delete_if_equals": _delete_if_equals,
    "builtin:array_push": _array_push,
    "builtin:array_pop": _array_pop,
    "builtin:array_remove": _array_remove,
    "builtin:set_property": _set_property,
    "builtin:delete_property": _delete_property,
    "builtin:get": _get,
    "builtin:conditional_update": _conditional_update,
    "builtin:merge": _merge,
}
"""The processors every server has (PROTOCOL.md §8.1 table)."""


# -- running them ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """The outcome of one processor run on one key."""

    success: bool
    result: Any = UNSET
    new_value: Any = UNSET
    """Present only when a value was written (not for deletes or unchanged outcomes)."""
    error: str | None = None
    timestamp: Timestamp | None = None
    """The HLC timestamp of the write, if one happened."""


class ProcessorFailure(Exception):
    """A processor run failed; the message is the response's `error`."""


class _Run:
    """Bookkeeping of one worker-thread call, shared with the thread."""

    def __init__(self) -> None:
        self.finished = False
        self.abandoned = False


class EntryProcessors:
    """The processor registry and the machinery that runs processors on keys."""

    def __init__(
        self,
        *,
        processors: Mapping[str, EntryProcessor],
        maps: MapRegistry,
        writes: WritePipeline,
        security: Security,
        timeout_ms: int,
        max_abandoned: int,
        max_per_second: int,
        clock: Callable[[], int],
    ) -> None:
        self.processors = dict(processors)
        self.maps = maps
        self.writes = writes
        self.security = security
        self.timeout_ms = timeout_ms
        self.max_abandoned = max_abandoned
        self.abandoned = 0
        """Worker threads of timed-out processors that have not returned yet."""
        self.max_per_second = max_per_second
        self.clock = clock
        self._recent: weakref.WeakKeyDictionary[object, deque[int]] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[anyio.Lock, int]] = {}

    @classmethod
    def collect(cls, pm: TopgunPluginManager, **options: Any) -> EntryProcessors:
        """The built-ins plus every processor the `register_entry_processors` plugins add
        (a plugin reusing a built-in name is a `PluginError`)."""
        registered = collect_registrations(pm.hook.register_entry_processors)
        processors: dict[str, EntryProcessor] = dict(BUILTIN_PROCESSORS)
        for name, registration in registered.items():
            if name in processors:
                raise PluginError(
                    f"plugin {registration.plugin} registered entry processor {name!r}, "
                    "a built-in name"
                )
            processors[name] = registration.obj
        return cls(processors=processors, **options)

    def admit(self, connection: object) -> bool:
        """Count one execution for `connection`; False past `max_per_second` in the last
        second (the execution is then refused with `"Rate limited"`)."""
        now = self.clock()
        recent = self._recent.setdefault(connection, deque())
        while recent and recent[0] <= now - 1000:
            recent.popleft()
        if len(recent) >= self.max_per_second:
            return False
        recent.append(now)
        return True

    async def process(
        self, context: WriteContext, map_name: str, key: str, name: str, args: Any
    ) -> ProcessResult:
        """Run processor `name` on (`map_name`, `key`) and write its outcome."""
        processor = self.processors.get(name)
        if processor is None:
            return ProcessResult(False, error=f"Unknown processor: {name}")
        if context.connection is not None and not self.admit(context.connection):
            return ProcessResult(False, error="Rate limited")
        if len(msgspec.msgpack.encode(args)) > MAX_ARGS_BYTES:
            return ProcessResult(False, error="Processor args exceed 1 MiB")
        if self.maps.kind(map_name) == "ormap":
            return ProcessResult(False, error="Entry processors require an LWW map")
        if not self.security.is_allowed(context.principal, map_name, "PUT"):
            return ProcessResult(False, error="Access denied")
        async with self._key_lock(map_name, key):
            try:
                return await self._run_and_write(processor, context, map_name, key, args)
            except ProcessorFailure as failure:
                return ProcessResult(False, error=str(failure))

    def _key_lock(self, map_name: str, key: str) -> _KeyLock:
        return _KeyLock(self._locks, (map_name, key))

    async def _run_and_write(
        self,
        processor: EntryProcessor,
        context: WriteContext,
        map_name: str,
        key: str,
        args: Any,
    ) -> ProcessResult:
        for _ in range(MAX_ATTEMPTS):
            async with self.maps.holding(map_name, (key,)):
                lww = self.maps.lww(map_name)
                before = _stamp(lww.get_record(key) if lww is not None else None)
                current = lww.get(key) if lww is not None else None
            outcome, result = await self._call(processor, current, key, args)
            lww = self.maps.lww(map_name)
            if _stamp(lww.get_record(key) if lww is not None else None) != before:
                continue  # someone wrote the key meanwhile: run again on its new value
            if outcome is UNCHANGED or (outcome is DELETE and current is None):
                return ProcessResult(True, result=result)
            if outcome is not DELETE and outcome is not None and same_value(outcome, current):
                return ProcessResult(True, result=result)
            value = None if outcome is DELETE else outcome
            record = LWWRecord(value, self.writes.maps.hlc.now())
            request = await self.writes.apply(
                [ClientOp(map_name=map_name, key=key, record=record)], context, origin=None
            )
            (state,) = request.ops
            if state.error is not None:
                return ProcessResult(False, error=state.error)
            written = state.op.record if isinstance(state.op, ClientOp) else None
            stamp = written.timestamp if written is not None else record.timestamp
            if written is None or written.value is None:
                return ProcessResult(True, result=result, timestamp=stamp)
            return ProcessResult(True, result=result, new_value=written.value, timestamp=stamp)
        raise ProcessorFailure("Processor failed: the key kept changing while it ran")

    async def _call(
        self, processor: EntryProcessor, value: Any, key: str, args: Any
    ) -> tuple[Any, Any]:
        if self.abandoned >= self.max_abandoned:
            raise ProcessorFailure("Processor timeout")
        run = _Run()
        snapshot = copy.deepcopy(value)
        arguments = copy.deepcopy(args)

        def call() -> Any:
            try:
                return processor(snapshot, key, arguments)
            finally:
                with self._guard:
                    run.finished = True
                    if run.abandoned:
                        self.abandoned -= 1

        answer: Any = None
        with anyio.move_on_after(self.timeout_ms / 1000) as scope:
            try:
                answer = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            except Exception as exc:
                raise ProcessorFailure(f"Processor failed: {exc}") from None
        if scope.cancelled_caught:
            with self._guard:
                if not run.finished:
                    run.abandoned = True
                    self.abandoned += 1
            logger.warning("an entry processor ran past %d ms and was abandoned", self.timeout_ms)
            raise ProcessorFailure("Processor timeout")
        if not isinstance(answer, tuple) or len(answer) != 2:
            raise ProcessorFailure(
                f"Processor failed: it returned {type(answer).__name__}, not (outcome, result)"
            )
        return answer[0], answer[1]


class _KeyLock:
    """The FIFO lock of one (map, key), dropped from the table when nobody holds or waits."""

    def __init__(self, table: dict[tuple[str, str], tuple[anyio.Lock, int]], key: Any) -> None:
        self.table = table
        self.key = key

    async def __aenter__(self) -> None:
        lock, users = self.table.get(self.key) or (anyio.Lock(), 0)
        self.table[self.key] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        lock, users = self.table[self.key]
        lock.release()
        if users == 1:
            del self.table[self.key]
        else:
            self.table[self.key] = (lock, users - 1)


# -- handlers (dispatch table entries) ------------------------------------------------------


def _entry(outcome: ProcessResult) -> EntryResult:
    return EntryResult(
        success=outcome.success,
        result=outcome.result,
        new_value=outcome.new_value,
        error=outcome.error,
    )


def _context(session: Session) -> WriteContext:
    principal = session.principal
    assert principal is not None
    return WriteContext(principal, session)


def _processors(session: Session) -> EntryProcessors:
    processors: EntryProcessors = session.server.processors
    return processors


async def entry_process(session: Session, message: EntryProcess) -> None:
    """`ENTRY_PROCESS` → `ENTRY_PROCESS_RESPONSE`."""
    outcome = await _processors(session).process(
        _context(session),
        message.map_name,
        message.key,
        message.processor.name,
        message.processor.args,
    )
    session.send(
        EntryProcessResponse(
            request_id=message.request_id,
            success=outcome.success,
            result=outcome.result,
            new_value=outcome.new_value,
            error=outcome.error,
            timestamp=outcome.timestamp,
        )
    )


async def entry_process_batch(session: Session, message: EntryProcessBatch) -> None:
    """`ENTRY_PROCESS_BATCH`: each distinct key in first-occurrence order, each atomic."""
    processors = _processors(session)
    context = _context(session)
    results: dict[str, EntryResult] = {}
    for key in dict.fromkeys(message.keys):
        outcome = await processors.process(
            context, message.map_name, key, message.processor.name, message.processor.args
        )
        results[key] = _entry(outcome)
    session.send(EntryProcessBatchResponse(request_id=message.request_id, results=results))
