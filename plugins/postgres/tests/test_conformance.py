"""The PostgreSQL backend passes the storage conformance suite, alone and under the
write-behind wrapper."""

from __future__ import annotations

import pytest

from topgun.storage import CodecPipeline, WriteBehind, WriteBehindConfig
from topgun.storage.conformance import BackendConformance, OpenBackend
from topgun_postgres import PostgresBackend, PostgresConfig


class TestPostgresBackend(BackendConformance):
    @pytest.fixture
    def open_backend(self, pg_config: PostgresConfig) -> OpenBackend:
        def open_backend(codecs: CodecPipeline | None = None) -> PostgresBackend:
            return PostgresBackend(pg_config, codecs=codecs)

        return open_backend


class TestWriteBehindOverPostgres(BackendConformance):
    @pytest.fixture
    def open_backend(self, pg_config: PostgresConfig) -> OpenBackend:
        def open_backend(codecs: CodecPipeline | None = None) -> WriteBehind:
            return WriteBehind(
                PostgresBackend(pg_config, codecs=codecs), WriteBehindConfig(flush_interval_ms=5)
            )

        return open_backend
