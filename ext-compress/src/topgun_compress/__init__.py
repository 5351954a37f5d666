"""Compression at rest for topgun: a zstd value codec with per-map dictionaries.

`ZstdCodec` is a plain object with `encode_for(data, context)` / `decode_for(data,
context)` (a `topgun.hooks.ContextualCodec`): the server's storage applies it to every
persisted value as the codec `compress`, before encryption, and any other store can
apply it with a `topgun.storage.CodecContext`.
"""

from topgun_compress.codec import CompressionError, ZstdCodec
from topgun_compress.config import CompressConfig
from topgun_compress.dictionaries import DictionaryError, DictionaryStore, train

__all__ = [
    "CompressConfig",
    "CompressionError",
    "DictionaryError",
    "DictionaryStore",
    "ZstdCodec",
    "train",
]
