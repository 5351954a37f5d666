"""Building the configured storage from what plugins registered.

The configuration names a backend (`register_storage`), the codecs applied to persisted
values in order (`register_codecs`), and the wrappers around the backend, innermost first
(`register_storage_wrappers`). A name nobody registered is a `StorageConfigError` that
lists the names that are known.
"""

from __future__ import annotations

import dataclasses
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


def codec_pipeline(
    pm: pluggy.PluginManager, names: Sequence[str], *, config: Any = None
) -> CodecPipeline:
    """The pipeline of the codecs `names` (in encoding order), as plugins registered them
    when given `config` (the server configuration, or `None`)."""
    if len(set(names)) != len(names):
        raise StorageConfigError(f"the codec list {list(names)} names a codec more than once")
    registered = collect_registrations(pm.hook.register_codecs, config=config)
    return CodecPipeline((name, _chosen("codec", name, registered).obj) for name in names)


def open_storage(
    pm: pluggy.PluginManager,
    *,
    data_dir: Path | str,
    backend: str = "sqlite",
    codecs: Sequence[str] = (),
    wrappers: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    wrapper_options: Mapping[str, Mapping[str, Any]] | None = None,
    config: Any = None,
    sections: Mapping[str, Any] | None = None,
) -> StorageBackend:
    """Build the configured backend, with its codecs, wrapped in `wrappers` (innermost
    first). `config` is the server configuration codec plugins read their sections from
    (`None`: none); `sections` are its plugin sections, where plugin backends and wrappers
    find their settings. The result is not initialized yet: call
    `await backend.initialize()`.

    Each wrapper gets the backend's config with `options` set to its own entry of
    `wrapper_options` (empty when it has none); options for a wrapper that is not listed
    are a `StorageConfigError`."""
    unused = sorted(set(wrapper_options or {}) - set(wrappers))
    if unused:
        raise StorageConfigError(
            f"options given for storage wrapper(s) {unused} that are not in the wrapper list"
        )
    registered = collect_registrations(pm.hook.register_storage)
    chosen = _chosen("storage backend", backend, registered)
    pipeline = codec_pipeline(pm, codecs, config=config)
    backend_config = BackendConfig(
        Path(data_dir), pipeline, dict(options or {}), dict(sections or {})
    )
    result = _checked_backend(
        chosen.obj(backend_config), f"storage backend {backend!r} (plugin {chosen.plugin})"
    )
    if wrappers:
        wrapping = collect_registrations(pm.hook.register_storage_wrappers)
        for name in wrappers:
            wrapper = _chosen("storage wrapper", name, wrapping)
            own = dataclasses.replace(
                backend_config, options=dict((wrapper_options or {}).get(name, {}))
            )
            result = _checked_backend(
                wrapper.obj(result, own),
                f"storage wrapper {name!r} (plugin {wrapper.plugin})",
            )
    return result


def open_configured_storage(pm: pluggy.PluginManager, config: Any) -> StorageBackend:
    """`open_storage` as a server configuration (`topgun.server.ServerConfig`) says: its
    data directory, `[storage]` table, and plugin sections (for the codecs, the backend and
    the wrappers)."""
    storage = config.storage
    return open_storage(
        pm,
        data_dir=config.data_dir,
        backend=storage.backend,
        codecs=storage.codecs,
        wrappers=storage.wrappers,
        options=storage.options,
        wrapper_options=storage.wrapper_options,
        config=config,
        sections=config.sections,
    )
