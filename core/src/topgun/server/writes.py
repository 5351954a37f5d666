"""The write pipeline (PROTOCOL.md §6.1, §2.2, §2.4): validate, authorize, intercept, merge,
announce, persist, acknowledge.

`WritePipeline.apply` runs steps 1–8 for the ops of one request, in order: each op is
classified and validated, authorized (PUT or REMOVE on its map), checked against the map's
kind, handed to the `before_op` plugins (which may transform, drop or reject it) and merged;
then the changes of the whole request are delivered as events and submitted to storage as one
batch. `WritePipeline.settle` is step 9: it waits, op by op, until the requested write
concern is reached or the op's timeout expires, then calls the `after_op` plugins and returns
the `OpResult`s. Apply and settle are separate so that a session can go on with its next
message while a `PERSISTED` write waits for its commit.

Every failure is per op: an op that fails does not stop the others (§5.2).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

import anyio
import msgspec

from topgun.crdt import ClockDriftError, LWWRecord, Timestamp, check_ttl, validate_timestamp
from topgun.hooks import (
    DROP,
    Connection,
    PluginError,
    Principal,
    Rejected,
    TopgunPluginManager,
    call_chain_async,
    call_hook_async,
)
from topgun.protocol import (
    WRITE_CONCERN_LEVELS,
    ClientOp,
    EventPayload,
    InvalidOp,
    OpResult,
    OpType,
    WriteConcern,
)
from topgun.server.events import EventRouter, Recipient
from topgun.server.maps import MapKindMismatch, MapRegistry, Recording
from topgun.server.security import Security
from topgun.storage import Commit, MapKind, StorageError

logger = logging.getLogger(__name__)

DEFAULT_WRITE_CONCERN: Final[WriteConcern] = "MEMORY"
DEFAULT_TIMEOUT_MS: Final = 5000
"""An op's write-concern timeout when neither the op nor its batch sets one (§5.2)."""

LEVEL: Final = {level: rank for rank, level in enumerate(WRITE_CONCERN_LEVELS)}
"""Write-concern level -> rank (higher is further)."""

Action = Literal["PUT", "REMOVE"]

_ALWAYS_GRANTED: Final[dict[tuple[str, Action], bool]] = {}
"""The permission answers of a trusted (server-originated) request: never consulted."""


class OpFailed(Exception):
    """An op failed: `reason` is its `OpResult.error`, `code` its `OP_REJECTED` code."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


# The pipeline's records are msgspec Structs, not dataclasses: some are made per op, and a
# Struct is built in C (a frozen dataclass's `__init__` costs ~9 times as much).


class WriteContext(msgspec.Struct, frozen=True):
    """Where a write came from: satisfies `topgun.hooks.OpContext`."""

    principal: Principal
    connection: Connection | None


class OpState(msgspec.Struct):
    """One op on its way through the pipeline."""

    index: int
    op_id: str
    has_id: bool
    """Whether the op carried an `id` (`lastId` names the last op that did)."""
    op: ClientOp | InvalidOp
    """The op as received, then as the `before_op` plugins left it."""
    requested: WriteConcern
    timeout_ms: int
    error: str | None = None
    code: int = 0
    changed: bool = False
    """The merge changed the map (so the request's commit holds this op's state)."""

    def fail(self, reason: str, code: int) -> None:
        self.error = reason
        self.code = code


class WriteRequest(msgspec.Struct):
    """The ops of one request after `apply`: what `settle` needs to finish them."""

    ops: list[OpState]
    received_at: float
    """`anyio.current_time()` (the event loop's clock, virtual under simulation) when the
    request arrived: timeouts count from here."""
    events: list[EventPayload] = msgspec.field(default_factory=list)
    commit: Commit | None = None
    storage_error: BaseException | None = None

    @property
    def waits(self) -> bool:
        """Whether some op must wait before it can be acknowledged (PERSISTED asked)."""
        return any(state.error is None and state.requested == "PERSISTED" for state in self.ops)


class Applied(msgspec.Struct, frozen=True):
    """One op's change of a map, as change observers (journal, TTL schedule) see it."""

    map_name: str
    key: str
    previous: LWWRecord | None
    """The LWW record the key held before the op (`None` for a new key or an OR-Map)."""
    events: Sequence[EventPayload]
    """The events the op produced, in order."""


ChangeObserver = Callable[[Sequence[Applied], Recording], None]
"""`observer(applied, recording)`: told, in op order, about ops that changed a map (step 7)
before anything else can change one (a run of ops merged without awaiting is told at once);
it may add storage changes of its own to `recording` (persisted with the request's)."""


def _invalid(detail: str) -> OpFailed:
    return OpFailed(f"Invalid op: {detail}", 400)


def _check_timestamp(what: str, timestamp: Timestamp) -> None:
    try:
        validate_timestamp(timestamp)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{what}: {exc}") from None


def _check_ttl(what: str, ttl_ms: float | None) -> None:
    try:
        check_ttl(ttl_ms)
    except ValueError as exc:
        raise _invalid(f"{what}: {exc}") from None


def classify(op: ClientOp) -> tuple[OpType, Action, MapKind]:
    """The op's effective type, the permission it needs and the map kind it writes (§2.2).

    Raises `OpFailed` ("Invalid op: ...") when its fields do not fit its type: a missing
    record, a malformed timestamp or TTL, an OR tag that is not its timestamp's string form.
    A `PUT` whose value is nil is a `REMOVE`.
    """
    op_type = op.op_type
    if op_type is None:
        if op.or_record is not None:
            op_type = "OR_ADD"
        elif op.or_tag is not None:
            op_type = "OR_REMOVE"
        elif op.record is not None:
            op_type = "PUT"
        else:
            raise _invalid("no record, orRecord or orTag")
    if op_type in ("PUT", "REMOVE"):
        record = op.record
        if record is None:
            raise _invalid(f"{op_type} needs a record")
        if op_type == "REMOVE" and record.value is not None:
            raise _invalid("REMOVE needs a record with a nil value")
        _check_timestamp("record timestamp", record.timestamp)
        _check_ttl("record ttlMs", record.ttl_ms)
        return ("PUT", "PUT", "lww") if record.value is not None else ("REMOVE", "REMOVE", "lww")
    if op_type == "OR_ADD":
        or_record = op.or_record
        if or_record is None:
            raise _invalid("OR_ADD needs an orRecord")
        _check_timestamp("orRecord timestamp", or_record.timestamp)
        _check_ttl("orRecord ttlMs", or_record.ttl_ms)
        if or_record.tag != str(or_record.timestamp):
            raise _invalid(
                f"orRecord tag {or_record.tag!r} differs from its timestamp {or_record.timestamp}"
            )
        return "OR_ADD", "PUT", "ormap"
    tag = op.or_tag
    if tag is None:
        raise _invalid("OR_REMOVE needs an orTag")
    check_tag(tag)
    return "OR_REMOVE", "REMOVE", "ormap"


def check_tag(tag: str) -> None:
    """Raise `OpFailed` unless `tag` is an HLC string in canonical form."""
    try:
        timestamp = validate_timestamp(Timestamp.parse(tag))
    except ValueError as exc:
        raise _invalid(f"orTag {tag!r} is not an HLC string: {exc}") from None
    if str(timestamp) != tag:
        raise _invalid(f"orTag {tag!r} is not an HLC string in canonical form")


def result_of(state: OpState, achieved: WriteConcern | None = None) -> OpResult:
    """The `OpResult` of a settled op: failed ops carry their error."""
    if state.error is not None:
        return OpResult(
            op_id=state.op_id,
            success=False,
            achieved_level=achieved or "FIRE_AND_FORGET",
            error=state.error,
        )
    return OpResult(op_id=state.op_id, success=True, achieved_level=state.requested)


class WritePipeline:
    """The one path every client write takes (OP_BATCH, CLIENT_OP, OR-Map pushes, HTTP)."""

    def __init__(
        self,
        *,
        maps: MapRegistry,
        security: Security,
        pm: TopgunPluginManager,
        router: EventRouter,
    ) -> None:
        self.maps = maps
        self.security = security
        self.pm = pm
        self.router = router
        self.observers: list[ChangeObserver] = []
        """Called for every op that changed a map (journal, TTL schedule)."""
        self.record_sent: Callable[[Connection, int], None] | None = None
        """Told the `millis` of every record a connection sends (tombstone GC)."""
        self.reads_previous: Callable[[str], bool] = lambda map_name: True
        """Whether a write to the map reads the value it replaces (resolvers, journal): under
        a memory budget, only then is a cold value loaded for a write."""
        self.resolve: Callable[[ClientOp, WriteContext], Awaitable[ClientOp]] | None = None
        """Step 6, the conflict-resolver chain (`topgun.server.resolvers`): the op as the
        chain leaves it, or `OpFailed` (409) on a rejection."""
        self.resolves: Callable[[str], bool] = lambda map_name: self.resolve is not None
        """Whether the resolver chain may change writes to the map (else it is skipped)."""

    async def apply(
        self,
        ops: Sequence[ClientOp | InvalidOp],
        context: WriteContext,
        *,
        origin: Recipient | None,
        write_concern: WriteConcern | None = None,
        timeout: int | None = None,
        removal_needs_live_tag: bool = False,
        trusted: bool = False,
    ) -> WriteRequest:
        """Steps 1–8 for `ops` in order; their events go to everyone but `origin`.

        `write_concern` / `timeout` are the request's defaults (ops may override them).
        With `removal_needs_live_tag` (OR-Map pushes, §6.4) an `OR_REMOVE` needs the REMOVE
        permission only when it removes a live record; otherwise PUT. `trusted` writes are
        the server's own (TTL expiry): not authorized, still intercepted.

        An op that needs no plugin, resolver or cold value is merged without awaiting, and
        the change observers hear such runs of ops at once; every op's changes land in the
        request's one `Recording`.
        """
        request = WriteRequest([], anyio.current_time())
        batch_concern = write_concern or DEFAULT_WRITE_CONCERN
        batch_timeout = DEFAULT_TIMEOUT_MS if timeout is None else timeout
        combined = Recording()
        applied: list[Applied] = []  # merged, not yet told to the observers
        intercept = bool(self.pm.hook.before_op.get_hookimpls())
        granted: dict[tuple[str, Action], bool] = {}  # this request's permission answers
        if trusted:
            granted = _ALWAYS_GRANTED
        newest_sent = -1
        for index, op in enumerate(ops):
            if isinstance(op, InvalidOp):
                raw_id = op.raw.get("id") if isinstance(op.raw, dict) else None
                state = OpState(
                    index, op.op_id, isinstance(raw_id, str), op, batch_concern, batch_timeout
                )
                state.fail(op.reason, 400)
                request.ops.append(state)
                continue
            state = OpState(
                index,
                op.id if op.id is not None else f"#{index}",
                op.id is not None,
                op,
                op.write_concern or batch_concern,
                op.timeout if op.timeout is not None else batch_timeout,
            )
            request.ops.append(state)
            try:
                op_type, action, kind = classify(op)
                sent = op.record or op.or_record
                if sent is not None and sent.timestamp.millis > newest_sent:
                    newest_sent = sent.timestamp.millis
                self._authorize(op, op_type, action, context, removal_needs_live_tag, granted)
                self._check_kind(op.map_name, kind)
                if (
                    intercept
                    or self.maps.tiered
                    or (not trusted and op_type in ("PUT", "REMOVE") and self.resolves(op.map_name))
                ):
                    self._observe(applied, combined)  # in order, before anything awaits
                    await self._apply_awaiting(
                        state, op, op_type, kind, context, combined, applied, intercept,
                        removal_needs_live_tag, granted, trusted,
                    )  # fmt: skip
                    self._observe(applied, combined)
                else:
                    self._merge(state, op, op_type, combined, applied)
            except OpFailed as failure:
                state.fail(failure.reason, failure.code)
        self._observe(applied, combined)
        if newest_sent >= 0 and self.record_sent is not None and context.connection is not None:
            self.record_sent(context.connection, newest_sent)
        request.events = combined.events
        self.router.deliver(combined.events, origin)
        if self.router.settlers:
            # Updates waiting for rows these changes replaced read them from storage first.
            await self.router.settle()
        try:
            request.commit = await self.maps.persist(combined)
        except StorageError as exc:
            logger.error("storage refused the changes of a write request: %s", exc)
            request.storage_error = exc
        return request

    def _observe(self, applied: list[Applied], recording: Recording) -> None:
        """Tell the change observers about `applied` (then forget it)."""
        if applied:
            for observer in self.observers:
                observer(applied, recording)
            applied.clear()

    def _authorize(
        self,
        op: ClientOp,
        op_type: OpType,
        action: Action,
        context: WriteContext,
        live_only: bool,
        granted: dict[tuple[str, Action], bool],
    ) -> None:
        if (
            live_only
            and op_type == "OR_REMOVE"
            and op.or_tag is not None
            and not self.maps.holds_live_tag(op.map_name, op.or_tag)
        ):
            action = "PUT"
        if granted is _ALWAYS_GRANTED:
            return
        allowed = granted.get((op.map_name, action))
        if allowed is None:
            allowed = self.security.is_allowed(context.principal, op.map_name, action)
            granted[(op.map_name, action)] = allowed
        if not allowed:
            raise OpFailed("Access denied", 403)

    async def _apply_awaiting(
        self,
        state: OpState,
        op: ClientOp,
        op_type: OpType,
        kind: MapKind,
        context: WriteContext,
        combined: Recording,
        applied: list[Applied],
        intercept: bool,
        live_only: bool,
        granted: dict[tuple[str, Action], bool],
        trusted: bool,
    ) -> None:
        """Steps 5–7 for an op that awaits: `before_op` plugins, cold or archived values,
        the resolver chain."""
        if intercept:
            replaced = await self._before_op(op, context)
            if replaced is not op:
                state.op = op = replaced
                op_type, action, kind = classify(op)
                self._authorize(op, op_type, action, context, live_only, granted)
                self._check_kind(op.map_name, kind)
        held = None
        if self.maps.tiered:
            # An archived map comes back first; under a memory budget the key's value is
            # loaded (and kept) if resolvers or the journal read it. An OR-Map write changes
            # records in place: the keys it touches are always loaded.
            if kind == "ormap":
                await self.maps.ensure_loaded(op.map_name)  # to know who holds the tag
                tag = op.or_tag if op_type == "OR_REMOVE" else None
                keys = self.maps.or_write_keys(op.map_name, op.key, tag)
            else:
                keys = [op.key] if self.reads_previous(op.map_name) else []
            held = await self.maps.hold(op.map_name, keys)
        try:
            if self.resolve is not None and op_type in ("PUT", "REMOVE") and not trusted:
                state.op = op = await self.resolve(op, context)  # §6.1 step 6, §8.2
            self._merge(state, op, op_type, combined, applied)
        finally:
            if held is not None:
                held.release()

    def _merge(
        self,
        state: OpState,
        op: ClientOp,
        op_type: OpType,
        combined: Recording,
        applied: list[Applied],
    ) -> None:
        """Step 7: merge the op into its map, recording into `combined`; an op that changed
        the map joins `applied`."""
        observed = bool(self.observers)
        previous = None
        if observed:
            lww = self.maps.lww(op.map_name)
            previous = lww.get_record(op.key) if lww is not None else None
        changes_before = len(combined.changes)
        events_before = len(combined.events)
        try:
            with self.maps.recording(combined):
                if op_type == "OR_ADD":
                    assert op.or_record is not None
                    self.maps.add_or(op.map_name, op.key, op.or_record)
                elif op_type == "OR_REMOVE":
                    assert op.or_tag is not None
                    self.maps.tombstone_or(op.map_name, op.or_tag, op.key)
                else:
                    assert op.record is not None
                    self.maps.merge_lww(op.map_name, op.key, op.record, checked=True)  # classify
        except ClockDriftError:
            raise OpFailed("Clock drift", 400) from None
        except MapKindMismatch:
            raise OpFailed("Map type mismatch", 400) from None
        except (TypeError, ValueError) as exc:  # a value the CRDT cannot hold
            raise _invalid(str(exc)) from None
        if len(combined.changes) != changes_before:
            state.changed = True
            if observed:
                events = combined.events[events_before:]
                applied.append(Applied(op.map_name, op.key, previous, events))

    def _check_kind(self, map_name: str, kind: MapKind) -> None:
        try:
            self.maps.check_kind(map_name, kind)
        except MapKindMismatch:
            raise OpFailed("Map type mismatch", 400) from None

    async def _before_op(self, op: ClientOp, context: WriteContext) -> ClientOp:
        try:
            result = await call_chain_async(self.pm.hook.before_op, "op", op=op, context=context)
        except Rejected as rejected:
            raise OpFailed(rejected.reason, rejected.code or 403) from None
        except Exception:
            logger.exception("a before_op plugin failed on an op of map %r", op.map_name)
            raise OpFailed("Internal error: a server plugin failed", 500) from None
        if result is DROP:
            raise OpFailed("Dropped by server policy", 403)
        if not isinstance(result, ClientOp):
            error = PluginError(
                f"before_op returned {type(result).__name__}; it must return None, DROP or a "
                "topgun.protocol.ClientOp"
            )
            logger.error("%s", error)
            raise OpFailed("Internal error: a server plugin failed", 500)
        return result

    async def settle(self, request: WriteRequest, context: WriteContext) -> list[OpResult]:
        """Step 9: wait for each op's write concern (or its timeout); then `after_op`.

        Returns one `OpResult` per op, in order.
        """
        results: list[OpResult] = []
        for state in request.ops:
            achieved: WriteConcern | None = None
            if state.error is None and state.requested == "PERSISTED":
                achieved = await self._persisted(request, state)
            results.append(result_of(state, achieved))
        if self.pm.hook.after_op.get_hookimpls():
            for state, result in zip(request.ops, results, strict=True):
                try:
                    await call_hook_async(
                        self.pm.hook.after_op, op=state.op, context=context, result=result
                    )
                except Exception:
                    logger.exception("an after_op plugin failed (the op's result stands)")
        return results

    async def _persisted(self, request: WriteRequest, state: OpState) -> WriteConcern | None:
        """Wait until the op's state is committed; on failure, fail it and return the
        level it reached."""
        op = state.op
        assert isinstance(op, ClientOp)
        if state.changed:
            if request.storage_error is not None:
                state.fail("Storage write failed: achieved REPLICATED, requested PERSISTED", 500)
                return "REPLICATED"
            commit = request.commit
        else:
            commit = self.maps.pending_commit(op.map_name, op.key)
        if commit is None:
            return None
        remaining = request.received_at + state.timeout_ms / 1000 - anyio.current_time()
        with anyio.move_on_after(max(remaining, 0.0)):
            try:
                await commit.wait()
            except StorageError:
                state.fail("Storage write failed: achieved REPLICATED, requested PERSISTED", 500)
                return "REPLICATED"
            return None
        state.fail("Timeout: achieved REPLICATED, requested PERSISTED", 500)
        return "REPLICATED"


def achieved_level(results: Sequence[OpResult], default: WriteConcern) -> WriteConcern:
    """`OP_ACK.achievedLevel`: the lowest level over `results` (`default` when empty)."""
    if not results:
        return default
    return min((r.achieved_level for r in results), key=LEVEL.__getitem__)


def last_id(request: WriteRequest) -> str:
    """`OP_ACK.lastId`: the id of the last op that carried one, `""` if none did."""
    for state in reversed(request.ops):
        if state.has_id:
            return state.op_id
    return ""
