"""Following a job that a running server does at an ADMIN's request: `POST` to its endpoint
starts it, `GET` reports its progress until it stops running. This is the `--url` mode of
`topgun crypto rotate` and `topgun tier archive`: the server does the work beside its
writes, and the command only shows how far it got."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import Progress, ProgressColumn

POLL_SECONDS = 0.2
"""How often the progress is asked for (the server works meanwhile)."""

Status = dict[str, Any]
"""The job's status as the endpoint reports it: `running`, `error` and its own figures."""


def follow_job(
    url: str,
    path: str,
    token: str | None,
    *,
    prog: str,
    what: str,
    columns: tuple[ProgressColumn, ...],
    fields: Mapping[str, Any],
    progress: Callable[[Status], Mapping[str, Any]],
    request: Mapping[str, Any] | None = None,
    console: Console | None = None,
) -> Status:
    """Start the job at `url` + `path` and show its progress until it ends; its last status.

    `progress(status)` gives the bar's `completed`, `total` and `fields` for a status. Exits
    1 with a one-line message (`topgun <prog>: ...`) when the server cannot be reached,
    refuses the request or reports that `what` stopped with an error.
    """
    if not token:
        raise click.UsageError("--url needs --token (or TOPGUN_TOKEN): an ADMIN token")
    endpoint = url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(timeout=30) as client:
            status = _answer(client.post(endpoint, headers=headers, json=request), prog)
            with Progress(*columns, console=console) as bar:
                task = bar.add_task(what, total=None, **fields)
                while status["running"]:
                    time.sleep(POLL_SECONDS)  # the server works; this only polls its progress
                    status = _answer(client.get(endpoint, headers=headers), prog)
                    bar.update(task, **progress(status))
    except httpx.HTTPError as exc:
        click.echo(f"topgun {prog}: {endpoint}: {exc}", err=True)
        raise SystemExit(1) from None
    if status["error"] is not None:
        click.echo(f"topgun {prog}: {what} stopped: {status['error']}", err=True)
        raise SystemExit(1)
    return status


def _answer(response: httpx.Response, prog: str) -> Status:
    if response.status_code not in (200, 202):
        try:
            error = response.json().get("error", response.text)
        except ValueError:
            error = response.text
        click.echo(f"topgun {prog}: the server answered {response.status_code}: {error}", err=True)
        raise SystemExit(1)
    status: Status = response.json()
    return status
