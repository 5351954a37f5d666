"""The key ring: named AES-256 keys, one of them active for new writes.

A key ring is text, one key per line, `name:base64-of-32-bytes`; blank lines and lines
starting with `#` are ignored, and in an environment variable commas separate the keys
too. New values are encrypted with the active key (by default the last one listed); the
others stay there so that values encrypted with them remain readable until
`topgun crypto rotate` has re-encrypted them.

A stored value names its key by *fingerprint*, an HMAC of the key itself, so a ring
holding another key under the same name is told apart from the right one: the value is
reported as encrypted with a key the ring does not hold, not as tampered with. Key bytes
never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

KEY_BYTES: Final = 32
"""AES-256: every key is 32 bytes."""
FINGERPRINT_BYTES: Final = 8
"""How much of the HMAC-SHA256 of a key names it in stored values."""
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyRingError(ValueError):
    """The key ring cannot be used: missing, malformed, or without the active key. The
    message says where the problem is, never what a key holds."""


def fingerprint(key: bytes) -> bytes:
    """The id a value encrypted with `key` carries: HMAC-SHA256(key, label), truncated.
    It reveals nothing usable about the key (a keyed hash of a constant)."""
    return hmac.digest(key, b"topgun-crypto key fingerprint v1", hashlib.sha256)[:FINGERPRINT_BYTES]


def generate_key() -> bytes:
    """A new random 32-byte key (from the operating system's CSPRNG)."""
    return os.urandom(KEY_BYTES)


def format_key(name: str, key: bytes) -> str:
    """One key ring line, `name:base64`, for a key file or `TOPGUN_CRYPTO_KEYS`."""
    _check_name(name, "key name")
    return f"{name}:{base64.b64encode(key).decode()}"


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise KeyRingError(f"{what} {name!r} is not 1-64 of A-Z a-z 0-9 . _ -")


class KeyRing:
    """Named 32-byte keys and the name of the active one."""

    __slots__ = ("_active", "_by_fingerprint", "_keys")

    def __init__(self, keys: Iterable[tuple[str, bytes]], *, active: str | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._by_fingerprint: dict[bytes, str] = {}
        for name, key in keys:
            _check_name(name, "key name")
            if name in self._keys:
                raise KeyRingError(f"the key ring names key {name!r} twice")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise KeyRingError(f"key {name!r} is not {KEY_BYTES} bytes (AES-256)")
            print_ = fingerprint(key)
            if print_ in self._by_fingerprint:
                other = self._by_fingerprint[print_]
                raise KeyRingError(f"keys {other!r} and {name!r} are the same key")
            self._keys[name] = key
            self._by_fingerprint[print_] = name
        if not self._keys:
            raise KeyRingError("the key ring holds no key")
        if active is None:
            active = next(reversed(self._keys))
        if active not in self._keys:
            raise KeyRingError(
                f"the active key {active!r} is not in the key ring (it holds {self.names})"
            )
        self._active = active

    @classmethod
    def parse(cls, text: str, *, source: str, active: str | None = None) -> KeyRing:
        """Read `name:base64` entries from `text` (lines, or commas in one line);
        `source` (a file name, a variable) is what errors name."""
        entries: list[tuple[str, bytes]] = []
        for number, line in enumerate(re.split(r"[\n,]", text), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            name, colon, encoded = entry.partition(":")
            if not colon:
                raise KeyRingError(f"{source}: entry {number} is not name:base64-key")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"{source}: key {name.strip()!r} is not base64") from None
            entries.append((name.strip(), key))
        try:
            return cls(entries, active=active)
        except KeyRingError as exc:
            raise KeyRingError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path, *, active: str | None = None) -> KeyRing:
        """The key ring in file `path` (see `parse`)."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise KeyRingError(f"cannot read the key file {path}: {reason}") from None
        return cls.parse(text, source=str(path), active=active)

    @property
    def names(self) -> list[str]:
        """The key names, in the order given."""
        return list(self._keys)

    @property
    def active(self) -> str:
        """The name of the key new values are encrypted with."""
        return self._active

    def key(self, name: str) -> bytes:
        """The key called `name`."""
        return self._keys[name]

    def name_of(self, key_fingerprint: bytes) -> str | None:
        """The name of the key with that fingerprint; `None` if the ring does not hold it."""
        return self._by_fingerprint.get(key_fingerprint)

    def __repr__(self) -> str:
        return f"KeyRing(names={self.names!r}, active={self._active!r})"
