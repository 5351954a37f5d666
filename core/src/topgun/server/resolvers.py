"""Conflict resolvers (PROTOCOL.md §5.13, §8.2): named server callables that vet LWW writes.

A resolver is `resolver(ctx) -> decision`: `ctx` is a `ResolverContext` (map, key, local
and remote values and timestamps, the writer's auth, `read(key)` for other keys of the map)
and the decision is `Accept(value)`, `Merge(value)`, `Reject(reason)` or `ABSTAIN` (`None`
abstains too). The `builtin:*` resolvers of §8.2 are always registered; plugins add more
through `register_conflict_resolvers`. Clients bind registered resolvers to maps by name with
`REGISTER_RESOLVER` (priority, key pattern); bindings belong to the principal that made them,
survive its disconnect and are persisted in the storage meta area. The server configuration
binds resolvers too (`[[resolvers]]`); clients cannot remove or replace those. The `code`
clients send is never looked at.

The chain is step 6 of the write pipeline, for client writes (`PUT` / `REMOVE`) of LWW maps
with bindings: bindings by priority (highest first, ties by name), skipping those whose key
pattern does not match; the first decision that is not an abstention wins; a resolver that
raises is logged and skipped; if all abstain, plain LWW applies. Accept or merge replace the
written value (the remote timestamp stays, so an older write still loses). A rejection
changes nothing: the op fails with `"Rejected by conflict resolver: <reason>"` (409), the
writer gets `MERGE_REJECTED`, and a compensating write (the current value, or a tombstone,
with a fresh server timestamp) goes to the writer and to subscribers so the writer's replica
converges (TS clients do not roll back, §10 D33).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec

from topgun.crdt import ClockDriftError, LWWRecord, Timestamp
from topgun.crdt.ormap import same_value
from topgun.hooks import (
    ConflictResolver,
    PluginError,
    Principal,
    TopgunPluginManager,
    call_hook_async,
    collect_registrations,
)
from topgun.protocol import (
    ClientOp,
    EventPayload,
    ListResolvers,
    ListResolversResponse,
    MergeRejected,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverBinding,
    ServerEvent,
    UnregisterResolver,
    UnregisterResolverResponse,
)
from topgun.server.config import ConfigError, ResolverBindingConfig
from topgun.server.events import Recipient
from topgun.server.expiry import ServerPrincipal
from topgun.server.maps import MapRegistry
from topgun.server.security import Security
from topgun.server.writes import OpFailed, WriteContext, WritePipeline
from topgun.storage import PutMeta, StorageBackend

if TYPE_CHECKING:
    from topgun.server.session import Session

logger = logging.getLogger(__name__)

BINDINGS_NAMESPACE: Final = "resolver_bindings"
"""Meta-area namespace: encoded (map, name) -> the msgpack-encoded `Binding`."""

MAX_BINDINGS_PER_MAP: Final = 100
DEFAULT_PRIORITY: Final = 50


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Write `value` (the remote timestamp stays)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Merge:
    """Write `value`, a combination of the local and remote values."""

    value: Any


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the write; `reason` goes to the writer."""

    reason: str


ABSTAIN: Final = None
"""No opinion: the next resolver decides (plain LWW when none does)."""

Decision = Accept | Merge | Reject | None


@dataclass(frozen=True, slots=True)
class ResolverAuth:
    """The writer, as resolvers see it."""

    user_id: str | None
    roles: tuple[str, ...]
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResolverContext:
    """What a resolver decides on (PROTOCOL.md §8.2)."""

    map_name: str
    key: str
    local_value: Any
    """The key's live value (`None` if none)."""
    remote_value: Any
    """The written value (`None` for a delete)."""
    local_timestamp: Timestamp | None
    remote_timestamp: Timestamp
    remote_node_id: str
    auth: ResolverAuth
    read: Callable[[str], Any]
    """`read(key)`: the live value of another key of the same map."""


# -- built-ins ------------------------------------------------------------------------------


def _first_write_wins(ctx: ResolverContext) -> Decision:
    return Reject("Entry already exists") if ctx.local_value is not None else ABSTAIN


def _immutable(ctx: ResolverContext) -> Decision:
    return Reject("Entry is immutable") if ctx.local_value is not None else ABSTAIN


def _server_only(ctx: ResolverContext) -> Decision:
    if "server" in ctx.auth.roles:
        return Accept(ctx.remote_value)
    return Reject("Only the server may write this entry")


def _owner_only(ctx: ResolverContext) -> Decision:
    local = ctx.local_value
    owner = local.get("ownerId") if isinstance(local, Mapping) else None
    if owner is not None and owner != ctx.auth.user_id:
        return Reject("Only the owner may change this entry")
    return ABSTAIN


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_negative(ctx: ResolverContext) -> Decision:
    value = ctx.remote_value
    if value is None:
        return ABSTAIN  # a delete
    if not _is_number(value) or value < 0:
        return Reject("Value must be a non-negative number")
    return ABSTAIN


def _version(value: Any) -> Any:
    return value.get("version") if isinstance(value, Mapping) else None


def _version_increment(ctx: ResolverContext) -> Decision:
    if ctx.remote_value is None:
        return ABSTAIN
    expected = (_version(ctx.local_value) or 0) + 1
    if not same_value(_version(ctx.remote_value), expected):
        return Reject(f"Version must be {expected}")
    return ABSTAIN


def _numeric(pick: Callable[[Any, Any], Any]) -> ConflictResolver:
    def resolve(ctx: ResolverContext) -> Decision:
        local, remote = ctx.local_value, ctx.remote_value
        if _is_number(local) and _is_number(remote):
            return Merge(pick(local, remote))
        return ABSTAIN

    return resolve


def _array_union(ctx: ResolverContext) -> Decision:
    local, remote = ctx.local_value, ctx.remote_value
    if not isinstance(local, list) or not isinstance(remote, list):
        return ABSTAIN
    union: list[Any] = []
    for item in [*local, *remote]:
        if not any(same_value(item, seen) for seen in union):
            union.append(item)
    return Merge(union)


def _deep(local: Any, remote: Any) -> Any:
    if isinstance(local, Mapping) and isinstance(remote, Mapping):
        merged = dict(local)
        for name, value in remote.items():
            merged[name] = _deep(local.get(name), value) if name in local else value
        return merged
    return remote


def _deep_merge(ctx: ResolverContext) -> Decision:
    local, remote = ctx.local_value, ctx.remote_value
    if isinstance(local, Mapping) and isinstance(remote, Mapping):
        return Merge(_deep(local, remote))
    return ABSTAIN


def _lww(ctx: ResolverContext) -> Decision:
    return ABSTAIN


BUILTIN_RESOLVERS: Final[Mapping[str, tuple[ConflictResolver, int]]] = {
    "builtin:first_write_wins": (_first_write_wins, 100),
    "builtin:immutable": (_immutable, 100),
    "builtin:server_only": (_server_only, 100),
    "builtin:owner_only": (_owner_only, 95),
    "builtin:non_negative": (_non_negative, 90),
    "builtin:version_increment": (_version_increment, 90),
    "builtin:numeric_min": (_numeric(min), 50),
    "builtin:numeric_max": (_numeric(max), 50),
    "builtin:array_union": (_array_union, 50),
    "builtin:deep_merge": (_deep_merge, 50),
    "builtin:lww": (_lww, 0),
}
"""name -> (resolver, default priority): the resolvers every server has (§8.2)."""


# -- bindings -------------------------------------------------------------------------------


class Binding(msgspec.Struct, frozen=True):
    """A resolver bound to a map."""

    map_name: str
    name: str
    priority: int
    key_pattern: str | None = None
    owner: str | None = None
    """The `userId` of the principal that registered it."""
    configured: bool = False
    """Made by the server configuration: clients cannot remove or replace it."""


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """`*` any run, `?` one character, everything else literal; anchored."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _meta_key(map_name: str, name: str) -> str:
    return f"{len(map_name)}:{map_name}{name}"


class ConflictResolvers:
    """The resolver registry, the bindings of every map, and the chain the pipeline runs."""

    def __init__(
        self,
        *,
        resolvers: Mapping[str, tuple[ConflictResolver, int]],
        maps: MapRegistry,
        writes: WritePipeline,
        security: Security,
        node_id: str,
        configured: Sequence[ResolverBindingConfig] = (),
    ) -> None:
        self.resolvers = dict(resolvers)
        self.maps = maps
        self.writes = writes
        self.security = security
        self.node_id = node_id
        self.bindings: dict[str, dict[str, Binding]] = {}
        self._server_context = WriteContext(ServerPrincipal(node_id), None)
        for entry in configured:
            registered = self.resolvers.get(entry.name)
            if registered is None:
                known = ", ".join(sorted(self.resolvers))
                raise ConfigError(
                    f"[[resolvers]] binds unknown resolver {entry.name!r} to map "
                    f"{entry.map_name!r} (registered: {known})"
                )
            priority = registered[1] if entry.priority is None else entry.priority
            binding = Binding(
                entry.map_name, entry.name, priority, entry.key_pattern, configured=True
            )
            self.bindings.setdefault(entry.map_name, {})[entry.name] = binding

    @classmethod
    def collect(cls, pm: TopgunPluginManager, **options: Any) -> ConflictResolvers:
        """The built-ins plus every resolver the `register_conflict_resolvers` plugins add
        (a plugin reusing a built-in name is a `PluginError`)."""
        registered = collect_registrations(pm.hook.register_conflict_resolvers)
        resolvers: dict[str, tuple[ConflictResolver, int]] = dict(BUILTIN_RESOLVERS)
        for name, registration in registered.items():
            if name in resolvers:
                raise PluginError(
                    f"plugin {registration.plugin} registered conflict resolver {name!r}, "
                    "a built-in name"
                )
            priority = registration.options.get("priority", DEFAULT_PRIORITY)
            if not isinstance(priority, int) or not 0 <= priority <= 100:
                raise PluginError(
                    f"plugin {registration.plugin} registered conflict resolver {name!r} with "
                    f"priority {priority!r}; priorities are integers 0..100"
                )
            resolvers[name] = (registration.obj, priority)
        return cls(resolvers=resolvers, **options)

    async def load(self, backend: StorageBackend) -> int:
        """Restore the persisted bindings; returns how many."""
        stored = await backend.load_meta(BINDINGS_NAMESPACE)
        for raw in stored.values():
            binding = msgspec.msgpack.decode(raw, type=Binding)
            bound = self.bindings.setdefault(binding.map_name, {})
            if binding.name not in bound:  # a configured binding of that name wins
                bound[binding.name] = binding
        return len(stored)

    async def _persist(self, map_name: str, name: str, binding: Binding | None) -> None:
        writer = self.maps.writer
        if writer is None:
            raise RuntimeError("storage is not open")
        value = None if binding is None else msgspec.msgpack.encode(binding)
        await writer.submit([PutMeta(BINDINGS_NAMESPACE, _meta_key(map_name, name), value)])

    # -- client requests ------------------------------------------------------------------

    async def register(
        self,
        principal: Principal,
        map_name: str,
        name: str,
        priority: int | None,
        key_pattern: str | None,
    ) -> str | None:
        """Bind resolver `name` to `map_name`; the error, or `None` on success."""
        if not self.security.is_allowed(principal, map_name, "PUT"):
            return f"Access denied for map {map_name}"
        registered = self.resolvers.get(name)
        if registered is None:
            return f"Unknown resolver: {name}"
        bound = self.bindings.setdefault(map_name, {})
        existing = bound.get(name)
        if existing is not None and existing.configured:
            return f"Resolver {name} on map {map_name} comes from the server configuration"
        if name not in bound and len(bound) >= MAX_BINDINGS_PER_MAP:
            return f"Too many resolvers on map {map_name} (at most {MAX_BINDINGS_PER_MAP})"
        binding = Binding(
            map_name,
            name,
            registered[1] if priority is None else priority,
            key_pattern or None,
            principal.user_id,
        )
        bound[name] = binding
        await self._persist(map_name, name, binding)
        return None

    async def unregister(self, principal: Principal, map_name: str, name: str) -> str | None:
        """Remove a binding (its owner or ADMIN only); the error, or `None` on success."""
        if not self.security.is_allowed(principal, map_name, "PUT"):
            return f"Access denied for map {map_name}"
        binding = self.bindings.get(map_name, {}).get(name)
        if binding is None:
            return f"Resolver {name} is not registered on map {map_name}"
        if binding.configured:
            return f"Resolver {name} on map {map_name} comes from the server configuration"
        if binding.owner != principal.user_id and "ADMIN" not in principal.roles:
            return f"Resolver {name} on map {map_name} was registered by someone else"
        del self.bindings[map_name][name]
        if not self.bindings[map_name]:
            del self.bindings[map_name]
        await self._persist(map_name, name, None)
        return None

    def listed(self, principal: Principal, map_name: str | None) -> list[ResolverBinding]:
        """The bindings of `map_name` (or of every map) that `principal` may READ."""
        names = [map_name] if map_name is not None else sorted(self.bindings)
        found: list[ResolverBinding] = []
        for name in names:
            if name not in self.bindings or not self.security.is_allowed(
                principal, name, "READ", announce=False
            ):
                continue
            found.extend(
                ResolverBinding(
                    map_name=b.map_name, name=b.name, priority=b.priority, key_pattern=b.key_pattern
                )
                for b in self._ordered(name)
            )
        return found

    def _ordered(self, map_name: str) -> list[Binding]:
        bound = self.bindings.get(map_name, {})
        return sorted(bound.values(), key=lambda b: (-b.priority, b.name))

    # -- the chain (write pipeline step 6) --------------------------------------------------

    async def resolve(self, op: ClientOp, context: WriteContext) -> ClientOp:
        """The op as the chain leaves it; raises `OpFailed` (409) on a rejection, after
        sending `MERGE_REJECTED` and the compensating write."""
        record = op.record
        if record is None or op.map_name not in self.bindings:
            return op
        lww = self.maps.lww(op.map_name)
        local = lww.get_record(op.key) if lww is not None else None
        local_value = lww.get(op.key) if lww is not None else None
        principal = context.principal
        ctx = ResolverContext(
            map_name=op.map_name,
            key=op.key,
            local_value=local_value,
            remote_value=record.value,
            local_timestamp=local.timestamp if local is not None else None,
            remote_timestamp=record.timestamp,
            remote_node_id=record.timestamp.node_id,
            auth=ResolverAuth(principal.user_id, tuple(principal.roles), principal.claims),
            read=lambda other: lww.get(other) if lww is not None else None,
        )
        for binding in self._ordered(op.map_name):
            if binding.key_pattern is not None and not _glob(binding.key_pattern).fullmatch(op.key):
                continue
            registered = self.resolvers.get(binding.name)
            if registered is None:
                continue
            try:
                decision = registered[0](ctx)
            except Exception:
                logger.exception("conflict resolver %r failed; skipped", binding.name)
                continue
            if isinstance(decision, Reject):
                await self._rejected(op, record, decision.reason, context)
                raise OpFailed(f"Rejected by conflict resolver: {decision.reason}", 409)
            if isinstance(decision, Accept | Merge):
                value = None if record.value is None else decision.value
                decided = LWWRecord(value, record.timestamp, record.ttl_ms)
                wins = local is None or record.timestamp > local.timestamp
                if wins and not same_value(value, record.value):
                    # The writer's own write comes back changed: tell it (§6.2).
                    self._tell_writer(context, op.map_name, op.key, decided)
                return msgspec.structs.replace(op, record=decided)
            if decision is not None:
                logger.error(
                    "conflict resolver %r returned %r; expected Accept, Merge, Reject or "
                    "ABSTAIN (skipped)",
                    binding.name,
                    decision,
                )
        return op

    def _tell_writer(
        self, context: WriteContext, map_name: str, key: str, record: LWWRecord
    ) -> None:
        send = getattr(context.connection, "send", None)  # a session; None for HTTP sync
        if send is not None:
            send(
                ServerEvent(
                    payload=EventPayload(
                        map_name=map_name,
                        key=key,
                        event_type="PUT" if record.value is not None else "REMOVE",
                        record=record,
                    ),
                    timestamp=self.maps.hlc.now(),
                )
            )

    async def _rejected(
        self, op: ClientOp, record: LWWRecord, reason: str, context: WriteContext
    ) -> None:
        connection = context.connection
        send = getattr(connection, "send", None)  # a session; None for HTTP sync writes
        if send is not None:
            send(
                MergeRejected(
                    map_name=op.map_name,
                    key=op.key,
                    attempted_value=record.value,
                    reason=reason,
                    timestamp=record.timestamp,
                )
            )
        # The compensating write: the current value again, newer than the rejected one.
        hlc = self.maps.hlc
        try:
            hlc.update(record.timestamp)
        except ClockDriftError:
            return  # a drifting rejected write: nothing newer can be stamped now
        lww = self.maps.lww(op.map_name)
        current = lww.get(op.key) if lww is not None else None
        previous = lww.get_record(op.key) if lww is not None else None
        ttl = previous.ttl_ms if previous is not None and current is not None else None
        compensation = LWWRecord(current, hlc.now(), ttl)
        compensating = ClientOp(map_name=op.map_name, key=op.key, record=compensation)
        await self.writes.apply(
            [compensating],
            self._server_context,
            origin=cast("Recipient | None", connection),
            trusted=True,
        )
        self._tell_writer(context, op.map_name, op.key, compensation)


# -- handlers (dispatch table entries) ------------------------------------------------------


def _principal(session: Session) -> Principal:
    principal = session.principal
    assert principal is not None
    return principal


def _resolvers(session: Session) -> ConflictResolvers:
    resolvers: ConflictResolvers = session.server.resolvers
    return resolvers


async def _announce(session: Session, action: str, target: str, error: str | None) -> None:
    """Tell the `on_admin_action` plugins about a binding change a client asked for."""
    try:
        await call_hook_async(
            session.server.pm.hook.on_admin_action,
            connection=session,
            principal=_principal(session),
            action=action,
            target=target,
            error=error,
        )
    except Exception:
        logger.exception("an on_admin_action plugin failed (the outcome stands)")


async def register_resolver(session: Session, message: RegisterResolver) -> None:
    """`REGISTER_RESOLVER` → `REGISTER_RESOLVER_RESPONSE`."""
    spec = message.resolver
    error = await _resolvers(session).register(
        _principal(session), message.map_name, spec.name, spec.priority, spec.key_pattern
    )
    await _announce(session, "REGISTER_RESOLVER", f"{message.map_name}/{spec.name}", error)
    session.send(
        RegisterResolverResponse(request_id=message.request_id, success=error is None, error=error)
    )


async def unregister_resolver(session: Session, message: UnregisterResolver) -> None:
    """`UNREGISTER_RESOLVER` → `UNREGISTER_RESOLVER_RESPONSE`."""
    error = await _resolvers(session).unregister(
        _principal(session), message.map_name, message.resolver_name
    )
    target = f"{message.map_name}/{message.resolver_name}"
    await _announce(session, "UNREGISTER_RESOLVER", target, error)
    session.send(
        UnregisterResolverResponse(
            request_id=message.request_id, success=error is None, error=error
        )
    )


async def list_resolvers(session: Session, message: ListResolvers) -> None:
    """`LIST_RESOLVERS` → `LIST_RESOLVERS_RESPONSE` (bindings of readable maps)."""
    resolvers = _resolvers(session).listed(_principal(session), message.map_name)
    session.send(ListResolversResponse(request_id=message.request_id, resolvers=resolvers))
