"""One server's authentication and authorization, and the built-in plugin behind them.

`Security` is what sessions call: `authenticate` (the `verify_token` hook, then the
`enrich_principal` chain), `is_allowed` (the `check_permission` hook) and `field_filter`
(FLS). The built-in JWT verifier and the configured role policies take part as this
module's hook implementations, a built-in plugin (`topgun.hooks.DEFAULT_PLUGINS`) like any
other: `topgun plugins --all` lists it, and `TOPGUN_DISABLE_PLUGINS=topgun.server.security`
leaves authentication and authorization entirely to installed plugins.

Hook implementations receive only the hook's arguments, so the built-in ones find the
verifier and policies of the `Security` making the call in a context variable that
`Security` sets for the duration of each hook call and resets right after. Calling these
hooks other than through `Security` leaves the built-in plugin without an opinion.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Final

from topgun.hooks import (
    Connection,
    PluginError,
    Principal,
    Rejected,
    TopgunPluginManager,
    call_chain_async,
    call_first_async,
    call_hook_sync,
    hookimpl,
)
from topgun.server.auth import AuthError, JWTVerifier, wall_clock_ms
from topgun.server.config import ServerConfig
from topgun.server.permissions import (
    ACTIONS,
    ALL_FIELDS,
    NO_ACCESS,
    FieldFilter,
    PolicySet,
    is_admin,
)

logger = logging.getLogger(__name__)

PLUGIN_NAME: Final = __name__
"""The built-in plugin's name, as `topgun plugins` and `TOPGUN_DISABLE_PLUGINS` know it."""

_current: ContextVar[Security | None] = ContextVar("topgun_server_security", default=None)


class Security:
    """Authentication and authorization for one server: plugins first, then built-ins.

    `verifier` is the built-in JWT verifier (`None`: none configured, so only plugin
    verifiers can authenticate); `policies` the configured role policies.
    """

    def __init__(
        self,
        pm: TopgunPluginManager,
        *,
        verifier: JWTVerifier | None = None,
        policies: PolicySet | None = None,
    ) -> None:
        self.pm = pm
        self.verifier = verifier
        self.policies = policies if policies is not None else PolicySet()

    @classmethod
    def from_config(
        cls,
        pm: TopgunPluginManager,
        config: ServerConfig,
        *,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> Security:
        """The security `config` describes (`auth` and `policies`), with clock `clock`."""
        verifier = JWTVerifier.from_config(config.auth, clock=clock)
        return cls(pm, verifier=verifier, policies=PolicySet(config.policies))

    @property
    def builtin_enabled(self) -> bool:
        """Whether the built-in plugin is loaded (not disabled) in this plugin manager."""
        return self.pm.has_plugin(PLUGIN_NAME)

    @contextlib.contextmanager
    def _bound(self) -> Iterator[None]:
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)

    async def authenticate(self, token: object, connection: Connection | None) -> Principal:
        """The principal `token` authenticates, enriched; `AuthError(reason)` if refused.

        A missing or non-string token is refused at once. `verify_token`
        implementations are asked in turn (the built-in JWT verifier
        last); a `Rejected` from a plugin becomes the `AuthError`'s reason. Then every
        `enrich_principal` implementation may replace the principal or reject it.
        """
        if not isinstance(token, str) or not token:
            raise AuthError("jwt must be provided")
        try:
            with self._bound():
                principal = await call_first_async(
                    self.pm.hook.verify_token, token=token, connection=connection
                )
            if principal is None:
                raise AuthError("invalid token")
            enriched: Principal = await call_chain_async(
                self.pm.hook.enrich_principal,
                "principal",
                principal=principal,
                connection=connection,
            )
        except Rejected as exc:
            raise AuthError(exc.reason) from None
        return enriched

    def is_allowed(
        self, principal: Principal, resource: str, action: str, *, announce: bool = True
    ) -> bool:
        """Whether `principal` may do `action` (READ, PUT, REMOVE) on `resource`.

        Every `check_permission` implementation is asked: any `False` denies, otherwise
        any `True` allows; the built-in one answers `True` when the role policies allow
        and has no opinion otherwise, so with no opinion at all the answer is no. A denial
        is announced to the `on_permission_denied` plugins unless `announce` is false (the
        checks that only filter what a principal is shown).
        """
        if action not in ACTIONS or action == "ALL":
            raise ValueError(f"unknown action {action!r}; expected READ, PUT or REMOVE")
        hook = self.pm.hook.check_permission
        impls = hook.get_hookimpls()
        if len(impls) == 1 and impls[0].function is check_permission:
            # Only the built-in plugin answers: its answer, without the hook call around it
            # (this runs for every write request).
            allowed = self.policies.check(principal, resource, action)
        else:
            token = _current.set(self)  # `_bound()`, inlined
            try:
                answers = call_hook_sync(
                    hook, principal=principal, resource=resource, action=action
                )
            finally:
                _current.reset(token)
            for answer in answers:
                if not isinstance(answer, bool):
                    raise PluginError(
                        f"check_permission returned {answer!r}; it must return True, False or None"
                    )
            allowed = False not in answers and True in answers
        if not allowed and announce:
            self._announce_denial(principal, resource, action)
        return allowed

    def _announce_denial(self, principal: Principal, resource: str, action: str) -> None:
        try:
            call_hook_sync(
                self.pm.hook.on_permission_denied,
                principal=principal,
                resource=resource,
                action=action,
            )
        except Exception:
            logger.exception("an on_permission_denied plugin failed (the denial stands)")

    def field_filter(self, principal: Principal, map_name: str) -> FieldFilter:
        """What `principal` may see of `map_name`'s values (PROTOCOL.md §4.3 FLS).

        Without READ (`is_allowed`), nothing. With READ, ADMIN sees whole values, and
        others the fields the role policies grant; READ granted only by a plugin (no
        policy grants it) shows whole values.
        """
        if not self.is_allowed(principal, map_name, "READ", announce=False):
            return NO_ACCESS
        if is_admin(principal) or not self.builtin_enabled:
            return ALL_FIELDS
        policy_filter = self.policies.field_filter(principal, map_name)
        return policy_filter if policy_filter.readable else ALL_FIELDS


# --- the built-in plugin -----------------------------------------------------------------


@hookimpl(trylast=True)
def verify_token(token: str) -> Principal | None:
    """The built-in JWT verifier (PROTOCOL.md §4.2), asked after every plugin verifier."""
    security = _current.get()
    if security is None or security.verifier is None:
        return None
    try:
        return security.verifier.verify(token)
    except AuthError as exc:
        raise Rejected(exc.reason) from None


@hookimpl(trylast=True)
def check_permission(principal: Principal, resource: str, action: str) -> bool | None:
    """The configured role policies (PROTOCOL.md §4.3): allow, or no opinion."""
    security = _current.get()
    if security is None:
        return None
    return True if security.policies.check(principal, resource, action) else None
