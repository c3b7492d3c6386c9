"""Cancel an upload at every point where one of its tasks waits, both ways, and check the stop.

An *await point* (a ``Site``) is where a task of the upload is suspended: the chain of
ecrstream (and caller) frames from the task's coroutine down to the innermost await, with
line numbers (``pipeline.Pipeline._read_parts:231 > source.StreamSource.read:350``). A probe
runs once per event-loop iteration (from the selector, before the loop waits: it never keeps
the loop busy) and looks at every task the upload has started.

- ``discover`` runs a scenario once without a cancel and returns the sites it passed through;
- ``cancel_at`` runs it again and, the first time any of its tasks sits at the target site,
  cancels: the token (``"token"``) or the upload's task (``"native"``, ``task.cancel()``);
  ``cancel_when`` does the same when a predicate over all the sites at once holds (a window:
  the caller in ``on_progress`` *while* the reader waits at the end of the input);
- ``check_stop`` says what is wrong with how it stopped, in words: the exception (exactly
  OperationCanceledError with the token and a checkpoint ECR holds, or CancelledError), tasks
  left behind, files left open, ResourceWarnings (unclosed streams, files, generators).

Sites are found by looking, not by timing: a site a run does not pass through again (reads
ahead are faster or slower from run to run) is reported as missed, not as a failure.

``scenario_of`` builds the uploads that tests/test_cancel_points.py and the reliability
tool sweep: a file, a stream, a resume that re-aligns, an upload ECR loses.
"""

from __future__ import annotations

import asyncio
import gc
import linecache
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import digest_of, open_fds_of, random_bytes

import ecrstream
from ecrstream import (
    BatchCheckLayerAvailabilityRequest,
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

_PACKAGE = str(Path(ecrstream.__file__).resolve().parent)
KINDS = ("token", "native")
# aiohttp's advice to aiobotocore about raw bodies over 1 MiB, not a leak (see conftest.py).
_AIOBOTOCORE_ADVICE = "Sending a large body directly with raw bytes"

#: Where one task waits: its role, then the frames from its coroutine to the innermost await.
Site = tuple[str, ...]


def _frames_of(task: asyncio.Task[Any], files: frozenset[str]) -> list[str]:
    frames: list[str] = []
    awaiting: Any = task.get_coro()
    for _ in range(200):  # an await chain is never this deep; a cycle would be
        if awaiting is None:
            break
        frame = (
            getattr(awaiting, "cr_frame", None)
            or getattr(awaiting, "ag_frame", None)
            or getattr(awaiting, "gi_frame", None)
        )
        if frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(_PACKAGE) or name in files:
                frames.append(f"{Path(name).stem}.{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaiting = (
            getattr(awaiting, "cr_await", None)
            or getattr(awaiting, "ag_await", None)
            or getattr(awaiting, "gi_yieldfrom", None)
        )
    return frames


def sites_of(
    host: asyncio.Task[Any], tasks: Iterable[asyncio.Task[Any]], files: frozenset[str]
) -> set[Site]:
    """Where each of ``tasks`` waits now (the host's role is "host", others their root)."""
    found: set[Site] = set()
    for task in tasks:
        if task.done():
            continue
        frames = _frames_of(task, files)
        if frames:
            role = "host" if task is host else frames[0].split(":")[0]
            found.add((role, *frames))
    return found


def all_sites(files: frozenset[str] = frozenset()) -> set[Site]:
    """Where every task of the running loop waits (roles: each task's root function)."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    return sites_of(current, tasks, files)  # type: ignore[arg-type]


def show(site: Site) -> str:
    """A site in one line."""
    return f"[{site[0]}] " + " > ".join(site[1:])


def source_line(frame: str) -> str:
    """The source text of a frame of a site (``pipeline.Pipeline._read_parts:225``)."""
    stem, _, line = frame.rpartition(":")
    path = Path(_PACKAGE) / f"{stem.split('.')[0]}.py"
    return linecache.getline(str(path), int(line)).strip()


def waits_at(sites: set[Site], function: str, text: str) -> bool:
    """True if some task waits innermost in ``function`` at a line that contains ``text``."""
    for site in sites:
        frame = site[-1]
        if frame.rpartition(":")[0].endswith(function) and text in source_line(frame):
            return True
    return False


#: When to cancel: a predicate over the sites where the upload's tasks all wait at once.
Target = Callable[[set[Site]], bool]


@dataclass
class Run:
    """One run of a scenario: how it ended, where it was canceled (if it was), what it left."""

    outcome: LayerUploadResult | BaseException
    canceled_at: Site | None
    latency: float | None = None
    """Seconds from the cancel to the end of the upload's task."""
    sites: set[Site] = field(default_factory=set)
    leftover_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    resource_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    """An upload to stop: ``start(cts)`` makes the upload's coroutine (run as its own task);
    ``prepare()``, awaited before each run, sets up what the run needs (faults, an upload
    to resume); ``files`` are the caller's source files whose frames count in a site."""

    start: Callable[[CancellationTokenSource], Awaitable[LayerUploadResult]]
    prepare: Callable[[], Awaitable[None]] | None = None
    files: frozenset[str] = frozenset()


def _probe_between_iterations(loop: asyncio.AbstractEventLoop, probe: Callable[[], None]) -> Any:
    """Call ``probe`` once per event-loop iteration, after its callbacks ran, without keeping
    the loop busy: from the selector, just before the loop waits for I/O.

    A probe that rescheduled itself with ``call_soon`` never let the loop wait: it spun the
    CPU, and the local ECR's threads (in this process) waited for the GIL at each step, so an
    upload that takes 0.07 s took 2 to 5 s, more on a loaded machine. The sites a task waits
    at last from one iteration to the next, so this sees all of them. Returns what to restore.
    """
    selector: Any = getattr(loop, "_selector", None)
    if selector is None:
        raise RuntimeError(f"await points need asyncio's selector event loop, not {loop!r}")
    original = selector.select
    ready: Any = loop._ready  # type: ignore[attr-defined]

    def select(timeout: float | None = None) -> Any:
        try:
            probe()
        except Exception as exc:  # as for a failed callback: reported, and no more probing
            _stop_probing(selector)
            loop.call_exception_handler({"message": "await points probe failed", "exception": exc})
        if ready:  # the probe canceled: the stop's callbacks run now, not after a timer
            timeout = 0
        return original(timeout)

    selector.select = select
    return selector


def _stop_probing(selector: Any) -> None:
    """The selector's own ``select`` again (a no-op if it already is)."""
    vars(selector).pop("select", None)


async def _run(scenario: Scenario, target: Target | None = None, kind: str = "token") -> Run:
    if scenario.prepare is not None:
        await scenario.prepare()
    files = scenario.files
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    cts = CancellationTokenSource()
    host = asyncio.ensure_future(scenario.start(cts))
    run = Run(outcome=RuntimeError("not run"), canceled_at=None)
    canceled = [0.0]

    def probe() -> None:
        if host.done() or run.canceled_at is not None:
            return
        now = sites_of(host, asyncio.all_tasks() - before, files)
        if target is None:
            run.sites |= now
        elif target(now):
            run.canceled_at = min(now)
            canceled[0] = time.perf_counter()
            if kind == "token":
                cts.cancel()
            else:
                host.cancel()

    # What exists now is not this run's: the collection below looks at the run's objects only
    # (a full one walked the whole heap, 0.1 s here and more late in the suite, at every run).
    gc.freeze()
    selector = _probe_between_iterations(loop, probe)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            try:
                run.outcome = await host
            except BaseException as exc:  # the outcome, whatever it is, is what gets checked
                run.outcome = exc
                if isinstance(exc, asyncio.CancelledError) and not host.cancelled():
                    run.outcome = RuntimeError(
                        f"CancelledError, but the task is not canceled: {exc!r}"
                    )
            if run.canceled_at is not None:
                run.latency = time.perf_counter() - canceled[0]
            _stop_probing(selector)
            for _ in range(3):  # let finished tasks go, then collect what is unreachable
                await asyncio.sleep(0)
            run.leftover_tasks = asyncio.all_tasks() - before
            gc.collect()
    finally:
        _stop_probing(selector)
        gc.unfreeze()
    run.resource_warnings = [
        str(warning.message)
        for warning in caught
        if issubclass(warning.category, ResourceWarning)
        and not str(warning.message).startswith(_AIOBOTOCORE_ADVICE)
    ]
    return run


async def discover(scenario: Scenario) -> set[Site]:
    """The sites one run without a cancel passes through (it must succeed)."""
    run = await _run(scenario)
    if not isinstance(run.outcome, LayerUploadResult):
        raise AssertionError(f"the scenario fails without a cancel: {run.outcome!r}")
    return run.sites


async def cancel_at(scenario: Scenario, target: Site, kind: str) -> Run:
    """Run ``scenario`` and cancel (``kind``: "token" or "native") when it reaches ``target``."""
    return await _run(scenario, lambda now: target in now, kind)


async def cancel_when(scenario: Scenario, target: Target, kind: str) -> Run:
    """Run ``scenario`` and cancel (``kind``) the first time ``target(sites)`` holds."""
    return await _run(scenario, target, kind)


async def sweep(
    scenario: Scenario,
    kind: str,
    check: Callable[[Run], Awaitable[list[str]]],
    *,
    every: int = 1,
    start: int = 0,
) -> tuple[dict[str, list[str]], list[Site], set[Site]]:
    """Cancel ``scenario`` at each site it passes through, one run per site.

    ``every``/``start``: only the sites ``start, start + every, ...`` of the sorted list
    (the test suite samples; the reliability tool sweeps them all). Returns the problems by
    site, the tried sites a run did not meet again, and all the sites.
    """
    sites = await discover(scenario)
    problems: dict[str, list[str]] = {}
    missed: list[Site] = []
    for site in sorted(sites)[start % every :: every]:
        run = await cancel_at(scenario, site, kind)
        if run.canceled_at is None:
            missed.append(site)
            continue
        found = await check(run)
        if found:
            problems[show(site)] = found
    return problems, missed, sites


async def check_stop(
    run: Run,
    kind: str,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    layer_path: Path | None,
    digest: str,
    resumed: UploadCheckpoint | None = None,
) -> list[str]:
    """What is wrong with how ``run`` stopped (nothing, for a clean stop).

    ``resumed``: the checkpoint the run resumed from; a stop before ECR answered anything
    may hand it back unchanged, even if it claims more than ECR holds (it was the caller's).
    """
    problems: list[str] = []
    outcome = run.outcome
    if kind == "native":
        if not isinstance(outcome, asyncio.CancelledError):
            problems.append(f"task.cancel() ended in {outcome!r}, not CancelledError")
    elif isinstance(outcome, OperationCanceledError):
        checkpoint = outcome.checkpoint
        handed_back = (
            resumed is not None
            and checkpoint is not None
            and (checkpoint.upload_id, checkpoint.bytes_committed)
            == (resumed.upload_id, resumed.bytes_committed)
        )
        if not handed_back:
            problems += await _check_checkpoint(checkpoint, ecr, client, repository, digest)
    elif not isinstance(outcome, LayerUploadResult):  # a late cancel may let it finish
        problems.append(f"a token cancel ended in {outcome!r}, not OperationCanceledError")
    if run.leftover_tasks:
        problems.append(f"tasks left behind: {run.leftover_tasks}")
    if layer_path is not None and open_fds_of(layer_path):
        problems.append(f"{layer_path} left open")
    if run.resource_warnings:
        problems.append(f"ResourceWarnings: {run.resource_warnings}")
    return problems


async def _check_checkpoint(
    checkpoint: UploadCheckpoint | None,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    digest: str,
) -> list[str]:
    if checkpoint is None:
        return []  # stopped before InitiateLayerUpload answered (the caller checks when)
    await ecr.wait_idle_async()
    held = ecr.upload(checkpoint.upload_id)
    if held is not None:
        # ECR may hold more: a part whose answer the cancel cut off was applied (a resume
        # re-aligns past it). Never less, and only whole parts.
        boundaries = {0, *(sum(held.part_sizes[:n]) for n in range(1, len(held.part_sizes) + 1))}
        if checkpoint.bytes_committed > held.bytes_received:
            return [f"the checkpoint says {checkpoint.bytes_committed} bytes, ECR holds {held}"]
        if checkpoint.bytes_committed not in boundaries:
            return [f"the checkpoint ({checkpoint.bytes_committed}) is not at a part boundary"]
        return []
    # Gone: the CompleteLayerUpload the cancel cut off was applied; then ECR has the layer.
    answer = await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(repository_name=repository, layer_digests=(digest,))
    )
    if digest not in answer.available_digests():
        return [f"the checkpoint's upload {checkpoint.upload_id} is gone and the layer is not in"]
    return []


# -- the scenarios the tests and the reliability tool sweep ------------------------------------

MIB = 1024 * 1024
PART = 5 * MIB
HERE = frozenset({__file__})  # on_progress below: its frames count in a site


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


def in_on_progress(sites: set[Site]) -> bool:
    return any(site[0] == "host" and "on_progress" in site[-1] for site in sites)
