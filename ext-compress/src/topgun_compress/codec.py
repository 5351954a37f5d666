"""The zstd value codec: what every persisted value passes through before encryption.

A stored value starts with one header byte: `0x00` raw (values under `min_size`, and
values zstd would not shrink), `0x01` a zstd frame, `0x02` a zstd frame made with a
trained dictionary of the value's map (the frame names the dictionary by its id). Every
kind reads back whatever the current settings are: changing the level or the threshold,
or training a new dictionary, never makes old values unreadable.

`ZstdCodec` is a plain object (a `topgun.hooks.ContextualCodec`, since dictionaries are
chosen by map): storage applies it as the codec `compress`, and any other store can call
`encode_for` / `decode_for` with a `topgun.storage.CodecContext`.
"""

from __future__ import annotations

import threading
from typing import Final

import zstandard

from topgun.storage import CodecContext
from topgun_compress.dictionaries import DictionaryStore

RAW: Final = 0x00
ZSTD: Final = 0x01
ZSTD_DICT: Final = 0x02

DEFAULT_LEVEL: Final = 3
DEFAULT_MIN_SIZE: Final = 64
"""Values shorter than this (in bytes of msgpack) are stored raw: zstd's frame overhead
would eat what it saves."""


class CompressionError(ValueError):
    """A stored value cannot be decompressed; the message names the map and key."""


class ZstdCodec:
    """zstd at a level, raw below a size threshold, with per-map dictionaries."""

    def __init__(
        self,
        *,
        level: int = DEFAULT_LEVEL,
        min_size: int = DEFAULT_MIN_SIZE,
        dictionaries: DictionaryStore | None = None,
    ) -> None:
        if not -7 <= level <= 22:
            raise ValueError(f"the zstd level must be from -7 to 22, not {level}")
        if min_size < 0:
            raise ValueError(f"min_size must be 0 or more, not {min_size}")
        self.level = level
        self.min_size = min_size
        self.dictionaries = dictionaries
        # zstd contexts are not thread-safe: each thread (the SQLite writer's, the event
        # loop's) keeps its own, per dictionary id (0: none).
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ZstdCodec(level={self.level}, min_size={self.min_size})"

    def _compressor(
        self, dictionary: zstandard.ZstdCompressionDict | None
    ) -> zstandard.ZstdCompressor:
        cache: dict[int, zstandard.ZstdCompressor] = self._local.__dict__.setdefault("c", {})
        dict_id = dictionary.dict_id() if dictionary is not None else 0
        compressor = cache.get(dict_id)
        if compressor is None:
            compressor = cache[dict_id] = zstandard.ZstdCompressor(
                level=self.level, dict_data=dictionary
            )
        return compressor

    def _decompressor(
        self, dictionary: zstandard.ZstdCompressionDict | None
    ) -> zstandard.ZstdDecompressor:
        cache: dict[int, zstandard.ZstdDecompressor] = self._local.__dict__.setdefault("d", {})
        dict_id = dictionary.dict_id() if dictionary is not None else 0
        decompressor = cache.get(dict_id)
        if decompressor is None:
            decompressor = cache[dict_id] = zstandard.ZstdDecompressor(dict_data=dictionary)
        return decompressor

    def encode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Compress `data` (with its map's dictionary, if one was trained), or keep it raw
        when it is short or does not shrink."""
        if len(data) < self.min_size:
            return bytes([RAW]) + data
        dictionary = None
        if self.dictionaries is not None and context.area != "meta":
            dictionary = self.dictionaries.current(context.name)
        frame = self._compressor(dictionary).compress(data)
        if len(frame) >= len(data):
            return bytes([RAW]) + data
        return bytes([ZSTD_DICT if dictionary is not None else ZSTD]) + frame

    def decode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Undo `encode_for`, whichever header the value has."""
        kind, body = data[:1], data[1:]
        if kind == bytes([RAW]):
            return body
        dictionary = None
        if kind == bytes([ZSTD_DICT]):
            dictionary = self._dictionary_of(body, context)
        elif kind != bytes([ZSTD]):
            raise CompressionError(
                f"the stored value of {context.describe()} has an unknown compression "
                f"header {kind.hex() or '(empty value)'}"
            )
        try:
            return self._decompressor(dictionary).decompress(body)
        except zstandard.ZstdError as exc:
            raise CompressionError(
                f"the stored value of {context.describe()} is not a valid zstd frame: {exc}"
            ) from None

    def _dictionary_of(self, frame: bytes, context: CodecContext) -> zstandard.ZstdCompressionDict:
        try:
            dict_id = zstandard.get_frame_parameters(frame).dict_id
        except zstandard.ZstdError as exc:
            raise CompressionError(
                f"the stored value of {context.describe()} is not a valid zstd frame: {exc}"
            ) from None
        dictionary = self.dictionaries.get(dict_id) if self.dictionaries is not None else None
        if dictionary is None:
            where = self.dictionaries.directory if self.dictionaries is not None else "(none)"
            raise CompressionError(
                f"the value of {context.describe()} was compressed with dictionary {dict_id}, "
                f"which is not in the dictionary directory {where}"
            )
        return dictionary
