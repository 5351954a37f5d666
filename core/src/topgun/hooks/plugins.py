"""The plugin manager: built-in plugins, entry-point plugins, and the environment switches.

`make_plugin_manager()` builds the manager the way `topgun` does:

1. the hook specifications of `topgun.hooks.hookspecs`;
2. the built-in plugins, `DEFAULT_PLUGINS`: modules inside topgun that implement hooks
   exactly like outside plugins do (datasette's and pytest's default plugins);
3. every entry point of the group `topgun` (`[project.entry-points.topgun]`), registered
   under the entry point's name.

pluggy calls implementations in reverse registration order, so entry-point plugins run
before built-ins (and can override them); entry points are registered so that they run
in alphabetical order of name. `tryfirst` / `trylast` on a `@hookimpl` override both.

Environment (read once, when the manager is built):

- `TOPGUN_LOAD_PLUGINS=a,b`: load only these entry-point plugins; set but empty: none.
  Built-ins are always loaded.
- `TOPGUN_DISABLE_PLUGINS=a,b`: never load these (entry-point or built-in names).
- `TOPGUN_TRACE_PLUGINS=1`: log every hook call, its arguments and results to the logger
  `topgun.hooks.trace` at INFO (to stderr when logging is not configured).

An unknown name in the first two is a `PluginWarning`. A plugin that fails to import or
to validate is a `PluginLoadError` naming its entry point: topgun refuses to start
without a plugin the user installed (silently running without, say, encryption at rest
would be worse), and the message says how to disable it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec
import pluggy

from topgun.hooks import hookspecs
from topgun.hooks.errors import PluginLoadError, PluginWarning

ENTRY_POINT_GROUP = "topgun"
"""The entry-point group plugins declare themselves in."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "topgun.cli",
    "topgun.client.websocket",
    "topgun.client.http",
    "topgun.server.security",
    "topgun.server.websocket",
    "topgun.server.http_sync",
    "topgun.server.sse",
    "topgun.search.providers",
    "topgun.storage.memory",
    "topgun.storage.sqlite",
    "topgun.storage.writebehind",
)
"""Modules inside topgun registered as built-in plugins, under their module name."""

BUILTIN = "built-in"
"""The version `topgun plugins` shows for built-in plugins."""

TRACE_LOGGER = "topgun.hooks.trace"
"""The logger `TOPGUN_TRACE_PLUGINS=1` sends hook calls to."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _names(value: str) -> frozenset[str]:
    return frozenset(name.strip() for name in value.split(",") if name.strip())


@dataclass(frozen=True)
class PluginSelection:
    """Which plugins to load, read from the `TOPGUN_*_PLUGINS` environment variables."""

    load: frozenset[str] | None = None
    """Entry-point plugins to load; `None` means all of them."""
    disable: frozenset[str] = frozenset()
    """Plugins (entry-point or built-in) never to load; wins over `load`."""
    trace: bool = False
    """Log every hook call."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PluginSelection:
        """Read `TOPGUN_LOAD_PLUGINS`, `TOPGUN_DISABLE_PLUGINS` and `TOPGUN_TRACE_PLUGINS`."""
        load = environ.get("TOPGUN_LOAD_PLUGINS")
        trace = environ.get("TOPGUN_TRACE_PLUGINS", "").strip().lower()
        if trace not in _TRUE | _FALSE:
            warnings.warn(
                f"TOPGUN_TRACE_PLUGINS={trace!r} is neither true (1, true, yes, on) nor false "
                "(0, false, no, off, empty); hook tracing stays off",
                PluginWarning,
                stacklevel=2,
            )
        return cls(
            load=None if load is None else _names(load),
            disable=_names(environ.get("TOPGUN_DISABLE_PLUGINS", "")),
            trace=trace in _TRUE,
        )


class PluginInfo(msgspec.Struct, frozen=True):
    """One loaded plugin as `topgun plugins` reports it."""

    name: str
    """The entry-point name, or the module name of a built-in."""
    version: str | None
    """The distribution's version; `"built-in"` for built-ins; `None` when unknown."""
    distribution: str | None
    """The distribution the entry point comes from (`"topgun"` for built-ins)."""
    hooks: tuple[str, ...]
    """The hooks it implements, sorted."""
    builtin: bool


@dataclass(frozen=True)
class _Origin:
    distribution: str | None
    version: str | None
    builtin: bool


class TopgunPluginManager(pluggy.PluginManager):
    """A pluggy `PluginManager` for the project `topgun` that knows where plugins came from."""

    def __init__(self) -> None:
        super().__init__("topgun")
        self.add_hookspecs(hookspecs)
        self._origins: dict[str, _Origin] = {}

    def load_builtin_plugins(self, disable: frozenset[str] = frozenset()) -> None:
        """Import and register every module of `DEFAULT_PLUGINS` not in `disable`."""
        for module_name in DEFAULT_PLUGINS:
            if module_name in disable:
                self.set_blocked(module_name)
                continue
            module = importlib.import_module(module_name)
            self._register_checked(module, module_name, f"built-in plugin {module_name}")
            self._origins[module_name] = _Origin("topgun", BUILTIN, builtin=True)

    def load_entry_points(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint],
        selection: PluginSelection = PluginSelection(),
    ) -> None:
        """Load and register the entry points `selection` allows, by entry-point name."""
        chosen = [
            ep
            for ep in entry_points
            if ep.name not in selection.disable
            and (selection.load is None or ep.name in selection.load)
        ]
        for name in selection.disable:
            self.set_blocked(name)
        # Registered in reverse so that pluggy (LIFO) calls them in alphabetical order.
        for ep in sorted(chosen, key=lambda ep: ep.name, reverse=True):
            self._load_entry_point(ep)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist
        dist_name = dist.name if dist is not None else None
        version = dist.version if dist is not None else None
        where = f"plugin {ep.name!r} (entry point {ep.name} = {ep.value}"
        where += f", distribution {dist_name} {version})" if dist is not None else ")"
        remedy = f"fix or uninstall it, or set TOPGUN_DISABLE_PLUGINS={ep.name} to run without it"
        if self.get_plugin(ep.name) is not None:
            other = self._origins.get(ep.name)
            owner = other.distribution if other is not None else "another plugin"
            raise PluginLoadError(f"{where}: the name {ep.name!r} is taken by {owner}; {remedy}")
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"{where} failed to import: {type(exc).__name__}: {exc}; {remedy}"
            ) from exc
        self._register_checked(plugin, ep.name, where, remedy)
        self._origins[ep.name] = _Origin(dist_name, version, builtin=False)

    def _register_checked(self, plugin: object, name: str, where: str, remedy: str = "") -> None:
        """Register, then refuse implementations of hooks that do not exist (typos)."""
        try:
            self.register(plugin, name=name)
            for hook in self.get_hookcallers(plugin) or []:
                if not hook.has_spec():
                    unknown = [i for i in hook.get_hookimpls() if i.plugin is plugin]
                    if any(not impl.optionalhook for impl in unknown):
                        raise pluggy.PluginValidationError(
                            plugin, f"it implements {hook.name}, which is not a topgun hook"
                        )
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.is_registered(plugin):
                self.unregister(plugin)
            detail = f"{where} is invalid: {exc}" + (f"; {remedy}" if remedy else "")
            raise PluginLoadError(detail) from exc

    def plugin_info(self, *, include_builtin: bool = False) -> list[PluginInfo]:
        """The loaded plugins (built-ins only if asked), sorted by name."""
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # a blocked name
                continue
            origin = self._origins.get(name, _Origin(None, None, builtin=False))
            if origin.builtin and not include_builtin:
                continue
            hooks = tuple(sorted(hook.name for hook in self.get_hookcallers(plugin) or []))
            infos.append(
                PluginInfo(name, origin.version, origin.distribution, hooks, origin.builtin)
            )
        return sorted(infos, key=lambda info: info.name)

    def trace_to_log(self) -> None:
        """Log every hook call (pluggy's tracing) to `TRACE_LOGGER` at INFO."""
        logger = logging.getLogger(TRACE_LOGGER)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        if not logger.hasHandlers():
            logger.addHandler(logging.StreamHandler())
        self.trace.root.setwriter(lambda message: logger.info(message.rstrip("\n")))
        self.enable_tracing()


def _warn_unknown(variable: str, unknown: Iterable[str], known: Iterable[str]) -> None:
    names = sorted(unknown)
    if names:
        warnings.warn(
            f"{variable} names unknown plugin(s): {', '.join(names)} "
            f"(known: {', '.join(sorted(known)) or 'none'})",
            PluginWarning,
            stacklevel=3,
        )


def make_plugin_manager(
    *,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TopgunPluginManager:
    """Build a plugin manager: hookspecs, built-in plugins, entry points, environment.

    `entry_points` defaults to the installed entry points of the group `topgun`; pass
    `()` for a manager with built-ins only (what tests want, so that stray installed
    plugins stay out). `environ` defaults to `os.environ`.
    """
    selection = PluginSelection.from_environ(os.environ if environ is None else environ)
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    entry_points = list(entry_points)
    available = {ep.name for ep in entry_points}
    if selection.load is not None:
        _warn_unknown("TOPGUN_LOAD_PLUGINS", selection.load - available, available)
    known = available | set(DEFAULT_PLUGINS)
    _warn_unknown("TOPGUN_DISABLE_PLUGINS", selection.disable - known, known)
    pm = TopgunPluginManager()
    if selection.trace:
        pm.trace_to_log()
    pm.load_builtin_plugins(selection.disable)
    pm.load_entry_points(entry_points, selection)
    return pm
