"""JWT verification (PROTOCOL.md §4.2, checklist P-2, P-3, P-4) and `TokenPrincipal`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from topgun.server import AuthConfig, AuthError, JWTVerifier, KeyConfigError, Secret, TokenPrincipal
from topgun.server.auth import wall_clock_ms

GOLDEN_SECRET = "oracle-secret-0123456789abcdef0123456789abcdef"
GOLDEN_IAT_MS = 1_795_657_132_000
GOLDEN_EXP_MS = 1_795_660_732_000


def unsigned_token(claims: dict[str, Any], alg: str = "none") -> str:
    """A token with header `alg` and an empty signature, as an attacker would write it."""

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."


def confused_token(claims: dict[str, Any], public_pem: str) -> str:
    """An HS256 token MACed with a public key's PEM text: the key-confusion attack.

    PyJWT refuses to mint one, so it is assembled by hand.
    """
    header, payload, _ = unsigned_token(claims, alg="HS256").split(".")
    mac = hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def refused(verifier: JWTVerifier, token: object) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.reason


# --- the golden tokens of the reference server --------------------------------------------


def test_golden_token_is_valid_before_its_expiry(golden_token: Any) -> None:
    token = golden_token("0002-c2s-AUTH.msgpack")
    verifier = JWTVerifier(GOLDEN_SECRET, clock=lambda: GOLDEN_IAT_MS + 60_000)
    principal = verifier.verify(token)
    assert principal.user_id == "oracle-user"
    assert principal.roles == ("ADMIN",)
    assert principal.claims["iat"] == GOLDEN_IAT_MS // 1000
    assert principal.claims["exp"] == GOLDEN_EXP_MS // 1000


def test_golden_token_is_expired_by_the_wall_clock(golden_token: Any) -> None:
    token = golden_token("0002-c2s-AUTH.msgpack")
    assert time.time() * 1000 > GOLDEN_EXP_MS  # captured with exp = iat + 1 h, long ago
    assert refused(JWTVerifier(GOLDEN_SECRET), token) == "jwt expired"
    assert refused(JWTVerifier(GOLDEN_SECRET, clock=wall_clock_ms), token) == "jwt expired"


def test_golden_bad_token_has_an_invalid_signature(golden_token: Any) -> None:
    token = golden_token("0079-c2s-AUTH.msgpack")
    verifier = JWTVerifier(GOLDEN_SECRET, clock=lambda: GOLDEN_IAT_MS)
    assert refused(verifier, token) == "invalid signature"


# --- P-2: HS256 ----------------------------------------------------------------------------


def test_valid_hs256_token_yields_its_principal(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    principal = verifier.verify(tokens.hs256(sub="bob", roles=["USER", "EDITOR"], team="x"))
    assert principal == TokenPrincipal(
        "bob",
        ("USER", "EDITOR"),
        {"sub": "bob", "roles": ["USER", "EDITOR"], "team": "x", "exp": tokens.now_s + 3600},
    )
    assert verifier.algorithm == "HS256"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"secret": "another-secret-0123456789abcdef0123456789"}, "invalid signature"),
        ({"exp": 1_800_000_000}, "jwt expired"),  # exactly now: expired from its second on
        ({"exp": 1_799_999_000}, "jwt expired"),
        ({"nbf": 1_800_000_001}, "jwt not active"),
        ({"exp": "tomorrow"}, "invalid exp value"),
        ({"nbf": True}, "invalid nbf value"),
        ({"algorithm": "HS512"}, "invalid algorithm"),
        ({"algorithm": "HS384"}, "invalid algorithm"),
    ],
)
def test_invalid_expired_or_wrongly_signed_hs256_tokens_are_refused(
    tokens: Any, change: dict[str, Any], reason: str
) -> None:
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    assert refused(verifier, tokens.hs256(**change)) == reason


def test_exp_and_nbf_are_judged_by_the_injected_clock(tokens: Any) -> None:
    token = tokens.hs256(nbf=tokens.now_s, exp=tokens.now_s + 10)
    now = [tokens.now_ms - 1]
    verifier = JWTVerifier(tokens.secret, clock=lambda: now[0])
    assert refused(verifier, token) == "jwt not active"
    now[0] = tokens.now_ms
    assert verifier.verify(token).user_id == "alice"
    now[0] = tokens.now_ms + 9_999
    assert verifier.verify(token).user_id == "alice"
    now[0] = tokens.now_ms + 10_000
    assert refused(verifier, token) == "jwt expired"


def test_a_token_without_exp_does_not_expire(tokens: Any) -> None:
    token = tokens.hs256(exp=None)
    verifier = JWTVerifier(tokens.secret, clock=lambda: 10**15)
    assert "exp" not in verifier.verify(token).claims


def test_tampered_payload_breaks_the_signature(tokens: Any) -> None:
    header, _, signature = tokens.hs256(roles=["USER"]).split(".")
    forged = unsigned_token({"sub": "alice", "roles": ["ADMIN"]}).split(".")[1]
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    assert refused(verifier, f"{header}.{forged}.{signature}") == "invalid signature"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "jwt must be provided"),
        (None, "jwt must be provided"),
        (42, "jwt must be provided"),
        ("not-a-jwt", "jwt malformed"),
        ("a.b.c", "jwt malformed"),
        ("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "invalid signature"),  # checked first
    ],
)
def test_malformed_tokens_are_refused_with_a_reason(
    tokens: Any, token: object, reason: str
) -> None:
    assert refused(JWTVerifier(tokens.secret, clock=tokens.clock), token) == reason


def test_a_signed_payload_that_is_not_a_json_object_is_malformed(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    for payload in (b"not json", b"[1, 2]"):
        token = jwt.api_jws.encode(payload, tokens.secret, algorithm="HS256")
        assert refused(verifier, token) == "jwt malformed"


def test_none_algorithm_is_always_refused(tokens: Any) -> None:
    token = unsigned_token({"sub": "mallory", "roles": ["ADMIN"], "exp": tokens.now_s + 60})
    assert refused(JWTVerifier(tokens.secret, clock=tokens.clock), token) == "invalid algorithm"
    for alg in ("None", "NONE", ""):
        token = unsigned_token({"sub": "mallory"}, alg=alg)
        assert refused(JWTVerifier(tokens.secret), token) == "invalid algorithm"


def test_an_hs256_verifier_refuses_rs256_tokens(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    assert refused(verifier, tokens.rs256()) == "invalid algorithm"


# --- P-3: RS256 with a PEM key ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["public_pem", "certificate_pem"])
def test_pem_key_or_certificate_accepts_rs256(tokens: Any, kind: str) -> None:
    verifier = JWTVerifier(getattr(tokens.keys, kind), clock=tokens.clock)
    assert verifier.algorithm == "RS256"
    assert verifier.verify(tokens.rs256(roles=["ADMIN"])).roles == ("ADMIN",)


def test_pem_key_refuses_hs256_none_and_foreign_rs256(tokens: Any, other_rsa_keys: Any) -> None:
    verifier = JWTVerifier(tokens.keys.public_pem, clock=tokens.clock)
    # An HS256 token MACed with the public key text (the classic key-confusion attack).
    confused = confused_token({"sub": "mallory", "roles": ["ADMIN"]}, tokens.keys.public_pem)
    assert refused(verifier, confused) == "invalid algorithm"
    assert refused(verifier, tokens.hs256()) == "invalid algorithm"
    assert refused(verifier, unsigned_token({"sub": "mallory"})) == "invalid algorithm"
    foreign = tokens.rs256(private_pem=other_rsa_keys.private_pem)
    assert refused(verifier, foreign) == "invalid signature"
    assert refused(verifier, tokens.rs256(exp=tokens.now_s)) == "jwt expired"


def test_pem_key_as_bytes_is_accepted(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.keys.public_pem.encode(), clock=tokens.clock)
    assert verifier.verify(tokens.rs256()).user_id == "alice"


# --- P-4: the principal --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "user_id", "roles"),
    [
        ({"sub": "alice"}, "alice", ("USER",)),
        ({"sub": "alice", "roles": None}, "alice", ("USER",)),
        ({"sub": "alice", "roles": []}, "alice", ()),
        ({"sub": "alice", "userId": "u-1", "roles": ["ADMIN"]}, "u-1", ("ADMIN",)),
        ({"userId": 42}, "42", ("USER",)),
        ({}, None, ("USER",)),
    ],
)
def test_principal_defaults_roles_to_user_and_user_id_to_sub(
    claims: dict[str, Any], user_id: str | None, roles: tuple[str, ...]
) -> None:
    principal = TokenPrincipal.from_claims(claims)
    assert (principal.user_id, principal.roles) == (user_id, roles)
    assert principal.claims == claims


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"roles": "ADMIN"}, "invalid roles claim: expected a list of strings"),
        ({"roles": ["ADMIN", 1]}, "invalid roles claim: expected a list of strings"),
        ({"roles": {"ADMIN": True}}, "invalid roles claim: expected a list of strings"),
        ({"userId": ["a"]}, "invalid userId claim: expected a string"),
        ({"sub": True}, "invalid userId claim: expected a string"),
    ],
)
def test_malformed_roles_or_user_id_fail_authentication(
    tokens: Any, claims: dict[str, Any], reason: str
) -> None:
    verifier = JWTVerifier(tokens.secret, clock=tokens.clock)
    assert refused(verifier, tokens.hs256(**claims)) == reason


def test_principal_claims_are_read_only_and_kept_out_of_its_repr() -> None:
    principal = TokenPrincipal.from_claims({"sub": "alice", "email": "alice@example.com"})
    with pytest.raises(TypeError):
        principal.claims["roles"] = ["ADMIN"]  # type: ignore[index]
    assert "alice@example.com" not in repr(principal)


# --- audience and issuer -------------------------------------------------------------------


def test_audience_and_issuer_are_checked_only_when_configured(tokens: Any) -> None:
    plain = JWTVerifier(tokens.secret, clock=tokens.clock)
    assert plain.verify(tokens.hs256(aud="elsewhere", iss="someone")).user_id == "alice"

    strict = JWTVerifier(tokens.secret, audience="topgun", issuer="idp", clock=tokens.clock)
    assert strict.verify(tokens.hs256(aud="topgun", iss="idp")).user_id == "alice"
    assert strict.verify(tokens.hs256(aud=["other", "topgun"], iss="idp")).user_id == "alice"
    wrong_aud = "jwt audience invalid. expected: topgun"
    assert refused(strict, tokens.hs256(aud="other", iss="idp")) == wrong_aud
    assert refused(strict, tokens.hs256(iss="idp")) == wrong_aud
    assert refused(strict, tokens.hs256(aud="topgun")) == "jwt issuer invalid. expected: idp"
    assert refused(strict, tokens.hs256(aud="topgun", iss="evil")) == (
        "jwt issuer invalid. expected: idp"
    )


def test_several_audiences_accept_any_of_them(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.secret, audience=["a", "b"], clock=tokens.clock)
    assert verifier.verify(tokens.hs256(aud="b")).user_id == "alice"
    assert refused(verifier, tokens.hs256(aud="c")) == "jwt audience invalid. expected: a or b"


# --- keys ----------------------------------------------------------------------------------


def _pem(key: Any, private: bool = False) -> str:
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_unusable_keys_are_refused_with_a_reason(rsa_keys: Any) -> None:
    with pytest.raises(KeyConfigError, match="is empty"):
        JWTVerifier("")
    with pytest.raises(KeyConfigError, match=r"12 bytes long; HS256 needs at least 32"):
        JWTVerifier("short-secret")
    with pytest.raises(KeyConfigError, match="private key; configure the public key"):
        JWTVerifier(rsa_keys.private_pem)
    with pytest.raises(KeyConfigError, match="not a readable PEM public key"):
        JWTVerifier("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyConfigError, match="RS256 needs an RSA public key"):
        JWTVerifier(_pem(ec_key))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyConfigError, match="1024 bits; at least 2048"):
        JWTVerifier(_pem(small))


def test_secret_never_shows_in_the_verifier_repr(tokens: Any) -> None:
    verifier = JWTVerifier(tokens.secret, audience="topgun")
    assert tokens.secret not in repr(verifier)
    assert "HS256" in repr(verifier)


def test_from_config_builds_the_configured_verifier(tokens: Any) -> None:
    assert JWTVerifier.from_config(AuthConfig()) is None

    by_secret = JWTVerifier.from_config(
        AuthConfig(jwt_secret=Secret(tokens.secret), audience="topgun"), clock=tokens.clock
    )
    assert by_secret is not None
    assert by_secret.algorithm == "HS256"
    assert by_secret.verify(tokens.hs256(aud="topgun")).user_id == "alice"

    by_pem = JWTVerifier.from_config(
        AuthConfig(jwt_public_key=tokens.keys.public_pem), clock=tokens.clock
    )
    assert by_pem is not None
    assert by_pem.verify(tokens.rs256()).user_id == "alice"

    files = {Path("/etc/topgun/jwt.pem"): tokens.keys.certificate_pem}
    by_file = JWTVerifier.from_config(
        AuthConfig(jwt_public_key="/etc/topgun/jwt.pem"),
        clock=tokens.clock,
        read_text=files.__getitem__,
    )
    assert by_file is not None
    assert by_file.verify(tokens.rs256()).user_id == "alice"


def test_from_config_reports_an_unreadable_or_empty_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(KeyConfigError, match=r"cannot read the JWT public key file .*missing\.pem"):
        JWTVerifier.from_config(AuthConfig(jwt_public_key=str(missing)))
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(KeyConfigError, match=r"empty\.pem holds no PEM"):
        JWTVerifier.from_config(AuthConfig(jwt_public_key=str(empty)))


def test_a_pem_in_jwt_secret_selects_rs256_as_the_spec_says(tokens: Any) -> None:
    verifier = JWTVerifier.from_config(
        AuthConfig(jwt_secret=Secret(tokens.keys.public_pem)), clock=tokens.clock
    )
    assert verifier is not None
    assert verifier.algorithm == "RS256"
    confused = confused_token({"sub": "mallory"}, tokens.keys.public_pem)
    assert refused(verifier, confused) == "invalid algorithm"
