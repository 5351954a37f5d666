"""The TopGun v2 codec: frames to typed messages and back (PROTOCOL.md §1.2, §1.5).

Decoding accepts what TS clients (msgpackr) send: msgpack binary frames, with ext 0 as "absent"
(J1) and integral float64 in integer fields (J2); JSON text frames, and binary frames that turn
out to be JSON (§1.2). Every failure is a `ProtocolError`. Encoding produces standard msgpack
whose integers outside [-2^31, 2^32-1] are float64, so that JS decodes them as numbers (J3).

Two paths give one result. The fast path decodes straight into generated types (see
`_variants`) and decides nothing it is unsure of. The exact path parses the frame into Python
values first — with msgspec, or with `_msgpack` for what msgspec cannot represent (lone
surrogates, timestamp exts, an ext inside a value) — so it can read the `type`, the
correlation ids and each op on its own, and converts with the same generated types, so both
paths accept the same frames. Both run in C except for per-value hooks, so even a frame that
fails costs time in proportion to its size, not more.

Limits: `max_frame_bytes` (default 64 MiB; larger frames are refused before parsing, close 1009)
and `max_depth` (default 64): every `any` value (record values, topic data, processor args, …)
may nest at most `max_depth` containers, and a predicate tree at most `max_depth` nodes. Fields a
message does not declare are skipped, whatever they hold.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, Union, cast

import msgspec
from msgspec import Raw
from msgspec.msgpack import Ext

from topgun.protocol import _msgpack
from topgun.protocol._variants import Content, Leaf, Mode, Variants
from topgun.protocol.auth import Batch
from topgun.protocol.batch import unpack_batch
from topgun.protocol.catalogue import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    ClientMessage,
    ServerMessage,
)
from topgun.protocol.errors import ErrorCode, ProtocolError
from topgun.protocol.writes import ClientOp, InvalidOp

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_FRAME_BYTES",
    "Codec",
    "decode_client_frame",
    "decode_json",
    "decode_msgpack",
    "decode_server_frame",
    "decode_server_message",
    "encode",
    "encode_json",
]

DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
"""§1.1: larger inbound frames close the connection with 1009."""
DEFAULT_MAX_DEPTH: Final = 64
"""Nesting allowed inside one `any` value, and for a predicate tree."""
MAX_BATCH_NESTING: Final = 8
"""`BATCH` inside `BATCH` is tolerated (§1.3) up to this many levels."""

T = TypeVar("T")

_BINARY: Final = (bytes, bytearray, memoryview)
_TOO_DEEP: Final = "nesting deeper than"
_AT: Final = re.compile(r" - at `(\$[^`]*)`$")
_CONTAINER_MARKERS: Final = frozenset((*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF))
_NOT_CONTAINER_MARKER: Final = bytes(b for b in range(256) if b not in _CONTAINER_MARKERS)
_TIMESTAMP_MARKERS: Final = (b"\xd6\xff", b"\xd7\xff", b"\x04\xff", b"\x08\xff", b"\x0c\xff")
"""fixext4/fixext8 of type -1, and the size byte + type of ext8/16/32 timestamps."""
_JS_INT_MIN, _JS_INT_MAX = -(2**31), 2**32 - 1
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_TO_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_NESTED: Final = (dict, list, Ext)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND: Final = dt.timedelta(milliseconds=1)
_MALFORMED: Final = object()
"""What parsing gives for bytes that are not one msgpack value."""
_CORRELATION_KEYS: Final = ("queryId", "requestId", "subscriptionId")


class _Undecided(Exception):
    """The fast path cannot decide this frame; the exact path will."""


class _Target:
    """How to finish decoding one struct class (a message type, or a body type)."""

    def __init__(self, public: type, variants: Variants) -> None:
        self.target: type = variants.target(public)
        self.tree: type = variants.shadow(public, Mode.TREE)
        self.per_op = variants.per_op_paths(public)


class _Schema:
    """Everything needed to decode into one struct class, or into a union of messages by tag.

    msgspec caches what it learns about a class on the class, not on a union; so the union is
    used only by the decoders and each conversion targets the one class the tag selected.
    """

    def __init__(
        self, public: Any, variants: Variants, raw_hook: Any, tags: dict[str, type] | None
    ) -> None:
        self.tags = tags
        classes = list(tags.values()) if tags is not None else [public]
        self.by_class = {cls: _Target(cls, variants) for cls in classes}
        self.by_shadow = {variants.shadow(cls, Mode.RAW): self.by_class[cls] for cls in classes}
        shadows = tuple(self.by_shadow)
        raw = shadows[0] if len(shadows) == 1 else Union[shadows]  # noqa: UP007
        self.msgpack = msgspec.msgpack.Decoder(raw, dec_hook=raw_hook)
        self.json = msgspec.json.Decoder(raw, dec_hook=raw_hook)


def _within_depth(value: Any, limit: int) -> bool:
    """Whether `value` nests at most `limit` containers.

    Counted in C on its JSON form: strings removed, brackets kept, then each pass of
    `replace("[]", "")` peels one level. Values JSON cannot hold are walked in Python.
    """
    if value.__class__ is not dict and value.__class__ is not list:
        return value.__class__ is not Ext or _walk_depth(value, limit)
    try:
        text = msgspec.json.encode(value)
    except (TypeError, ValueError):
        return _walk_depth(value, limit)
    brackets = _JSON_STRING.sub(b"", text).translate(_TO_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def _walk_depth(value: Any, limit: int) -> bool:
    """`_within_depth` in Python, without recursion. An ext inside the value cannot be placed
    here (its map key must go): the exact parser has to read the frame."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if item.__class__ is Ext:
            raise _Undecided
        if item.__class__ is dict:
            children: Iterable[Any] = [*item, *item.values()]
        elif item.__class__ is list:
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return False
        todo.extend((child, depth) for child in children if child.__class__ in _NESTED)
    return True


def _has_timestamp_ext(data: bytes) -> bool:
    """Whether `data` may hold a timestamp ext (type -1 = 0xff right after its size): msgspec
    would decode one as a datetime where J6 wants epoch ms. False positives only cost speed."""
    return b"\xff" in data and any(marker in data for marker in _TIMESTAMP_MARKERS)


def _epoch_ms(value: Any) -> Any:
    """`value` with every datetime (a decoded timestamp ext) as epoch milliseconds (J6)."""
    if isinstance(value, dt.datetime):
        return (value - _EPOCH) // _MILLISECOND
    if value.__class__ is dict:
        return {key: _epoch_ms(item) for key, item in value.items()}
    if value.__class__ is list:
        return [_epoch_ms(item) for item in value]
    return value


class _DatetimeFound(Exception):
    pass


def _no_datetime(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        raise _DatetimeFound
    return None


def _has_datetime(tree: Any) -> bool:
    """Whether a parsed frame may hold a datetime, found in C by the json module's encoder."""
    try:
        json.dumps(tree, default=_no_datetime, skipkeys=True, check_circular=False)
    except (_DatetimeFound, RecursionError):
        return True
    return False


def _without_exts(value: Any) -> Any:
    """`value` with ext 0 applied (map key dropped, nil in an array); other exts need the exact
    parser."""
    if value.__class__ is Ext:
        if value.code != 0:
            raise _Undecided
        return None
    if value.__class__ is dict:
        return {k: _without_exts(v) for k, v in value.items() if v.__class__ is not Ext or v.code}
    if value.__class__ is list:
        return [_without_exts(item) for item in value]
    return value


def _refuse_ext(code: int, data: memoryview) -> Any:
    raise _Undecided


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unwrap(obj: Any) -> Any:
    """The exact path's `to_builtins` hook: unwraps checked values; ext 0 in an optional field
    is nil (J1); any other ext needs the exact parser (for epoch ms, or to report its path)."""
    if isinstance(obj, Content):
        return obj.value
    if obj.__class__ is Ext and obj.code == 0:
        return None
    raise _Undecided


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, InvalidOp):
        return obj.raw
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _js_numbers(node: Any) -> None:
    """Turn, in place, every integer outside [-2^31, 2^32-1] into a float (rule J3)."""
    items = node.items() if node.__class__ is dict else enumerate(node)
    for key, value in items:
        cls = value.__class__
        if cls is int:
            if value < _JS_INT_MIN or value > _JS_INT_MAX:
                try:
                    node[key] = float(value)
                except OverflowError:
                    raise ValueError(f"integer {value} is too large for a JS number") from None
        elif cls is dict or cls is list:
            _js_numbers(value)


def _finite(node: Any) -> Any:
    """A copy of `node` with NaN and infinities as None, as JSON.stringify writes them."""
    if isinstance(node, dict):
        return {key: _finite(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_finite(value) for value in node]
    if isinstance(node, float) and node - node != 0.0:
        return None
    return node


def _correlation(tree: Any, message_type: str | None) -> dict[str, str]:
    if tree.__class__ is not dict:
        return {}
    payload = tree.get("payload")
    sources = [tree, payload] if payload.__class__ is dict else [tree]
    found = {
        key: source[key]
        for source in sources
        for key in _CORRELATION_KEYS
        if isinstance(source.get(key), str)
    }
    if (
        message_type == "CLIENT_OP"
        and payload.__class__ is dict
        and isinstance(payload.get("id"), str)
    ):
        found["opId"] = payload["id"]
    return found


def _replace(obj: Any, attrs: tuple[str, ...], value: Any) -> Any:
    head, rest = attrs[0], attrs[1:]
    if rest:
        value = _replace(getattr(obj, head), rest, value)
    return msgspec.structs.replace(obj, **{head: value})


def _value_hook(decode: Callable[[Any], Any], max_depth: int, *, kind: str) -> Any:
    """The fast path's `to_builtins` hook: decodes raw `any` values and checks their depth
    (cheaply, by counting container markers, and exactly only when that bound is exceeded),
    turns an ext 0 in an optional field into nil, and gives up on anything else.

    `kind` is "json", "msgpack", or "msgpack-dates" for frames that may hold a timestamp ext:
    msgspec decodes one as a datetime, which becomes epoch milliseconds here (J6).
    """
    dates = kind == "msgpack-dates"

    def containers(data: bytes) -> int:
        if kind == "json":
            return data.count(b"[") + data.count(b"{")
        return len(data.translate(None, _NOT_CONTAINER_MARKER))

    def hook(obj: Any) -> Any:
        cls = obj.__class__
        if cls is Raw:
            value = decode(obj)
            if len(obj) > max_depth or dates:
                data = bytes(obj)
                if (
                    len(data) > max_depth
                    and containers(data) > max_depth
                    and not _within_depth(value, max_depth)
                ):
                    raise _Undecided
                if dates and _has_timestamp_ext(data):
                    value = _epoch_ms(value)
            return value
        if cls is Ext and obj.code == 0:
            return None  # J1: an optional field sent as JS undefined
        if isinstance(obj, Content):
            return obj.value
        raise _Undecided

    return hook


class Codec:
    """Decodes and encodes TopGun v2 frames under configurable limits. Thread-safe.

    The module-level functions (`decode_client_frame`, `encode`, …) use a codec with the
    default limits.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        if not 1 <= max_depth <= 128:
            raise ValueError("max_depth must be between 1 and 128")
        self.max_frame_bytes = max_frame_bytes
        self.max_depth = max_depth
        # The exact parser refuses any nesting beyond what a valid message can reach: a
        # predicate of `max_depth` nodes (two levels each) whose values nest `max_depth` more.
        self._parse_depth = 3 * max_depth + 16
        self._variants = Variants(max_depth)
        self._schemas: dict[Any, _Schema] = {}
        self._building = threading.Lock()
        self._any_with_exts = msgspec.msgpack.Decoder(ext_hook=Ext).decode
        any_msgpack = msgspec.msgpack.Decoder(ext_hook=_refuse_ext).decode
        self._msgpack_hook = _value_hook(any_msgpack, max_depth, kind="msgpack")
        self._msgpack_dates_hook = _value_hook(any_msgpack, max_depth, kind="msgpack-dates")
        self._json_hook = _value_hook(msgspec.json.Decoder().decode, max_depth, kind="json")
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_encode_hook)
        self._json_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)

    # -- public API ------------------------------------------------------------------------

    def decode_client_frame(self, frame: bytes | bytearray | memoryview | str) -> ClientMessage:
        """Decode a frame a client sent: `str` is a text (JSON) frame, bytes a binary frame."""
        schema = self._schema(ClientMessage, CLIENT_MESSAGE_TYPES)
        if isinstance(frame, str):
            data = frame.encode("utf-8", "surrogatepass")
            self._check_size(data)
            return cast(ClientMessage, self._decode_json_data(data, schema))
        return cast(ClientMessage, self._decode_binary(frame, schema))

    def decode_server_message(self, frame: bytes | bytearray | memoryview) -> ServerMessage:
        """Decode a server frame into one message (a `BATCH` stays a `Batch`)."""
        schema = self._schema(ServerMessage, SERVER_MESSAGE_TYPES)
        return cast(ServerMessage, self._decode_binary(frame, schema))

    def decode_server_frame(self, frame: bytes | bytearray | memoryview) -> list[ServerMessage]:
        """Decode a server frame into the messages it carries, in order (a `BATCH` is unpacked,
        nested ones too)."""
        messages: list[ServerMessage] = []
        self._expand(frame, messages, 0)
        return messages

    def decode_msgpack(self, data: bytes | bytearray | memoryview, tp: type[T]) -> T:
        """Decode a msgpack body into `tp` (e.g. `SyncRequest` of `POST /sync`)."""
        return cast(T, self._decode_binary(data, self._schema(tp, None), json_fallback=False))

    def decode_json(self, data: bytes | str, tp: type[T]) -> T:
        """Decode a JSON body into `tp`."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        self._check_size(raw)
        return cast(T, self._decode_json_data(raw, self._schema(tp, None)))

    def encode(self, message: msgspec.Struct) -> bytes:
        """Encode a message (or body) as msgpack that TS clients decode faithfully (J3, J5)."""
        try:
            out = self._encoder.encode(message)
        except (OverflowError, UnicodeEncodeError):
            return self._encode_builtins(message)
        # 0xcf/0xd3 start uint64/int64; absent from the bytes, no integer needs a float64.
        if b"\xcf" in out or b"\xd3" in out:
            return self._encode_builtins(message)
        return out

    def encode_json(self, message: msgspec.Struct) -> bytes:
        """Encode as JSON (HTTP, SSE): binary as base64, NaN and infinities as null."""
        try:
            return self._json_encoder.encode(message)
        except UnicodeEncodeError:
            tree = msgspec.to_builtins(message, enc_hook=_encode_hook)
            text = json.dumps(_finite(tree), ensure_ascii=True, separators=(",", ":"))
            return text.encode("ascii")

    # -- decoding --------------------------------------------------------------------------

    def _schema(self, public: Any, tags: dict[str, type[Any]] | None) -> _Schema:
        schema = self._schemas.get(public)
        if schema is None:
            with self._building:  # built once, on first use; the variant caches are shared
                schema = self._schemas.get(public)
                if schema is None:
                    schema = _Schema(public, self._variants, self._leaf_hook, tags)
                    self._schemas[public] = schema
        return schema

    def _check_size(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) > self.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {len(data)} bytes exceeds the maximum of {self.max_frame_bytes}",
            )

    def _expand(
        self, frame: bytes | bytearray | memoryview, out: list[ServerMessage], nesting: int
    ) -> None:
        message = self.decode_server_message(frame)
        if not isinstance(message, Batch):
            out.append(message)
            return
        if nesting >= MAX_BATCH_NESTING:
            raise ProtocolError(ErrorCode.TOO_DEEP, f"BATCH nested deeper than {nesting} levels")
        for inner in unpack_batch(message):
            self._expand(inner, out, nesting + 1)

    def _decode_binary(
        self, frame: bytes | bytearray | memoryview, schema: _Schema, *, json_fallback: bool = True
    ) -> Any:
        self._check_size(frame)
        data = frame if isinstance(frame, bytes) else bytes(frame)
        hook = self._msgpack_dates_hook if _has_timestamp_ext(data) else self._msgpack_hook
        fast = self._fast(data, schema, schema.msgpack, hook)
        if fast is not None:
            return fast
        tree = self._parse(data)
        if tree.__class__ is not dict:
            if json_fallback:
                # §1.2: a binary frame that is not a msgpack map is read as JSON text.
                return self._decode_json_data(data, schema)
            if tree is _MALFORMED:
                raise ProtocolError(ErrorCode.UNDECODABLE, "not a msgpack value")
        try:
            return self._from_tree(tree, schema)
        except _Undecided:
            return self._from_tree(self._parse_exactly(data), schema)

    def _parse(self, data: bytes) -> Any:
        """The frame as Python values, exts kept as `Ext` (typed fields take ext 0 as nil)."""
        try:
            tree = self._any_with_exts(data)
        except UnicodeDecodeError:
            return self._parse_exactly(data)
        except RecursionError:
            raise ProtocolError(ErrorCode.TOO_DEEP, "msgpack nests too deeply") from None
        except msgspec.DecodeError:
            return _MALFORMED
        if _has_timestamp_ext(data) and _has_datetime(tree):
            return self._parse_exactly(data)
        return tree

    def _parse_exactly(self, data: bytes) -> Any:
        """The frame as Python values under every TopGun rule (see `_msgpack`)."""
        try:
            return _msgpack.unpack(data, self._parse_depth)
        except _msgpack.Malformed:
            return _MALFORMED
        except _msgpack.TooDeep as exc:
            raise ProtocolError(ErrorCode.TOO_DEEP, str(exc)) from None
        except _msgpack.BadValue as exc:
            raise ProtocolError(ErrorCode.INVALID_FIELD, exc.detail, path=exc.path) from None

    def _decode_json_data(self, data: bytes, schema: _Schema) -> Any:
        fast = self._fast(data, schema, schema.json, self._json_hook)
        if fast is not None:
            return fast
        try:
            tree = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        except ValueError:  # also UnicodeDecodeError and json.JSONDecodeError
            raise ProtocolError(ErrorCode.UNDECODABLE, "neither msgpack nor JSON") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.TOO_DEEP, "JSON nests too deeply") from None
        return self._from_tree(tree, schema)

    def _fast(self, data: bytes, schema: _Schema, decoder: Any, hook: Any) -> Any:
        """msgspec all the way, or None when the exact path has to decide."""
        try:
            shadow = decoder.decode(data)
            tree = msgspec.to_builtins(shadow, enc_hook=hook, builtin_types=_BINARY)
            target = schema.by_shadow[shadow.__class__].target
            message: Any = msgspec.convert(tree, target, strict=False)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, _Undecided):
            return None
        return self._variants.rebuild(message)

    def _leaf_hook(self, tp: type, obj: Any) -> Any:
        """Checks an `any` value (tree path) or a recursive field at the limit (both paths)."""
        if tp is Content:
            if not _within_depth(obj, self.max_depth):  # raises _Undecided for an ext inside
                raise ValueError(f"{_TOO_DEEP} {self.max_depth} levels")
            return Content(obj)
        if tp is Leaf:
            if obj == []:
                return Leaf(obj)
            raise ValueError(f"{_TOO_DEEP} {self.max_depth} levels")
        raise TypeError(f"unexpected type {tp!r}")

    def _from_tree(self, tree: Any, schema: _Schema) -> Any:
        """The exact path: validate a parsed value into the schema's type."""
        message_type: str | None = None
        if schema.tags is not None:
            if tree.__class__ is not dict or not isinstance(tree.get("type"), str):
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, "not a map with a string `type`")
            message_type = tree["type"]
            cls = schema.tags.get(message_type)
            if cls is None:
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED_TYPE,
                    f"unsupported message type {message_type!r}",
                    path="$.type",
                    message_type=message_type,
                    correlation=_correlation(tree, message_type),
                )
        elif tree.__class__ is not dict:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "not a map")
        else:
            (cls,) = schema.by_class
        entry = schema.by_class[cls]
        # Ops are validated one by one (§5.2): take them out, convert the envelope, put back.
        pending: list[tuple[tuple[str, ...], list[Any]]] = []
        for attrs, names in entry.per_op:
            parent: Any = tree
            for name in names[:-1]:
                parent = parent.get(name) if parent.__class__ is dict else None
            if parent.__class__ is dict and parent.get(names[-1]).__class__ is list:
                pending.append((attrs, parent[names[-1]]))
                parent[names[-1]] = []
        message = self._convert(tree, entry, message_type)
        for attrs, raw_ops in pending:
            ops = [self._op(index, raw) for index, raw in enumerate(raw_ops)]
            message = _replace(message, attrs, ops)
        return message

    def _convert(self, tree: Any, entry: _Target, message_type: str | None) -> Any:
        try:
            shadow: Any = msgspec.convert(tree, entry.tree, dec_hook=self._leaf_hook)
            built = msgspec.to_builtins(shadow, enc_hook=_unwrap, builtin_types=_BINARY)
            message: Any = msgspec.convert(built, entry.target, strict=False)
        except msgspec.ValidationError as exc:
            text = str(exc)
            at = _AT.search(text)
            # Speak of the public types: a shadow's `int | float` is an `int` field.
            detail = (text[: at.start()] if at else text).replace("int | float", "int")
            detail = detail.replace(" | ext", "")
            code = ErrorCode.TOO_DEEP if _TOO_DEEP in detail else ErrorCode.INVALID_FIELD
            raise ProtocolError(
                code,
                detail,
                path=at.group(1) if at else None,
                message_type=message_type,
                correlation=_correlation(tree, message_type),
            ) from None
        return self._variants.rebuild(message)

    def _op(self, index: int, raw: Any) -> ClientOp | InvalidOp:
        try:
            entry = self._schema(ClientOp, None).by_class[ClientOp]
            return cast(ClientOp, self._convert(raw, entry, None))
        except ProtocolError as exc:
            op_id = raw.get("id") if raw.__class__ is dict else None
            where = f" at {exc.path}" if exc.path else ""
            try:
                received = _without_exts(raw)
            except RecursionError:
                raise _Undecided from None  # the exact parser bounds the nesting
            return InvalidOp(
                index,
                op_id if isinstance(op_id, str) else f"#{index}",
                f"Invalid op: {exc.detail}{where}",
                received,
            )

    # -- encoding --------------------------------------------------------------------------

    def _encode_builtins(self, message: msgspec.Struct) -> bytes:
        tree = msgspec.to_builtins(message, enc_hook=_encode_hook, builtin_types=_BINARY)
        if tree.__class__ in (dict, list):
            _js_numbers(tree)
        try:
            return msgspec.msgpack.encode(tree)
        except UnicodeEncodeError:
            return _msgpack.pack(tree)


_DEFAULT: Final = Codec()


def decode_client_frame(frame: bytes | bytearray | memoryview | str) -> ClientMessage:
    """`Codec.decode_client_frame` with the default limits."""
    return _DEFAULT.decode_client_frame(frame)


def decode_server_message(frame: bytes | bytearray | memoryview) -> ServerMessage:
    """`Codec.decode_server_message` with the default limits."""
    return _DEFAULT.decode_server_message(frame)


def decode_server_frame(frame: bytes | bytearray | memoryview) -> list[ServerMessage]:
    """`Codec.decode_server_frame` with the default limits."""
    return _DEFAULT.decode_server_frame(frame)


def decode_msgpack(data: bytes | bytearray | memoryview, tp: type[T]) -> T:
    """`Codec.decode_msgpack` with the default limits."""
    return _DEFAULT.decode_msgpack(data, tp)


def decode_json(data: bytes | str, tp: type[T]) -> T:
    """`Codec.decode_json` with the default limits."""
    return _DEFAULT.decode_json(data, tp)


def encode(message: msgspec.Struct) -> bytes:
    """`Codec.encode` (msgpack)."""
    return _DEFAULT.encode(message)


def encode_json(message: msgspec.Struct) -> bytes:
    """`Codec.encode_json`."""
    return _DEFAULT.encode_json(message)
