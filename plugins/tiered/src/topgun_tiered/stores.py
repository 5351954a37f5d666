"""Where archive segments and the manifest live: a local directory or an S3 bucket.

Both stores hold named objects (`put`, `get`, `delete`); a `put` replaces an object whole
and atomically (a directory writes a temporary file, syncs it and renames it over the
old one; S3's PUT is atomic), so a crash leaves either the old or the new object.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread

from topgun.storage import StorageError, StorageOpenError


class ArchiveStoreError(StorageError):
    """The archive's object store failed (names the store and the object)."""


class ObjectStore(Protocol):
    """Named immutable objects: what the archive is kept in."""

    description: str
    """Where the objects are, for messages (`/data/archive`, `s3://bucket/prefix`)."""

    async def open(self) -> None: ...

    async def get(self, name: str) -> bytes | None:
        """The object's bytes; `None` if there is no such object."""
        ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def delete(self, name: str) -> None:
        """Remove the object (no error if it does not exist)."""
        ...

    async def close(self) -> None: ...


class DirectoryStore:
    """Objects as files under a local directory (created on `open`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise StorageOpenError(f"cannot create archive directory {self.root}: {exc}") from None

    async def get(self, name: str) -> bytes | None:
        path = self._path(name)

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        try:
            return await anyio.to_thread.run_sync(read)
        except OSError as exc:
            raise ArchiveStoreError(f"cannot read {path}: {exc}") from None

    async def put(self, name: str, data: bytes) -> None:
        path = self._path(name)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            raise ArchiveStoreError(f"cannot write {path}: {exc}") from None

    async def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        except OSError as exc:
            raise ArchiveStoreError(f"cannot delete {path}: {exc}") from None

    async def close(self) -> None:
        return None


class S3Store:
    """Objects in an S3-compatible bucket under a key prefix (aiobotocore).

    Credentials come the way botocore finds them (environment, config files, instance
    roles); `endpoint_url` points at a service other than AWS."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.client_options = client_options or {}
        self.description = f"s3://{bucket}/{self.prefix}"
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3Store:
        """`s3://bucket/prefix` -> a store."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, **kwargs)

    async def open(self) -> None:
        from aiobotocore.session import get_session  # type: ignore[import-untyped]

        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    **self.client_options,
                )
            )
            await self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            await stack.aclose()
            raise StorageOpenError(f"cannot open archive {self.description}: {exc}") from None
        self._stack = stack

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def get(self, name: str) -> bytes | None:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data
        except Exception as exc:
            if _missing(exc):
                return None
            raise ArchiveStoreError(f"cannot read {self.description}{name}: {exc}") from None

    async def put(self, name: str, data: bytes) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except Exception as exc:
            raise ArchiveStoreError(f"cannot write {self.description}{name}: {exc}") from None

    async def delete(self, name: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if not _missing(exc):
                raise ArchiveStoreError(f"cannot delete {self.description}{name}: {exc}") from None

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("NoSuchKey", "404", "NotFound")
