"""The `crypto` plugin: the `[crypto]` section, the `crypto` codec, `topgun crypto`, and
rotation inside a running server: at start (`[crypto] rotate_on_startup`) or on request
(`POST /admin/crypto/rotate`, an ADMIN token; `GET` reports progress), which is what
`topgun crypto rotate --url` drives with its progress bar."""

from __future__ import annotations

import weakref
from typing import Any, cast

import click
import msgspec

from topgun.hooks import ContextualCodec, Register, ValueCodec, hookimpl
from topgun.storage import RecodableBackend, StorageConfigError
from topgun_crypto.cli import crypto
from topgun_crypto.codec import AesGcmCodec
from topgun_crypto.config import SECTION, CryptoConfig, crypto_config, load_keyring
from topgun_crypto.rotation import RotationStatus, rotate_in_background

_rotations: weakref.WeakKeyDictionary[Any, RotationStatus] = weakref.WeakKeyDictionary()
"""The latest rotation of each running server."""


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


def start_rotation(server: Any) -> RotationStatus:
    """Start re-encrypting `server`'s stored values with the active key, in the background
    (a rotation already running is returned as it is)."""
    current = _rotations.get(server)
    if current is not None and current.running:
        return current
    config = server.config
    backend = server.backend
    if not isinstance(backend, RecodableBackend):
        raise StorageConfigError(
            f"the storage backend {config.storage.backend!r} cannot re-encode values in "
            "place (it is not a topgun.storage.RecodableBackend)"
        )
    codec = AesGcmCodec(load_keyring(crypto_config(config)))
    status = _rotations[server] = RotationStatus(codec.keyring.active)
    server.start_background(lambda: rotate_in_background(backend, codec, status))
    return status


@hookimpl
def on_startup(server: Any) -> None:
    """With `[crypto] rotate_on_startup`, start rotating in the background."""
    config = server.config
    if SECTION in config.storage.codecs and crypto_config(config).rotate_on_startup:
        start_rotation(server)


@hookimpl
def register_routes(app: Any, server: Any) -> None:
    """`POST /admin/crypto/rotate` starts a rotation, `GET` reports it (ADMIN only)."""
    if SECTION not in server.config.storage.codecs:
        return
    from quart import Quart, Response, request

    from topgun.server.http_sync import HttpFailure, authenticate_bearer, error_response

    quart_app = cast(Quart, app)

    def answer(status: RotationStatus, code: int = 200) -> Response:
        body = msgspec.json.encode(status)
        return Response(body, status=code, content_type="application/json")

    @quart_app.route("/admin/crypto/rotate", methods=["GET", "POST"])
    async def rotation() -> Response:
        try:
            principal = await authenticate_bearer(server, request.headers.get("Authorization"))
            if "ADMIN" not in principal.roles:
                raise HttpFailure(403, "Key rotation needs the ADMIN role")
            if request.method == "POST":
                return answer(start_rotation(server), 202)
            status = _rotations.get(server)
            if status is None:
                raise HttpFailure(404, "No key rotation has run since the server started")
            return answer(status)
        except HttpFailure as failure:
            return error_response(failure)
        except StorageConfigError as exc:
            return error_response(HttpFailure(400, str(exc)))


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(crypto)
