"""topgun-vector: semantic search over synced maps with local embeddings.

Per configured (map, field) a usearch HNSW index (cosine), kept in step with the map and
persisted as snapshots; `VECTOR_SEARCH` / `VECTOR_SEARCH_SUB` answered by the server, fused
with full-text search (tri-hybrid) where the map has it. See docs/extensions/vector.md.
"""

from topgun_vector.config import VectorConfig, VectorMapConfig
from topgun_vector.embedders import (
    Embedder,
    HashEmbedder,
    SentenceTransformerEmbedder,
    default_model_path,
    make_embedder,
)
from topgun_vector.index import VectorIndex
from topgun_vector.service import VectorSearchError, VectorService

__all__ = [
    "Embedder",
    "HashEmbedder",
    "SentenceTransformerEmbedder",
    "VectorConfig",
    "VectorIndex",
    "VectorMapConfig",
    "VectorSearchError",
    "VectorService",
    "default_model_path",
    "make_embedder",
]
