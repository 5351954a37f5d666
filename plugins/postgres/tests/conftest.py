"""Every test here gets a schema of its own on the test PostgreSQL, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from topgun_postgres import PostgresConfig
from topgun_postgres.testing import scratch_schema


@pytest.fixture
def pg_config() -> Iterator[PostgresConfig]:
    with scratch_schema() as config:
        yield config
