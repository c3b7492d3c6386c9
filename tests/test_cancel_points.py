"""Cancel an upload at every point where it waits, by its token and by ``task.cancel()``.

Issue 12's cancellation bugs were windows: a cancel while an async ``on_progress`` waited
after the next-to-last part (the reader, at the end of the input, gave a body buffer back
twice: ``anyio.WouldBlock``), a cancel while the pipeline restarted for a re-alignment (a
queue closed but not drained: ``ClosedResourceError``), a ``task.cancel()`` while a file was
being opened (the file object lost). These tests find the points by looking at the upload's
tasks once per event-loop iteration (``await_points``), not by timing, and stop the upload at
them, both ways; every stop must be clean (see ``await_points.check_stop``). Each run of the
suite tries a different quarter of the points; ``tests/reliability.py`` sweeps them all.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from await_points import (
    KINDS,
    PART,
    Run,
    Site,
    cancel_when,
    checker,
    in_on_progress,
    on_progress_until_the_input_ends,
    reader_at_the_end,
    scenario_of,
    show,
    sweep,
    waits_at,
)

from ecrstream import (
    EcrClient,
    OperationCanceledError,
)
from ecrstream.local import LocalEcr

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

#: The suite tries every SAMPLE_EVERY-th await point (from a random start; the environment
#: variable ECRSTREAM_CANCEL_POINTS_START pins it, to run a failed sample again).
SAMPLE_EVERY = 4
#: Seconds from a cancel to the end of the upload's task, at most: a cancel that waits on a
#: timer, a timeout or a slow clean-up is a bug (measured: 60 ms at the most, most under 2 ms).
PROMPT = 1.0


def sample_start() -> int:
    pinned = os.environ.get("ECRSTREAM_CANCEL_POINTS_START")
    if pinned is None:
        return random.randrange(SAMPLE_EVERY)
    if not pinned.isdigit() or int(pinned) >= SAMPLE_EVERY:
        raise ValueError(
            f"ECRSTREAM_CANCEL_POINTS_START must be a whole number from 0 to {SAMPLE_EVERY - 1}, "
            f"got {pinned!r}"
        )
    return int(pinned)


def and_prompt(
    check: Callable[[Run], Awaitable[list[str]]],
) -> Callable[[Run], Awaitable[list[str]]]:
    """``check``, and that the stop took under PROMPT seconds."""

    async def checked(run: Run) -> list[str]:
        problems = await check(run)
        if run.latency is not None and run.latency >= PROMPT:
            problems.append(f"the stop took {run.latency:.2f} s after the cancel")
        return problems

    return checked


@pytest.fixture
def no_faults_after(ecr: LocalEcr) -> Iterator[None]:
    yield
    ecr.faults.clear()


# The stream and the restart are swept by the reliability tool's long run; here the file
# (every point of a plain upload) and the re-alignment (every point of a restart).
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["file", "realign"])
async def test_a_cancel_at_sampled_await_points_stops_cleanly(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    tmp_path: Path,
    no_faults_after: None,
    name: str,
    kind: str,
) -> None:
    scenario, layer = scenario_of(name, ecr, client, repository, tmp_path)
    # A different quarter of the points in each run; the reliability tool sweeps every point.
    # The start is in the failure message.
    start = sample_start()

    problems, missed, sites = await sweep(
        scenario,
        kind,
        and_prompt(checker(kind, ecr, client, repository, layer, file=True)),
        every=SAMPLE_EVERY,
        start=start,
    )

    tried = len(sorted(sites)[start::SAMPLE_EVERY])
    where = f"sample start={start} every={SAMPLE_EVERY} of {len(sites)} points"
    assert problems == {}, where + "\n" + "\n".join(f"{s}: {f}" for s, f in problems.items())
    assert len(sites) >= 15  # an upload waits in many places; fewer means the probe is blind
    # Reads ahead are faster or slower from run to run, so a few points may not recur.
    assert len(missed) <= max(1, tried // 4), (where, [show(site) for site in missed])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["file", "stream"])
async def test_a_cancel_while_on_progress_waits_and_the_input_has_ended(
    ecr: LocalEcr, client: EcrClient, repository: str, tmp_path: Path, name: str, kind: str
) -> None:
    """Issue 12 item 1: on_progress awaits after the next-to-last part while the reader, at
    the end of the input, waits to hand over its end marker."""
    scenario, layer = scenario_of(
        name, ecr, client, repository, tmp_path, on_progress_until_the_input_ends
    )

    def window(sites: set[Site]) -> bool:
        return in_on_progress(sites) and reader_at_the_end(sites)

    run = await cancel_when(scenario, window, kind)

    assert run.canceled_at is not None, "the window never opened"
    check = checker(kind, ecr, client, repository, layer, file=name == "file")
    assert await check(run) == []
    if kind == "token":
        assert isinstance(run.outcome, OperationCanceledError)
        assert run.outcome.checkpoint is not None
        assert run.outcome.checkpoint.bytes_committed == PART  # the next-to-last part is in


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cancel_while_the_pipeline_restarts_for_a_realignment(
    ecr: LocalEcr, client: EcrClient, repository: str, tmp_path: Path, kind: str
) -> None:
    """Issue 12 item 2: a cancel that lands while the pipeline stops to re-align, at each
    point where the stop waits."""
    scenario, layer = scenario_of("realign", ecr, client, repository, tmp_path)
    check = checker(kind, ecr, client, repository, layer, file=True)
    # The drain not yet started, waiting for the reader's last items, waiting for its end.
    lines = ("def _drain", "async for item in reader.queue", "reader.done.wait()")
    met = 0
    for text in lines:

        def window(sites: set[Site], text: str = text) -> bool:
            restarting = any("Pipeline.restart" in " ".join(site) for site in sites)
            return restarting and waits_at(sites, "_drain", text)

        run = await cancel_when(scenario, window, kind)
        if run.canceled_at is None:
            continue  # the drain went past this point within one loop iteration
        met += 1
        assert await check(run) == [], text
    assert met >= 1, "no cancel landed while the pipeline restarted"
