"""docs/invariants.md must name, for every invariant, tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = re.compile(r"^## ([A-Z]+-\d+): \S")
TEST_ITEM = re.compile(r"^- `([^`:]+\.py)::([\w:]+)`")


def parse_invariants(text: str) -> dict[str, list[tuple[str, str]]]:
    """Map each invariant ID to the (file, test) pairs listed under its `Tests:` line."""
    invariants: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := HEADING.match(line):
            current = m.group(1)
            invariants[current] = []
        elif current and (m := TEST_ITEM.match(line)):
            invariants[current].append((m.group(1), m.group(2)))
    return invariants


def defined_tests(path: Path) -> set[str]:
    """Names `test_x` and `TestClass::test_x` defined in a test module."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return names


def test_every_invariant_names_existing_tests() -> None:
    invariants = parse_invariants((ROOT / "docs" / "invariants.md").read_text())
    assert invariants, "docs/invariants.md lists no invariant"
    problems = []
    for inv_id, tests in invariants.items():
        if not tests:
            problems.append(f"{inv_id}: names no test")
        for file, name in tests:
            path = ROOT / file
            if not path.is_file():
                problems.append(f"{inv_id}: {file} does not exist")
            elif name not in defined_tests(path):
                problems.append(f"{inv_id}: {file} has no test {name}")
    assert not problems, "\n".join(problems)


def test_parser_reads_the_documented_format() -> None:
    text = "## CRDT-1: merge\nText.\n\nTests:\n- `a/b.py::test_x`\n- `a/c.py::TestY::test_z`\n"
    assert parse_invariants(text) == {"CRDT-1": [("a/b.py", "test_x"), ("a/c.py", "TestY::test_z")]}
