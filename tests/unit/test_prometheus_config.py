"""The allow-list file's reading and the remote_write URL rule (the real Prometheus
applying them: tests/integration/test_metrics_sync.py)."""

from __future__ import annotations

import pytest

from cli.prometheus_config import (
    ALLOW_LIST,
    AllowListError,
    check_remote_write_url,
    load_allow_list,
    parse_allow_list,
    write_relabel_configs,
)


def test_the_shipped_allow_list_keeps_no_household_label() -> None:
    allow = load_allow_list(ALLOW_LIST)
    assert "__name__" in allow.labels
    for household in ("entity_id", "area", "value", "friendly_name", "feature", "kind"):
        assert household not in allow.labels
    rules = write_relabel_configs(allow)
    assert rules[0]["action"] == "keep"
    assert rules[-1] == {"regex": "|".join(allow.labels), "action": "labelkeep"}


@pytest.mark.parametrize(
    "text",
    [
        "metric up\n",  # no `label __name__`: every series would lose its name
        "label __name__\nmetric up.*\n",  # a pattern, not a name
        "label __name__\nmetric a except code=.*\n",
        "label __name__\nmetric up\nmetric up\n",
        "label __name__\nkeep everything\n",
    ],
)
def test_a_malformed_allow_list_is_refused(text: str) -> None:
    with pytest.raises(AllowListError):
        parse_allow_list(text)


@pytest.mark.parametrize(
    "url",
    ["http://metrics.example.net/api/v1/write", "http://10.0.0.5:9090/w", "ftp://127.0.0.1/", ""],
)
def test_a_token_never_travels_in_clear(url: str) -> None:
    with pytest.raises(ValueError, match="remote_write_url"):
        check_remote_write_url(url)


def test_https_and_loopback_http_are_accepted() -> None:
    assert check_remote_write_url("https://m.example.net/api/v1/write")
    assert check_remote_write_url("http://127.0.0.1:9090/api/v1/write")
