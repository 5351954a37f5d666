"""The handle a local write returns: awaiting it waits for the server's acknowledgement."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from topgun.client.replies import Reply
from topgun.protocol import WriteConcern

__all__ = ["WriteHandle"]


class WriteHandle:
    """One local write. The write is already applied locally (and queued for the store and
    the server) when the handle exists; `await handle` returns the write-concern level the
    server achieved, once it acknowledged the write (after a reconnect if need be), or raises
    `WriteRejectedError` / `WriteTimeoutError`."""

    __slots__ = ("_reply", "op_id", "write_concern")

    def __init__(self, op_id: int, write_concern: WriteConcern | None) -> None:
        self.op_id = op_id
        """The write's id in the oplog (increasing per client)."""
        self.write_concern = write_concern
        """The requested level (None: the server's default, `MEMORY`)."""
        self._reply: Reply[WriteConcern] = Reply()

    @property
    def acknowledged(self) -> bool:
        """True once the server answered for this write (successfully or not)."""
        return self._reply.done

    async def wait(self) -> WriteConcern:
        """The level the server achieved (at least the requested one)."""
        return await self._reply.wait()

    def __await__(self) -> Generator[Any, None, WriteConcern]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        return f"<WriteHandle op {self.op_id} acknowledged={self.acknowledged}>"
