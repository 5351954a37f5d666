from __future__ import annotations

import pytest

from topgun.hooks import DROP, Rejected


def test_rejected_carries_reason_and_optional_code() -> None:
    plain = Rejected("no writes on Sundays")
    coded = Rejected("slow down", code=429)
    assert (plain.reason, plain.code, str(plain)) == (
        "no writes on Sundays",
        None,
        "no writes on Sundays",
    )
    assert (coded.reason, coded.code) == ("slow down", 429)


@pytest.mark.parametrize("reason", ["", None, 403])
def test_rejected_needs_a_reason_string(reason: object) -> None:
    with pytest.raises(TypeError, match="non-empty reason"):
        Rejected(reason)  # type: ignore[arg-type]


def test_drop_is_a_singleton_with_a_readable_repr() -> None:
    assert repr(DROP) == "DROP"
    assert DROP is type(DROP)("DROP")
