"""An example topgun plugin: a `topgun hello` command, a value codec and an op interceptor."""

import base64
from typing import Any

import click

from topgun.hooks import OpContext, Register, Rejected, ValueCodec, hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command()
    @click.argument("name", default="world")
    def hello(name: str) -> None:
        """Say hello from the example plugin."""
        click.echo(f"Hello, {name}, from the example plugin!")


class Base64Codec:
    """Stores values as base64 text: reversible, so `decode(encode(b)) == b`."""

    def encode(self, data: bytes) -> bytes:
        return base64.b64encode(data)

    def decode(self, data: bytes) -> bytes:
        return base64.b64decode(data, validate=True)


@hookimpl
def register_codecs(register: Register[ValueCodec]) -> None:
    register("base64", Base64Codec())


@hookimpl
async def before_op(op: Any, context: OpContext) -> None:
    """Refuse every write from a principal with the role READONLY (async, to show it can be)."""
    if "READONLY" in context.principal.roles:
        raise Rejected("read-only principals cannot write")
