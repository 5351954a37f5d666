"""`verify` finds every kind of tampering in a real log and names the first bad line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from topgun_audit import GENESIS, verify
from topgun_audit.chain import ACTIVE, HEAD, canonical, entry_hash, log_files, seal

from .conftest import entry, lines_of


def test_an_untouched_log_verifies(written: Callable[..., Path]) -> None:
    directory = written(25)
    result = verify(directory)
    assert result.ok, result.problem
    assert result.entries == 25
    last = entry(lines_of(directory / ACTIVE)[-1])
    assert result.head_hash == last["hash"]
    assert json.loads((directory / HEAD).read_text()) == {"seq": 25, "hash": last["hash"]}


def test_each_entry_chains_to_the_one_before() -> None:
    line, digest = seal({"event": "x", "name": "é"}, 1, GENESIS)
    first = entry(line)
    assert line.endswith(b"\n")
    assert (first["prev"], first["hash"], first["seq"]) == (GENESIS, digest, 1)
    second = entry(seal({"event": "y"}, 2, digest)[0])
    assert second["prev"] == first["hash"]
    assert entry_hash(second) == second["hash"]
    assert entry_hash({**second, "event": "z"}) != second["hash"]


def test_the_hash_covers_the_canonical_json_python_would_write() -> None:
    body = {"b": 1, "a": "é ✓", "c": None, "d": [1, "x"], "e": True}
    assert (
        canonical(body)
        == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_an_empty_directory_is_an_empty_valid_log(tmp_path: Path) -> None:
    result = verify(tmp_path)
    assert result.ok
    assert (result.entries, result.head_hash) == (0, GENESIS)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_a_modified_entry_is_named(written: Callable[..., Path]) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    lines[3] = lines[3].replace(b'"key":"k3"', b'"key":"k999"')
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 4)
    assert "modified" in problem.reason


def test_a_modified_entry_with_a_recomputed_hash_breaks_the_next_line(
    written: Callable[..., Path],
) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    forged = entry(lines[3])
    forged["key"] = "k999"
    forged["hash"] = entry_hash(forged)
    lines[3] = json.dumps(forged).encode() + b"\n"
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 5)
    assert "prev does not match" in problem.reason


def test_a_deleted_entry_is_named(written: Callable[..., Path]) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    del lines[6]
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 7)
    assert "deleted, inserted or reordered" in problem.reason


def test_an_inserted_entry_is_named(written: Callable[..., Path]) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    copy = lines[2]  # a genuine entry, replayed
    lines.insert(5, copy)
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 6)


def test_a_forged_entry_chained_in_is_caught_at_the_next_line(
    written: Callable[..., Path],
) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    before = entry(lines[4])
    forged, _ = seal({"event": "write", "key": "planted"}, before["seq"] + 1, before["hash"])
    lines.insert(5, forged)
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 7)


def test_reordered_entries_are_named(written: Callable[..., Path]) -> None:
    directory = written(10)
    path = directory / ACTIVE
    lines = lines_of(path)
    lines[4], lines[5] = lines[5], lines[4]
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 5)


def test_entries_deleted_from_the_end_are_caught_by_the_head(
    written: Callable[..., Path],
) -> None:
    directory = written(10)
    path = directory / ACTIVE
    _rewrite(path, lines_of(path)[:7])
    result = verify(directory)
    assert result.problem is not None
    assert (result.problem.file, result.problem.line) == (path, 8)
    assert "deleted from the end" in result.problem.reason
    assert result.entries == 7


def test_a_missing_head_is_reported(written: Callable[..., Path]) -> None:
    directory = written(3)
    (directory / HEAD).unlink()
    problem = verify(directory).problem
    assert problem is not None
    assert "head file" in problem.reason


def test_a_cut_line_is_reported(written: Callable[..., Path]) -> None:
    directory = written(3)
    path = directory / ACTIVE
    path.write_bytes(path.read_bytes()[:-10])
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.line, "incomplete line" in problem.reason) == (3, True)


@pytest.mark.parametrize(
    "garbage", [b"not json\n", b"[1, 2]\n", b'{"seq": "1", "prev": "", "hash": ""}\n']
)
def test_lines_that_are_not_entries_are_named(written: Callable[..., Path], garbage: bytes) -> None:
    directory = written(3)
    path = directory / ACTIVE
    lines = lines_of(path)
    lines[1] = garbage
    _rewrite(path, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (path, 2)


def test_the_chain_runs_across_rotated_files_and_a_deleted_file_is_caught(
    written: Callable[..., Path],
) -> None:
    directory = written(60, max_file_bytes=4096)
    files = log_files(directory)
    assert len(files) >= 3, files
    assert verify(directory).ok
    first_of_third = entry(lines_of(files[2])[0])
    last_of_second = entry(lines_of(files[1])[-1])
    assert first_of_third["prev"] == last_of_second["hash"]
    files[1].unlink()
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (files[2], 1)


def test_a_modified_entry_in_a_rotated_file_is_named(written: Callable[..., Path]) -> None:
    directory = written(60, max_file_bytes=4096)
    rotated = log_files(directory)[0]
    lines = lines_of(rotated)
    lines[-1] = lines[-1].replace(b'"map":"todos"', b'"map":"other"')
    _rewrite(rotated, lines)
    problem = verify(directory).problem
    assert problem is not None
    assert (problem.file, problem.line) == (rotated, len(lines))


def test_a_corrupt_head_file_is_reported(written: Callable[..., Path]) -> None:
    directory = written(2)
    (directory / HEAD).write_text("{oops")
    problem = verify(directory).problem
    assert problem is not None
    assert "head file" in problem.reason
