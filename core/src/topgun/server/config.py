"""The server's typed configuration, and its loader from TOML, environment and flags.

`ServerConfig` is a tree of frozen msgspec structs. `load_config` builds one from, in
increasing precedence: the defaults, a TOML document, the `TOPGUN_*` environment
variables, and explicit overrides (the `topgun serve` flags). It is pure: the caller
passes the TOML text, the environment mapping and the overrides, so tests never touch
`os.environ`; `read_config` is the thin edge that reads the file.

Each layer is validated on its own before the layers are merged, so an error names the
key and where it came from (`config.toml: [auth] auth_timeout_ms: expected int, got
'abc'`, `TOPGUN_PORT: ...`, `--port: ...`). Unknown TOML keys are errors (typo
protection); unknown `TOPGUN_*` variables are a `ConfigWarning`. Secrets are `Secret`
objects, whose repr never shows the value, and errors never print them.

Plugins add sections with the `register_config_sections` hook: section `name` is the TOML
table `[name]` and the variables `TOPGUN_<NAME>_<FIELD>`; `config.section(name)` returns
the validated struct.
"""

from __future__ import annotations

import difflib
import functools
import hmac
import json
import math
import re
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar, cast

import click
import msgspec
import msgspec.inspect as mi

from topgun.hooks import PluginError, TopgunPluginManager, collect_registrations
from topgun.query import IndexSpec
from topgun.server.permissions import Policy

ENV_PREFIX: Final = "TOPGUN_"
"""Every configuration variable starts with this."""

OTHER_VARIABLES: Final = frozenset(
    {
        "TOPGUN_CONFIG",
        "TOPGUN_LOAD_PLUGINS",
        "TOPGUN_DISABLE_PLUGINS",
        "TOPGUN_TRACE_PLUGINS",
        "TOPGUN_REQUIRE_SERVICES",
    }
)
"""`TOPGUN_*` variables that are not configuration keys (and so raise no warning)."""

KiB: Final = 1024
MiB: Final = 1024 * KiB


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and where it was set."""


class ConfigWarning(UserWarning):
    """A configuration input that is ignored, such as an unknown `TOPGUN_*` variable."""


class Secret:
    """A secret string (a JWT secret, a password) that never shows in reprs or logs.

    `reveal()` returns the value; equality compares in constant time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret holds a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-z-]+$")]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which storage backend holds the data, and what it is wrapped in."""

    backend: NonEmptyStr = "sqlite"
    """A backend registered through `register_storage` (built-ins: `sqlite`, `memory`)."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Passed to the backend's factory as they are."""
    wrappers: tuple[NonEmptyStr, ...] = ()
    """Storage wrappers (`register_storage_wrappers`) to apply, innermost first."""
    wrapper_options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Wrapper name -> its own options (`[storage.wrapper_options.<name>]`)."""
    codecs: tuple[NonEmptyStr, ...] = ()
    """Value codecs (`register_codecs`) applied to persisted bytes, in this order."""
    max_batch: PositiveInt = 4000
    """The storage writer commits at most this many changes per transaction (group commit:
    under load, larger transactions cost less per change; a `PERSISTED` write may wait for
    one to finish)."""
    max_queued: PositiveInt = 20_000
    """Writes wait (backpressure) while this many changes wait for a transaction."""


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How clients authenticate (PROTOCOL.md §4.1, §4.2)."""

    jwt_secret: Secret | None = None
    """HS256 shared secret (at least 32 bytes). PEM text here is treated as a public key."""
    jwt_public_key: str | None = None
    """RS256 public key or certificate: PEM text, or the path of a PEM file."""
    audience: str | None = None
    """When set, tokens must carry this `aud`."""
    issuer: str | None = None
    """When set, tokens must carry this `iss`."""
    auth_timeout_ms: PositiveInt = 10_000
    """An unauthenticated connection is closed (4001) this long after accept."""

    def __post_init__(self) -> None:
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ValueError("jwt_secret and jwt_public_key are both set; configure one of them")
        if self.jwt_secret is not None and not self.jwt_secret.reveal():
            raise ValueError("jwt_secret is empty")
        if self.jwt_public_key is not None and not self.jwt_public_key.strip():
            raise ValueError("jwt_public_key is empty")


class TLSConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Serve `wss://` and `https://`: both files or neither."""

    cert_file: Path | None = None
    """PEM certificate chain."""
    key_file: Path | None = None
    """PEM private key of the certificate."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together; set both or neither")

    @property
    def enabled(self) -> bool:
        """Whether TLS is configured."""
        return self.cert_file is not None


class CoalescingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Outbound coalescing into `BATCH` frames (PROTOCOL.md §1.3)."""

    max_delay_ms: NonNegativeInt = 2
    """Flush this long after the first queued message."""
    max_batch_size: PositiveInt = 500
    """Flush at this many queued messages."""
    max_batch_bytes: PositiveInt = 256 * KiB
    """Flush at this many queued bytes."""


class ConnectionLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Connection admission (PROTOCOL.md §4.1): over either limit, close 1013."""

    max_new_per_second: PositiveInt = 100
    """New connections accepted per second."""
    max_unauthenticated: PositiveInt = 1000
    """Connections open but not yet authenticated."""


class HLCConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The server's hybrid logical clock (PROTOCOL.md §2.1)."""

    max_drift_ms: NonNegativeInt = 60_000
    """A client timestamp further ahead of the server clock than this is drift."""
    strict: bool = False
    """Reject ops that drift (`"Clock drift"`) instead of logging a warning."""


class JournalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The event journal (PROTOCOL.md §6.12)."""

    enabled: bool = True
    """Off: JOURNAL_* requests are answered `ERROR 503`."""
    capacity: PositiveInt = 10_000
    """How many of the newest events are retained (in memory and in storage)."""


class HttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """HTTP sync and server-sent events (PROTOCOL.md §9)."""

    max_body_bytes: PositiveInt = 10 * MiB
    """Larger `POST /sync` bodies are refused with 413."""
    sse_heartbeat_ms: PositiveInt = 15_000
    """An idle `GET /events` stream gets a `: ping` comment this often."""
    sse_buffer_events: PositiveInt = 1024
    """Events a stream may have unsent; beyond, it gets `resync` (OVERFLOW) and closes."""
    ingest_flush_interval_ms: PositiveInt = 1000
    """How often per-key ingest sequences are persisted (coalesced; see docs/transports.md)."""


class ExpiryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TTL expiry and tombstone GC (PROTOCOL.md §6.11)."""

    gc_interval_ms: PositiveInt = 3_600_000
    """How often tombstone GC runs (tombstones older than `gc_age_ms` are pruned)."""


class ResolverBindingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A conflict resolver bound to a map by the configuration (`[[resolvers]]`, §8.2);
    clients cannot remove or replace it."""

    map_name: NonEmptyStr
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    """A registered resolver (a `builtin:*` one or a plugin's)."""
    priority: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    """Unset: the resolver's default priority."""
    key_pattern: str | None = None
    """A glob over keys (`*` any run, `?` one character); unset: every key."""


class ProcessorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Entry processors (PROTOCOL.md §8.1)."""

    timeout_ms: PositiveInt = 100
    """A processor running longer is abandoned with `"Processor timeout"`."""
    max_abandoned: PositiveInt = 4
    """At most this many timed-out processor threads may still be running; beyond that,
    processors are refused (`"Processor timeout"`) until one finishes."""
    max_per_second: PositiveInt = 100
    """Executions per connection per second; more are answered `"Rate limited"`."""


class MapOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the server keeps for one map: query indexes and full-text search
    (`[maps.<name>]`; see docs/queries.md and docs/search.md)."""

    indexes: tuple[str, ...] = ()
    """Query indexes: `"hash:status"`, `"sorted:score"`, `"inverted:title"`,
    `"compound:cat,score"` (`topgun.query.IndexSpec.parse`)."""
    search_fields: tuple[NonEmptyStr, ...] = ()
    """Fields indexed for full-text search (`SEARCH`, `SEARCH_SUB`); none: search is off."""
    search_boosts: dict[str, Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(
        default_factory=dict
    )
    """Per-field score multipliers applied to every search of the map."""
    search_provider: NonEmptyStr | None = None
    """One search provider (`register_search_providers`): shorthand for
    `search_providers = [name]`. Neither set: `bm25`."""
    search_providers: tuple[NonEmptyStr, ...] = ()
    """Several providers, each indexing the map; their ranked lists are fused by reciprocal
    rank fusion (k = 60) in `SEARCH` / `SEARCH_SUB` (docs/search.md#rank-fusion)."""
    search_weights: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=dict
    )
    """Per-provider RRF weights (default 1 each)."""

    def __post_init__(self) -> None:
        for spec in self.indexes:
            IndexSpec.parse(spec)  # ValueError -> a configuration error naming the key
        unknown = sorted(set(self.search_boosts) - set(self.search_fields))
        if unknown:
            raise ValueError(f"search_boosts names fields not in search_fields: {unknown}")
        if self.search_provider is not None and self.search_providers:
            raise ValueError("set search_provider or search_providers, not both")
        repeated = sorted({n for n in self.search_providers if self.search_providers.count(n) > 1})
        if repeated:
            raise ValueError(f"search_providers names a provider twice: {repeated}")
        unknown = sorted(set(self.search_weights) - set(self.providers))
        if unknown:
            raise ValueError(f"search_weights names providers not in search_providers: {unknown}")
        infinite = sorted(n for n, w in self.search_weights.items() if not math.isfinite(w))
        if infinite:
            raise ValueError(f"search_weights must be finite: {infinite}")

    @property
    def providers(self) -> tuple[str, ...]:
        """The map's search providers, in configuration order."""
        return self.search_providers or (self.search_provider or "bm25",)

    @property
    def provider_weights(self) -> tuple[float, ...]:
        """The RRF weight of each of `providers` (1 unless `search_weights` says)."""
        return tuple(self.search_weights.get(name, 1.0) for name in self.providers)


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything `topgun serve` and `topgun.server.Server` are configured with."""

    host: NonEmptyStr = "127.0.0.1"
    """Interface to listen on."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    """TCP port; 0 picks a free one."""
    data_dir: Path = Path("topgun-data")
    """Directory of the server's files (the SQLite database lives inside)."""
    node_id: NodeId | None = None
    """This server's HLC node id (`[0-9a-z-]+`); unset: the server picks one."""
    heartbeat_timeout_ms: PositiveInt = 20_000
    """An authenticated connection silent this long is closed (4002)."""
    max_frame_bytes: PositiveInt = 64 * MiB
    """Larger inbound frames close the connection (1009)."""
    max_outbound_bytes: PositiveInt = 16 * MiB
    """A connection whose unsent output exceeds this is closed as a slow consumer (4003)."""
    gc_age_ms: PositiveInt = 30 * 24 * 3600 * 1000
    """Tombstones older than this may be pruned; a client last synced longer ago than this
    must reset the map (`SYNC_RESET_REQUIRED` reason `GC_AGE`, PROTOCOL.md §6.7)."""
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    tls: TLSConfig = msgspec.field(default_factory=TLSConfig)
    coalescing: CoalescingConfig = msgspec.field(default_factory=CoalescingConfig)
    connections: ConnectionLimits = msgspec.field(default_factory=ConnectionLimits)
    hlc: HLCConfig = msgspec.field(default_factory=HLCConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    expiry: ExpiryConfig = msgspec.field(default_factory=ExpiryConfig)
    processors: ProcessorConfig = msgspec.field(default_factory=ProcessorConfig)
    resolvers: tuple[ResolverBindingConfig, ...] = ()
    """Conflict resolvers bound to maps by the server (`[[resolvers]]`)."""
    maps: dict[NonEmptyStr, MapOptions] = msgspec.field(default_factory=dict)
    """Per-map options by map name: indexes and full-text search."""
    adaptive_index_after: PositiveInt | None = None
    """Build an index on a field once queries filtered on it this many times without one."""
    policies: tuple[Policy, ...] = ()
    """Role policies (PROTOCOL.md §4.3); none: only ADMIN may do anything."""
    sections: dict[str, Any] = msgspec.field(default_factory=dict)
    """Plugin sections by name (filled by the loader; not a TOML key)."""

    def section(self, name: str) -> Any:
        """The validated struct of plugin section `name`."""
        try:
            return self.sections[name]
        except KeyError:
            known = ", ".join(sorted(self.sections)) or "none"
            raise KeyError(f"no configuration section {name!r} (registered: {known})") from None


# --- the shape of the configuration ------------------------------------------------------

_CORE_KEYS: Final = tuple(
    f.name for f in msgspec.structs.fields(ServerConfig) if f.name != "sections"
)
_SECTION_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_POLICY_ALIASES: Final = {"mapNamePattern": "map_name_pattern", "allowedFields": "allowed_fields"}


def _dec_hook(type_: type, obj: object) -> object:
    if type_ is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
        raise ValueError(f"Expected `str`, got `{type(obj).__name__}`")
    elif isinstance(type_, type) and issubclass(type_, Path):
        if isinstance(obj, Path):
            return obj
        if isinstance(obj, str):
            return Path(obj)
    raise ValueError(f"Expected `{type_.__name__}`, got `{type(obj).__name__}`")


def _enc_hook(obj: object) -> object:
    if isinstance(obj, Secret):
        return obj.reveal()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unwrap_optional(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [member for member in t.types if not isinstance(member, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return t


def _is_optional(t: mi.Type) -> bool:
    return isinstance(t, mi.UnionType) and any(isinstance(m, mi.NoneType) for m in t.types)


_SCALARS: Final = (
    mi.StrType,
    mi.IntType,
    mi.FloatType,
    mi.BoolType,
    mi.LiteralType,
    mi.CustomType,
)


class _Leaf(NamedTuple):
    """One environment variable: the key path it sets and how its text is parsed."""

    path: tuple[str, ...]
    shape: Literal["scalar", "bool", "list", "json"]
    """How the text is read: as it is, as a boolean word, comma-separated, or as JSON."""
    optional: bool
    secret: bool


def _leaf(path: tuple[str, ...], t: mi.Type) -> _Leaf:
    base = _unwrap_optional(t)
    secret = isinstance(base, mi.CustomType) and base.cls is Secret
    shape: Literal["scalar", "bool", "list", "json"]
    if isinstance(base, mi.BoolType):
        shape = "bool"
    elif isinstance(base, _SCALARS):
        shape = "scalar"
    elif isinstance(base, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType) and (
        isinstance(_unwrap_optional(base.item_type), _SCALARS)
    ):
        shape = "list"
    else:
        shape = "json"
    return _Leaf(path, shape, _is_optional(t), secret)


def _struct_fields(cls: type) -> tuple[mi.Field, ...]:
    info = mi.type_info(cls)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{cls!r} is not a msgspec.Struct")
    return info.fields


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


@functools.lru_cache(maxsize=64)
def _variables(sections: tuple[tuple[str, type], ...]) -> dict[str, _Leaf]:
    """Every configuration variable name and the leaf it sets."""
    found: dict[str, _Leaf] = {}

    def add(path: tuple[str, ...], t: mi.Type) -> None:
        name = _env_name(path)
        if name in found:
            raise ConfigError(
                f"the configuration keys {'.'.join(path)} and {'.'.join(found[name].path)} "
                f"both map to {name}"
            )
        if name in OTHER_VARIABLES:
            raise ConfigError(
                f"the configuration key {'.'.join(path)} maps to {name}, which topgun reads "
                "for another purpose"
            )
        found[name] = _leaf(path, t)

    def add_table(prefix: str, cls: type) -> None:
        for f in _struct_fields(cls):
            add((prefix, f.encode_name), f.type)

    for f in _struct_fields(ServerConfig):
        if f.name == "sections":
            continue
        if isinstance(f.type, mi.StructType):
            add_table(f.name, f.type.cls)
        else:
            add((f.name,), f.type)
    for name, cls in sections:
        add_table(name, cls)
    return found


def environment_variables(
    sections: Mapping[str, type] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Every `TOPGUN_*` configuration variable and the key path it sets."""
    return {name: leaf.path for name, leaf in _variables(_section_key(sections)).items()}


def _section_key(sections: Mapping[str, type] | None) -> tuple[tuple[str, type], ...]:
    return tuple(sorted((sections or {}).items()))


# --- layers --------------------------------------------------------------------------------


class _Layer(NamedTuple):
    """One source of settings: its data as nested dicts, and how its messages name keys."""

    source: str
    """What the layer is, for "set by" lists: `config.toml`, `environment`, ..."""
    data: dict[str, Any]
    describe: Callable[[tuple[str | int, ...]], str]
    """The key at a path as the user wrote it: `[auth] port`, `TOPGUN_PORT`, `--port`."""
    strict: bool
    """Whether values must already have their type (TOML) or may be text (environment)."""
    label: str = ""
    """What error messages start with, when the key name alone does not say it."""

    def error(self, path: tuple[str | int, ...], detail: str) -> ConfigError:
        where = self.describe(path)
        return ConfigError(": ".join(part for part in (self.label, where, detail) if part))


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_TABLES: Final = frozenset(
    f.name
    for f in msgspec.structs.fields(ServerConfig)
    if isinstance(f.default_factory, type) and issubclass(f.default_factory, msgspec.Struct)
)


def _toml_key(path: tuple[str | int, ...]) -> str:
    """A key as TOML shows it: `port`, `[auth] auth_timeout_ms`, `[[policies]] #2 role`."""
    if not path:
        return ""
    head, rest = path[0], path[1:]
    if head == "policies" and rest and isinstance(rest[0], int):
        where = f"[[policies]] #{rest[0] + 1}"
        return f"{where} {_dotted(rest[1:])}" if rest[1:] else where
    if head == "maps" and rest and isinstance(rest[0], str):
        where = f"[maps.{rest[0]}]"
        return f"{where} {_dotted(rest[1:])}" if rest[1:] else where
    if isinstance(head, str) and (head in _TABLES or head not in _CORE_KEYS):
        return f"[{head}] {_dotted(rest)}" if rest else f"[{head}]"
    return _dotted(path)


_ANY_KEY: Final = "[...]"
"""What msgspec's error path says for an entry of a dict (`$.maps[...].indexes`)."""


def _parse_path(text: str) -> tuple[str | int, ...]:
    """`$.auth.port`, `$.policies[1].actions[0]` -> ('auth', 'port'), ('policies', 1, ...)."""
    parts: list[str | int] = []
    for name, index, any_key in re.findall(
        r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])", text.removeprefix("$")
    ):
        parts.append(int(index) if index else any_key or name)
    return tuple(parts)


def _resolve_keys(
    data: Any, path: tuple[str | int, ...], root: type, strict: bool
) -> tuple[str | int, ...]:
    """Replace each `[...]` in `path` by the dict key whose entry fails to convert."""
    resolved: list[str | int] = []
    for part in path:
        if part == _ANY_KEY:
            found, table = _lookup(data, tuple(resolved))
            entry_type = _type_at(tuple(resolved), root)
            value_type = entry_type.value_type if isinstance(entry_type, mi.DictType) else None
            if found and isinstance(table, dict) and isinstance(value_type, mi.StructType):
                for key, entry in table.items():
                    try:
                        msgspec.convert(entry, value_type.cls, strict=strict, dec_hook=_dec_hook)
                    except msgspec.ValidationError:
                        part = key
                        break
        resolved.append(part)
    return tuple(resolved)


def _lookup(data: Any, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, data


def _type_at(path: tuple[str | int, ...], root: type) -> mi.Type | None:
    """The type found at `path` under struct `root` (optional unwrapped), if any."""
    t: mi.Type = mi.type_info(root)
    for part in path:
        t = _unwrap_optional(t)
        if isinstance(part, int) and isinstance(t, mi.ListType | mi.VarTupleType):
            t = t.item_type
        elif isinstance(part, str) and isinstance(t, mi.DictType):
            t = t.value_type
        elif isinstance(part, str) and isinstance(t, mi.StructType):
            match = [f for f in t.fields if f.encode_name == part]
            if not match:
                return None
            t = match[0].type
        else:
            return None
    return _unwrap_optional(t)


def _unknown_key_message(key: str, known: list[str]) -> str:
    guess = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else f" (valid keys: {', '.join(known)})"
    return f"unknown key {key!r}{hint}"


def _error_path(error: msgspec.ValidationError) -> tuple[str | int, ...]:
    _, _, at = str(error).rpartition(" - at `")
    return _parse_path(at.rstrip("`"))


def _validation_error(
    layer: _Layer,
    error: msgspec.ValidationError,
    root: type,
    prefix: tuple[str, ...],
    secret_paths: frozenset[tuple[str, ...]],
) -> ConfigError:
    """msgspec's error, told with the user's key names and the offending value."""
    message = str(error).rpartition(" - at `")[0] or str(error)
    path = _resolve_keys(_lookup(layer.data, prefix)[1], _error_path(error), root, layer.strict)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if unknown:
        found_type = _type_at(path, root)
        known = (
            [f.encode_name for f in found_type.fields]
            if isinstance(found_type, mi.StructType)
            else []
        )
        return layer.error(prefix + path, _unknown_key_message(unknown[1], known))
    if missing:
        return layer.error(prefix + path, f"missing required key {missing[1]!r}")
    found, value = _lookup(layer.data, prefix + path)
    shown = "'**********'" if tuple(map(str, prefix + path)) in secret_paths else repr(value)
    expected = _type_at(path, root)
    if message.startswith("Invalid enum value") and isinstance(expected, mi.LiteralType):
        choices = ", ".join(map(str, expected.values))
        return layer.error(prefix + path, f"expected one of {choices}, got {shown}")
    detail = message.replace("`", "")
    detail = detail[:1].lower() + detail[1:]
    if found and not isinstance(value, dict) and detail.startswith("expected"):
        detail = re.sub(r", got \w+$", "", detail) + f", got {shown}"
    return layer.error(prefix + path, detail)


def _secret_paths(sections: Mapping[str, type]) -> frozenset[tuple[str, ...]]:
    leaves = _variables(_section_key(sections)).values()
    return frozenset(leaf.path for leaf in leaves if leaf.secret)


def _convert(
    layer: _Layer,
    data: Any,
    cls: type,
    prefix: tuple[str, ...],
    secrets: frozenset[tuple[str, ...]],
) -> Any:
    try:
        return msgspec.convert(data, cls, strict=layer.strict, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _validation_error(layer, exc, cls, prefix, secrets) from None


def _normalize_policies(layer: _Layer) -> None:
    """Accept the TypeScript spellings `mapNamePattern` / `allowedFields` in policies."""
    policies = layer.data.get("policies")
    if not isinstance(policies, list):
        return
    for index, policy in enumerate(policies):
        if not isinstance(policy, dict):
            continue
        for alias, name in _POLICY_ALIASES.items():
            if alias in policy:
                if name in policy:
                    raise layer.error(("policies", index), f"both {alias} and {name} are set")
                policy[name] = policy.pop(alias)


def _check_layer(layer: _Layer, sections: Mapping[str, type]) -> None:
    """Validate one layer alone, so its errors name its own keys."""
    _normalize_policies(layer)
    secrets = _secret_paths(sections)
    core = {key: value for key, value in layer.data.items() if key not in sections}
    _convert(layer, core, ServerConfig, (), secrets)
    for name, cls in sections.items():
        table = layer.data.get(name)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise layer.error((name,), "expected a table")
        known = [f.encode_name for f in _struct_fields(cls)]
        for key in table:
            if key not in known:
                message = _unknown_key_message(key, known)
                raise layer.error((name, key), message)
        _convert(layer, table, cls, (name,), secrets)


def _toml_layer(text: str, source: str, sections: Mapping[str, type]) -> _Layer:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    known = [*_CORE_KEYS, *sections]
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {_unknown_key_message(key, known)}")
    return _Layer(source, data, _toml_key, strict=True, label=source)


_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def _env_layer(environ: Mapping[str, str], sections: Mapping[str, type]) -> _Layer:
    variables = _variables(_section_key(sections))
    data: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        leaf = variables.get(name)
        if leaf is None:
            guess = difflib.get_close_matches(name, list(variables), n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            warnings.warn(
                f"{name} is not a topgun setting{hint}; ignored", ConfigWarning, stacklevel=3
            )
            continue
        raw = environ[name]
        value: Any = raw
        if leaf.optional and not raw.strip():
            value = None
        elif leaf.shape == "bool":
            word = raw.strip().lower()
            value = True if word in _TRUE else False if word in _FALSE else raw
        elif leaf.shape == "list":
            value = [item.strip() for item in raw.split(",") if item.strip()]
        elif leaf.shape == "json":
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: expected JSON: {exc}") from None
        target = data
        for part in leaf.path[:-1]:
            target = target.setdefault(part, {})
        target[leaf.path[-1]] = value
        names[leaf.path] = name

    def describe(path: tuple[str | int, ...]) -> str:
        for length in range(len(path), 0, -1):
            head = tuple(str(p) for p in path[:length])
            if head in names:
                rest = path[length:]
                return f"{names[head]} {_dotted(rest)}" if rest else names[head]
        return _dotted(path)

    return _Layer("environment", data, describe, strict=False)


class CliFlag(NamedTuple):
    """A `topgun serve` flag and the configuration key it overrides."""

    flag: str
    key: str
    help: str
    type: Any = str


CLI_FLAGS: Final = (
    CliFlag("--host", "host", "Interface to listen on."),
    CliFlag("--port", "port", "TCP port (0: any free port).", int),
    CliFlag("--data-dir", "data_dir", "Directory of the server's files."),
    CliFlag("--node-id", "node_id", "This server's node id ([0-9a-z-]+)."),
    CliFlag("--storage", "storage.backend", "Storage backend (sqlite, memory, ...)."),
    CliFlag("--jwt-secret", "auth.jwt_secret", "HS256 secret (visible to `ps`: prefer the env)."),
    CliFlag("--jwt-public-key", "auth.jwt_public_key", "RS256 public key: PEM file path."),
    CliFlag("--tls-cert", "tls.cert_file", "TLS certificate chain (PEM file)."),
    CliFlag("--tls-key", "tls.key_file", "TLS private key (PEM file)."),
)
"""The configuration flags `config_options` adds to a command."""


def _override_layer(overrides: Mapping[str, Any], sections: Mapping[str, type]) -> _Layer:
    flags = {flag.key: flag.flag for flag in CLI_FLAGS}
    data: dict[str, Any] = {}
    for key, value in overrides.items():
        path = tuple(key.split("."))
        if path[0] not in _CORE_KEYS and path[0] not in sections:
            raise ConfigError(
                f"override {key!r}: {_unknown_key_message(path[0], [*_CORE_KEYS, *sections])}"
            )
        target = data
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value

    def describe(path: tuple[str | int, ...]) -> str:
        for length in range(len(path), 0, -1):
            head = ".".join(str(p) for p in path[:length])
            if head in overrides:
                rest = path[length:]
                name = flags.get(head, head)
                return f"{name} {_dotted(rest)}" if rest else name
        return _dotted(path)

    return _Layer("command line", data, describe, strict=False)


def _set_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every non-table value in `data`."""
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _set_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _merge(layers: list[_Layer]) -> dict[str, Any]:
    """Later layers win key by key inside tables; any other value is replaced whole."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def _origins(layers: list[_Layer], path: tuple[str | int, ...]) -> str:
    """Which layers set something at or under `path`, as `source (key)` phrases."""
    phrases = []
    for layer in layers:
        for set_path in _set_paths(layer.data):
            if set_path[: len(path)] == path or path[: len(set_path)] == set_path:
                phrases.append(f"{layer.describe(set_path)} ({layer.source})")
    return ", ".join(phrases)


def load_config(
    toml_text: str | None = None,
    *,
    toml_source: str = "config.toml",
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sections: Mapping[str, type] | None = None,
) -> ServerConfig:
    """Build the configuration: defaults < TOML < `TOPGUN_*` environment < overrides.

    `toml_text` is the TOML document (`toml_source` names it in errors); `environ` the
    environment (only `TOPGUN_*` names are read; `None`: none); `overrides` maps dotted
    keys (`"auth.jwt_secret"`) to values, as the `topgun serve` flags give them;
    `sections` the plugin sections (`config_sections(pm)`). Raises `ConfigError`.
    """
    sections = dict(sections or {})
    for name in sections:
        if name in _CORE_KEYS or name == "sections" or not _SECTION_NAME.match(name):
            raise ConfigError(f"invalid plugin configuration section name {name!r}")
    layers: list[_Layer] = []
    if toml_text is not None:
        layers.append(_toml_layer(toml_text, toml_source, sections))
    if environ:
        layers.append(_env_layer(environ, sections))
    if overrides:
        layers.append(_override_layer(overrides, sections))
    for layer in layers:
        _check_layer(layer, sections)

    merged = _merge(layers)
    combined = _Layer("configuration", merged, _toml_key, strict=False, label="configuration")
    secrets = _secret_paths(sections)

    def build(data: Any, cls: type, prefix: tuple[str, ...]) -> Any:
        try:
            return msgspec.convert(data, cls, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            error = _validation_error(combined, exc, cls, prefix, secrets)
            origins = _origins(layers, prefix + _error_path(exc))
            raise ConfigError(f"{error} (set by {origins})" if origins else str(error)) from None

    config: ServerConfig = build(
        {key: value for key, value in merged.items() if key not in sections}, ServerConfig, ()
    )
    built = {name: build(merged.get(name, {}), cls, (name,)) for name, cls in sections.items()}
    return msgspec.structs.replace(config, sections=built)


def read_config(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    sections: Mapping[str, type] | None = None,
) -> ServerConfig:
    """`load_config` with the TOML read from `config_file`, else from `$TOPGUN_CONFIG`."""
    origin = "--config"
    if config_file is None and environ.get("TOPGUN_CONFIG"):
        config_file, origin = Path(environ["TOPGUN_CONFIG"]), "TOPGUN_CONFIG"
    text = None
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"{origin}: cannot read {config_file}: {reason}") from None
    return load_config(
        text,
        toml_source=str(config_file),
        environ=environ,
        overrides=overrides,
        sections=sections,
    )


def validate_config(config: ServerConfig) -> ServerConfig:
    """Check a `ServerConfig` built in code against every constraint the loader applies.

    Struct constructors check combinations (`__post_init__`) but not value ranges or
    patterns; `topgun.server.Server` calls this on the configuration it is given.
    """
    core = msgspec.to_builtins(config, enc_hook=_enc_hook)
    core.pop("sections")
    layer = _Layer("configuration", core, _toml_key, strict=True, label="ServerConfig")
    _convert(layer, core, ServerConfig, (), _secret_paths({}))
    return config


def config_sections(pm: TopgunPluginManager) -> dict[str, type]:
    """The plugin sections of `pm`'s `register_config_sections` implementations.

    A section that is not a `msgspec.Struct` subclass, or whose name is not a lower-case
    identifier or is a built-in key, is a `PluginError` naming the plugin.
    """
    found: dict[str, type] = {}
    for name, registration in collect_registrations(pm.hook.register_config_sections).items():
        cls = registration.obj
        if not _SECTION_NAME.match(name) or name in _CORE_KEYS or name == "sections":
            raise PluginError(
                f"plugin {registration.plugin} registered the configuration section {name!r}: "
                f"names are lower-case identifiers other than {', '.join(_CORE_KEYS)}"
            )
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            raise PluginError(
                f"plugin {registration.plugin} registered the configuration section {name!r} "
                f"as {cls!r}; sections are msgspec.Struct subclasses"
            )
        found[name] = cls
    return found


F = TypeVar("F", bound=Callable[..., Any])


def config_options(command: F) -> F:
    """Add `--config` and the `CLI_FLAGS` to a click command.

    The command receives `config_file` (a `Path` or `None`) and `config_overrides` (the
    dotted keys of the flags given, for `read_config(overrides=...)`) instead.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        config_overrides = {}
        for flag in CLI_FLAGS:
            value = kwargs.pop(_dest(flag))
            if value is not None:
                config_overrides[flag.key] = value
        return command(*args, config_overrides=config_overrides, **kwargs)

    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="TOML configuration file (default: $TOPGUN_CONFIG, else none).",
        ),
        *(
            click.option(flag.flag, _dest(flag), type=flag.type, default=None, help=flag.help)
            for flag in CLI_FLAGS
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return cast(F, decorated)


def _dest(flag: CliFlag) -> str:
    return "config_" + flag.key.replace(".", "_")
