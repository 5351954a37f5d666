"""VectorIndex: HNSW search, exact search, removal, and snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from topgun_vector import VectorIndex
from topgun_vector.index import fingerprint


def unit_rows(n: int, d: int, seed: int = 1) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def filled(n: int = 200, d: int = 16) -> tuple[VectorIndex, np.ndarray]:
    index = VectorIndex(d, embedder="test")
    vectors = unit_rows(n, d)
    keys = [f"k{i}" for i in range(n)]
    labels = index.reserve_labels(n)
    index.add_vectors(labels, vectors)
    index.commit(keys, labels, [fingerprint(k) for k in keys])
    return index, vectors


def test_search_finds_the_nearest_and_exact_agrees() -> None:
    index, vectors = filled()
    found = index.search(vectors[7], 5)
    assert found[0][0] == "k7"
    assert found[0][1] == pytest.approx(1.0, abs=1e-5)
    exact = index.exact(vectors[7], [f"k{i}" for i in range(200)])
    assert [k for k, _ in exact[:5]] == [k for k, _ in found]
    assert index.search(vectors[0], 0) == []


def test_set_replaces_and_remove_forgets() -> None:
    index, vectors = filled(20)
    index.set("k1", vectors[2], fingerprint("new"))
    assert index.fingerprint("k1") == fingerprint("new")
    assert len(index) == 20
    top = index.search(vectors[2], 2)
    assert {k for k, _ in top} == {"k1", "k2"}
    index.remove("k1")
    index.remove("never")
    assert "k1" not in index
    assert all(k != "k1" for k, _ in index.search(vectors[2], 20))
    assert index.exact(vectors[2], ["k1"]) == []


def test_snapshot_round_trip(tmp_path: Path) -> None:
    index, vectors = filled(50)
    index.remove("k3")
    path = tmp_path / "v" / "docs.snapshot"
    index.save(path)
    assert not index.dirty
    again = VectorIndex(16, embedder="test")
    assert again.load(path)
    assert sorted(again.indexed_keys()) == sorted(index.indexed_keys())
    assert again.fingerprint("k4") == fingerprint("k4")
    assert again.search(vectors[4], 1)[0][0] == "k4"
    # New labels after a load never collide with the snapshot's.
    again.set("k4", vectors[5], fingerprint("x"))
    assert again.search(vectors[4], 50)[0][0] != "k4"


def test_unusable_snapshots_are_ignored(tmp_path: Path) -> None:
    index, _ = filled(10)
    path = tmp_path / "s"
    index.save(path)
    assert not VectorIndex(16, embedder="other").load(path)
    assert not VectorIndex(8, embedder="test").load(path)
    assert not VectorIndex(16, embedder="test").load(tmp_path / "missing")
    path.write_bytes(path.read_bytes()[:100])
    fresh = VectorIndex(16, embedder="test")
    assert not fresh.load(path)
    assert len(fresh) == 0


def test_memory_estimate_grows_with_vectors() -> None:
    small, _ = filled(10)
    large, _ = filled(400)
    assert large.memory_bytes > small.memory_bytes > 0
