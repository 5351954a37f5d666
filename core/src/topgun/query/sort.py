"""Row order (PROTOCOL.md §7.4): sort field by field with the §7.1 comparator, then by key.

`_key` sorts by the record key. An absent `sort` means `{_key: "asc"}`, so every result is
deterministic. `SortSpec.order_key` turns a row into one tuple that Python compares in exactly
that order, so sorting, top-N selection, windows and cursor positions share one comparator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from topgun.query.values import attribute, sort_key

__all__ = ["KEY_FIELD", "Descending", "OrderKey", "SortField", "SortSpec"]

KEY_FIELD: Final = "_key"
"""The sort field that names the record key rather than an attribute."""

OrderKey = tuple[Any, ...]
"""A row's position: one element per sort field, then the record key."""


class Descending:
    """Wraps a sort key so that it compares in reverse (a `desc` field)."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descending) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: Descending) -> bool:
        return other.key < self.key

    def __le__(self, other: Descending) -> bool:
        return other.key <= self.key

    def __gt__(self, other: Descending) -> bool:
        return other.key > self.key

    def __ge__(self, other: Descending) -> bool:
        return other.key >= self.key

    def __repr__(self) -> str:
        return f"Descending({self.key!r})"


@dataclass(frozen=True, slots=True)
class SortField:
    field: str
    descending: bool

    @property
    def direction(self) -> Literal["asc", "desc"]:
        return "desc" if self.descending else "asc"

    def value(self, key: str, value: Any) -> Any:
        """The row's value for this field (`ABSENT` when the row has none)."""
        return key if self.field == KEY_FIELD else attribute(value, self.field)

    def position(self, field_value: Any) -> Any:
        """The element of an order key for `field_value`."""
        k = sort_key(field_value)
        return Descending(k) if self.descending else k


@dataclass(frozen=True, slots=True)
class SortSpec:
    """An effective sort: one or more fields, then the key ascending."""

    fields: tuple[SortField, ...]

    @classmethod
    def from_wire(cls, sort: Mapping[str, str] | None) -> SortSpec:
        """The effective sort of a wire `sort` map (`{_key: "asc"}` when absent or empty)."""
        if not sort:
            return DEFAULT_SORT
        fields = []
        for name, direction in sort.items():
            if direction not in ("asc", "desc"):
                raise ValueError(f'sort direction of {name!r} must be "asc" or "desc"')
            fields.append(SortField(name, direction == "desc"))
        return cls(tuple(fields))

    @property
    def first(self) -> SortField:
        return self.fields[0]

    def order_key(self, key: str, value: Any) -> OrderKey:
        """The row's position in this order: comparing two of these compares the rows."""
        return (*(f.position(f.value(key, value)) for f in self.fields), key)

    def order_key_from_values(self, field_values: tuple[Any, ...], key: str) -> OrderKey:
        """The position of a row with these sort-field values and this key (cursors)."""
        return (*(f.position(v) for f, v in zip(self.fields, field_values, strict=True)), key)

    def field_values(self, key: str, value: Any) -> tuple[Any, ...]:
        return tuple(f.value(key, value) for f in self.fields)


DEFAULT_SORT: Final = SortSpec((SortField(KEY_FIELD, False),))
