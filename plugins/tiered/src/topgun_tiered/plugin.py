"""The `topgun-tiered` plugin: the `tiered` storage wrapper and the `topgun tier` commands."""

from __future__ import annotations

from typing import Any

import click

from topgun.hooks import Register, hookimpl
from topgun_tiered.cli import tier
from topgun_tiered.wrapper import wrap


@hookimpl
def register_storage_wrappers(register: Register[Any]) -> None:
    register("tiered", wrap)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(tier)
