"""`topgun vector rebuild`, and the distribution's entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import anyio
import jwt
import topgun_vector.plugin
from click.testing import CliRunner
from topgun_vector import VectorIndex
from topgun_vector.service import snapshot_path

from topgun.cli import build_cli
from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.protocol import Auth, AuthAck, AuthRequired, ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import AuthConfig, InMemoryClient, Secret, Server, ServerConfig, StorageConfig

SECRET = "a-development-secret-of-at-least-32-bytes"


def test_the_plugin_is_an_entry_point_of_group_topgun() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="topgun")}
    assert found["vector"] == "topgun_vector.plugin"


async def store_rows(data_dir: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write `rows` to map `docs` of a SQLite data dir, through a server without vectors."""
    config = ServerConfig(
        data_dir=data_dir,
        storage=StorageConfig(backend="sqlite"),
        auth=AuthConfig(jwt_secret=Secret(SECRET)),
    )
    pm = make_plugin_manager(entry_points=(), environ={})
    async with (
        anyio.create_task_group() as tg,
        Server(config, pm=pm) as server,
        InMemoryClient.connect(server, tg) as client,
    ):
        assert isinstance(await client.receive(), AuthRequired)
        await client.send(Auth(token=jwt.encode({"sub": "a", "roles": ["ADMIN"]}, SECRET)))
        assert isinstance(await client.receive(), AuthAck)
        ops = [
            ClientOp(map_name="docs", key=k, record=LWWRecord(v, Timestamp(1, i, "a")))
            for i, (k, v) in enumerate(rows.items())
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
        await client.receive_until(OpAck)


def test_rebuild_embeds_every_row_and_writes_snapshots(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rows = {f"d{i}": {"text": f"row {i} about merkle trees"} for i in range(30)}
    rows["empty"] = {"text": "   "}
    anyio.run(store_rows, data_dir, rows)
    config = tmp_path / "topgun.toml"
    config.write_text(
        f"""
data_dir = "{data_dir}"
[storage]
backend = "sqlite"
[vector]
embedder = "hash"
[vector.maps.docs]
text_fields = ["text"]
"""
    )
    path = snapshot_path(data_dir, "docs", "text")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stale")
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_vector.plugin, "vector")
    result = CliRunner().invoke(build_cli(pm), ["vector", "rebuild", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "docs.text: 30 vectors" in result.output
    assert "rebuilt 30 vectors" in result.output
    index = VectorIndex(64, embedder="hash-64")
    assert index.load(path)
    assert sorted(index.indexed_keys()) == sorted(k for k in rows if k != "empty")


def test_rebuild_without_vector_maps_says_so(tmp_path: Path) -> None:
    config = tmp_path / "topgun.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[storage]\nbackend = "memory"\n')
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_vector.plugin, "vector")
    result = CliRunner().invoke(build_cli(pm), ["vector", "rebuild", "--config", str(config)])
    assert result.exit_code == 1
    assert "no [vector.maps] are configured" in result.output
