"""The `[vector]` configuration section: the embedder, the HNSW parameters and, per map, the
fields that get a vector index and the weights of tri-hybrid search.

```toml
[vector]
embedder = "sentence-transformers"   # registered embedder (`hash`: no model, for tests)
model = "/models/my-model"           # local model folder; unset: all-MiniLM-L6-v2

[vector.maps.articles]
text_fields = ["body"]               # embedded by the server
vector_fields = ["embedding"]        # little-endian float32 bytes written by clients
weights = { vector = 1.0, text = 0.5 }
```
"""

from __future__ import annotations

import math
from typing import Annotated, Final

import msgspec

__all__ = ["SECTION", "VectorConfig", "VectorMapConfig"]

SECTION: Final = "vector"
"""The TOML table and `TOPGUN_VECTOR_*` prefix of this section."""

FieldName = Annotated[str, msgspec.Meta(min_length=1)]
Weight = Annotated[float, msgspec.Meta(ge=0)]


class VectorMapConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One map's vector indexes: one per field, text fields first, in order."""

    text_fields: tuple[FieldName, ...] = ()
    """String fields the server embeds."""
    vector_fields: tuple[FieldName, ...] = ()
    """Fields holding a vector written by clients: little-endian float32 bytes with the
    embedder's dimensions (a write holding anything else there is rejected)."""
    weights: dict[str, Weight] = msgspec.field(default_factory=dict)
    """RRF weights of a tri-hybrid search's lists, `vector` and `text` (default 1 each)."""

    def __post_init__(self) -> None:
        fields = self.fields
        if not fields:
            raise ValueError("a vector map needs text_fields or vector_fields")
        repeated = sorted({f for f in fields if fields.count(f) > 1})
        if repeated:
            raise ValueError(f"a field is indexed twice: {repeated}")
        unknown = sorted(set(self.weights) - {"vector", "text"})
        if unknown:
            raise ValueError(f"weights may name only 'vector' and 'text', not {unknown}")
        bad = sorted(n for n, w in self.weights.items() if not (math.isfinite(w) and w >= 0))
        if bad:
            raise ValueError(f"weights must be finite and >= 0: {bad}")

    @property
    def fields(self) -> tuple[str, ...]:
        """Every indexed field, text fields first."""
        return self.text_fields + self.vector_fields


class VectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Vector search: which embedder, how the HNSW indexes are built, and which maps."""

    embedder: Annotated[str, msgspec.Meta(min_length=1)] = "sentence-transformers"
    """A registered embedder (`register_embedders`)."""
    model: str | None = None
    """Local model folder for the embedder; unset: its default."""
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    """Texts embedded per worker-thread call."""
    connectivity: Annotated[int, msgspec.Meta(ge=2, le=256)] = 16
    """HNSW graph degree (usearch `connectivity`, "M")."""
    expansion_add: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 128
    """Candidate list size while inserting (`ef_construction`)."""
    expansion_search: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    """Candidate list size while searching (`ef`); raised to `k` when smaller."""
    snapshot_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """A changed index is written to its snapshot at most this often (and at shutdown)."""
    exact_below: Annotated[int, msgspec.Meta(ge=0)] = 4096
    """A filtered search whose filter keeps at most this many rows is answered exactly
    (brute force over those rows) instead of from the graph."""
    maps: dict[Annotated[str, msgspec.Meta(min_length=1)], VectorMapConfig] = msgspec.field(
        default_factory=dict
    )
    """Vector-indexed maps by name."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.connectivity < 2 or self.expansion_search < 1:
            raise ValueError("batch_size, connectivity and expansion_search must be positive")
        if not (math.isfinite(self.snapshot_interval_s) and self.snapshot_interval_s > 0):
            raise ValueError("snapshot_interval_s must be a positive number")
