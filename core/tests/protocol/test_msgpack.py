"""The pure-Python msgpack reader/writer used for what msgspec cannot handle."""

from __future__ import annotations

import datetime as dt
import math
import struct

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topgun.protocol._msgpack import BadValue, Malformed, TooDeep, pack, unpack

JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**31), 2**32 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
    ),
    lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)),
    max_leaves=20,
)


@given(JSONISH)
def test_agrees_with_msgspec_both_ways(value: object) -> None:
    assert unpack(msgspec.msgpack.encode(value), 64) == value
    assert msgspec.msgpack.decode(pack(value)) == value


def test_ext0_drops_map_keys_and_is_nil_in_arrays() -> None:
    data = b"\x82\xa1a\xd4\x00\x00\xa1b\x92\xd4\x00\x00\x01"
    assert unpack(data, 8) == {"b": [None, 1]}


def test_timestamp_exts_become_epoch_milliseconds() -> None:
    ts32 = b"\xd6\xff" + struct.pack(">I", 1_700_000_000)
    ts64 = b"\xd7\xff" + struct.pack(">Q", (250_000_000 << 34) | 1_700_000_000)
    ts96 = b"\xc7\x0c\xff" + struct.pack(">Iq", 999_999_999, -1)
    assert unpack(b"\x93" + ts32 + ts64 + ts96, 8) == [
        1_700_000_000_000,
        1_700_000_000_250,
        -1,
    ]
    moment = dt.datetime(2026, 2, 1, 12, 0, 0, 123_000, tzinfo=dt.UTC)
    assert unpack(pack(moment), 8) == int(moment.timestamp() * 1000)


def test_other_exts_are_bad_values_with_a_path() -> None:
    with pytest.raises(BadValue) as info:
        unpack(b"\x81\xa1a\x92\x01\xd4\x07\x00", 8)
    assert info.value.path == "$.a[1]"
    with pytest.raises(BadValue, match="data bytes"):
        unpack(b"\xd5\xff\x00\x00", 8)


def test_lone_surrogates_round_trip() -> None:
    text = "x\udc00y"
    assert unpack(pack(text), 8) == text


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa3ab", b"\xdd\xff\xff\xff\xff", b"\xa2\xff\xfe"],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        unpack(data, 8)


def test_depth_limit() -> None:
    assert unpack(b"\x91" * 8 + b"\x01", 8) == [[[[[[[[1]]]]]]]]
    with pytest.raises(TooDeep):
        unpack(b"\x91" * 9 + b"\x01", 8)
    with pytest.raises(TooDeep):
        unpack(b"\x91" * 1_000_000 + b"\x01", 8)


def test_pack_uses_float64_outside_the_js_integer_range() -> None:
    assert pack(2**32 - 1) == b"\xce\xff\xff\xff\xff"
    assert pack(2**32) == b"\xcb" + struct.pack(">d", 2**32)
    assert pack(-(2**31)) == b"\xd2\x80\x00\x00\x00"
    assert pack(-(2**31) - 1)[0] == 0xCB
    assert math.isnan(unpack(pack(math.nan), 1))


def test_pack_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError, match="object"):
        pack(object())
    with pytest.raises(TypeError, match="naive"):
        pack(dt.datetime(2026, 1, 1))
