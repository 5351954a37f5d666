"""`topgun audit verify | tail | query`: where the log is, filters, and bad input."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from topgun_audit.commands import audit, matching, since_time

NOW = datetime.datetime(2026, 11, 26, 6, 0, tzinfo=datetime.UTC)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(audit, list(args), env=env or {"TOPGUN_CONFIG": ""})
    return result.exit_code, result.output


def test_since_accepts_iso_dates_and_durations() -> None:
    assert since_time("15m", NOW) == NOW - datetime.timedelta(minutes=15)
    assert since_time("7d", NOW) == NOW - datetime.timedelta(days=7)
    assert since_time("2026-11-25") == datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC)
    assert since_time("2026-11-25T10:00:00+02:00") == datetime.datetime(
        2026, 11, 25, 8, tzinfo=datetime.UTC
    )
    for bad in ("yesterday", "15 minutes", "-3h", ""):
        with pytest.raises(click.BadParameter, match="neither an ISO 8601"):
            since_time(bad)


def test_query_filters_combine() -> None:
    found = [
        {"event": "write", "principal": "bob", "map": "todos", "time": "2026-11-26T05:00:00Z"},
        {"event": "write", "principal": "bob", "map": "notes", "time": "2026-11-26T05:59:00Z"},
        {"event": "permission.denied", "principal": "bob", "resource": "notes", "time": "x"},
        {"event": "write", "principal": "amy", "map": "notes", "time": "2026-11-26T05:59:30Z"},
    ]
    by_bob_on_notes = list(matching(found, principal="bob", map_name="notes"))
    assert [e["event"] for e in by_bob_on_notes] == ["write", "permission.denied"]
    recent = list(matching(found, since=NOW - datetime.timedelta(minutes=5)))
    assert [e["principal"] for e in recent] == ["bob", "amy"]  # an unreadable time is left out
    assert list(matching(found, event="auth.failure")) == []


def test_commands_find_the_log_through_the_server_configuration(
    written: Callable[..., Path], tmp_path: Path
) -> None:
    directory = written(3)
    config = tmp_path / "topgun.toml"
    config.write_text(f'[audit]\ndirectory = "{directory}"\n')
    code, output = run("verify", "--config", str(config))
    assert (code, output.startswith("OK: 3 entries in 1 file(s)")) == (0, True), output
    code, output = run("tail", "-n", "1", "--json", env={"TOPGUN_AUDIT_DIRECTORY": str(directory)})
    assert code == 0, output
    assert json.loads(output)["seq"] == 3


def test_the_default_directory_is_under_the_data_dir(
    written: Callable[..., Path], tmp_path: Path
) -> None:
    written(2)  # the `log_dir` fixture: tmp_path / "audit"
    config = tmp_path / "topgun.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    code, output = run("query", "--config", str(config), "--json")
    assert code == 0, output
    assert [json.loads(line)["seq"] for line in output.splitlines()] == [1, 2]


def test_bad_input_gets_a_clear_error(tmp_path: Path, written: Callable[..., Path]) -> None:
    code, output = run("verify", "--dir", str(tmp_path / "nowhere"))
    assert (code, "no audit log at" in output) == (1, True)
    code, output = run("query", "--dir", str(written(1)), "--since", "soon")
    assert (code, "neither an ISO 8601 date/time nor a duration" in output) == (2, True)
    code, output = run("tail", "--dir", str(tmp_path), "-n", "0")
    assert code == 2
    config = tmp_path / "bad.toml"
    config.write_text('[audit]\nqueue_size = "big"\n')
    code, output = run("verify", "--config", str(config))
    assert (code, "queue_size" in output) == (2, True), output
