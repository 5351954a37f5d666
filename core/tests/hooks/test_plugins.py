"""The plugin manager: built-ins, entry points, the TOPGUN_*_PLUGINS switches, load errors.

Entry points here are real `importlib.metadata.EntryPoint`s pointing at modules placed in
`sys.modules`; tests/test_example_plugin.py installs a real distribution.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import EntryPoint
from types import ModuleType
from typing import Any

import pytest

from topgun.hooks import (
    DEFAULT_PLUGINS,
    PluginInfo,
    PluginLoadError,
    PluginSelection,
    PluginWarning,
    call_hook_sync,
    hookimpl,
    make_plugin_manager,
)


def plugin_module(monkeypatch: pytest.MonkeyPatch, module_name: str, **hooks: Any) -> str:
    """Put a module holding `hooks` (marked as implementations) into sys.modules."""
    module = ModuleType(module_name)
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    monkeypatch.setitem(sys.modules, module_name, module)
    return module_name


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="topgun")


def command_adder(log: list[str], name: str) -> Any:
    def register_commands(cli: Any) -> None:
        log.append(name)

    return register_commands


class FakeGroup:
    """Stands in for the click group; records the commands the built-in adds."""

    def __init__(self) -> None:
        self.added: set[str] = set()

    def add_command(self, command: Any) -> None:
        self.added.add(command.name)


@pytest.fixture
def two_plugins(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[EntryPoint]]:
    """Entry points `alpha` and `beta`, each logging its name from `register_commands`."""
    log: list[str] = []
    eps = [
        entry_point(name, plugin_module(monkeypatch, f"fake_{name}", register_commands=adder))
        for name, adder in [
            ("beta", command_adder(log, "beta")),
            ("alpha", command_adder(log, "alpha")),
        ]
    ]
    return log, eps


def test_builtins_are_registered_under_their_module_names() -> None:
    pm = make_plugin_manager(entry_points=(), environ={})
    assert [name for name in DEFAULT_PLUGINS if pm.has_plugin(name)] == list(DEFAULT_PLUGINS)
    info = pm.plugin_info(include_builtin=True)
    assert PluginInfo("topgun.cli", "built-in", "topgun", ("register_commands",), True) in info
    assert pm.plugin_info() == []  # built-ins are listed only when asked for


def test_entry_points_load_and_run_in_alphabetical_order_before_builtins(
    two_plugins: tuple[list[str], list[EntryPoint]],
) -> None:
    log, eps = two_plugins
    pm = make_plugin_manager(entry_points=eps, environ={})
    assert [info.name for info in pm.plugin_info()] == ["alpha", "beta"]
    assert pm.plugin_info()[0] == PluginInfo("alpha", None, None, ("register_commands",), False)
    group = FakeGroup()
    call_hook_sync(pm.hook.register_commands, cli=group)
    assert log == ["alpha", "beta"]
    assert "serve" in group.added  # and the built-in ran after them


@pytest.mark.parametrize(
    ("load", "expected"),
    [("beta", ["beta"]), (" alpha , beta ", ["alpha", "beta"]), ("", [])],
)
def test_topgun_load_plugins_selects_entry_points(
    two_plugins: tuple[list[str], list[EntryPoint]], load: str, expected: list[str]
) -> None:
    _, eps = two_plugins
    pm = make_plugin_manager(entry_points=eps, environ={"TOPGUN_LOAD_PLUGINS": load})
    assert [info.name for info in pm.plugin_info()] == expected
    assert pm.has_plugin("topgun.cli")  # built-ins are not subject to the selection


def test_topgun_disable_plugins_blocks_entry_points_and_builtins(
    two_plugins: tuple[list[str], list[EntryPoint]],
) -> None:
    _, eps = two_plugins
    environ = {"TOPGUN_DISABLE_PLUGINS": "alpha,topgun.cli", "TOPGUN_LOAD_PLUGINS": "alpha,beta"}
    pm = make_plugin_manager(entry_points=eps, environ=environ)
    expected = sorted({"beta", *DEFAULT_PLUGINS} - {"topgun.cli"})
    assert [info.name for info in pm.plugin_info(include_builtin=True)] == expected
    assert pm.is_blocked("alpha")
    assert pm.register(object(), name="topgun.cli") is None  # stays blocked


def test_unknown_names_in_the_environment_are_a_warning_naming_them(
    two_plugins: tuple[list[str], list[EntryPoint]],
) -> None:
    _, eps = two_plugins
    with pytest.warns(PluginWarning, match=r"TOPGUN_LOAD_PLUGINS names unknown plugin\(s\): gamma"):
        make_plugin_manager(entry_points=eps, environ={"TOPGUN_LOAD_PLUGINS": "alpha,gamma"})
    with pytest.warns(PluginWarning, match=r"TOPGUN_DISABLE_PLUGINS .*: delta, zeta \(known: "):
        make_plugin_manager(entry_points=eps, environ={"TOPGUN_DISABLE_PLUGINS": "zeta,delta"})


@pytest.mark.parametrize(
    ("value", "trace"), [("1", True), ("yes", True), ("", False), ("0", False), ("off", False)]
)
def test_trace_switch_values(value: str, trace: bool) -> None:
    assert PluginSelection.from_environ({"TOPGUN_TRACE_PLUGINS": value}).trace is trace


def test_an_unrecognised_trace_value_is_a_warning() -> None:
    with pytest.warns(PluginWarning, match="TOPGUN_TRACE_PLUGINS='maybe'"):
        assert PluginSelection.from_environ({"TOPGUN_TRACE_PLUGINS": "maybe"}).trace is False


def test_topgun_trace_plugins_logs_each_hook_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="topgun.hooks.trace")
    pm = make_plugin_manager(entry_points=(), environ={"TOPGUN_TRACE_PLUGINS": "1"})
    call_hook_sync(pm.hook.register_commands, cli=FakeGroup())
    messages = [r.getMessage() for r in caplog.records if r.name == "topgun.hooks.trace"]
    assert any(m.lstrip().startswith("register_commands [hook]") for m in messages)
    assert any("finish register_commands -->" in m for m in messages)


def test_a_plugin_that_fails_to_import_is_an_error_naming_its_entry_point() -> None:
    ep = entry_point("broken", "topgun_no_such_module_for_tests")
    with pytest.raises(PluginLoadError) as raised:
        make_plugin_manager(entry_points=[ep], environ={})
    message = str(raised.value)
    assert "plugin 'broken' (entry point broken = topgun_no_such_module_for_tests)" in message
    assert "ModuleNotFoundError" in message
    assert "TOPGUN_DISABLE_PLUGINS=broken" in message


def test_a_disabled_broken_plugin_is_not_imported() -> None:
    ep = entry_point("broken", "topgun_no_such_module_for_tests")
    pm = make_plugin_manager(entry_points=[ep], environ={"TOPGUN_DISABLE_PLUGINS": "broken"})
    assert pm.plugin_info() == []


def test_a_misspelt_hook_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def befor_op(op: Any) -> None: ...

    ep = entry_point("typo", plugin_module(monkeypatch, "fake_typo", befor_op=befor_op))
    with pytest.raises(PluginLoadError, match=r"'typo'.*befor_op, which is not a topgun hook"):
        make_plugin_manager(entry_points=[ep], environ={})


def test_an_optional_hook_of_a_newer_topgun_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    module = plugin_module(monkeypatch, "fake_future")
    sys.modules[module].on_future_event = hookimpl(optionalhook=True)(lambda: None)
    pm = make_plugin_manager(entry_points=[entry_point("future", module)], environ={})
    assert pm.plugin_info()[0].hooks == ("on_future_event",)


def test_an_argument_the_hook_does_not_have_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def before_op(op: Any, user: Any) -> None: ...

    ep = entry_point("badargs", plugin_module(monkeypatch, "fake_badargs", before_op=before_op))
    with pytest.raises(PluginLoadError, match=r"(?s)'badargs'.*is invalid.*\{'user'\}"):
        make_plugin_manager(entry_points=[ep], environ={})


def test_a_name_clash_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    clash = entry_point("topgun.cli", plugin_module(monkeypatch, "fake_clash"))
    with pytest.raises(PluginLoadError, match="the name 'topgun\\.cli' is taken by topgun"):
        make_plugin_manager(entry_points=[clash], environ={})
    same_module = entry_point("again", "topgun.cli")
    with pytest.raises(PluginLoadError, match=r"'again'.*is invalid.*already registered"):
        make_plugin_manager(entry_points=[same_module], environ={})


def test_installed_entry_points_are_read_when_none_are_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = plugin_module(monkeypatch, "fake_installed", register_commands=lambda cli: None)
    seen: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        seen.append(group)
        return [entry_point("installed", module)]

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    pm = make_plugin_manager(environ={})
    assert seen == ["topgun"]
    assert [info.name for info in pm.plugin_info()] == ["installed"]
