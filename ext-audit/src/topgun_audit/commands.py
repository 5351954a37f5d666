"""`topgun audit verify | tail | query`: check and read the audit log.

The log's directory is `--dir`, else the one the server configuration names (`--config`
or `$TOPGUN_CONFIG`, and `TOPGUN_AUDIT_*` / `TOPGUN_DATA_DIR` in the environment): the
`[audit] directory`, else `<data_dir>/audit`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import click

from topgun.server.config import ConfigError, read_config
from topgun_audit.chain import entries, verify
from topgun_audit.config import SECTION, AuditConfig
from topgun_audit.events import parse_time

_RELATIVE: Final = re.compile(r"^(\d+)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def log_directory(directory: Path | None, config_file: Path | None) -> Path:
    """The directory given, or the one of the server configuration."""
    if directory is not None:
        return directory
    try:
        config = read_config(config_file, environ=os.environ, sections={SECTION: AuditConfig})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    section = config.sections.get(SECTION)
    audit_config = section if isinstance(section, AuditConfig) else AuditConfig()
    return audit_config.log_directory(config.data_dir)


def since_time(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """`--since`: an ISO 8601 date or date-time (UTC unless it says otherwise), or a
    duration back from now: `90s`, `15m`, `2h`, `7d`."""
    match = _RELATIVE.match(text.strip())
    if match:
        delta = datetime.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.datetime.now(datetime.UTC)) - delta
    try:
        return parse_time(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 date/time nor a duration such as 15m, 2h, 7d",
            param_hint="--since",
        ) from None


def _format(entry: dict[str, Any]) -> str:
    """One entry on one line, for people: time, seq, event, then what matters for it."""
    parts = [str(entry.get("time", "?")), f"#{entry.get('seq', '?')}", str(entry.get("event"))]
    if entry.get("principal") is not None:
        parts.append(f"principal={entry['principal']}" + (" (admin)" if entry.get("admin") else ""))
    for name in ("address", "map", "key", "op", "hlc", "resource", "action", "outcome", "code"):
        if entry.get(name) is not None:
            parts.append(f"{name}={entry[name]}")
    if entry.get("reason"):
        parts.append(f"reason={entry['reason']!r}")
    return "  ".join(parts)


def _echo(found: Iterable[dict[str, Any]], as_json: bool) -> None:
    for entry in found:
        if as_json:
            click.echo(json.dumps(entry, sort_keys=True, ensure_ascii=False))
        else:
            click.echo(_format(entry))


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The audit log's directory (default: from the server configuration).",
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Server configuration file (default: $TOPGUN_CONFIG, else none).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print raw JSON lines.")


@click.group()
def audit() -> None:
    """Check and read the tamper-evident audit log."""


@audit.command("verify")
@_dir_option
@_config_option
def verify_command(directory: Path | None, config_file: Path | None) -> None:
    """Check the hash chain of every file; name the first bad line (exit status 1)."""
    where = log_directory(directory, config_file)
    if not where.is_dir():
        raise click.ClickException(f"no audit log at {where}")
    result = verify(where)
    if result.problem is not None:
        click.echo(f"TAMPERED: {result.problem}", err=True)
        click.echo(f"{result.entries} entries were intact before it.", err=True)
        raise SystemExit(1)
    click.echo(
        f"OK: {result.entries} entries in {result.files} file(s) of {where}; "
        f"head hash {result.head_hash}"
    )


@audit.command("tail")
@_dir_option
@_config_option
@click.option("-n", "--lines", "count", type=click.IntRange(min=1), default=20, show_default=True)
@_json_option
def tail_command(
    directory: Path | None, config_file: Path | None, count: int, as_json: bool
) -> None:
    """Print the last entries of the log."""
    where = log_directory(directory, config_file)
    if not where.is_dir():
        raise click.ClickException(f"no audit log at {where}")
    _echo(deque(entries(where), maxlen=count), as_json)


def matching(
    found: Iterable[dict[str, Any]],
    *,
    principal: str | None = None,
    map_name: str | None = None,
    since: datetime.datetime | None = None,
    event: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The entries that match every filter given (`map_name` also matches denied resources)."""
    for entry in found:
        if principal is not None and entry.get("principal") != principal:
            continue
        if map_name is not None and map_name not in (entry.get("map"), entry.get("resource")):
            continue
        if event is not None and entry.get("event") != event:
            continue
        if since is not None:
            stamp = entry.get("time")
            try:
                if not isinstance(stamp, str) or parse_time(stamp) < since:
                    continue
            except ValueError:
                continue
        yield entry


@audit.command("query")
@_dir_option
@_config_option
@click.option("--principal", help="Only entries of this user id.")
@click.option("--map", "map_name", help="Only entries about this map (or resource).")
@click.option("--since", help="Only entries since: ISO 8601 date/time, or 15m, 2h, 7d back.")
@click.option("--event", help="Only entries of this event (write, auth.failure, ...).")
@_json_option
def query_command(
    directory: Path | None,
    config_file: Path | None,
    principal: str | None,
    map_name: str | None,
    since: str | None,
    event: str | None,
    as_json: bool,
) -> None:
    """Print the entries that match every filter given."""
    where = log_directory(directory, config_file)
    if not where.is_dir():
        raise click.ClickException(f"no audit log at {where}")
    since_at = since_time(since) if since is not None else None
    _echo(
        matching(
            entries(where), principal=principal, map_name=map_name, since=since_at, event=event
        ),
        as_json,
    )
