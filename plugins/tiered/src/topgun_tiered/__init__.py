"""Tiered storage for topgun: hot values in memory within a budget, cold ones in the
storage backend, idle maps and untouched keys archived as compressed segments in a
directory or S3."""

from topgun_tiered.archive import (
    Archive,
    ArchiveCorruptError,
    KeySegmentInfo,
    Manifest,
    SegmentInfo,
)
from topgun_tiered.options import TieredOptions, parse_age, parse_size
from topgun_tiered.stores import ArchiveStoreError, DirectoryStore, ObjectStore, S3Store
from topgun_tiered.wrapper import ArchivedKeys, MapStatus, TieredBackend, wrap

__all__ = [
    "Archive",
    "ArchiveCorruptError",
    "ArchiveStoreError",
    "ArchivedKeys",
    "DirectoryStore",
    "KeySegmentInfo",
    "Manifest",
    "MapStatus",
    "ObjectStore",
    "S3Store",
    "SegmentInfo",
    "TieredBackend",
    "TieredOptions",
    "parse_age",
    "parse_size",
    "wrap",
]
