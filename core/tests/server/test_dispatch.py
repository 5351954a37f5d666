"""The dispatch table (topgun/server/dispatch.py)."""

from __future__ import annotations

from topgun.protocol import CLIENT_MESSAGE_TYPES
from topgun.server.dispatch import HANDLERS


def test_every_client_message_type_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == set(CLIENT_MESSAGE_TYPES.values())
