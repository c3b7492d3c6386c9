"""Cancel an upload at every point where it waits, by its token and by ``task.cancel()``.

Issue 12's cancellation bugs were windows: a cancel while an async ``on_progress`` waited
after the next-to-last part (the reader, at the end of the input, gave a body buffer back
twice: ``anyio.WouldBlock``), a cancel while the pipeline restarted for a re-alignment (a
queue closed but not drained: ``ClosedResourceError``), a ``task.cancel()`` while a file was
being opened (the file object lost). These tests find the points by looking at the upload's
tasks once per event-loop iteration (``await_points``), not by timing, and stop the upload at
each one, both ways; every stop must be clean (see ``await_points.check_stop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from await_points import (
    KINDS,
    Run,
    Scenario,
    Site,
    all_sites,
    cancel_when,
    check_stop,
    show,
    sweep,
    waits_at,
)
from helpers import digest_of, random_bytes

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    InitiateLayerUploadRequest,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    UploadCheckpoint,
    UploadLayerPartRequest,
    UploadProgress,
)
from ecrstream.local import FaultKind, LocalEcr, Operation

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

MIB = 1024 * 1024
PART = 5 * MIB
HERE = frozenset({__file__})


@pytest.fixture
async def client(ecr: LocalEcr) -> AsyncIterator[EcrClient]:
    async with EcrClient.create(**ecr.client_kwargs()) as made:
        yield made


@pytest.fixture
def no_faults_after(ecr: LocalEcr) -> Iterator[None]:
    yield
    ecr.faults.clear()


async def on_progress(progress: UploadProgress) -> None:
    """An async on_progress that really waits (twice), as a UI update or a queue put would."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


class Layer:
    """A layer on disk and what its uploads must satisfy (``resumed``: the checkpoint the
    current run resumes from, if it does)."""

    def __init__(self, folder: Path, size: int, seed: int) -> None:
        self.data = random_bytes(size, seed)
        self.path = folder / f"layer-{size}-{seed}.bin"
        self.path.write_bytes(self.data)
        self.digest = digest_of(self.data)
        self.resumed: UploadCheckpoint | None = None


def reader_at_the_end(sites: set[Site]) -> bool:
    """The pipeline's reader has read the whole input and waits to say so."""
    return waits_at(sites, "_read_parts", "send.send(None)")


async def on_progress_until_the_input_ends(progress: UploadProgress) -> None:
    """An async on_progress that, before the last part, waits until the reader has read the
    whole input (yielding to the loop, not sleeping; bounded)."""
    if progress.total_bytes is not None and progress.bytes_sent >= progress.total_bytes:
        return
    for _ in range(100_000):
        if reader_at_the_end(all_sites()):
            break
        await asyncio.sleep(0)
    await on_progress(progress)  # the window: still in on_progress, the reader at the end


def scenario_of(
    name: str,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    folder: Path,
    progress: Callable[[UploadProgress], Awaitable[None]] = on_progress,
) -> tuple[Scenario, Layer]:
    """The uploads swept: a file, a stream, a resume that re-aligns, an upload ECR loses."""
    uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=0.001)
    if name == "file":
        layer = Layer(folder, PART + 1, 1)

        def file(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
            return uploader.upload_file(
                layer.path, cancellation_token=cts.token, on_progress=progress
            )

        return Scenario(file, files=HERE), layer
    if name == "stream":
        layer = Layer(folder, PART + 1, 2)

        def stream(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
            return uploader.upload_stream(
                chunks(layer.data), cancellation_token=cts.token, on_progress=progress
            )

        return Scenario(stream, files=HERE), layer
    if name == "realign":
        # ECR holds the first part; the checkpoint claims two: the uploader re-reads backward.
        layer = Layer(folder, 2 * PART + 1, 3)

        async def one_part_in() -> None:
            upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
            await client.upload_layer_part(
                UploadLayerPartRequest(
                    repository, upload.upload_id, 0, PART - 1, memoryview(layer.data)[:PART]
                )
            )
            info = layer.path.stat()
            layer.resumed = UploadCheckpoint(
                repository_name=repository,
                registry_id=None,
                upload_id=upload.upload_id,
                bytes_committed=2 * PART,
                part_size=PART,
                source_path=str(layer.path.resolve()),
                source_size=info.st_size,
                source_mtime_ns=info.st_mtime_ns,
            )

        def resume(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
            return uploader.upload_file(
                layer.path,
                cancellation_token=cts.token,
                on_progress=on_progress,
                resume=layer.resumed,
            )

        return Scenario(resume, prepare=one_part_in, files=HERE), layer
    assert name == "restart"  # UploadNotFound at the second part: one fresh upload
    layer = Layer(folder, PART + 1, 4)

    async def lose_the_upload() -> None:
        ecr.reset()
        ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.UPLOAD_NOT_FOUND, call=2)

    def restart(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
        return uploader.upload_file(
            layer.path, cancellation_token=cts.token, on_progress=on_progress
        )

    return Scenario(restart, prepare=lose_the_upload, files=HERE), layer


def checker(
    kind: str, ecr: LocalEcr, client: EcrClient, repository: str, layer: Layer, *, file: bool
) -> Callable[[Run], Awaitable[list[str]]]:
    async def check(run: Run) -> list[str]:
        path = layer.path if file else None
        return await check_stop(
            run, kind, ecr, client, repository, path, layer.digest, layer.resumed
        )

    return check


# The stream and the restart are swept by the reliability tool's long run; here the file
# (every point of a plain upload) and the re-alignment (every point of a restart).
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["file", "realign"])
async def test_a_cancel_at_every_await_point_stops_cleanly(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    tmp_path: Path,
    no_faults_after: None,
    name: str,
    kind: str,
) -> None:
    scenario, layer = scenario_of(name, ecr, client, repository, tmp_path)

    problems, missed, sites = await sweep(
        scenario, kind, checker(kind, ecr, client, repository, layer, file=True)
    )

    assert problems == {}, "\n".join(f"{site}: {found}" for site, found in problems.items())
    assert len(sites) >= 15  # an upload waits in many places; fewer means the probe is blind
    # Reads ahead are faster or slower from run to run, so a few points may not recur.
    assert len(missed) <= len(sites) // 4, [show(site) for site in missed]


def in_on_progress(sites: set[Site]) -> bool:
    return any(site[0] == "host" and "on_progress" in site[-1] for site in sites)


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
