"""Role policies, the permission check and field-level security (PROTOCOL.md §4.3).

A `Policy` grants the principals holding `role` some `actions` on the resources matching
`map_name_pattern`. `PolicySet.check` answers one authorization question exactly as §4.3
says; `PolicySet.field_filter` says what a principal may see of one map's values (FLS).
Both are pure and cached per (roles, user id, resource), since they sit on every read and
write path. Plugins get their say through the `check_permission` hook, which
`topgun.server.security` combines with these policies.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar

import msgspec

from topgun.crdt import LWWRecord, ORMapRecord
from topgun.hooks import Principal

Action = Literal["READ", "PUT", "REMOVE", "ALL"]
"""A policy action; `ALL` grants the three others."""

ACTIONS: Final = ("READ", "PUT", "REMOVE", "ALL")
"""Every value `Action` may take."""

ADMIN_ROLE: Final = "ADMIN"
"""The role that every check allows and FLS never filters."""

SYSTEM_PREFIX: Final = "$sys/"
"""Resources starting with this are reserved for the server: only ADMIN may touch them."""

DEFAULT_CACHE_SIZE: Final = 4096
"""How many (roles, user id, resource) decisions a `PolicySet` remembers."""


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One role policy: `role` may do `actions` on resources matching `map_name_pattern`.

    Patterns are `*` (every resource), an exact name, or `prefix*`; `{userId}` in a pattern
    stands for the principal's user id. `allowed_fields` restricts what READ shows of map
    values (FLS); `None`, empty or containing `*` means the whole value.
    """

    role: Annotated[str, msgspec.Meta(min_length=1)]
    map_name_pattern: Annotated[str, msgspec.Meta(min_length=1)]
    actions: Annotated[tuple[Action, ...], msgspec.Meta(min_length=1)]
    allowed_fields: tuple[str, ...] | None = None


class _Withheld(enum.Enum):
    WITHHELD = "WITHHELD"

    def __repr__(self) -> str:
        return "WITHHELD"


WITHHELD: Final = _Withheld.WITHHELD
"""What FLS returns for a value the principal may not read: do not send it at all."""

Withheld = Literal[_Withheld.WITHHELD]
"""The type of `WITHHELD`."""


R = TypeVar("R", LWWRecord, ORMapRecord)


class FieldFilter(msgspec.Struct, frozen=True):
    """What one principal may see of one map's values.

    Unreadable values are withheld; readable ones are shown whole (`fields` is `None`) or
    keep only the top-level keys in `fields` (element by element in arrays).
    """

    readable: bool
    fields: frozenset[str] | None = None

    def apply(self, value: Any) -> Any | Withheld:
        """The value as this principal may see it, or `WITHHELD`.

        A map keeps only the allowed top-level keys; an array is filtered element by
        element; any other value (a scalar, `None`) has no fields and passes unchanged.
        """
        if not self.readable:
            return WITHHELD
        if self.fields is None:
            return value
        return _keep_fields(value, self.fields)

    def record(self, record: R) -> R | None:
        """`record` with its value as this principal may see it, `None` if withheld; a
        tombstone (no value) passes unchanged."""
        if not self.readable:
            return None
        if self.fields is None or record.value is None:
            return record
        return msgspec.structs.replace(record, value=_keep_fields(record.value, self.fields))


def _keep_fields(value: Any, fields: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {key: item for key, item in value.items() if key in fields}
    if isinstance(value, list | tuple):
        return [_keep_fields(item, fields) for item in value]
    return value


ALL_FIELDS: Final = FieldFilter(readable=True)
"""Values are shown whole (ADMIN, or a READ policy without field restriction)."""

NO_ACCESS: Final = FieldFilter(readable=False)
"""Values are withheld: nothing grants READ."""


class _Grant(NamedTuple):
    """What the policies grant one (roles, user id) on one resource."""

    actions: frozenset[str]
    fields: FieldFilter


def _matches(pattern: str, resource: str, user_id: str | None) -> bool:
    """Whether `pattern` (`*`, `prefix*` or exact; `{userId}` substituted) covers `resource`.

    The pattern's shape is decided before substitution, so a user id containing `*` is
    matched literally and can never widen a pattern.
    """
    if pattern == "*":
        return True
    prefix = pattern.endswith("*")
    literal = pattern[:-1] if prefix else pattern
    if "{userId}" in literal:
        if user_id is None:
            return False
        literal = literal.replace("{userId}", user_id)
    return resource.startswith(literal) if prefix else resource == literal


def is_admin(principal: Principal) -> bool:
    """Whether the principal holds the ADMIN role."""
    return ADMIN_ROLE in principal.roles


class PolicySet:
    """The configured role policies, answering permission and FLS questions.

    With no policies at all, only ADMIN is allowed anything (PROTOCOL.md §4.3).
    """

    def __init__(
        self, policies: Iterable[Policy] = (), *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.policies: tuple[Policy, ...] = tuple(policies)
        for policy in self.policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"PolicySet takes Policy objects, got {policy!r}")
        by_role: dict[str, list[Policy]] = {}
        for policy in self.policies:
            by_role.setdefault(policy.role, []).append(policy)
        self._by_role = {role: tuple(found) for role, found in by_role.items()}
        self._grant = functools.lru_cache(maxsize=cache_size)(self._compute_grant)

    def __repr__(self) -> str:
        return f"PolicySet({len(self.policies)} policies)"

    def _compute_grant(self, roles: tuple[str, ...], user_id: str | None, resource: str) -> _Grant:
        actions: set[str] = set()
        fields: set[str] = set()
        readable = whole = False
        for role in dict.fromkeys(roles):
            for policy in self._by_role.get(role, ()):
                if not _matches(policy.map_name_pattern, resource, user_id):
                    continue
                actions.update(policy.actions)
                if "READ" in policy.actions or "ALL" in policy.actions:
                    readable = True
                    allowed = policy.allowed_fields
                    if not allowed or "*" in allowed:
                        whole = True
                    else:
                        fields.update(allowed)
        if "ALL" in actions:
            actions.update(ACTIONS)
        if not readable:
            field_filter = NO_ACCESS
        elif whole:
            field_filter = ALL_FIELDS
        else:
            field_filter = FieldFilter(readable=True, fields=frozenset(fields))
        return _Grant(frozenset(actions), field_filter)

    def _lookup(self, principal: Principal, resource: str) -> _Grant:
        return self._grant(tuple(principal.roles), principal.user_id, resource)

    def check(self, principal: Principal, resource: str, action: str) -> bool:
        """Whether the policies let `principal` do `action` on `resource` (§4.3).

        ADMIN is always allowed; `$sys/...` is denied to everyone else; otherwise some
        policy must name one of the principal's roles, match the resource and grant the
        action or `ALL`. `action` is `READ`, `PUT` or `REMOVE`.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if is_admin(principal):
            return True
        if resource.startswith(SYSTEM_PREFIX):
            return False
        return action in self._lookup(principal, resource).actions

    def field_filter(self, principal: Principal, map_name: str) -> FieldFilter:
        """What `principal` may see of the values of `map_name` under these policies.

        ADMIN sees everything; otherwise the union of `allowed_fields` of every matching
        policy granting READ or ALL, the whole value if one of them has no restriction,
        and nothing without such a policy (or on `$sys/` maps).
        """
        if is_admin(principal):
            return ALL_FIELDS
        if map_name.startswith(SYSTEM_PREFIX):
            return NO_ACCESS
        return self._lookup(principal, map_name).fields

    def filter_value(self, principal: Principal, map_name: str, value: Any) -> Any | Withheld:
        """`value` of map `map_name` as `principal` may see it, or `WITHHELD` (FLS)."""
        return self.field_filter(principal, map_name).apply(value)
