"""The `topgun` command: a click group that plugins extend through the CLI hook."""

from __future__ import annotations

import click

from topgun import __version__


@click.group()
@click.version_option(__version__, prog_name="topgun")
def cli() -> None:
    """topgun: offline-first in-memory data grid."""


@cli.command()
def serve() -> None:
    """Start the server (arrives with the single-node server issue)."""
    click.echo(
        "topgun serve: the server is not built yet (it lands with the single-node server "
        "issue). This build holds the CRDT core, the wire protocol and the plugin system.",
        err=True,
    )
    raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    cli()
