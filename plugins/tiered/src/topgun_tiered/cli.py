"""`topgun tier status|archive|restore`: the tiers of the configured storage, and moving
maps between storage and the archive on demand.

They open the storage the server configuration describes (`--config`, the `TOPGUN_*`
variables, the flags), which must list `tiered` as its outermost wrapper. Run `archive`
and `restore` while no server uses the storage (SQLite refuses a second user anyway): a
running server restores an archived map by itself when a request names it.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from topgun.hooks import PluginError, TopgunPluginManager
from topgun.server.config import ConfigError, config_options, config_sections, read_config
from topgun.storage import StorageError, open_storage
from topgun_tiered.options import parse_age
from topgun_tiered.wrapper import TieredBackend

T = TypeVar("T")

_ERRORS = (ConfigError, StorageError, PluginError)


def _open(pm: TopgunPluginManager, config_file: Path | None, overrides: dict[str, Any]) -> Any:
    config = read_config(
        config_file, environ=os.environ, overrides=overrides, sections=config_sections(pm)
    )
    storage = config.storage
    if not storage.wrappers or storage.wrappers[-1] != "tiered":
        raise click.ClickException(
            'the storage configuration does not use tiered storage: list "tiered" last in '
            f"[storage] wrappers (it lists {list(storage.wrappers)})"
        )
    return open_storage(
        pm,
        data_dir=config.data_dir,
        backend=storage.backend,
        codecs=storage.codecs,
        wrappers=storage.wrappers,
        options=storage.options,
        wrapper_options=storage.wrapper_options,
    )


def _run(
    pm: TopgunPluginManager,
    config_file: Path | None,
    overrides: dict[str, Any],
    work: Callable[[TieredBackend], Awaitable[T]],
) -> T:
    """Open the tiered storage, run `work` on it, close it; operator errors in one line."""

    async def main() -> T:
        backend = _open(pm, config_file, overrides)
        assert isinstance(backend, TieredBackend)
        await backend.initialize()
        try:
            return await work(backend)
        finally:
            await backend.close()

    try:
        return anyio.run(main)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(millis: int) -> str:
    if millis <= 0:
        return "-"
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@click.group()
def tier() -> None:
    """Tiered storage: memory budget, storage, archive."""


@tier.command()
@config_options
@click.pass_obj
def status(
    pm: TopgunPluginManager, config_file: Path | None, config_overrides: dict[str, Any]
) -> None:
    """Bytes and records per tier, and every map's tier."""

    async def work(backend: TieredBackend) -> None:
        maps = await backend.tier_status()
        budget = backend.memory_budget
        console = Console()
        table = Table(title="maps")
        for column in ("map", "kind", "tier", "records", "bytes", "newest write (UTC)"):
            table.add_column(column, justify="right" if column in ("records", "bytes") else "left")
        for found in maps:
            table.add_row(
                found.name,
                found.kind,
                found.tier,
                f"{found.records:,}",
                _size(found.bytes),
                _when(found.newest_millis),
            )
        console.print(table)
        stored = [m for m in maps if m.tier == "storage"]
        archived = [m for m in maps if m.tier == "archive"]
        console.print(
            f"memory budget: {_size(budget.budget_bytes)} (evict at "
            f"{budget.high_water:.0%} down to {budget.low_water:.0%})"
        )
        console.print(f"storage: {_size(sum(m.bytes for m in stored))} in {len(stored)} map(s)")
        console.print(
            f"archive: {_size(sum(m.bytes for m in archived))} compressed in "
            f"{len(archived)} map(s) at {backend.archive.store.description}"
        )

    _run(pm, config_file, config_overrides, work)


@tier.command()
@config_options
@click.option(
    "--older-than",
    default=None,
    help="Archive the maps untouched for this long (e.g. 30d, 12h; default: archive_after).",
)
@click.option("--map", "names", multiple=True, help="Archive this map (repeatable).")
@click.pass_obj
def archive(
    pm: TopgunPluginManager,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    older_than: str | None,
    names: tuple[str, ...],
) -> None:
    """Move idle maps (or the named ones) from storage into the archive."""
    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None

    async def work(backend: TieredBackend) -> None:
        chosen = list(names) if names else await backend.idle_maps(age)
        console = Console()
        if not chosen:
            console.print("nothing to archive")
            return
        sizes = {s.name: s.records for s in await backend.tier_status() if s.tier == "storage"}
        with _progress(console) as progress:
            for name in chosen:
                task = progress.add_task(f"archive {name}", total=sizes.get(name, 0))
                info = await backend.archive_map(name, functools.partial(progress.advance, task))
                progress.update(task, completed=info.records)
        console.print(f"archived {len(chosen)} map(s) to {backend.archive.store.description}")

    _run(pm, config_file, config_overrides, work)


@tier.command()
@config_options
@click.option("--map", "names", multiple=True, help="Restore this map (repeatable).")
@click.option("--all", "restore_all", is_flag=True, help="Restore every archived map.")
@click.pass_obj
def restore(
    pm: TopgunPluginManager,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    names: tuple[str, ...],
    restore_all: bool,
) -> None:
    """Bring archived maps back into storage."""
    if bool(names) == restore_all:
        raise click.UsageError("name the maps to restore with --map, or give --all")

    async def work(backend: TieredBackend) -> None:
        archived = backend.archive.manifest.maps
        chosen = sorted(archived) if restore_all else list(names)
        unknown = [name for name in chosen if name not in archived]
        if unknown:
            raise click.ClickException(f"not archived: {', '.join(map(repr, unknown))}")
        console = Console()
        with _progress(console) as progress:
            for name in chosen:
                task = progress.add_task(f"restore {name}", total=archived[name].records)
                await backend.restore(name, functools.partial(progress.advance, task))
        console.print(f"restored {len(chosen)} map(s)")

    _run(pm, config_file, config_overrides, work)
