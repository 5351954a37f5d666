"""`topgun vector ...`: `rebuild` re-embeds every configured (map, field) from the stored maps
and writes fresh snapshots, with a progress bar. Run it while the server is stopped (a
running server writes its own snapshots at shutdown)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from topgun.hooks import TopgunPluginManager
from topgun.server.config import ServerConfig, config_options, config_sections, read_config
from topgun.server.live import live_items
from topgun.storage import open_storage
from topgun_vector.config import SECTION, VectorConfig

__all__ = ["rebuild_indexes", "vector"]


@click.group()
def vector() -> None:
    """Vector search: index maintenance."""


async def rebuild_indexes(config: ServerConfig, pm: TopgunPluginManager, console: Console) -> int:
    """Rebuild every vector index of `config` from its stored maps; returns the vectors."""
    from topgun.server import Server
    from topgun_vector.embedders import make_embedder
    from topgun_vector.service import VectorService

    section = config.sections.get(SECTION)
    if not isinstance(section, VectorConfig) or not section.maps:
        raise click.ClickException("no [vector.maps] are configured: nothing to rebuild")
    server = Server(config, pm=pm)
    storage = config.storage
    backend = open_storage(
        pm,
        data_dir=config.data_dir,
        backend=storage.backend,
        codecs=storage.codecs,
        wrappers=storage.wrappers,
        options=storage.options,
    )
    await backend.initialize()
    try:
        await server.maps.load(backend)
    finally:
        await backend.close()
    with console.status(f"loading embedder {section.embedder!r}"):
        embedder = make_embedder(pm, section.embedder, section.model)
    service = VectorService(server, section, embedder)
    total = sum(len(live_items(server.maps, m)) * len(f) for m, f in service.indexes.items())
    for fields in service.indexes.values():
        for target in fields.values():
            target.path.unlink(missing_ok=True)
    columns = (
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("rebuild", total=total)
        await service.load(lambda done: progress.advance(task, done))
        progress.update(task, completed=total)
    await anyio.to_thread.run_sync(service.save)
    count = 0
    for map_name, fields in service.indexes.items():
        for name, target in fields.items():
            console.print(f"{map_name}.{name}: {len(target.index)} vectors -> {target.path}")
            count += len(target.index)
    return count


@vector.command()
@config_options
@click.pass_obj
def rebuild(pm: TopgunPluginManager, config_file: Path | None, config_overrides: Any) -> None:
    """Re-embed every configured (map, field) and write fresh index snapshots."""
    config = read_config(
        config_file, environ=os.environ, overrides=config_overrides, sections=config_sections(pm)
    )
    console = Console()
    count = anyio.run(rebuild_indexes, config, pm, console)
    console.print(f"rebuilt {count} vectors")
