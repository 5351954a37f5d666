"""The `[audit]` section of the server configuration (`TOPGUN_AUDIT_*` in the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

SECTION: Final = "audit"
"""The configuration section's name: the TOML table `[audit]`."""

OnFull = Literal["block", "fail_closed"]


class AuditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the audit log is written."""

    enabled: bool = True
    """False: the plugin stays installed but records nothing (no log is opened)."""
    directory: Path | None = None
    """Where the log files live; unset: `<data_dir>/audit`."""
    max_file_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 64 * 1024 * 1024
    """The active file is rotated before a line would take it past this size."""
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    """Entries waiting for the writer thread at most; beyond, `on_full` applies."""
    on_full: OnFull = "block"
    """`block`: requests wait for room in the queue. `fail_closed`: writes and
    authentications are refused while the queue is full (records of what already
    happened still wait for room). Never a silent drop."""
    fsync: bool = True
    """fsync the log and its head after every batch of entries."""

    def log_directory(self, data_dir: Path) -> Path:
        """The directory of the log for a server whose data lives in `data_dir`."""
        return self.directory if self.directory is not None else data_dir / "audit"
