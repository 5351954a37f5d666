"""ext-audit against a real server on a real socket, loaded through its real entry point.

The server records authentications, writes, denials and disconnects; the log it wrote is
then tampered with in each way and `topgun audit verify` must name the first bad line.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from topgun_audit import AuditConfig, AuditLog, entries, verify
from topgun_audit.chain import ACTIVE
from topgun_audit.plugin import QUEUE_FULL, RECORDER

from topgun.cli import build_cli
from topgun.crdt.records import LWWRecord, Timestamp
from topgun.hooks import PluginError, TopgunPluginManager, make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthFail,
    AuthRequired,
    ClientOp,
    Error,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    Query,
    QuerySub,
    QuerySubPayload,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverSpec,
)
from topgun.server import Policy
from topgun.server.config import ConfigError, config_sections, load_config

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


def audit_pm(**environ: str) -> TopgunPluginManager:
    """The plugin manager `topgun` builds, from the installed entry points, with only the
    audit plugin selected (other installed plugins stay out of the test)."""
    return make_plugin_manager(environ={"TOPGUN_LOAD_PLUGINS": "audit", **environ})


def put(key: str, value: Any, *, map_name: str = "todos", op_id: str = "1") -> OpBatch:
    stamp = Timestamp(int(time.time() * 1000), 0, "client-a")
    op = ClientOp(map_name=map_name, key=key, id=op_id, record=LWWRecord(value, stamp))
    return OpBatch(payload=OpBatchPayload(ops=[op]))


def audit_section(directory: Path, **options: Any) -> dict[str, Any]:
    return {"audit": AuditConfig(directory=directory, fsync=False, **options)}


async def poll(condition: Any, what: str) -> None:
    """Wait until `condition()` holds (a deadline, never a fixed sleep)."""
    with anyio.fail_after(DEADLINE):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


# --- discovery and configuration -----------------------------------------------------------


def test_the_plugin_is_found_through_its_real_entry_point() -> None:
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group="topgun")}
    assert points["audit"].value == "topgun_audit.plugin"
    assert points["audit"].dist is not None
    assert points["audit"].dist.name == "topgun-audit"
    pm = audit_pm()
    info = {i.name: i for i in pm.plugin_info(include_builtin=False)}
    assert info["audit"].distribution == "topgun-audit"
    assert {"on_startup", "register_commands", "register_config_sections"} <= set(
        info["audit"].hooks
    )
    result = CliRunner().invoke(build_cli(pm), ["audit", "--help"])
    assert result.exit_code == 0, result.output
    assert {"verify", "tail", "query"} <= set(result.output.split())


def test_topgun_disable_plugins_leaves_it_out() -> None:
    pm = audit_pm(TOPGUN_DISABLE_PLUGINS="audit")
    assert not pm.has_plugin("audit")
    assert "audit" not in build_cli(pm).commands


def test_the_audit_section_is_read_from_toml_and_the_environment(tmp_path: Path) -> None:
    sections = config_sections(audit_pm())
    config = load_config(
        '[audit]\nenabled = false\non_full = "fail_closed"\n',
        environ={"TOPGUN_AUDIT_QUEUE_SIZE": "7"},
        sections=sections,
    )
    assert config.section("audit") == AuditConfig(
        enabled=False, on_full="fail_closed", queue_size=7
    )
    with pytest.raises(ConfigError, match=r"\[audit\] on_full: expected one of block, fail_closed"):
        load_config('[audit]\non_full = "drop"\n', environ={}, sections=sections)


async def test_disabled_by_config_it_records_nothing(start_server: Any, tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    sections = audit_section(directory, enabled=False)
    async with start_server(pm=audit_pm(), sections=sections) as live:
        assert not live.server.pm.has_plugin(RECORDER)
        client = await live.client()
        await client.send(put("t1", "x"))
        assert (await client.expect_past_updates(OpAck)).payload.results[0].success
        await client.aclose()
    assert not directory.exists()


async def test_a_log_that_cannot_be_opened_stops_the_start_with_a_clear_error(
    start_server: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PluginError, match=r"audit: cannot open the audit log in .*a-file"):
        async with start_server(pm=audit_pm(), sections=audit_section(blocker / "audit")):
            pass


async def test_two_servers_cannot_share_one_plugin_manager(
    start_server: Any, tmp_path: Path
) -> None:
    pm = audit_pm()
    async with start_server(pm=pm, sections=audit_section(tmp_path / "one")):
        with pytest.raises(PluginError, match="already records for a running server"):
            async with start_server(pm=pm, sections=audit_section(tmp_path / "two")):
                pass


# --- what a real server records ------------------------------------------------------------


async def record_a_session(start_server: Any, wire: Any, directory: Path) -> None:
    """Auth failures (WebSocket and HTTP), two logins, an applied write, an admin action,
    denied writes (WebSocket and HTTP), a denied read."""
    policies = (Policy("USER", "todos", ("READ", "PUT")),)
    async with start_server(
        pm=audit_pm(), policies=policies, sections=audit_section(directory)
    ) as live:
        intruder = await live.connect()
        await intruder.expect(AuthRequired)
        await intruder.send(Auth(token=wire.mint(sub="mallory", secret="not-the-secret" * 4)))
        assert isinstance(await intruder.recv(), AuthFail)
        admin = await live.client()
        await admin.send(put("t1", {"title": "audit me"}))
        assert (await admin.expect_past_updates(OpAck)).payload.results[0].success
        spec = ResolverSpec(name="builtin:immutable", code="")
        await admin.send(RegisterResolver(request_id="r", map_name="todos", resolver=spec))
        assert (await admin.expect_past_updates(RegisterResolverResponse)).success
        bob = await live.client(wire.mint(sub="bob", roles=["USER"]))
        await bob.send(put("s1", "leak", map_name="secrets"))
        ack = await bob.expect_past_updates(OpAck)
        assert ack.payload.results[0].error == "Access denied"
        assert (await bob.expect(OpRejected)).payload.code == 403
        await bob.send(QuerySub(payload=QuerySubPayload("q", "secrets", Query())))
        assert (await bob.expect_past_updates(Error)).payload.code == 403
        await bob.aclose()
        await admin.aclose()
        await intruder.aclose()
        async with httpx.AsyncClient(timeout=DEADLINE) as http:
            anonymous = await http.post(live.http_url + "/sync", content=b"{}")
            assert anonymous.status_code == 401
            op = {
                "mapName": "secrets",
                "key": "s2",
                "record": {
                    "value": "leak",
                    "timestamp": {"millis": 1, "counter": 0, "nodeId": "h"},
                },
            }
            clock = {"millis": int(time.time() * 1000), "counter": 0, "nodeId": "h"}
            body = {"clientId": "http-bob", "clientHlc": clock, "operations": [op]}
            headers = {"Authorization": f"Bearer {wire.mint(sub='bob', roles=['USER'])}"}
            answer = await http.post(live.http_url + "/sync", json=body, headers=headers)
            assert answer.json()["ack"]["results"][0]["error"] == "Access denied", answer.text


async def test_a_real_server_records_every_kind_of_event(
    start_server: Any, wire: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    await record_a_session(start_server, wire, directory)
    assert verify(directory).ok
    found = list(entries(directory))
    events = [e["event"] for e in found]
    assert events[0] == "audit.started"
    assert events[-1] == "audit.stopped"
    assert found[0]["node"] == "test-server"

    ws_failure, http_failure = [e for e in found if e["event"] == "auth.failure"]
    assert ws_failure["principal"] is None
    assert ws_failure["address"].startswith("127.0.0.1:")
    assert "signature" in ws_failure["reason"].lower()
    assert (http_failure["client"], http_failure["reason"]) == (
        None,
        "Missing Authorization header",
    )
    logins = {e["principal"]: e for e in found if e["event"] == "auth.success"}
    assert set(logins) == {"alice", "bob"}
    assert logins["alice"]["admin"] is True
    assert logins["bob"]["admin"] is False

    writes = {e["key"]: e for e in found if e["event"] == "write"}
    applied, rejected = writes["t1"], writes["s1"]
    assert (applied["principal"], applied["map"], applied["op"], applied["outcome"]) == (
        "alice",
        "todos",
        "PUT",
        "applied",
    )
    assert applied["hlc"].endswith(":0:client-a")
    assert applied["reason"] is None
    assert (rejected["principal"], rejected["map"], rejected["outcome"]) == (
        "bob",
        "secrets",
        "rejected",
    )
    assert rejected["reason"] == "Access denied"
    http_write = writes["s2"]
    assert (http_write["principal"], http_write["client"], http_write["outcome"]) == (
        "bob",
        None,
        "rejected",
    )
    denied = [(e["resource"], e["action"]) for e in found if e["event"] == "permission.denied"]
    assert sorted(denied) == [("secrets", "PUT"), ("secrets", "PUT"), ("secrets", "READ")]
    assert all(e["principal"] == "bob" for e in found if e["event"] == "permission.denied")
    (admin_action,) = [e for e in found if e["event"] == "admin"]
    assert (admin_action["principal"], admin_action["admin"], admin_action["action"]) == (
        "alice",
        True,
        "REGISTER_RESOLVER",
    )
    assert (admin_action["target"], admin_action["outcome"]) == (
        "todos/builtin:immutable",
        "applied",
    )
    disconnects = [e for e in found if e["event"] == "disconnect"]
    assert len(disconnects) == 3
    assert {e["code"] for e in disconnects} >= {4001}
    assert all("leak" not in json.dumps(e) and "audit me" not in json.dumps(e) for e in found)


# --- tampering with the real log ------------------------------------------------------------


def _tamper(kind: str, path: Path) -> int:
    """Tamper with the log file `path` in the way `kind` names; the 1-based line that
    `verify` must name."""
    lines = path.read_bytes().splitlines(keepends=True)
    target = next(i for i, raw in enumerate(lines) if b'"event":"write"' in raw)
    if kind == "modified":
        lines[target] = lines[target].replace(b'"outcome":"applied"', b'"outcome":"rejected"')
        assert b'"outcome":"rejected"' in lines[target]
    elif kind == "deleted":
        del lines[target]
    elif kind == "inserted":
        lines.insert(target, lines[0])
    elif kind == "reordered":
        lines[target], lines[target + 1] = lines[target + 1], lines[target]
    elif kind == "truncated":
        del lines[target:]
    path.write_bytes(b"".join(lines))
    return target + 1


@pytest.fixture
async def real_log(start_server: Any, wire: Any, tmp_path: Path) -> Path:
    directory = tmp_path / "recorded"
    await record_a_session(start_server, wire, directory)
    return directory


@pytest.mark.parametrize("kind", ["modified", "deleted", "inserted", "reordered", "truncated"])
async def test_verify_catches_each_kind_of_tampering_and_names_the_line(
    real_log: Path, tmp_path: Path, kind: str
) -> None:
    cli = build_cli(audit_pm())
    intact = CliRunner().invoke(cli, ["audit", "verify", "--dir", str(real_log)])
    assert intact.exit_code == 0, intact.output
    assert intact.output.startswith("OK: ")
    tampered = tmp_path / kind
    shutil.copytree(real_log, tampered)
    line = _tamper(kind, tampered / ACTIVE)
    result = CliRunner().invoke(cli, ["audit", "verify", "--dir", str(tampered)])
    assert result.exit_code == 1, result.output
    assert f"TAMPERED: {tampered / ACTIVE} line {line}:" in result.output
    problem = verify(tampered).problem
    assert problem is not None
    assert (problem.file, problem.line) == (tampered / ACTIVE, line)


async def test_tail_and_query_read_the_real_log(real_log: Path) -> None:
    cli = build_cli(audit_pm())
    runner = CliRunner()
    tail = runner.invoke(cli, ["audit", "tail", "--dir", str(real_log), "-n", "2", "--json"])
    assert tail.exit_code == 0, tail.output
    last = [json.loads(line) for line in tail.output.splitlines()]
    assert [e["event"] for e in last][-1] == "audit.stopped"
    assert len(last) == 2
    query = runner.invoke(
        cli,
        ["audit", "query", "--dir", str(real_log), "--principal", "bob", "--map", "secrets"],
    )
    assert query.exit_code == 0, query.output
    lines = query.output.splitlines()
    assert len(lines) == 5  # the rejected writes (WebSocket, HTTP) and the three denials
    assert all("principal=bob" in line and "secrets" in line for line in lines)
    since = runner.invoke(cli, ["audit", "query", "--dir", str(real_log), "--since", "1h"])
    assert len(since.output.splitlines()) == len(list(entries(real_log)))
    future = runner.invoke(cli, ["audit", "query", "--dir", str(real_log), "--since", "2999-01-01"])
    assert (future.exit_code, future.output) == (0, "")


# --- a full queue: block or fail closed, never a silent drop --------------------------------


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While cleared, every audit log's writer waits before writing its next batch."""
    opened = threading.Event()
    opened.set()
    write_batch = AuditLog._write_batch

    def gated(self: AuditLog, batch: list[dict[str, Any]]) -> int:
        assert opened.wait(DEADLINE), "the test never reopened the gate"
        return write_batch(self, batch)

    monkeypatch.setattr(AuditLog, "_write_batch", gated)
    return opened


def _fill(log: AuditLog) -> None:
    while log.try_put({"event": "filler"}):
        pass


async def test_fail_closed_refuses_writes_while_the_queue_is_full(
    start_server: Any, tmp_path: Path, gate: threading.Event
) -> None:
    directory = tmp_path / "audit"
    sections = audit_section(directory, queue_size=4, on_full="fail_closed")
    async with start_server(pm=audit_pm(), sections=sections) as live:
        log = live.server.pm.get_plugin(RECORDER).log
        client = await live.client()
        assert log.flush(DEADLINE)
        gate.clear()
        _fill(log)
        await client.send(put("refused", "x", op_id="7"))
        await poll(lambda: log.waiting == 1, "the rejected write's record waits for room")
        gate.set()
        ack = await client.expect_past_updates(OpAck)
        assert ack.payload.results[0].success is False
        assert ack.payload.results[0].error == QUEUE_FULL
        assert (await client.expect(OpRejected)).payload.code == 503
        await client.send(put("accepted", "y", op_id="8"))
        assert (await client.expect_past_updates(OpAck)).payload.results[0].success
        await client.aclose()
    writes = {e["key"]: e for e in entries(directory) if e["event"] == "write"}
    assert (writes["refused"]["outcome"], writes["refused"]["reason"]) == ("rejected", QUEUE_FULL)
    assert writes["accepted"]["outcome"] == "applied"
    assert verify(directory).ok


async def test_fail_closed_refuses_logins_while_the_queue_is_full(
    start_server: Any, wire: Any, tmp_path: Path, gate: threading.Event
) -> None:
    directory = tmp_path / "audit"
    sections = audit_section(directory, queue_size=4, on_full="fail_closed")
    async with start_server(pm=audit_pm(), sections=sections) as live:
        log = live.server.pm.get_plugin(RECORDER).log
        assert log.flush(DEADLINE)
        gate.clear()
        _fill(log)
        client = await live.connect()
        await client.expect(AuthRequired)
        await client.send(Auth(token=wire.mint()))
        await poll(lambda: log.waiting == 1, "the refused login's record waits for room")
        gate.set()
        fail = await client.expect(AuthFail)
        assert fail.error == QUEUE_FULL
        await client.aclose()
    failures = [e for e in entries(directory) if e["event"] == "auth.failure"]
    assert [e["reason"] for e in failures] == [QUEUE_FULL]


async def test_a_denial_on_a_full_queue_waits_without_holding_up_the_server(
    start_server: Any, wire: Any, tmp_path: Path, gate: threading.Event
) -> None:
    directory = tmp_path / "audit"
    sections = audit_section(directory, queue_size=4, on_full="fail_closed")
    policies = (Policy("USER", "todos", ("READ",)),)
    async with start_server(pm=audit_pm(), sections=sections, policies=policies) as live:
        log = live.server.pm.get_plugin(RECORDER).log
        bob = await live.client(wire.mint(sub="bob", roles=["USER"]))
        assert log.flush(DEADLINE)
        gate.clear()
        _fill(log)
        await bob.send(QuerySub(payload=QuerySubPayload("q", "secrets", Query())))
        assert (await bob.expect(Error)).payload.code == 403  # answered at once
        await poll(lambda: log.waiting == 1, "the denial's entry waits for room")
        gate.set()
        await bob.aclose()
    denied = [e for e in entries(directory) if e["event"] == "permission.denied"]
    assert [(e["principal"], e["resource"], e["action"]) for e in denied] == [
        ("bob", "secrets", "READ")
    ]


async def test_block_holds_the_write_until_there_is_room(
    start_server: Any, tmp_path: Path, gate: threading.Event
) -> None:
    directory = tmp_path / "audit"
    sections = audit_section(directory, queue_size=4, on_full="block")
    async with start_server(pm=audit_pm(), sections=sections) as live:
        log = live.server.pm.get_plugin(RECORDER).log
        client = await live.client()
        assert log.flush(DEADLINE)
        gate.clear()
        _fill(log)
        await client.send(put("held", "x"))
        await poll(lambda: log.waiting == 1, "the write waits for room before it is merged")
        todos = live.server.maps.lww("todos")
        assert todos is None or todos.get("held") is None
        gate.set()
        assert (await client.expect_past_updates(OpAck)).payload.results[0].success
        await client.aclose()
    writes = [e for e in entries(directory) if e["event"] == "write"]
    assert [(e["key"], e["outcome"]) for e in writes] == [("held", "applied")]
    assert sum(1 for e in entries(directory) if e["event"] == "filler") == 4
    assert verify(directory).ok
