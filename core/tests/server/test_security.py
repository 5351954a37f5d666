"""`Security`: plugin hooks first, then the built-in JWT verifier and role policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from topgun.hooks import PluginError, Rejected, TopgunPluginManager, hookimpl, make_plugin_manager
from topgun.server import (
    ALL_FIELDS,
    NO_ACCESS,
    AuthConfig,
    AuthError,
    FieldFilter,
    JWTVerifier,
    Policy,
    PolicySet,
    Secret,
    Security,
    ServerConfig,
    TokenPrincipal,
)
from topgun.server.security import PLUGIN_NAME

pytestmark = pytest.mark.anyio
UserFactory = Callable[..., Any]


def manager(*plugins: object, disable: str = "") -> TopgunPluginManager:
    pm = make_plugin_manager(entry_points=(), environ={"TOPGUN_DISABLE_PLUGINS": disable})
    for index, plugin in enumerate(plugins):
        pm.register(plugin, name=f"plugin-{index}")
    return pm


def security(
    tokens: Any, *plugins: object, policies: list[Policy] | None = None, disable: str = ""
) -> Security:
    return Security(
        manager(*plugins, disable=disable),
        verifier=JWTVerifier(tokens.secret, clock=tokens.clock),
        policies=PolicySet(policies or []),
    )


async def refused(sec: Security, token: object) -> str:
    with pytest.raises(AuthError) as info:
        await sec.authenticate(token, None)
    return info.value.reason


# --- authentication ------------------------------------------------------------------------


async def test_the_builtin_verifier_authenticates_jwts(tokens: Any) -> None:
    sec = security(tokens)
    principal = await sec.authenticate(tokens.hs256(roles=["EDITOR"]), None)
    assert isinstance(principal, TokenPrincipal)
    assert (principal.user_id, principal.roles) == ("alice", ("EDITOR",))
    assert await refused(sec, tokens.hs256(secret="wrong-" + tokens.secret)) == (
        "invalid signature"
    )
    assert await refused(sec, tokens.hs256(exp=tokens.now_s)) == "jwt expired"
    assert await refused(sec, None) == "jwt must be provided"
    assert await refused(sec, "") == "jwt must be provided"


async def test_the_builtin_plugin_is_listed_and_asked_last(tokens: Any) -> None:
    pm = manager()
    assert pm.has_plugin(PLUGIN_NAME)
    info = {i.name: i for i in pm.plugin_info(include_builtin=True)}[PLUGIN_NAME]
    assert info.hooks == ("check_permission", "verify_token")
    first = next(impl.plugin_name for impl in pm.hook.verify_token.get_hookimpls())
    assert first == PLUGIN_NAME


async def test_plugin_verifiers_are_asked_before_the_builtin_one(tokens: Any) -> None:
    class ApiKeys:
        @hookimpl
        async def verify_token(self, token: str) -> TokenPrincipal | None:
            if token.startswith("key-"):
                return TokenPrincipal.from_claims({"sub": token[4:], "roles": ["SERVICE"]})
            if token == "revoked":
                raise Rejected("token revoked")
            return None

    sec = security(tokens, ApiKeys())
    service = await sec.authenticate("key-billing", None)
    assert (service.user_id, list(service.roles)) == ("billing", ["SERVICE"])
    assert await refused(sec, "revoked") == "token revoked"
    assert (await sec.authenticate(tokens.hs256(), None)).user_id == "alice"
    assert await refused(sec, "garbage") == "jwt malformed"


async def test_enrich_principal_runs_after_verification(tokens: Any) -> None:
    seen: list[Any] = []

    class Directory:
        @hookimpl
        def enrich_principal(self, principal: Any, connection: Any) -> TokenPrincipal | None:
            seen.append(connection)
            if principal.user_id == "mallory":
                raise Rejected("account disabled")
            return TokenPrincipal(principal.user_id, (*principal.roles, "STAFF"), principal.claims)

    sec = security(tokens, Directory())
    connection = object()
    principal = await sec.authenticate(tokens.hs256(), connection)  # type: ignore[arg-type]
    assert principal.roles == ("USER", "STAFF")
    assert seen == [connection]
    assert await refused(sec, tokens.hs256(sub="mallory")) == "account disabled"


async def test_without_any_verifier_every_token_is_refused(tokens: Any) -> None:
    assert await refused(Security(manager()), tokens.hs256()) == "invalid token"
    disabled = security(tokens, disable=PLUGIN_NAME)
    assert not disabled.builtin_enabled
    assert await refused(disabled, tokens.hs256()) == "invalid token"


async def test_hooks_called_outside_security_get_no_builtin_opinion(
    tokens: Any, user: UserFactory
) -> None:
    pm = manager()
    assert (
        pm.hook.check_permission(principal=user(roles=["ADMIN"]), resource="m", action="READ") == []
    )
    assert pm.hook.verify_token(token=tokens.hs256(), connection=None) is None


def test_from_config_uses_the_auth_section_and_policies(tokens: Any, user: UserFactory) -> None:
    config = ServerConfig(
        auth=AuthConfig(jwt_secret=Secret(tokens.secret), issuer="idp"),
        policies=(Policy("USER", "todos", ("READ",)),),
    )
    sec = Security.from_config(manager(), config, clock=tokens.clock)
    assert sec.verifier is not None
    assert sec.verifier.issuer == "idp"
    assert sec.is_allowed(user(), "todos", "READ")
    assert Security.from_config(manager(), ServerConfig()).verifier is None


# --- authorization -------------------------------------------------------------------------


def test_policies_decide_when_no_plugin_has_an_opinion(tokens: Any, user: UserFactory) -> None:
    sec = security(tokens, policies=[Policy("USER", "todos", ("READ",))])
    assert sec.is_allowed(user(), "todos", "READ")
    assert not sec.is_allowed(user(), "todos", "PUT")
    assert not sec.is_allowed(user(), "$sys/x", "READ")
    assert sec.is_allowed(user(roles=["ADMIN"]), "$sys/x", "REMOVE")
    assert not security(tokens).is_allowed(user(), "todos", "READ")  # no policies


def test_any_plugin_false_denies_and_any_true_allows(tokens: Any, user: UserFactory) -> None:
    class Rules:
        @hookimpl
        def check_permission(self, principal: Any, resource: str, action: str) -> bool | None:
            if resource == "frozen" and action != "READ":
                return False
            if resource.startswith("topic:public-"):
                return True
            return None

    sec = security(tokens, Rules(), policies=[Policy("USER", "*", ("ALL",))])
    assert sec.is_allowed(user(), "frozen", "READ")
    assert not sec.is_allowed(user(), "frozen", "PUT")
    assert not sec.is_allowed(user(roles=["ADMIN"]), "frozen", "REMOVE")  # any False denies
    assert sec.is_allowed(user(), "todos", "PUT")
    strict = security(tokens, Rules())  # no policies: only ADMIN, and what plugins allow
    assert strict.is_allowed(user(), "topic:public-news", "READ")
    assert not strict.is_allowed(user(), "topic:private", "READ")


def test_a_plugin_registered_later_is_asked_from_its_next_check(
    tokens: Any, user: UserFactory
) -> None:
    """Alone, the built-in plugin is asked without a hook call; that shortcut must not
    outlive the registration of another `check_permission` implementation."""

    class Freeze:
        @hookimpl
        def check_permission(self, principal: Any, resource: str, action: str) -> bool | None:
            return False if action != "READ" else None

    sec = security(tokens, policies=[Policy("USER", "*", ("ALL",))])
    assert sec.is_allowed(user(), "todos", "PUT")
    sec.pm.register(Freeze())
    assert not sec.is_allowed(user(), "todos", "PUT")
    assert sec.is_allowed(user(), "todos", "READ")


def test_denials_of_requests_are_announced_and_filters_are_not(
    tokens: Any, user: UserFactory
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.denied: list[tuple[str | None, str, str]] = []

        @hookimpl
        def on_permission_denied(self, principal: Any, resource: str, action: str) -> None:
            self.denied.append((principal.user_id, resource, action))
            raise RuntimeError("a broken audit plugin does not turn a denial into an error")

    recorder = Recorder()
    sec = security(tokens, recorder, policies=[Policy("USER", "todos", ("READ",))])
    assert sec.is_allowed(user(), "todos", "READ")
    assert not sec.is_allowed(user(), "todos", "PUT")
    assert not sec.is_allowed(user(), "secrets", "READ", announce=False)
    assert not sec.field_filter(user(), "secrets").readable
    assert recorder.denied == [("alice", "todos", "PUT")]


def test_with_the_builtin_disabled_only_plugins_allow(tokens: Any, user: UserFactory) -> None:
    sec = security(tokens, policies=[Policy("USER", "*", ("ALL",))], disable=PLUGIN_NAME)
    assert not sec.is_allowed(user(), "todos", "READ")
    assert not sec.is_allowed(user(roles=["ADMIN"]), "todos", "READ")


def test_bad_answers_and_actions_are_errors(tokens: Any, user: UserFactory) -> None:
    class Sloppy:
        @hookimpl
        def check_permission(self) -> object:
            return "yes"

    with pytest.raises(PluginError, match="check_permission returned 'yes'"):
        security(tokens, Sloppy()).is_allowed(user(), "m", "READ")
    for action in ("ALL", "WRITE", "read"):
        with pytest.raises(ValueError, match="expected READ, PUT or REMOVE"):
            security(tokens).is_allowed(user(), "m", action)


# --- field-level security ------------------------------------------------------------------


def test_field_filter_combines_read_permission_and_policy_fields(
    tokens: Any, user: UserFactory
) -> None:
    class Grants:
        @hookimpl
        def check_permission(self, resource: str, action: str) -> bool | None:
            if resource == "shared" and action == "READ":
                return True
            return False if resource == "hidden" else None

    sec = security(
        tokens,
        Grants(),
        policies=[
            Policy("USER", "todos", ("READ",), ("title",)),
            Policy("USER", "hidden", ("READ",)),
        ],
    )
    assert sec.field_filter(user(), "todos") == FieldFilter(True, frozenset({"title"}))
    assert sec.field_filter(user(), "todos").apply({"title": "t", "x": 1}) == {"title": "t"}
    assert sec.field_filter(user(), "shared") == ALL_FIELDS  # READ from a plugin only
    assert sec.field_filter(user(), "hidden") == NO_ACCESS  # a plugin denies READ
    assert sec.field_filter(user(), "elsewhere") == NO_ACCESS
    assert sec.field_filter(user(roles=["ADMIN"]), "todos") == ALL_FIELDS
    assert sec.field_filter(user(roles=["ADMIN"]), "hidden") == NO_ACCESS


def test_field_filter_without_the_builtin_shows_what_plugins_allow(
    tokens: Any, user: UserFactory
) -> None:
    class AllowAll:
        @hookimpl
        def check_permission(self) -> bool:
            return True

    sec = security(
        tokens,
        AllowAll(),
        policies=[Policy("USER", "todos", ("READ",), ("title",))],
        disable=PLUGIN_NAME,
    )
    assert sec.field_filter(user(), "todos") == ALL_FIELDS
