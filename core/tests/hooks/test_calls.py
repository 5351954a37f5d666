"""The hook-calling helpers: order, sync/async mixing, chains, first results, registrations."""

from __future__ import annotations

import logging
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from topgun.hooks import (
    DROP,
    PluginError,
    TopgunPluginManager,
    await_me_maybe,
    call_chain_async,
    call_first_async,
    call_hook_async,
    call_hook_sync,
    collect_registrations,
    hookimpl,
)

pytestmark = pytest.mark.anyio


def recorder(name: str, log: list[str], *, is_async: bool, result: Any = None) -> object:
    """A plugin implementing `on_startup`, sync or async: logs `name`, returns `result`."""

    def sync_startup(server: Any) -> Any:
        log.append(name)
        return result

    async def async_startup(server: Any) -> Any:
        return sync_startup(server)

    return SimpleNamespace(on_startup=hookimpl(async_startup if is_async else sync_startup))


def register_recorders(pm: TopgunPluginManager, *specs: tuple[str, bool, Any]) -> list[str]:
    """Register one recorder per `(name, is_async, result)`, in order; return their log."""
    log: list[str] = []
    for name, is_async, result in specs:
        pm.register(recorder(name, log, is_async=is_async, result=result), name=name)
    return log


async def test_await_me_maybe_awaits_only_awaitables() -> None:
    async def seven() -> int:
        return 7

    assert await await_me_maybe(seven()) == 7
    assert await await_me_maybe(8) == 8


async def test_call_hook_async_runs_mixed_implementations_in_call_order(
    pm: TopgunPluginManager,
) -> None:
    # Registered a, b, c: pluggy calls the last registered first.
    log = register_recorders(pm, ("a", False, 1), ("b", True, None), ("c", True, 3))
    results = await call_hook_async(pm.hook.on_startup, server=object())
    assert log == ["c", "b", "a"]
    assert results == [3, 1]  # None results are left out, as pluggy does


async def test_each_async_implementation_finishes_before_the_next_starts(
    pm: TopgunPluginManager,
) -> None:
    events: list[str] = []

    class Slow:
        @hookimpl(tryfirst=True)
        async def on_startup(self, server: Any) -> None:
            events.append("slow begins")
            await anyio.lowlevel.checkpoint()
            events.append("slow ends")

    class Quick:
        @hookimpl
        def on_startup(self, server: Any) -> None:
            events.append("quick")

    pm.register(Quick(), name="quick")
    pm.register(Slow(), name="slow")
    await call_hook_async(pm.hook.on_startup, server=None)
    assert events == ["slow begins", "slow ends", "quick"]


async def test_an_exception_stops_later_implementations(pm: TopgunPluginManager) -> None:
    ran: list[str] = []

    class Failing:
        @hookimpl(tryfirst=True)
        async def on_startup(self, server: Any) -> None:
            raise RuntimeError("disk full")

    class Later:
        @hookimpl
        async def on_startup(self, server: Any) -> None:
            ran.append("later")

    pm.register(Later(), name="later")
    pm.register(Failing(), name="failing")
    with pytest.raises(RuntimeError, match="disk full"):
        await call_hook_async(pm.hook.on_startup, server=None)
    assert ran == []  # not run, and no "coroutine never awaited" warning either


async def test_missing_argument_is_a_type_error(pm: TopgunPluginManager) -> None:
    with pytest.raises(TypeError, match=r"without argument.*server"):
        await call_hook_async(pm.hook.on_startup)


async def test_firstresult_hooks_refuse_the_collecting_helpers(pm: TopgunPluginManager) -> None:
    with pytest.raises(TypeError, match="firstresult"):
        await call_hook_async(pm.hook.verify_token, token="t", connection=None)
    with pytest.raises(TypeError, match="firstresult"):
        call_hook_sync(pm.hook.verify_token, token="t", connection=None)


async def test_hook_wrappers_are_refused_by_one_at_a_time_helpers(
    pm: TopgunPluginManager,
) -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_startup(self, server: Any) -> Generator[None, Any, Any]:
            return (yield)

    pm.register(Wrapper(), name="wrapping")
    with pytest.raises(PluginError, match=r"wrapper.*wrapping"):
        await call_hook_async(pm.hook.on_startup, server=None)


async def test_call_first_async_stops_at_the_first_non_none_result(
    pm: TopgunPluginManager,
) -> None:
    log = register_recorders(pm, ("last", False, "L"), ("middle", True, "M"), ("first", True, None))
    assert await call_first_async(pm.hook.on_startup, server=None) == "M"
    assert log == ["first", "middle"]


async def test_call_first_async_returns_none_when_all_decline(pm: TopgunPluginManager) -> None:
    register_recorders(pm, ("a", True, None), ("b", False, None))
    assert await call_first_async(pm.hook.on_startup, server=None) is None


def appender(suffix: str, *, is_async: bool) -> object:
    """A plugin whose `before_op` appends `suffix` to a string op, sync or async."""

    def sync_before_op(op: str) -> str:
        return op + suffix

    async def async_before_op(op: str) -> str:
        return sync_before_op(op)

    return SimpleNamespace(before_op=hookimpl(async_before_op if is_async else sync_before_op))


async def test_call_chain_async_threads_the_value_through_each_implementation(
    pm: TopgunPluginManager,
) -> None:
    pm.register(appender("-c", is_async=False), name="c")
    pm.register(appender("-b", is_async=True), name="b")
    pm.register(appender("-a", is_async=False), name="a")

    class Keeper:
        @hookimpl(trylast=True)
        def before_op(self, op: str, context: Any) -> None:
            assert context == "ctx"

    pm.register(Keeper(), name="keeper")
    assert await call_chain_async(pm.hook.before_op, "op", op="op", context="ctx") == "op-a-b-c"


async def test_drop_ends_the_chain(pm: TopgunPluginManager) -> None:
    class Dropper:
        @hookimpl(tryfirst=True)
        async def before_op(self, op: str) -> object:
            return DROP if op == "spam" else None

    pm.register(appender("-x", is_async=False), name="x")
    pm.register(Dropper(), name="dropper")
    assert await call_chain_async(pm.hook.before_op, "op", op="spam", context=None) is DROP
    assert await call_chain_async(pm.hook.before_op, "op", op="ham", context=None) == "ham-x"


async def test_call_chain_async_needs_the_chained_argument(pm: TopgunPluginManager) -> None:
    with pytest.raises(TypeError, match="'op' is not given"):
        await call_chain_async(pm.hook.before_op, "op", context=None)


def test_call_hook_sync_refuses_async_implementations(pm: TopgunPluginManager) -> None:
    class Sloppy:
        @hookimpl
        async def check_permission(self) -> bool:
            return True

    pm.register(Sloppy(), name="sloppy")
    with pytest.raises(PluginError, match=r"sync only.*sloppy"):
        call_hook_sync(pm.hook.check_permission, principal=None, resource="m", action="READ")


def test_collect_registrations_keeps_name_object_plugin_and_options(
    pm: TopgunPluginManager,
) -> None:
    class First:
        @hookimpl(tryfirst=True)
        def register_conflict_resolvers(self, register: Any) -> None:
            register("max", max, priority=90)

    class Second:
        @hookimpl
        def register_conflict_resolvers(self, register: Any) -> None:
            register("min", min)

    pm.register(Second(), name="second")
    pm.register(First(), name="first")
    found = collect_registrations(pm.hook.register_conflict_resolvers)
    assert list(found) == ["max", "min"]
    assert (found["max"].obj, found["max"].plugin, found["max"].options) == (
        max,
        "first",
        {"priority": 90},
    )
    assert (found["min"].obj, found["min"].plugin, found["min"].options) == (min, "second", {})


def test_a_name_registered_twice_names_both_plugins(pm: TopgunPluginManager) -> None:
    for plugin_name in ("zstd-a", "zstd-b"):

        class Codec:
            @hookimpl
            def register_codecs(self, register: Any) -> None:
                register("zstd", object())

        pm.register(Codec(), name=plugin_name)
    with pytest.raises(PluginError, match=r"zstd-a registered 'zstd'.*zstd-b already"):
        collect_registrations(pm.hook.register_codecs)


@pytest.mark.parametrize("name", ["", 42])
def test_a_registration_needs_a_name(pm: TopgunPluginManager, name: Any) -> None:
    class Nameless:
        @hookimpl
        def register_codecs(self, register: Any) -> None:
            register(name, object())

    pm.register(Nameless(), name="nameless")
    with pytest.raises(PluginError, match=r"nameless.*non-empty strings"):
        collect_registrations(pm.hook.register_codecs)


def test_an_async_register_implementation_is_refused(pm: TopgunPluginManager) -> None:
    class Eager:
        @hookimpl
        async def register_codecs(self, register: Any) -> None:
            register("never", object())

    pm.register(Eager(), name="eager")
    with pytest.raises(PluginError, match=r"sync only.*eager"):
        collect_registrations(pm.hook.register_codecs)


async def test_tracing_shows_calls_made_one_implementation_at_a_time(
    pm: TopgunPluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(appender("-a", is_async=True), name="a")
    caplog.set_level(logging.INFO, logger="topgun.hooks.trace")
    pm.trace_to_log()
    await call_chain_async(pm.hook.before_op, "op", op="op", context=None)
    traced = "\n".join(r.getMessage() for r in caplog.records if r.name == "topgun.hooks.trace")
    assert "before_op [hook]" in traced
    assert "op: op" in traced
