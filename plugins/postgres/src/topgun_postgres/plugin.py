"""The `postgres` storage backend and its `[postgres]` configuration section, as a plugin
(entry point `postgres` in group `topgun`)."""

from __future__ import annotations

import msgspec

from topgun.hooks import Register, hookimpl
from topgun.storage import BackendConfig, BackendFactory, StorageBackend, StorageConfigError
from topgun_postgres.backend import PostgresBackend, PostgresConfig


def open_postgres(config: BackendConfig) -> StorageBackend:
    """The `postgres` backend factory: settings from the `[postgres]` section."""
    if config.options:
        raise StorageConfigError(
            "storage backend 'postgres' takes no [storage.options] "
            f"(got {', '.join(sorted(config.options))}); configure it in the [postgres] section"
        )
    return PostgresBackend(config.section_as("postgres", PostgresConfig), codecs=config.codecs)


@hookimpl
def register_storage(register: Register[BackendFactory]) -> None:
    """Register the `postgres` backend."""
    register("postgres", open_postgres)


@hookimpl
def register_config_sections(register: Register[type[msgspec.Struct]]) -> None:
    """The `[postgres]` section (`TOPGUN_POSTGRES_DSN`, ...)."""
    register("postgres", PostgresConfig)
