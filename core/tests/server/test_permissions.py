"""Role policies, `PolicySet.check` and field-level security (PROTOCOL.md §4.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.server import ALL_FIELDS, NO_ACCESS, WITHHELD, FieldFilter, Policy, PolicySet

UserFactory = Callable[..., Any]


def policy(role: str, pattern: str, *actions: str, fields: tuple[str, ...] | None = None) -> Policy:
    return Policy(role, pattern, actions, fields)  # type: ignore[arg-type]


# --- check ---------------------------------------------------------------------------------


def test_no_policies_allow_only_admin(user: UserFactory) -> None:
    policies = PolicySet()
    for action in ("READ", "PUT", "REMOVE"):
        assert policies.check(user(roles=["ADMIN"]), "todos", action)
        assert not policies.check(user(roles=["USER"]), "todos", action)
        assert not policies.check(user(roles=[]), "todos", action)


def test_admin_is_allowed_everything_including_sys(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos", "READ")])
    admin = user(roles=["USER", "ADMIN"])
    for resource in ("todos", "secret", "$sys/config", "topic:x", "lock:l", "counter:c"):
        assert policies.check(admin, resource, "REMOVE")


def test_sys_resources_are_denied_to_everyone_else(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "*", "ALL"), policy("USER", "$sys/*", "ALL")])
    assert policies.check(user(), "todos", "PUT")
    for action in ("READ", "PUT", "REMOVE"):
        assert not policies.check(user(), "$sys/users", action)
        assert not policies.check(user(), "$sys/", action)


@pytest.mark.parametrize(
    ("pattern", "allowed", "denied"),
    [
        ("*", ["todos", "", "topic:chat", "lock:a", "counter:c"], []),
        ("todos", ["todos"], ["todos2", "todo", "Todos", "x-todos"]),
        ("todos*", ["todos", "todos-1", "todos/a/b"], ["todo", "my-todos"]),
        ("topic:*", ["topic:chat", "topic:"], ["chat", "lock:a"]),
        ("lock:orders-*", ["lock:orders-1"], ["lock:order", "orders-1"]),
        ("counter:likes", ["counter:likes"], ["counter:likes2", "likes"]),
        ("a*b", ["a*b"], ["aXb", "a*bc"]),  # only a trailing * is a wildcard
    ],
)
def test_patterns_are_star_exact_or_prefix(
    user: UserFactory, pattern: str, allowed: list[str], denied: list[str]
) -> None:
    policies = PolicySet([policy("USER", pattern, "READ")])
    for resource in allowed:
        assert policies.check(user(), resource, "READ"), resource
    for resource in denied:
        assert not policies.check(user(), resource, "READ"), resource


def test_user_id_is_substituted_into_patterns(user: UserFactory) -> None:
    policies = PolicySet(
        [policy("USER", "todos-{userId}", "ALL"), policy("USER", "notes/{userId}/*", "READ")]
    )
    alice, bob = user(user_id="alice"), user(user_id="bob")
    assert policies.check(alice, "todos-alice", "PUT")
    assert not policies.check(alice, "todos-bob", "PUT")
    assert policies.check(bob, "todos-bob", "REMOVE")
    assert policies.check(alice, "notes/alice/2024", "READ")
    assert not policies.check(alice, "notes/bob/2024", "READ")
    assert not policies.check(alice, "notes/alice/2024", "PUT")


def test_user_id_is_matched_literally_and_never_widens_a_pattern(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos-{userId}", "ALL")])
    star = user(user_id="*")
    assert policies.check(star, "todos-*", "READ")
    assert not policies.check(star, "todos-alice", "READ")
    prefix = PolicySet([policy("USER", "{userId}", "ALL")])
    assert not prefix.check(user(user_id="todos*"), "todos-alice", "READ")


def test_a_pattern_with_user_id_matches_nothing_without_one(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos-{userId}*", "ALL")])
    anonymous = user(user_id=None)
    for resource in ("todos-", "todos-None", "todos-undefined", "todos-{userId}"):
        assert not policies.check(anonymous, resource, "READ")


def test_actions_must_be_granted_and_all_grants_every_action(user: UserFactory) -> None:
    policies = PolicySet(
        [
            policy("USER", "ro", "READ"),
            policy("USER", "rw", "READ", "PUT"),
            policy("USER", "x", "ALL"),
        ]
    )
    assert [policies.check(user(), "ro", a) for a in ("READ", "PUT", "REMOVE")] == [
        True,
        False,
        False,
    ]
    assert [policies.check(user(), "rw", a) for a in ("READ", "PUT", "REMOVE")] == [
        True,
        True,
        False,
    ]
    assert all(policies.check(user(), "x", a) for a in ("READ", "PUT", "REMOVE"))


def test_policies_apply_to_the_roles_they_name(user: UserFactory) -> None:
    policies = PolicySet([policy("EDITOR", "docs", "PUT"), policy("VIEWER", "docs", "READ")])
    assert not policies.check(user(roles=["USER"]), "docs", "READ")
    assert policies.check(user(roles=["VIEWER"]), "docs", "READ")
    assert not policies.check(user(roles=["VIEWER"]), "docs", "PUT")
    both = user(roles=["VIEWER", "EDITOR"])
    assert policies.check(both, "docs", "READ")
    assert policies.check(both, "docs", "PUT")
    assert not policies.check(user(roles=["editor"]), "docs", "PUT")  # roles are case-sensitive


def test_decisions_differ_per_user_id_with_the_same_roles(user: UserFactory) -> None:
    """The cache is keyed by (roles, user id, resource), not by roles alone."""
    policies = PolicySet([policy("USER", "inbox-{userId}", "READ")])
    for _ in range(3):
        assert policies.check(user(user_id="alice"), "inbox-alice", "READ")
        assert not policies.check(user(user_id="bob"), "inbox-alice", "READ")


def test_unknown_actions_and_non_policies_are_errors(user: UserFactory) -> None:
    with pytest.raises(ValueError, match="unknown action 'WRITE'"):
        PolicySet().check(user(), "todos", "WRITE")
    with pytest.raises(TypeError, match="PolicySet takes Policy objects"):
        PolicySet([{"role": "USER"}])  # type: ignore[list-item]


def test_policies_validate_when_decoded() -> None:
    decoded = msgspec.convert(
        {"role": "USER", "map_name_pattern": "*", "actions": ["READ"]}, Policy
    )
    assert decoded == Policy("USER", "*", ("READ",))
    for bad in (
        {"role": "USER", "map_name_pattern": "*", "actions": ["WRITE"]},
        {"role": "USER", "map_name_pattern": "*", "actions": []},
        {"role": "", "map_name_pattern": "*", "actions": ["READ"]},
        {"role": "USER", "map_name_pattern": "", "actions": ["READ"]},
        {"role": "USER", "map_name_pattern": "*", "actions": ["READ"], "extra": 1},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, Policy)


# --- field-level security ------------------------------------------------------------------

VALUE = {"title": "Buy milk", "owner": "alice", "salary": 100, "tags": ["a"]}


def test_admin_sees_whole_values(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "*", "READ", fields=("title",))])
    assert policies.field_filter(user(roles=["ADMIN"]), "todos") == ALL_FIELDS
    assert policies.filter_value(user(roles=["ADMIN", "USER"]), "todos", VALUE) == VALUE
    assert PolicySet().filter_value(user(roles=["ADMIN"]), "$sys/x", VALUE) == VALUE


def test_values_are_withheld_without_read(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos", "PUT", "REMOVE"), policy("USER", "*", "ALL")])
    assert PolicySet().filter_value(user(), "todos", VALUE) is WITHHELD
    assert PolicySet([policy("USER", "todos", "PUT")]).field_filter(user(), "todos") == NO_ACCESS
    assert policies.filter_value(user(), "$sys/users", VALUE) is WITHHELD
    assert policies.filter_value(user(), "todos", None) is None  # tombstones pass when readable


def test_allowed_fields_keep_only_those_top_level_keys(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos", "READ", fields=("title", "owner", "missing"))])
    assert policies.filter_value(user(), "todos", VALUE) == {"title": "Buy milk", "owner": "alice"}
    nested = {"title": {"text": "t", "salary": 1}, "salary": 5}
    assert policies.filter_value(user(), "todos", nested) == {"title": {"text": "t", "salary": 1}}


def test_allowed_fields_are_the_union_over_matching_read_policies(user: UserFactory) -> None:
    policies = PolicySet(
        [
            policy("USER", "todos", "READ", fields=("title",)),
            policy("AUDITOR", "todo*", "ALL", fields=("salary",)),
            policy("USER", "todos", "PUT", fields=("owner",)),  # no READ: adds nothing
            policy("USER", "other", "READ", fields=("tags",)),  # other map: adds nothing
        ]
    )
    both = user(roles=["USER", "AUDITOR"])
    assert policies.filter_value(both, "todos", VALUE) == {"title": "Buy milk", "salary": 100}
    assert policies.filter_value(user(), "todos", VALUE) == {"title": "Buy milk"}


@pytest.mark.parametrize("unrestricted", [None, (), ("*",), ("title", "*")])
def test_one_unrestricted_read_policy_shows_the_whole_value(
    user: UserFactory, unrestricted: tuple[str, ...] | None
) -> None:
    policies = PolicySet(
        [
            policy("USER", "todos", "READ", fields=("title",)),
            policy("USER", "todo*", "READ", fields=unrestricted),
        ]
    )
    assert policies.field_filter(user(), "todos") == ALL_FIELDS
    assert policies.filter_value(user(), "todos", VALUE) == VALUE


def test_arrays_are_filtered_element_wise_and_scalars_pass(user: UserFactory) -> None:
    policies = PolicySet([policy("USER", "todos", "READ", fields=("title",))])
    rows = [{"title": "a", "salary": 1}, {"salary": 2}, "plain", [{"title": "b", "x": 1}]]
    assert policies.filter_value(user(), "todos", rows) == [
        {"title": "a"},
        {},
        "plain",
        [{"title": "b"}],
    ]
    for scalar in ("text", 42, 1.5, True, b"\x00", None):
        assert policies.filter_value(user(), "todos", scalar) == scalar


def test_field_filter_is_computed_per_user_id(user: UserFactory) -> None:
    policies = PolicySet(
        [
            policy("USER", "profiles", "READ", fields=("name",)),
            policy("USER", "own-{userId}", "READ"),
        ]
    )
    assert policies.field_filter(user(user_id="a"), "profiles") == FieldFilter(
        readable=True, fields=frozenset({"name"})
    )
    assert policies.field_filter(user(user_id="a"), "own-a") == ALL_FIELDS
    assert policies.field_filter(user(user_id="b"), "own-a") == NO_ACCESS


@settings(max_examples=75, deadline=None)
@given(
    allowed=st.frozensets(st.sampled_from("abcdef"), min_size=1),
    value=st.dictionaries(st.sampled_from("abcdefgh"), st.integers()),
)
def test_fls_keeps_exactly_the_allowed_keys_with_their_values(
    allowed: frozenset[str], value: dict[str, int]
) -> None:
    principal = type("P", (), {"user_id": "u", "roles": ("USER",), "claims": {}})()
    policies = PolicySet([Policy("USER", "m", ("READ",), tuple(sorted(allowed)))])
    filtered = policies.filter_value(principal, "m", value)
    assert filtered == {key: value[key] for key in value if key in allowed}
