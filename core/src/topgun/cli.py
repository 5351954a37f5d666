"""The `topgun` command: a click group whose every sub-command arrives through the CLI hook.

This module is also a built-in plugin (see `topgun.hooks.DEFAULT_PLUGINS`): its
`register_commands` implementation adds `serve`, `plugins` and `sim`, exactly as an installed
plugin adds its own commands.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
import msgspec
from rich.console import Console
from rich.table import Table

from topgun import __version__
from topgun.dst.cli import sim
from topgun.hooks import (
    PluginLoadError,
    TopgunPluginManager,
    call_hook_sync,
    hookimpl,
    make_plugin_manager,
)
from topgun.server.serve import serve


def build_cli(pm: TopgunPluginManager) -> click.Group:
    """The `topgun` group with the commands every plugin of `pm` registers."""

    @click.group()
    @click.version_option(__version__, prog_name="topgun")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """topgun: offline-first in-memory data grid."""
        ctx.obj = pm

    call_hook_sync(pm.hook.register_commands, cli=cli)
    return cli


@click.command()
@click.option("--all", "include_builtin", is_flag=True, help="Include built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def plugins(pm: TopgunPluginManager, include_builtin: bool, as_json: bool) -> None:
    """List loaded plugins: name, version, hooks implemented.

    Built-in plugins are left out unless --all is given (as `datasette plugins` does).
    """
    infos = pm.plugin_info(include_builtin=include_builtin)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(infos)).decode())
        return
    console = Console()
    if not infos:
        console.print(
            "No plugins installed." + ("" if include_builtin else " (--all shows built-ins)")
        )
        return
    table = Table("Name", "Version", "Hooks")
    for info in infos:
        table.add_row(info.name, info.version or "-", ", ".join(info.hooks))
    console.print(table)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """The built-in commands."""
    cli.add_command(serve)
    cli.add_command(plugins)
    cli.add_command(sim)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: load the plugins, build the command, run it."""
    try:
        pm = make_plugin_manager()
    except PluginLoadError as exc:
        click.echo(f"topgun: {exc}", err=True)
        raise SystemExit(1) from None
    build_cli(pm).main(args=argv, prog_name="topgun")
