"""One paginator: the size check, and opaque tokens bound to their query."""

from __future__ import annotations

import base64
import json

import pytest

from services.kit.errors import InvalidArgument
from services.kit.paging import (
    decode_offset,
    decode_token,
    encode_offset,
    encode_token,
    page_size,
)


@pytest.mark.parametrize(("requested", "served"), [(0, 100), (1, 1), (37, 37), (100, 100)])
def test_page_size_zero_means_the_maximum(requested: int, served: int) -> None:
    assert page_size(requested) == served


@pytest.mark.parametrize(("requested", "maximum"), [(-1, 100), (101, 100), (11, 10)])
def test_page_size_outside_the_range_is_refused(requested: int, maximum: int) -> None:
    with pytest.raises(InvalidArgument) as e:
        page_size(requested, maximum)
    assert str(e.value) == f"page_size: must be between 0 and {maximum} (0 means {maximum})"


def test_tokens_round_trip_and_are_opaque() -> None:
    query = ("occupancy", None, 3)
    token = encode_token({"after": 41, "before": None}, query)
    assert "41" not in token  # not an offset a client could edit by hand
    assert decode_token(token, ("after", "before"), query) == {"after": 41, "before": None}
    assert decode_token("", ("after",), query) == {}
    assert decode_offset(encode_offset(250)) == 250
    assert decode_offset("") == 0


def test_a_token_from_another_query_is_refused() -> None:
    token = encode_offset(10, ("occupancy",))
    with pytest.raises(InvalidArgument, match="does not match the query's filters"):
        decode_offset(token, ("comfort",))


def _forge(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "o:10",
        base64.urlsafe_b64encode(b"o:10").decode(),  # the old inference format
        _forge({"v": 2, "f": "", "c": {"offset": 1}}),
        _forge({"v": 1, "f": "", "c": {"offset": -1}}),
        _forge({"v": 1, "f": "", "c": {"offset": "1"}}),
        _forge({"v": 1, "f": "", "c": {"offset": True}}),
        _forge({"v": 1, "f": "", "c": {"offset": 1, "extra": 2}}),
        _forge([1, 2]),
        "A" * 600,
    ],
)
def test_an_edited_or_foreign_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token: "):
        decode_offset(token)
