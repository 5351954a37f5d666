"""The shapes of hook arguments and of the components plugins register.

The server, storage and client classes that hooks will receive arrive with later issues;
the hook specifications type their arguments with these small Protocols (read-only
attributes only), so plugins written against them keep working when those classes land.
Where a component's contract belongs to a later package (a storage backend, a search
provider), the hookspec says what it will be and types it `Any` until then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from topgun.storage.codecs import CodecContext

T_contra = TypeVar("T_contra", contravariant=True)


class Register(Protocol[T_contra]):
    """The callable a `register_*` hook receives: the plugin calls `register(name, obj)`.

    Names are unique per hook across all plugins; a second registration of a name is an
    error that names both plugins (see `topgun.hooks.collect_registrations`).
    """

    def __call__(self, name: str, obj: T_contra, /) -> None: ...


EntryProcessor = Callable[[Any, str, Any], tuple[Any, Any]]
"""`processor(value, key, args) -> (outcome, result)` (PROTOCOL.md §8.1).

`value` is the key's current live value (`None` when absent, deleted or expired);
`outcome` is the new value or one of the server's `DELETE` / `UNCHANGED` sentinels;
`result` goes back to the client.
"""

ConflictResolver = Callable[[Any], Any]
"""`resolver(ctx) -> decision` (PROTOCOL.md §8.2): `ctx` carries map name, key, local and
remote values and timestamps and the writer's auth; the decision is accept, merge,
reject or abstain (the types arrive with the server's resolver chain)."""


class ResolverRegister(Protocol):
    """The callable `register_conflict_resolvers` receives.

    `priority` (0..100, higher runs first) is the default a map binding gets when it
    names none; it is 50 unless given.
    """

    def __call__(self, name: str, resolver: ConflictResolver, /, *, priority: int = 50) -> None: ...


class Principal(Protocol):
    """Who is on the other end of a connection once authenticated (PROTOCOL.md §4.2)."""

    @property
    def user_id(self) -> str | None:
        """The `userId` claim, or `sub` when `userId` is absent."""

    @property
    def roles(self) -> Sequence[str]:
        """Role names; `["USER"]` when the token carried none."""

    @property
    def claims(self) -> Mapping[str, Any]:
        """Every claim of the verified token."""


class Connection(Protocol):
    """One client connection as hooks see it (the server's session object satisfies it)."""

    @property
    def client_id(self) -> str:
        """The id the server assigned at accept time."""

    @property
    def remote_address(self) -> str | None:
        """The peer's address (`"host:port"`), when the transport knows it."""

    @property
    def principal(self) -> Principal | None:
        """The authenticated principal; `None` until authentication succeeded."""


class OpContext(Protocol):
    """Where an op came from, for `before_op` and `after_op`."""

    @property
    def principal(self) -> Principal:
        """The authenticated writer (ops are authorized before plugins see them)."""

    @property
    def connection(self) -> Connection | None:
        """The WebSocket connection, or `None` for ops that arrived by HTTP sync."""


class ValueCodec(Protocol):
    """A reversible transformation of persisted bytes (compression, encryption).

    Storage applies the configured codecs in order on write and in reverse order on
    read, so `decode(encode(data)) == data` must hold for every codec.
    """

    def encode(self, data: bytes, /) -> bytes:
        """Transform bytes on their way to storage."""
        ...

    def decode(self, data: bytes, /) -> bytes:
        """Undo `encode` on bytes read back from storage."""
        ...


@runtime_checkable
class ContextualCodec(Protocol):
    """A reversible transformation of persisted bytes that depends on what they belong to
    (encryption binding its ciphertext to the value's map and key as associated data).

    `context` is a `topgun.storage.CodecContext` (area, map or meta namespace, key).
    `decode_for(encode_for(data, ctx), ctx) == data` must hold for every context, and
    decoding with another context should fail (that is the point of binding to it).
    """

    def encode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Transform `data` on its way to storage under `context`."""
        ...

    def decode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Undo `encode_for` on bytes read back from storage under `context`."""
        ...
