"""The `crypto` plugin: the `[crypto]` section, the `crypto` codec, `topgun crypto`, and
the background rotation of `[crypto] rotate_on_startup`."""

from __future__ import annotations

from typing import Any

import click

from topgun.hooks import ContextualCodec, Register, ValueCodec, hookimpl
from topgun.storage import RecodableBackend, StorageConfigError
from topgun_crypto.cli import crypto
from topgun_crypto.codec import AesGcmCodec
from topgun_crypto.config import SECTION, CryptoConfig, crypto_config, load_keyring
from topgun_crypto.rotation import rotate_in_background


@hookimpl
def register_config_sections(register: Register[type[Any]]) -> None:
    register(SECTION, CryptoConfig)


@hookimpl
def register_codecs(register: Register[ValueCodec | ContextualCodec], config: Any) -> None:
    """Register the `crypto` codec when `[storage] codecs` lists it: it must come last
    (compress, then encrypt), and a missing or bad key ring stops the start here."""
    codecs = tuple(getattr(getattr(config, "storage", None), "codecs", ()))
    if SECTION not in codecs:
        return
    if codecs[-1] != SECTION:
        raise StorageConfigError(
            f"[storage] codecs {list(codecs)}: {SECTION!r} must be the last codec, so that "
            "values are compressed before they are encrypted (ciphertext does not compress)"
        )
    register(SECTION, AesGcmCodec(load_keyring(crypto_config(config))))


@hookimpl
def on_startup(server: Any) -> None:
    """With `[crypto] rotate_on_startup`, start rotating in the background."""
    config = server.config
    if SECTION not in config.storage.codecs or not crypto_config(config).rotate_on_startup:
        return
    backend = server.backend
    if not isinstance(backend, RecodableBackend):
        raise StorageConfigError(
            f"[crypto] rotate_on_startup: the storage backend {config.storage.backend!r} cannot "
            "re-encode values in place (it is not a topgun.storage.RecodableBackend)"
        )
    codec = AesGcmCodec(load_keyring(crypto_config(config)))
    server.start_background(lambda: rotate_in_background(backend, codec))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(crypto)
