"""Key rotation: re-encrypt every stored value that is not under the active key.

The scan walks the backend's stored bytes page by page (`RecodableBackend`), reads each
value's header to skip those already under the active key, re-encrypts the others and
swaps them in with a compare-and-swap, one transaction per page. So:

- it runs beside live writes: a value written after the page was read is under the active
  key already, and the swap leaves it alone (it is counted as `overwritten`);
- an interrupted rotation loses nothing (each page commits whole or not at all) and a new
  run resumes it: pages already done are skipped on their headers, without decrypting;
- a value that fails to decrypt stops the rotation with the error naming its map and key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from topgun.storage import RecodableBackend, StoredValue
from topgun_crypto.codec import AesGcmCodec

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 500
"""Values per page: one scan, one transaction."""


@dataclass
class RotationReport:
    """What a rotation did."""

    scanned: int = 0
    """Values looked at."""
    rotated: int = 0
    """Values re-encrypted with the active key."""
    overwritten: int = 0
    """Values a concurrent write replaced between the scan and the swap (already current)."""


Progress = Callable[[int, int], None]
"""`progress(done, total)`, called after each page (`total` grows with concurrent writes)."""


async def rotate(
    backend: RecodableBackend,
    codec: AesGcmCodec,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> RotationReport:
    """Re-encrypt every value of `backend` not under `codec`'s active key (see module)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    report = RotationReport()
    total = await backend.count_values()
    after: StoredValue | None = None
    while page := await backend.scan_values(after, batch):
        stale = [value for value in page if not codec.is_current(value.data)]
        if stale:
            pairs = await anyio.to_thread.run_sync(_reencrypted, codec, stale)
            replaced = await backend.replace_values(pairs)
            report.rotated += replaced
            report.overwritten += len(stale) - replaced
        report.scanned += len(page)
        after = page[-1]
        if progress is not None:
            progress(report.scanned, max(total, report.scanned))
    return report


def _reencrypted(codec: AesGcmCodec, values: list[StoredValue]) -> list[tuple[StoredValue, bytes]]:
    return [(value, codec.reencrypt(value.data, value.context)) for value in values]


async def key_usage(backend: RecodableBackend, codec: AesGcmCodec) -> dict[str | None, int]:
    """How many stored values each key of the ring encrypts (`None`: a key not in it)."""
    usage: dict[str | None, int] = {}
    after: StoredValue | None = None
    while page := await backend.scan_values(after, DEFAULT_BATCH):
        for value in page:
            name = codec.key_name_of(value.data)
            usage[name] = usage.get(name, 0) + 1
        after = page[-1]
    return usage


@dataclass
class RotationStatus:
    """Where a rotation running inside a server is (`GET /admin/crypto/rotate`)."""

    key: str
    running: bool = True
    done: int = 0
    total: int = 0
    rotated: int = 0
    error: str | None = None


async def rotate_in_background(
    backend: RecodableBackend, codec: AesGcmCodec, status: RotationStatus | None = None
) -> None:
    """`rotate` beside a running server, logging its progress (every tenth) and outcome
    to the logger `topgun_crypto.rotation` and keeping `status` up to date; a failure is
    logged as an error, naming the map and key, and leaves the server running (values not
    yet rotated stay readable)."""
    logged = -1
    status = status or RotationStatus(codec.keyring.active)

    def progress(done: int, total: int) -> None:
        nonlocal logged
        status.done, status.total = done, total
        tenth = done * 10 // max(total, 1)
        if tenth > logged:
            logged = tenth
            logger.info("key rotation to %r: %d of %d values", codec.keyring.active, done, total)

    try:
        report = await rotate(backend, codec, progress=progress)
    except Exception as exc:
        status.error, status.running = str(exc), False
        logger.error("key rotation to %r stopped: %s", codec.keyring.active, exc)
        return
    status.rotated, status.running = report.rotated, False
    logger.info(
        "key rotation to %r done: %d of %d value(s) re-encrypted",
        codec.keyring.active,
        report.rotated,
        report.scanned,
    )
