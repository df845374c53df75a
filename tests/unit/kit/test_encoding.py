"""Strict base64: the one accepted spelling of each value, and errors naming the field."""

from __future__ import annotations

import base64

import pytest

from services.kit.encoding import b64decode_strict, b64encode


@pytest.mark.parametrize("raw", [b"", b"a", b"ab", b"abc", bytes(range(256)), b"\xff" * 32])
def test_round_trip(raw: bytes) -> None:
    text = b64encode(raw)
    assert text == base64.b64encode(raw).decode()
    assert b64decode_strict(text, "value") == raw


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("aGk", "not valid"),  # padding missing
        ("aGk==", "not valid"),  # too much padding
        ("a-k=", "not valid"),  # URL-safe alphabet
        ("_w==", "not valid"),
        (" aGk=", "not valid"),  # whitespace
        ("aGk=\n", "not valid"),
        ("aG\nk=", "not valid"),
        ("aGk=aGk=", "not valid"),  # data after padding
        ("aGé=", "not valid"),  # not ASCII
        ("aGl=", "not canonical"),  # unused bits set: also decodes to b"hi"
        ("/x==", "not canonical"),
    ],
)
def test_strictness(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^the field is {problem} base64$"):
        b64decode_strict(text, "the field")
    assert b64decode_strict("/w==", "the field") == b"\xff"


def test_not_text_is_invalid() -> None:
    with pytest.raises(ValueError, match=r"^x is not valid base64$"):
        b64decode_strict(None, "x")  # type: ignore[arg-type]
