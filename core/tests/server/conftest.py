"""Shared fixtures for the server tests: JWT keys, token minting, principals."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SECRET = "test-secret-" + "0123456789abcdef" * 4
"""An HMAC secret long enough for `JWTVerifier` and for minting HS384/HS512 tokens."""

NOW_MS = 1_800_000_000_000
"""The clock reading the tests mint tokens around (epoch milliseconds)."""
NOW_S = NOW_MS // 1000

GOLDEN_FRAMES = Path(__file__).resolve().parents[3].parent / "shared" / "golden-frames"
"""Real TopGun v2 frames (shared/ beside the checkout, as on developer machines and CI)."""


def _golden_token(name: str) -> str:
    path = GOLDEN_FRAMES / name
    if not path.is_file():
        pytest.skip(f"golden frame corpus not found at {GOLDEN_FRAMES}")
    frame = msgspec.msgpack.decode(path.read_bytes())
    token = frame["token"]
    assert isinstance(token, str)
    return token


@dataclass(frozen=True)
class RSAKeys:
    """An RSA key pair as the server and a token issuer hold it."""

    private_pem: str
    public_pem: str
    certificate_pem: str


def _rsa_keys(bits: int = 2048) -> RSAKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "topgun test issuer")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return RSAKeys(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        public_pem=key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


@pytest.fixture(scope="session")
def rsa_keys() -> RSAKeys:
    """One 2048-bit key pair for the whole run (generating one takes tens of ms)."""
    return _rsa_keys()


@pytest.fixture(scope="session")
def other_rsa_keys() -> RSAKeys:
    """A second, unrelated key pair: tokens it signs must not verify."""
    return _rsa_keys()


@pytest.fixture
def golden_token() -> Callable[[str], str]:
    """`golden_token(file)`: the `token` of a captured `AUTH` frame (skips without the corpus)."""
    return _golden_token


def _present(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims without those given as `None` (`exp=None`: a token without `exp`)."""
    return {name: value for name, value in claims.items() if value is not None}


class Tokens:
    """Mints tokens around a fixed clock reading: `NOW_MS` epoch milliseconds."""

    secret = SECRET
    now_ms = NOW_MS
    now_s = NOW_S

    def __init__(self, keys: RSAKeys) -> None:
        self.keys = keys

    def clock(self) -> int:
        """The verifier clock the tokens are minted for."""
        return self.now_ms

    def hs256(self, secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
        """A token signed with `secret` (HS256 by default); `sub` alice, valid for an hour."""
        claims.setdefault("sub", "alice")
        claims.setdefault("exp", NOW_S + 3600)
        return jwt.encode(_present(claims), secret, algorithm=algorithm)

    def rs256(self, private_pem: str | None = None, **claims: Any) -> str:
        """A token signed with `keys` (or `private_pem`); `sub` alice, valid for an hour."""
        claims.setdefault("sub", "alice")
        claims.setdefault("exp", NOW_S + 3600)
        return jwt.encode(_present(claims), private_pem or self.keys.private_pem, algorithm="RS256")


@pytest.fixture
def tokens(rsa_keys: RSAKeys) -> Tokens:
    return Tokens(rsa_keys)


@dataclass(frozen=True)
class User:
    """A minimal `topgun.hooks.Principal` for permission tests."""

    user_id: str | None = "alice"
    roles: Sequence[str] = ("USER",)
    claims: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def user() -> Callable[..., User]:
    """`user(user_id="alice", roles=("USER",))`: a principal."""
    return User
