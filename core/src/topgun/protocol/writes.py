"""Writes, acknowledgements and rejections (PROTOCOL.md §2.2, §2.4, §5.2, §6.1).

An `OP_BATCH` is validated in two layers, as §5.2 requires: a bad envelope (payload, `ops` not an
array, batch `writeConcern`/`timeout`) fails the whole message, while a bad op only fails that op.
Decoding therefore yields, for each op, either a `ClientOp` or an `InvalidOp` carrying the op id to
acknowledge and the reason, so the server can answer every op in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, final

from msgspec import Meta

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol.message import Message, Wire

__all__ = [
    "WRITE_CONCERN_LEVELS",
    "ClientOp",
    "ClientOpMessage",
    "InvalidOp",
    "MergeRejected",
    "OpAck",
    "OpAckPayload",
    "OpBatch",
    "OpBatchPayload",
    "OpRejected",
    "OpRejectedPayload",
    "OpResult",
    "OpType",
    "TimeoutMs",
    "WriteConcern",
]

WriteConcern = Literal["FIRE_AND_FORGET", "MEMORY", "APPLIED", "REPLICATED", "PERSISTED"]
"""How far an op must get before it is acknowledged as successful (§2.4)."""

WRITE_CONCERN_LEVELS: Final[tuple[WriteConcern, ...]] = (
    "FIRE_AND_FORGET",
    "MEMORY",
    "APPLIED",
    "REPLICATED",
    "PERSISTED",
)
"""The write-concern levels, lowest first: compare levels by their index here."""

OpType = Literal["PUT", "REMOVE", "OR_ADD", "OR_REMOVE"]

TimeoutMs = Annotated[int, Meta(ge=0, le=60_000)]
"""A write timeout in ms: at most 60 000 (§5.2)."""


class ClientOp(Wire):
    """One write as TS clients send it: a whole oplog entry (extra fields are ignored).

    Which of `record`/`orRecord`/`orTag` an op needs depends on `opType` (§2.2); that check is
    the server's, because an op that fails it must still be acknowledged.
    """

    map_name: str
    key: str
    id: str | None = None
    op_type: OpType | None = None
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None
    write_concern: WriteConcern | None = None
    timeout: TimeoutMs | None = None


@final
class InvalidOp:
    """An op of an `OP_BATCH` (or of HTTP `operations`) that did not validate.

    Produced by decoding only: `op_id` is the op's string `id`, or `"#<index>"` when it has none
    (§2.4); `reason` is the `OpResult.error` text (`"Invalid op: <detail>"`); `raw` is the op as
    received (encoding an `InvalidOp` writes `raw` back, so a decoded batch re-encodes faithfully).
    """

    __slots__ = ("index", "op_id", "raw", "reason")

    def __init__(self, index: int, op_id: str, reason: str, raw: Any) -> None:
        self.index = index
        self.op_id = op_id
        self.reason = reason
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InvalidOp):
            return NotImplemented
        return (self.index, self.op_id, self.reason, self.raw) == (
            other.index,
            other.op_id,
            other.reason,
            other.raw,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"InvalidOp(index={self.index!r}, op_id={self.op_id!r}, reason={self.reason!r})"


class OpBatchPayload(Wire):
    """`ops` in order; `writeConcern`/`timeout` are batch defaults that ops may override."""

    ops: Sequence[ClientOp | InvalidOp]
    write_concern: WriteConcern | None = None
    timeout: TimeoutMs | None = None


class OpBatch(Message, tag="OP_BATCH"):
    """C→S: apply the ops in order; answered by exactly one `OP_ACK`."""

    payload: OpBatchPayload


class ClientOpMessage(Message, tag="CLIENT_OP"):
    """C→S: a single op (`CLIENT_OP`); a failure is answered by `OP_REJECTED` only."""

    payload: ClientOp


class OpResult(Wire):
    """The outcome of one op; `success` ⇔ accepted and `achievedLevel` ≥ the requested level."""

    op_id: str
    success: bool
    achieved_level: WriteConcern
    error: str | None = None


class OpAckPayload(Wire):
    """`lastId` = id of the last op that has one (`""` if none).

    topgun always sends `achievedLevel` and one `results` entry per op (§10 D3, D5); they are
    optional here so that the Python client can read the reference server's `{lastId}`.
    """

    last_id: str
    achieved_level: WriteConcern | None = None
    results: list[OpResult] | None = None


class OpAck(Message, tag="OP_ACK"):
    """S→C: the acknowledgement of one `OP_BATCH` or `CLIENT_OP`."""

    payload: OpAckPayload


class OpRejectedPayload(Wire):
    """`code` is 400, 403, 409 or 500."""

    op_id: str
    reason: str
    code: int


class OpRejected(Message, tag="OP_REJECTED"):
    """S→C, urgent: one op failed (informational, besides its failed `OpResult`)."""

    payload: OpRejectedPayload


class MergeRejected(Message, tag="MERGE_REJECTED"):
    """S→C, urgent: a conflict resolver rejected a write; `timestamp` is the rejected record's."""

    map_name: str
    key: str
    attempted_value: Any
    reason: str
    timestamp: Timestamp
