"""The ways topgun calls hooks, one per kind of hook.

pluggy calls implementations synchronously; an `async def` implementation hands back a
coroutine. The async helpers here call implementations one at a time, in pluggy's call
order, and await each result before the next implementation runs, so a hook behaves the
same whether its implementations are sync, async or mixed:

- `call_hook_async`: every implementation; the list of non-`None` results.
- `call_first_async`: implementations until one returns non-`None` (`firstresult` hooks).
- `call_chain_async`: each implementation gets the value the previous one returned.
- `call_hook_sync`: a plain pluggy call for sync-only hooks; an awaitable result is an error.
- `collect_registrations`: a `register_*` hook; name -> what was registered, and by whom.

Hook wrappers (`wrapper=True`) are refused by the one-at-a-time helpers: a wrapper
around coroutine creation would not wrap the work the coroutine does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pluggy import HookCaller, HookImpl

from topgun.hooks.errors import PluginError
from topgun.hooks.outcomes import DROP

T = TypeVar("T")


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Return `value`, awaited first if it is awaitable (datasette's helper of that name)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _is_firstresult(hook: HookCaller) -> bool:
    return bool(hook.spec is not None and hook.spec.opts.get("firstresult"))


def _check_arguments(hook: HookCaller, kwargs: Mapping[str, object]) -> None:
    if hook.spec is not None:
        missing = [name for name in hook.spec.argnames if name not in kwargs]
        if missing:
            raise TypeError(f"hook {hook.name} called without argument(s) {', '.join(missing)}")


def _in_call_order(hook: HookCaller) -> list[HookImpl]:
    """The implementations, in the order pluggy would call them (LIFO, tryfirst/trylast)."""
    impls = hook.get_hookimpls()
    wrappers = [impl.plugin_name for impl in impls if impl.wrapper or impl.hookwrapper]
    if wrappers:
        raise PluginError(
            f"hook {hook.name} calls its implementations one at a time, so hook wrappers are "
            f"not supported; plugin(s) {', '.join(wrappers)} implement it as a wrapper"
        )
    return impls[::-1]


def _call_one(hook: HookCaller, impl: HookImpl, kwargs: Mapping[str, object]) -> Any:
    """Call one implementation through the plugin manager, so tracing sees it.

    pluggy has no public way to call a single implementation; `_hookexec` is what
    `HookCaller.__call__` itself uses (same signature since pluggy 1.0).
    """
    results = cast(list[Any], hook._hookexec(hook.name, [impl], kwargs, False))
    return results[0] if results else None


def _close_awaitable(value: object) -> None:
    """Close an unawaited coroutine so it does not warn 'never awaited'."""
    if inspect.iscoroutine(value):
        value.close()


async def call_hook_async(hook: HookCaller, /, **kwargs: object) -> list[Any]:
    """Call every implementation in turn, awaiting each; return the non-`None` results.

    An exception stops the call: later implementations do not run.
    """
    if _is_firstresult(hook):
        raise TypeError(f"hook {hook.name} is firstresult: call it with call_first_async")
    _check_arguments(hook, kwargs)
    results = []
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call_one(hook, impl, kwargs))
        if result is not None:
            results.append(result)
    return results


async def call_first_async(hook: HookCaller, /, **kwargs: object) -> Any:
    """Call implementations in turn until one returns (or resolves to) non-`None`.

    Returns that result, or `None` when every implementation declined.
    """
    _check_arguments(hook, kwargs)
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call_one(hook, impl, kwargs))
        if result is not None:
            return result
    return None


async def call_chain_async(hook: HookCaller, value_arg: str, /, **kwargs: object) -> Any:
    """Pass the argument `value_arg` through every implementation in turn.

    Each implementation receives the value the previous one returned (`None` keeps it).
    `DROP` ends the chain and is returned. Returns the final value.
    """
    if value_arg not in kwargs:
        raise TypeError(f"call_chain_async: the chained argument {value_arg!r} is not given")
    _check_arguments(hook, kwargs)
    args = dict(kwargs)
    for impl in _in_call_order(hook):
        result = await await_me_maybe(_call_one(hook, impl, args))
        if result is DROP:
            return DROP
        if result is not None:
            args[value_arg] = result
    return args[value_arg]


def call_hook_sync(hook: HookCaller, /, **kwargs: object) -> list[Any]:
    """Call a sync-only hook (a plain pluggy call); return the non-`None` results.

    An implementation that hands back an awaitable is a `PluginError`, not a silently
    dropped coroutine.
    """
    if _is_firstresult(hook):
        raise TypeError(f"hook {hook.name} is firstresult: call it with call_first_async")
    results = cast(list[Any], hook(**kwargs))
    if any(inspect.isawaitable(result) for result in results):
        for result in results:
            _close_awaitable(result)
        culprits = [
            impl.plugin_name
            for impl in hook.get_hookimpls()
            if inspect.iscoroutinefunction(impl.function)
        ]
        raise PluginError(
            f"hook {hook.name} is sync only, but plugin(s) "
            f"{', '.join(culprits) or '(unknown)'} returned an awaitable"
        )
    return results


@dataclass(frozen=True)
class Registration:
    """One `register(name, obj, **options)` call made by plugin `plugin`."""

    name: str
    obj: Any
    plugin: str
    options: Mapping[str, Any] = field(default_factory=dict)


class _Registrar:
    """The `register` callable handed to one plugin's `register_*` implementation."""

    def __init__(self, hook: str, plugin: str, registered: dict[str, Registration]) -> None:
        self._hook = hook
        self._plugin = plugin
        self._registered = registered

    def __call__(self, name: str, obj: Any, /, **options: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {self._plugin} called {self._hook}'s register with name {name!r}; "
                "names are non-empty strings"
            )
        if name in self._registered:
            raise PluginError(
                f"{self._hook}: plugin {self._plugin} registered {name!r}, which plugin "
                f"{self._registered[name].plugin} already registered"
            )
        self._registered[name] = Registration(name, obj, self._plugin, options)


def collect_registrations(hook: HookCaller, /, **kwargs: object) -> dict[str, Registration]:
    """Call a `register_*(register)` hook and return what was registered, by name.

    `kwargs` are the hook's other arguments (`config` for `register_codecs`).
    Implementations are called one at a time so every registration is attributed to its
    plugin: an empty or non-string name, or a name registered twice, is a `PluginError`
    naming the plugins involved. The dict keeps registration order.
    """
    registered: dict[str, Registration] = {}
    for impl in _in_call_order(hook):
        register = _Registrar(hook.name, impl.plugin_name, registered)
        result = _call_one(hook, impl, {**kwargs, "register": register})
        if inspect.isawaitable(result):
            _close_awaitable(result)
            raise PluginError(
                f"hook {hook.name} is sync only, but plugin {impl.plugin_name} "
                "returned an awaitable"
            )
    return registered
