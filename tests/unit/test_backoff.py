"""Full-jitter backoff bounds and Retry-After parsing."""

from datetime import UTC, datetime

import pytest

from callcancel.backoff import MAX_VISIBILITY_SECONDS, backoff_seconds, parse_retry_after


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 900), (7, 900), (40, 900)],
)
def test_the_window_doubles_up_to_the_cap(attempt: int, ceiling: int) -> None:
    assert backoff_seconds(attempt, base=30, cap=900, uniform=highest) == ceiling
    assert backoff_seconds(attempt, base=30, cap=900, uniform=lowest) == 0


@pytest.mark.parametrize("attempt", range(1, 12))
def test_random_delays_stay_inside_the_window(attempt: int) -> None:
    ceiling = min(900, 30 * 2 ** (attempt - 1))
    delays = [backoff_seconds(attempt, base=30, cap=900) for _ in range(300)]
    assert all(0 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1, "jittered"


def test_retry_after_raises_the_delay_but_never_lowers_it() -> None:
    assert backoff_seconds(1, base=30, cap=900, retry_after=120, uniform=lowest) == 120
    assert backoff_seconds(5, base=30, cap=900, retry_after=5, uniform=highest) == 480


def test_the_delay_never_exceeds_what_sqs_accepts() -> None:
    assert backoff_seconds(1, base=30, cap=900, retry_after=10**9) == MAX_VISIBILITY_SECONDS


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 25 Nov 2026 00:02:00 GMT", 120.0),
        ("Tue, 24 Nov 2026 23:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_formats(header: str | None, seconds: float | None) -> None:
    now = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == seconds
