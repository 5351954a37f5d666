"""topgun.client: the offline-first Python client (anyio: asyncio and trio).

`TopGunClient` holds CRDT maps locally, syncs them with a topgun server over any
`Connector` (WebSocket by default), keeps unacknowledged writes in an oplog in its `Store`
(`MemoryStore` or `SQLiteStore`), and reconnects with backoff. `topgun.client.sync` is the
blocking facade for scripts and notebooks.
"""

from __future__ import annotations

from topgun.client.backoff import Backoff
from topgun.client.client import (
    ProcessResult,
    SearchResult,
    TopGunClient,
    VectorRow,
    VectorSearchResult,
)
from topgun.client.clock import Clock, SystemClock
from topgun.client.connection import Connection, ConnectionClosed, ConnectionState, Connector
from topgun.client.counters import Counter
from topgun.client.engine import ConflictEvent
from topgun.client.errors import (
    AuthError,
    ClientClosedError,
    ClientError,
    NotConnectedError,
    ProcessorError,
    RequestError,
    WriteRejectedError,
    WriteTimeoutError,
)
from topgun.client.journal import Journal, JournalPage, JournalStream
from topgun.client.live import Change, LiveQuery, LiveResult, LiveSearch, Row
from topgun.client.locks import Lock
from topgun.client.maps import LWWMapHandle, ORMapHandle
from topgun.client.sqlite import SQLiteStore
from topgun.client.store import MemoryStore, Store, StoredState
from topgun.client.topics import Topic, TopicEvent
from topgun.client.websocket import WebSocketConnection, WebSocketConnector
from topgun.client.writes import WriteHandle

__all__ = [
    "AuthError",
    "Backoff",
    "Change",
    "ClientClosedError",
    "ClientError",
    "Clock",
    "ConflictEvent",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "Connector",
    "Counter",
    "Journal",
    "JournalPage",
    "JournalStream",
    "LWWMapHandle",
    "LiveQuery",
    "LiveResult",
    "LiveSearch",
    "Lock",
    "MemoryStore",
    "NotConnectedError",
    "ORMapHandle",
    "ProcessResult",
    "ProcessorError",
    "RequestError",
    "Row",
    "SQLiteStore",
    "SearchResult",
    "Store",
    "StoredState",
    "SystemClock",
    "TopGunClient",
    "Topic",
    "TopicEvent",
    "VectorRow",
    "VectorSearchResult",
    "WebSocketConnection",
    "WebSocketConnector",
    "WriteHandle",
    "WriteRejectedError",
    "WriteTimeoutError",
]
