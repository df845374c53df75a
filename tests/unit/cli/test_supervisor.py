"""The supervisor's pieces that need no processes: the backoff, exit texts, and finding
the topic a crash names in a log (tests/integration/test_supervision.py runs it for real)."""

from __future__ import annotations

import signal

from cli.supervisor import Backoff, crash_topic, exit_text


def test_backoff_doubles_from_half_a_second_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(1000) == 30  # no overflow however long the loop


def test_exit_texts() -> None:
    assert exit_text(1) == "exit code 1"
    assert exit_text(0) == "exit code 0"
    assert exit_text(-signal.SIGKILL) == "signal SIGKILL"
    assert exit_text(-200) == "signal 200"


def test_the_last_crash_topic_in_a_log_is_named() -> None:
    log = "\n".join(
        [
            "12:00 CRITICAL hub.app: crashed handling a message on topic roost/readings/a/x",
            "Traceback (most recent call last):",
            "12:01 CRITICAL hub.app: crashed handling a message on topic roost/b/y (retained)",
            "OverflowError: int too large to convert to float",
        ]
    )
    assert crash_topic(log) == ("roost/b/y", True)
    assert crash_topic("ValueError: nothing about topics") is None


def test_a_hostile_topic_cannot_drive_the_terminal() -> None:
    log = "CRITICAL hub.app: crashed handling a message on topic roost/\x1b]0;pwned\x07/x"
    found = crash_topic(log)
    assert found is not None
    assert "\x1b" not in found[0]
    assert "\x07" not in found[0]
