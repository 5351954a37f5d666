"""Trained zstd dictionaries, per map, kept as files beside the data.

A directory holds one `<id>.zdict` file per dictionary and `index.json`, which lists each
map's dictionary ids, newest last. New values of a map are compressed with its newest
dictionary; every dictionary stays, so values compressed with an older one remain
readable. Files are written to a temporary name and renamed, so a crash never leaves a
half-written dictionary or index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import msgspec
import zstandard

INDEX: Final = "index.json"
DEFAULT_DICT_SIZE: Final = 16 * 1024
"""Bytes of a trained dictionary (zstd's recommendation: ~100x smaller than the samples)."""


class DictionaryError(ValueError):
    """A dictionary cannot be trained, read or saved; the message says which and why."""


_TRAINER = """
import sys
import msgspec
import zstandard
size, samples = msgspec.msgpack.decode(sys.stdin.buffer.read())
try:
    dictionary = zstandard.train_dictionary(size, samples)
except zstandard.ZstdError as exc:
    sys.stderr.write(str(exc))
    sys.exit(3)
sys.stdout.buffer.write(dictionary.as_bytes())
"""


def train(samples: list[bytes], *, size: int = DEFAULT_DICT_SIZE) -> zstandard.ZstdCompressionDict:
    """A dictionary trained on `samples` (values as the codec sees them: msgpack).

    zstd's trainer is native code that can crash the process on some degenerate inputs
    (a floating point exception on a few tiny or identical samples), so it runs in a
    child process: a crash there is a `DictionaryError`, not the end of this one."""
    if len(samples) < 8:
        raise DictionaryError(f"{len(samples)} sample(s) are too few to train a dictionary")
    total = sum(len(sample) for sample in samples)
    child = subprocess.run(
        [sys.executable, "-c", _TRAINER],
        input=msgspec.msgpack.encode([size, samples]),
        capture_output=True,
        check=False,
    )
    if child.returncode != 0:
        detail = child.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"the trainer exited with status {child.returncode}"
        raise DictionaryError(
            f"zstd could not train a {size}-byte dictionary from {len(samples)} samples "
            f"({total} bytes): {reason}; use more (and more varied) values or a smaller size"
        )
    return zstandard.ZstdCompressionDict(child.stdout)


class DictionaryStore:
    """The dictionaries of a directory (read once, at construction)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._by_id: dict[int, zstandard.ZstdCompressionDict] = {}
        self._by_map: dict[str, list[int]] = {}
        index = directory / INDEX
        if not index.exists():
            return
        try:
            maps = json.loads(index.read_text(encoding="utf-8"))["maps"]
            for name, ids in maps.items():
                self._by_map[str(name)] = [int(i) for i in ids]
                for dict_id in ids:
                    data = (directory / f"{int(dict_id)}.zdict").read_bytes()
                    self._by_id[int(dict_id)] = zstandard.ZstdCompressionDict(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DictionaryError(f"cannot read the dictionaries in {directory}: {exc}") from None

    def current(self, map_name: str) -> zstandard.ZstdCompressionDict | None:
        """The dictionary new values of `map_name` are compressed with, if any."""
        ids = self._by_map.get(map_name)
        return self._by_id[ids[-1]] if ids else None

    def get(self, dict_id: int) -> zstandard.ZstdCompressionDict | None:
        """The dictionary with id `dict_id`, whichever map it was trained for."""
        return self._by_id.get(dict_id)

    def maps(self) -> dict[str, list[int]]:
        """Map name -> its dictionary ids, oldest first."""
        return {name: list(ids) for name, ids in self._by_map.items()}

    def add(self, map_name: str, dictionary: zstandard.ZstdCompressionDict) -> int:
        """Save `dictionary` as the newest of `map_name`; returns its id."""
        dict_id = dictionary.dict_id()
        if dict_id in self._by_id:
            raise DictionaryError(f"a dictionary with id {dict_id} exists already; train again")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write(self.directory / f"{dict_id}.zdict", dictionary.as_bytes())
            maps = {**self.maps(), map_name: [*self._by_map.get(map_name, []), dict_id]}
            _write(self.directory / INDEX, json.dumps({"maps": maps}, indent=2).encode())
        except OSError as exc:
            raise DictionaryError(
                f"cannot save the dictionary in {self.directory}: {exc}"
            ) from None
        self._by_id[dict_id] = dictionary
        self._by_map[map_name] = maps[map_name]
        return dict_id


def _write(path: Path, data: bytes) -> None:
    """Write `data` to `path` durably: a temporary file, fsync, rename."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
