"""`topgun tier status|archive|restore`: the tiers of the configured storage, and moving
maps and keys between storage and the archive on demand.

They open the storage the server configuration describes (`--config`, the `TOPGUN_*`
variables, the flags), which must list `tiered` as its outermost wrapper. Run them while
no server uses the storage (SQLite refuses a second user anyway): a running server
restores what a request needs by itself, and archives when asked with
`topgun tier archive --url` (or every `archive_interval`).
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

from topgun.admin_jobs import follow_job
from topgun.hooks import PluginError, TopgunPluginManager
from topgun.server.config import ConfigError, config_options, config_sections, read_config
from topgun.storage import StorageError, open_configured_storage
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
    return open_configured_storage(pm, config)


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
        numbers = ("records", "bytes", "archived keys")
        for column in ("map", "kind", "tier", *numbers, "newest write (UTC)"):
            table.add_column(column, justify="right" if column in numbers else "left")
        for found in maps:
            table.add_row(
                found.name,
                found.kind,
                found.tier,
                f"{found.records:,}",
                _size(found.bytes),
                f"{found.archived_keys:,}",
                _when(found.newest_millis),
            )
        console.print(table)
        stored = [m for m in maps if m.tier != "archive"]
        archived = [m for m in maps if m.tier == "archive"]
        keys = sum(m.archived_keys for m in maps)
        console.print(
            f"memory budget: {_size(budget.budget_bytes)} (evict at "
            f"{budget.high_water:.0%} down to {budget.low_water:.0%})"
        )
        console.print(f"storage: {_size(sum(m.bytes for m in stored))} in {len(stored)} map(s)")
        console.print(
            f"archive: {_size(sum(m.bytes for m in archived))} compressed in "
            f"{len(archived)} map(s) and {_size(sum(m.archived_bytes for m in maps))} in "
            f"{keys:,} archived key(s) at {backend.archive.store.description}"
        )

    _run(pm, config_file, config_overrides, work)


@tier.command()
@config_options
@click.option(
    "--older-than",
    default=None,
    help="Archive what was untouched for this long (e.g. 30d, 12h; default: archive_after).",
)
@click.option(
    "--map", "names", multiple=True, help="This map, whole whatever its age (repeatable)."
)
@click.option(
    "--keys",
    "keys_only",
    is_flag=True,
    help="Only the old keys of LWW maps (of the --map ones if given), no whole maps.",
)
@click.option(
    "--url",
    default=None,
    help="A running server (http://host:port): it archives keys in the background while "
    "this shows the progress (needs --token with the ADMIN role).",
)
@click.option("--token", envvar="TOPGUN_TOKEN", default=None, help="JWT for --url.")
@click.pass_obj
def archive(
    pm: TopgunPluginManager,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    older_than: str | None,
    names: tuple[str, ...],
    keys_only: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Move what was untouched for a while into the archive.

    With the server stopped: the maps untouched for that long whole, and the old keys of
    the other LWW maps; --map archives the named maps whole, --keys only old keys. With
    --url the running server archives the old keys of its LWW maps beside its writes.
    """
    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    if url is not None:
        _archive_online(url, token, older_than, names)
        return

    async def work(backend: TieredBackend) -> None:
        if names:
            stored = {info.name for info in await backend.list_maps()}
            for name in names:
                if name in backend.archive.manifest.maps:
                    raise click.ClickException(f"map {name!r} is archived already")
                if name not in stored:
                    raise click.ClickException(f"map {name!r} is not stored")
        chosen = list(names) or [info.name for info in await backend.list_maps()]
        whole = [] if keys_only else list(names) or await backend.idle_maps(age)
        horizon = backend.now_ms() - (backend.options.archive_after_ms() if age is None else age)
        old = {
            name: keys
            for name in chosen
            if name not in whole and name not in backend.archive.manifest.maps
            if (keys := await backend.old_keys(name, horizon))
        }
        console = Console()
        if not whole and not old:
            console.print("nothing to archive")
            return
        sizes = {s.name: s.records for s in await backend.tier_status() if s.tier != "archive"}
        moved = 0
        with _progress(console) as progress:
            for name in whole:
                task = progress.add_task(f"archive {name}", total=sizes.get(name, 0))
                info = await backend.archive_map(name, functools.partial(progress.advance, task))
                progress.update(task, completed=info.records)
            for name, keys in old.items():
                task = progress.add_task(f"archive keys of {name}", total=len(keys))
                step = backend.options.segment_keys
                for start in range(0, len(keys), step):
                    done = await backend.archive_keys(
                        name, keys[start : start + step], before_ms=horizon
                    )
                    moved += 0 if done is None else len(done.keys)
                    progress.advance(task, len(keys[start : start + step]))
        console.print(
            f"archived {len(whole)} map(s) and {moved:,} key(s) of {len(old)} map(s) to "
            f"{backend.archive.store.description}"
        )

    _run(pm, config_file, config_overrides, work)


def _archive_online(
    url: str, token: str | None, older_than: str | None, names: tuple[str, ...]
) -> None:
    """Ask the server at `url` to archive and follow its progress until it is done."""
    request: dict[str, Any] = {"maps": list(names)}
    if older_than is not None:
        request["older_than"] = older_than
    columns = (
        TextColumn("[bold]archiving: {task.fields[keys]:,} key(s)"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    status = follow_job(
        url,
        "/admin/tier/archive",
        token,
        prog="tier",
        what="archiving",
        columns=columns,
        fields={"keys": 0},
        progress=lambda s: {
            "completed": s["maps_done"],
            "total": s["maps_total"] or None,
            "keys": s["keys"],
        },
        request=request,
        console=Console(stderr=True),
    )
    click.echo(
        f"archived {status['keys']:,} key(s) of {status['maps_done']} map(s) in "
        f"{status['segments']} segment(s) ({_size(status['bytes'])}); "
        f"{status['evicted']:,} value(s) left memory"
    )


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
        manifest = backend.archive.manifest
        archived = {name: info.records for name, info in manifest.maps.items()}
        for info in manifest.key_segments.values():
            archived[info.map] = archived.get(info.map, 0) + info.count
        chosen = sorted(archived) if restore_all else list(names)
        unknown = [name for name in chosen if name not in archived]
        if unknown:
            raise click.ClickException(f"not archived: {', '.join(map(repr, unknown))}")
        console = Console()
        with _progress(console) as progress:
            for name in chosen:
                task = progress.add_task(f"restore {name}", total=archived[name])
                await backend.restore(name, functools.partial(progress.advance, task))
        console.print(f"restored {len(chosen)} map(s)")

    _run(pm, config_file, config_overrides, work)
