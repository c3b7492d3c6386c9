"""BandwidthLimiter: a token bucket that holds an upload's average rate under a limit.

The uploader makes one per upload (``max_bandwidth``) and hands it to the client with each
part; the part's body takes its bytes from the bucket slice by slice as aiohttp sends them.
The clock and the sleep are injectable, so the arithmetic can be tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ecrstream.errors import InvalidArgumentError

__all__ = ["BandwidthLimiter"]


class BandwidthLimiter:
    """A token bucket shared by the parts of an upload: the average rate stays under a limit.

    The bucket holds at most ``burst`` bytes (default: a twentieth of a second's worth, at
    most 256 KiB), so over any window of T seconds at most ``burst + rate * T`` bytes go
    out: within 1 % of the limit over any 5 seconds. Bodies are sent in slices of ``burst``
    bytes, each taken from the bucket first. ``clock`` (seconds, monotonic) and ``sleep``
    default to ``time.monotonic`` and ``anyio.sleep``.
    """

    def __init__(
        self,
        bytes_per_second: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if not bytes_per_second > 0:
            raise InvalidArgumentError(
                "max_bandwidth", f"must be > 0 bytes/s (got {bytes_per_second!r})"
            )
        self.rate = float(bytes_per_second)
        self.burst = burst or max(1024, min(256 * 1024, int(self.rate / 20)))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = clock()

    async def consume(self, count: int) -> None:
        """Wait until ``count`` bytes (at most ``burst``) may be sent, and take them."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= count
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate)
