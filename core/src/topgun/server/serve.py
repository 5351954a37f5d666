"""`topgun serve`: configuration in, a `Server` hosted on an ASGI server, a clean exit out.

The command loads the configuration (TOML < `TOPGUN_*` < flags), binds the listening
socket itself, so that a port in use or any bind error is one line naming the address and
exit status 1 at once, prints a banner, and runs `topgun.server.Server` with the Quart app
of `topgun.server.app` on Hypercorn (or uvicorn). SIGINT or SIGTERM shut it down
gracefully: `Server.shutdown()` (SHUTDOWN_PENDING, close 1001, storage flushed), then exit 0.

`listen_socket` and `host` are the library side of the same thing: tests and embedding
applications serve an app on a socket they bound, until a trigger of their choosing.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import anyio
import click
import jwt
import msgspec

from topgun import __version__
from topgun.hooks import PluginError, TopgunPluginManager
from topgun.server.auth import KeyConfigError
from topgun.server.config import (
    ConfigError,
    ConfigWarning,
    Secret,
    ServerConfig,
    config_options,
    config_sections,
    read_config,
)
from topgun.storage.errors import StorageError

if TYPE_CHECKING:
    from quart import Quart

    from topgun.server.server import Server

AsgiServer = Literal["hypercorn", "uvicorn"]
"""The ASGI servers `topgun serve --server` can host the app on."""
ASGI_SERVERS: Final[tuple[str, ...]] = get_args(AsgiServer)

DEV_TOKEN_HOURS: Final = 24
"""How long the ADMIN token `topgun serve --dev` prints stays valid."""

SECURITY_PLUGIN: Final = "topgun.server.security"


class ServeError(Exception):
    """Why the server cannot start or run, as one message for the operator."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_socket(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A TCP socket listening on `host:port` (port 0: any free one).

    Raises `ServeError` naming the address when the name does not resolve, the port is in
    use, or binding is not permitted.
    """
    where = _address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {where}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        if exc.errno == errno.EADDRINUSE:
            reason += " (another server is running there; choose a port with --port)"
        elif exc.errno == errno.EACCES:
            reason += " (ports below 1024 need privileges; choose a port with --port)"
        raise ServeError(f"cannot listen on {where}: {reason}") from None
    return sock


def bound_address(sock: socket.socket) -> tuple[str, int]:
    """The host and port `sock` listens on (the real port when it was bound to 0)."""
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def check_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """Load the configured certificate and key, so a bad pair stops the start at once."""
    if config.tls.cert_file is None or config.tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServeError(
            f"[tls]: cannot load the certificate {config.tls.cert_file} "
            f"with the key {config.tls.key_file}: {reason}"
        ) from None
    return context


async def host(
    app: Quart,
    listener: socket.socket,
    config: ServerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    asgi_server: AsgiServer = "hypercorn",
) -> None:
    """Serve `app` on the listening socket `listener` until `shutdown_trigger` returns.

    `listener` is handed over: the ASGI server owns and closes it. The configuration gives
    the inbound frame limit (`max_frame_bytes`, close 1009) and TLS. Runs on asyncio.
    Cancelling `host` is a shutdown too: the ASGI server still stops in its orderly way
    (it runs shielded, in a task of its own, and is told to stop).
    """
    if asgi_server == "hypercorn":
        serve_until = _hypercorn(app, listener, config)
    elif asgi_server == "uvicorn":
        serve_until = _uvicorn(app, listener, config)
    else:
        raise ValueError(f"unknown ASGI server {asgi_server!r}; choose one of {ASGI_SERVERS}")
    stop = anyio.Event()

    async def serve() -> None:
        with anyio.CancelScope(shield=True):
            await serve_until(stop)
        tg.cancel_scope.cancel()  # it may also end on its own (failed start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        try:
            await shutdown_trigger()
        finally:
            stop.set()


ServeUntil = Callable[[anyio.Event], Awaitable[None]]


def _hypercorn(app: Quart, listener: socket.socket, config: ServerConfig) -> ServeUntil:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    hc = Config()
    hc.bind = [f"fd://{listener.detach()}"]
    hc.websocket_max_message_size = config.max_frame_bytes
    hc.loglevel = "WARNING"
    hc.accesslog = None
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        hc.certfile = str(config.tls.cert_file)
        hc.keyfile = str(config.tls.key_file)

    async def serve_until(stop: anyio.Event) -> None:
        await serve(app, hc, shutdown_trigger=stop.wait, mode="asgi")

    return serve_until


def _uvicorn(app: Quart, listener: socket.socket, config: ServerConfig) -> ServeUntil:
    try:
        import uvicorn
    except ImportError:
        raise ServeError(
            "uvicorn is not installed; install it with: pip install 'topgun[uvicorn]'"
        ) from None

    class Uvicorn(uvicorn.Server):
        """uvicorn without its own signal handling: the caller's trigger decides."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    tls: dict[str, Any] = {}
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        tls = {"ssl_certfile": config.tls.cert_file, "ssl_keyfile": config.tls.key_file}
    server = Uvicorn(
        uvicorn.Config(
            app,
            ws_max_size=config.max_frame_bytes,
            log_level="warning",
            access_log=False,
            lifespan="on",
            **tls,
        )
    )

    async def serve_until(stop: anyio.Event) -> None:
        async def exit_on_stop() -> None:
            await stop.wait()
            server.should_exit = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(exit_on_stop)
            await server.serve(sockets=[listener])
            tg.cancel_scope.cancel()

    return serve_until


def _load_config(
    pm: TopgunPluginManager, config_file: Path | None, overrides: Mapping[str, Any]
) -> ServerConfig:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        config = read_config(
            config_file, environ=os.environ, overrides=overrides, sections=config_sections(pm)
        )
    for warning in caught:
        click.echo(f"topgun serve: warning: {warning.message}", err=True)
    return config


def _with_dev_secret(config: ServerConfig) -> tuple[ServerConfig, str]:
    """`config` with a JWT secret made for this run, and an ADMIN token signed with it."""
    if config.auth.jwt_secret is not None or config.auth.jwt_public_key is not None:
        raise ServeError(
            "--dev generates its own JWT secret, but a JWT key is configured "
            "([auth] jwt_secret / jwt_public_key, or their TOPGUN_AUTH_* variables); "
            "drop --dev or the key"
        )
    secret = secrets.token_urlsafe(48)
    expires = int(time.time()) + DEV_TOKEN_HOURS * 3600
    token = jwt.encode({"sub": "dev", "roles": ["ADMIN"], "exp": expires}, secret, "HS256")
    auth = msgspec.structs.replace(config.auth, jwt_secret=Secret(secret))
    return msgspec.structs.replace(config, auth=auth), token


def _plugin_verifiers(pm: TopgunPluginManager) -> list[str]:
    """Installed (not built-in) plugins that verify tokens themselves."""
    return [info.name for info in pm.plugin_info() if "verify_token" in info.hooks]


def _check_auth(pm: TopgunPluginManager, config: ServerConfig) -> None:
    """Refuse to start a server no client could authenticate with."""
    if config.auth.jwt_secret is not None or config.auth.jwt_public_key is not None:
        return
    if pm.get_plugin(SECURITY_PLUGIN) is None or _plugin_verifiers(pm):
        return
    raise ServeError(
        "no JWT key is configured, so no client could authenticate. Set one:\n"
        "  TOPGUN_AUTH_JWT_SECRET=<a secret of at least 32 bytes>  (HS256; or [auth] jwt_secret)\n"
        "  TOPGUN_AUTH_JWT_PUBLIC_KEY=<PEM file>  (RS256; or [auth] jwt_public_key)\n"
        "or run `topgun serve --dev` to use a secret generated for this run."
    )


def describe_storage(config: ServerConfig) -> str:
    """The configured storage as the banner shows it (with its wrappers, if any)."""
    backend = config.storage.backend
    wrappers = config.storage.wrappers
    wrapped = f", wrapped in {', '.join(wrappers)}" if wrappers else ""
    if backend == "memory":
        return f"memory (nothing is kept after the server stops){wrapped}"
    if backend == "sqlite":
        file = config.storage.options.get("file", "topgun.db")
        return f"sqlite, {config.data_dir / str(file)}{wrapped}"
    return f"{backend}, data directory {config.data_dir}{wrapped}"


def describe_auth(config: ServerConfig, pm: TopgunPluginManager, *, dev: bool) -> str:
    """How clients authenticate, as the banner shows it."""
    if dev:
        return "HS256 with a development secret generated for this run (not for production)"
    if config.auth.jwt_public_key is not None:
        key = config.auth.jwt_public_key
        return "RS256 public key" + ("" if "-----BEGIN" in key else f" {key}")
    if config.auth.jwt_secret is not None:
        return "HS256 shared secret"
    verifiers = _plugin_verifiers(pm)
    return f"plugin verifiers ({', '.join(verifiers)})" if verifiers else "none"


def banner(
    config: ServerConfig,
    pm: TopgunPluginManager,
    address: tuple[str, int],
    *,
    asgi_server: AsgiServer,
    dev_token: str | None,
) -> str:
    """What `topgun serve` prints once it is ready: where, storage, auth, plugins."""
    where = _address(*address)
    scheme = "wss" if config.tls.enabled else "ws"
    web = "https" if config.tls.enabled else "http"
    plugins = [f"{i.name} {i.version}" if i.version else i.name for i in pm.plugin_info()]
    lines = [
        f"topgun {__version__} serving {scheme}://{where} ({asgi_server})",
        f"  storage    {describe_storage(config)}",
        f"  auth       {describe_auth(config, pm, dev=dev_token is not None)}",
    ]
    if dev_token is not None:
        lines.append(f"  dev token  {dev_token}")
        lines.append(f"             (role ADMIN, valid {DEV_TOKEN_HOURS} h, dies with this secret)")
    lines += [
        f"  plugins    {', '.join(plugins) if plugins else 'none'}",
        f"  endpoints  {web}://{where}/health  /ready  /metrics",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


async def run(
    config: ServerConfig,
    pm: TopgunPluginManager,
    listener: socket.socket,
    *,
    asgi_server: AsgiServer = "hypercorn",
    on_ready: Callable[[Server], None] = lambda server: None,
) -> None:
    """Run a `Server` on `listener` until SIGINT or SIGTERM, then shut it down gracefully.

    The listener serves from the start: while the maps load, `/health` answers 200, `/ready`
    503, and WebSocket clients are closed with 1013 (PROTOCOL.md §1.4). `on_ready` is called
    once the server is ready. A signal during the start shuts down once it is done; a second
    signal during the shutdown stops waiting for it.
    """
    from topgun.server.app import create_app
    from topgun.server.server import Server

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as outer:
            stopping = anyio.Event()

            async def watch_signals() -> None:
                async for _ in signals:
                    if stopping.is_set():
                        outer.cancel_scope.cancel()
                    stopping.set()

            outer.start_soon(watch_signals)
            server = Server(config, pm=pm)
            started = anyio.Event()
            hosted = anyio.Event()

            async def shutdown_trigger() -> None:
                await stopping.wait()
                await started.wait()
                await server.shutdown()

            async def serve() -> None:
                try:
                    await host(
                        create_app(server),
                        listener,
                        config,
                        shutdown_trigger=shutdown_trigger,
                        asgi_server=asgi_server,
                    )
                finally:
                    hosted.set()

            outer.start_soon(serve)
            async with server:
                started.set()
                on_ready(server)
                await hosted.wait()
            outer.cancel_scope.cancel()


_OPERATOR_ERRORS: Final = (ServeError, ConfigError, KeyConfigError, StorageError, PluginError)


def _operator_error(exc: BaseException) -> BaseException | None:
    """The error to report in one line, also when a task group wrapped it in a group."""
    if isinstance(exc, _OPERATOR_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _operator_error(exc.exceptions[0])
    return None


SERVE_GC_THRESHOLDS: Final = (20_000, 50, 100)
"""`gc.set_threshold` for the `topgun serve` process. The default (700, 10, 10) collects
the young generation every 700 net allocations, and every 100 of those scans the whole
heap, whose size grows with the data held; under write load those full scans stalled the
event loop and the storage writer for tens of milliseconds (p99 ~100 ms in
`bench/load.py`). Rarer collections keep the same guarantees: cyclic garbage is still
freed, only later."""


@click.command()
@config_options
@click.option(
    "--server",
    "asgi_server",
    type=click.Choice(ASGI_SERVERS),
    default="hypercorn",
    show_default=True,
    help="ASGI server to run on (uvicorn: pip install 'topgun[uvicorn]').",
)
@click.option(
    "--dev",
    is_flag=True,
    help="Development: generate a JWT secret for this run and print an ADMIN token.",
)
@click.pass_obj
def serve(
    pm: TopgunPluginManager,
    config_file: Path | None,
    config_overrides: dict[str, Any],
    asgi_server: AsgiServer,
    dev: bool,
) -> None:
    """Run the topgun server until SIGINT or SIGTERM."""
    try:
        config = _load_config(pm, config_file, config_overrides)
        dev_token = None
        if dev:
            config, dev_token = _with_dev_secret(config)
        _check_auth(pm, config)
        check_tls(config)
        listener = listen_socket(config.host, config.port)
    except _OPERATOR_ERRORS as exc:
        click.echo(f"topgun serve: {exc}", err=True)
        raise SystemExit(1) from None
    address = bound_address(listener)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def on_ready(server: Server) -> None:
        gc.freeze()  # what startup built (modules, loaded maps) lives on: no more GC scans
        text = banner(config, pm, address, asgi_server=asgi_server, dev_token=dev_token)
        click.echo(text)
        sys.stdout.flush()

    gc.set_threshold(*SERVE_GC_THRESHOLDS)
    try:
        anyio.run(lambda: run(config, pm, listener, asgi_server=asgi_server, on_ready=on_ready))
    except Exception as exc:
        known = _operator_error(exc)
        if known is None:
            raise
        click.echo(f"topgun serve: {known}", err=True)
        raise SystemExit(1) from None
    click.echo("topgun serve: stopped", err=True)
