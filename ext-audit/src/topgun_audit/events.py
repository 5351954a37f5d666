"""The bodies of audit entries, built from what the hooks receive.

Every body has `event` and `time` (UTC, ISO 8601 with milliseconds); the log adds `seq`,
`prev` and `hash`. Who acted is `principal` (the user id), `roles`, and `admin` (whether
the roles include ADMIN, so administrators' actions can be singled out). Tokens, record
values and claims are never recorded.
"""

from __future__ import annotations

import datetime
from typing import Any

from topgun.hooks import Connection, OpContext, Principal
from topgun.protocol import ClientOp, CounterSync, InvalidOp, OpResult
from topgun.server.permissions import is_admin


def now() -> str:
    """The current UTC time as `2026-11-26T06:01:02.345Z`."""
    stamp = datetime.datetime.now(datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime.datetime:
    """An entry's `time` (or any ISO 8601 date/time; naive means UTC) as an aware datetime."""
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def _who(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"principal": None, "roles": [], "admin": False}
    return {
        "principal": principal.user_id,
        "roles": list(principal.roles),
        "admin": is_admin(principal),
    }


def _where(connection: Connection | None) -> dict[str, Any]:
    if connection is None:
        return {"client": None, "address": None}
    return {"client": connection.client_id, "address": connection.remote_address}


def server_event(event: str, node: str) -> dict[str, Any]:
    """`audit.started` / `audit.stopped`: the log's own lifecycle, with the server's node id."""
    return {"event": event, "time": now(), "node": node}


def auth_success(connection: Connection, principal: Principal) -> dict[str, Any]:
    return {"event": "auth.success", "time": now(), **_who(principal), **_where(connection)}


def auth_failure(connection: Connection | None, reason: str) -> dict[str, Any]:
    return {
        "event": "auth.failure",
        "time": now(),
        **_who(None),
        **_where(connection),
        "reason": reason,
    }


def permission_denied(principal: Principal, resource: str, action: str) -> dict[str, Any]:
    return {
        "event": "permission.denied",
        "time": now(),
        **_who(principal),
        "resource": resource,
        "action": action,
    }


def admin_action(
    connection: Connection | None, principal: Principal, action: str, target: str, error: str | None
) -> dict[str, Any]:
    """A request that changed (or tried to change) how the server behaves."""
    return {
        "event": "admin",
        "time": now(),
        **_who(principal),
        **_where(connection),
        "action": action,
        "target": target,
        "outcome": "applied" if error is None else "rejected",
        "reason": error,
    }


def disconnect(connection: Connection, code: int, reason: str) -> dict[str, Any]:
    return {
        "event": "disconnect",
        "time": now(),
        **_who(connection.principal),
        **_where(connection),
        "code": code,
        "reason": reason,
    }


def _op_fields(op: Any) -> dict[str, Any]:
    """Map, key, op type and HLC of a write, whatever form it took."""
    if isinstance(op, ClientOp):
        op_type = op.op_type
        timestamp = None
        if op.record is not None:
            timestamp = str(op.record.timestamp)
            if op_type is None:
                op_type = "PUT" if op.record.value is not None else "REMOVE"
        elif op.or_record is not None:
            timestamp = str(op.or_record.timestamp)
            op_type = op_type or "OR_ADD"
        elif op.or_tag is not None:
            timestamp = op.or_tag
            op_type = op_type or "OR_REMOVE"
        if op_type == "PUT" and op.record is not None and op.record.value is None:
            op_type = "REMOVE"
        return {"map": op.map_name, "key": op.key, "op": op_type, "hlc": timestamp}
    if isinstance(op, CounterSync):
        return {"map": f"counter:{op.payload.name}", "key": None, "op": "COUNTER_SYNC", "hlc": None}
    if isinstance(op, InvalidOp):
        raw = op.raw if isinstance(op.raw, dict) else {}
        map_name, key = raw.get("mapName"), raw.get("key")
        return {
            "map": map_name if isinstance(map_name, str) else None,
            "key": key if isinstance(key, str) else None,
            "op": None,
            "hlc": None,
        }
    return {"map": None, "key": None, "op": type(op).__name__, "hlc": None}


def outcome(result: OpResult) -> str:
    """`applied`; `rejected` (not merged); or `incomplete`: merged, but the requested write
    concern was not reached (a storage failure or a timeout)."""
    if result.success:
        return "applied"
    return "rejected" if result.achieved_level == "FIRE_AND_FORGET" else "incomplete"


def write(op: Any, context: OpContext, result: OpResult) -> dict[str, Any]:
    """A write and its outcome (see `outcome`), with the reason when it failed."""
    return {
        "event": "write",
        "time": now(),
        **_who(context.principal),
        **_where(context.connection),
        **_op_fields(op),
        "op_id": result.op_id,
        "outcome": outcome(result),
        "achieved": result.achieved_level,
        "reason": result.error,
    }
