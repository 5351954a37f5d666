"""Errors and warnings of the plugin system itself (not of what plugins do)."""

from __future__ import annotations


class PluginError(Exception):
    """A plugin broke the hook contract: a duplicate registration name, an async
    implementation of a sync-only hook, a hook wrapper where none is supported."""


class PluginLoadError(PluginError):
    """A plugin could not be loaded: its import failed, it implements an unknown hook or
    with unknown arguments, or its name clashes with another plugin. The message names
    the entry point and says how to start without it."""


class PluginWarning(UserWarning):
    """A plugin setting that is probably a mistake, such as an unknown name in
    `TOPGUN_LOAD_PLUGINS` or `TOPGUN_DISABLE_PLUGINS`."""
