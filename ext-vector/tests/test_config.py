"""The `[vector]` section: loaded from TOML through the plugin, bad values named."""

from __future__ import annotations

import pytest
import topgun_vector.plugin
from topgun_vector import VectorConfig, VectorMapConfig

from topgun.hooks import make_plugin_manager
from topgun.server.config import ConfigError, config_sections, load_config


def sections() -> dict[str, type]:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_vector.plugin, "vector")
    return config_sections(pm)


def test_the_section_loads_from_toml() -> None:
    toml = """
[vector]
embedder = "hash"
connectivity = 32

[vector.maps.articles]
text_fields = ["title", "body"]
vector_fields = ["embedding"]
weights = { text = 0.5 }
"""
    config = load_config(toml, environ={}, sections=sections())
    vector = config.section("vector")
    assert isinstance(vector, VectorConfig)
    assert vector.connectivity == 32
    articles = vector.maps["articles"]
    assert articles.fields == ("title", "body", "embedding")
    assert articles.weights == {"text": 0.5}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[vector]\nconnectivity = 1", "connectivity"),
        ("[vector]\nbatch_size = 0", "batch_size"),
        ("[vector.maps.a]\ntext_fields = []", "needs text_fields or vector_fields"),
        ("[vector.maps.a]\ntext_fields = ['x', 'x']", "indexed twice"),
        ("[vector.maps.a]\ntext_fields = ['x']\nweights = { bm25 = 1 }", "only 'vector'"),
        ("[vector.maps.a]\ntext_fields = ['x']\nweights = { text = -1 }", "weights"),
        ("[vector]\nmodels = 'x'", "models"),
    ],
)
def test_bad_values_are_reported_with_their_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(toml, environ={}, sections=sections())


def test_structs_built_in_code_check_their_combinations() -> None:
    with pytest.raises(ValueError, match="weights must be finite"):
        VectorMapConfig(("x",), weights={"text": float("inf")})
    with pytest.raises(ValueError, match="snapshot_interval_s"):
        VectorConfig(snapshot_interval_s=float("nan"))
