"""The `topgun-vector` plugin (entry point `vector` in group `topgun`): the `[vector]`
section, the embedders, the vector service's life cycle, the vector-field write check and
the `topgun vector` commands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from topgun.hooks import OpContext, Register, Rejected, hookimpl
from topgun.protocol import VectorSearch, VectorSearchSub, VectorSearchUnsub
from topgun_vector.cli import vector
from topgun_vector.config import SECTION, VectorConfig
from topgun_vector.embedders import EmbedderFactory, HashEmbedder, SentenceTransformerEmbedder
from topgun_vector.handlers import vector_search, vector_search_sub, vector_search_unsub
from topgun_vector.service import VectorService, vector_error


@hookimpl
def register_config_sections(register: Register[type[Any]]) -> None:
    register(SECTION, VectorConfig)


def _hash(model: str | None) -> HashEmbedder:
    """`hash` embedder; `model` may give the dimensions (default 64)."""
    if model is None:
        return HashEmbedder()
    if not model.isdigit():
        raise ValueError(f"the hash embedder's model is its dimensions, not {model!r}")
    return HashEmbedder(int(model))


def _sentence_transformers(model: str | None) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(model)


@hookimpl
def register_embedders(register: Register[EmbedderFactory]) -> None:
    register("sentence-transformers", _sentence_transformers)
    register("hash", _hash)


def vector_config(server: Any) -> VectorConfig | None:
    """The server's `[vector]` section, or None when it has none or names no map."""
    found = server.config.sections.get(SECTION)
    return found if isinstance(found, VectorConfig) and found.maps else None


@hookimpl
async def on_startup(server: Any) -> None:
    """Load the embedder and every index (snapshot + catch-up), then serve vector search."""
    from topgun_vector.embedders import make_embedder

    config = vector_config(server)
    if config is None:
        return
    embedder = make_embedder(server.pm, config.embedder, config.model)
    service = VectorService(server, config, embedder)
    await service.load()
    server.vector = service
    server.router.watchers.append(service.changed)
    server.handlers[VectorSearch] = vector_search
    server.handlers[VectorSearchSub] = vector_search_sub
    server.handlers[VectorSearchUnsub] = vector_search_unsub
    server.start_soon(service.run, name="topgun-vector")


@hookimpl
async def on_shutdown(server: Any) -> None:
    """Write the snapshot of every index changed since the last one."""
    import anyio

    service = getattr(server, "vector", None)
    if isinstance(service, VectorService):
        # Shielded: the server's task group, which this runs inside, is already cancelled.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(service.save)


@hookimpl
def on_disconnect(connection: Any) -> None:
    service = getattr(getattr(connection, "server", None), "vector", None)
    if isinstance(service, VectorService):
        service.drop(connection)


@hookimpl
def before_op(op: Any, context: OpContext) -> None:
    """Reject a write whose client-supplied vector field is not a usable vector, so that
    nothing unusable is stored silently."""
    connection = context.connection
    service = getattr(getattr(connection, "server", None), "vector", None)
    if not isinstance(service, VectorService):
        return
    options = service.map_config(op.map_name)
    if options is None or not options.vector_fields:
        return
    record = op.record if op.record is not None else op.or_record
    value = getattr(record, "value", None)
    if not isinstance(value, Mapping):
        return
    for name in options.vector_fields:
        if name not in value or value[name] is None:
            continue
        found = value[name]
        if not isinstance(found, bytes | bytearray):
            raise Rejected(
                f"vector field {name!r} must be little-endian float32 bytes, "
                f"got {type(found).__name__}"
            )
        problem = vector_error(found, service.embedder.dimensions)
        if problem is not None:
            raise Rejected(f"vector field {name!r} {problem}")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(vector)
