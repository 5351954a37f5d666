"""The codec pipeline: how a value becomes the bytes storage keeps, and back.

A value is serialized with msgpack, then passed through the configured codecs in order
(say, compress then encrypt); reading undoes them in reverse order and decodes msgpack.
Every step knows what the value belongs to, a `CodecContext` of (area, map or namespace,
key), so an encrypting codec can bind its ciphertext to it as associated data: a value
copied under another key then fails to decrypt instead of being read as that key's.

Codecs come in two shapes, both registered through the `register_codecs` hook:

- `topgun.hooks.ValueCodec`: `encode(data)` / `decode(data)`, for transformations that do
  not care where the bytes belong (compression);
- `topgun.hooks.ContextualCodec` (also exported here): `encode_for(data, context)` /
  `decode_for(data, context)`, for those that do (encryption with associated data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from topgun.hooks import ContextualCodec, ValueCodec
from topgun.storage.errors import StorageConfigError, ValueCodecError

Area = Literal["lww", "ormap", "meta"]
"""Where a persisted value lives: an LWW map, an OR-Map, or the meta area."""

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


class CodecContext(msgspec.Struct, frozen=True):
    """What a persisted value belongs to: its area, map (or meta namespace) and key."""

    area: Area
    name: str
    """The map name, or the meta namespace when `area == "meta"`."""
    key: str

    def associated_data(self) -> bytes:
        """A canonical, unambiguous byte string of the context (msgpack of the three
        fields), for codecs that authenticate it, such as AEAD encryption."""
        return _ENCODER.encode((self.area, self.name, self.key))

    def describe(self) -> str:
        """`key 'k' of map 'm'` (or `of meta namespace 'n'`), for error messages."""
        where = "meta namespace" if self.area == "meta" else "map"
        return f"key {self.key!r} of {where} {self.name!r}"


_Step = Callable[[bytes, CodecContext], bytes]


def _steps(name: str, codec: object) -> tuple[_Step, _Step]:
    """The (encode, decode) functions of one codec, whichever shape it has."""
    if isinstance(codec, ContextualCodec):
        return codec.encode_for, codec.decode_for
    encode = getattr(codec, "encode", None)
    decode = getattr(codec, "decode", None)
    if not (callable(encode) and callable(decode)):
        raise StorageConfigError(
            f"codec {name!r} ({type(codec).__name__}) has neither encode/decode nor "
            "encode_for/decode_for methods"
        )
    return (lambda data, _context: encode(data)), (lambda data, _context: decode(data))


def _checked(result: object, name: str, action: str, context: CodecContext) -> bytes:
    if isinstance(result, bytes):
        return result
    raise ValueCodecError(
        f"codec {name!r} returned {type(result).__name__}, not bytes, when it was asked to "
        f"{action} the value of {context.describe()}",
        area=context.area,
        name=context.name,
        key=context.key,
    )


def _failure(verb: str, context: CodecContext, exc: Exception, stage: str) -> ValueCodecError:
    return ValueCodecError(
        f"could not {verb} the value of {context.describe()}: {stage} raised "
        f"{type(exc).__name__}: {exc}",
        area=context.area,
        name=context.name,
        key=context.key,
    )


class CodecPipeline:
    """The configured codecs, applied in order on write and in reverse order on read."""

    __slots__ = ("_names", "_steps")

    def __init__(self, codecs: Iterable[tuple[str, ValueCodec | ContextualCodec]] = ()) -> None:
        pairs = list(codecs)
        self._names = tuple(name for name, _ in pairs)
        self._steps = [(name, *_steps(name, codec)) for name, codec in pairs]

    @property
    def names(self) -> tuple[str, ...]:
        """The codec names, in encoding order (what the configuration lists)."""
        return self._names

    def __repr__(self) -> str:
        return f"CodecPipeline({list(self._names)!r})"

    def encode(self, data: bytes, context: CodecContext) -> bytes:
        """Run `data` through every codec, in order."""
        for name, encode, _ in self._steps:
            try:
                result = encode(data, context)
            except Exception as exc:
                raise _failure("encode", context, exc, f"codec {name!r}") from exc
            data = _checked(result, name, "encode", context)
        return data

    def decode(self, data: bytes, context: CodecContext) -> bytes:
        """Undo `encode`: every codec's decode, in reverse order."""
        for name, _, decode in reversed(self._steps):
            try:
                result = decode(data, context)
            except Exception as exc:
                raise _failure("decode", context, exc, f"codec {name!r}") from exc
            data = _checked(result, name, "decode", context)
        return data

    def pack(self, value: Any, context: CodecContext) -> bytes:
        """Serialize `value` with msgpack, then `encode` it."""
        try:
            data = _ENCODER.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _failure("serialize", context, exc, "msgpack") from exc
        return self.encode(data, context)

    def unpack(self, data: bytes, context: CodecContext) -> Any:
        """Undo `pack`: `decode`, then deserialize msgpack."""
        plain = self.decode(data, context)
        try:
            return _DECODER.decode(plain)
        except msgspec.DecodeError as exc:
            raise _failure("deserialize", context, exc, "msgpack") from exc
