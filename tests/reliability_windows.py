"""The reliability tool's sections for issue 12: await points, windows, impossible answers.

- **Await points** (``run_await_points``): each scenario of ``await_points.scenario_of`` (a
  file, a stream, a resume that re-aligns, an upload ECR loses) is run once to find where its
  tasks wait, then once per point and per kind of cancel (the token; ``task.cancel()`` from
  outside), each stop checked (``await_points.check_stop``, plus the process-wide census of
  tasks, threads and descriptors).
- **Windows** (``run_windows``): the moments issue 12 found, aimed at on purpose: an async
  ``on_progress`` awaited after the next-to-last part while the reader waits at the end of
  the input; the pipeline's stop while it restarts for a re-alignment, at each of its waits.
- **Impossible answers** (``run_impossible_answers``): uploads through ``lying_ecr.LyingEcr``
  told to refuse every part while asking for byte 0, to claim bytes never sent (in an answer
  and in a refusal), to forget acknowledged bytes, to re-align without end, and a cancel
  racing the failure. Each must fail with a ProtocolViolationError (or recover, where the
  source can rewind) and a checkpoint must never claim more than reached the endpoint.

Every exception that ends a run and is neither in ecrstream's tree nor the cancellation
asked for counts in "errors outside the tree", a must-be-zero column.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from await_points import (
    KINDS,
    Run,
    Site,
    cancel_at,
    cancel_when,
    check_stop,
    discover,
    in_on_progress,
    on_progress_until_the_input_ends,
    reader_at_the_end,
    scenario_of,
    waits_at,
)
from await_points import Scenario as StopScenario
from helpers import random_bytes
from lying_ecr import Exchange, LyingEcr, Reply, invalid_part, part_taken
from reliability import (
    PART,
    Tally,
    check_completes,
    check_success,
    forget_uploads,
    leaks_since,
    new_repository,
    resources,
    settle,
    write_layer,
)

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    EcrStreamError,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    ProtocolViolationError,
    UploadCheckpoint,
)
from ecrstream.local import LocalEcr, Operation

PART_OP = Operation.UPLOAD_LAYER_PART
SCENARIOS = ("file", "stream", "realign", "restart")
LIAR_ATTEMPTS = 3


def _in_tree(outcome: BaseException | LayerUploadResult) -> bool:
    return isinstance(
        outcome,
        LayerUploadResult | EcrStreamError | OperationCanceledError | asyncio.CancelledError,
    )


async def _tally_stop(
    run: Run,
    kind: str,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    layer_path: Path | None,
    digest: str,
    tally: Tally,
    where: str,
    resumed: UploadCheckpoint | None = None,
) -> None:
    """Count one stopped run: a cancel (and its latency), and every problem by its column."""
    tally.runs += 1
    if run.canceled_at is None:
        return
    tally.cancels += 1
    if run.latency is not None:
        tally.latencies.append(run.latency)
    if not _in_tree(run.outcome):
        assert isinstance(run.outcome, BaseException)
        tally.outside(where, run.outcome)
    checkpoint = getattr(run.outcome, "checkpoint", None)
    problems = await check_stop(run, kind, ecr, client, repository, layer_path, digest, resumed)
    for problem in problems:
        if problem.startswith(("tasks left behind", "ResourceWarnings")) or problem.endswith(
            "left open"
        ):
            tally.leak(where, problem)
        elif problem.startswith("the checkpoint says") and checkpoint is not None:
            held = ecr.upload(checkpoint.upload_id)
            claimed = checkpoint.bytes_committed - (held.bytes_received if held else 0)
            tally.lost(where, claimed, problem)
        elif "ended in" in problem and not _in_tree(run.outcome):
            continue  # counted above, as outside the tree
        else:
            tally.other_problem(where, problem)


async def run_await_points(
    ecr: LocalEcr,
    client: EcrClient,
    folder: Path,
    tally: Tally,
    *,
    scenarios: tuple[str, ...] = SCENARIOS,
    kinds: tuple[str, ...] = KINDS,
    every: int = 1,
    start: int = 0,
    deadline: float | None = None,
) -> None:
    """Cancel each scenario at each of its await points (every ``every``-th from ``start``),
    both kinds."""
    for name in scenarios:
        repository = new_repository(ecr)
        scenario, layer = scenario_of(name, ecr, client, repository, folder)
        sites = sorted(await discover(scenario))
        for kind in kinds:
            for site in sites[start % every :: every]:
                if deadline is not None and time.monotonic() > deadline:
                    return
                before = resources()
                run = await cancel_at(scenario, site, kind)
                where = f"await points {name}/{kind} at {site[0]}:{site[-1]}"
                await _tally_stop(
                    run,
                    kind,
                    ecr,
                    client,
                    repository,
                    layer.path,
                    layer.digest,
                    tally,
                    where,
                    layer.resumed,
                )
                await settle(ecr)
                for leak in leaks_since(before):
                    tally.leak(where, leak)
        ecr.faults.clear()
        forget_uploads(ecr)


async def run_windows(ecr: LocalEcr, client: EcrClient, folder: Path, tally: Tally) -> None:
    """The windows issue 12 found, aimed at on purpose, both kinds of cancel."""
    for kind in KINDS:
        for name in ("file", "stream"):
            repository = new_repository(ecr)
            scenario, layer = scenario_of(
                name, ecr, client, repository, folder, on_progress_until_the_input_ends
            )

            def at_the_end(sites: set[Site]) -> bool:
                return in_on_progress(sites) and reader_at_the_end(sites)

            run = await cancel_when(scenario, at_the_end, kind)
            where = f"on_progress window {name}/{kind}"
            if run.canceled_at is None:
                tally.other_problem(where, "the window never opened")
            path = layer.path if name == "file" else None
            await _tally_stop(run, kind, ecr, client, repository, path, layer.digest, tally, where)
        repository = new_repository(ecr)
        scenario, layer = scenario_of("realign", ecr, client, repository, folder)
        for text in ("def _drain", "async for item in reader.queue", "reader.done.wait()"):

            def restarting(sites: set[Site], text: str = text) -> bool:
                stopping = any("Pipeline.restart" in " ".join(site) for site in sites)
                return stopping and waits_at(sites, "_drain", text)

            run = await cancel_when(scenario, restarting, kind)
            where = f"re-align window {kind} at {text!r}"
            await _tally_stop(
                run,
                kind,
                ecr,
                client,
                repository,
                layer.path,
                layer.digest,
                tally,
                where,
                layer.resumed,
            )
    forget_uploads(ecr)


# -- impossible answers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Lying:
    """One way to lie: to which parts, with what, and what the upload must then do."""

    name: str
    reply: Callable[[Exchange], Reply | None]
    forward: bool = False
    times: int | None = None
    recovers_from_a_file: bool = False


def _nothing_held(exchange: Exchange) -> Reply:
    return invalid_part(exchange, -1)


def _more_in_an_answer(exchange: Exchange) -> Reply:
    return part_taken(exchange, (exchange.part_last_byte or 0) + 37_000_000)


def _more_in_a_refusal(exchange: Exchange) -> Reply:
    return invalid_part(exchange, (exchange.part_last_byte or 0) + 37_000_000)


def _forgets_on_the_second(exchange: Exchange) -> Reply | None:
    return invalid_part(exchange, -1) if exchange.call == 2 else None


def _one_byte_on(exchange: Exchange) -> Reply:
    return invalid_part(exchange, exchange.part_first_byte or 0)


LIES = (
    Lying("refuses every part, asking for byte 0", _nothing_held),
    Lying("claims bytes never sent (answer)", _more_in_an_answer, forward=True, times=1),
    Lying("claims bytes never sent (refusal)", _more_in_a_refusal, times=1),
    Lying("forgets acknowledged bytes", _forgets_on_the_second, recovers_from_a_file=True),
    Lying("asks for one byte more each time", _one_byte_on),
)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1024 * 1024):
        yield data[start : start + 1024 * 1024]


async def run_impossible_answers(
    ecr: LocalEcr, folder: Path, tally: Tally, *, seed: int = 0, lies: tuple[Lying, ...] = LIES
) -> None:
    """Every lie, from a file and from a stream; then a cancel racing the failure."""
    for index, lie in enumerate(lies):
        for source in ("file", "stream"):
            size = 2 * PART + 1 + (seed * 7919 + index * 104729) % PART
            await _lie_once(ecr, folder, tally, lie, source, size, f"{seed}/{index}")
    for kind in KINDS:
        await _lie_and_cancel(ecr, tally, kind, seed)


async def _lie_once(
    ecr: LocalEcr, folder: Path, tally: Tally, lie: Lying, source: str, size: int, seed: str
) -> None:
    where = f"impossible answer {lie.name!r} from a {source}"
    layer = write_layer(folder, size, f"lie/{seed}/{source}")
    await settle(ecr)
    ecr.reset()  # check_completes looks at every CompleteLayerUpload since the reset
    with LyingEcr(ecr) as liar:
        async with EcrClient.create(**liar.client_kwargs()) as client:
            before = resources()
            liar.lie(PART_OP, lie.reply, forward=lie.forward, times=lie.times)
            uploader = LayerUploader(
                client,
                new_repository(ecr),
                part_size=PART,
                max_attempts=LIAR_ATTEMPTS,
                retry_base_delay=0.001,
            )
            result: LayerUploadResult | None = None
            error: BaseException | None = None
            try:
                with anyio.fail_after(120):
                    if source == "file":
                        result = await uploader.upload_file(layer.path)
                    else:
                        result = await uploader.upload_stream(_chunks(layer.data))
            except Exception as exc:
                error = exc
            tally.runs += 1
            tally.faults_injected += liar.told
            await settle(ecr)
            for leak in leaks_since(before):
                tally.leak(where, leak)
            recovers = lie.recovers_from_a_file and source == "file"
            if result is not None:
                if recovers:
                    tally.recovered += 1
                    await check_success(
                        ecr, client, uploader.repository_name, layer, result, tally, where
                    )
                else:
                    tally.other_problem(where, f"accepted an impossible answer: {result}")
            elif isinstance(error, ProtocolViolationError) and not recovers:
                if error.operation == "UploadLayerPart" and "UploadLayerPart" in str(error):
                    tally.failed_clearly += 1
                else:
                    tally.other_problem(where, f"does not name the operation: {error}")
            elif error is not None and not isinstance(error, EcrStreamError):
                tally.outside(where, error)
            else:
                tally.other_problem(where, f"ended in {error!r}")
            check_completes(ecr, layer, tally, where)
    forget_uploads(ecr)
    layer.path.unlink(missing_ok=True)


async def _lie_and_cancel(ecr: LocalEcr, tally: Tally, kind: str, seed: int) -> None:
    """A stream told it holds 37 MB of 5 MB, canceled the moment it has the lie."""
    where = f"impossible answer then a {kind} cancel"
    data = random_bytes(PART + 1000 + seed, f"lie-cancel/{seed}")
    more = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data
        await more.wait()
        yield b"x"

    with LyingEcr(ecr) as liar:
        async with EcrClient.create(**liar.client_kwargs()) as client:
            repository = new_repository(ecr)
            liar.lie(PART_OP, _more_in_an_answer, forward=True, times=1)
            uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=0.001)

            def start(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
                return uploader.upload_stream(stalling(), cancellation_token=cts.token)

            def after_the_lie(sites: set[Site]) -> bool:
                in_flight = any("upload_prepared_part" in " ".join(site) for site in sites)
                return liar.told > 0 and not in_flight

            run = await cancel_when(StopScenario(start), after_the_lie, kind)
            tally.runs += 1
            tally.faults_injected += liar.told
            outcome = run.outcome
            if isinstance(outcome, OperationCanceledError) and outcome.checkpoint is not None:
                checkpoint = outcome.checkpoint
                sent = liar.sent_end(checkpoint.upload_id)
                if checkpoint.bytes_committed > sent:
                    tally.lost(
                        where,
                        checkpoint.bytes_committed - sent,
                        f"the checkpoint claims {checkpoint.bytes_committed} bytes, {sent} sent",
                    )
            if not _in_tree(outcome):
                assert isinstance(outcome, BaseException)
                tally.outside(where, outcome)
            elif isinstance(outcome, ProtocolViolationError):
                tally.failed_clearly += 1
            elif isinstance(outcome, OperationCanceledError | asyncio.CancelledError):
                tally.cancels += 1
            else:
                tally.other_problem(where, f"ended in {outcome!r}")
            await settle(ecr)
    forget_uploads(ecr)


async def run_issue_12_sections(
    ecr: LocalEcr, client: EcrClient, folder: Path, seed: int, deadline: float
) -> list[Tally]:
    """The three sections of this module, for the long run; await points until ``deadline``."""
    windows = Tally("on_progress and re-align windows")
    lies = Tally("impossible answers")
    points = Tally("cancel at every await point (token, task.cancel())")
    await run_windows(ecr, client, folder, windows)
    await run_impossible_answers(ecr, folder, lies, seed=seed)
    await run_await_points(ecr, client, folder, points, deadline=deadline)
    return [points, windows, lies]
