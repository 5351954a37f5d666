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
    DeferredDurability,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    ORSnapshot,
    PagedBackend,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    ReportsStatus,
    StorageBackend,
    StorageStatus,
    StoredValue,
    check_batch,
    check_page_request,
    recodable_under,
)
from topgun.storage.errors import (
    InvalidChangeError,
    MapKindError,
    StorageClosedError,
    StorageConfigError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StorageOpenError,
    StorageUnavailableError,
    StorageWriteError,
    ValueCodecError,
)
from topgun.storage.memory import MemoryBackend, MemoryStore
from topgun.storage.registry import codec_pipeline, open_configured_storage, open_storage
from topgun.storage.sqlite import SCHEMA_VERSION, SQLiteBackend, SQLiteOptions
from topgun.storage.tiering import ArchivingBackend, BudgetedBackend, MemoryBudget, value_size
from topgun.storage.writebehind import WriteBehind, WriteBehindConfig
from topgun.storage.writer import Commit, StorageWriter, Submit

__all__ = [
    "SCHEMA_VERSION",
    "AddORRecord",
    "ArchivingBackend",
    "Area",
    "BackendConfig",
    "BackendFactory",
    "BackendWrapper",
    "BudgetedBackend",
    "Change",
    "CodecContext",
    "CodecPipeline",
    "Commit",
    "ContextualCodec",
    "DeferredDurability",
    "DeleteKey",
    "InvalidChangeError",
    "LWWSnapshot",
    "MapInfo",
    "MapKind",
    "MapKindError",
    "MapPage",
    "MapSnapshot",
    "MemoryBackend",
    "MemoryBudget",
    "MemoryStore",
    "ORSnapshot",
    "PagedBackend",
    "PruneORTag",
    "PruneRecord",
    "PutMeta",
    "PutRecord",
    "RecodableBackend",
    "RemoveORTag",
    "ReportsStatus",
    "SQLiteBackend",
    "SQLiteOptions",
    "StorageBackend",
    "StorageClosedError",
    "StorageConfigError",
    "StorageCorruptError",
    "StorageError",
    "StorageFullError",
    "StorageOpenError",
    "StorageStatus",
    "StorageUnavailableError",
    "StorageWriteError",
    "StorageWriter",
    "StoredValue",
    "Submit",
    "ValueCodecError",
    "WriteBehind",
    "WriteBehindConfig",
    "check_batch",
    "check_page_request",
    "codec_pipeline",
    "open_configured_storage",
    "open_storage",
    "recodable_under",
    "value_size",
]
