"""One HNSW vector index (usearch, cosine) over one field of one map, with its snapshot file.

Rows are identified by their map key; usearch labels are internal (every new vector of a key
gets a fresh label, and the old one is removed). Each key also keeps a fingerprint of what
its vector was made from (the text, or the client's vector bytes), so that after a restart
the service re-embeds exactly the rows whose source changed since the snapshot ("catch-up").

A snapshot is one msgpack file written atomically (temporary file, then rename): the
embedder's name and dimensions, the key table and the serialized usearch index. A snapshot
that is unreadable, or was made by another embedder or with other dimensions, is ignored and
the index is rebuilt from the map.

usearch may reallocate while inserting, which must not overlap a search: a lock guards every
call into the index. Inserts (on a worker thread) take it a few vectors at a time, so a search
on the event loop waits at most one small chunk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
from usearch.index import Index

from topgun_vector.embedders import Vectors

__all__ = ["SNAPSHOT_VERSION", "VectorIndex", "fingerprint"]

logger = logging.getLogger(__name__)

SNAPSHOT_VERSION: Final = 1
INSERT_CHUNK: Final = 16
"""Vectors inserted per hold of the index lock."""


def fingerprint(source: str | bytes) -> bytes:
    """A short digest of what a vector is made from (text or vector bytes)."""
    data = source.encode() if isinstance(source, str) else source
    return hashlib.blake2b(data, digest_size=12).digest()


class _Snapshot(msgspec.Struct, array_like=True):
    version: int
    embedder: str
    dimensions: int
    next_label: int
    keys: list[tuple[str, int, bytes]]
    index: bytes


class VectorIndex:
    """Key -> unit vector, searched by cosine similarity (HNSW, or exactly over some keys)."""

    def __init__(
        self,
        dimensions: int,
        *,
        embedder: str,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
    ) -> None:
        self.dimensions = dimensions
        self.embedder = embedder
        self.expansion_search = expansion_search
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self._index = self._new_index()
        self._labels: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        self._fingerprints: dict[str, bytes] = {}
        self._next_label = 0
        self._lock = threading.Lock()
        self.dirty = False
        """Changed since the last snapshot was written or loaded."""

    def _new_index(self) -> Index:
        return Index(
            ndim=self.dimensions,
            metric="cos",
            dtype="f32",
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search,
        )

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    def indexed_keys(self) -> list[str]:
        """Every indexed key."""
        return list(self._labels)

    def fingerprint(self, key: str) -> bytes | None:
        """The fingerprint `key`'s vector was made from, or None if not indexed."""
        return self._fingerprints.get(key)

    def reserve_labels(self, count: int) -> np.ndarray:
        """`count` fresh labels for `add_vectors` (loop thread)."""
        labels = np.arange(self._next_label, self._next_label + count, dtype=np.uint64)
        self._next_label += count
        return labels

    def add_vectors(self, labels: np.ndarray, vectors: Vectors) -> None:
        """Insert vectors under fresh labels, not yet visible to searches (worker thread;
        `commit` then makes them the keys' vectors)."""
        for start in range(0, len(labels), INSERT_CHUNK):
            end = start + INSERT_CHUNK
            with self._lock:
                self._index.add(labels[start:end], vectors[start:end], threads=1)

    def commit(self, keys: Sequence[str], labels: np.ndarray, prints: Sequence[bytes]) -> None:
        """Make `labels` (added by `add_vectors`) the vectors of `keys` (loop thread)."""
        for key, label, mark in zip(keys, labels.tolist(), prints, strict=True):
            self.remove(key)
            self._labels[key] = label
            self._keys[label] = key
            self._fingerprints[key] = mark
        self.dirty = self.dirty or bool(keys)

    def set(self, key: str, vector: Vectors, mark: bytes) -> None:
        """`key` now has `vector` (1-d), made from a source with fingerprint `mark`."""
        labels = self.reserve_labels(1)
        self.add_vectors(labels, vector.reshape(1, -1))
        self.commit([key], labels, [mark])

    def remove(self, key: str) -> None:
        """`key` has no vector any more (unknown keys are ignored)."""
        label = self._labels.pop(key, None)
        if label is None:
            return
        del self._keys[label]
        self._fingerprints.pop(key, None)
        with self._lock:
            self._index.remove(label)
        self.dirty = True

    def vectors(self, keys: Sequence[str]) -> Vectors:
        """The vectors of `keys` (all indexed), one per row."""
        if not keys:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        labels = np.array([self._labels[k] for k in keys], dtype=np.uint64)
        with self._lock:
            found = self._index.get(labels)
        return np.asarray(found, dtype=np.float32).reshape(len(keys), self.dimensions)

    def search(self, query: Vectors, count: int) -> list[tuple[str, float]]:
        """Up to `count` nearest keys to `query` (1-d unit vector) by cosine similarity,
        best first (approximate: HNSW with `expansion_search`, raised to `count`)."""
        count = min(count, len(self._labels))
        if count <= 0:
            return []
        with self._lock:
            self._index.expansion_search = max(self.expansion_search, count)  # type: ignore[misc]
            matches = self._index.search(query, count, threads=1)
        found: list[tuple[str, float]] = []
        for label, distance in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            key = self._keys.get(label)
            if key is not None:
                found.append((key, 1.0 - float(distance)))
        return found

    def exact(self, query: Vectors, keys: Iterable[str]) -> list[tuple[str, float]]:
        """Every indexed key of `keys` with its exact cosine similarity to `query`, best first."""
        present = [k for k in keys if k in self._labels]
        if not present:
            return []
        similarity = self.vectors(present) @ query.astype(np.float32)
        order = np.argsort(-similarity, kind="stable")
        return [(present[i], float(similarity[i])) for i in order.tolist()]

    @property
    def memory_bytes(self) -> int:
        """usearch's own estimate of the index's memory (vectors and graph)."""
        with self._lock:
            return int(self._index.memory_usage)

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The index as snapshot bytes (no concurrent changes while this runs)."""
        keys = [(k, label, self._fingerprints[k]) for k, label in self._labels.items()]
        with self._lock:
            raw = self._index.save()
        assert raw is not None
        return msgspec.msgpack.encode(
            _Snapshot(
                SNAPSHOT_VERSION, self.embedder, self.dimensions, self._next_label, keys, bytes(raw)
            )
        )

    def save(self, path: Path) -> None:
        """Write the snapshot to `path` atomically and mark the index clean."""
        data = self.snapshot()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.dirty = False

    def load(self, path: Path) -> bool:
        """Replace the contents with the snapshot at `path`; False (contents unchanged) when
        there is none, it is unreadable, or it was made by another embedder."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
            if (snap.version, snap.embedder, snap.dimensions) != (
                SNAPSHOT_VERSION,
                self.embedder,
                self.dimensions,
            ):
                logger.info("vector snapshot %s is from another embedder: rebuilding", path)
                return False
            index: Any = Index.restore(bytearray(snap.index))
            if index is None or index.ndim != self.dimensions:
                raise ValueError("not a usearch index of the right dimensions")
            labels = np.array([label for _, label, _ in snap.keys], dtype=np.uint64)
            if len(labels) and not bool(np.all(index.contains(labels))):
                raise ValueError("the key table names vectors the index does not hold")
        except (msgspec.DecodeError, ValueError, RuntimeError) as error:
            logger.warning("vector snapshot %s is unreadable (%s): rebuilding", path, error)
            return False
        index.expansion_search = self.expansion_search
        self._index = index
        self._labels = {key: label for key, label, _ in snap.keys}
        self._keys = {label: key for key, label in self._labels.items()}
        self._fingerprints = {key: mark for key, _, mark in snap.keys}
        self._next_label = snap.next_label
        self.dirty = False
        return True
