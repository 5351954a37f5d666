"""The errors storage raises: one type per thing that can go wrong, each message naming
the file, map or key involved."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage error."""


class StorageConfigError(StorageError):
    """The storage configuration is wrong: an unknown backend, codec or wrapper name, a bad
    backend option, or a codec list that differs from the one the data was written with."""


class StorageOpenError(StorageError):
    """The storage could not be opened or created: the data directory is missing and cannot
    be made, is not writable, or the database file cannot be opened for writing."""


class StorageCorruptError(StorageError):
    """The database file is unreadable: not a database, damaged, or written by a newer
    topgun (a schema version this one does not know)."""


class StorageClosedError(StorageError):
    """The backend or writer was used before `initialize()` or after `close()`."""


class InvalidChangeError(StorageError, ValueError):
    """A change handed to storage is malformed (wrong types, a tag that is not its
    timestamp, a bad TTL); nothing of the batch holding it was written."""


class MapKindError(StorageError):
    """A change for an LWW map names a map stored as an OR-Map, or the other way round."""


class ValueCodecError(StorageError):
    """A value could not be serialized and encoded for storage, or read back and decoded.

    `area` is `"lww"`, `"ormap"` or `"meta"`, `name` the map (or meta namespace) and `key`
    the key whose value failed.
    """

    def __init__(self, message: str, *, area: str, name: str, key: str) -> None:
        super().__init__(message)
        self.area = area
        self.name = name
        self.key = key


class StorageWriteError(StorageError):
    """The transaction holding a submitted batch failed; nothing of it was committed.

    Raised by `Commit.wait()` to every submitter whose changes were in that transaction;
    `__cause__` is the backend's error.
    """


class StorageFullError(StorageError):
    """A write-behind wrapper's staging area is at its limit and it was made to refuse
    (`WriteBehind(..., when_full="refuse")`): the batch was not accepted, nothing of it
    was staged."""


class StorageUnavailableError(StorageError):
    """The backend could not be reached (a lost database connection) for longer than it is
    configured to retry; nothing of the batch was committed."""
