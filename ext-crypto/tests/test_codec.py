"""The AES-256-GCM codec on its own and in a codec pipeline."""

from __future__ import annotations

import pytest

from topgun.storage import CodecContext, CodecPipeline, ValueCodecError
from topgun_crypto import OVERHEAD, AesGcmCodec, KeyRing, TamperedError, UnknownKeyError

OLD, NEW = b"o" * 32, b"n" * 32
HERE = CodecContext("lww", "todos", "t1")


def codec(*names: str, active: str | None = None) -> AesGcmCodec:
    keys = {"old": OLD, "new": NEW}
    return AesGcmCodec(KeyRing([(name, keys[name]) for name in names], active=active))


def test_a_value_round_trips_with_a_fresh_nonce_per_write() -> None:
    aes = codec("new")
    first, second = aes.encode_for(b"buy milk", HERE), aes.encode_for(b"buy milk", HERE)
    assert first != second  # a fresh random nonce each time
    assert len(first) == len(b"buy milk") + OVERHEAD
    assert b"milk" not in first
    assert aes.decode_for(first, HERE) == aes.decode_for(second, HERE) == b"buy milk"
    assert aes.decode_for(aes.encode_for(b"", HERE), HERE) == b""


@pytest.mark.parametrize(
    "elsewhere",
    [
        CodecContext("lww", "todos", "t2"),  # another key
        CodecContext("lww", "notes", "t1"),  # another map
        CodecContext("ormap", "todos", "t1"),  # another area
        CodecContext("meta", "todos", "t1"),
    ],
)
def test_a_value_moved_elsewhere_fails_to_decrypt_naming_where(elsewhere: CodecContext) -> None:
    aes = codec("new")
    stored = aes.encode_for(b"secret", HERE)
    with pytest.raises(TamperedError, match="failed authentication") as caught:
        aes.decode_for(stored, elsewhere)
    assert elsewhere.describe() in str(caught.value)


def test_every_flipped_byte_is_detected() -> None:
    aes = codec("new")
    stored = aes.encode_for(b"the value", HERE)
    for index in range(len(stored)):
        tampered = bytearray(stored)
        tampered[index] ^= 0x01
        with pytest.raises((TamperedError, UnknownKeyError), match="key 't1' of map 'todos'"):
            aes.decode_for(bytes(tampered), HERE)
    for cut in (stored[:-1], stored[: OVERHEAD - 1], b"", b"plain msgpack"):
        with pytest.raises(TamperedError, match="key 't1' of map 'todos'"):
            aes.decode_for(cut, HERE)


def test_old_keys_stay_readable_and_new_writes_use_the_active_key() -> None:
    before = codec("old").encode_for(b"v", HERE)
    ring = codec("old", "new")
    assert ring.decode_for(before, HERE) == b"v"
    after = ring.encode_for(b"v", HERE)
    assert (ring.key_name_of(before), ring.key_name_of(after)) == ("old", "new")
    assert (ring.is_current(before), ring.is_current(after)) == (False, True)
    rotated = ring.reencrypt(before, HERE)
    assert ring.is_current(rotated)
    assert ring.decode_for(rotated, HERE) == b"v"
    assert codec("old", "new", active="old").key_name_of(after) == "new"


def test_a_key_missing_from_the_ring_is_reported_as_such_not_as_tampering() -> None:
    stored = codec("old").encode_for(b"v", HERE)
    wrong = AesGcmCodec(KeyRing([("old", NEW)]))  # the right name, the wrong key
    with pytest.raises(UnknownKeyError, match=r"not in the key ring .*\['old'\]") as caught:
        wrong.decode_for(stored, HERE)
    assert "key 't1' of map 'todos'" in str(caught.value)
    assert wrong.key_name_of(stored) is None


def test_in_a_pipeline_a_tampered_value_is_a_value_codec_error_naming_map_and_key() -> None:
    pipeline = CodecPipeline([("crypto", codec("new"))])
    stored = bytearray(pipeline.pack({"title": "x"}, HERE))
    assert pipeline.unpack(bytes(stored), HERE) == {"title": "x"}
    stored[-1] ^= 0xFF
    with pytest.raises(ValueCodecError, match="codec 'crypto' raised TamperedError") as caught:
        pipeline.unpack(bytes(stored), HERE)
    assert (caught.value.area, caught.value.name, caught.value.key) == ("lww", "todos", "t1")


def test_an_application_key_makes_a_codec_for_a_client_store() -> None:
    aes = AesGcmCodec.from_key(NEW)
    context = CodecContext("lww", "drafts", "d1")
    assert aes.decode_for(aes.encode_for(b"draft", context), context) == b"draft"
    assert aes.keyring.active == "default"
