"""The AES-256-GCM value codec: what every persisted value passes through last.

A stored value is `version (1 byte) | key fingerprint (8) | nonce (12) | ciphertext and
GCM tag (16)`, 37 bytes more than the plaintext. The nonce is fresh and random for every
write. The associated data is the header followed by the value's `CodecContext` (area,
map or meta namespace, key), so bytes copied to another key, another map or another area
fail authentication instead of being read as that key's value, and a header edited to
point at another key fails too.

`AesGcmCodec` is a plain object: the server's storage uses it through the codec pipeline,
and any other store (the client's local database) can call `encode_for` / `decode_for`
with a `CodecContext` of its own, with a key ring from the application.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from topgun.storage import CodecContext
from topgun_crypto.keyring import FINGERPRINT_BYTES, KeyRing, fingerprint

FORMAT_VERSION: Final = 1
"""The first byte of every value this codec writes."""
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
HEADER_BYTES: Final = 1 + FINGERPRINT_BYTES
OVERHEAD: Final = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
"""Bytes a stored value has beyond its plaintext (37)."""


class CryptoError(ValueError):
    """A stored value cannot be decrypted; the message names the map (or meta namespace)
    and key, and why."""


class UnknownKeyError(CryptoError):
    """The value was encrypted with a key the key ring does not hold (a wrong or missing
    key, or one removed from the ring before rotation finished)."""


class TamperedError(CryptoError):
    """The value failed authentication: its bytes were changed, or were copied from
    another key, map or area."""


class AesGcmCodec:
    """AES-256-GCM with a key ring; a `topgun.hooks.ContextualCodec`."""

    __slots__ = ("_active", "_ciphers", "keyring")

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self._ciphers = {
            fingerprint(keyring.key(name)): AESGCM(keyring.key(name)) for name in keyring.names
        }
        active = keyring.key(keyring.active)
        self._active = bytes([FORMAT_VERSION]) + fingerprint(active), AESGCM(active)

    @classmethod
    def from_key(cls, key: bytes, *, name: str = "default") -> AesGcmCodec:
        """A codec with one key (32 bytes), as an application holding its own key uses."""
        return cls(KeyRing([(name, key)]))

    def __repr__(self) -> str:
        return f"AesGcmCodec({self.keyring!r})"

    def encode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Encrypt `data` with the active key and a fresh nonce, bound to `context`."""
        header, cipher = self._active
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, data, header + context.associated_data())
        return header + nonce + sealed

    def decode_for(self, data: bytes, context: CodecContext, /) -> bytes:
        """Decrypt a value `encode_for` made for `context`, with whichever key of the ring
        it names. Raises `UnknownKeyError` or `TamperedError`, naming the map and key."""
        if len(data) < OVERHEAD or data[0] != FORMAT_VERSION:
            raise TamperedError(
                f"the stored value of {context.describe()} is not an AES-GCM value of this "
                f"codec ({len(data)} bytes, format byte {data[:1].hex() or 'none'}): it was "
                "modified, or written without encryption"
            )
        header = data[:HEADER_BYTES]
        cipher = self._ciphers.get(header[1:])
        if cipher is None:
            raise UnknownKeyError(
                f"the value of {context.describe()} was encrypted with a key that is not in "
                f"the key ring (fingerprint {header[1:].hex()}; the ring holds "
                f"{self.keyring.names}): configure the key it was written with"
            )
        nonce = data[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            return cipher.decrypt(
                nonce, data[HEADER_BYTES + NONCE_BYTES :], header + context.associated_data()
            )
        except InvalidTag:
            raise TamperedError(
                f"the ciphertext of {context.describe()} failed authentication: it was "
                "modified, or copied from another key"
            ) from None

    def key_name_of(self, data: bytes) -> str | None:
        """The name of the ring's key a stored value was encrypted with (`None` when the
        ring does not hold it or the bytes are not this codec's); reads the header only."""
        if len(data) < OVERHEAD or data[0] != FORMAT_VERSION:
            return None
        return self.keyring.name_of(data[1:HEADER_BYTES])

    def is_current(self, data: bytes) -> bool:
        """Whether a stored value is encrypted with the active key (rotation skips it)."""
        return data[:HEADER_BYTES] == self._active[0]

    def reencrypt(self, data: bytes, context: CodecContext) -> bytes:
        """The value re-encrypted with the active key (what rotation stores)."""
        return self.encode_for(self.decode_for(data, context), context)
