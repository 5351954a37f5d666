"""The `audit` plugin (entry point `audit = topgun_audit.plugin`).

This module claims the `[audit]` configuration section and adds `topgun audit ...`. When a
server starts with the section enabled, it opens that server's `AuditLog` and registers a
`Recorder` for it in the server's plugin manager (under `RECORDER`); the recorder's hooks
turn authentications, writes, denials, admin actions and disconnects into entries. At
shutdown the recorder is unregistered and the log drained and closed. One recorder per
plugin manager: each `Server` normally has its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

import anyio
import click

from topgun.hooks import Connection, OpContext, PluginError, Principal, Register, Rejected, hookimpl
from topgun_audit import events
from topgun_audit.commands import audit
from topgun_audit.config import SECTION, AuditConfig, OnFull
from topgun_audit.log import AuditLog

logger = logging.getLogger(__name__)

RECORDER: Final = "audit.recorder"
"""The name a running server's recorder is registered under in its plugin manager."""

QUEUE_FULL: Final = "Audit log unavailable: its queue is full"
"""The reason writes and authentications are refused with under `on_full = "fail_closed"`."""


class Recorder:
    """The hooks that record one server's events into its `AuditLog`."""

    def __init__(self, log: AuditLog, on_full: OnFull) -> None:
        self.log = log
        self.on_full = on_full

    async def _admit(self) -> None:
        """Before an action that can still be refused: apply `on_full` if the queue is full."""
        if self.log.has_room():
            return
        if self.on_full == "fail_closed":
            raise Rejected(QUEUE_FULL, code=503)
        await anyio.to_thread.run_sync(self.log.wait_for_room)

    @hookimpl
    async def on_authenticated(self, connection: Connection, principal: Principal) -> None:
        await self._admit()
        await self.log.put(events.auth_success(connection, principal))

    @hookimpl
    async def on_auth_failed(self, connection: Connection | None, reason: str) -> None:
        await self.log.put(events.auth_failure(connection, reason))

    @hookimpl(trylast=True)
    async def before_op(self, op: Any, context: OpContext) -> None:
        await self._admit()

    @hookimpl
    async def after_op(self, op: Any, context: OpContext, result: Any) -> None:
        await self.log.put(events.write(op, context, result))

    @hookimpl
    def on_permission_denied(self, principal: Principal, resource: str, action: str) -> None:
        body = events.permission_denied(principal, resource, action)
        if not self.log.try_put(body):
            # A sync hook on the event loop: wait for room in a thread of its own, so that
            # a slow disk holds up this entry, not the server.
            threading.Thread(
                target=self.log.put_blocking, args=(body,), name="topgun-audit denial", daemon=True
            ).start()

    @hookimpl
    async def on_admin_action(
        self,
        connection: Connection | None,
        principal: Principal,
        action: str,
        target: str,
        error: str | None,
    ) -> None:
        await self.log.put(events.admin_action(connection, principal, action, target, error))

    @hookimpl
    async def on_disconnect(self, connection: Connection, code: int, reason: str) -> None:
        await self.log.put(events.disconnect(connection, code, reason))


def server_config(server: Any) -> AuditConfig:
    """The `[audit]` section of `server`'s configuration (the defaults when it has none)."""
    section = server.config.sections.get(SECTION)
    return section if isinstance(section, AuditConfig) else AuditConfig()


@hookimpl
def register_config_sections(register: Register[type[Any]]) -> None:
    register(SECTION, AuditConfig)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(audit)


@hookimpl
async def on_startup(server: Any) -> None:
    config = server_config(server)
    if not config.enabled:
        logger.info("audit log disabled by configuration ([audit] enabled = false)")
        return
    if server.pm.has_plugin(RECORDER):
        raise PluginError(
            "audit: this plugin manager already records for a running server; "
            "give each Server its own plugin manager"
        )
    log = AuditLog(
        config.log_directory(server.config.data_dir),
        max_file_bytes=config.max_file_bytes,
        queue_size=config.queue_size,
        fsync=config.fsync,
    )
    try:
        await anyio.to_thread.run_sync(log.open)
    except (OSError, ValueError) as exc:
        raise PluginError(
            f"audit: cannot open the audit log in {log.directory}: {exc} "
            "(set [audit] directory, or [audit] enabled = false to run without it)"
        ) from None
    server.pm.register(Recorder(log, config.on_full), name=RECORDER)
    await log.put(events.server_event("audit.started", server.node_id))
    logger.info("audit log: %s", log.directory)


@hookimpl
async def on_shutdown(server: Any) -> None:
    recorder = server.pm.get_plugin(RECORDER)
    if not isinstance(recorder, Recorder):
        return
    server.pm.unregister(name=RECORDER)
    await recorder.log.put(events.server_event("audit.stopped", server.node_id))
    await anyio.to_thread.run_sync(recorder.log.close)
