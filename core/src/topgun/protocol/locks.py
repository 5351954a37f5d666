"""Distributed locks with fencing tokens (PROTOCOL.md §5.10, §6.9)."""

from __future__ import annotations

from topgun.protocol.message import Message, Wire

__all__ = [
    "LockGranted",
    "LockGrantedPayload",
    "LockRelease",
    "LockReleasePayload",
    "LockReleased",
    "LockReleasedPayload",
    "LockRequest",
    "LockRequestPayload",
]


class LockRequestPayload(Wire):
    """`ttl` in ms (default 10 000; the server clamps it to [1 000, 300 000])."""

    request_id: str
    name: str
    ttl: int | None = None


class LockRequest(Message, tag="LOCK_REQUEST"):
    """C→S: acquire a lease; answered only when granted."""

    payload: LockRequestPayload


class LockGrantedPayload(Wire):
    request_id: str
    name: str
    fencing_token: int


class LockGranted(Message, tag="LOCK_GRANTED"):
    payload: LockGrantedPayload


class LockReleasePayload(Wire):
    name: str
    fencing_token: int
    request_id: str | None = None


class LockRelease(Message, tag="LOCK_RELEASE"):
    payload: LockReleasePayload


class LockReleasedPayload(Wire):
    """`requestId` is `""` when the release request had none."""

    request_id: str
    name: str
    success: bool


class LockReleased(Message, tag="LOCK_RELEASED"):
    payload: LockReleasedPayload
