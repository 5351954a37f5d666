"""Security on the hot paths: permission checks, FLS, and JWT verification.

    python3 dev.py run python bench/security.py [--ops N] [--repeat R]

Every read and write path asks `is_allowed` and (for reads) `field_filter`, once per
recipient, so these must cost microseconds. Measured: `PolicySet.check` and
`PolicySet.filter_value` (the cached policy decisions), `Security.is_allowed` and
`Security.field_filter` (the `check_permission` hook call around them, built-in plugin
only), and `JWTVerifier.verify` for HS256 and RS256 (once per connection). 100 policies,
1,000 users with user-id patterns, 50 maps; each figure is the best of R runs.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from topgun.hooks import make_plugin_manager
from topgun.server import JWTVerifier, Policy, PolicySet, Security

NOW_MS = 1_800_000_000_000
SECRET = "bench-secret-" + "0123456789abcdef" * 3


@dataclass(frozen=True)
class User:
    user_id: str
    roles: tuple[str, ...]
    claims: dict[str, Any] = field(default_factory=dict)


def policies() -> list[Policy]:
    found = [Policy(f"ROLE{i}", f"map{i}-*", ("READ", "PUT")) for i in range(90)]
    found += [
        Policy("USER", "todos-{userId}*", ("ALL",)),
        Policy("USER", "profiles", ("READ",), ("name", "avatar")),
        Policy("USER", "topic:chat-*", ("READ", "PUT")),
        Policy("AUDITOR", "*", ("READ",), ("owner",)),
    ]
    return found


def best(repeat: int, ops: int, run: Callable[[], object]) -> float:
    """Operations per second, best of `repeat` runs of `run` (which does `ops` ops)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return ops / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ops, repeat = args.ops, args.repeat

    users = [User(f"user-{i}", ("USER", f"ROLE{i % 90}")) for i in range(1000)]
    maps = [f"todos-user-{i}" for i in range(25)] + [f"map{i}-x" for i in range(25)]
    requests = [(users[i % 1000], maps[i % 50]) for i in range(ops)]
    value = {"name": "Ada", "avatar": "a.png", "email": "ada@example.com", "owner": "x"}
    policy_set = PolicySet(policies())
    security = Security(make_plugin_manager(entry_points=(), environ={}), policies=policy_set)

    assert policy_set.check(users[3], "todos-user-3", "PUT")
    assert not policy_set.check(users[3], "todos-user-4", "PUT")
    assert security.is_allowed(users[3], "todos-user-3", "REMOVE")
    assert policy_set.filter_value(users[0], "profiles", value) == {
        "name": "Ada",
        "avatar": "a.png",
    }

    def check() -> None:
        for user, name in requests:
            policy_set.check(user, name, "READ")

    def filter_value() -> None:
        for user, _ in requests:
            policy_set.filter_value(user, "profiles", value)

    def is_allowed() -> None:
        for user, name in requests:
            security.is_allowed(user, name, "READ")

    def field_filter() -> None:
        for user, _ in requests:
            security.field_filter(user, "profiles").apply(value)

    print(f"python {platform.python_version()}, {ops:,} ops, best of {repeat}")
    print(f"{'PolicySet.check':<40}{best(repeat, ops, check):>14,.0f} checks/s")
    print(f"{'PolicySet.filter_value':<40}{best(repeat, ops, filter_value):>14,.0f} values/s")
    rate = best(repeat, ops, is_allowed)
    print(f"{'Security.is_allowed (hook + policies)':<40}{rate:>14,.0f} checks/s")
    print(
        f"{'Security.field_filter + apply':<40}{best(repeat, ops, field_filter):>14,.0f} values/s"
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": "ada", "roles": ["USER"], "exp": NOW_MS // 1000 + 3600}
    for name, verifier, token in (
        ("HS256", JWTVerifier(SECRET, clock=lambda: NOW_MS), jwt.encode(claims, SECRET)),
        (
            "RS256",
            JWTVerifier(public_pem, clock=lambda: NOW_MS),
            jwt.encode(claims, private_pem, algorithm="RS256"),
        ),
    ):
        assert verifier.verify(token).user_id == "ada"
        count = max(1, ops // 20)
        rate = best(
            repeat, count, lambda v=verifier, t=token, n=count: [v.verify(t) for _ in range(n)]
        )
        print(f"{'JWTVerifier.verify ' + name:<40}{rate:>14,.0f} tokens/s")


if __name__ == "__main__":
    main()
