"""The one retry loop (ecrstream.retry): attempts counted once, for every caller.

``call_with_retries`` is driven here with attempts that fail on purpose; the callers that
use it against the local endpoint (the client's operations, the uploader's parts and
CompleteLayerUpload) are tested in test_client.py and test_uploader.py.
"""

from __future__ import annotations

import pytest

from ecrstream import (
    CancellationTokenSource,
    InvalidArgumentError,
    LayersNotFoundError,
    OperationCanceledError,
    RetryPolicy,
    ServerError,
    ThrottlingError,
)
from ecrstream.lowlevel import call_with_retries

pytestmark = pytest.mark.anyio

NO_WAIT = RetryPolicy(max_attempts=4, base_delay=0.0)


def server_error() -> ServerError:
    return ServerError("try later", code="ServerException", operation="Test", status_code=500)


class Script:
    """An attempt function that raises the scripted errors in turn, then returns its number."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.numbers: list[int] = []

    async def __call__(self, number: int) -> int:
        self.numbers.append(number)
        if self.errors:
            raise self.errors.pop(0)
        return number


@pytest.mark.parametrize("attempts", [1, 2, 3, 4])
async def test_max_attempts_counts_requests_and_the_last_error_propagates(attempts: int) -> None:
    errors = [server_error() for _ in range(10)]
    script = Script(*errors)
    with pytest.raises(ServerError) as caught:
        await call_with_retries(script, policy=RetryPolicy(max_attempts=attempts, base_delay=0))
    assert script.numbers == list(range(1, attempts + 1))
    assert caught.value is errors[attempts - 1]


async def test_a_transient_error_then_success_returns_the_answer() -> None:
    throttled = ThrottlingError("slow", code="ThrottlingException", operation="Test")
    script = Script(server_error(), throttled)
    assert await call_with_retries(script, policy=NO_WAIT) == 3
    assert script.numbers == [1, 2, 3]


async def test_what_is_not_retryable_propagates_at_once() -> None:
    refused = LayersNotFoundError("not yet", code="LayersNotFoundException", operation="PutImage")
    script = Script(refused)
    with pytest.raises(LayersNotFoundError):
        await call_with_retries(script, policy=NO_WAIT)
    assert script.numbers == [1]


async def test_a_predicate_chooses_what_is_retried_and_on_retry_sees_each_failure() -> None:
    refusals = [
        LayersNotFoundError("not yet", code="LayersNotFoundException", operation="PutImage")
        for _ in range(2)
    ]
    script = Script(*refusals)
    seen: list[tuple[int, Exception]] = []

    answer = await call_with_retries(
        script,
        policy=NO_WAIT,
        is_retryable=lambda exc: isinstance(exc, LayersNotFoundError),
        on_retry=lambda number, exc: seen.append((number, exc)),
    )

    assert answer == 3
    assert seen == [(1, refusals[0]), (2, refusals[1])]
    with pytest.raises(ServerError):  # transient, but not what this caller retries
        await call_with_retries(
            Script(server_error()),
            policy=NO_WAIT,
            is_retryable=lambda exc: isinstance(exc, LayersNotFoundError),
        )


async def test_a_cancel_during_the_backoff_stops_it_and_sends_no_retry() -> None:
    cts = CancellationTokenSource()
    script = Script(server_error())

    async def first_fails_then_cancel(number: int) -> int:
        if number == 1:
            cts.cancel()  # the backoff that follows must end at once
        return await script(number)

    with pytest.raises(OperationCanceledError):
        await call_with_retries(
            first_fails_then_cancel,
            policy=RetryPolicy(max_attempts=3, base_delay=1000.0, max_delay=1000.0),
            token=cts.token,
        )
    assert script.numbers == [1]


async def test_a_canceled_operation_is_never_retried() -> None:
    cts = CancellationTokenSource()
    cts.cancel()
    script = Script(OperationCanceledError(cancellation_token=cts.token))
    with pytest.raises(OperationCanceledError):
        await call_with_retries(script, policy=NO_WAIT, is_retryable=lambda exc: True)
    assert script.numbers == [1]


def test_the_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=3.0)
    for retry_number, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        delays = [policy.delay(retry_number) for _ in range(200)]
        assert all(0.0 <= delay <= cap for delay in delays)
        assert max(delays) > cap / 2  # spread over the whole range, not a constant


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"base_delay": -1}, "base_delay/max_delay"),
        ({"max_delay": -0.1}, "base_delay/max_delay"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(arguments: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        RetryPolicy(**arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
