"""A server over tiered storage with an OR-Map 5x its memory budget: OR-Map keys count
against the budget and go cold, and every key is still served correctly over the protocol
(Merkle leaves, diffs, queries, writes to cold keys, a fresh client's sync), with the
memory values take measured through the registry's accounting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from topgun.client import TopGunClient
from topgun.crdt import HLC, ORMap, ORMapRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    MerkleReqBucketPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    ORMapDiffRequest,
    ORMapDiffRequestPayload,
    ORMapDiffResponse,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapSyncInit,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
)
from topgun.server import InMemoryClient
from topgun.server.maps import or_key_bytes

pytestmark = pytest.mark.anyio

KEYS = 1000
NAME = "tags"


def record(kit: Any, i: int, second: bool) -> ORMapRecord:
    """Key i's records: its row, and its row marked second."""
    stamp = Timestamp(kit.T, 2 * i + second, "writer")
    value = kit.row(i) | {"second": True} if second else kit.row(i)
    return ORMapRecord(value, stamp, str(stamp))


async def send_ops(client: InMemoryClient, ops: list[ClientOp]) -> None:
    for start in range(0, len(ops), 200):
        batch = OpBatchPayload(ops=ops[start : start + 200], write_concern="PERSISTED")
        await client.send(OpBatch(payload=batch))
        ack, _ = await client.receive_until(OpAck, timeout=30)
        assert ack.payload.achieved_level == "PERSISTED"
        assert all(result.success for result in ack.payload.results or [])


async def write_tags(client: InMemoryClient, kit: Any) -> None:
    """Two records per key; every 10th key's first record removed, plus one removal of a
    tag no key holds."""
    ops = [
        ClientOp(map_name=NAME, key=f"k{i:05}", op_type="OR_ADD", or_record=record(kit, i, second))
        for i in range(KEYS)
        for second in (False, True)
    ]
    ops += [
        ClientOp(
            map_name=NAME, key=f"k{i:05}", op_type="OR_REMOVE", or_tag=record(kit, i, False).tag
        )
        for i in range(0, KEYS, 10)
    ]
    ops.append(
        ClientOp(
            map_name=NAME, key="nobody", op_type="OR_REMOVE", or_tag=str(Timestamp(kit.T, 0, "x"))
        )
    )
    await send_ops(client, ops)


def entries(ormap: ORMap) -> dict[str, ORMapEntry]:
    """Every key of `ormap` as sync sends it."""
    return {
        key: ORMapEntry(key=key, records=ormap.records(key), tombstones=ormap.tombstones_of(key))
        for key in ormap.all_keys()
    }


async def root(client: InMemoryClient) -> int:
    await client.send(ORMapSyncInit(map_name=NAME, root_hash=0, bucket_hashes={}))
    return (await client.receive_until(ORMapSyncRespRoot))[0].payload.root_hash


async def served_leaves(client: InMemoryClient) -> dict[str, ORMapEntry]:
    """Every leaf of the OR-Map's Merkle tree, walked from the root over the protocol."""
    found: dict[str, ORMapEntry] = {}
    paths = [""]
    while paths:
        chunk, paths = paths[:100], paths[100:]
        for path in chunk:
            payload = MerkleReqBucketPayload(map_name=NAME, path=path)
            await client.send(ORMapMerkleReqBucket(payload=payload))
        for _ in chunk:
            reply = await client.receive(timeout=30)
            if isinstance(reply, ORMapSyncRespLeaf):
                found.update((entry.key, entry) for entry in reply.payload.entries)
            else:
                paths += [reply.payload.path + b for b, h in reply.payload.buckets.items() if h]
        client.raw_frames.clear()  # the test client keeps every frame otherwise
    return found


async def query_rows(client: InMemoryClient, query: Query) -> list[tuple[str, Any]]:
    await client.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name=NAME, query=query)))
    response, _ = await client.receive_until(QueryResp, timeout=30)
    return [(row.key, row.value) for row in response.payload.results]


async def test_an_or_map_five_times_the_budget_is_served_whole(tmp_path: Path, kit: Any) -> None:
    query = Query(limit=30)
    async with kit.running(kit.plain_config(tmp_path / "plain")) as plain:
        reference = await plain.login()
        await write_tags(reference, kit)
        model = plain.server.maps.ormap(NAME)
        assert model is not None
        budget = sum(or_key_bytes(model, key) for key in model.all_keys()) // 5
        expected = entries(model)
        assert len(expected) == KEYS  # "nobody" held no tag: a tombstone without a key
        reference_rows = await query_rows(reference, query)

        config = kit.tiered_config(tmp_path / "tiered", budget=budget)
        async with kit.running(config) as tiered:
            await write_tags(await tiered.login(), kit)
            hot = tiered.server.maps.hot
            ormap = tiered.server.maps.ormap(NAME)
            assert hot is not None
            assert ormap is not None
            assert hot.budget.budget_bytes == budget
            assert hot.used <= budget
            assert len(ormap.cold_keys()) > KEYS // 2

        # A restart loads the map page by page; reads bring cold values back.
        async with kit.running(config) as tiered:
            client = await tiered.login()
            hot = tiered.server.maps.hot
            ormap = tiered.server.maps.ormap(NAME)
            assert hot is not None
            assert ormap is not None
            assert hot.peak <= budget  # the start never held much more than the budget
            assert len(ormap.cold_keys()) > KEYS // 2
            assert await root(client) == model.merkle.root_hash

            hot.peak = hot.used
            leaves = await served_leaves(client)
            assert leaves == expected
            assert hot.loads >= KEYS // 2
            # Serving 5x the budget, one leaf at a time, stayed within the budget plus a leaf.
            assert hot.used <= budget
            assert hot.peak <= budget * 1.1, (hot.peak, budget)

            cold = sorted(ormap.cold_keys())[:300]
            await client.send(
                ORMapDiffRequest(payload=ORMapDiffRequestPayload(map_name=NAME, keys=cold))
            )
            diff, _ = await client.receive_until(ORMapDiffResponse, timeout=30)
            assert diff.payload.entries == [expected[key] for key in cold]

            assert await query_rows(client, query) == reference_rows

            # Writes to cold keys: a removal of a cold tag, an add to a cold key.
            a, b = sorted(ormap.cold_keys())[:2]
            ops = [
                ClientOp(
                    map_name=NAME, key=a, op_type="OR_REMOVE", or_tag=expected[a].records[-1].tag
                ),
                ClientOp(
                    map_name=NAME, key=b, op_type="OR_ADD", or_record=record(kit, KEYS + 1, False)
                ),
            ]
            await send_ops(client, ops)
            await send_ops(reference, ops)
            assert await root(client) == model.merkle.root_hash
            async with tiered.server.maps.holding(NAME, [a, b]):
                assert ormap.values(a) == model.values(a)
                assert ormap.values(b) == model.values(b)
            assert ormap.is_tombstoned(expected[a].records[-1].tag)


async def test_a_fresh_client_syncs_an_or_map_larger_than_the_budget(
    tmp_path: Path, kit: Any
) -> None:
    keys = range(250)
    model = ORMap(HLC("model", lambda: kit.T))
    for i in keys:
        model.apply(f"k{i:05}", record(kit, i, False))
        model.apply(f"k{i:05}", record(kit, i, True))
    budget = sum(or_key_bytes(model, key) for key in model.all_keys()) // 5
    async with kit.serving(kit.tiered_config(tmp_path, budget=budget)) as (tiered, url):
        ops = [
            ClientOp(map_name=NAME, key=f"k{i:05}", op_type="OR_ADD", or_record=record(kit, i, s))
            for i in keys
            for s in (False, True)
        ]
        await send_ops(await tiered.login(), ops)
        hot, ormap = tiered.server.maps.hot, tiered.server.maps.ormap(NAME)
        assert hot is not None
        assert ormap is not None
        assert len(ormap.cold_keys()) > len(keys) // 2
        async with TopGunClient(url, token=kit.token()) as fresh:
            tags = fresh.ormap(NAME)
            with anyio.fail_after(60):
                await fresh.settled()
            assert sorted(tags.items()) == [
                (f"k{i:05}", [kit.row(i), kit.row(i) | {"second": True}]) for i in keys
            ]
        # The client's watch query builds a view of every row, which loads the whole map
        # for a moment (how views hold rows is their own matter); afterwards the map is
        # back within its budget.
        assert hot.used <= budget
        assert await root(await tiered.login()) == ormap.merkle.root_hash


async def test_records_of_cold_keys_expire_by_their_kept_ttl(tmp_path: Path, kit: Any) -> None:
    keys = range(250)
    ttl = 600_000  # due 9 minutes from now: the test moves the expiry clock there

    def expiring(i: int) -> ORMapRecord:
        stamp = Timestamp(kit.T, i, "writer")
        return ORMapRecord(kit.row(i), stamp, str(stamp), ttl)

    model = ORMap(HLC("model", lambda: kit.T))
    for i in keys:
        model.apply(f"k{i:05}", expiring(i))
    budget = sum(or_key_bytes(model, key) for key in model.all_keys()) // 5
    async with kit.running(kit.tiered_config(tmp_path, budget=budget)) as tiered:
        ops = [
            ClientOp(map_name=NAME, key=f"k{i:05}", op_type="OR_ADD", or_record=expiring(i))
            for i in keys
        ]
        await send_ops(await tiered.login(), ops)
        server = tiered.server
        ormap = server.maps.ormap(NAME)
        assert ormap is not None
        assert len(ormap.cold_keys()) > len(keys) // 2
        assert len(server.expiry) == len(keys)  # scheduled from the kept TTLs
        server.expiry.clock = lambda: kit.T + ttl + 1000
        await server.expiry.expire_due()
        with anyio.fail_after(30):  # the background task may have taken some of them
            while any(ormap.keys_holding(expiring(i).tag) for i in keys):
                await anyio.sleep(0.01)
        assert all(ormap.is_tombstoned(expiring(i).tag) for i in keys)
        assert ormap.keys() == []
        assert server.maps.hot is not None
        assert server.maps.hot.used <= budget
