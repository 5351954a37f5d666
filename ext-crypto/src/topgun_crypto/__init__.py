"""Encryption at rest for topgun: an AES-256-GCM value codec with a key ring.

`AesGcmCodec` is a plain object with `encode_for(data, context)` / `decode_for(data,
context)` (a `topgun.hooks.ContextualCodec`): the server's storage applies it to every
persisted value as the codec `crypto`, and any other store can apply it with a
`topgun.storage.CodecContext` naming the map and key. `rotate` re-encrypts stored data
with the active key.
"""

from topgun_crypto.codec import (
    OVERHEAD,
    AesGcmCodec,
    CryptoError,
    TamperedError,
    UnknownKeyError,
)
from topgun_crypto.config import CryptoConfig
from topgun_crypto.keyring import KeyRing, KeyRingError, format_key, generate_key
from topgun_crypto.rotation import RotationReport, key_usage, rotate

__all__ = [
    "OVERHEAD",
    "AesGcmCodec",
    "CryptoConfig",
    "CryptoError",
    "KeyRing",
    "KeyRingError",
    "RotationReport",
    "TamperedError",
    "UnknownKeyError",
    "format_key",
    "generate_key",
    "key_usage",
    "rotate",
]
