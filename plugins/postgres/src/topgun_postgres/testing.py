"""Test helpers: a fresh schema on the test PostgreSQL, dropped afterwards.

The test database is `test` on the PostgreSQL of `topgun.testing.SERVICES` (trust auth);
`scratch_schema()` skips (or fails under `TOPGUN_REQUIRE_SERVICES=1`) when it is
unreachable.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import anyio
import asyncpg

from topgun.testing import require_service
from topgun_postgres.backend import PostgresConfig

TEST_DATABASE = "test"


def test_dsn() -> str:
    """The DSN of the test database (skips or fails when PostgreSQL is unreachable)."""
    host, port = require_service("postgres")
    user = os.environ.get("PGUSER", "postgres")
    return f"postgresql://{user}@{host}:{port}/{TEST_DATABASE}"


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop `schema` and everything in it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_schema(prefix: str = "topgun_test") -> Iterator[PostgresConfig]:
    """A `PostgresConfig` on a schema name of its own (created by the backend on first
    use), dropped on exit. Use it outside a running event loop (a sync fixture)."""
    dsn = test_dsn()
    config = PostgresConfig(dsn=dsn, schema=f"{prefix}_{uuid.uuid4().hex[:12]}", retry_for_s=30.0)
    try:
        yield config
    finally:
        anyio.run(drop_schema, dsn, config.schema)
