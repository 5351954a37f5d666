"""The tiered wrapper's options (`[storage.wrapper_options.tiered]`) and their units."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from topgun.storage import MemoryBudget, StorageConfigError

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*")
_AGE_UNITS: Final = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a text such as `"512MiB"`, `"1GiB"`, `"2GB"`, `"4096"`;
    ValueError otherwise (or when not positive)."""
    if isinstance(size, bool):
        raise ValueError(f"a size is a number of bytes or a text like '1GiB', got {size!r}")
    if isinstance(size, int):
        result = size
    else:
        match = _SIZE.fullmatch(size)
        if match is None:
            raise ValueError(f"a size is a number of bytes or a text like '1GiB', got {size!r}")
        number, unit = match.groups()
        result = int(float(number) * _SIZE_UNITS[(unit or "b").lower()])
    if result <= 0:
        raise ValueError(f"a size must be positive, got {size!r}")
    return result


def parse_age(age: int | str) -> int:
    """Milliseconds from seconds (an int) or a text such as `"30d"`, `"12h"`, `"90s"`,
    `"500ms"`; ValueError otherwise (or when negative)."""
    if isinstance(age, bool):
        raise ValueError(f"an age is seconds or a text like '30d', got {age!r}")
    if isinstance(age, int):
        if age < 0:
            raise ValueError(f"an age must not be negative, got {age!r}")
        return age * 1000
    match = _AGE.fullmatch(age)
    if match is None:
        raise ValueError(f"an age is seconds or a text like '30d', '12h', '90s', got {age!r}")
    number, unit = match.groups()
    return int(float(number) * _AGE_UNITS[unit])


class TieredOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[storage.wrapper_options.tiered]`."""

    budget: int | str = "1GiB"
    """RAM for map values (LWW and OR-Map): bytes, or a text such as `"512MiB"`."""
    high_water: float = 0.85
    """Evict once the values in memory pass this fraction of the budget..."""
    low_water: float = 0.70
    """...down to this fraction."""
    archive: str = "archive"
    """Where archived maps go: a directory (relative to the data directory) or
    `s3://bucket/prefix` for S3-compatible object storage."""
    archive_after: int | str = "30d"
    """Maps and keys untouched for this long are archived (seconds or `"30d"`): by
    `topgun tier archive`, and by a running server every `archive_interval`."""
    archive_interval: int | str | None = None
    """How often a running server archives the keys untouched for `archive_after` (seconds
    or `"1h"`); `None` (the default): only on request (`topgun tier archive --url`)."""
    segment_keys: int = 10_000
    """Keys per key segment at most: reading one archived key restores its whole segment."""
    compression_level: int = 3
    """zstd level of archive segments (1-22)."""
    s3_endpoint_url: str | None = None
    """An S3-compatible service other than AWS (MinIO, Ceph, ...)."""
    s3_region: str | None = None

    def memory_budget(self) -> MemoryBudget:
        """The budget these options describe; `StorageConfigError` naming a bad one."""
        try:
            return MemoryBudget(parse_size(self.budget), self.high_water, self.low_water)
        except (TypeError, ValueError) as exc:
            raise StorageConfigError(f"storage wrapper 'tiered': {exc}") from None

    def archive_after_ms(self) -> int:
        try:
            return parse_age(self.archive_after)
        except ValueError as exc:
            raise StorageConfigError(f"storage wrapper 'tiered': archive_after: {exc}") from None

    def archive_interval_ms(self) -> int | None:
        if self.archive_interval is None:
            return None
        try:
            interval = parse_age(self.archive_interval)
        except ValueError as exc:
            raise StorageConfigError(f"storage wrapper 'tiered': archive_interval: {exc}") from None
        if interval <= 0:
            raise StorageConfigError(
                f"storage wrapper 'tiered': archive_interval must be positive, got "
                f"{self.archive_interval!r} (leave it out to archive only on request)"
            )
        return interval

    def check(self) -> None:
        """Raise `StorageConfigError` naming the first bad option."""
        self.memory_budget()
        self.archive_after_ms()
        self.archive_interval_ms()
        if isinstance(self.segment_keys, bool) or self.segment_keys < 1:
            raise StorageConfigError(
                f"storage wrapper 'tiered': segment_keys must be at least 1, got "
                f"{self.segment_keys!r}"
            )
        if not 1 <= self.compression_level <= 22:
            raise StorageConfigError(
                "storage wrapper 'tiered': compression_level must be 1 to 22, "
                f"got {self.compression_level}"
            )
        if not self.archive.strip():
            raise StorageConfigError("storage wrapper 'tiered': archive must not be empty")
        if self.archive.startswith("s3://") and not self.archive[5:].split("/", 1)[0]:
            raise StorageConfigError(
                f"storage wrapper 'tiered': archive {self.archive!r} names no bucket"
            )
