"""The hook specifications: every hook called the way its docstring says, plus the
discipline meta-tests (every hook called by some test, every hook documented exactly)."""

from __future__ import annotations

import ast
import inspect
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import msgspec
import pytest

import topgun.hooks
from topgun.hooks import (
    DROP,
    Rejected,
    TopgunPluginManager,
    call_chain_async,
    call_first_async,
    call_hook_async,
    call_hook_sync,
    collect_registrations,
    hookimpl,
    hookspecs,
)

ROOT = Path(__file__).resolve().parents[3]
TEST_DIRS = ("core/tests", "tests", "plugins/*/tests", "ext-*/tests")
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def all_hookspecs() -> dict[str, Callable[..., Any]]:
    """Every function of topgun.hooks.hookspecs marked with `@hookspec`."""
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, "topgun_spec")
    }


def plugin(**hooks: Callable[..., Any]) -> SimpleNamespace:
    """A plugin object whose attributes are the given functions, marked `@hookimpl`."""
    return SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


@dataclass(frozen=True)
class User:
    """Satisfies `topgun.hooks.Principal`."""

    user_id: str | None
    roles: tuple[str, ...] = ("USER",)
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conn:
    """Satisfies `topgun.hooks.Connection`."""

    client_id: str = "client-1"
    remote_address: str | None = "192.0.2.7:40000"
    principal: User | None = None


@dataclass(frozen=True)
class Ctx:
    """Satisfies `topgun.hooks.OpContext`."""

    principal: User
    connection: Conn | None = None


# --- the discipline meta-tests -------------------------------------------------------


def hooks_called_in(source: str) -> set[str]:
    """Names `X` of `<expr>.hook.X` used as a call's function or as one of its arguments.

    That covers `pm.hook.X(...)` and every helper call such as
    `await call_hook_async(pm.hook.X, ...)` or `collect_registrations(pm.hook.X)`.
    """
    called = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for used in [node.func, *node.args, *(keyword.value for keyword in node.keywords)]:
                if (
                    isinstance(used, ast.Attribute)
                    and isinstance(used.value, ast.Attribute)
                    and used.value.attr == "hook"
                ):
                    called.add(used.attr)
    return called


def test_hook_call_rule_recognises_direct_and_helper_calls() -> None:
    source = (
        "pm.hook.a(x=1)\n"
        "await call_hook_async(self.pm.hook.b, server=s)\n"
        "collect_registrations(hook=pm.hook.c)\n"
        "pm.hook.d\n"
        "f(pm.hooks.e)\n"
    )
    assert hooks_called_in(source) == {"a", "b", "c"}


def test_every_hookspec_is_called_by_a_test() -> None:
    """Rule: a hook counts as tested when some `test_*.py` or `conftest.py` under
    core/tests, tests, plugins/*/tests or ext-*/tests calls `<expr>.hook.<name>(...)` or
    passes `<expr>.hook.<name>` as an argument of a call (the helpers of topgun.hooks)."""
    files = [
        path
        for pattern in TEST_DIRS
        for directory in ROOT.glob(pattern)
        for path in directory.rglob("*.py")
        if path.name.startswith("test_") or path.name == "conftest.py"
    ]
    called = set().union(*(hooks_called_in(path.read_text()) for path in files))
    untested = sorted(set(all_hookspecs()) - called)
    assert not untested, f"hookspecs no test calls: {', '.join(untested)}"


def expected_signature(name: str, spec: Callable[..., Any]) -> str:
    """`def name(arg: annotation, ...) -> annotation`, from the hookspec.

    hookspecs.py uses `from __future__ import annotations`, so `inspect.signature` gives
    each annotation as its source text (normalised as `ast.unparse` writes it).
    """
    signature = inspect.signature(spec)
    arguments = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {name}({arguments}) -> {signature.return_annotation}"


def documented_hooks(text: str) -> dict[str, tuple[str, str | None]]:
    """name -> (signature, docstring) of every ```py block of the page holding a `def`.

    The signature is rebuilt from the block's syntax tree, so line wrapping (ruff formats
    code blocks in docs too) does not matter, but every name, annotation, default and
    argument kind does.
    """
    found = {}
    for block in re.findall(r"^```py\n(def .*?)^```", text, re.S | re.M):
        function = ast.parse(block).body[0]
        assert isinstance(function, ast.FunctionDef), block
        returns = ast.unparse(function.returns) if function.returns else "<none>"
        signature = f"def {function.name}({ast.unparse(function.args)}) -> {returns}"
        found[function.name] = (signature, ast.get_docstring(function))
    return found


def test_every_hookspec_is_documented_with_its_exact_signature_and_docstring() -> None:
    """Rule: docs/plugins.md holds, for every hook, a ```py block defining the hook with
    the same arguments and annotations as hookspecs.py (wrapping aside) and the same
    docstring (indentation aside); and no such block for a hook that does not exist."""
    documented = documented_hooks(PLUGINS_DOC.read_text())
    problems = []
    for name, spec in all_hookspecs().items():
        expected = expected_signature(name, spec)
        if name not in documented:
            problems.append(f"{name}: not documented; add\n{expected}:")
            continue
        signature, doc = documented[name]
        if signature != expected:
            problems.append(f"{name}: signature is\n{signature}\nexpected\n{expected}")
        if doc != inspect.getdoc(spec):
            problems.append(f"{name}: docstring differs from hookspecs.py")
    problems += [
        f"{name}: documented but not a hookspec"
        for name in documented.keys() - all_hookspecs().keys()
    ]
    assert not problems, "\n\n".join(problems)


def test_documented_hooks_parser_reads_the_format() -> None:
    page = (
        "Text.\n\n```py\ndef on_x(\n    a: int, b: dict[str,  int]\n) -> None:\n"
        '    """Doc\n    more."""\n```\n'
        "```py\ndef f(a: int = 1, *, b) -> int:\n    ...\n```\n"
    )
    assert documented_hooks(page) == {
        "on_x": ("def on_x(a: int, b: dict[str, int]) -> None", "Doc\nmore."),
        "f": ("def f(a: int=1, *, b) -> int", None),
    }


@pytest.mark.parametrize("name", sorted(all_hookspecs()))
def test_hookspec_is_flat_annotated_and_says_how_it_is_called(name: str) -> None:
    spec = all_hookspecs()[name]
    signature = inspect.signature(spec)
    for parameter in signature.parameters.values():
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, parameter
        assert parameter.default is inspect.Parameter.empty, parameter
        assert parameter.annotation is not inspect.Parameter.empty, parameter
    assert signature.return_annotation is not inspect.Signature.empty
    doc = inspect.getdoc(spec) or ""
    assert re.search(r"Called\s+(once\s+)?(when|for|on|after|to)\b", doc), "say when it is called"
    assert re.search(r"May\s+be\s+async|Sync\s+only", doc), "say whether it may be async"
    helper = re.search(r"Called\s+with\s+`(\w+)", doc)
    assert helper, "name the helper that calls it"
    assert helper.group(1) in topgun.hooks.__all__
    firstresult = bool(spec.topgun_spec.get("firstresult"))
    assert firstresult == (helper.group(1) == "call_first_async")
    is_async = re.search(r"May\s+be\s+async", doc) is not None
    assert is_async == helper.group(1).endswith("_async")


# --- lifecycle, config, CLI ----------------------------------------------------------


@pytest.mark.anyio
async def test_on_startup_and_on_shutdown(pm: TopgunPluginManager) -> None:
    server = SimpleNamespace(resources=[])

    async def on_startup(server: Any) -> None:
        server.resources.append("pool")

    def on_shutdown(server: Any) -> None:
        server.resources.remove("pool")

    pm.register(plugin(on_startup=on_startup, on_shutdown=on_shutdown), name="pool")
    assert await call_hook_async(pm.hook.on_startup, server=server) == []
    assert server.resources == ["pool"]
    await call_hook_async(pm.hook.on_shutdown, server=server)
    assert server.resources == []


def test_register_config_sections(pm: TopgunPluginManager) -> None:
    class AuditConfig(msgspec.Struct, forbid_unknown_fields=True):
        path: str
        retention_days: int = 30

    pm.register(plugin(register_config_sections=lambda register: register("audit", AuditConfig)))
    sections = collect_registrations(pm.hook.register_config_sections)
    section_type = sections["audit"].obj
    assert msgspec.convert({"path": "/var/audit"}, section_type) == AuditConfig("/var/audit", 30)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.retention_days"):
        msgspec.convert({"path": "p", "retention_days": "soon"}, section_type)


def test_register_commands(pm: TopgunPluginManager) -> None:
    def register_commands(cli: click.Group) -> None:
        cli.add_command(click.Command("backup", callback=lambda: None))

    pm.register(plugin(register_commands=register_commands), name="backup")
    group = click.Group("topgun")
    assert call_hook_sync(pm.hook.register_commands, cli=group) == []
    assert {"backup", "serve", "plugins"} <= set(group.commands)


# --- interceptors --------------------------------------------------------------------


@pytest.mark.anyio
async def test_on_connection_may_reject(pm: TopgunPluginManager) -> None:
    async def on_connection(connection: Conn) -> None:
        if (connection.remote_address or "").startswith("203.0.113."):
            raise Rejected("address blocked")

    pm.register(plugin(on_connection=on_connection), name="firewall")
    assert await call_hook_async(pm.hook.on_connection, connection=Conn()) == []
    with pytest.raises(Rejected, match="address blocked"):
        await call_hook_async(
            pm.hook.on_connection, connection=Conn(remote_address="203.0.113.9:1")
        )


@pytest.mark.anyio
async def test_on_authenticated_may_reject(pm: TopgunPluginManager) -> None:
    seen: list[str | None] = []

    def on_authenticated(connection: Conn, principal: User) -> None:
        seen.append(principal.user_id)
        if "BANNED" in principal.roles:
            raise Rejected("account suspended")

    pm.register(plugin(on_authenticated=on_authenticated), name="bans")
    alice, mallory = User("alice"), User("mallory", roles=("USER", "BANNED"))
    await call_hook_async(
        pm.hook.on_authenticated, connection=Conn(principal=alice), principal=alice
    )
    with pytest.raises(Rejected, match="suspended"):
        await call_hook_async(
            pm.hook.on_authenticated, connection=Conn(principal=mallory), principal=mallory
        )
    assert seen == ["alice", "mallory"]


@pytest.mark.anyio
async def test_on_auth_failed_hears_the_reason(pm: TopgunPluginManager) -> None:
    failures: list[tuple[str, str | None, str]] = []

    async def on_auth_failed(connection: Conn, reason: str) -> None:
        failures.append((connection.client_id, connection.remote_address, reason))

    pm.register(plugin(on_auth_failed=on_auth_failed), name="ids")
    await call_hook_async(pm.hook.on_auth_failed, connection=Conn(), reason="Token expired")
    assert failures == [("client-1", "192.0.2.7:40000", "Token expired")]


@pytest.mark.anyio
async def test_before_op_transforms_drops_or_rejects(pm: TopgunPluginManager) -> None:
    def stamp(op: dict[str, Any], context: Ctx) -> dict[str, Any]:
        return {**op, "value": {**op["value"], "by": context.principal.user_id}}

    async def policy(op: dict[str, Any]) -> object:
        if op["mapName"].startswith("tmp-"):
            return DROP
        if op["mapName"] == "ledger":
            raise Rejected("ledger is append-only", code=409)
        return None

    pm.register(plugin(before_op=stamp), name="stamp")
    pm.register(plugin(before_op=policy), name="policy")  # registered last: runs first
    ctx = Ctx(User("alice"))
    op = {"mapName": "todos", "key": "k", "value": {"done": True}}
    result = await call_chain_async(pm.hook.before_op, "op", op=op, context=ctx)
    assert result == {**op, "value": {"done": True, "by": "alice"}}
    drop = {**op, "mapName": "tmp-cache"}
    assert await call_chain_async(pm.hook.before_op, "op", op=drop, context=ctx) is DROP
    with pytest.raises(Rejected) as rejected:
        await call_chain_async(pm.hook.before_op, "op", op={**op, "mapName": "ledger"}, context=ctx)
    assert (rejected.value.reason, rejected.value.code) == ("ledger is append-only", 409)


@pytest.mark.anyio
async def test_after_op_sees_op_and_result(pm: TopgunPluginManager) -> None:
    audit: list[tuple[str, str | None, bool]] = []

    async def after_op(op: dict[str, Any], context: Ctx, result: dict[str, Any]) -> None:
        audit.append((op["key"], context.principal.user_id, result["success"]))

    pm.register(plugin(after_op=after_op), name="audit")
    op, result = {"key": "k1"}, {"opId": "1", "success": True, "achievedLevel": "APPLIED"}
    await call_hook_async(pm.hook.after_op, op=op, context=Ctx(User("bob")), result=result)
    assert audit == [("k1", "bob", True)]


@pytest.mark.anyio
async def test_on_disconnect(pm: TopgunPluginManager) -> None:
    closed: list[tuple[str, int, str]] = []

    def on_disconnect(connection: Conn, code: int, reason: str) -> None:
        closed.append((connection.client_id, code, reason))

    pm.register(plugin(on_disconnect=on_disconnect), name="gone")
    await call_hook_async(pm.hook.on_disconnect, connection=Conn(), code=4002, reason="timeout")
    assert closed == [("client-1", 4002, "timeout")]


@pytest.mark.anyio
async def test_on_admin_action_hears_action_target_and_outcome(pm: TopgunPluginManager) -> None:
    heard: list[tuple[str | None, str, str, str | None]] = []

    def on_admin_action(principal: User, action: str, target: str, error: str | None) -> None:
        heard.append((principal.user_id, action, target, error))

    pm.register(plugin(on_admin_action=on_admin_action), name="audit")
    await call_hook_async(
        pm.hook.on_admin_action,
        connection=Conn(),
        principal=User("root"),
        action="REGISTER_RESOLVER",
        target="orders/builtin:immutable",
        error=None,
    )
    assert heard == [("root", "REGISTER_RESOLVER", "orders/builtin:immutable", None)]


# --- auth ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_verify_token_first_verifier_that_knows_the_token_wins(
    pm: TopgunPluginManager,
) -> None:
    async def api_keys(token: str) -> User | None:
        if not token.startswith("key-"):
            return None  # not ours: ask the next verifier
        if token != "key-42":
            raise Rejected("unknown API key")
        return User("service-42", roles=("SERVICE",))

    def fallback(token: str, connection: Conn | None) -> User:
        return User("jwt-user")

    pm.register(SimpleNamespace(verify_token=hookimpl(trylast=True)(fallback)), name="jwt")
    pm.register(plugin(verify_token=api_keys), name="api-keys")
    tokens = {"key-42": User("service-42", roles=("SERVICE",)), "eyJ...": User("jwt-user")}
    for token, principal in tokens.items():
        assert (
            await call_first_async(pm.hook.verify_token, token=token, connection=None) == principal
        )
    with pytest.raises(Rejected, match="unknown API key"):
        await call_first_async(pm.hook.verify_token, token="key-7", connection=Conn())


@pytest.mark.anyio
async def test_enrich_principal_chain(pm: TopgunPluginManager) -> None:
    directory = {"alice": ("ADMIN",)}

    async def from_directory(principal: User) -> User | None:
        extra = directory.get(principal.user_id or "")
        return replace(principal, roles=(*principal.roles, *extra)) if extra else None

    def with_team(principal: User, connection: Conn | None) -> User:
        return replace(principal, claims={**principal.claims, "team": "core"})

    pm.register(plugin(enrich_principal=with_team), name="team")
    pm.register(plugin(enrich_principal=from_directory), name="directory")
    alice, bob = [
        await call_chain_async(
            pm.hook.enrich_principal, "principal", principal=User(name), connection=None
        )
        for name in ("alice", "bob")
    ]
    assert alice == User("alice", roles=("USER", "ADMIN"), claims={"team": "core"})
    assert bob == User("bob", claims={"team": "core"})


def test_check_permission_collects_every_opinion(pm: TopgunPluginManager) -> None:
    def vault(resource: str) -> bool | None:
        return False if resource.startswith("vault") else None

    def readers(principal: User, action: str) -> bool | None:
        return True if action == "READ" and "READER" in principal.roles else None

    pm.register(plugin(check_permission=vault), name="vault")
    pm.register(plugin(check_permission=readers), name="readers")
    reader = User("r", roles=("READER",))
    opinions = {
        ("vault", "READ"): [True, False],  # any False denies
        ("todos", "READ"): [True],
        ("todos", "PUT"): [],  # no opinion: the role policies decide
    }
    for (resource, action), expected in opinions.items():
        found = call_hook_sync(
            pm.hook.check_permission, principal=reader, resource=resource, action=action
        )
        assert found == expected


def test_on_permission_denied_hears_each_denial(pm: TopgunPluginManager) -> None:
    denied: list[tuple[str | None, str, str]] = []

    def on_permission_denied(principal: User, resource: str, action: str) -> None:
        denied.append((principal.user_id, resource, action))

    pm.register(plugin(on_permission_denied=on_permission_denied), name="audit")
    result = call_hook_sync(
        pm.hook.on_permission_denied, principal=User("eve"), resource="payroll", action="READ"
    )
    assert result == []
    assert denied == [("eve", "payroll", "READ")]


# --- storage -------------------------------------------------------------------------


def test_register_storage(pm: TopgunPluginManager) -> None:
    pm.register(plugin(register_storage=lambda register: register("dict", lambda config: {})))
    backends = collect_registrations(pm.hook.register_storage)
    assert backends["dict"].obj(None) == {}


def test_register_storage_wrappers(pm: TopgunPluginManager) -> None:
    class WriteCounter(dict[str, bytes]):
        def __init__(self, inner: dict[str, bytes]) -> None:
            super().__init__(inner)
            self.writes = 0

        def __setitem__(self, key: str, value: bytes) -> None:
            self.writes += 1
            super().__setitem__(key, value)

    def register_storage_wrappers(register: Any) -> None:
        register("count-writes", lambda backend, config: WriteCounter(backend))

    pm.register(plugin(register_storage_wrappers=register_storage_wrappers))
    wrap = collect_registrations(pm.hook.register_storage_wrappers)["count-writes"].obj
    backend = wrap({"a": b"1"}, None)
    backend["b"] = b"2"
    assert (dict(backend), backend.writes) == ({"a": b"1", "b": b"2"}, 1)


def test_register_codecs_form_a_reversible_pipeline(pm: TopgunPluginManager) -> None:
    class Zlib:
        def encode(self, data: bytes) -> bytes:
            return zlib.compress(data)

        def decode(self, data: bytes) -> bytes:
            return zlib.decompress(data)

    class Xor:
        def encode(self, data: bytes) -> bytes:
            return bytes(b ^ 0x5A for b in data)

        decode = encode

    def register_codecs(register: Any) -> None:
        register("zlib", Zlib())
        register("xor", Xor())

    pm.register(plugin(register_codecs=register_codecs), name="codecs")
    codecs = collect_registrations(pm.hook.register_codecs)
    pipeline = [codecs["zlib"].obj, codecs["xor"].obj]  # as configured: compress, then "encrypt"
    stored = b'{"title": "buy milk"}' * 20
    for codec in pipeline:
        stored = codec.encode(stored)
    assert len(stored) < 420
    assert b"milk" not in stored
    for codec in reversed(pipeline):
        stored = codec.decode(stored)
    assert stored == b'{"title": "buy milk"}' * 20


# --- transports, search, processors --------------------------------------------------


def test_register_routes(pm: TopgunPluginManager) -> None:
    for builtin in ("topgun.server.websocket", "topgun.server.http_sync", "topgun.server.sse"):
        pm.unregister(name=builtin)  # the built-in ones need a real Quart app
    app = SimpleNamespace(routes={})

    def register_routes(app: Any, server: Any) -> None:
        app.routes["/health"] = lambda: {"status": "ok", "node": server.node_id}

    pm.register(plugin(register_routes=register_routes), name="health")
    call_hook_sync(pm.hook.register_routes, app=app, server=SimpleNamespace(node_id="n1"))
    assert app.routes["/health"]() == {"status": "ok", "node": "n1"}


def test_register_connection_providers(pm: TopgunPluginManager) -> None:
    def register_connection_providers(register: Any) -> None:
        register("memory", lambda url: ("in-process", url))

    pm.register(plugin(register_connection_providers=register_connection_providers))
    providers = collect_registrations(pm.hook.register_connection_providers)
    assert providers["memory"].obj("memory://node-a") == ("in-process", "memory://node-a")


def test_register_search_providers(pm: TopgunPluginManager) -> None:
    class Substring:
        def search(self, values: dict[str, str], query: str) -> list[tuple[str, float]]:
            return sorted(((k, 1.0) for k, v in values.items() if query in v), reverse=True)

    pm.register(plugin(register_search_providers=lambda register: register("substr", Substring())))
    provider = collect_registrations(pm.hook.register_search_providers)["substr"].obj
    assert provider.search({"a": "red fox", "b": "blue", "c": "fox"}, "fox") == [
        ("c", 1.0),
        ("a", 1.0),
    ]


def test_register_entry_processors(pm: TopgunPluginManager) -> None:
    def increment(value: Any, key: str, args: Any) -> tuple[Any, Any]:
        new = (value or 0) + (1 if args is None else args)
        return new, new

    pm.register(plugin(register_entry_processors=lambda register: register("inc", increment)))
    processor = collect_registrations(pm.hook.register_entry_processors)["inc"].obj
    assert processor(None, "views", None) == (1, 1)
    assert processor(41, "views", 1) == (42, 42)


def test_register_conflict_resolvers(pm: TopgunPluginManager) -> None:
    def register_conflict_resolvers(register: Any) -> None:
        register("larger-wins", lambda ctx: max(ctx["localValue"], ctx["remoteValue"]), priority=60)

    pm.register(plugin(register_conflict_resolvers=register_conflict_resolvers))
    found = collect_registrations(pm.hook.register_conflict_resolvers)["larger-wins"]
    assert found.options == {"priority": 60}
    assert found.obj({"localValue": 3, "remoteValue": 2}) == 3
