"""An exact msgpack reader and writer in pure Python, for the frames msgspec cannot handle.

msgspec is the codec's fast path, but it refuses strings holding a lone UTF-16 surrogate, which
TS peers send (PROTOCOL.md J5), and it cannot tell where an ext value sat. This reader applies
the TopGun rules while it parses: ext 0 (JS `undefined`) drops its map key and is nil in an
array (J1), a timestamp ext becomes epoch milliseconds (J6), any other ext is refused with its
path, strings are decoded with `surrogatepass`. It is iterative, refuses nesting beyond a limit,
and checks every claimed length against the bytes left before allocating anything.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any, Final

__all__ = ["BadValue", "Malformed", "TooDeep", "pack", "unpack"]


class Malformed(Exception):
    """The bytes are not exactly one msgpack value."""


class TooDeep(Exception):
    """Containers nest deeper than the limit."""


class BadValue(Exception):
    """Well-formed msgpack holding a value TopGun does not allow (e.g. an unknown ext type)."""

    def __init__(self, detail: str, path: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.path = path


_UNDEFINED: Final = object()
_NO_KEY: Final = object()
_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q"))
_I8, _I16, _I32, _I64 = (struct.Struct(f) for f in (">b", ">h", ">i", ">q"))
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
# Length-prefixed kinds: marker -> (length struct, kind); and fixext marker -> data length.
_SIZED: Final[dict[int, tuple[struct.Struct, str]]] = {
    0xC4: (_U8, "bin"),
    0xC5: (_U16, "bin"),
    0xC6: (_U32, "bin"),
    0xC7: (_U8, "ext"),
    0xC8: (_U16, "ext"),
    0xC9: (_U32, "ext"),
    0xD9: (_U8, "str"),
    0xDA: (_U16, "str"),
    0xDB: (_U32, "str"),
    0xDC: (_U16, "array"),
    0xDD: (_U32, "array"),
    0xDE: (_U16, "map"),
    0xDF: (_U32, "map"),
}
_NUMBERS: Final[dict[int, struct.Struct]] = {
    0xCA: _F32,
    0xCB: _F64,
    0xCC: _U8,
    0xCD: _U16,
    0xCE: _U32,
    0xCF: _U64,
    0xD0: _I8,
    0xD1: _I16,
    0xD2: _I32,
    0xD3: _I64,
}
_FIXEXT: Final[dict[int, int]] = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_CONSTANTS: Final[dict[int, Any]] = {0xC0: None, 0xC2: False, 0xC3: True}


def _path(stack: list[list[Any]]) -> str:
    parts = ["$"]
    for container, _, key, is_map in stack:
        if is_map and key is _NO_KEY:
            parts.append("[<key>]")
        elif is_map:
            parts.append(f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]")
        else:
            parts.append(f"[{len(container)}]")
    return "".join(parts)


def _ext(code: int, data: bytes, stack: list[list[Any]]) -> Any:
    if code == 0:
        return _UNDEFINED
    if code == -1:
        if len(data) == 4:
            return _U32.unpack(data)[0] * 1000
        if len(data) == 8:
            packed = _U64.unpack(data)[0]
            nanos, seconds = packed >> 34, packed & 0x3_FFFF_FFFF
        elif len(data) == 12:
            nanos, seconds = _U32.unpack_from(data)[0], _I64.unpack_from(data, 4)[0]
        else:
            raise BadValue(f"timestamp ext with {len(data)} data bytes", _path(stack))
        if nanos >= 1_000_000_000:
            raise BadValue("timestamp ext with nanoseconds >= 1e9", _path(stack))
        return seconds * 1000 + nanos // 1_000_000
    raise BadValue(f"unsupported msgpack ext type {code}", _path(stack))


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict) or key is _UNDEFINED:
        raise Malformed("a map key must be a scalar")
    return key


def unpack(data: bytes, max_depth: int) -> Any:
    """Decode exactly one msgpack value from `data` under the TopGun rules.

    Raises `Malformed` (not one complete value), `TooDeep` (more than `max_depth` nested
    containers) or `BadValue` (a disallowed ext, with its path).
    """
    end = len(data)
    pos = 0
    # Open containers: [container, items still expected, pending map key, is_map].
    stack: list[list[Any]] = []
    while True:
        if pos >= end:
            raise Malformed("truncated")
        marker = data[pos]
        pos += 1
        count = -1
        is_map = False
        value: Any
        if marker <= 0x7F:
            value = marker
        elif marker >= 0xE0:
            value = marker - 0x100
        elif 0xA0 <= marker <= 0xBF:
            size = marker & 0x1F
            if pos + size > end:
                raise Malformed("truncated string")
            value = _text(data, pos, size)
            pos += size
        elif marker <= 0x8F:
            count, is_map = marker & 0x0F, True
        elif marker <= 0x9F:
            count = marker & 0x0F
        elif marker in _CONSTANTS:
            value = _CONSTANTS[marker]
        elif marker in _NUMBERS:
            number = _NUMBERS[marker]
            if pos + number.size > end:
                raise Malformed("truncated number")
            value = number.unpack_from(data, pos)[0]
            pos += number.size
        elif marker in _FIXEXT:
            size = _FIXEXT[marker]
            if pos + 1 + size > end:
                raise Malformed("truncated ext")
            value = _ext(_I8.unpack_from(data, pos)[0], data[pos + 1 : pos + 1 + size], stack)
            pos += 1 + size
        elif marker in _SIZED:
            length, kind = _SIZED[marker]
            if pos + length.size > end:
                raise Malformed("truncated length")
            size = length.unpack_from(data, pos)[0]
            pos += length.size
            if kind == "array":
                count = size
            elif kind == "map":
                count, is_map = size, True
            elif kind == "ext":
                if pos + 1 + size > end:
                    raise Malformed("truncated ext")
                value = _ext(_I8.unpack_from(data, pos)[0], data[pos + 1 : pos + 1 + size], stack)
                pos += 1 + size
            else:
                if pos + size > end:
                    raise Malformed(f"truncated {kind}")
                value = _text(data, pos, size) if kind == "str" else data[pos : pos + size]
                pos += size
        else:
            raise Malformed(f"invalid marker 0x{marker:02x}")

        if count >= 0:
            # A container: each item takes at least one byte, so a claimed count beyond the
            # bytes left is refused before anything is allocated.
            if count * (2 if is_map else 1) > end - pos:
                raise Malformed("container claims more items than bytes left")
            if count:
                if len(stack) >= max_depth:
                    raise TooDeep(f"nesting deeper than {max_depth} levels")
                stack.append([{} if is_map else [], count, _NO_KEY, is_map])
                continue
            value = {} if is_map else []

        # Attach the value to its container, closing every container it completes.
        while stack:
            frame = stack[-1]
            container = frame[0]
            if frame[3]:
                if frame[2] is _NO_KEY:
                    frame[2] = _hashable(value)
                    break
                if value is not _UNDEFINED:
                    container[frame[2]] = value
                frame[2] = _NO_KEY
            else:
                container.append(None if value is _UNDEFINED else value)
            frame[1] -= 1
            if frame[1]:
                break
            stack.pop()
            value = container
        else:
            if pos != end:
                raise Malformed("trailing bytes")
            return None if value is _UNDEFINED else value


def _text(data: bytes, pos: int, size: int) -> str:
    try:
        return data[pos : pos + size].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise Malformed("invalid UTF-8 in a string") from exc


_INT_MIN, _INT_MAX = -(2**31), 2**32 - 1


def pack(obj: Any) -> bytes:
    """Encode builtins as msgpack with the TopGun rules: integers outside [-2^31, 2^32-1] become
    float64 (J3), strings keep lone surrogates (J5), datetimes become timestamp exts."""
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _header(out: bytearray, size: int, fix: int, fix_limit: int, markers: tuple[int, ...]) -> None:
    if size < fix_limit:
        out.append(fix | size)
    elif markers[0] and size <= 0xFF:
        out += bytes((markers[0], size))
    elif size <= 0xFFFF:
        out.append(markers[1])
        out += _U16.pack(size)
    else:
        out.append(markers[2])
        out += _U32.pack(size)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, int):
        if not _INT_MIN <= obj <= _INT_MAX:
            out.append(0xCB)
            out += _F64.pack(float(obj))
        elif obj >= 0:
            if obj <= 0x7F:
                out.append(obj)
            elif obj <= 0xFF:
                out += bytes((0xCC, obj))
            elif obj <= 0xFFFF:
                out.append(0xCD)
                out += _U16.pack(obj)
            else:
                out.append(0xCE)
                out += _U32.pack(obj)
        elif obj >= -32:
            out.append(obj & 0xFF)
        elif obj >= -0x80:
            out.append(0xD0)
            out += _I8.pack(obj)
        elif obj >= -0x8000:
            out.append(0xD1)
            out += _I16.pack(obj)
        else:
            out.append(0xD2)
            out += _I32.pack(obj)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += _F64.pack(obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        _header(out, len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        _header(out, len(data), 0, 0, (0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, dict):
        _header(out, len(obj), 0x80, 16, (0, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    elif isinstance(obj, list | tuple):
        _header(out, len(obj), 0x90, 16, (0, 0xDC, 0xDD))
        for value in obj:
            _pack(value, out)
    elif isinstance(obj, dt.datetime):
        _pack_timestamp(obj, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _pack_timestamp(value: dt.datetime, out: bytearray) -> None:
    if value.tzinfo is None:
        raise TypeError("cannot encode a naive datetime; give it a timezone")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    seconds = delta.days * 86_400 + delta.seconds
    nanos = delta.microseconds * 1000
    out += bytes((0xC7, 12, 0xFF))
    out += _U32.pack(nanos)
    out += _I64.pack(seconds)
