"""Clean-ups that hold under both kinds of cancellation: an anyio cancel scope and task.cancel().

``anyio.CancelScope(shield=True)`` keeps anyio's own cancellation out, but a native
``task.cancel()`` from outside still interrupts the await inside it: a file opened by a worker
thread is then never seen (and leaks), a read goes on writing into a buffer its owner is
freeing, a queue is closed but not drained. ``finish`` runs the awaitable in a task of its own
and waits for it to end whatever happens to the caller meanwhile; a cancel that arrived is
raised once it has (after ``undo``, for a resource the awaitable made and nobody will use).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["finish"]

_T = TypeVar("_T")


async def finish(
    awaitable: Coroutine[Any, Any, _T] | Awaitable[_T],
    *,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """Await ``awaitable`` to its end, even if the caller is canceled meanwhile; then cancel.

    A cancellation of the caller (its cancel scope, or ``task.cancel()``) that arrives while
    waiting is held; once ``awaitable`` is done it is raised, after ``undo(result)`` if
    ``awaitable`` succeeded. An exception of ``awaitable`` itself propagates, but a held
    cancellation wins over it. Costs a task: for clean-ups and resource hand-overs, not for
    every read of a hot loop that is not cancel-sensitive.
    """
    task = asyncio.ensure_future(awaitable)
    held: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError as exc:
                if not task.done():
                    held = exc  # our caller was canceled: wait on, raise it afterwards
                    continue
                if held is not None:
                    raise held from None
                raise
            except BaseException:
                if held is not None:
                    raise held from None
                raise
            break
    if held is not None:
        if undo is not None:
            undo(result)
        raise held
    return result
