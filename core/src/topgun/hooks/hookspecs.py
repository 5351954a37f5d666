"""Every extension point of topgun: THE list of hooks a plugin may implement.

A plugin implements a hook by defining a function of the same name decorated with
`@hookimpl`, taking any subset of the hook's arguments (by name). Each docstring says
when the hook is called, what it may return, whether it may be async, and which helper of
`topgun.hooks` calls it. docs/plugins.md repeats every signature and docstring; a test
keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import click
import pluggy

from topgun.hooks.contracts import (
    Connection,
    ContextualCodec,
    EntryProcessor,
    OpContext,
    Principal,
    Register,
    ResolverRegister,
    ValueCodec,
)

hookspec = pluggy.HookspecMarker("topgun")
hookimpl = pluggy.HookimplMarker("topgun")


# --- lifecycle -----------------------------------------------------------------------


@hookspec
def on_startup(server: Any) -> Awaitable[None] | None:
    """Called once when the server has started: storage is open, connections are not yet
    accepted. `server` is the running `topgun.server.Server`.

    Use it to open the plugin's own resources. The return value is ignored; raising
    aborts the start. May be async. Called with `call_hook_async`.
    """


@hookspec
def on_shutdown(server: Any) -> Awaitable[None] | None:
    """Called once when the server stops, after connections are closed and before storage
    is closed. `server` is the `topgun.server.Server` stopping.

    Use it to flush and release what `on_startup` opened. The return value is ignored.
    May be async. Called with `call_hook_async`.
    """


@hookspec
def register_config_sections(register: Register[type[Any]]) -> None:
    """Called when the configuration is loaded, before it is validated.

    Call `register(name, section_type)` to claim the TOML table `[name]` and the
    `TOPGUN_<NAME>_*` environment variables; `section_type` is a `msgspec.Struct`
    subclass whose fields (with defaults) describe the section, so a bad value is reported
    with the key that holds it. Returns nothing. Sync only. Called with
    `collect_registrations`.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Called when the `topgun` command is built, before it parses its arguments.

    Add sub-commands with `@cli.command()` or `cli.add_command(...)`. Built-in commands
    (`serve`, `plugins`) arrive through this hook too. Returns nothing. Sync only.
    Called with `call_hook_sync`.
    """


# --- interceptors --------------------------------------------------------------------


@hookspec
def on_connection(connection: Connection) -> Awaitable[None] | None:
    """Called when a client connection is accepted, before `AUTH_REQUIRED` is sent and
    before the client is authenticated (`connection.principal` is `None`).

    Raise `Rejected(reason)` to refuse the connection: it is closed with code 4000.
    The return value is ignored. May be async. Called with `call_hook_async`.
    """


@hookspec
def on_authenticated(connection: Connection, principal: Principal) -> Awaitable[None] | None:
    """Called when a connection's token was verified and enriched, before `AUTH_ACK` is
    sent. `principal` is the final principal, also available as `connection.principal`.

    Raise `Rejected(reason)` to refuse it: the client gets `AUTH_FAIL` with the reason and
    the connection is closed with 4001. The return value is ignored. May be async. Called
    with `call_hook_async`.
    """


@hookspec
def on_auth_failed(connection: Connection | None, reason: str) -> Awaitable[None] | None:
    """Called when an authentication was refused, before the client hears it: a bad,
    expired or missing token, a verifier or `enrich_principal` rejection, or an
    `on_authenticated` plugin refusing. `reason` is the error the client gets (`AUTH_FAIL`,
    or the HTTP 401 body); `connection` is the WebSocket connection (its `principal` is
    `None`), or `None` for an HTTP request (`POST /sync`, `GET /events`).

    Use it for audit and intrusion detection. The return value is ignored; raising is
    logged and does not change the outcome. May be async. Called with `call_hook_async`.
    """


@hookspec
def before_op(op: Any, context: OpContext) -> Any | Awaitable[Any]:
    """Called for every client write (WebSocket or HTTP) after it was validated and
    authorized, before it is merged (PROTOCOL.md §6.1 step 4). `op` is the decoded
    `topgun.protocol` op; `context` says who sent it and how.

    Implementations run one after another, each seeing the op as the previous one left
    it. Return `None` to keep the op, a replacement op to transform it, or `DROP` to drop
    it (it fails with "Dropped by server policy"); raise `Rejected(reason, code=...)` to
    reject it (the reason is the op's error). May be async. Called with
    `call_chain_async(hook, "op", ...)`.
    """


@hookspec
def after_op(op: Any, context: OpContext, result: Any) -> Awaitable[None] | None:
    """Called for every client write once it reached its outcome: merged and its events
    delivered, or failed. `op` is the op as merged (after `before_op`), `result` its
    `topgun.protocol` `OpResult` (`success`, `achievedLevel`, `error`).

    Use it for audit, metrics, side effects. The return value is ignored; raising is
    logged and does not change the result. May be async. Called with `call_hook_async`.
    """


@hookspec
def on_disconnect(connection: Connection, code: int, reason: str) -> Awaitable[None] | None:
    """Called once when a connection has closed, for any cause, with the WebSocket close
    `code` and `reason` (PROTOCOL.md §1.4).

    The return value is ignored. May be async. Called with `call_hook_async`.
    """


@hookspec
def on_admin_action(
    connection: Connection | None, principal: Principal, action: str, target: str, error: str | None
) -> Awaitable[None] | None:
    """Called after a client request that changes how the server behaves rather than a
    map's data, whether it took effect or not: `action` is the request's message type
    (`REGISTER_RESOLVER`, `UNREGISTER_RESOLVER`), `target` what it acted on
    (`<map>/<resolver>`), `error` why it was refused (`None`: it took effect).

    Use it for audit. The return value is ignored; raising is logged and does not change
    the outcome. May be async. Called with `call_hook_async`.
    """


# --- auth ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def verify_token(
    token: str, connection: Connection | None
) -> Principal | Awaitable[Principal | None] | None:
    """Called to verify the token of an `AUTH` message or of an HTTP request's bearer
    header (`connection` is `None` for HTTP).

    Return a `Principal` when the token is yours and valid, `None` when it is not yours
    (the next verifier is asked; the built-in JWT verifier of PROTOCOL.md §4.2 is asked
    last), or raise `Rejected(reason)` when it is yours and invalid (`AUTH_FAIL` with the
    reason). The first principal returned wins. May be async. Called with
    `call_first_async`.
    """


@hookspec
def enrich_principal(
    principal: Principal, connection: Connection | None
) -> Principal | Awaitable[Principal | None] | None:
    """Called after `verify_token` returned a principal, to add roles or claims (from a
    user directory, say) before any authorization decision.

    Implementations run one after another, each seeing the principal as the previous one
    left it. Return `None` to keep it or a replacement `Principal`. Raise `Rejected` to
    refuse authentication. May be async. Called with
    `call_chain_async(hook, "principal", ...)`.
    """


@hookspec
def check_permission(principal: Principal, resource: str, action: str) -> bool | None:
    """Called on every authorization check: `resource` is a map name, `topic:<name>`,
    `lock:<name>` or `counter:<name>`; `action` is `READ`, `PUT` or `REMOVE`
    (PROTOCOL.md §4.3).

    Return `False` to deny, `True` to allow, `None` for no opinion. Any `False` denies;
    otherwise any `True` allows; with no opinion the configured role policies decide.
    Sync only (it sits on every read and write path). Called with `call_hook_sync`.
    """


@hookspec
def on_permission_denied(principal: Principal, resource: str, action: str) -> None:
    """Called when an authorization check refused a client request: `resource` and
    `action` as in `check_permission`. Not called for the checks that only filter what a
    principal is shown (field-level security, listings).

    Use it for audit. The return value is ignored; raising is logged and does not change
    the denial. Sync only (it sits on the request path). Called with `call_hook_sync`.
    """


# --- storage -------------------------------------------------------------------------


@hookspec
def register_storage(register: Register[Any]) -> None:
    """Called when the server opens its storage, to learn the storage backends.

    Call `register(name, factory)`; the configuration's `storage.backend` picks one by
    name (built-ins: `memory`, `sqlite`). `factory` builds the backend from the server
    configuration; its exact contract is the one `topgun.storage` defines. Returns
    nothing. Sync only. Called with `collect_registrations`.
    """


@hookspec
def register_storage_wrappers(register: Register[Any]) -> None:
    """Called when the server opens its storage, to learn the storage wrappers.

    Call `register(name, wrap)`: `wrap(backend, config)` returns a backend that adds a
    behaviour (write-behind, hot/cold tiering) around `backend`. The configuration lists
    the wrappers to apply, innermost first. Returns nothing. Sync only. Called with
    `collect_registrations`.
    """


@hookspec
def register_codecs(register: Register[ValueCodec | ContextualCodec], config: Any) -> None:
    """Called when the server opens its storage, to learn the value codecs.

    Call `register(name, codec)` with a `ValueCodec` (`encode(data)` / `decode(data)`) or
    a `ContextualCodec` (`encode_for(data, context)` / `decode_for(data, context)`, told
    the area, map and key the bytes belong to, e.g. to bind a ciphertext to them).
    `config` is the `topgun.server.ServerConfig` storage is opened for (a plugin reads its
    section with `config.section(name)`), or `None` when storage is opened without one.
    The configuration lists the codecs to apply to persisted bytes (e.g. compress then
    encrypt); storage encodes in that order and decodes in reverse. Raise
    `topgun.storage.StorageConfigError` when a listed codec cannot be built (a missing
    key). Returns nothing. Sync only. Called with `collect_registrations`.
    """


# --- transports ----------------------------------------------------------------------


@hookspec
def register_routes(app: Any, server: Any) -> None:
    """Called when the server builds its ASGI app, before it serves any request.

    `app` is the Quart application and `server` the `topgun.server.Server` it belongs to:
    add WebSocket and HTTP routes or blueprints to `app`. The built-in WebSocket, HTTP
    sync and SSE endpoints arrive through this hook too. Returns nothing. Sync only.
    Called with `call_hook_sync`.
    """


@hookspec
def register_connection_providers(register: Register[Any]) -> None:
    """Called when a `TopGunClient` is created, to learn how to reach a server.

    Call `register(scheme, factory)`: the client picks the factory by the scheme of the
    server URL it was given (`ws`, `wss`, `http`, ...); the factory returns the client's
    connection object, whose contract `topgun.client` defines. Returns nothing. Sync
    only. Called with `collect_registrations`.
    """


# --- search --------------------------------------------------------------------------


@hookspec
def register_search_providers(register: Register[Any]) -> None:
    """Called when the server starts its search service.

    Call `register(name, provider)`: a provider indexes map values and answers a query
    with a ranked list of keys; the ranked lists of all providers a search uses are fused
    by reciprocal rank fusion. Its contract is the one `topgun.search` defines (built-in:
    `bm25`). Returns nothing. Sync only. Called with `collect_registrations`.
    """


@hookspec
def register_embedders(register: Register[Any]) -> None:
    """Called when vector search (the `topgun-vector` distribution) starts, to learn the
    embedders that turn text into vectors.

    Call `register(name, factory)`: `factory(model)` returns an embedder for `model` (a
    model name or local path from the `[vector]` configuration; `None` for the embedder's
    default) — an object with `name: str`, `dimensions: int` and a blocking
    `embed(texts) -> numpy float32 array (len(texts), dimensions)` of unit vectors, which
    the server calls on a worker thread. The configuration's `vector.embedder` picks one
    by name (`topgun_vector` registers `sentence-transformers` and `hash`). Returns
    nothing. Sync only. Called with `collect_registrations`.
    """


# --- processors and resolvers --------------------------------------------------------


@hookspec
def register_entry_processors(register: Register[EntryProcessor]) -> None:
    """Called when the server starts, to learn the entry processors clients may name.

    Call `register(name, processor)` (PROTOCOL.md §8.1): `ENTRY_PROCESS` runs it
    atomically on one key. Client-supplied code is never run; only registered names
    exist. Returns nothing. Sync only. Called with `collect_registrations`.
    """


@hookspec
def register_conflict_resolvers(register: ResolverRegister) -> None:
    """Called when the server starts, to learn the conflict resolvers maps may bind.

    Call `register(name, resolver, priority=50)` (PROTOCOL.md §8.2): maps bind a resolver
    by name through configuration or `REGISTER_RESOLVER`. Returns nothing. Sync only.
    Called with `collect_registrations`.
    """
