"""run_limited's adaptive bound: ConcurrencyLimit's arithmetic (the servers' side of it is
in test_copy.py and test_image.py: a throttled copy and push against the local endpoint)."""

from __future__ import annotations

import anyio
import pytest

from ecrstream.errors import InvalidArgumentError, ServerError, ThrottlingError
from ecrstream.image.tasks import ConcurrencyLimit, run_limited

pytestmark = pytest.mark.anyio


def throttled() -> ThrottlingError:
    return ThrottlingError("Rate exceeded", code="ThrottlingException", operation="UploadLayerPart")


def test_each_throttled_retry_takes_one_off_down_to_1_and_successes_give_them_back() -> None:
    limit = ConcurrencyLimit(3)
    limit.retried(1, ServerError("boom", code="ServerException", operation="UploadLayerPart"))
    assert limit.limit == 3  # only throttling counts
    for _ in range(4):
        limit.retried(1, throttled())
    assert (limit.limit, limit.lowest, limit.throttled) == (1, 1, 4)
    # One item finished at limit 1: one more; two at limit 2: three again (and no higher).
    steps = []
    for _ in range(6):
        limit.running += 1
        limit.release(finished=True)
        steps.append(limit.limit)
    assert steps == [2, 2, 3, 3, 3, 3]
    assert limit.lowest == 1
    limit.running += 1
    limit.release(finished=False)  # a failure is no step up
    limit.retried(1, throttled())
    limit.running += 1
    limit.release(finished=True)
    assert limit.limit == 2


def test_a_bad_maximum_is_named() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        ConcurrencyLimit(0)
    assert caught.value.field == "max_concurrent_layers"


async def test_new_items_wait_while_as_many_run_as_the_lowered_limit() -> None:
    limit = ConcurrencyLimit(3)
    running: list[int] = []
    all_three = anyio.Event()
    gate = anyio.Event()
    started: list[int] = []

    async def work(item: int) -> None:
        started.append(item)
        running.append(limit.running)
        if len(started) == 3:
            all_three.set()
        if item == 0:
            await all_three.wait()
            limit.retried(1, throttled())  # as if item 0's request were throttled twice
            limit.retried(1, throttled())
            gate.set()
        else:
            await gate.wait()

    with anyio.fail_after(5):
        await run_limited(range(6), work, limit)
    assert started == [0, 1, 2, 3, 4, 5]  # in order, all of them
    assert limit.lowest == 1
    assert running[:3] == [1, 2, 3]
    assert running[3] <= 2  # item 3 waited for a place under the lowered limit
    assert limit.peak == 3
