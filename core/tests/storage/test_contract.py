"""The contract's own checks: malformed changes, map kinds, value bytes, backend options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.storage import (
    AddORRecord,
    BackendConfig,
    CodecPipeline,
    DeleteKey,
    InvalidChangeError,
    MemoryBackend,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RemoveORTag,
    SQLiteOptions,
    StorageBackend,
    StorageConfigError,
    StorageError,
    check_batch,
    recodable_under,
)
from topgun.storage.contract import encoded_value, kind_of

TS = Timestamp(1, 0, "n")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ("not a list", "a batch is a sequence of changes, got str"),
        ({"a": 1}, "a batch is a sequence of changes, got dict"),
        (
            [PutRecord("m", 1, LWWRecord(1, TS))],
            r"change #0 \(PutRecord\): key must be a str, got int",
        ),
        (
            [PutRecord("m", "k", LWWRecord(1, Timestamp(1.5, 0, "n")))],
            "record timestamp: timestamp millis",
        ),  # type: ignore[arg-type]
        (
            [PutRecord("m", "k", LWWRecord(1, "1:0:n"))],
            "record timestamp must be a Timestamp, got str",
        ),  # type: ignore[arg-type]
        ([PutRecord("m", "k", LWWRecord(1, Timestamp(1, 0, 7)))], "node id"),  # type: ignore[arg-type]
        # the plain-put fast path hands every one of these to the full checks
        ([PutRecord("m", "k", LWWRecord(1, Timestamp(2**53, 0, "n")))], "timestamp millis"),
        ([PutRecord("m", "k", LWWRecord(1, Timestamp(1, -1, "n")))], "timestamp counter"),
        ([PutRecord("m", "k", LWWRecord(1, Timestamp(1, 0, "a:b")))], "node id"),
        ([PutRecord("m", "k", LWWRecord(1, Timestamp(True, 0, "n")))], "timestamp millis"),
        ([PutRecord(5, "k", LWWRecord(1, TS))], "map_name must be a str"),  # type: ignore[arg-type]
        ([PutRecord("m", "\udcff", LWWRecord(1, TS))], "is not valid Unicode text"),
        ([PutRecord("m", "k", ORMapRecord(1, TS, str(TS)))], "record must be an LWWRecord"),  # type: ignore[arg-type]
        ([PutMeta("ns", 2, b"v")], "key must be a str"),  # type: ignore[arg-type]
        ([PutRecord("m", "k", LWWRecord(1, TS, ttl_ms=-5))], "ttl_ms must be positive"),
        ([PutRecord("m", "k", LWWRecord(1, TS, ttl_ms=math.inf))], "ttl_ms must be positive"),
        ([PutRecord("m", "k", LWWRecord(1, TS, ttl_ms="5"))], "ttl_ms must be a number"),  # type: ignore[arg-type]
        (
            [AddORRecord("m", "k", ORMapRecord(1, TS, "1:0:x"))],
            "tag '1:0:x' is not its timestamp 1:0:n",
        ),
        ([RemoveORTag("m", "t", key=3)], "key must be a str"),  # type: ignore[arg-type]
        ([PruneORTag("m", None)], "tag must be a str"),  # type: ignore[arg-type]
        ([DeleteKey("m", b"k")], "key must be a str, got bytes"),  # type: ignore[arg-type]
        ([PutMeta(1, "k", b"v")], "namespace must be a str"),  # type: ignore[arg-type]
        ([PutMeta("ns", "k", bytearray(b"v"))], "value must be bytes or None"),  # type: ignore[arg-type]
        ([PutMeta("ns", "\udcff", b"v")], "is not valid Unicode text"),
        (
            [PutRecord("m", "k", LWWRecord(1, TS)), None],
            r"change #1 \(NoneType\): not a storage change",
        ),
    ],
)
def test_malformed_batches_are_rejected_with_the_change_named(batch: Any, message: str) -> None:
    with pytest.raises(InvalidChangeError, match=message):
        check_batch(batch)


def test_well_formed_changes_pass() -> None:
    record = ORMapRecord("v", TS, str(TS), ttl_ms=1.5)
    check_batch(
        (
            PutRecord("m", "", LWWRecord(None, Timestamp(2**53 - 1, 2**53 - 1, ""))),
            PruneRecord("m", "k", TS),
            AddORRecord("o", "ü", record),
            RemoveORTag("o", str(TS)),
            RemoveORTag("o", "any text", key="k"),
            PruneORTag("o", str(TS)),
            DeleteKey("m", "k"),
            PutMeta("ns", "k", None),
        )
    )


def test_each_change_names_the_kind_of_map_it_applies_to() -> None:
    assert kind_of(PutRecord("m", "k", LWWRecord(1, TS))) == "lww"
    assert kind_of(PruneRecord("m", "k", TS)) == "lww"
    assert kind_of(AddORRecord("m", "k", ORMapRecord(1, TS, str(TS)))) == "ormap"
    assert kind_of(RemoveORTag("m", "t")) == "ormap"
    assert kind_of(PruneORTag("m", "t")) == "ormap"
    assert kind_of(DeleteKey("m", "k")) is None
    assert kind_of(PutMeta("ns", "k", b"")) is None


def test_changes_serialize_as_a_tagged_union() -> None:
    changes = [
        PutRecord("m", "k", LWWRecord({"a": 1}, TS, 10)),
        AddORRecord("o", "k", ORMapRecord(1, TS, str(TS))),
        RemoveORTag("o", str(TS)),
        PutMeta("ns", "k", b"\x00"),
    ]
    change_list = list[PutRecord | AddORRecord | RemoveORTag | PutMeta]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(changes), type=change_list) == changes


def test_encoded_value_is_packed_record_value_or_raw_meta_bytes() -> None:
    codecs = CodecPipeline()
    assert encoded_value(PutRecord("m", "k", LWWRecord(None, TS)), codecs) is None
    assert encoded_value(PutRecord("m", "k", LWWRecord([1], TS)), codecs) == msgspec.msgpack.encode(
        [1]
    )
    assert encoded_value(PutMeta("ns", "k", b"raw"), codecs) == b"raw"
    assert encoded_value(PutMeta("ns", "k", None), codecs) is None
    assert encoded_value(DeleteKey("m", "k"), codecs) is None


def test_backend_options_convert_to_a_struct_or_name_the_bad_key(tmp_path: Path) -> None:
    config = BackendConfig(tmp_path, options={"synchronous": "normal"})
    assert config.options_as(SQLiteOptions, "sqlite") == SQLiteOptions(synchronous="normal")
    with pytest.raises(StorageConfigError, match=r"'sqlite': bad option: .*\$\.synchronous"):
        BackendConfig(tmp_path, options={"synchronous": 1}).options_as(SQLiteOptions, "sqlite")


def test_the_backends_satisfy_the_protocol() -> None:
    assert isinstance(MemoryBackend(), StorageBackend)
    assert not isinstance(object(), StorageBackend)


def test_a_wrapper_forwards_re_encoding_only_to_a_backend_that_can() -> None:
    backend = MemoryBackend()
    assert recodable_under(backend, "write-behind") is backend
    with pytest.raises(StorageError, match="under tiered storage cannot re-encode stored values"):
        recodable_under(object(), "tiered storage")  # type: ignore[arg-type]
