"""The on-disk format of the audit log and its verification.

The log is a directory of JSON Lines files: rotated files `audit.000001.jsonl`,
`audit.000002.jsonl`, ... in order, then the active file `audit.jsonl`. Every line is one
entry, a JSON object whose `seq` counts from 1 across all files, whose `prev` is the `hash`
of the entry before it (`GENESIS` for the first), and whose `hash` is the SHA-256 of the
entry's canonical JSON without `hash`. The head file `audit.head` names the last entry
written (its `seq` and `hash`), so deleting entries from the end is detected too.

`verify` walks the chain and names the first file and line where it breaks.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode

GENESIS: Final = "0" * 64
"""The `prev` of the first entry."""

ACTIVE: Final = "audit.jsonl"
HEAD: Final = "audit.head"
_ROTATED: Final = re.compile(r"^audit\.(\d{6,})\.jsonl$")


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: compact JSON, keys sorted, UTF-8 unescaped (the
    same bytes as Python's `json.dumps(entry, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` for the strings, integers, booleans, nulls and lists entries hold)."""
    return _encode(entry)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of `entry` without its `hash` field."""
    body = {name: value for name, value in entry.items() if name != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal(body: dict[str, Any], seq: int, prev: str) -> tuple[bytes, str]:
    """`body` as entry number `seq` chained to `prev`: its line (with `hash` last, newline
    included) and its hash. JSON is encoded once per entry: this runs for every entry."""
    data = canonical({**body, "seq": seq, "prev": prev})
    digest = hashlib.sha256(data).hexdigest()
    return data[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest


def rotated_name(number: int) -> str:
    return f"audit.{number:06d}.jsonl"


def rotated_files(directory: Path) -> list[tuple[int, Path]]:
    """The rotated files of `directory` with their numbers, oldest first."""
    found = []
    if directory.is_dir():
        for path in directory.iterdir():
            match = _ROTATED.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def log_files(directory: Path) -> list[Path]:
    """Every file of the log, in chain order (rotated ones, then the active one)."""
    files = [path for _, path in rotated_files(directory)]
    active = directory / ACTIVE
    if active.is_file():
        files.append(active)
    return files


def read_head(directory: Path) -> dict[str, Any] | None:
    """The head file's content (`seq`, `hash`), or `None` when there is none."""
    try:
        head = json.loads((directory / HEAD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory / HEAD}: unreadable head file: {exc}") from None
    if not (
        isinstance(head, dict)
        and isinstance(head.get("seq"), int)
        and isinstance(head.get("hash"), str)
    ):
        raise ValueError(f"{directory / HEAD}: the head file must hold {{seq, hash}}")
    return head


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks: the file, the 1-based line, and why."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`."""

    entries: int
    """Entries checked before the first problem (all of them when there is none)."""
    files: int
    head_hash: str
    """The hash of the last good entry (`GENESIS` for an empty log)."""
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _check_line(raw: bytes, prev: str, seq: int) -> tuple[dict[str, Any] | None, str | None]:
    """The entry on `raw` and the reason it breaks the chain (`None`: it does not)."""
    if not raw.endswith(b"\n"):
        return None, "incomplete line (a torn write, or the file was cut)"
    try:
        entry = _decode(raw)
    except msgspec.DecodeError as exc:
        return None, f"not valid JSON ({exc}): the entry was modified"
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(name), kind)
        for name, kind in (("seq", int), ("prev", str), ("hash", str))
    ):
        return None, "not an audit entry (seq, prev and hash are required): the entry was modified"
    if entry_hash(entry) != entry["hash"]:
        return entry, "the entry's hash does not match its content: the entry was modified"
    if entry["prev"] != prev:
        return entry, (
            "prev does not match the hash of the entry before it: an entry was deleted, "
            "inserted or reordered here"
        )
    if entry["seq"] != seq:
        return entry, (
            f"sequence number {entry['seq']} where {seq} was expected: entries were deleted, "
            "inserted or reordered"
        )
    return entry, None


def verify(directory: Path) -> Verification:
    """Check the whole chain of the log in `directory`; the first problem, if any."""
    files = log_files(directory)
    try:
        head = read_head(directory)
    except ValueError as exc:
        return Verification(0, len(files), GENESIS, Problem(directory / HEAD, 1, str(exc)))
    prev, seq = GENESIS, 1
    head_seen = False
    last: tuple[Path, int] = (directory / ACTIVE, 0)
    for path in files:
        with path.open("rb") as file:
            line = 0
            for line, raw in enumerate(file, 1):
                entry, reason = _check_line(raw, prev, seq)
                if reason is not None:
                    return Verification(seq - 1, len(files), prev, Problem(path, line, reason))
                assert entry is not None
                if head is not None and seq == head["seq"]:
                    if entry["hash"] != head["hash"]:
                        reason = "the entry differs from the one the head file records"
                        return Verification(seq - 1, len(files), prev, Problem(path, line, reason))
                    head_seen = True
                prev, seq = entry["hash"], seq + 1
            last = (path, line)
    entries = seq - 1
    if head is None and entries:
        reason = f"the head file {HEAD} is missing: the end of the log cannot be checked"
        return Verification(entries, len(files), prev, Problem(last[0], last[1] + 1, reason))
    if head is not None and not head_seen and head["seq"] > 0:
        reason = (
            f"the log ends at entry {entries} but its head records entry {head['seq']}: "
            "entries were deleted from the end"
        )
        return Verification(entries, len(files), prev, Problem(last[0], last[1] + 1, reason))
    return Verification(entries, len(files), prev, None)


def entries(directory: Path) -> Iterator[dict[str, Any]]:
    """Every readable entry of the log in order (no verification: see `verify`)."""
    for path in log_files(directory):
        with path.open("rb") as file:
            for raw in file:
                try:
                    entry = _decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(entry, dict):
                    yield entry
