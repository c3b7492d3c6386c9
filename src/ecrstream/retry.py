"""One retry mechanism: how many requests, how long to back off, and the loop that does both.

Every retry in ecrstream goes through ``call_with_retries``: the client's operations
(transient errors), the uploader's parts and CompleteLayerUpload (transient errors; the
special answers such as InvalidLayerPart's offset are decided by the caller, inside its
attempt or around the loop), and the image push's PutImage (LayersNotFound while ECR catches
up). So the contract is written once, here: ``max_attempts`` counts requests in total (3
means exactly 3), the n-th backoff sleeps a random time in ``[0, min(max_delay, base_delay *
2**(n-1))]`` ("full jitter", as botocore's standard mode), and every backoff is cancellable
by the caller's token.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, TypeVar

import anyio

from ecrstream.cancellation import CancellationToken, OperationCanceledError, run_cancellable
from ecrstream.errors import InvalidArgumentError, is_transient

__all__ = ["RetryHook", "RetryPolicy", "call_with_retries", "retries_told_to"]

_T = TypeVar("_T")
_NONE: Final = CancellationToken.NONE
logger = logging.getLogger("ecrstream")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to try a request on transient errors, and how long to back off.

    ``max_attempts`` counts requests in total (1 = no retry). The n-th backoff sleeps a
    random time in [0, min(max_delay, base_delay * 2**(n-1))] ("full jitter").
    """

    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise InvalidArgumentError(
                "max_attempts", f"must be an integer >= 1 (got {self.max_attempts!r})"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise InvalidArgumentError("base_delay/max_delay", "must be >= 0 seconds")

    def delay(self, retry_number: int) -> float:
        """The backoff before retry ``retry_number`` (1 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        return random.uniform(0.0, cap)

    async def sleep(self, retry_number: int, token: CancellationToken = _NONE) -> None:
        """Sleep the backoff before retry ``retry_number``; cancellable by ``token``."""
        await run_cancellable(anyio.sleep(self.delay(retry_number)), token)


#: What ``call_with_retries`` calls before each backoff: (attempt that failed, its error).
RetryHook = Callable[[int, Exception], None]


_LISTENER: ContextVar[RetryHook | None] = ContextVar("ecrstream_retry_listener", default=None)


@contextlib.contextmanager
def retries_told_to(hook: RetryHook) -> Iterator[None]:
    """Tell ``hook`` of every retry ``call_with_retries`` makes in this block, and in the tasks
    started in it (a context variable), whoever the caller.

    How a push sees ECR throttle any of its requests without threading a callback through
    every layer (``image.tasks.ConcurrencyLimit``). ``hook`` runs before the backoff; it must
    not block or raise. Blocks nest: the innermost hook is told.
    """
    reset = _LISTENER.set(hook)
    try:
        yield
    finally:
        _LISTENER.reset(reset)


async def call_with_retries(
    attempt: Callable[[int], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    token: CancellationToken = _NONE,
    is_retryable: Callable[[Exception], bool] = is_transient,
    on_retry: RetryHook | None = None,
) -> _T:
    """Await ``attempt(n)`` for n = 1, 2, ... until it returns; at most ``policy.max_attempts``.

    ``attempt`` gets its 1-based number (a caller may read an answer differently on a retry)
    and makes one request. An exception that ``is_retryable`` accepts is retried after the
    policy's backoff, unless it came from the last attempt; any other exception, and the last
    attempt's, propagates as it is. ``on_retry(n, error)`` runs before the backoff that
    follows attempt n (for logging). Cancellation (``OperationCanceledError``, whatever the
    predicate says, or a task cancel) is never retried; the token also ends a backoff.
    """
    number = 1
    while True:
        try:
            return await attempt(number)
        except Exception as exc:
            if (
                number >= policy.max_attempts
                or isinstance(exc, OperationCanceledError)
                or not is_retryable(exc)
            ):
                raise
            if on_retry is not None:
                on_retry(number, exc)
            else:
                logger.debug("attempt %d failed (%s); retrying", number, exc)
            listener = _LISTENER.get()
            if listener is not None:
                listener(number, exc)
        await policy.sleep(number, token)
        number += 1
