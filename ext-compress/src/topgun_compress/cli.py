"""`topgun compress train MAP`: train a zstd dictionary on a map's stored values.

It opens the storage the server configuration names (the same `--config` file,
`TOPGUN_*` variables and flags as `topgun serve`; the SQLite file is held by one process
at a time, so the server is stopped), samples the map's values, trains a dictionary and
saves it as the map's newest. The server compresses new values of the map with it from
its next start; values compressed before stay readable with the dictionaries they name.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec

from topgun.hooks import PluginError, TopgunPluginManager
from topgun.server.config import ConfigError, config_options, config_sections, read_config
from topgun.storage import StorageError, open_configured_storage
from topgun_compress.config import SECTION, dictionary_dir
from topgun_compress.dictionaries import DEFAULT_DICT_SIZE, DictionaryError, DictionaryStore, train

DEFAULT_SAMPLES = 2000


@click.group()
def compress() -> None:
    """Compression at rest: dictionaries."""


async def _samples(pm: TopgunPluginManager, config: Any, map_name: str) -> list[bytes]:
    """The map's live values as the codec sees them (msgpack)."""
    backend = open_configured_storage(pm, config)
    await backend.initialize()
    try:
        snapshot = await backend.load_map(map_name)
    finally:
        await backend.close()
    if snapshot is None:
        raise DictionaryError(f"map {map_name!r} is not stored")
    encode = msgspec.msgpack.encode
    if snapshot.kind == "lww":
        return [encode(r.value) for r in snapshot.records.values() if r.value is not None]
    return [encode(r.value) for records in snapshot.records.values() for r in records]


@compress.command(name="train")
@click.argument("map_name", metavar="MAP")
@config_options
@click.option(
    "--samples",
    type=click.IntRange(min=8),
    default=DEFAULT_SAMPLES,
    show_default=True,
    help="At most this many values, chosen at random, train the dictionary.",
)
@click.option(
    "--size",
    type=click.IntRange(min=256),
    default=DEFAULT_DICT_SIZE,
    show_default=True,
    help="Dictionary size in bytes.",
)
@click.pass_obj
def train_command(
    pm: TopgunPluginManager,
    map_name: str,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    samples: int,
    size: int,
) -> None:
    """Train a dictionary on MAP's stored values and save it for new writes."""
    try:
        config = read_config(
            config_file,
            environ=os.environ,
            overrides=config_overrides,
            sections=config_sections(pm),
        )
        if SECTION not in config.storage.codecs:
            raise ConfigError(
                f"[storage] codecs {list(config.storage.codecs)} does not list {SECTION!r}: "
                "a dictionary would not be used"
            )
        values = anyio.run(_samples, pm, config, map_name)
        chosen = random.sample(values, min(samples, len(values)))
        dictionary = train(chosen, size=size)
        store = DictionaryStore(dictionary_dir(config))
        dict_id = store.add(map_name, dictionary)
    except (ConfigError, StorageError, PluginError, DictionaryError) as exc:
        click.echo(f"topgun compress: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(
        f"dictionary {dict_id} ({len(dictionary.as_bytes())} bytes) trained on {len(chosen)} "
        f"value(s) of map {map_name!r}, saved in {store.directory}; new writes use it from "
        "the server's next start"
    )
