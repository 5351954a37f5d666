"""The zstd codec: headers, thresholds, dictionaries, errors, and the ratio it reaches."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from topgun.storage import CodecContext, CodecPipeline, ValueCodecError
from topgun_compress import CompressionError, DictionaryError, DictionaryStore, ZstdCodec, train

HERE = CodecContext("lww", "orders", "o1")


def test_short_and_incompressible_values_are_stored_raw_and_others_compressed() -> None:
    codec = ZstdCodec(min_size=64)
    short, noise, text = b"x" * 63, os.urandom(500), b"buy milk and eggs " * 20
    assert codec.encode_for(short, HERE) == b"\x00" + short
    assert codec.encode_for(noise, HERE) == b"\x00" + noise
    packed = codec.encode_for(text, HERE)
    assert packed[0] == 0x01
    assert len(packed) < len(text) // 4
    for value in (short, noise, text, b""):
        assert codec.decode_for(codec.encode_for(value, HERE), HERE) == value


def test_values_read_back_whatever_the_current_settings() -> None:
    text = b'{"title": "a long enough title", "done": false}' * 10
    written = [ZstdCodec(level=level, min_size=size).encode_for(text, HERE) for level, size in
               [(1, 0), (19, 64), (3, 10_000)]]  # fmt: skip
    reader = ZstdCodec(level=7, min_size=5)
    assert [reader.decode_for(value, HERE) for value in written] == [text] * 3


def test_bad_settings_and_bad_stored_bytes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="level must be from -7 to 22"):
        ZstdCodec(level=23)
    with pytest.raises(ValueError, match="min_size must be 0 or more"):
        ZstdCodec(min_size=-1)
    codec = ZstdCodec()
    with pytest.raises(CompressionError, match="unknown compression header 07"):
        codec.decode_for(b"\x07data", HERE)
    with pytest.raises(CompressionError, match=r"key 'o1' of map 'orders' is not a valid zstd"):
        codec.decode_for(b"\x01not a zstd frame", HERE)
    with pytest.raises(CompressionError, match="empty value"):
        codec.decode_for(b"", HERE)
    pipeline = CodecPipeline([("compress", codec)])
    with pytest.raises(ValueCodecError, match="codec 'compress' raised CompressionError") as caught:
        pipeline.unpack(b"\x02garbage", HERE)
    assert (caught.value.name, caught.value.key) == ("orders", "o1")


def samples(json_corpus: ModuleType, map_name: str, count: int) -> list[bytes]:
    return [
        msgspec.msgpack.encode(value)
        for name, _, value in json_corpus.corpus(count * 4)
        if name == map_name
    ]


def test_a_trained_dictionary_is_used_for_its_map_and_old_values_stay_readable(
    tmp_path: Path, json_corpus: ModuleType
) -> None:
    values = samples(json_corpus, "orders", 500)
    before = ZstdCodec(dictionaries=DictionaryStore(tmp_path)).encode_for(values[0], HERE)
    store = DictionaryStore(tmp_path)
    first = store.add("orders", train(values[:400], size=4096))
    codec = ZstdCodec(dictionaries=DictionaryStore(tmp_path))  # as the next start reads it
    with_dict = codec.encode_for(values[450], HERE)
    assert with_dict[0] == 0x02
    assert len(with_dict) < len(ZstdCodec().encode_for(values[450], HERE))
    other_map = codec.encode_for(values[450], CodecContext("lww", "users", "u1"))
    assert other_map[0] == 0x01  # no dictionary trained for that map
    second = store.add("orders", train(values[100:], size=4096))
    assert DictionaryStore(tmp_path).maps() == {"orders": [first, second]}
    newest = ZstdCodec(dictionaries=DictionaryStore(tmp_path))
    for stored, value in ((before, values[0]), (with_dict, values[450])):
        assert newest.decode_for(stored, HERE) == value
    (tmp_path / f"{first}.zdict").unlink()
    (tmp_path / "index.json").write_text(f'{{"maps": {{"orders": [{second}]}}}}')
    with pytest.raises(CompressionError, match=rf"dictionary {first}, which is not in"):
        ZstdCodec(dictionaries=DictionaryStore(tmp_path)).decode_for(with_dict, HERE)


def test_training_and_reading_dictionaries_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DictionaryError, match="3 sample"):
        train([b"a", b"b", b"c"])
    with pytest.raises(DictionaryError, match="could not train"):
        train([b"x"] * 10, size=4096)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DictionaryError, match=f"cannot read the dictionaries in {tmp_path}"):
        DictionaryStore(tmp_path)


def test_compression_ratio_on_a_realistic_json_corpus(
    tmp_path: Path, json_corpus: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints the ratio per map (shown with `pytest -s`); asserts it is worth having."""
    corpus = json_corpus.corpus(4000)
    store = DictionaryStore(tmp_path)
    for name in json_corpus.KINDS:
        store.add(name, train(samples(json_corpus, name, 1000)[:800], size=8192))
    plain_codec, dict_codec = ZstdCodec(), ZstdCodec(dictionaries=DictionaryStore(tmp_path))
    rows = []
    for name in json_corpus.KINDS:
        # held out: values the dictionary was not trained on
        values = [(k, msgspec.msgpack.encode(v)) for m, k, v in corpus[3200:] if m == name]
        raw = sum(len(value) for _, value in values)
        plain = sum(len(plain_codec.encode_for(v, CodecContext("lww", name, k))) for k, v in values)
        trained = sum(
            len(dict_codec.encode_for(v, CodecContext("lww", name, k))) for k, v in values
        )
        rows.append((name, raw, raw / plain, raw / trained))
    with capsys.disabled():
        print("\ncompression ratio (msgpack bytes / stored bytes), 800 held-out values")
        for name, raw, plain_ratio, dict_ratio in rows:
            print(
                f"  {name:9} {raw:8,} B  zstd-3 {plain_ratio:4.2f}x  dictionary {dict_ratio:4.2f}x"
            )
    for _, _, plain_ratio, dict_ratio in rows:
        assert plain_ratio > 1.0
        assert dict_ratio > 1.8
        assert dict_ratio > plain_ratio
