"""Conflict resolvers (topgun/server/resolvers.py): REGISTER/UNREGISTER/LIST_RESOLVERS and
the chain in step 6 of the write pipeline.

PROTOCOL.md checklist items covered here: P-54.
"""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    ListResolvers,
    ListResolversResponse,
    MergeRejected,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverSpec,
    ServerEvent,
    UnregisterResolver,
    UnregisterResolverResponse,
)
from topgun.server import (
    AuthConfig,
    InMemoryClient,
    Policy,
    Secret,
    Server,
    ServerConfig,
    StorageConfig,
)
from topgun.server.config import ConfigError, ResolverBindingConfig
from topgun.server.resolvers import (
    ABSTAIN,
    BUILTIN_RESOLVERS,
    Accept,
    Merge,
    Reject,
    ResolverAuth,
    ResolverContext,
)

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def put(key: str, value: Any, millis: int = T, map_name: str = "m") -> ClientOp:
    return ClientOp(
        map_name=map_name,
        key=key,
        id=f"{key}@{millis}",
        record=LWWRecord(value, Timestamp(millis, 0, "c")),
    )


async def write(client: InMemoryClient, *ops: ClientOp) -> tuple[OpAck, list[Any]]:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    ack, before = await client.receive_until(OpAck)
    return ack, before


async def register(
    client: InMemoryClient, name: str, map_name: str = "m", **spec: Any
) -> RegisterResolverResponse:
    await client.send(
        RegisterResolver(
            request_id="r", map_name=map_name, resolver=ResolverSpec(name=name, code="", **spec)
        )
    )
    response, _ = await client.receive_until(RegisterResolverResponse)
    return response


async def listed(client: InMemoryClient, map_name: str | None = None) -> list[tuple[str, str]]:
    await client.send(ListResolvers(request_id="l", map_name=map_name))
    response, _ = await client.receive_until(ListResolversResponse)
    return [(b.map_name, b.name) for b in response.resolvers]


async def test_registering_an_unknown_resolver_fails_p54(harness: Any) -> None:
    client = await harness.login()
    response = await register(client, "eval-this")
    assert (response.success, response.error) == (False, "Unknown resolver: eval-this")
    assert await listed(client) == []


async def test_first_write_wins_rejects_a_second_write_with_merge_rejected_p54(
    harness: Any,
) -> None:
    """P-54, and the compensating write: the writer is told the value that stands, with a
    timestamp newer than its rejected one."""
    client = await harness.login()
    assert (await register(client, "builtin:first_write_wins")).success
    ack, _ = await write(client, put("k", "first"))
    assert ack.payload.results[0].success
    await client.send(OpBatch(payload=OpBatchPayload(ops=[put("k", "second", T + 1)])))
    rejected, _ = await client.receive_until(MergeRejected)
    assert (rejected.key, rejected.attempted_value) == ("k", "second")
    assert rejected.reason == "Entry already exists"
    assert rejected.timestamp == Timestamp(T + 1, 0, "c")
    compensation, _ = await client.receive_until(ServerEvent)
    assert compensation.payload.record.value == "first"
    assert compensation.payload.record.timestamp > Timestamp(T + 1, 0, "c")
    ack, _ = await client.receive_until(OpAck)
    result = ack.payload.results[0]
    assert (result.success, result.error) == (
        False,
        "Rejected by conflict resolver: Entry already exists",
    )
    refusal, _ = await client.receive_until(OpRejected)
    assert refusal.payload.code == 409
    assert harness.server.maps.lww("m").get("k") == "first"


async def test_merge_decisions_replace_the_value_and_keep_the_remote_timestamp(
    harness: Any,
) -> None:
    client = await harness.login()
    await register(client, "builtin:numeric_max")
    await write(client, put("n", 5))
    _, before = await write(client, put("n", 3, T + 1))
    record = harness.server.maps.lww("m").get_record("n")
    assert (record.value, record.timestamp) == (5, Timestamp(T + 1, 0, "c"))
    # The writer's value was changed, so the writer hears what was applied (§6.2).
    (event,) = [m for m in before if isinstance(m, ServerEvent)]
    assert event.payload.record == record
    _, before = await write(client, put("n", 8, T + 2))  # accepted as sent: no echo
    assert not any(isinstance(m, ServerEvent) for m in before)


async def test_key_patterns_and_priorities_choose_the_resolver(harness: Any) -> None:
    client = await harness.login()
    await register(client, "builtin:numeric_min", priority=10)
    await register(client, "builtin:immutable", key_pattern="fixed:?")
    await write(client, put("fixed:1", 1), put("fixed:10", 1), put("other", 7))
    await write(client, put("fixed:1", 2, T + 1), put("fixed:10", 9, T + 1), put("other", 9, T + 1))
    values = harness.server.maps.lww("m")
    assert (values.get("fixed:1"), values.get("fixed:10"), values.get("other")) == (1, 1, 7)
    assert await listed(client, "m") == [("m", "builtin:immutable"), ("m", "builtin:numeric_min")]


class Plugin:
    def __init__(self) -> None:
        self.ops: list[tuple[str, Any, str | None]] = []

    @hookimpl
    def register_conflict_resolvers(self, register: Any) -> None:
        register("test:broken", self.broken, priority=99)
        register("test:shout", self.shout)

    @hookimpl
    def before_op(self, op: ClientOp, context: Any) -> None:
        self.ops.append((op.key, op.record.value, context.principal.user_id))

    @staticmethod
    def broken(ctx: Any) -> Any:
        raise RuntimeError("bug")

    @staticmethod
    def shout(ctx: Any) -> Any:
        if ctx.remote_value == "no":
            return Reject("no means no")
        return Accept(str(ctx.remote_value).upper()) if ctx.remote_value else ABSTAIN


async def test_plugin_resolvers_raising_ones_skipped_and_writes_intercepted(start: Any) -> None:
    plugin = Plugin()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    async with start(pm=pm) as h:
        client = await h.login(sub="ada")
        await register(client, "test:broken")
        await register(client, "test:shout")
        await write(client, put("k", "hi"))
        assert h.server.maps.lww("m").get("k") == "HI"
        await write(client, put("k", "no", T + 1))
        assert h.server.maps.lww("m").get("k") == "HI"
        # before_op saw the client's writes and the compensating write of the rejection.
        assert plugin.ops == [("k", "hi", "ada"), ("k", "no", "ada"), ("k", "HI", "server-1")]


class _AdminActions:
    def __init__(self) -> None:
        self.heard: list[tuple[str | None, str, str, str | None]] = []

    @hookimpl
    async def on_admin_action(
        self, connection: Any, principal: Any, action: str, target: str, error: str | None
    ) -> None:
        assert connection.principal is principal
        self.heard.append((principal.user_id, action, target, error))


async def test_unregister_is_for_the_owner_or_admin_and_list_needs_read(start: Any) -> None:
    """...and every binding change asked for, done or refused, is an `on_admin_action`."""
    policies = (Policy(role="USER", map_name_pattern="*", actions=("READ", "PUT")),)
    actions = _AdminActions()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(actions)
    async with start(policies=policies, pm=pm) as h:
        ada = await h.login(roles=("USER",), sub="ada")
        bob = await h.login(roles=("USER",), sub="bob")
        admin = await h.login(sub="root")
        await register(ada, "builtin:immutable")
        await bob.send(
            UnregisterResolver(request_id="u", map_name="m", resolver_name="builtin:immutable")
        )
        refused, _ = await bob.receive_until(UnregisterResolverResponse)
        assert refused.success is False
        await admin.send(
            UnregisterResolver(request_id="u", map_name="m", resolver_name="builtin:immutable")
        )
        removed, _ = await admin.receive_until(UnregisterResolverResponse)
        assert removed.success is True
        assert await listed(ada) == []
        stranger = await h.login(roles=("GUEST",))
        await register(admin, "builtin:immutable")
        assert await listed(stranger, "m") == []
        denied = await register(stranger, "builtin:immutable", map_name="x")
        assert (denied.success, denied.error) == (False, "Access denied for map x")
    assert actions.heard[0] == ("ada", "REGISTER_RESOLVER", "m/builtin:immutable", None)
    assert actions.heard[1][:3] == ("bob", "UNREGISTER_RESOLVER", "m/builtin:immutable")
    assert actions.heard[1][3] is not None
    assert actions.heard[2] == ("root", "UNREGISTER_RESOLVER", "m/builtin:immutable", None)
    assert actions.heard[-1][1:] == ("REGISTER_RESOLVER", "x/builtin:immutable", denied.error)
    assert len(actions.heard) == 5


async def test_bindings_survive_a_restart(gated_start: Any) -> None:
    async with gated_start() as h:
        client = await h.login()
        await register(client, "builtin:first_write_wins", priority=7, key_pattern="a*")
    async with gated_start() as h:
        client = await h.login()
        await client.send(ListResolvers(request_id="l"))
        response, _ = await client.receive_until(ListResolversResponse)
        assert [(b.name, b.priority, b.key_pattern) for b in response.resolvers] == [
            ("builtin:first_write_wins", 7, "a*")
        ]


@pytest.mark.parametrize(
    ("name", "local", "remote", "expected"),
    [
        ("builtin:first_write_wins", None, 1, None),
        (
            "builtin:owner_only",
            {"ownerId": "bob"},
            {"x": 1},
            Reject("Only the owner may change this entry"),
        ),
        ("builtin:owner_only", {"ownerId": "ada"}, {"x": 1}, None),
        ("builtin:non_negative", None, -1, Reject("Value must be a non-negative number")),
        ("builtin:non_negative", None, 2, None),
        ("builtin:version_increment", {"version": 1}, {"version": 3}, Reject("Version must be 2")),
        ("builtin:version_increment", None, {"version": 1}, None),
        ("builtin:numeric_min", 4, 2, Merge(2)),
        ("builtin:array_union", [1, 2], [2, 3], Merge([1, 2, 3])),
        (
            "builtin:deep_merge",
            {"a": {"b": 1, "c": 2}},
            {"a": {"b": 3}},
            Merge({"a": {"b": 3, "c": 2}}),
        ),
        ("builtin:server_only", None, 1, Reject("Only the server may write this entry")),
    ],
)
def test_builtin_resolvers(name: str, local: Any, remote: Any, expected: Any) -> None:
    ctx = ResolverContext(
        map_name="m",
        key="k",
        local_value=local,
        remote_value=remote,
        local_timestamp=None,
        remote_timestamp=Timestamp(T, 0, "c"),
        remote_node_id="c",
        auth=ResolverAuth("ada", ("USER",), {}),
        read=lambda key: None,
    )
    assert BUILTIN_RESOLVERS[name][0](ctx) == expected


async def test_configured_bindings_apply_and_clients_cannot_remove_them(start: Any) -> None:
    configured = (ResolverBindingConfig(map_name="m", name="builtin:immutable", key_pattern="a*"),)
    async with start(resolvers=configured) as h:
        client = await h.login()
        await write(client, put("a1", 1), put("b1", 1))
        await write(client, put("a1", 2, T + 1), put("b1", 2, T + 1))
        values = h.server.maps.lww("m")
        assert (values.get("a1"), values.get("b1")) == (1, 2)
        again = await register(client, "builtin:immutable", priority=1)
        assert again.success is False
        await client.send(
            UnregisterResolver(request_id="u", map_name="m", resolver_name="builtin:immutable")
        )
        refused, _ = await client.receive_until(UnregisterResolverResponse)
        assert refused.error == (
            "Resolver builtin:immutable on map m comes from the server configuration"
        )
        assert await listed(client) == [("m", "builtin:immutable")]


def test_a_configured_binding_of_an_unknown_resolver_is_a_config_error(tmp_path: Any) -> None:
    config = ServerConfig(
        data_dir=tmp_path,
        storage=StorageConfig(backend="memory"),
        auth=AuthConfig(jwt_secret=Secret("x" * 32)),
        resolvers=(ResolverBindingConfig(map_name="m", name="builtin:nope"),),
    )
    with pytest.raises(ConfigError, match="unknown resolver 'builtin:nope' to map 'm'"):
        Server(config, pm=make_plugin_manager(entry_points=(), environ={}))
