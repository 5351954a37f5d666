"""ProtocolError codes and what the server does about each (§1.2, §1.4, §5)."""

from __future__ import annotations

from topgun.protocol import ErrorCode, ProtocolError


def test_close_codes_and_error_replies() -> None:
    expected = {
        ErrorCode.FRAME_TOO_LARGE: (1009, None),
        ErrorCode.UNDECODABLE: (1002, None),
        ErrorCode.TOO_DEEP: (None, "Invalid message format"),
        ErrorCode.INVALID_MESSAGE: (None, "Invalid message format"),
        ErrorCode.UNSUPPORTED_TYPE: (None, "Unsupported message type"),
        ErrorCode.INVALID_FIELD: (None, "Invalid message format"),
    }
    assert set(expected) == set(ErrorCode)
    for code, (close, message) in expected.items():
        error = ProtocolError(code, "detail")
        reply = error.error_reply()
        assert error.close_code == close
        assert (reply.payload.message if reply else None) == message
        if reply is not None:
            assert reply.payload.code == 400


def test_details_carry_type_issue_and_correlation() -> None:
    error = ProtocolError(
        ErrorCode.INVALID_FIELD,
        "Expected `str`, got `int`",
        path="$.payload.mapName",
        message_type="QUERY_SUB",
        correlation={"queryId": "q1"},
    )
    assert str(error) == "invalid_field: Expected `str`, got `int` at $.payload.mapName"
    assert error.details() == {
        "type": "QUERY_SUB",
        "issues": [
            {
                "code": "invalid_field",
                "message": "Expected `str`, got `int`",
                "path": "$.payload.mapName",
            }
        ],
        "queryId": "q1",
    }
