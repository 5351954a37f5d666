"""`POST /sync` (deltas, queries) over tiered storage: cold values and archived maps are
loaded before they are answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from topgun_tiered import TieredBackend

from topgun.crdt import COLD, LWWRecord, Timestamp
from topgun.protocol import HttpQuery, Query
from topgun.protocol.http_sync import SyncMapRequest, SyncRequest
from topgun.server.auth import TokenPrincipal
from topgun.server.http_sync import SyncHandler
from topgun.storage import open_storage, value_size

pytestmark = pytest.mark.anyio

ADMIN = TokenPrincipal.from_claims({"sub": "t", "roles": ["ADMIN"]})


def request(**parts: Any) -> SyncRequest:
    return SyncRequest(client_id="c", client_hlc=Timestamp(0, 0, "c"), **parts)


async def test_deltas_and_queries_carry_cold_values(tmp_path: Path, kit: Any) -> None:
    budget = sum(value_size(kit.row(i)) for i in range(300)) // 5
    async with kit.running(kit.tiered_config(tmp_path, budget=budget)) as tiered:
        client = await tiered.login()
        await kit.write_rows(client, "big", range(300))
        lww = tiered.server.maps.lww("big")
        assert lww is not None
        assert len(lww.cold_keys()) > 150
        answer = await SyncHandler(tiered.server, ADMIN).answer(
            request(
                sync_maps=[SyncMapRequest(map_name="big", since_seq=0, limit=1000)],
                queries=[HttpQuery(query_id="q", map_name="big", query=Query(where={"group": 2}))],
            )
        )
        assert answer.errors is None
        assert answer.deltas is not None
        (delta,) = answer.deltas
        assert len(delta.records) == 300
        for change in delta.records:
            i = int(change.key[1:])
            assert change.record == LWWRecord(kit.row(i), Timestamp(kit.T, i, "writer"))
            assert change.record.value is not COLD
        assert answer.query_results is not None
        rows = answer.query_results[0].results
        assert [r.key for r in rows] == [f"k{i:05}" for i in range(2, 300, 7)]
        assert all(r.value == kit.row(int(r.key[1:])) for r in rows)


async def test_a_delta_of_an_archived_map_restores_it(tmp_path: Path, kit: Any) -> None:
    config = kit.tiered_config(tmp_path, budget="64MiB")
    async with kit.running(config) as first:
        client = await first.login()
        await kit.write_rows(client, "old", range(20))
    storage = config.storage
    backend = open_storage(
        kit.plugin_manager(),
        data_dir=tmp_path,
        backend=storage.backend,
        wrappers=storage.wrappers,
        wrapper_options=storage.wrapper_options,
    )
    assert isinstance(backend, TieredBackend)
    await backend.initialize()
    await backend.archive_map("old")
    await backend.close()
    async with kit.running(config) as second:
        assert second.server.maps.lww("old") is None
        answer = await SyncHandler(second.server, ADMIN).answer(
            request(sync_maps=[SyncMapRequest(map_name="old", since_seq=0)])
        )
        assert answer.deltas is not None
        assert sorted(r.key for r in answer.deltas[0].records) == [f"k{i:05}" for i in range(20)]
