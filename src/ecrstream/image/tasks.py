"""Bounded concurrency for a push: work on many items, a few at a time, in the given order.

The bound adapts to ECR: ``ConcurrencyLimit`` lowers it while ECR throttles (each retried
ThrottlingException, wherever in the work it was met) and raises it back slowly, so a
throttled push or copy slows down (fewer blobs in flight) instead of failing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

from ecrstream.cancellation import OperationCanceledError
from ecrstream.errors import InvalidArgumentError, ThrottlingError
from ecrstream.retry import retries_told_to

__all__ = ["ConcurrencyLimit", "run_limited"]

_T = TypeVar("_T")


class ConcurrencyLimit:
    """How many items ``run_limited`` may run at once; lower while ECR throttles.

    Starts at ``maximum``. Each retry of a ThrottlingException lowers it by one, down to 1:
    the items in flight go on, new ones wait until fewer run than the limit. After ``limit``
    items in a row finish with no throttling met in between, it grows by one, up to
    ``maximum`` (additive increase: one step per round at the current limit). One event loop
    only; not thread-safe.
    """

    def __init__(self, maximum: int) -> None:
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise InvalidArgumentError("max_concurrent_layers", f"must be >= 1 (got {maximum!r})")
        self.maximum = maximum
        #: The current bound.
        self.limit = maximum
        #: The lowest the bound went to.
        self.lowest = maximum
        #: How many throttled retries were seen.
        self.throttled = 0
        #: How many items run now.
        self.running = 0
        #: The most items that ran at once.
        self.peak = 0
        self._clean = 0
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimit(limit={self.limit}, maximum={self.maximum},"
            f" lowest={self.lowest}, throttled={self.throttled}, running={self.running})"
        )

    def retried(self, number: int, error: Exception) -> None:
        """A request was retried (``retry.RetryHook``): a throttling one lowers the limit."""
        if not isinstance(error, ThrottlingError):
            return
        self.throttled += 1
        self._clean = 0
        if self.limit > 1:
            self.limit -= 1
            self.lowest = min(self.lowest, self.limit)

    async def acquire(self) -> None:
        """Wait until fewer items run than the limit, then count one more running."""
        while self.running >= self.limit:
            await self._changed.wait()
        self.running += 1
        self.peak = max(self.peak, self.running)

    def release(self, *, finished: bool) -> None:
        """One item stopped running; ``finished``: it succeeded (a step towards growing)."""
        self.running -= 1
        if finished:
            self._clean += 1
            if self._clean >= self.limit and self.limit < self.maximum:
                self.limit += 1
                self._clean = 0
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


async def run_limited(
    items: Iterable[_T],
    work: Callable[[_T], Awaitable[None]],
    concurrency: int | ConcurrencyLimit,
) -> None:
    """``work(item)`` for every item, at most ``concurrency`` at once, started in order.

    ``concurrency`` is a number, or a ``ConcurrencyLimit`` to read its counters afterwards;
    either way the bound drops while ECR throttles the work's requests (see the module).
    Workers take the next item as each finishes one and a slot is free, so items start
    exactly in the order given (largest first, say). The first exception stops the others
    (they are cancelled and awaited: no task is left) and is raised as it is, not in an
    ExceptionGroup; later ones are added as notes. Cancellation from outside propagates.
    """
    limit = (
        concurrency if isinstance(concurrency, ConcurrencyLimit) else ConcurrencyLimit(concurrency)
    )
    pending = iter(items)
    failures: list[Exception] = []
    with retries_told_to(limit.retried):
        async with anyio.create_task_group() as group:

            async def worker() -> None:
                while not group.cancel_scope.cancel_called:  # nothing new once one failed
                    await limit.acquire()
                    finished = False
                    try:
                        # One shared iterator, taken once a slot is free: items start in order.
                        try:
                            item = next(pending)
                        except StopIteration:
                            return
                        await work(item)
                        finished = True
                    except Exception as exc:  # not BaseException: cancellation propagates
                        failures.append(exc)
                        group.cancel_scope.cancel()
                        return
                    finally:
                        limit.release(finished=finished)

            for _ in range(limit.maximum):
                group.start_soon(worker)
    if failures:
        first = failures[0]
        for other in failures[1:]:
            if not isinstance(other, OperationCanceledError):
                first.add_note(f"also failed: {type(other).__name__}: {other}")
        raise first
