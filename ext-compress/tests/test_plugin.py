"""The installed `compress` plugin: its entry point, configuration, codec in a server,
and `topgun compress train`."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from topgun.cli import build_cli
from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import ENTRY_POINT_GROUP, TopgunPluginManager, make_plugin_manager
from topgun.server.config import ConfigError, config_sections, load_config
from topgun.storage import LWWSnapshot, PutRecord, StorageConfigError, open_configured_storage


def compress_plugin(environ: dict[str, str] | None = None) -> TopgunPluginManager:
    found = [
        e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == "compress"
    ]
    assert [e.value for e in found] == ["topgun_compress.plugin"]
    return make_plugin_manager(entry_points=found, environ=environ or {})


def configure(
    pm: TopgunPluginManager, data_dir: Path, toml: str = "", codecs: str = '["compress"]'
) -> Any:
    text = f'data_dir = "{data_dir}"\n[storage]\nbackend = "sqlite"\ncodecs = {codecs}\n{toml}'
    return load_config(text, sections=config_sections(pm))


def test_the_entry_point_is_found_and_can_be_disabled() -> None:
    (info,) = compress_plugin().plugin_info()
    assert (info.name, info.distribution, info.version) == ("compress", "topgun-compress", "0.1.0")
    assert "register_codecs" in info.hooks
    disabled = compress_plugin({"TOPGUN_DISABLE_PLUGINS": "compress"})
    assert disabled.plugin_info() == []
    assert "compress" not in config_sections(disabled)


def test_a_bad_setting_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[compress\] level"):
        configure(compress_plugin(), tmp_path, "[compress]\nlevel = 99\n")
    with pytest.raises(ConfigError, match="TOPGUN_COMPRESS_MIN_SIZE"):
        load_config(
            environ={"TOPGUN_COMPRESS_MIN_SIZE": "-3"}, sections=config_sections(compress_plugin())
        )


def orders(json_corpus: ModuleType, count: int) -> list[tuple[str, Any]]:
    return [(k, v) for m, k, v in json_corpus.corpus(count * 4) if m == "orders"]


async def store(
    pm: TopgunPluginManager, config: Any, values: list[tuple[str, Any]], millis: int
) -> None:
    backend = open_configured_storage(pm, config)
    await backend.initialize()
    stamp = Timestamp(millis, 0, "n")
    await backend.store_batch([PutRecord("orders", k, LWWRecord(v, stamp)) for k, v in values])
    await backend.close()


async def stored(pm: TopgunPluginManager, config: Any) -> dict[str, Any]:
    backend = open_configured_storage(pm, config)
    await backend.initialize()
    snapshot = await backend.load_map("orders")
    raw = await backend.scan_values(None, 10_000)  # type: ignore[attr-defined]
    await backend.close()
    assert isinstance(snapshot, LWWSnapshot)
    headers = {value.context.key: value.data[0] for value in raw}
    return {key: (record.value, headers[key]) for key, record in snapshot.records.items()}


def test_train_saves_a_dictionary_that_new_writes_use_and_old_values_survive(
    tmp_path: Path, json_corpus: ModuleType
) -> None:
    pm = compress_plugin()
    config = configure(pm, tmp_path / "data", "[compress]\nlevel = 5\n")
    values = orders(json_corpus, 400)
    anyio.run(store, pm, config, values[:300], 1)
    toml = tmp_path / "topgun.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n[storage]\ncodecs = ["compress"]\n')
    runner = CliRunner()
    result = runner.invoke(
        build_cli(pm), ["compress", "train", "orders", "--config", str(toml), "--size", "4096"]
    )
    assert result.exit_code == 0, result.output
    assert "trained on 300 value(s) of map 'orders'" in result.stdout
    anyio.run(store, pm, config, values[300:], 2)  # a new start: the dictionary is read
    back = anyio.run(stored, pm, config)
    assert {key: value for key, (value, _) in back.items()} == dict(values)
    assert {back[key][1] for key, _ in values[:300]} == {0x01}  # zstd without dictionary
    assert {back[key][1] for key, _ in values[300:]} == {0x02}  # with the trained one


def test_train_refuses_clearly(tmp_path: Path, json_corpus: ModuleType) -> None:
    pm = compress_plugin()
    cli, runner = build_cli(pm), CliRunner()
    toml = tmp_path / "topgun.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n[storage]\ncodecs = ["compress"]\n')
    anyio.run(store, pm, configure(pm, tmp_path / "data"), orders(json_corpus, 3), 1)
    for args, message in [
        (["nothing"], "map 'nothing' is not stored"),
        (["orders"], "3 sample(s) are too few"),
    ]:
        result = runner.invoke(cli, ["compress", "train", *args, "--config", str(toml)])
        assert result.exit_code == 1
        assert f"topgun compress: {message}" in result.stderr
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    result = runner.invoke(cli, ["compress", "train", "orders", "--config", str(toml)])
    assert "does not list 'compress'" in result.stderr


def test_a_broken_dictionary_directory_stops_the_start(tmp_path: Path) -> None:
    pm = compress_plugin()
    (tmp_path / "data" / "zstd-dictionaries").mkdir(parents=True)
    (tmp_path / "data" / "zstd-dictionaries" / "index.json").write_text('{"maps": {"m": [1]}}')
    with pytest.raises(StorageConfigError, match=r"\[compress\]: cannot read the dictionaries"):
        open_configured_storage(pm, configure(pm, tmp_path / "data"))
