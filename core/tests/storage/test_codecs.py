"""The codec pipeline: order, context, reversibility and the errors it raises."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.storage import (
    CodecContext,
    CodecPipeline,
    ContextualCodec,
    StorageConfigError,
    ValueCodecError,
)

CTX = CodecContext("lww", "todos", "t1")


class Tagging:
    """Appends its name on encode and checks and strips it on decode, logging both."""

    def __init__(self, name: bytes, log: list[str]) -> None:
        self.name = name
        self.log = log

    def encode(self, data: bytes) -> bytes:
        self.log.append(f"encode {self.name.decode()}")
        return data + self.name

    def decode(self, data: bytes) -> bytes:
        self.log.append(f"decode {self.name.decode()}")
        assert data.endswith(self.name)
        return data[: -len(self.name)]


class XorWithContext:
    """A contextual codec: XOR with a keystream derived from the associated data."""

    def __init__(self) -> None:
        self.seen: list[CodecContext] = []

    def _stream(self, context: CodecContext, n: int) -> bytes:
        seed = zlib.crc32(context.associated_data()).to_bytes(4, "big")
        return (seed * (n // 4 + 1))[:n]

    def encode_for(self, data: bytes, context: CodecContext) -> bytes:
        self.seen.append(context)
        check = zlib.crc32(context.associated_data() + data).to_bytes(4, "big")
        return check + bytes(
            a ^ b for a, b in zip(data, self._stream(context, len(data)), strict=True)
        )

    def decode_for(self, data: bytes, context: CodecContext) -> bytes:
        body = data[4:]
        plain = bytes(a ^ b for a, b in zip(body, self._stream(context, len(body)), strict=True))
        if zlib.crc32(context.associated_data() + plain).to_bytes(4, "big") != data[:4]:
            raise ValueError("authentication failed")
        return plain


def test_encoding_runs_in_configured_order_and_decoding_in_reverse() -> None:
    log: list[str] = []
    pipeline = CodecPipeline([("a", Tagging(b"A", log)), ("b", Tagging(b"B", log))])
    assert pipeline.names == ("a", "b")
    stored = pipeline.encode(b"data", CTX)
    assert stored == b"dataAB"
    assert pipeline.decode(stored, CTX) == b"data"
    assert log == ["encode A", "encode B", "decode B", "decode A"]


def test_an_empty_pipeline_stores_plain_msgpack() -> None:
    pipeline = CodecPipeline()
    value = {"title": "x", "n": [1, 2.5, None]}
    assert pipeline.pack(value, CTX) == msgspec.msgpack.encode(value)
    assert pipeline.unpack(pipeline.pack(value, CTX), CTX) == value
    assert repr(pipeline) == "CodecPipeline([])"


def test_contextual_codecs_receive_the_context_and_bind_to_it() -> None:
    sealed = XorWithContext()
    assert isinstance(sealed, ContextualCodec)
    pipeline = CodecPipeline([("seal", sealed)])
    stored = pipeline.pack("secret", CTX)
    assert sealed.seen == [CTX]
    assert pipeline.unpack(stored, CTX) == "secret"
    moved = CodecContext("lww", "todos", "t2")
    with pytest.raises(ValueCodecError, match="authentication failed") as caught:
        pipeline.unpack(stored, moved)
    assert (caught.value.area, caught.value.name, caught.value.key) == ("lww", "todos", "t2")


def test_associated_data_tells_every_field_apart() -> None:
    contexts = [
        CodecContext("lww", "a", "bc"),
        CodecContext("lww", "ab", "c"),
        CodecContext("ormap", "a", "bc"),
        CodecContext("meta", "a", "bc"),
    ]
    data = {context.associated_data() for context in contexts}
    assert len(data) == len(contexts)
    assert CodecContext("lww", "a", "bc").associated_data() == msgspec.msgpack.encode(
        ["lww", "a", "bc"]
    )


def test_an_object_that_is_no_codec_is_a_config_error() -> None:
    with pytest.raises(StorageConfigError, match="codec 'nope' \\(int\\)"):
        CodecPipeline([("nope", 42)])  # type: ignore[list-item]


def test_a_failing_codec_is_named_with_map_and_key() -> None:
    class Broken:
        def encode(self, data: bytes) -> bytes:
            raise RuntimeError("no key loaded")

        def decode(self, data: bytes) -> bytes:
            return data

    pipeline = CodecPipeline([("aes", Broken())])
    with pytest.raises(
        ValueCodecError,
        match="could not encode the value of key 't1' of map 'todos': codec 'aes' raised "
        "RuntimeError: no key loaded",
    ):
        pipeline.pack(1, CTX)


def test_a_codec_returning_no_bytes_is_an_error() -> None:
    class Texty:
        def encode(self, data: bytes) -> Any:
            return data.decode("latin-1")

        def decode(self, data: bytes) -> bytes:
            return data

    pipeline = CodecPipeline([("texty", Texty())])
    with pytest.raises(ValueCodecError, match="codec 'texty' returned str, not bytes"):
        pipeline.encode(b"x", CodecContext("meta", "locks", "l1"))


def test_values_msgpack_cannot_hold_are_errors_naming_the_key() -> None:
    with pytest.raises(ValueCodecError, match="serialize the value of key 't1' of map 'todos'"):
        CodecPipeline().pack(object(), CTX)
    with pytest.raises(ValueCodecError, match="deserialize"):
        CodecPipeline().unpack(b"\xc1", CTX)  # 0xc1 is never used in msgpack


@settings(max_examples=60)
@given(
    data=st.binary(max_size=300),
    order=st.permutations(["zlib", "xor", "tag"]),
    key=st.text(max_size=10),
)
def test_decode_undoes_encode_for_any_codec_order(data: bytes, order: list[str], key: str) -> None:
    class Zlib:
        def encode(self, data: bytes) -> bytes:
            return zlib.compress(data)

        def decode(self, data: bytes) -> bytes:
            return zlib.decompress(data)

    codecs = {"zlib": Zlib(), "xor": XorWithContext(), "tag": Tagging(b"T", [])}
    pipeline = CodecPipeline((name, codecs[name]) for name in order)  # type: ignore[misc]
    context = CodecContext("ormap", "m", key)
    assert pipeline.decode(pipeline.encode(data, context), context) == data
