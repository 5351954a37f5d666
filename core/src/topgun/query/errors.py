"""The one exception the query language raises for a query it cannot run."""

from __future__ import annotations

__all__ = ["QueryError"]


class QueryError(ValueError):
    """A query that is malformed: an unknown operator, a missing field, a bad pattern.

    The server answers it with `ERROR 400` carrying `str(error)` as the message (PROTOCOL.md
    §5.6); no subscription is created.
    """
