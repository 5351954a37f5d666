"""Durable storage of maps: the backend contract, the memory and SQLite backends, the codec
pipeline applied to persisted values, and the writer that batches changes into
transactions.

Backends, codecs and wrappers are plugins (`register_storage`, `register_codecs`,
`register_storage_wrappers`); `open_storage` builds the configured combination. The
reusable conformance suite for backend authors is `topgun.storage.conformance` (it needs
pytest, so it is not imported here).
"""

from topgun.hooks import ContextualCodec
from topgun.storage.codecs import Area, CodecContext, CodecPipeline
from topgun.storage.contract import (
    AddORRecord,
    BackendConfig,
    BackendFactory,
    BackendWrapper,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapSnapshot,
    ORSnapshot,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    StorageBackend,
    StoredValue,
    check_batch,
)
from topgun.storage.errors import (
    InvalidChangeError,
    MapKindError,
    StorageClosedError,
    StorageConfigError,
    StorageCorruptError,
    StorageError,
    StorageOpenError,
    StorageWriteError,
    ValueCodecError,
)
from topgun.storage.memory import MemoryBackend, MemoryStore
from topgun.storage.registry import codec_pipeline, open_configured_storage, open_storage
from topgun.storage.sqlite import SCHEMA_VERSION, SQLiteBackend, SQLiteOptions
from topgun.storage.writer import Commit, StorageWriter

__all__ = [
    "SCHEMA_VERSION",
    "AddORRecord",
    "Area",
    "BackendConfig",
    "BackendFactory",
    "BackendWrapper",
    "Change",
    "CodecContext",
    "CodecPipeline",
    "Commit",
    "ContextualCodec",
    "DeleteKey",
    "InvalidChangeError",
    "LWWSnapshot",
    "MapInfo",
    "MapKind",
    "MapKindError",
    "MapSnapshot",
    "MemoryBackend",
    "MemoryStore",
    "ORSnapshot",
    "PruneORTag",
    "PruneRecord",
    "PutMeta",
    "PutRecord",
    "RecodableBackend",
    "RemoveORTag",
    "SQLiteBackend",
    "SQLiteOptions",
    "StorageBackend",
    "StorageClosedError",
    "StorageConfigError",
    "StorageCorruptError",
    "StorageError",
    "StorageOpenError",
    "StorageWriteError",
    "StorageWriter",
    "StoredValue",
    "ValueCodecError",
    "check_batch",
    "codec_pipeline",
    "open_configured_storage",
    "open_storage",
]
