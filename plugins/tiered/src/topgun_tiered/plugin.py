"""The `topgun-tiered` plugin: the `tiered` storage wrapper, the `topgun tier` commands, and
archiving inside a running server: every `archive_interval`, or on request
(`POST /admin/tier/archive`, an ADMIN token; `GET` reports progress), which is what
`topgun tier archive --url` drives with its progress bar."""

from __future__ import annotations

from typing import Any, cast

import click
import msgspec
from prometheus_client import Gauge

from topgun.hooks import Register, hookimpl
from topgun_tiered.cli import tier
from topgun_tiered.online import archive_every, archiver_of
from topgun_tiered.options import parse_age
from topgun_tiered.wrapper import TieredBackend, wrap


@hookimpl
def register_storage_wrappers(register: Register[Any]) -> None:
    register("tiered", wrap)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(tier)


@hookimpl
def on_startup(server: Any) -> None:
    """Export the archive's metrics, and archive every `archive_interval` if it is set."""
    archiver = archiver_of(server)
    if archiver is None:
        return
    backend = archiver.backend
    for name, help_text, read in (
        (
            "topgun_tier_archived_keys",
            "Records in the archive (whole maps and archived keys).",
            lambda: backend.archived_totals()[0],
        ),
        (
            "topgun_tier_archived_bytes",
            "Compressed bytes of the archive's segments.",
            lambda: backend.archived_totals()[1],
        ),
        (
            "topgun_tier_archive_restores",
            "Archived maps and key segments restored since start.",
            lambda: backend.restores,
        ),
        (
            "topgun_tier_archive_restored_records",
            "Records those restores brought back.",
            lambda: backend.restored_records,
        ),
    ):
        Gauge(name, help_text, registry=server.metrics.registry).set_function(read)
    interval = backend.options.archive_interval_ms()
    if interval is not None:
        server.start_background(lambda: archive_every(archiver, interval))


class ArchiveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /admin/tier/archive` (all optional)."""

    older_than: int | str | None = None
    """Seconds or a text such as `"7d"`; default: `archive_after`."""
    maps: list[str] = msgspec.field(default_factory=list)
    """Only these maps; default: every LWW map."""


@hookimpl
def register_routes(app: Any, server: Any) -> None:
    """`POST /admin/tier/archive` starts an archiving pass, `GET` reports it (ADMIN only)."""
    if "tiered" not in server.config.storage.wrappers:
        return
    from quart import Quart, Response, request

    from topgun.server.http_sync import HttpFailure, authenticate_bearer, error_response

    quart_app = cast(Quart, app)

    @quart_app.route("/admin/tier/archive", methods=["GET", "POST"])
    async def archiving() -> Response:
        try:
            principal = await authenticate_bearer(server, request.headers.get("Authorization"))
            if "ADMIN" not in principal.roles:
                raise HttpFailure(403, "Archiving needs the ADMIN role")
            archiver = archiver_of(server)
            if archiver is None or not isinstance(archiver.backend, TieredBackend):
                raise HttpFailure(409, "The server's storage is not open")
            if request.method == "POST":
                body = await request.get_data()
                try:
                    asked = msgspec.json.decode(body or b"{}", type=ArchiveRequest)
                    age = None if asked.older_than is None else parse_age(asked.older_than)
                except (msgspec.DecodeError, ValueError) as exc:
                    raise HttpFailure(400, f"Bad archive request: {exc}") from None
                unknown = [name for name in asked.maps if server.maps.kind(name) is None]
                if unknown:
                    raise HttpFailure(404, f"No such map: {', '.join(map(repr, unknown))}")
                progress = archiver.start(age, asked.maps)
                return Response(
                    msgspec.json.encode(progress), status=202, content_type="application/json"
                )
            if archiver.current is None:
                raise HttpFailure(404, "No archiving pass has run since the server started")
            return Response(msgspec.json.encode(archiver.current), content_type="application/json")
        except HttpFailure as failure:
            return error_response(failure)
