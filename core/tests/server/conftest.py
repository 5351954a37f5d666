"""Shared fixtures for the server tests: JWT keys, token minting, principals, and a running
`Server` driven through in-memory connections (`harness`, `running`, `server_config`)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import jwt
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import Auth, AuthAck, AuthRequired
from topgun.server import (
    AuthConfig,
    InMemoryClient,
    Secret,
    Server,
    ServerConfig,
    StorageConfig,
)
from topgun.server.config import ProcessorConfig
from topgun.storage import BackendConfig, MemoryBackend, MemoryStore, StorageBackend

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


# --- a running Server, driven through in-memory connections ------------------------------


class ManualClock:
    """An injectable wall clock (`clock() -> int` ms) that moves only when a test says so."""

    def __init__(self, now: int = NOW_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


class Harness:
    """A started `Server` plus what tests need to talk to it.

    `connect()` opens an in-memory connection; `login(roles=...)` opens one and
    authenticates it (AUTH_REQUIRED and AUTH_ACK consumed). Every connection opened here is
    disconnected when the harness stops.
    """

    def __init__(
        self, server: Server, task_group: anyio.abc.TaskGroup, clock: ManualClock, tokens: Tokens
    ) -> None:
        self.server = server
        self.task_group = task_group
        self.clock = clock
        self.tokens = tokens
        self.stack = contextlib.AsyncExitStack()

    async def connect(self) -> InMemoryClient:
        return await self.stack.enter_async_context(
            InMemoryClient.connect(self.server, self.task_group)
        )

    def token(self, roles: Sequence[str] | None = ("ADMIN",), **claims: Any) -> str:
        if roles is not None:
            claims["roles"] = list(roles)
        return self.tokens.hs256(**claims)

    async def login(
        self, roles: Sequence[str] | None = ("ADMIN",), **claims: Any
    ) -> InMemoryClient:
        client = await self.connect()
        assert isinstance(await client.receive(), AuthRequired)
        await client.send(Auth(token=self.token(roles, **claims)))
        assert isinstance(await client.receive(), AuthAck)
        return client


def server_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    """A test configuration: memory storage, the test secret, any `ServerConfig` field."""
    overrides.setdefault("storage", StorageConfig(backend="memory"))
    overrides.setdefault("auth", AuthConfig(jwt_secret=Secret(SECRET)))
    overrides.setdefault("node_id", "server-1")
    # Processors run on threads: on a loaded machine the 100 ms default times them out.
    overrides.setdefault("processors", ProcessorConfig(timeout_ms=5000))
    return ServerConfig(data_dir=tmp_path / "data", **overrides)


@contextlib.asynccontextmanager
async def running(
    config: Any, clock: ManualClock, tokens: Tokens, pm: Any = None
) -> AsyncIterator[Harness]:
    """Start a `Server` on `config` with `clock`; stop it (gracefully) on leaving."""
    if pm is None:
        pm = make_plugin_manager(entry_points=(), environ={})
    async with (
        anyio.create_task_group() as task_group,
        Server(config, pm=pm, clock=clock) as server,
    ):
        harness = Harness(server, task_group, clock, tokens)
        async with harness.stack:
            yield harness


@pytest.fixture
async def harness(tmp_path: Path, clock: ManualClock, tokens: Tokens) -> AsyncIterator[Harness]:
    """A running server with the default test configuration (memory storage)."""
    async with running(server_config(tmp_path), clock, tokens) as started:
        yield started


@pytest.fixture
def start(
    tmp_path: Path, clock: ManualClock, tokens: Tokens
) -> Callable[..., contextlib.AbstractAsyncContextManager[Harness]]:
    """`async with start(pm=None, **config) as h:` a server whose configuration overrides
    the test defaults (`server_config`) with `config`."""

    def starter(
        pm: Any = None, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[Harness]:
        return running(server_config(tmp_path, **overrides), clock, tokens, pm)

    return starter


class GatedStorage:
    """A storage plugin whose backend `gated` is the memory backend with a gate: while
    `hold()` is in force, transactions wait (so PERSISTED cannot be reached) until
    `release()`. `store` is the memory backend's committed state."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.gate: anyio.Event | None = None
        self.batches: list[list[Any]] = []

    def hold(self) -> None:
        self.gate = anyio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()

    @hookimpl
    def register_storage(self, register: Any) -> None:
        register("gated", self._open)

    def _open(self, config: BackendConfig) -> StorageBackend:
        return _GatedBackend(MemoryBackend(codecs=config.codecs, store=self.store), self)


class _GatedBackend:
    def __init__(self, inner: MemoryBackend, plugin: GatedStorage) -> None:
        self.inner = inner
        self.plugin = plugin

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def list_maps(self) -> Any:
        return await self.inner.list_maps()

    async def load_map(self, name: str) -> Any:
        return await self.inner.load_map(name)

    async def load_keys(self, name: str, keys: Any) -> Any:
        return await self.inner.load_keys(name, keys)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        return await self.inner.load_meta(namespace)

    async def store_batch(self, changes: Any) -> None:
        if self.plugin.gate is not None:
            await self.plugin.gate.wait()
        self.plugin.batches.append(list(changes))
        await self.inner.store_batch(changes)

    async def delete(self, name: str, keys: Any) -> None:
        await self.inner.delete(name, keys)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def gated() -> GatedStorage:
    return GatedStorage()


@pytest.fixture
def gated_start(
    start: Callable[..., contextlib.AbstractAsyncContextManager[Harness]], gated: GatedStorage
) -> Callable[..., contextlib.AbstractAsyncContextManager[Harness]]:
    """`start`, with the `gated` storage plugin as the backend."""

    @contextlib.asynccontextmanager
    async def starter(**overrides: Any) -> AsyncIterator[Harness]:
        pm = make_plugin_manager(entry_points=(), environ={})
        pm.register(gated)
        async with start(pm=pm, storage=StorageConfig(backend="gated"), **overrides) as h:
            try:
                yield h
            finally:
                gated.release()  # even when the test failed, so storage can drain

    return starter


class StalledTransport:
    """A client that stops reading: `send` blocks forever once `accept` frames went out."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.close_event = anyio.Event()
        self.is_open = True
        self.remote_address = None

    async def send(self, frame: bytes) -> None:
        if len(self.sent) >= self.accept:
            await anyio.sleep_forever()
        self.sent.append(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.is_open = False
        self.close_event.set()


@pytest.fixture
def stalled_transport() -> type[StalledTransport]:
    """The `StalledTransport` class, for slow-consumer tests."""
    return StalledTransport
