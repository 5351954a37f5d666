"""The `topgun` command: commands arrive through register_commands; `topgun plugins`."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from topgun import __version__
from topgun.cli import build_cli, main
from topgun.hooks import DEFAULT_PLUGINS, TopgunPluginManager, hookimpl, make_plugin_manager


@pytest.fixture
def pm() -> TopgunPluginManager:
    return make_plugin_manager(entry_points=(), environ={})


def backup_plugin() -> SimpleNamespace:
    """A plugin adding `topgun backup`."""

    @click.command()
    def backup() -> None:
        click.echo("backed up")

    def register_commands(cli: click.Group) -> None:
        cli.add_command(backup)

    return SimpleNamespace(register_commands=hookimpl(register_commands))


def test_builtin_commands_come_through_the_hook(pm: TopgunPluginManager) -> None:
    cli = build_cli(pm)
    assert set(cli.commands) == {"serve", "plugins", "sim"}
    pm.unregister(name="topgun.cli")
    assert build_cli(pm).commands == {}


def test_a_plugin_adds_a_command(pm: TopgunPluginManager) -> None:
    pm.register(backup_plugin(), name="backup")
    result = CliRunner().invoke(build_cli(pm), ["backup"])
    assert (result.exit_code, result.output) == (0, "backed up\n")


def test_version() -> None:
    result = CliRunner().invoke(
        build_cli(make_plugin_manager(entry_points=(), environ={})), ["--version"]
    )
    assert result.exit_code == 0
    assert __version__ in result.output


def test_plugins_without_installed_plugins(pm: TopgunPluginManager) -> None:
    result = CliRunner().invoke(build_cli(pm), ["plugins"])
    assert result.exit_code == 0
    assert "No plugins installed" in result.output
    assert json.loads(CliRunner().invoke(build_cli(pm), ["plugins", "--json"]).output) == []


def test_plugins_table_shows_name_version_and_hooks(pm: TopgunPluginManager) -> None:
    pm.register(backup_plugin(), name="backup")
    result = CliRunner().invoke(build_cli(pm), ["plugins"])
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "backup" in line)
    assert "register_commands" in row
    assert "-" in row  # registered by hand: no distribution version
    assert "topgun.cli" not in result.output
    with_builtins = CliRunner().invoke(build_cli(pm), ["plugins", "--all"]).output
    assert "topgun.cli" in with_builtins
    assert "built-in" in with_builtins


def test_plugins_json(pm: TopgunPluginManager) -> None:
    pm.register(backup_plugin(), name="backup")
    result = CliRunner().invoke(build_cli(pm), ["plugins", "--json", "--all"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert [info["name"] for info in listed] == sorted(["backup", *DEFAULT_PLUGINS])
    assert [info for info in listed if info["name"] in ("backup", "topgun.cli")] == [
        {
            "name": "backup",
            "version": None,
            "distribution": None,
            "hooks": ["register_commands"],
            "builtin": False,
        },
        {
            "name": "topgun.cli",
            "version": "built-in",
            "distribution": "topgun",
            "hooks": ["register_commands"],
            "builtin": True,
        },
    ]


def test_main_reports_a_broken_plugin_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = EntryPoint(name="broken", value="topgun_no_such_module_for_tests", group="topgun")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [broken])
    for variable in ("TOPGUN_LOAD_PLUGINS", "TOPGUN_DISABLE_PLUGINS", "TOPGUN_TRACE_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["plugins"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("topgun: plugin 'broken'")
    assert "Traceback" not in err


def test_main_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOPGUN_LOAD_PLUGINS", "")
    monkeypatch.delenv("TOPGUN_DISABLE_PLUGINS", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["plugins", "--all", "--json"])
    assert exited.value.code == 0
    listed = [info["name"] for info in json.loads(capsys.readouterr().out)]
    assert listed == sorted(DEFAULT_PLUGINS)
