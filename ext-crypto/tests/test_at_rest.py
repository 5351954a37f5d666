"""A real server with the installed `compress` and `crypto` plugins: everything it
persists is encrypted, reads back after a restart only with the right key and codecs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from topgun.server import Server
from topgun.storage import StorageConfigError, ValueCodecError

pytestmark = pytest.mark.anyio


async def test_nothing_persisted_is_plaintext_and_all_of_it_reads_back(
    configure: Callable[..., Any], plugins: Any, kit: Any, tmp_path: Path
) -> None:
    plain_dir = tmp_path / "plain"
    async with Server(configure(codecs=[], data_dir=plain_dir), pm=plugins) as server:
        await kit.write_every_kind(server)
    assert kit.MARKER.encode() in kit.stored_bytes(plain_dir)  # the search would find it

    config = configure(keys=kit.ring("k1"))
    async with Server(config, pm=plugins) as server:
        await kit.write_every_kind(server)
    assert kit.MARKER.encode() not in kit.stored_bytes(config.data_dir)

    async with Server(config, pm=plugins) as server:  # every value decrypted at start-up
        backend = server.backend
        assert backend is not None
        todos = server.maps.lww("todos")
        assert todos is not None
        assert todos.get("t3") == {"title": f"{kit.MARKER} todo 3", "done": False}
        tags = server.maps.ormap("tags")
        assert tags is not None
        assert tags.values("colour") == [f"{kit.MARKER} red"]
        assert server.locks.last_token(kit.LOCK) == 1
        assert server.counters.state(kit.COUNTER).p == {"client-1": 5.0}
        assert server.journal is not None
        journal = await backend.load_meta("journal")
        assert sum(len(msgspec.msgpack.decode(row)[1]) for row in journal.values()) == 21
        assert all(kit.MARKER.encode() in value for value in journal.values())


async def test_without_the_codecs_or_the_key_the_server_does_not_start(
    configure: Callable[..., Any], plugins: Any, kit: Any
) -> None:
    async with Server(configure(keys=kit.ring("k1")), pm=plugins) as server:
        await kit.write_every_kind(server)
    for codecs in ([], ["compress"]):
        with pytest.raises(
            StorageConfigError, match=r"written with codecs \['compress', 'crypto'\]"
        ):
            async with Server(configure(codecs=codecs, keys=kit.ring("k1")), pm=plugins):
                pass
    with pytest.raises(StorageConfigError, match="no key is: set TOPGUN_CRYPTO_KEYS"):
        async with Server(configure(), pm=plugins):
            pass
    with pytest.raises(ValueCodecError, match=r"not in the key ring .*\['k2'\]") as caught:
        async with Server(configure(keys=kit.ring("k2")), pm=plugins):
            pass
    assert "of map 'tags'" in str(caught.value) or "of map 'todos'" in str(caught.value)
    disabled = kit.installed_plugins(
        "crypto", "compress", environ={"TOPGUN_DISABLE_PLUGINS": "crypto"}
    )
    assert disabled.get_plugin("crypto") is None
    with pytest.raises(StorageConfigError, match="unknown codec 'crypto'"):
        async with Server(configure(pm=disabled), pm=disabled):
            pass
    async with Server(configure(keys=kit.ring("k1", "k2")), pm=plugins) as server:
        todos = server.maps.lww("todos")  # an old key stays readable beside a new one
        assert todos is not None
        assert len(todos.get("t0")["title"]) > 0


async def test_crypto_must_be_the_last_codec(
    configure: Callable[..., Any], plugins: Any, kit: Any
) -> None:
    config = configure(codecs=["crypto", "compress"], keys=kit.ring("k1"))
    with pytest.raises(StorageConfigError, match="'crypto' must be the last codec"):
        async with Server(config, pm=plugins):
            pass
