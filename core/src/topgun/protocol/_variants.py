"""Decode-time variants of the wire types, generated from them (private to the codec).

msgspec validates while it decodes, but three TopGun rules fall outside its strict mode: ext 0
means "absent" (J1), an integer field may arrive as an integral float64 (J2), and values of type
`any` must not nest without bound. Lax mode would accept the floats, but it also turns `"12"` into
12 and `1` into `True`, which the spec forbids. So the codec decodes in three steps:

1. strict decoding into a *shadow* of the target type, where every `int` is `int | float` within
   ±(2^53-1) (the range of protocol integers), every optional field also accepts an ext (ext 0
   is nil there), every `any` value is kept raw (`msgspec.Raw`, decoded and depth-checked by the
   codec's hook) and a recursive type is unrolled to the nesting limit;
2. `msgspec.to_builtins` with that hook (ext 0 → nil, raw values decoded);
3. lax conversion into the *target*, which is the public type itself except where a field
   holds ops validated one by one (`Sequence[ClientOp | InvalidOp]`): there a twin class with
   `list[ClientOp]` stands in and is rebuilt into the public class afterwards. Because step 1 was
   strict, the only lax conversion left to happen in step 3 is integral float → int.

The *tree* mode of a shadow is the same, for values already parsed into Python objects (the
exact path): `any` values are handed to the hook as objects instead of raw bytes.
"""

from __future__ import annotations

import collections.abc
import types
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta, Raw, UnsetType
from msgspec.msgpack import Ext

from topgun.protocol.writes import InvalidOp

__all__ = ["SAFE_INTEGER", "Content", "Leaf", "Mode", "Variants"]

_NONE = type(None)
_SAFE = 2**53 - 1
SAFE_INTEGER = Union[  # noqa: UP007
    Annotated[int, Meta(ge=-_SAFE, le=_SAFE)], Annotated[float, Meta(ge=-_SAFE, le=_SAFE)]
]
"""What the shadow of an `int` field accepts: a JS safe integer, possibly as a float64 (J2,
J3: protocol integers are below 2^53, so that encoding them as float64 is exact)."""
_SCALARS = (str, float, bool, bytes, _NONE, UnsetType)
_SEQUENCES = (list, collections.abc.Sequence)


class Content:
    """An `any` value on the tree path, wrapped by the decode hook once its depth is checked."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Leaf(Content):
    """Stands for a recursive field (a predicate's `children`) at the nesting limit: only an
    empty list may appear there."""

    __slots__ = ()


class Mode(Enum):
    RAW = "raw"
    """Decoding bytes: `any` values stay `msgspec.Raw`."""
    TREE = "tree"
    """Converting parsed Python values: `any` values become `Content`."""


class _LimitReached(Exception):
    """A recursive type was unrolled to the nesting limit."""


def _union(members: list[Any]) -> Any:
    unique: list[Any] = []
    for member in members:
        if member not in unique:
            unique.append(member)
    return unique[0] if len(unique) == 1 else Union[tuple(unique)]  # noqa: UP007


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _children(tp: Any) -> list[Any]:
    """The types a type refers to directly (struct fields for a struct, arguments otherwise)."""
    if _is_struct(tp):
        return [field.type for field in msgspec.structs.fields(tp)]
    return [arg for arg in get_args(tp) if not isinstance(arg, str | int | bool)]


class Variants:
    """Builds and caches the shadow and target variants of wire types for one nesting limit."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.twins: dict[type, type] = {}
        self._shadows: dict[tuple[type, Mode, int | None], type] = {}
        self._targets: dict[type, type] = {}
        self._recursive: dict[type, bool] = {}

    # -- shadows ---------------------------------------------------------------------------

    def shadow(self, tp: Any, mode: Mode) -> Any:
        """The strict decode type for `tp` in `mode`."""
        return self._shadow(tp, mode, None)

    def _shadow(self, tp: Any, mode: Mode, budget: int | None) -> Any:
        if tp is Any:
            return Raw if mode is Mode.RAW else Content
        if tp is int:
            return SAFE_INTEGER
        if tp in _SCALARS:
            return tp
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is Annotated:
            # Constraints are checked by the target in step 3.
            return self._shadow(args[0], mode, budget)
        if origin is Literal:
            return tp
        if origin in (Union, types.UnionType):
            kept = [arg for arg in args if arg is not InvalidOp]
            members = [self._shadow(arg, mode, budget) for arg in kept]
            if _NONE in kept:
                members.append(Ext)
            return _union(members)
        if origin in _SEQUENCES:
            return list[self._shadow(args[0], mode, budget)]  # type: ignore[misc]
        if origin is dict:
            return dict[args[0], self._shadow(args[1], mode, budget)]  # type: ignore[misc,valid-type]
        if _is_struct(tp):
            return self._shadow_struct(tp, mode, budget)
        raise TypeError(f"no decode variant for {tp!r}")

    def _shadow_struct(self, cls: type, mode: Mode, budget: int | None) -> type:
        if self._is_recursive(cls):
            budget = self.max_depth if budget is None else budget - 1
            if budget <= 0:
                raise _LimitReached
        else:
            budget = None
        key = (cls, mode, budget)
        if key not in self._shadows:
            fields: list[tuple[str, Any, Any]] = []
            for field in msgspec.structs.fields(cls):
                try:
                    field_type = self._shadow(field.type, mode, budget)
                except _LimitReached:
                    if field.default is not None:
                        raise
                    field_type = Leaf | None
                fields.append((field.name, field_type, field.default))
            self._shadows[key] = self._define(f"_Shadow{cls.__name__}", cls, fields, shadow=True)
        return self._shadows[key]

    def _is_recursive(self, cls: type) -> bool:
        if cls not in self._recursive:
            seen: set[int] = set()
            todo = list(_children(cls))
            found = False
            while todo and not found:
                tp = todo.pop()
                if id(tp) in seen:
                    continue
                seen.add(id(tp))
                found = tp is cls
                todo.extend(_children(tp))
            self._recursive[cls] = found
        return self._recursive[cls]

    # -- targets ---------------------------------------------------------------------------

    def target(self, tp: Any) -> Any:
        """The lax-conversion type for `tp`: `tp` itself unless it holds per-op lists."""
        origin = get_origin(tp)
        args = get_args(tp)
        if _is_struct(tp):
            return self._target_struct(tp)
        if origin in (Union, types.UnionType):
            members = [self.target(arg) for arg in args if arg is not InvalidOp]
            return tp if members == list(args) else _union(members)
        if origin in _SEQUENCES:
            inner = self.target(args[0])
            return tp if inner is args[0] else list[inner]  # type: ignore[valid-type]
        if origin is dict:
            inner = self.target(args[1])
            return tp if inner is args[1] else dict[args[0], inner]  # type: ignore[valid-type]
        return tp

    def _target_struct(self, cls: type) -> type:
        if cls not in self._targets:
            self._targets[cls] = cls  # provisional: recursion through `cls` keeps `cls`
            fields = [
                (field.name, self.target(field.type), field.default)
                for field in msgspec.structs.fields(cls)
            ]
            originals = [field.type for field in msgspec.structs.fields(cls)]
            if [field[1] for field in fields] != originals:
                twin = self._define(f"_Target{cls.__name__}", cls, fields, shadow=False)
                self.twins[twin] = cls
                self._targets[cls] = twin
        return self._targets[cls]

    def rebuild(self, obj: Any) -> Any:
        """Turn an instance of a twin class (and twins inside it) into the public class."""
        public = self.twins.get(obj.__class__)
        if public is None:
            return obj
        return public(**{name: self.rebuild(getattr(obj, name)) for name in obj.__struct_fields__})

    def per_op_paths(self, cls: type) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Paths (attribute names, wire names) from `cls` to its per-op validated lists."""
        paths: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        for field in msgspec.structs.fields(cls):
            candidates = [field.type, *get_args(field.type)]
            if any(InvalidOp in get_args(_inner(tp)) for tp in candidates):
                paths.append(((field.name,), (field.encode_name,)))
                continue
            for tp in candidates:
                if _is_struct(tp):
                    for attrs, names in self.per_op_paths(tp):
                        paths.append(((field.name, *attrs), (field.encode_name, *names)))
        return paths

    def _define(
        self, name: str, cls: type, fields: list[tuple[str, Any, Any]], *, shadow: bool
    ) -> type:
        config = cls.__struct_config__  # type: ignore[attr-defined]
        rename = {field.name: field.encode_name for field in msgspec.structs.fields(cls)}
        specs: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (fname, ftype) if default is msgspec.NODEFAULT else (fname, ftype, default)
            for fname, ftype, default in fields
        ]
        return msgspec.defstruct(
            name,
            specs,
            module=__name__,
            tag_field=config.tag_field,
            tag=config.tag,
            rename=rename,
            omit_defaults=True,
            kw_only=True,
            frozen=not shadow and config.frozen,
            gc=False,
        )


def _inner(tp: Any) -> Any:
    """The element type of a sequence type (or `tp` itself)."""
    if get_origin(tp) in _SEQUENCES:
        return get_args(tp)[0]
    return tp
