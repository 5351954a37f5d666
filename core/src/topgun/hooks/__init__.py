"""topgun's plugin system: hook specifications, the plugin manager, and how hooks are called.

A plugin is a module with `@hookimpl` functions named after hooks of
`topgun.hooks.hookspecs`, declared as an entry point of the group `topgun`.
"""

from topgun.hooks.calls import (
    Registration,
    await_me_maybe,
    call_chain_async,
    call_first_async,
    call_hook_async,
    call_hook_sync,
    collect_registrations,
)
from topgun.hooks.contracts import (
    ConflictResolver,
    Connection,
    ContextualCodec,
    EntryProcessor,
    OpContext,
    Principal,
    Register,
    ResolverRegister,
    ValueCodec,
)
from topgun.hooks.errors import PluginError, PluginLoadError, PluginWarning
from topgun.hooks.hookspecs import hookimpl, hookspec
from topgun.hooks.outcomes import DROP, Rejected
from topgun.hooks.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginSelection,
    TopgunPluginManager,
    make_plugin_manager,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "DROP",
    "ENTRY_POINT_GROUP",
    "ConflictResolver",
    "Connection",
    "ContextualCodec",
    "EntryProcessor",
    "OpContext",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginSelection",
    "PluginWarning",
    "Principal",
    "Register",
    "Registration",
    "Rejected",
    "ResolverRegister",
    "TopgunPluginManager",
    "ValueCodec",
    "await_me_maybe",
    "call_chain_async",
    "call_first_async",
    "call_hook_async",
    "call_hook_sync",
    "collect_registrations",
    "hookimpl",
    "hookspec",
    "make_plugin_manager",
]
