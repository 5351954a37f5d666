"""The generated decode variants: shadows loosen exactly what the codec finishes itself."""

from __future__ import annotations

from typing import Any, Union

import msgspec
from msgspec import Raw
from msgspec.msgpack import Ext

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import ClientOp, OpBatch, OpBatchPayload, PredicateNode
from topgun.protocol._variants import SAFE_INTEGER, Content, Leaf, Mode, Variants


def field_types(cls: Any) -> dict[str, Any]:
    return {field.encode_name: field.type for field in msgspec.structs.fields(cls)}


def test_shadow_loosens_integers_optionals_and_values() -> None:
    variants = Variants(max_depth=4)
    shadow = field_types(variants.shadow(ClientOp, Mode.RAW))
    assert shadow["timeout"] == Union[SAFE_INTEGER, None, Ext]  # noqa: UP007
    assert shadow["key"] is str
    record = field_types(variants.shadow(LWWRecord, Mode.RAW))
    assert record["value"] is Raw
    assert field_types(variants.shadow(LWWRecord, Mode.TREE))["value"] is Content
    assert field_types(variants.shadow(Timestamp, Mode.TREE))["millis"] == SAFE_INTEGER


def test_recursive_types_are_unrolled_to_the_limit() -> None:
    variants = Variants(max_depth=3)
    level = variants.shadow(PredicateNode, Mode.TREE)
    for _ in range(2):
        children = field_types(level)["children"]
        (level,) = next(arg for arg in children.__args__ if arg is not type(None)).__args__
    assert field_types(level)["children"] == Leaf | None


def test_targets_replace_per_op_lists_with_twins() -> None:
    variants = Variants(max_depth=4)
    twin = variants.target(OpBatch)
    assert twin is not OpBatch
    assert variants.twins[twin] is OpBatch
    assert variants.target(ClientOp) is ClientOp
    assert variants.per_op_paths(OpBatch) == [(("payload", "ops"), ("payload", "ops"))]
    payload_twin = field_types(twin)["payload"]
    rebuilt = variants.rebuild(twin(payload=payload_twin(ops=[])))
    assert rebuilt == OpBatch(payload=OpBatchPayload(ops=[]))
