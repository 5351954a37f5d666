"""JWT verification and the principal it yields (PROTOCOL.md §4.2).

`JWTVerifier` checks a token's signature with the one algorithm its key allows (a PEM
public key or certificate: RS256 only; anything else is a shared secret: HS256 only; `none`
never), then `exp`, `nbf` and, when configured, `aud` and `iss` against an injected clock,
so simulations control time. A failure raises `AuthError` whose `reason` is the
human-readable text `AUTH_FAIL.error` carries (the reference server's wording: `"jwt
expired"`, `"invalid signature"`, ...).
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

if TYPE_CHECKING:
    from topgun.server.config import AuthConfig

PEM_MARKER: Final = "-----BEGIN"
"""A configured key containing this is a PEM public key or certificate (RS256)."""

MIN_SECRET_BYTES: Final = 32
"""Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key of at least 256 bits."""

MIN_RSA_BITS: Final = 2048
"""Smallest RSA modulus accepted for RS256 (NIST SP 800-131A)."""

DEFAULT_ROLES: Final = ("USER",)
"""The roles of a principal whose token carries none (PROTOCOL.md §4.2)."""


def wall_clock_ms() -> int:
    """Epoch milliseconds from the system clock: the default clock outside simulations."""
    return time.time_ns() // 1_000_000


class AuthError(Exception):
    """A token was refused. `reason` is what `AUTH_FAIL.error` tells the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyConfigError(ValueError):
    """The configured JWT key cannot be used (too short, not RSA, unreadable PEM, ...)."""


@dataclass(frozen=True)
class TokenPrincipal:
    """An authenticated principal: satisfies `topgun.hooks.Principal`.

    Build one with `from_claims`, which applies PROTOCOL.md §4.2: `roles` defaults to
    `["USER"]` and must be a list of strings; `user_id` is the `userId` claim, or `sub`.
    """

    user_id: str | None
    roles: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> TokenPrincipal:
        """The principal of a verified token's claims; `AuthError` if they break §4.2."""
        roles = claims.get("roles")
        if roles is None:
            roles = DEFAULT_ROLES
        elif not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("invalid roles claim: expected a list of strings")
        user_id = claims.get("userId")
        if user_id is None:
            user_id = claims.get("sub")
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if user_id is not None and not isinstance(user_id, str):
            raise AuthError("invalid userId claim: expected a string")
        return cls(user_id, tuple(roles), types.MappingProxyType(dict(claims)))


def _load_rsa_public_key(pem: str) -> rsa.RSAPublicKey:
    """The RSA public key of a PEM public key or X.509 certificate."""
    data = pem.encode()
    try:
        if "-----BEGIN CERTIFICATE-----" in pem:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        elif "PRIVATE KEY-----" in pem:
            raise KeyConfigError(
                "the JWT key is a private key; configure the public key (or a certificate): "
                "the server only verifies tokens"
            )
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        if isinstance(exc, KeyConfigError):
            raise
        raise KeyConfigError(f"the JWT key is not a readable PEM public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyConfigError(
            f"the JWT key is a {type(key).__name__.lstrip('_')}; RS256 needs an RSA public key"
        )
    if key.key_size < MIN_RSA_BITS:
        raise KeyConfigError(
            f"the JWT RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
        )
    return key


def _number_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(f"invalid {name} value")
    return float(value)


class JWTVerifier:
    """Verifies JWTs with one key, PROTOCOL.md §4.2; returns a `TokenPrincipal`.

    `key` containing `-----BEGIN` is a PEM public key or certificate and admits RS256
    tokens only; any other key is an HS256 shared secret (at least 32 bytes). `audience`
    and `issuer` are checked only when given. `clock()` returns epoch milliseconds; a
    token is expired from its `exp` second on and not active before its `nbf` second.
    """

    def __init__(
        self,
        key: str | bytes,
        *,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        text = key.decode() if isinstance(key, bytes) else key
        if not isinstance(text, str) or not text:
            raise KeyConfigError("the JWT key is empty")
        self._key: rsa.RSAPublicKey | bytes
        if PEM_MARKER in text:
            self.algorithm = "RS256"
            self._key = _load_rsa_public_key(text)
        else:
            self.algorithm = "HS256"
            self._key = text.encode()
            if len(self._key) < MIN_SECRET_BYTES:
                raise KeyConfigError(
                    f"the JWT secret is {len(self._key)} bytes long; HS256 needs at least "
                    f"{MIN_SECRET_BYTES} (RFC 7518 §3.2)"
                )
        self.audiences: frozenset[str] | None = (
            None
            if audience is None
            else frozenset([audience] if isinstance(audience, str) else audience)
        )
        self.issuer = issuer
        self.clock = clock

    def __repr__(self) -> str:
        return f"JWTVerifier({self.algorithm}, audience={self.audiences!r}, issuer={self.issuer!r})"

    @classmethod
    def from_config(
        cls,
        auth: AuthConfig,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        read_text: Callable[[Path], str] = Path.read_text,
    ) -> JWTVerifier | None:
        """The verifier `auth` configures, or `None` when it configures no key.

        `jwt_public_key` is PEM text, or else the path of a PEM file, read with
        `read_text` (injected so tests need no files).
        """
        if auth.jwt_secret is not None:
            key = auth.jwt_secret.reveal()
        elif auth.jwt_public_key is not None:
            key = auth.jwt_public_key
            if PEM_MARKER not in key:
                try:
                    key = read_text(Path(key))
                except OSError as exc:
                    raise KeyConfigError(
                        f"cannot read the JWT public key file {key}: {exc.strerror or exc}"
                    ) from exc
                if PEM_MARKER not in key:
                    raise KeyConfigError(
                        f"the JWT public key file {auth.jwt_public_key} holds no PEM"
                    )
        else:
            return None
        return cls(key, audience=auth.audience, issuer=auth.issuer, clock=clock)

    def verify(self, token: object) -> TokenPrincipal:
        """The principal `token` authenticates; `AuthError` with the reason otherwise."""
        if not isinstance(token, str) or not token:
            raise AuthError("jwt must be provided")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise AuthError("invalid algorithm") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid signature") from None
        except jwt.InvalidTokenError:
            raise AuthError("jwt malformed") from None
        self._check_claims(claims)
        return TokenPrincipal.from_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        now = self.clock() / 1000
        exp = _number_claim(claims, "exp")
        if exp is not None and now >= exp:
            raise AuthError("jwt expired")
        nbf = _number_claim(claims, "nbf")
        if nbf is not None and now < nbf:
            raise AuthError("jwt not active")
        if self.audiences is not None:
            aud = claims.get("aud")
            given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not self.audiences.intersection(a for a in given if isinstance(a, str)):
                expected = " or ".join(sorted(self.audiences))
                raise AuthError(f"jwt audience invalid. expected: {expected}")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise AuthError(f"jwt issuer invalid. expected: {self.issuer}")
