"""The query language, indexes, the planner, cursors and live (standing) queries.

PROTOCOL.md §7 defines the language; §6.5/§6.6 the live window and cursor semantics. Pure: no
I/O, and time only as the `now_ms` a caller passes. The server's entry points:

- `parse_query(wire_query)` → `CompiledQuery` (or `QueryError` → `ERROR 400`);
- `run_query(query, rows_or_indexed_map, now_ms=...)` → `QueryResult` for `QUERY_RESP`;
- `LiveQueries` for the `QUERY_UPDATE` transitions each applied change causes.
"""

from topgun.query.compiled import (
    DEFAULT_MAX_QUERY_LIMIT,
    CompiledQuery,
    QueryResult,
    parse_query,
    run_query,
)
from topgun.query.cursors import CURSOR_MAX_AGE_MS, CursorCheck, check_cursor, encode_cursor
from topgun.query.errors import QueryError
from topgun.query.indexes import (
    CompoundIndex,
    HashIndex,
    Index,
    IndexedMap,
    IndexKind,
    IndexSpec,
    InvertedIndex,
    SortedIndex,
)
from topgun.query.live import LiveQueries, WindowChange
from topgun.query.planner import Plan, plan
from topgun.query.predicates import Predicate, compile_predicate, compile_where
from topgun.query.sort import SortSpec
from topgun.query.values import ABSENT, canonical_json, sort_key, values_equal

__all__ = [
    "ABSENT",
    "CURSOR_MAX_AGE_MS",
    "DEFAULT_MAX_QUERY_LIMIT",
    "CompiledQuery",
    "CompoundIndex",
    "CursorCheck",
    "HashIndex",
    "Index",
    "IndexKind",
    "IndexSpec",
    "IndexedMap",
    "InvertedIndex",
    "LiveQueries",
    "Plan",
    "Predicate",
    "QueryError",
    "QueryResult",
    "SortSpec",
    "SortedIndex",
    "WindowChange",
    "canonical_json",
    "check_cursor",
    "compile_predicate",
    "compile_where",
    "encode_cursor",
    "parse_query",
    "plan",
    "run_query",
    "sort_key",
    "values_equal",
]
