"""The quick reliability run: the fault matrix, the cancellation fuzz, bad inputs.

The harness and its invariants live in ``tests/reliability.py`` (whose ``main`` is the long run
that prints the README's table). Here:

- the fault matrix: every fault kind x where, injected once and on every call (seed 0, small
  layouts), one test per cell; the long run adds seeds and larger layouts;
- the random-cancellation fuzz: 4 x 52 cancel points (from the loop, a timer thread, a worker
  thread and ``cancel_after``), every checkpoint resumed by the next link of its chain;
- bad inputs: every case of ``API_CASES`` and ``CLI_CASES``, and a file cut short under the
  command line;
- the findings of the harness, pinned as plain tests.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from reliability import (
    API_CASES,
    CANCEL_MODES,
    CLI_CASES,
    PART,
    BadFiles,
    CannotRun,
    Cell,
    Clients,
    CliOutcome,
    FuzzPlan,
    Tally,
    abandoned_async_generators,
    check_cli_outcome,
    check_success,
    checkpoint_of,
    cli_repository,
    format_kinds,
    format_table,
    fuzz_layer_sizes,
    make_bad_files,
    matrix,
    open_client,
    open_clients,
    private_checkout,
    run_api_case,
    run_cell,
    run_cli_case,
    run_cli_cases,
    run_cli_shrinking,
    run_fuzz,
    tally_cli,
    unreadable_upload,
    write_layer,
)
from reliability_windows import LIES, run_await_points, run_impossible_answers, run_windows

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    LayerUploader,
    OperationCanceledError,
    UploadCheckpoint,
)
from ecrstream.local import FaultKind, LocalEcr, Operation, RecordedRequest

pytestmark = pytest.mark.anyio

QUICK_CELLS = matrix(seeds=(0,), always_seeds=(0,), compact=True)
FUZZ_POINTS = 52  # per cancel mode: 208 in all
# seconds from cancel() to OperationCanceledError (measured: p50 2-5 ms, max about 120 ms)
LATENCY_P50 = 0.1
LATENCY_MAX = 1.0


@pytest.fixture
async def clients(ecr: LocalEcr) -> AsyncIterator[Clients]:
    async with open_clients(ecr) as pair:
        yield pair


# -- the fault matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", QUICK_CELLS, ids=lambda cell: cell.name)
async def test_fault_matrix(ecr: LocalEcr, clients: Clients, tmp_path: Path, cell: Cell) -> None:
    tally = Tally("fault matrix")

    outcome = await run_cell(ecr, clients, tmp_path, cell, tally)

    assert not tally.problems, "\n".join(tally.problems)
    assert outcome.injected >= 1
    assert (outcome.result is not None) == cell.expect_recovery
    assert tally.recovered + tally.failed_clearly == 1


def test_the_quick_matrix_covers_every_kind_and_where_both_ways() -> None:
    assert {(cell.kind, cell.where, cell.always) for cell in QUICK_CELLS} == {
        (kind, where, always)
        for kind in FaultKind
        if kind is not FaultKind.EXPIRED_URL  # GetDownloadUrlForLayer's only: no upload's
        for where in ("initiate", "first-part", "middle-part", "last-part", "complete")
        for always in (False, True)
    }


# -- the cancellation fuzz ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", CANCEL_MODES)
async def test_random_cancellation(ecr: LocalEcr, tmp_path: Path, mode: str) -> None:
    seed = CANCEL_MODES.index(mode)
    plan = FuzzPlan(seed, (mode,), FUZZ_POINTS, fuzz_layer_sizes(seed))
    tally = Tally("cancellation fuzz")

    async with open_client(ecr) as client:
        await run_fuzz(ecr, client, tmp_path, plan, tally)

    assert not tally.problems, "\n".join(tally.problems)
    assert tally.cancels >= FUZZ_POINTS
    assert len(tally.latencies) == tally.cancels
    # A cancel that waited for the request in flight or a backoff to end would take about
    # a part's upload (100 ms and more) or the backoff (up to 2.5 s).
    assert (tally.latency(0.5) or 0) < LATENCY_P50
    assert max(tally.latencies) < LATENCY_MAX
    assert tally.recovered >= 1  # chains resumed to the end


# -- bad inputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> BadFiles:
    return make_bad_files(tmp_path_factory.mktemp("bad-inputs"))


def test_there_are_at_least_30_bad_inputs() -> None:
    assert len(API_CASES) + len(CLI_CASES) >= 30
    assert len({case.name for case in API_CASES}) == len(API_CASES)
    assert len({case.name for case in CLI_CASES}) == len(CLI_CASES)


@pytest.mark.parametrize("case", API_CASES, ids=lambda case: case.name)
async def test_bad_input_api(ecr: LocalEcr, bad_files: BadFiles, case: Any) -> None:
    tally = Tally("bad inputs")

    async with open_client(ecr) as client:
        try:
            problems = await run_api_case(ecr, client, bad_files, case, tally)
        except CannotRun as exc:
            pytest.skip(str(exc))

    assert problems == []
    assert tally.failed_clearly == 1


@pytest.fixture(scope="module")
def cli_batch(
    local_ecr: LocalEcr, bad_files: BadFiles
) -> tuple[dict[str, CliOutcome], list[RecordedRequest]]:
    """Every case of CLI_CASES, run at once, and what reached the proxy meanwhile."""
    local_ecr.wait_idle()
    local_ecr.reset()
    outcomes = run_cli_cases(local_ecr, bad_files, CLI_CASES)
    local_ecr.wait_idle()
    return outcomes, local_ecr.requests()


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_bad_input_cli(
    case: Any, cli_batch: tuple[dict[str, CliOutcome], list[RecordedRequest]]
) -> None:
    outcomes, records = cli_batch
    skipped = outcomes[case.name].skipped
    if skipped is not None:
        pytest.skip(skipped)
    mine = [r for r in records if r.repository_name == cli_repository(case)]

    problems = tally_cli([case], outcomes, mine, Tally("bad inputs"))

    assert problems == {case.name: []}, outcomes[case.name]


def test_bad_inputs_on_the_command_line_send_no_request(
    cli_batch: tuple[dict[str, CliOutcome], list[RecordedRequest]],
) -> None:
    assert cli_batch[1] == []


async def test_the_permission_cases_pass_from_a_checkout_in_a_private_folder(
    ecr: LocalEcr, repository: str, bad_files: BadFiles, tmp_path: Path
) -> None:
    """A checkout where only its owner may enter (a 0700 home, a mktemp -d folder): the
    children of the permission cases must still import ecrstream from it, and still be denied
    the file, for the right reason."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)
    extra_env = private_checkout(home / "checkout")

    answer = await unreadable_upload(ecr, repository, extra_env)

    assert answer["module"].startswith(str(home / "checkout")), answer
    assert answer["value_error"], answer
    assert answer["message"].startswith("path: permission denied")
    assert answer["path"] in answer["message"]
    case = next(case for case in CLI_CASES if case.denied)
    outcome = await asyncio.to_thread(run_cli_case, ecr, bad_files, case, extra_env)
    assert outcome.skipped is None
    assert check_cli_outcome(case, outcome) == []


async def test_bad_input_cli_file_shrinking_while_read(ecr: LocalEcr, tmp_path: Path) -> None:
    tally = Tally("bad inputs")

    problems = await run_cli_shrinking(ecr, tmp_path, tally)

    assert problems == []
    assert tally.failed_clearly == 1


# -- findings, pinned ---------------------------------------------------------------------------


async def test_resume_after_a_cancel_during_an_applied_complete_reports_the_layer(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    """A cancel lands while CompleteLayerUpload is in flight, after ECR applied it.

    The uploader never heard the answer: its checkpoint says every byte is committed. The
    layer is in the repository, so resuming from that checkpoint must report it, not fail
    with UploadNotFound (the Ctrl-C-then-resume path of the command line).
    """
    layer = write_layer(tmp_path, PART + 4321, "complete-applied")
    ecr.faults.add(Operation.COMPLETE_LAYER_UPLOAD, FaultKind.DELAY_AFTER_APPLY)
    async with open_client(ecr) as client:
        uploader = LayerUploader(client, repository, part_size=PART)
        source = CancellationTokenSource()
        task = asyncio.ensure_future(
            uploader.upload_file(layer.path, cancellation_token=source.token)
        )
        await ecr.wait_for_delay_async(Operation.COMPLETE_LAYER_UPLOAD)
        source.cancel()
        with pytest.raises(OperationCanceledError) as caught:
            await task
        checkpoint = caught.value.checkpoint
        assert isinstance(checkpoint, UploadCheckpoint)
        assert checkpoint.bytes_committed == layer.size
        await ecr.wait_idle_async()
        assert [r.accepted for r in ecr.requests(Operation.COMPLETE_LAYER_UPLOAD)] == [True]

        result = await uploader.upload_file(layer.path, resume=checkpoint)

        tally = Tally("pinned")
        await check_success(ecr, client, repository, layer, result, tally, "resume")
        assert tally.problems == []


async def test_a_resumed_upload_canceled_before_it_starts_keeps_its_checkpoint(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    """The upload it resumes exists: OperationCanceledError.checkpoint must still point at it.

    (None is for "no upload was initiated yet"; a caller that saves ``exc.checkpoint`` would
    lose the upload and start over.) The fuzz hits the same with a cancel that lands while the
    file is being opened.
    """
    layer = write_layer(tmp_path, PART + 1, "resume-canceled-early")
    async with open_client(ecr) as client:
        uploader = LayerUploader(client, repository, part_size=PART)
        source = CancellationTokenSource()

        def stop_after_first_part(progress: Any) -> None:
            if progress.parts_sent == 1:
                source.cancel()

        with pytest.raises(OperationCanceledError) as first:
            await uploader.upload_file(
                layer.path, cancellation_token=source.token, on_progress=stop_after_first_part
            )
        checkpoint = first.value.checkpoint
        assert isinstance(checkpoint, UploadCheckpoint)
        assert checkpoint.bytes_committed == PART

        with pytest.raises(OperationCanceledError) as second:
            await uploader.upload_file(
                layer.path, cancellation_token=source.token, resume=checkpoint
            )

    assert second.value.checkpoint == checkpoint


async def test_a_part_body_cut_short_leaves_no_async_generator_for_the_gc(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    """A part request that dies mid-body (a reset here; a cancel does the same) must close the
    iterator that feeds aiohttp the body.

    Left suspended, the async generator is closed by the GC instead: the loop's finalizer hook
    then creates an ``aclose()`` task at whatever moment the collection happens (a stray task
    in a later run; "Event loop is closed" if the loop has gone by then).
    """
    layer = write_layer(tmp_path, PART + 4321, "part-body-cut")
    ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.RESET, reset_after_bytes=100_000)
    async with open_client(ecr) as client:
        uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=0.001)
        async with abandoned_async_generators() as abandoned:
            result = await uploader.upload_file(layer.path)
        tally = Tally("pinned")
        await check_success(ecr, client, repository, layer, result, tally, "reset mid-body")

    assert tally.problems == []
    assert ecr.requests(Operation.UPLOAD_LAYER_PART)[0].fault is FaultKind.RESET
    assert abandoned == []


# -- the table ----------------------------------------------------------------------------------


def test_format_table_totals_sections_and_quantiles() -> None:
    matrix_tally = Tally("fault matrix", runs=3, faults_injected=4, recovered=2, failed_clearly=1)
    fuzz_tally = Tally("fuzz", runs=10, cancels=8, recovered=2)
    fuzz_tally.latencies = [0.001 * n for n in range(1, 101)]
    fuzz_tally.leak("somewhere", "a task")

    table = format_table([matrix_tally, fuzz_tally]).splitlines()

    assert table[0].startswith("| section | runs | faults injected | cancels | recovered |")
    # columns: ... bytes lost, wrong layers, leaks, errors outside the tree, other problems
    assert table[2] == "| fault matrix | 3 | 4 | 0 | 2 | 1 | 0 | 0 | 0 | 0 | 0 | - / - |"
    assert table[3] == "| fuzz | 10 | 0 | 8 | 2 | 0 | 0 | 0 | 1 | 0 | 0 | 50 ms / 99 ms |"
    assert table[4] == "| **total** | 13 | 4 | 8 | 4 | 1 | 0 | 0 | 1 | 0 | 0 | 50 ms / 99 ms |"
    assert fuzz_tally.must_be_zero == 1
    assert matrix_tally.must_be_zero == 0
    assert format_kinds([matrix_tally, fuzz_tally]) == "- 1 x leak: a task"


def test_a_checkpoint_of_the_bad_inputs_is_well_formed(tmp_path: Path) -> None:
    """The bad-input checkpoints differ from a good one only where a case says."""
    path = tmp_path / "file.bin"
    path.write_bytes(random.Random(0).randbytes(10))
    checkpoint = checkpoint_of(path, "some-repo")
    assert UploadCheckpoint.from_json(checkpoint.to_json()) == checkpoint
    assert checkpoint.source_size == 10
    assert checkpoint.source_path == str(path.resolve())
    assert checkpoint.source_mtime_ns == os.stat(path).st_mtime_ns


# -- issue 12's sections: await points, windows, impossible answers ----------------------------


@pytest.fixture
async def ecr_client(ecr: LocalEcr) -> AsyncIterator[EcrClient]:
    async with EcrClient.create(**ecr.client_kwargs()) as made:
        yield made


@pytest.mark.timeout(300)
async def test_windows_section(ecr: LocalEcr, ecr_client: EcrClient, tmp_path: Path) -> None:
    tally = Tally("windows")

    await run_windows(ecr, ecr_client, tmp_path, tally)

    assert not tally.problems, "\n".join(tally.problems)
    assert tally.cancels >= 6  # the on_progress window 2 x 2, the re-align window at least 2
    assert tally.must_be_zero == 0


@pytest.mark.timeout(300)
async def test_impossible_answers_section(ecr: LocalEcr, tmp_path: Path) -> None:
    tally = Tally("impossible answers")

    await run_impossible_answers(ecr, tmp_path, tally)

    assert not tally.problems, "\n".join(tally.problems)
    # every lie from a file and from a stream fails clearly but one (a file can re-read what
    # ECR "forgot"); the lie raced by a cancel fails clearly or is canceled, both ways
    assert tally.failed_clearly + tally.cancels == 2 * len(LIES) - 1 + 2
    assert tally.recovered == 1  # a file that ECR "forgot" is read again
    assert tally.faults_injected >= len(LIES)
    assert tally.must_be_zero == 0


# The stream and the restart are swept whole by the long run (and the file and the
# re-alignment sampled by test_cancel_points.py): here every eighth point of each from a
# random start, both ways (every third took about 7 minutes of the suite).
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", ["stream", "restart"])
async def test_await_points_section(
    ecr: LocalEcr, ecr_client: EcrClient, tmp_path: Path, scenario: str
) -> None:
    tally = Tally("await points")
    start = random.randrange(8)

    await run_await_points(
        ecr, ecr_client, tmp_path, tally, scenarios=(scenario,), every=8, start=start
    )

    assert not tally.problems, f"sample start={start} every=8\n" + "\n".join(tally.problems)
    assert tally.cancels >= 4
    assert tally.must_be_zero == 0


def test_the_table_has_a_must_be_zero_column_for_errors_outside_the_tree() -> None:
    tally = Tally("section")
    tally.outside("somewhere", RuntimeError("UploadLayerPart: ECR keeps asking for byte 0"))

    table = format_table([tally])

    assert "errors outside the tree" in table.splitlines()[0]
    assert tally.must_be_zero == 1
    assert tally.problems == [
        "somewhere: outside the error tree: RuntimeError: UploadLayerPart: ECR keeps asking"
        " for byte 0"
    ]
