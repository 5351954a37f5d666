"""The `compress` plugin: the `[compress]` section, the `compress` codec, `topgun compress`."""

from __future__ import annotations

from typing import Any

import click

from topgun.hooks import ContextualCodec, Register, ValueCodec, hookimpl
from topgun_compress.cli import compress
from topgun_compress.codec import ZstdCodec
from topgun_compress.config import SECTION, CompressConfig, build_codec


@hookimpl
def register_config_sections(register: Register[type[Any]]) -> None:
    register(SECTION, CompressConfig)


@hookimpl
def register_codecs(register: Register[ValueCodec | ContextualCodec], config: Any) -> None:
    """Register the `compress` codec, configured by `[compress]` (defaults without a
    configuration); `[storage] codecs` decides whether storage uses it."""
    if config is None:
        register(SECTION, ZstdCodec())
    elif SECTION in config.storage.codecs:
        register(SECTION, build_codec(config))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(compress)
