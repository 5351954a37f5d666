"""The key ring: parsing, the active key, and errors that never show key material."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from topgun_crypto import KeyRing, KeyRingError, format_key, generate_key

A, B = b"a" * 32, b"b" * 32


def line(name: str, key: bytes) -> str:
    return f"{name}:{base64.b64encode(key).decode()}"


def test_entries_parse_from_lines_or_commas_and_the_last_is_active() -> None:
    text = f"# keys\n\n{line('old', A)}\n{line('new', B)}\n"
    ring = KeyRing.parse(text, source="keys.txt")
    assert (ring.names, ring.active, ring.key("old"), ring.key("new")) == (
        ["old", "new"],
        "new",
        A,
        B,
    )
    ring = KeyRing.parse(f"{line('old', A)}, {line('new', B)}", source="env", active="old")
    assert ring.active == "old"


def test_a_generated_key_formats_to_an_entry_that_parses_back() -> None:
    key = generate_key()
    assert len(key) == 32
    assert key != generate_key()
    assert KeyRing.parse(format_key("2026-11", key), source="x").key("2026-11") == key


@pytest.mark.parametrize(
    ("text", "active", "message"),
    [
        ("", None, "holds no key"),
        ("no-colon-here", None, "entry 1 is not name:base64-key"),
        ("k:not base64!", None, "key 'k' is not base64"),
        (f"k:{base64.b64encode(b'short').decode()}", None, "is not 32 bytes"),
        (f"{line('k', A)}\n{line('k', B)}", None, "names key 'k' twice"),
        (f"{line('k', A)}\n{line('j', A)}", None, "'k' and 'j' are the same key"),
        (line("bad name", A), None, "is not 1-64 of"),
        (line("k", A), "other", "active key 'other' is not in the key ring"),
    ],
)
def test_a_bad_ring_is_an_error_naming_the_source_and_never_the_key(
    text: str, active: str | None, message: str
) -> None:
    with pytest.raises(KeyRingError, match=message) as caught:
        KeyRing.parse(text, source="TOPGUN_CRYPTO_KEYS", active=active)
    assert str(caught.value).startswith("TOPGUN_CRYPTO_KEYS: ")
    for key in (A, B):
        assert base64.b64encode(key).decode() not in str(caught.value)


def test_key_files_are_read_and_their_errors_name_them(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    path.write_text(line("k", A) + "\n")
    assert KeyRing.from_file(path).active == "k"
    with pytest.raises(KeyRingError, match=r"cannot read the key file .*missing"):
        KeyRing.from_file(tmp_path / "missing")
    path.write_text("k:???\n")
    with pytest.raises(KeyRingError, match=rf"{path}: key 'k' is not base64"):
        KeyRing.from_file(path)


def test_the_repr_shows_names_not_keys() -> None:
    ring = KeyRing([("k", A)])
    assert repr(ring) == "KeyRing(names=['k'], active='k')"
    assert "YWFh" not in repr(ring)
