"""`topgun serve` (topgun/server/serve.py): bind errors, banner, signals, TLS, ASGI servers.

The CLI tests run `python -m topgun serve` as a subprocess, as a user would; the helpers
(`listen_socket`, `banner`, `check_tls`, `host`) are also tested in-process.
"""

from __future__ import annotations

import functools
import signal
import socket
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import Auth, AuthAck, AuthFail, AuthRequired, ShutdownPending
from topgun.server import ServerConfig, StorageConfig, TLSConfig
from topgun.server.serve import (
    ServeError,
    banner,
    bound_address,
    check_tls,
    describe_storage,
    host,
    listen_socket,
    run,
)

pytestmark = pytest.mark.anyio


# --- in-process --------------------------------------------------------------------------


def test_listen_socket_names_the_address_when_the_port_is_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServeError) as error:
            listen_socket("127.0.0.1", port)
    assert str(error.value).startswith(f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert "--port" in str(error.value)


def test_listen_socket_names_the_address_it_cannot_assign() -> None:
    with pytest.raises(ServeError, match=r"^cannot listen on 192\.0\.2\.1:8080: "):
        listen_socket("192.0.2.1", 8080)  # TEST-NET-1: never an address of this machine


def test_listen_socket_port_zero_picks_a_free_port() -> None:
    with listen_socket("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] != 0


def test_describe_storage() -> None:
    config = ServerConfig(data_dir=Path("data"))
    assert describe_storage(config) == f"sqlite, {Path('data') / 'topgun.db'}"
    options = StorageConfig(backend="sqlite", options={"file": "grid.db"})
    assert describe_storage(msgspec.structs.replace(config, storage=options)).endswith("grid.db")
    memory = msgspec.structs.replace(config, storage=StorageConfig(backend="memory"))
    assert describe_storage(memory).startswith("memory")
    wrapped = StorageConfig(backend="postgres", wrappers=("write-behind",))
    assert describe_storage(msgspec.structs.replace(config, storage=wrapped)) == (
        "postgres, data directory data, wrapped in write-behind"
    )


def test_check_tls_refuses_a_key_that_is_not_the_certificate_s(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    config = ServerConfig(tls=TLSConfig(cert_file=cert, key_file=key))
    with pytest.raises(ServeError, match=r"^\[tls\]: cannot load the certificate .*cert\.pem"):
        check_tls(config)
    assert check_tls(ServerConfig()) is None


def test_banner_shows_address_storage_auth_and_plugins() -> None:
    from topgun.hooks import make_plugin_manager

    pm = make_plugin_manager(entry_points=(), environ={})
    text = banner(
        ServerConfig(data_dir=Path("d")),
        pm,
        ("127.0.0.1", 9000),
        asgi_server="hypercorn",
        dev_token="tok",
    )
    lines = text.splitlines()
    assert lines[0] == "topgun 0.1.0 serving ws://127.0.0.1:9000 (hypercorn)"
    assert f"sqlite, {Path('d') / 'topgun.db'}" in lines[1]
    assert "development secret" in lines[2]
    assert lines[3].split() == ["dev", "token", "tok"]
    assert any(line.split()[:2] == ["plugins", "none"] for line in lines)


async def test_host_refuses_an_unknown_asgi_server() -> None:
    with listen_socket("127.0.0.1", 0) as sock, pytest.raises(ValueError, match="gunicorn"):
        await host(
            None, sock, ServerConfig(), shutdown_trigger=anyio.sleep_forever, asgi_server="gunicorn"
        )  # type: ignore[arg-type]


@pytest.mark.parametrize("asgi_server", ["hypercorn", "uvicorn"])
async def test_tls_serves_wss_and_https(
    start_server: Any, tls_files: Any, asgi_server: str
) -> None:
    tls = TLSConfig(cert_file=tls_files.cert_file, key_file=tls_files.key_file)
    async with start_server(tls=tls, client_tls=tls_files.client, asgi_server=asgi_server) as live:
        assert live.url.startswith("wss://")
        status, _, body = await live.get("/health")
        assert (status, body) == (200, b'{"status": "ok"}')
        client = await live.client()
        await client.aclose()


@pytest.mark.parametrize("asgi_server", ["hypercorn", "uvicorn"])
async def test_while_starting_health_answers_ready_is_503_and_clients_get_1013(
    server_config: ServerConfig, wire: Any, asgi_server: str
) -> None:
    """`run` listens before the maps are loaded (here: a start held up by a plugin), so
    probes get answers: alive, not ready; WebSocket clients are told to come back (1013)."""
    gate = anyio.Event()
    starting = anyio.Event()

    class SlowStart:
        @hookimpl
        async def on_startup(self, server: Any) -> None:
            starting.set()
            await gate.wait()

    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(SlowStart())
    listener = listen_socket("127.0.0.1", 0)
    base = f"127.0.0.1:{bound_address(listener)[1]}"
    ready = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(
                run,
                server_config,
                pm,
                listener,
                asgi_server=asgi_server,
                on_ready=lambda _: ready.set(),
            )
        )
        with anyio.fail_after(wire.DEADLINE):
            await starting.wait()
        status, _, body = await wire.http_get(f"http://{base}/health")
        assert (status, body) == (200, b'{"status": "ok"}')
        assert (await wire.http_get(f"http://{base}/ready"))[0] == 503
        assert (await wire.http_get(f"http://{base}/metrics"))[0] == 200
        status, _, body = await wire.http_get(f"http://{base}/events?map=m")
        assert (status, body) == (503, b'{"error": "Server not ready"}')  # no map read yet
        client = await wire.connect_raw(f"ws://{base}/")
        assert (await client.closed())[0] == 1013
        assert not ready.is_set()
        gate.set()
        with anyio.fail_after(wire.DEADLINE):
            await ready.wait()
        assert (await wire.http_get(f"http://{base}/ready"))[0] == 200
        tg.cancel_scope.cancel()


# --- the command -------------------------------------------------------------------------


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_port_in_use_is_one_line_and_exit_1_before_storage_opens(
    serve_process: Any, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = serve_process("--dev", "--port", str(port), "--data-dir", "data")
        status, stderr = process.finish()
    assert status == 1
    line = one_line(stderr)
    assert line.startswith(
        f"topgun serve: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert not (tmp_path / "data").exists(), "storage was opened before the port was bound"


def test_a_bad_setting_is_one_line_and_exit_1(serve_process: Any) -> None:
    process = serve_process("--dev", env={"TOPGUN_PORT": "70000"})
    status, stderr = process.finish()
    assert status == 1
    assert one_line(stderr) == "topgun serve: TOPGUN_PORT: expected int <= 65535, got '70000'"


def test_without_a_jwt_key_it_says_how_to_set_one(serve_process: Any) -> None:
    status, stderr = serve_process("--port", "0").finish()
    assert status == 1
    assert "no JWT key is configured" in stderr
    assert "TOPGUN_AUTH_JWT_SECRET" in stderr
    assert "topgun serve --dev" in stderr
    assert "Traceback" not in stderr


def test_dev_refuses_a_configured_key(serve_process: Any) -> None:
    env = {"TOPGUN_AUTH_JWT_SECRET": "s" * 32}
    status, stderr = serve_process("--dev", "--port", "0", env=env).finish()
    assert status == 1
    assert "--dev generates its own JWT secret" in one_line(stderr)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_banner_then_graceful_exit_0_on_signal(
    serve_process: Any, wire: Any, signum: signal.Signals
) -> None:
    """P-60 through the command: SHUTDOWN_PENDING, then close 1001, then exit status 0."""
    process = serve_process("--dev", "--port", "0", "--data-dir", "data")
    lines = await anyio.to_thread.run_sync(process.banner)
    port = process.port
    assert lines[0].startswith(f"topgun 0.1.0 serving ws://127.0.0.1:{port} (hypercorn)")
    assert lines[1].split() == ["storage", "sqlite,", str(Path("data") / "topgun.db")]
    assert "development secret" in lines[2]
    token = lines[3].split()[-1]
    assert any(line.split()[:2] == ["plugins", "none"] for line in lines)

    client = await wire.connect_raw(f"ws://127.0.0.1:{port}/")
    await client.authenticate(token)
    status, _, _ = await wire.http_get(f"http://127.0.0.1:{port}/ready")
    assert status == 200

    process.signal(signum)
    assert isinstance(await client.recv(), ShutdownPending)
    assert (await client.closed())[0] == 1001
    status, stderr = await anyio.to_thread.run_sync(process.finish)
    assert status == 0, stderr
    assert "Traceback" not in stderr


async def test_the_dev_token_is_refused_by_another_run(serve_process: Any, wire: Any) -> None:
    first = serve_process("--dev", "--port", "0", "--storage", "memory")
    token = (await anyio.to_thread.run_sync(first.banner))[3].split()[-1]
    first.signal()
    await anyio.to_thread.run_sync(first.finish)
    second = serve_process("--dev", "--port", "0", "--storage", "memory")
    await anyio.to_thread.run_sync(second.banner)
    client = await wire.connect_raw(f"ws://127.0.0.1:{second.port}/")
    await client.expect(AuthRequired)
    await client.send(Auth(token=token))
    assert (await client.expect(AuthFail)).error == "invalid signature"
    assert (await client.closed())[0] == 4001


async def test_secret_from_the_environment_and_uvicorn(serve_process: Any, wire: Any) -> None:
    secret = "env-secret-" + "x" * 32
    process = serve_process(
        "--server",
        "uvicorn",
        "--port",
        "0",
        "--storage",
        "memory",
        env={"TOPGUN_AUTH_JWT_SECRET": secret},
    )
    lines = await anyio.to_thread.run_sync(process.banner)
    assert lines[0].endswith("(uvicorn)")
    assert lines[2].split() == ["auth", "HS256", "shared", "secret"]
    client = await wire.connect_raw(f"ws://127.0.0.1:{process.port}/some/path")
    await client.expect(AuthRequired)
    await client.send(Auth(token=wire.mint(secret=secret)))
    await client.expect(AuthAck)
    process.signal(signal.SIGTERM)
    assert (await client.closed())[0] == 1001
    status, stderr = await anyio.to_thread.run_sync(process.finish)
    assert status == 0, stderr


def test_a_failure_while_starting_is_one_line_and_exit_1(
    serve_process: Any, tmp_path: Path
) -> None:
    """Errors after the bind (storage that does not open, a key that cannot be used) are
    reported like configuration errors, not as tracebacks."""
    (tmp_path / "not-a-directory").write_text("")
    status, stderr = serve_process("--dev", "--port", "0", "--data-dir", "not-a-directory").finish()
    assert status == 1
    assert one_line(stderr).startswith("topgun serve: cannot create the data directory")
    status, stderr = serve_process("--port", "0", env={"TOPGUN_AUTH_JWT_SECRET": "short"}).finish()
    assert status == 1
    assert "HS256 needs at least 32" in one_line(stderr)


def test_describe_auth_names_the_key_kind_and_plugin_verifiers() -> None:
    from topgun.hooks import hookimpl, make_plugin_manager
    from topgun.server import AuthConfig, Secret
    from topgun.server.serve import describe_auth

    class ApiKeys:
        @hookimpl
        def verify_token(self, token: str, connection: Any) -> None:
            return None

    pm = make_plugin_manager(entry_points=(), environ={})
    rs256 = ServerConfig(auth=AuthConfig(jwt_public_key="/etc/topgun/jwt.pem"))
    assert describe_auth(rs256, pm, dev=False) == "RS256 public key /etc/topgun/jwt.pem"
    hs256 = ServerConfig(auth=AuthConfig(jwt_secret=Secret("s" * 32)))
    assert describe_auth(hs256, pm, dev=False) == "HS256 shared secret"
    assert describe_auth(ServerConfig(), pm, dev=False) == "none"
    pm.register(ApiKeys(), name="api-keys")
    assert describe_auth(ServerConfig(), pm, dev=False) == "plugin verifiers (api-keys)"
