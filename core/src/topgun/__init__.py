"""topgun: an offline-first, in-memory data grid speaking the TopGun v2 wire protocol."""

from importlib.metadata import version as _version

__version__ = _version("topgun")

__all__ = ["__version__"]
