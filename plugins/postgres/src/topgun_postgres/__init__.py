"""PostgreSQL storage for topgun: the `postgres` backend (asyncpg), configured in the
server configuration's `[postgres]` section."""

from topgun_postgres.backend import SCHEMA_VERSION, PostgresBackend, PostgresConfig

__all__ = ["SCHEMA_VERSION", "PostgresBackend", "PostgresConfig"]
