"""BandwidthLimiter's token bucket, on a clock the test moves (nothing waits for real)."""

from __future__ import annotations

import pytest

from ecrstream import InvalidArgumentError
from ecrstream.lowlevel import BandwidthLimiter

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock and a sleep: sleeping moves the clock, and every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_full_bucket_lets_a_burst_through_at_once() -> None:
    time = FakeTime()
    limiter = BandwidthLimiter(1000.0, burst=500, clock=time.clock, sleep=time.sleep)
    await limiter.consume(500)
    assert time.sleeps == []


async def test_the_average_rate_stays_under_the_limit_over_any_window() -> None:
    time = FakeTime()
    rate, burst = 10_000.0, 1000
    limiter = BandwidthLimiter(rate, burst=burst, clock=time.clock, sleep=time.sleep)
    start, sent = time.now, 0
    for _ in range(500):
        await limiter.consume(burst)
        sent += burst
        # at most burst + rate * elapsed bytes, whenever we look
        assert sent <= burst + rate * (time.now - start) + 1e-6
    assert sent / (time.now - start) == pytest.approx(rate, rel=0.01)


async def test_idle_time_refills_the_bucket_but_never_past_the_burst() -> None:
    time = FakeTime()
    limiter = BandwidthLimiter(1000.0, burst=100, clock=time.clock, sleep=time.sleep)
    await limiter.consume(100)
    time.now += 3600.0  # an hour idle: still only one burst's worth
    await limiter.consume(100)
    assert time.sleeps == []
    await limiter.consume(100)
    assert time.sleeps == [pytest.approx(0.1)]


def test_the_default_burst_is_a_twentieth_of_a_second_within_bounds() -> None:
    assert BandwidthLimiter(1_000_000.0).burst == 50_000
    assert BandwidthLimiter(100.0).burst == 1024
    assert BandwidthLimiter(1e12).burst == 256 * 1024


@pytest.mark.parametrize("rate", [0, -5, float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^max_bandwidth: must be > 0"):
        BandwidthLimiter(rate)
