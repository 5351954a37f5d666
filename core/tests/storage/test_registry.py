"""open_storage: the configured backend, codecs and wrappers, chosen by name from plugins."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import (
    ContextualCodec,
    TopgunPluginManager,
    collect_registrations,
    hookimpl,
    make_plugin_manager,
)
from topgun.server.config import ServerConfig, StorageConfig
from topgun.storage import (
    Change,
    CodecContext,
    MapInfo,
    MapSnapshot,
    MemoryBackend,
    PutRecord,
    SQLiteBackend,
    StorageBackend,
    StorageConfigError,
    codec_pipeline,
    open_configured_storage,
    open_storage,
)


@pytest.fixture
def pm() -> TopgunPluginManager:
    return make_plugin_manager(entry_points=(), environ={})


class Counting:
    """A wrapper counting the changes that pass through it."""

    def __init__(self, inner: StorageBackend, label: str, log: list[str]) -> None:
        self.inner = inner
        self.label = label
        self.log = log

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def list_maps(self) -> list[MapInfo]:
        return await self.inner.list_maps()

    async def load_map(self, name: str) -> MapSnapshot | None:
        return await self.inner.load_map(name)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return await self.inner.load_keys(name, keys)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        return await self.inner.load_meta(namespace)

    async def store_batch(self, changes: Sequence[Change]) -> None:
        self.log.append(self.label)
        await self.inner.store_batch(changes)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.inner.delete(name, keys)

    async def close(self) -> None:
        await self.inner.close()


class Reverse:
    def encode(self, data: bytes) -> bytes:
        return data[::-1]

    def decode(self, data: bytes) -> bytes:
        return data[::-1]


class Plugin:
    def __init__(self) -> None:
        self.log: list[str] = []

    @hookimpl
    def register_storage_wrappers(self, register: Any) -> None:
        register("outer", lambda backend, config: Counting(backend, "outer", self.log))
        register("inner", lambda backend, config: Counting(backend, "inner", self.log))
        register("broken", lambda backend, config: "not a backend")

    @hookimpl
    def register_codecs(self, register: Any) -> None:
        register("reverse", Reverse())
        register("upper", SimpleNamespace(encode=bytes.upper))  # no decode: not a codec


def test_the_built_in_backends_are_plugins(pm: TopgunPluginManager) -> None:
    registered = collect_registrations(pm.hook.register_storage)
    assert {name: r.plugin for name, r in registered.items()} == {
        "memory": "topgun.storage.memory",
        "sqlite": "topgun.storage.sqlite",
    }


@pytest.mark.anyio
async def test_sqlite_is_the_default_and_lives_in_the_data_directory(
    pm: TopgunPluginManager, tmp_path: Path
) -> None:
    backend = open_storage(pm, data_dir=tmp_path)
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == tmp_path / "topgun.db"
    await backend.initialize()
    await backend.close()
    assert backend.path.is_file()


def test_memory_is_chosen_by_name(pm: TopgunPluginManager, tmp_path: Path) -> None:
    assert isinstance(open_storage(pm, data_dir=tmp_path, backend="memory"), MemoryBackend)


def test_options_reach_the_backend(pm: TopgunPluginManager, tmp_path: Path) -> None:
    backend = open_storage(pm, data_dir=tmp_path, options={"file": "other.db"})
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == tmp_path / "other.db"


def test_unknown_names_are_errors_listing_the_known_ones(
    pm: TopgunPluginManager, tmp_path: Path
) -> None:
    with pytest.raises(
        StorageConfigError, match=r"unknown storage backend 'postgres' .*memory, sqlite"
    ):
        open_storage(pm, data_dir=tmp_path, backend="postgres")
    with pytest.raises(StorageConfigError, match=r"unknown codec 'zstd'.*none"):
        open_storage(pm, data_dir=tmp_path, codecs=["zstd"])
    with pytest.raises(StorageConfigError, match="unknown storage wrapper 'tiered'"):
        open_storage(pm, data_dir=tmp_path, wrappers=["tiered"])


@pytest.mark.anyio
async def test_wrappers_apply_innermost_first(pm: TopgunPluginManager, tmp_path: Path) -> None:
    plugin = Plugin()
    pm.register(plugin, name="wrappers")
    backend = open_storage(pm, data_dir=tmp_path, backend="memory", wrappers=["inner", "outer"])
    assert isinstance(backend, Counting)
    assert backend.label == "outer"
    assert isinstance(backend.inner, Counting)
    assert backend.inner.label == "inner"
    await backend.initialize()
    await backend.store_batch([PutRecord("m", "k", LWWRecord(1, Timestamp(1, 0, "n")))])
    assert plugin.log == ["outer", "inner"]
    assert await backend.list_maps() == [MapInfo("m", "lww")]


def test_a_wrapper_or_factory_returning_no_backend_is_named(
    pm: TopgunPluginManager, tmp_path: Path
) -> None:
    pm.register(Plugin(), name="wrappers")
    with pytest.raises(
        StorageConfigError, match="wrapper 'broken' \\(plugin wrappers\\) returned str"
    ):
        open_storage(pm, data_dir=tmp_path, wrappers=["broken"])

    class DictStorage:
        @hookimpl
        def register_storage(self, register: Any) -> None:
            register("dict", lambda config: {})

    pm.register(DictStorage(), name="dict-plugin")
    with pytest.raises(
        StorageConfigError, match="backend 'dict' \\(plugin dict-plugin\\) returned dict"
    ):
        open_storage(pm, data_dir=tmp_path, backend="dict")


def test_codecs_are_resolved_in_the_configured_order(pm: TopgunPluginManager) -> None:
    pm.register(Plugin(), name="codecs")
    pipeline = codec_pipeline(pm, ["reverse"])
    assert pipeline.names == ("reverse",)
    with pytest.raises(StorageConfigError, match="more than once"):
        codec_pipeline(pm, ["reverse", "reverse"])
    with pytest.raises(StorageConfigError, match="codec 'upper'"):
        codec_pipeline(pm, ["upper"])


@pytest.mark.anyio
async def test_configured_codecs_reach_the_backend(pm: TopgunPluginManager, tmp_path: Path) -> None:
    pm.register(Plugin(), name="codecs")
    backend = open_storage(pm, data_dir=tmp_path, codecs=["reverse"])
    assert isinstance(backend, SQLiteBackend)
    assert backend.codecs.names == ("reverse",)


def test_codec_plugins_get_the_server_configuration_and_may_be_contextual(
    pm: TopgunPluginManager, tmp_path: Path
) -> None:
    """`register_codecs(register, config)`: a codec is built from the configuration it is
    given (a key, a level), and may be a `ContextualCodec`."""
    seen: list[Any] = []

    class Salted:
        def __init__(self, salt: bytes) -> None:
            self.salt = salt

        def encode_for(self, data: bytes, context: CodecContext) -> bytes:
            return self.salt + context.key.encode() + b"|" + data

        def decode_for(self, data: bytes, context: CodecContext) -> bytes:
            prefix = self.salt + context.key.encode() + b"|"
            if not data.startswith(prefix):
                raise ValueError("salted for another key")
            return data[len(prefix) :]

    class Configured:
        @hookimpl
        def register_codecs(self, register: Any, config: Any) -> None:
            seen.append(config)
            register("salted", Salted(str(getattr(config, "node_id", None)).encode()))

    pm.register(Configured(), name="configured")
    assert isinstance(Salted(b""), ContextualCodec)
    config = ServerConfig(
        data_dir=tmp_path,
        node_id="n-7",
        storage=StorageConfig(backend="memory", codecs=("salted",)),
    )
    backend = open_configured_storage(pm, config)
    assert isinstance(backend, MemoryBackend)
    assert seen == [config]
    here = CodecContext("lww", "m", "k")
    assert backend.codecs.encode(b"v", here) == b"n-7k|v"
    assert codec_pipeline(pm, ["salted"]).encode(b"v", here) == b"Nonek|v"  # no configuration
    assert seen[-1] is None
