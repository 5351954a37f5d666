"""The `[crypto]` configuration section and the key ring it points at."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec

from topgun.server.config import Secret
from topgun.storage import StorageConfigError
from topgun_crypto.keyring import KeyRing, KeyRingError

SECTION: Final = "crypto"
"""The TOML table `[crypto]`, the variables `TOPGUN_CRYPTO_*`, and the codec's name."""


class CryptoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the key ring comes from: `keys` (best set as `TOPGUN_CRYPTO_KEYS`) or
    `key_file`, exactly one of them."""

    keys: Secret | None = None
    """The key ring itself, `name:base64` entries separated by commas or newlines."""
    key_file: Path | None = None
    """A file holding the key ring, one `name:base64` entry per line."""
    active_key: str | None = None
    """The key new values are encrypted with; unset: the last one of the ring."""
    rotate_on_startup: bool = False
    """Re-encrypt values under other keys with the active key, in the background, while
    the server serves (what `topgun crypto rotate` does with the server stopped)."""

    def __post_init__(self) -> None:
        if self.keys is not None and self.key_file is not None:
            raise ValueError("set keys or key_file, not both")


def crypto_config(config: Any) -> CryptoConfig:
    """The `[crypto]` section of a server configuration (its defaults when the
    configuration was built without plugin sections)."""
    sections = getattr(config, "sections", {})
    found = sections.get(SECTION, CryptoConfig())
    if not isinstance(found, CryptoConfig):
        raise StorageConfigError(f"[{SECTION}] is a {type(found).__name__}, not a CryptoConfig")
    return found


def load_keyring(section: CryptoConfig) -> KeyRing:
    """The configured key ring. A missing or unusable one is a `StorageConfigError` that
    says what to set, and never shows key material."""
    try:
        if section.keys is not None:
            return KeyRing.parse(
                section.keys.reveal(), source="TOPGUN_CRYPTO_KEYS", active=section.active_key
            )
        if section.key_file is not None:
            return KeyRing.from_file(section.key_file, active=section.active_key)
    except KeyRingError as exc:
        raise StorageConfigError(f"[{SECTION}]: {exc}") from None
    raise StorageConfigError(
        f"the storage codec {SECTION!r} is configured but no key is: set TOPGUN_CRYPTO_KEYS "
        f"or [{SECTION}] key_file (`topgun crypto keygen` makes a key)"
    )
