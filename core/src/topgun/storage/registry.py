"""Building the configured storage from what plugins registered.

The configuration names a backend (`register_storage`), the codecs applied to persisted
values in order (`register_codecs`), and the wrappers around the backend, innermost first
(`register_storage_wrappers`). A name nobody registered is a `StorageConfigError` that
lists the names that are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

from topgun.hooks import Registration, collect_registrations
from topgun.storage.codecs import CodecPipeline
from topgun.storage.contract import BackendConfig, StorageBackend
from topgun.storage.errors import StorageConfigError


def _chosen(kind: str, name: str, registered: Mapping[str, Registration]) -> Registration:
    found = registered.get(name)
    if found is None:
        known = ", ".join(sorted(registered)) or "none"
        raise StorageConfigError(f"unknown {kind} {name!r} (registered by plugins: {known})")
    return found


def _checked_backend(result: object, what: str) -> StorageBackend:
    if not isinstance(result, StorageBackend):
        raise StorageConfigError(
            f"{what} returned {type(result).__name__}, which is not a storage backend "
            "(see topgun.storage.StorageBackend)"
        )
    return result


def codec_pipeline(pm: pluggy.PluginManager, names: Sequence[str]) -> CodecPipeline:
    """The pipeline of the codecs `names` (in encoding order), as plugins registered them."""
    if len(set(names)) != len(names):
        raise StorageConfigError(f"the codec list {list(names)} names a codec more than once")
    registered = collect_registrations(pm.hook.register_codecs)
    return CodecPipeline((name, _chosen("codec", name, registered).obj) for name in names)


def open_storage(
    pm: pluggy.PluginManager,
    *,
    data_dir: Path | str,
    backend: str = "sqlite",
    codecs: Sequence[str] = (),
    wrappers: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> StorageBackend:
    """Build the configured backend, with its codecs, wrapped in `wrappers` (innermost
    first). The result is not initialized yet: call `await backend.initialize()`."""
    registered = collect_registrations(pm.hook.register_storage)
    chosen = _chosen("storage backend", backend, registered)
    config = BackendConfig(Path(data_dir), codec_pipeline(pm, codecs), dict(options or {}))
    result = _checked_backend(
        chosen.obj(config), f"storage backend {backend!r} (plugin {chosen.plugin})"
    )
    if wrappers:
        wrapping = collect_registrations(pm.hook.register_storage_wrappers)
        for name in wrappers:
            wrapper = _chosen("storage wrapper", name, wrapping)
            result = _checked_backend(
                wrapper.obj(result, config), f"storage wrapper {name!r} (plugin {wrapper.plugin})"
            )
    return result
