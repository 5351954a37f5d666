"""What the client raises."""

from __future__ import annotations

from topgun.protocol import WriteConcern

__all__ = [
    "AuthError",
    "ClientClosedError",
    "ClientError",
    "NotConnectedError",
    "ProcessorError",
    "RequestError",
    "WriteRejectedError",
    "WriteTimeoutError",
]


class ClientError(Exception):
    """Base of every error the client raises."""


class AuthError(ClientError):
    """The server refused the token (`AUTH_FAIL`). The client stops reconnecting: a bad
    token is not retried in a loop. A `token_provider` that returns a new token is asked
    again on the next `client.reconnect()`."""


class ClientClosedError(ClientError):
    """The client was closed while the operation waited."""


class NotConnectedError(ClientError):
    """The connection dropped while a request that cannot be safely repeated (an entry
    processor, a one-shot search) waited for its reply. It may or may not have run."""


class RequestError(ClientError):
    """The server answered a request with an error (`ERROR`, or a failed response)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.code = code


class ProcessorError(RequestError):
    """An entry processor failed on the server (unknown name, access denied, …)."""


class WriteRejectedError(ClientError):
    """The server refused a write (`OpResult.success` false: access denied, invalid op,
    rejected by a conflict resolver). The write stays applied locally until the server's
    state reaches this client (a compensating event or the next sync)."""

    def __init__(self, op_id: str, reason: str) -> None:
        super().__init__(f"write {op_id} rejected: {reason}")
        self.op_id = op_id
        self.reason = reason


class WriteTimeoutError(ClientError):
    """The server accepted a write but did not reach the requested write concern in time."""

    def __init__(self, op_id: str, achieved: WriteConcern, requested: WriteConcern) -> None:
        super().__init__(f"write {op_id}: achieved {achieved}, requested {requested}")
        self.op_id = op_id
        self.achieved = achieved
        self.requested = requested
