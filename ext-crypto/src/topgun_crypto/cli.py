"""`topgun crypto`: make keys, see which keys encrypt the data, rotate to the active key.

`status` and `rotate` open the storage the server configuration names (the same
`--config` file, `TOPGUN_*` variables and flags as `topgun serve`); the SQLite file is
held by one process at a time, so they run while the server is stopped. A running
server rotates in the background itself when `[crypto] rotate_on_startup` is set.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from topgun.admin_jobs import follow_job
from topgun.hooks import PluginError, TopgunPluginManager
from topgun.server.config import (
    ConfigError,
    ServerConfig,
    config_options,
    config_sections,
    read_config,
)
from topgun.storage import (
    RecodableBackend,
    StorageError,
    StorageOpenError,
    open_configured_storage,
)
from topgun_crypto.codec import AesGcmCodec, CryptoError
from topgun_crypto.config import SECTION, crypto_config, load_keyring
from topgun_crypto.keyring import KeyRingError, format_key, generate_key
from topgun_crypto.rotation import DEFAULT_BATCH, key_usage, rotate

T = TypeVar("T")

_ERRORS = (ConfigError, StorageError, PluginError, CryptoError, KeyRingError)


@click.group()
def crypto() -> None:
    """Encryption at rest: keys and key rotation."""


@crypto.command()
@click.argument("name", required=False)
def keygen(name: str | None) -> None:
    """Print a new random key as a key ring entry NAME:base64 (NAME: today's date).

    Add it to the key file or TOPGUN_CRYPTO_KEYS; it becomes the active key when it is
    listed last (or named by [crypto] active_key).
    """
    try:
        click.echo(format_key(name or datetime.now(UTC).strftime("%Y-%m-%d"), generate_key()))
    except KeyRingError as exc:
        raise click.UsageError(str(exc)) from None


def _run(
    pm: TopgunPluginManager,
    config_file: Path | None,
    overrides: dict[str, Any],
    work: Callable[[RecodableBackend, AesGcmCodec], Awaitable[T]],
) -> T:
    """Load the configuration, open its storage, run `work`; errors are one line."""
    try:
        config: ServerConfig = read_config(
            config_file, environ=os.environ, overrides=overrides, sections=config_sections(pm)
        )
        if SECTION not in config.storage.codecs:
            raise ConfigError(
                f"[storage] codecs {list(config.storage.codecs)} does not list {SECTION!r}: "
                "nothing is encrypted"
            )
        codec = AesGcmCodec(load_keyring(crypto_config(config)))

        async def main() -> T:
            backend = open_configured_storage(pm, config)
            if not isinstance(backend, RecodableBackend):
                raise StorageError(
                    f"the storage backend {config.storage.backend!r} cannot re-encode "
                    "values in place (it is not a topgun.storage.RecodableBackend)"
                )
            await backend.initialize()
            try:
                return await work(backend, codec)
            finally:
                await backend.close()

        return anyio.run(main)
    except _ERRORS as exc:
        hint = ""
        if isinstance(exc, StorageOpenError):
            hint = (
                "; stop the server first, or let it rotate in the background "
                "([crypto] rotate_on_startup = true)"
            )
        click.echo(f"topgun crypto: {exc}{hint}", err=True)
        raise SystemExit(1) from None


@crypto.command()
@config_options
@click.pass_obj
def status(
    pm: TopgunPluginManager, config_file: Path | None, config_overrides: dict[str, Any]
) -> None:
    """Count the stored values encrypted with each key (server stopped)."""

    async def work(
        backend: RecodableBackend, codec: AesGcmCodec
    ) -> tuple[dict[str | None, int], str]:
        return await key_usage(backend, codec), codec.keyring.active

    usage, active = _run(pm, config_file, config_overrides, work)
    for name, count in sorted(usage.items(), key=lambda item: str(item[0])):
        label = name if name is not None else "(a key not in the ring)"
        click.echo(f"{label}: {count} value(s){' (active)' if name == active else ''}")
    if not usage:
        click.echo("no stored values")


@crypto.command(name="rotate")
@config_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Values re-encrypted per transaction.",
)
@click.option(
    "--url",
    default=None,
    help="A running server (http://host:port): it rotates in the background while this "
    "shows the progress (needs --token with the ADMIN role).",
)
@click.option("--token", envvar="TOPGUN_TOKEN", default=None, help="JWT for --url.")
@click.pass_obj
def rotate_command(
    pm: TopgunPluginManager,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    batch_size: int,
    url: str | None,
    token: str | None,
) -> None:
    """Re-encrypt every stored value with the active key, with a progress bar.

    Interrupting it loses nothing; running it again resumes (values already under the
    active key are skipped on their header). With --url the running server does the work
    in the background, beside its writes; without it the server must be stopped (SQLite
    is opened by one process only).
    """
    console = Console(stderr=True)
    if url is not None:
        _rotate_online(url, token, console)
        return

    async def work(backend: RecodableBackend, codec: AesGcmCodec) -> None:
        columns = (
            TextColumn("[bold]rotating to key {task.fields[key]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("rotate", total=None, key=codec.keyring.active)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = await rotate(backend, codec, batch=batch_size, progress=progress)
        click.echo(
            f"rotated {report.rotated} of {report.scanned} value(s) to key "
            f"{codec.keyring.active!r}"
            + (f"; {report.overwritten} were rewritten meanwhile" if report.overwritten else "")
        )

    _run(pm, config_file, config_overrides, work)


def _rotate_online(url: str, token: str | None, console: Console) -> None:
    """Ask the server at `url` to rotate and follow its progress until it is done."""
    columns = (
        TextColumn("[bold]rotating to key {task.fields[key]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    status = follow_job(
        url,
        "/admin/crypto/rotate",
        token,
        prog="crypto",
        what="the rotation",
        columns=columns,
        fields={"key": "..."},
        progress=lambda s: {"completed": s["done"], "total": s["total"] or None, "key": s["key"]},
        console=console,
    )
    click.echo(f"rotated {status['rotated']} of {status['done']} value(s) to key {status['key']!r}")
