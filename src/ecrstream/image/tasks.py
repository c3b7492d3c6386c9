"""Bounded concurrency for a push: work on many items, a few at a time, in the given order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

from ecrstream.cancellation import OperationCanceledError

__all__ = ["run_limited"]

_T = TypeVar("_T")


async def run_limited(
    items: Iterable[_T], work: Callable[[_T], Awaitable[None]], concurrency: int
) -> None:
    """``work(item)`` for every item, at most ``concurrency`` at once, started in order.

    ``concurrency`` workers take the next item as each finishes one, so items start exactly
    in the order given (largest first, say) and no task waits idle per item. The first
    exception stops the others (they are cancelled and awaited: no task is left) and is
    raised as it is, not in an ExceptionGroup; later ones are added as notes. Cancellation
    from outside propagates.
    """
    pending = iter(items)
    failures: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def worker() -> None:
            # One shared iterator: next() runs between awaits, so no item is taken twice.
            for item in pending:
                if group.cancel_scope.cancel_called:
                    return  # nothing new once one failed
                try:
                    await work(item)
                except Exception as exc:  # not BaseException: cancellation propagates
                    failures.append(exc)
                    group.cancel_scope.cancel()
                    return

        for _ in range(concurrency):
            group.start_soon(worker)
    if failures:
        first = failures[0]
        for other in failures[1:]:
            if not isinstance(other, OperationCanceledError):
                first.add_note(f"also failed: {type(other).__name__}: {other}")
        raise first
