"""The `[compress]` configuration section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from topgun.storage import StorageConfigError
from topgun_compress.codec import DEFAULT_LEVEL, DEFAULT_MIN_SIZE, ZstdCodec
from topgun_compress.dictionaries import DictionaryError, DictionaryStore

SECTION: Final = "compress"
"""The TOML table `[compress]`, the variables `TOPGUN_COMPRESS_*`, and the codec's name."""
DICTIONARY_DIR: Final = "zstd-dictionaries"
"""The default dictionary directory, inside the data directory."""


class CompressConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How values are compressed."""

    level: Annotated[int, msgspec.Meta(ge=-7, le=22)] = DEFAULT_LEVEL
    """zstd level: higher compresses more and writes slower (negative: fastest)."""
    min_size: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MIN_SIZE
    """Values shorter than this many bytes are stored raw."""
    dictionary_dir: Path | None = None
    """Where trained dictionaries live; unset: `zstd-dictionaries` in the data directory."""


def compress_config(config: Any) -> CompressConfig:
    """The `[compress]` section (its defaults when the configuration has no sections)."""
    found = getattr(config, "sections", {}).get(SECTION, CompressConfig())
    if not isinstance(found, CompressConfig):
        raise StorageConfigError(f"[{SECTION}] is a {type(found).__name__}, not a CompressConfig")
    return found


def dictionary_dir(config: Any) -> Path:
    """The dictionary directory of a server configuration."""
    section = compress_config(config)
    if section.dictionary_dir is not None:
        return section.dictionary_dir
    return Path(config.data_dir) / DICTIONARY_DIR


def build_codec(config: Any) -> ZstdCodec:
    """The codec a server configuration describes, with its dictionaries loaded."""
    section = compress_config(config)
    try:
        dictionaries = DictionaryStore(dictionary_dir(config))
    except DictionaryError as exc:
        raise StorageConfigError(f"[{SECTION}]: {exc}") from None
    return ZstdCodec(level=section.level, min_size=section.min_size, dictionaries=dictionaries)
