"""LayerUploader end to end: real HTTP through aiobotocore to the local ECR endpoint.

Every upload goes through the strict, fault-injecting proxy of ``ecrstream.local`` to moto;
nothing is mocked. The proxy's records are the witness: every successful upload is checked
with ``assert_layer_uploaded`` (the layer is in the repository under the sha256 of the source,
and the parts the server accepted are, in order, exactly the source's bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiobotocore.session
import anyio
import pytest
from aiobotocore.config import AioConfig
from helpers import assert_parts_are_source, digest_of, open_fds_of, random_bytes

from ecrstream import (
    BatchCheckLayerAvailabilityRequest,
    CancellationTokenSource,
    DigestMismatchError,
    EcrClient,
    EmptyUploadError,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    ServerError,
    SourceChangedError,
    ThrottlingError,
    UploadCheckpoint,
    UploadNotFoundError,
    UploadProgress,
)
from ecrstream.errors import EcrConnectionError
from ecrstream.local import FaultKind, LocalEcr, Operation

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MIB = 1024 * 1024
PART = 5 * MIB
INITIATE = Operation.INITIATE_LAYER_UPLOAD
PART_OP = Operation.UPLOAD_LAYER_PART
COMPLETE = Operation.COMPLETE_LAYER_UPLOAD
CHECK = Operation.BATCH_CHECK_LAYER_AVAILABILITY
# One request per call: the uploader's retries are the only ones (and the records count them).
NO_BOTOCORE_RETRIES: dict[str, Any] = {"total_max_attempts": 1, "mode": "standard"}
FAST_RETRY = 0.001  # retry_base_delay that keeps fault tests fast
CANCEL_LATENCY = 1.0  # seconds from cancel() to the error, at most


# -- layers and the invariant every success must satisfy ----------------------------------------


@dataclass(frozen=True)
class LayerFile:
    """A layer on disk and its bytes (kept to check what the server received)."""

    path: Path
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def digest(self) -> str:
        return digest_of(self.data)


@pytest.fixture
def make_layer(tmp_path: Path) -> Callable[..., LayerFile]:
    """Write ``size`` random bytes to a file of their own; returns the file and its bytes."""
    counter = iter(range(1_000_000))

    def make(size: int, *, seed: int = 0) -> LayerFile:
        data = random_bytes(size, seed)
        path = tmp_path / f"layer-{next(counter)}-{size}.bin"
        path.write_bytes(data)
        return LayerFile(path, data)

    return make


def records_since(ecr: LocalEcr, sequence: int, operation: str | None = None) -> list[Any]:
    return [r for r in ecr.requests(operation) if r.sequence > sequence]


def last_sequence(ecr: LocalEcr) -> int:
    records = ecr.requests()
    return records[-1].sequence if records else 0


def file_size_and_digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(8 * MIB):
            sha.update(chunk)
    return path.stat().st_size, "sha256:" + sha.hexdigest()


async def assert_layer_uploaded(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    result: LayerUploadResult,
    source: bytes | Path,
    *,
    since: int = 0,
) -> None:
    """The invariant of every successful upload (see the module docstring).

    ``since``: the last record before this call (a resumed upload counts parts from there).
    """
    if isinstance(source, bytes):
        size, digest = len(source), digest_of(source)
    else:
        size, digest = await anyio.to_thread.run_sync(file_size_and_digest, source)
    assert result.digest == digest
    assert result.size == size
    answer = await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(repository_name=repository, layer_digests=(digest,))
    )
    assert answer.failures == ()
    assert [(layer.layer_digest, layer.available, layer.layer_size) for layer in answer.layers] == [
        (digest, True, size)
    ]
    if result.upload_id is None:  # skipped: the layer was there already
        assert result.already_existed
        return
    assert_parts_are_source(ecr, result.upload_id, source)
    assert result.part_count == len(
        [r for r in ecr.accepted_parts(result.upload_id) if r.sequence > since]
    )
    completes = [r for r in ecr.requests(COMPLETE) if r.upload_id == result.upload_id]
    assert completes, "CompleteLayerUpload was never called"
    assert all(r.layer_digests == (digest,) for r in completes)
    if not result.already_existed:
        assert any(r.accepted for r in completes)  # 200, or applied and the answer lost


# -- clients, tasks, files ----------------------------------------------------------------------


# One session for the module: it loads ECR's service model once, not once per test.
SESSION = aiobotocore.session.get_session()


@contextlib.asynccontextmanager
async def open_client(ecr: LocalEcr, **config: Any) -> AsyncIterator[EcrClient]:
    """An EcrClient on the proxy; botocore retries off unless ``config`` says otherwise."""
    config.setdefault("retries", NO_BOTOCORE_RETRIES)
    async with SESSION.create_client(
        "ecr", config=AioConfig(**config), **ecr.client_kwargs()
    ) as client:
        yield EcrClient(client)


@pytest.fixture
async def client(ecr: LocalEcr) -> AsyncIterator[EcrClient]:
    async with open_client(ecr) as ecr_client:
        yield ecr_client


@pytest.fixture(autouse=True)
async def no_leftover_tasks(anyio_backend: str) -> AsyncIterator[None]:
    """No test leaves a task behind (checked after every fixture has been torn down too)."""
    before = running_tasks()
    yield
    assert running_tasks() - before == set()


@pytest.fixture(autouse=True)
def forget_open_uploads(ecr: LocalEcr) -> Iterator[None]:
    """Free the bytes moto keeps for uploads a test left open (moto lives for the session)."""
    yield
    for upload_id in {r.upload_id for r in ecr.requests() if r.upload_id is not None}:
        ecr.forget_upload(upload_id)


def running_tasks() -> set[asyncio.Task[Any]]:
    """The loop's tasks but the ones anyio's pytest plugin wraps each fixture and test in."""
    return {
        task
        for task in asyncio.all_tasks()
        if task.get_coro().__qualname__ != "TestRunner._call_in_runner_task"  # type: ignore[union-attr]
    }


@dataclass
class Canceled:
    """What a token-canceled upload left: the error, how long it took, and the tasks."""

    error: OperationCanceledError
    latency: float
    leftover_tasks: set[asyncio.Task[Any]]

    @property
    def checkpoint(self) -> UploadCheckpoint:
        assert isinstance(self.error.checkpoint, UploadCheckpoint)
        return self.error.checkpoint


async def until_ready(task: asyncio.Future[Any], ready: Callable[[], Awaitable[None]]) -> None:
    """Wait for ``ready()``; fail, with the upload's own outcome, if the upload ends first."""
    waiter = asyncio.ensure_future(ready())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done and not task.done():
        waiter.result()
        return
    for future in (task, waiter):
        future.cancel()
    outcomes = await asyncio.gather(task, waiter, return_exceptions=True)
    pytest.fail(f"the upload was not stopped where the test wanted it: {outcomes[0]!r}")


async def cancel_when(
    upload: Awaitable[LayerUploadResult],
    cts: CancellationTokenSource,
    ready: Callable[[], Awaitable[None]],
) -> Canceled:
    """Run ``upload``; once ``ready()`` returns, cancel ``cts``; the upload must stop."""
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(upload)
    await until_ready(task, ready)
    canceled_at = time.monotonic()
    cts.cancel()
    with pytest.raises(OperationCanceledError) as caught:
        await task
    latency = time.monotonic() - canceled_at
    leftover = asyncio.all_tasks() - before
    assert caught.value.cancellation_token == cts.token
    return Canceled(caught.value, latency, leftover)


def assert_clean_stop(ecr: LocalEcr, canceled: Canceled, layer: LayerFile | None) -> None:
    """Fast, nothing left behind, and a checkpoint the server really holds."""
    assert canceled.latency < CANCEL_LATENCY
    assert canceled.leftover_tasks == set()
    if layer is not None:
        assert open_fds_of(layer.path) == []
    checkpoint = canceled.checkpoint
    held = ecr.upload(checkpoint.upload_id)
    assert held is not None
    assert checkpoint.bytes_committed == held.bytes_received
    boundaries = {0} | {
        r.part_last_byte + 1 for r in ecr.accepted_parts(checkpoint.upload_id) if r.part_last_byte
    }
    assert checkpoint.bytes_committed in boundaries


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """``data`` as chunks of the given sizes (cycled), as one bytes object each."""
    offset, index = 0, 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        index += 1


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [1, PART - 1, PART, PART + 1, 4 * PART + 12_345],
    ids=["1-byte", "part-1", "part", "part+1", "5-parts"],
)
async def test_upload_file_sizes(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    size: int,
) -> None:
    layer = make_layer(size, seed=size)
    uploader = LayerUploader(client, repository, part_size=PART)

    result = await uploader.upload_file(layer.path)

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert result.part_count == -(-size // PART)
    assert (result.already_existed, result.restarted) == (False, 0)
    assert [r.blob_length for r in ecr.accepted_parts(result.upload_id or "")] == [
        min(PART, size - offset) for offset in range(0, size, PART)
    ]
    assert [r.operation for r in ecr.requests()][:2] == [INITIATE, PART_OP]
    assert len(ecr.requests(INITIATE)) == 1


async def test_upload_stream_of_uneven_chunks(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    data = random_bytes(3 * PART + 777_777, seed=7)
    # 1 byte to several MiB, straddling every part boundary in different ways
    sizes = [1, 3 * MIB + 5, 17, 1, 4 * MIB, 65_536, 7 * MIB + 1, 2, 999_999, 1]
    uploader = LayerUploader(client, repository, part_size=PART)

    result = await uploader.upload_stream(chunked(data, sizes))

    await assert_layer_uploaded(ecr, client, repository, result, data)
    assert [r.blob_length for r in ecr.accepted_parts(result.upload_id or "")] == [
        PART,
        PART,
        PART,
        777_777,
    ]


async def test_upload_stream_of_many_tiny_chunks_and_bytes_likes(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    data = random_bytes(PART + 40_000, seed=8)

    async def chunks() -> AsyncIterator[bytes | bytearray | memoryview]:
        yield memoryview(data)[: PART - 20_000]
        for index in range(PART - 20_000, len(data) - 10_000, 1000):
            yield bytearray(data[index : index + 1000])
        for index in range(len(data) - 10_000, len(data)):
            yield data[index : index + 1]
        yield b""

    result = await LayerUploader(client, repository, part_size=PART).upload_stream(chunks())

    await assert_layer_uploaded(ecr, client, repository, result, data)


@pytest.mark.parametrize("size", [1, PART], ids=["1-byte", "part"])
async def test_upload_stream_small_and_exact(
    ecr: LocalEcr, client: EcrClient, repository: str, size: int
) -> None:
    data = random_bytes(size, seed=9)
    result = await LayerUploader(client, repository, part_size=PART).upload_stream(
        chunked(data, [PART])
    )
    await assert_layer_uploaded(ecr, client, repository, result, data)
    assert result.part_count == 1


async def test_part_size_none_follows_the_part_size_initiate_returns(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    ecr.part_size = 6 * MIB
    layer = make_layer(13 * MIB, seed=3)

    result = await LayerUploader(client, repository).upload_file(layer.path)

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    sizes = [r.blob_length for r in ecr.accepted_parts(result.upload_id or "")]
    assert sizes == [6 * MIB, 6 * MIB, MIB]


async def test_part_size_none_keeps_a_returned_part_size_within_ecr_bounds(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    ecr.part_size = MIB  # under ECR's 5 MiB minimum: the uploader must not follow it down
    layer = make_layer(PART + 10, seed=4)

    result = await LayerUploader(client, repository).upload_file(layer.path)

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert [r.blob_length for r in ecr.accepted_parts(result.upload_id or "")] == [PART, 10]


@pytest.mark.parametrize("part_size", [0, PART - 1, 20_971_521, -PART, True, 5.5 * MIB, "5242880"])
async def test_invalid_part_size_is_refused_before_any_request(
    ecr: LocalEcr, client: EcrClient, repository: str, part_size: Any
) -> None:
    with pytest.raises(ValueError, match="part_size"):
        LayerUploader(client, repository, part_size=part_size)
    assert ecr.requests() == []


@pytest.mark.parametrize("part_size", [PART, 20_971_520])
async def test_part_size_bounds_are_inclusive(
    client: EcrClient, repository: str, part_size: int
) -> None:
    assert LayerUploader(client, repository, part_size=part_size).part_size == part_size


async def test_empty_file_raises_before_initiate(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(0)
    with pytest.raises(EmptyUploadError):
        await LayerUploader(client, repository).upload_file(layer.path)
    assert ecr.requests() == []


async def test_empty_stream_raises_before_initiate(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        for chunk in (b"", b""):
            yield chunk

    with pytest.raises(EmptyUploadError):
        await LayerUploader(client, repository).upload_stream(nothing())
    assert ecr.requests() == []


# -- faults: every kind at the first, a middle and the last part --------------------------------

FAULT_LAYER_SIZE = 2 * PART + 1234  # three parts: calls 1, 2 and 3 of UploadLayerPart
TRANSIENT_KINDS = [
    FaultKind.HTTP_500,
    FaultKind.SERVER_EXCEPTION,
    FaultKind.THROTTLING,
    FaultKind.RESET,
    FaultKind.DELAY,
]


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize(
    "kind", [*TRANSIENT_KINDS, FaultKind.LOST_RESPONSE, FaultKind.UPLOAD_NOT_FOUND]
)
async def test_fault_on_a_part_is_survived(
    ecr: LocalEcr,
    repository: str,
    make_layer: Callable[..., LayerFile],
    kind: FaultKind,
    position: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = {"first": 1, "middle": 2, "last": 3}[position]
    layer = make_layer(FAULT_LAYER_SIZE, seed=call)
    # DELAY: the proxy sits on the part longer than the client's read timeout
    config = {"read_timeout": 1.5} if kind is FaultKind.DELAY else {}
    ecr.faults.add(PART_OP, kind, call=call, delay_seconds=30.0)

    async with open_client(ecr, **config) as client:
        uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)
        result = await uploader.upload_file(layer.path)
        await assert_layer_uploaded(ecr, client, repository, result, layer.data)

    await ecr.wait_idle_async()
    parts = ecr.requests(PART_OP)
    faulted = next(r for r in parts if r.fault is kind)
    assert faulted.call == call
    assert not faulted.accepted or kind is FaultKind.LOST_RESPONSE
    after = [r for r in parts if r.sequence > faulted.sequence]
    start = (call - 1) * PART
    if kind is FaultKind.UPLOAD_NOT_FOUND:
        # one fresh upload, from byte 0, and nothing more sent to the old one; logged
        assert result.restarted == 1
        assert [r.levelname for r in caplog.records if "started over" in r.getMessage()] == [
            "WARNING"
        ]
        initiated = [r.upload_id for r in ecr.requests(INITIATE)]
        assert len(initiated) == 2
        assert result.upload_id == initiated[1] != faulted.upload_id
        assert [r.upload_id for r in after] == [result.upload_id] * 3
        assert result.part_count == 3
        return
    assert result.restarted == 0
    assert len(ecr.requests(INITIATE)) == 1
    retry = after[0]
    # the same part again, the same bytes
    assert (retry.part_first_byte, retry.blob_sha256) == (
        start,
        hashlib.sha256(layer.data[start : start + PART]).hexdigest(),
    )
    assert len(parts) == 4
    if kind is FaultKind.LOST_RESPONSE:
        # applied, answer lost: the retry is refused and the uploader re-aligns past it
        assert faulted.status is None
        assert (retry.accepted, retry.error_code) == (False, "InvalidLayerPartException")
    else:
        assert retry.accepted
    assert result.part_count == 3


async def test_upload_not_found_twice_gives_up(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(FAULT_LAYER_SIZE, seed=11)
    ecr.faults.add(PART_OP, FaultKind.UPLOAD_NOT_FOUND, call=2, times=2)
    uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)
    with pytest.raises(UploadNotFoundError):
        await uploader.upload_file(layer.path)
    assert len(ecr.requests(INITIATE)) == 2  # one fresh upload, not more
    assert ecr.requests(COMPLETE) == []


async def test_upload_not_found_in_a_stream_is_raised(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    data = random_bytes(FAULT_LAYER_SIZE, seed=12)
    ecr.faults.add(PART_OP, FaultKind.UPLOAD_NOT_FOUND, call=2)
    uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)
    with pytest.raises(UploadNotFoundError):  # a stream cannot go back to byte 0
        await uploader.upload_stream(chunked(data, [MIB]))
    assert len(ecr.requests(INITIATE)) == 1
    assert ecr.requests(COMPLETE) == []


# A stream retries the same prepared body as a file does; what differs is going forward
# past bytes ECR already holds without rewinding the stream (LOST_RESPONSE).
@pytest.mark.parametrize("kind", [FaultKind.THROTTLING, FaultKind.RESET, FaultKind.LOST_RESPONSE])
async def test_fault_in_a_stream_is_survived(
    ecr: LocalEcr, repository: str, kind: FaultKind
) -> None:
    data = random_bytes(FAULT_LAYER_SIZE, seed=13)
    ecr.faults.add(PART_OP, kind, call=2)
    config = {"read_timeout": 1.5} if kind is FaultKind.DELAY else {}
    async with open_client(ecr, **config) as client:
        uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)
        result = await uploader.upload_stream(chunked(data, [3 * MIB + 1]))
        await assert_layer_uploaded(ecr, client, repository, result, data)
    assert len(ecr.requests(PART_OP)) == 4


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        (INITIATE, FaultKind.SERVER_EXCEPTION),
        (INITIATE, FaultKind.RESET),
        (COMPLETE, FaultKind.THROTTLING),
        (COMPLETE, FaultKind.LOST_RESPONSE),  # completed, answer lost: the retry finds it done
        (COMPLETE, FaultKind.HTTP_500),
        (CHECK, FaultKind.SERVER_EXCEPTION),
        (CHECK, FaultKind.THROTTLING),
    ],
)
async def test_fault_on_check_initiate_or_complete_is_survived(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    operation: str,
    kind: FaultKind,
) -> None:
    layer = make_layer(PART + 99, seed=14)
    ecr.faults.add(operation, kind)
    uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)

    result = await uploader.upload_file(layer.path, expected_digest=layer.digest)

    assert len(ecr.requests(operation)) == 2
    expected = [CHECK, INITIATE, PART_OP, PART_OP, COMPLETE]
    if (operation, kind) == (COMPLETE, FaultKind.LOST_RESPONSE):
        expected.append(CHECK)  # the retry finds no upload: was the layer completed?
    assert [r.operation for r in ecr.requests() if r.fault is None] == expected
    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert result.already_existed is False


# -- max_attempts: exactly that many requests, then the last error ------------------------------


@pytest.mark.parametrize("botocore_retries", ["off", "on"])
@pytest.mark.parametrize(
    ("operation", "earlier", "last", "error"),
    [
        (PART_OP, FaultKind.THROTTLING, FaultKind.SERVER_EXCEPTION, ServerError),
        (PART_OP, FaultKind.SERVER_EXCEPTION, FaultKind.THROTTLING, ThrottlingError),
        (PART_OP, FaultKind.HTTP_500, FaultKind.RESET, EcrConnectionError),
        (INITIATE, FaultKind.RESET, FaultKind.HTTP_500, ServerError),
        (COMPLETE, FaultKind.SERVER_EXCEPTION, FaultKind.THROTTLING, ThrottlingError),
    ],
)
async def test_max_attempts_counts_requests_and_raises_the_last_error(
    ecr: LocalEcr,
    repository: str,
    make_layer: Callable[..., LayerFile],
    operation: str,
    earlier: FaultKind,
    last: FaultKind,
    error: type[Exception],
    botocore_retries: str,
) -> None:
    layer = make_layer(2 * PART, seed=15)
    first_call = 2 if operation == PART_OP else 1  # a middle part: the first one goes through
    ecr.faults.add(operation, earlier, call=first_call, times=2)
    ecr.faults.add(operation, last, call=first_call + 2, times=None)
    # The uploader's retries are its own, whatever botocore's configuration says.
    config = {} if botocore_retries == "off" else {"retries": {"mode": "standard"}}
    async with open_client(ecr, **config) as client:
        uploader = LayerUploader(
            client, repository, part_size=PART, max_attempts=3, retry_base_delay=FAST_RETRY
        )
        with pytest.raises(error):
            await uploader.upload_file(layer.path)
    assert [r.fault for r in ecr.requests(operation)][-3:] == [earlier, earlier, last]
    assert len(ecr.requests(operation)) == first_call - 1 + 3
    if operation != COMPLETE:
        assert ecr.requests(COMPLETE) == []


# -- cancellation: before start, during a read, a request, a backoff, before complete ----------

CANCEL_LAYER_SIZE = 2 * PART + 4321  # three parts


async def test_cancel_before_start_sends_nothing(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(PART, seed=20)
    cts = CancellationTokenSource()
    cts.cancel()
    uploader = LayerUploader(client, repository)
    with pytest.raises(OperationCanceledError) as caught:
        await uploader.upload_file(layer.path, cancellation_token=cts.token)
    assert caught.value.checkpoint is None  # no upload was initiated: nothing to resume
    with pytest.raises(OperationCanceledError):
        await uploader.upload_stream(chunked(layer.data, [MIB]), cancellation_token=cts.token)
    assert ecr.requests() == []
    assert open_fds_of(layer.path) == []


async def test_cancel_during_initiate_has_no_checkpoint(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(PART, seed=21)
    ecr.faults.add(INITIATE, FaultKind.DELAY)
    cts = CancellationTokenSource()
    upload = LayerUploader(client, repository).upload_file(layer.path, cancellation_token=cts.token)
    canceled = await cancel_when(upload, cts, lambda: ecr.wait_for_delay_async(INITIATE))
    assert canceled.latency < CANCEL_LATENCY
    assert canceled.leftover_tasks == set()
    assert canceled.error.checkpoint is None
    await ecr.wait_idle_async()
    assert [r.accepted for r in ecr.requests()] == [False]


@dataclass
class Scenario:
    """An upload set up to be stopped at one point, and what ECR holds when it is."""

    uploader: LayerUploader
    start: Callable[[CancellationTokenSource], Awaitable[LayerUploadResult]]
    ready: Callable[[], Awaitable[None]]
    bytes_committed: int
    layer: LayerFile | None


def stop_scenario(
    where: str, ecr: LocalEcr, client: EcrClient, repository: str, layer: LayerFile
) -> Scenario:
    uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)

    def file_upload(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
        return uploader.upload_file(layer.path, cancellation_token=cts.token)

    if where == "request":  # part 2 sits in the proxy
        ecr.faults.add(PART_OP, FaultKind.DELAY, call=2)
        return Scenario(
            uploader, file_upload, lambda: ecr.wait_for_delay_async(PART_OP, call=2), PART, layer
        )
    if where == "backoff":  # part 2 failed; the retry waits up to 20 s
        uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=1000.0)
        ecr.faults.add(PART_OP, FaultKind.SERVER_EXCEPTION, call=2, times=None)

        async def failed_once() -> None:
            await ecr.wait_for_request_async(PART_OP, call=2)
            await ecr.wait_idle_async()  # its answer is recorded: the uploader has it

        return Scenario(uploader, file_upload, failed_once, PART, layer)
    if where == "complete":  # every part is in; CompleteLayerUpload sits in the proxy
        ecr.faults.add(COMPLETE, FaultKind.DELAY)
        return Scenario(
            uploader, file_upload, lambda: ecr.wait_for_delay_async(COMPLETE), layer.size, layer
        )
    assert where == "read"  # part 1 is in; the stream has not produced part 2 yet
    stalled, committed, never = anyio.Event(), anyio.Event(), anyio.Event()

    async def stalling_stream() -> AsyncIterator[bytes]:
        yield layer.data[:PART]
        stalled.set()
        await never.wait()
        yield layer.data[PART:]  # pragma: no cover - never reached

    def on_progress(progress: UploadProgress) -> None:
        committed.set()

    def stream_upload(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
        return uploader.upload_stream(
            stalling_stream(), cancellation_token=cts.token, on_progress=on_progress
        )

    async def reader_waits() -> None:
        await stalled.wait()
        await committed.wait()

    return Scenario(uploader, stream_upload, reader_waits, PART, None)


STOP_POINTS = ["read", "request", "backoff", "complete"]


@pytest.mark.parametrize("where", STOP_POINTS)
async def test_cancel_stops_fast_and_leaves_a_checkpoint_ecr_holds(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    where: str,
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=22)
    scenario = stop_scenario(where, ecr, client, repository, layer)
    cts = CancellationTokenSource()

    canceled = await cancel_when(scenario.start(cts), cts, scenario.ready)

    assert_clean_stop(ecr, canceled, scenario.layer)
    assert canceled.checkpoint.bytes_committed == scenario.bytes_committed
    assert canceled.checkpoint.repository_name == repository
    await ecr.wait_idle_async()
    assert ecr.requests(COMPLETE) == [] or [r.accepted for r in ecr.requests(COMPLETE)] == [False]
    upload = ecr.upload(canceled.checkpoint.upload_id)
    assert upload is not None
    assert upload.bytes_received == scenario.bytes_committed
    if where == "request":  # aborted in flight: the proxy never answered it
        assert [(r.status, r.accepted) for r in ecr.requests(PART_OP)][1:] == [(None, False)]
    if where == "backoff":
        failed = [r for r in ecr.requests(PART_OP) if r.call >= 2]
        assert failed
        assert not any(r.accepted for r in failed)


@pytest.mark.parametrize("where", STOP_POINTS)
async def test_outer_task_cancel_propagates_as_cancelled_error_after_clean_up(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    where: str,
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=23)
    scenario = stop_scenario(where, ecr, client, repository, layer)
    cts = CancellationTokenSource()  # never canceled: the task is
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(scenario.start(cts))
    await until_ready(task, scenario.ready)

    canceled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert time.monotonic() - canceled_at < CANCEL_LATENCY
    assert task.cancelled()
    assert asyncio.all_tasks() - before == set()
    assert open_fds_of(layer.path) == []
    await ecr.wait_idle_async()
    upload_id = ecr.requests(INITIATE)[0].upload_id
    assert upload_id is not None
    upload = ecr.upload(upload_id)
    assert upload is not None
    assert upload.bytes_received == scenario.bytes_committed


# -- resume ---------------------------------------------------------------------------------------


async def canceled_checkpoint(
    ecr: LocalEcr, client: EcrClient, repository: str, layer: LayerFile, where: str
) -> UploadCheckpoint:
    """Stop an upload of ``layer`` at ``where`` with a token; the checkpoint, faults cleared."""
    if where == "part-1":  # nothing committed yet
        ecr.faults.add(PART_OP, FaultKind.DELAY, call=1)
        uploader = LayerUploader(client, repository, part_size=PART)
        cts = CancellationTokenSource()
        canceled = await cancel_when(
            uploader.upload_file(layer.path, cancellation_token=cts.token),
            cts,
            lambda: ecr.wait_for_delay_async(PART_OP, call=1),
        )
    else:
        scenario = stop_scenario(where, ecr, client, repository, layer)
        cts = CancellationTokenSource()
        canceled = await cancel_when(scenario.start(cts), cts, scenario.ready)
    assert_clean_stop(ecr, canceled, layer)
    await ecr.wait_idle_async()
    ecr.faults.clear()
    return canceled.checkpoint


def assert_nothing_resent(ecr: LocalEcr, since: int, checkpoint: UploadCheckpoint) -> None:
    """After ``since``, no part below the checkpoint's bytes_committed went out again."""
    sent = records_since(ecr, since, PART_OP)
    assert all(
        r.part_first_byte is not None and r.part_first_byte >= checkpoint.bytes_committed
        for r in sent
    ), [(r.part_first_byte, r.part_last_byte) for r in sent]
    assert records_since(ecr, since, INITIATE) == []


@pytest.mark.parametrize("where", ["part-1", "request", "complete"])
async def test_resume_in_the_same_process(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    where: str,
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=24)
    checkpoint = await canceled_checkpoint(ecr, client, repository, layer, where)
    since = last_sequence(ecr)
    progress: list[UploadProgress] = []

    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        layer.path, resume=checkpoint, on_progress=progress.append
    )

    await assert_layer_uploaded(ecr, client, repository, result, layer.data, since=since)
    assert result.upload_id == checkpoint.upload_id
    assert result.restarted == 0
    assert_nothing_resent(ecr, since, checkpoint)
    assert [p.bytes_sent for p in progress] == [
        end for end in (PART, 2 * PART, layer.size) if end > checkpoint.bytes_committed
    ]


async def test_resume_from_a_serialized_checkpoint_with_a_new_client(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=25)
    saved = (await canceled_checkpoint(ecr, client, repository, layer, "backoff")).to_json()
    since = last_sequence(ecr)

    checkpoint = UploadCheckpoint.from_json(saved)
    async with open_client(ecr) as fresh_client:
        result = await LayerUploader(fresh_client, repository).upload_file(
            str(layer.path), resume=checkpoint
        )
        await assert_layer_uploaded(ecr, fresh_client, repository, result, layer.data, since=since)

    assert checkpoint.bytes_committed == PART
    assert result.upload_id == checkpoint.upload_id
    assert_nothing_resent(ecr, since, checkpoint)
    # the part size the upload began with, not the 10 MiB the endpoint would suggest
    assert [r.blob_length for r in records_since(ecr, since, PART_OP)] == [PART, 4321]


async def test_resume_in_another_process(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=26)
    checkpoint = await canceled_checkpoint(ecr, client, repository, layer, "request")
    since = last_sequence(ecr)

    answer = await run_child(ecr, repository, layer.path, checkpoint=checkpoint.to_json())

    result = LayerUploadResult(**answer["result"])
    await assert_layer_uploaded(ecr, client, repository, result, layer.data, since=since)
    assert result.upload_id == checkpoint.upload_id
    assert_nothing_resent(ecr, since, checkpoint)


async def test_resume_when_the_upload_is_gone_starts_over(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=27)
    checkpoint = await canceled_checkpoint(ecr, client, repository, layer, "request")
    assert ecr.forget_upload(checkpoint.upload_id)  # expired on ECR
    since = last_sequence(ecr)

    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        layer.path, resume=checkpoint
    )

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert result.restarted == 1
    assert result.upload_id != checkpoint.upload_id
    assert len(records_since(ecr, since, INITIATE)) == 1
    assert result.part_count == 3


@pytest.mark.parametrize("shift", [-PART, +PART], ids=["behind-ecr", "ahead-of-ecr"])
async def test_resume_from_a_stale_checkpoint_realigns_to_what_ecr_holds(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    shift: int,
) -> None:
    """InvalidLayerPart re-aligns both ways: skip bytes ECR has, re-read bytes it lacks."""
    layer = make_layer(3 * PART + 5, seed=28)
    checkpoint = await canceled_checkpoint(ecr, client, repository, layer, "request")
    assert checkpoint.bytes_committed == PART
    stale = dataclasses.replace(checkpoint, bytes_committed=PART + shift)
    since = last_sequence(ecr)

    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        layer.path, resume=stale
    )

    await assert_layer_uploaded(ecr, client, repository, result, layer.data, since=since)
    refused = [r for r in records_since(ecr, since, PART_OP) if not r.accepted]
    assert [(r.part_first_byte, r.error_code) for r in refused] == [
        (stale.bytes_committed, "InvalidLayerPartException")
    ]


CHILD = Path(__file__).with_name("uploader_child.py")


async def run_child(ecr: LocalEcr, repository: str, path: Path, **args: Any) -> dict[str, Any]:
    """Run one upload in another process (tests/uploader_child.py); its JSON answer."""
    request = {"client": dict(ecr.client_kwargs()), "repository": repository, "path": str(path)}
    process = await anyio.run_process(
        [sys.executable, str(CHILD), json.dumps({**request, **args})], check=False
    )
    assert process.returncode == 0, process.stderr.decode()
    answer: dict[str, Any] = json.loads(process.stdout)
    return answer


@pytest.mark.parametrize(
    "wrong",
    [
        "other-repository",
        "other-registry",
        "other-file",
        "file-changed-since",
        "past-the-end",
    ],
)
async def test_resume_with_a_checkpoint_of_something_else_is_refused_before_any_request(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    wrong: str,
) -> None:
    layer, other = make_layer(PART + 1, seed=29), make_layer(PART + 2, seed=30)
    info = layer.path.stat()
    checkpoint = UploadCheckpoint(
        repository_name=repository,
        registry_id=None,
        upload_id="01234567-89ab-cdef-0123-456789abcdef",
        bytes_committed=PART,
        part_size=PART,
        source_path=str(layer.path),
        source_size=info.st_size,
        source_mtime_ns=info.st_mtime_ns,
    )
    uploader = LayerUploader(client, repository, part_size=PART)
    path = layer.path
    if wrong == "other-repository":
        uploader = LayerUploader(client, repository + "-other", part_size=PART)
    elif wrong == "other-registry":
        checkpoint = dataclasses.replace(checkpoint, registry_id=ecr.registry_id)
    elif wrong == "other-file":
        path = other.path
    elif wrong == "file-changed-since":
        os.utime(layer.path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    else:
        checkpoint = dataclasses.replace(
            checkpoint, bytes_committed=layer.size + 1, source_size=None, source_mtime_ns=None
        )

    with pytest.raises(ValueError, match="resume"):
        await uploader.upload_file(path, resume=checkpoint)
    assert ecr.requests() == []


# -- skip existing, layers that exist, digests, changing files ----------------------------------


async def upload_once(client: EcrClient, repository: str, layer: LayerFile) -> LayerUploadResult:
    return await LayerUploader(client, repository, part_size=PART).upload_file(layer.path)


@pytest.mark.parametrize("source", ["file", "stream"])
async def test_skip_existing_layer_sends_no_part(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    source: str,
) -> None:
    layer = make_layer(PART + 3, seed=31)
    first = await upload_once(client, repository, layer)
    await assert_layer_uploaded(ecr, client, repository, first, layer.data)
    since = last_sequence(ecr)

    uploader = LayerUploader(client, repository, part_size=PART)
    if source == "file":
        result = await uploader.upload_file(layer.path, expected_digest=layer.digest)
    else:
        result = await uploader.upload_stream(
            chunked(layer.data, [MIB]), expected_digest=layer.digest
        )

    assert result == LayerUploadResult(
        digest=layer.digest, size=layer.size, upload_id=None, part_count=0, already_existed=True
    )
    assert [r.operation for r in records_since(ecr, since)] == [CHECK]
    await assert_layer_uploaded(ecr, client, repository, result, layer.data)


async def test_expected_digest_of_a_new_layer_uploads_it(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(PART + 4, seed=32)
    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        layer.path, expected_digest=layer.digest
    )
    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert result.already_existed is False
    assert [r.operation for r in ecr.requests()][:2] == [CHECK, INITIATE]


async def test_layer_already_exists_at_complete_counts_as_success(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(PART + 5, seed=33)
    await upload_once(client, repository, layer)
    since = last_sequence(ecr)

    result = await upload_once(client, repository, layer)  # no expected_digest: no check first

    assert result.already_existed is True
    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert [r.error_code for r in records_since(ecr, since, COMPLETE)] == [
        "LayerAlreadyExistsException"
    ]


@pytest.mark.parametrize("source", ["file", "stream"])
async def test_digest_mismatch_does_not_complete(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    source: str,
) -> None:
    layer = make_layer(2 * PART + 6, seed=34)
    wrong = digest_of(b"something else")
    uploader = LayerUploader(client, repository, part_size=PART)
    upload = (
        uploader.upload_file(layer.path, expected_digest=wrong)
        if source == "file"
        else uploader.upload_stream(chunked(layer.data, [MIB]), expected_digest=wrong)
    )

    with pytest.raises(DigestMismatchError) as caught:
        await upload

    assert (caught.value.expected, caught.value.actual) == (wrong, layer.digest)
    assert ecr.requests(COMPLETE) == []
    assert len(ecr.requests(PART_OP)) == 3


@pytest.mark.parametrize("change", ["grow", "shrink", "touch"])
async def test_source_changed_during_upload_does_not_complete(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    change: str,
) -> None:
    layer = make_layer(2 * PART + 7, seed=35)

    def modify(progress: UploadProgress) -> None:
        if progress.parts_sent != 1:
            return
        if change == "grow":
            with layer.path.open("ab") as file:
                file.write(b"more")
        elif change == "shrink":
            os.truncate(layer.path, PART // 2)
        else:  # same bytes, a new modification time
            info = layer.path.stat()
            os.utime(layer.path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))

    with pytest.raises(SourceChangedError):
        await LayerUploader(client, repository, part_size=PART).upload_file(
            layer.path, on_progress=modify
        )
    assert ecr.requests(COMPLETE) == []
    assert open_fds_of(layer.path) == []


# -- progress --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_on_progress_is_called_after_each_committed_part(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    kind: str,
) -> None:
    layer = make_layer(2 * PART + 8, seed=36)
    seen: list[tuple[UploadProgress, int]] = []

    def held_by_ecr() -> int:
        # records are complete before the client reads the answer: the part is in them
        upload_id = ecr.requests(INITIATE)[0].upload_id or ""
        return sum(r.blob_length or 0 for r in ecr.accepted_parts(upload_id))

    def plain(progress: UploadProgress) -> None:
        seen.append((progress, held_by_ecr()))

    async def asynchronous(progress: UploadProgress) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append((progress, held_by_ecr()))

    callback = plain if kind == "plain" else asynchronous
    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        layer.path, on_progress=callback
    )

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    assert seen == [
        (UploadProgress(bytes_sent=PART, total_bytes=layer.size, parts_sent=1), PART),
        (UploadProgress(bytes_sent=2 * PART, total_bytes=layer.size, parts_sent=2), 2 * PART),
        (UploadProgress(bytes_sent=layer.size, total_bytes=layer.size, parts_sent=3), layer.size),
    ]


async def test_on_progress_of_a_stream_has_no_total(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    data = random_bytes(PART + 9, seed=37)
    seen: list[UploadProgress] = []
    result = await LayerUploader(client, repository, part_size=PART).upload_stream(
        chunked(data, [MIB]), on_progress=seen.append
    )
    await assert_layer_uploaded(ecr, client, repository, result, data)
    assert seen == [UploadProgress(PART, None, 1), UploadProgress(PART + 9, None, 2)]


class ProgressRefused(Exception):
    pass


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_an_exception_in_on_progress_aborts_and_propagates(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    kind: str,
) -> None:
    layer = make_layer(2 * PART + 10, seed=38)

    def plain(progress: UploadProgress) -> None:
        raise ProgressRefused(progress.parts_sent)

    async def asynchronous(progress: UploadProgress) -> None:
        await anyio.lowlevel.checkpoint()
        raise ProgressRefused(progress.parts_sent)

    before = running_tasks()
    with pytest.raises(ProgressRefused, match=r"^1$"):
        await LayerUploader(client, repository, part_size=PART).upload_file(
            layer.path, on_progress=plain if kind == "plain" else asynchronous
        )
    assert running_tasks() - before == set()
    assert open_fds_of(layer.path) == []
    assert len(ecr.requests(PART_OP)) == 1
    assert ecr.requests(COMPLETE) == []


# -- pacing ----------------------------------------------------------------------------------------


async def test_max_bandwidth_holds_the_average_rate_under_the_limit(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    limit = 10 * MIB
    layer = make_layer(3 * PART, seed=39)
    progress: list[tuple[float, int]] = []
    uploader = LayerUploader(client, repository, part_size=PART, max_bandwidth=limit)

    started = time.monotonic()
    result = await uploader.upload_file(
        layer.path, on_progress=lambda p: progress.append((time.monotonic(), p.bytes_sent))
    )
    elapsed = time.monotonic() - started

    await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    # generous: the layer's bytes (the wire carries a third more, as base64) never run ahead
    # of the limit; and a limit this far under loopback speed does slow the upload down
    points = [(started, 0), *progress]
    for index, (at, sent) in enumerate(points):
        for earlier_at, earlier_sent in points[:index]:  # any window between two points
            assert sent - earlier_sent <= limit * (at - earlier_at) * 1.05 + 256 * 1024
    assert elapsed >= layer.size / limit * 0.9
    assert elapsed < 30


@pytest.mark.parametrize("value", [0, -1, float("nan"), "fast", True])
async def test_invalid_max_bandwidth_or_max_attempts_is_refused(
    ecr: LocalEcr, client: EcrClient, repository: str, value: Any
) -> None:
    if value is not True:
        with pytest.raises(ValueError, match="max_bandwidth"):
            LayerUploader(client, repository, max_bandwidth=value)
    if not isinstance(value, float):
        with pytest.raises(ValueError, match="max_attempts"):
            LayerUploader(client, repository, max_attempts=value)
    assert ecr.requests() == []


# -- ECR's 4,200 parts -------------------------------------------------------------------------


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        file.truncate(size)
    return path


async def test_a_layer_too_large_for_4200_parts_is_refused_before_any_request(
    ecr: LocalEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    path = sparse_file(tmp_path / "huge.bin", 4200 * 20_971_520 + 1)
    with pytest.raises(ValueError, match="4200"):
        await LayerUploader(client, repository).upload_file(path)
    assert ecr.requests() == []


async def test_a_layer_over_4200_parts_gets_larger_parts(
    ecr: LocalEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    path = sparse_file(tmp_path / "large.bin", 4200 * PART + 1)
    ecr.faults.add(PART_OP, FaultKind.DELAY)
    cts = CancellationTokenSource()
    canceled = await cancel_when(
        LayerUploader(client, repository, part_size=PART).upload_file(
            path, cancellation_token=cts.token
        ),
        cts,
        lambda: ecr.wait_for_delay_async(PART_OP),
    )
    await ecr.wait_idle_async()
    assert canceled.checkpoint.part_size == 6 * MIB
    assert [r.blob_length for r in ecr.requests(PART_OP)] == [6 * MIB]


# -- memory ----------------------------------------------------------------------------------------


def write_random_file(path: Path, size: int, seed: int) -> Path:
    generator = random.Random(seed)
    with path.open("wb") as file:
        for offset in range(0, size, 8 * MIB):
            file.write(generator.randbytes(min(8 * MIB, size - offset)))
    return path


@pytest.mark.timeout(120)
async def test_memory_stays_bounded_whatever_the_layer_size(
    ecr: LocalEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    """A 200 MiB upload in 10 MiB parts, measured in a process of its own.

    The endpoint (moto keeps every byte of an open upload) lives in this process; the
    uploader's process holds only its buffers. tracemalloc sees Python's allocations; the
    peak resident set also sees the page-aligned read buffer (an mmap) and C allocations.
    """
    part_size = 10 * MIB
    path = await anyio.to_thread.run_sync(write_random_file, tmp_path / "big.bin", 200 * MIB, 40)

    answer = await run_child(ecr, repository, path, part_size=part_size)

    result = LayerUploadResult(**answer["result"])
    await assert_layer_uploaded(ecr, client, repository, result, path)
    assert result.part_count == 20
    assert answer["traced_peak"] < 6 * part_size, answer
    assert answer["rss_growth"] < 6 * part_size, answer


# -- more ways to stop, and more ways to upload ---------------------------------------------------


async def test_delay_after_apply_past_the_read_timeout_on_the_last_part(
    ecr: LocalEcr, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    """Applied, then no answer in time: the retry is refused and the upload ends there."""
    layer = make_layer(FAULT_LAYER_SIZE, seed=50)
    ecr.faults.add(PART_OP, FaultKind.DELAY_AFTER_APPLY, call=3)
    async with open_client(ecr, read_timeout=1.5) as client:
        uploader = LayerUploader(client, repository, part_size=PART, retry_base_delay=FAST_RETRY)
        result = await uploader.upload_file(layer.path)
        await assert_layer_uploaded(ecr, client, repository, result, layer.data)
    await ecr.wait_idle_async()
    assert [(r.call, r.accepted, r.error_code) for r in ecr.requests(PART_OP)][2:] == [
        (3, True, None),
        (4, False, "InvalidLayerPartException"),
    ]


async def test_cancel_during_a_paced_request(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    """max_bandwidth holds the body back mid-request: the cancel still cuts it short."""
    layer = make_layer(PART + 11, seed=51)
    uploader = LayerUploader(client, repository, part_size=PART, max_bandwidth=MIB)
    cts = CancellationTokenSource()
    canceled = await cancel_when(
        uploader.upload_file(layer.path, cancellation_token=cts.token),
        cts,
        lambda: ecr.wait_for_request_async(PART_OP),
    )
    assert_clean_stop(ecr, canceled, layer)
    assert canceled.checkpoint.bytes_committed == 0
    await ecr.wait_idle_async()
    assert [r.accepted for r in ecr.requests(PART_OP)] == [False]


@pytest.mark.parametrize("how", ["from-on-progress", "from-another-thread"])
async def test_cancel_from_a_callback_or_another_thread(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    how: str,
) -> None:
    layer = make_layer(CANCEL_LAYER_SIZE, seed=52)
    cts = CancellationTokenSource()
    uploader = LayerUploader(client, repository, part_size=PART)
    if how == "from-on-progress":

        def on_progress(progress: UploadProgress) -> None:
            if progress.parts_sent == 2:
                cts.cancel()

        with pytest.raises(OperationCanceledError) as caught:
            await uploader.upload_file(
                layer.path, cancellation_token=cts.token, on_progress=on_progress
            )
        checkpoint = caught.value.checkpoint
        assert isinstance(checkpoint, UploadCheckpoint)
        assert checkpoint.bytes_committed == 2 * PART
    else:
        ecr.faults.add(PART_OP, FaultKind.DELAY, call=2)
        before = asyncio.all_tasks()
        task = asyncio.ensure_future(uploader.upload_file(layer.path, cancellation_token=cts.token))
        await until_ready(task, lambda: ecr.wait_for_delay_async(PART_OP, call=2))
        canceled_at = time.monotonic()
        await anyio.to_thread.run_sync(cts.cancel)
        with pytest.raises(OperationCanceledError) as caught:
            await task
        canceled = Canceled(
            caught.value, time.monotonic() - canceled_at, asyncio.all_tasks() - before
        )
        assert_clean_stop(ecr, canceled, layer)
        assert canceled.checkpoint.bytes_committed == PART
    await ecr.wait_idle_async()
    assert ecr.requests(COMPLETE) == []


async def test_one_uploader_runs_concurrent_uploads(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layers = [make_layer(PART + 1000 * n, seed=53 + n) for n in range(3)]
    uploader = LayerUploader(client, repository, part_size=PART)
    data = random_bytes(PART + 77, seed=60)

    results = await asyncio.gather(
        *(uploader.upload_file(layer.path) for layer in layers),
        uploader.upload_stream(chunked(data, [999_999])),
    )

    for result, source in zip(results, [*(layer.data for layer in layers), data], strict=True):
        await assert_layer_uploaded(ecr, client, repository, result, source)
    assert len({result.upload_id for result in results}) == 4


async def test_upload_a_section_of_a_file(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    archive = make_layer(3 * PART, seed=61)
    start, length = 12_345, PART + 1
    section = archive.data[start : start + length]

    result = await LayerUploader(client, repository, part_size=PART).upload_file(
        archive.path, offset=start, length=length
    )

    await assert_layer_uploaded(ecr, client, repository, result, section)


async def test_resume_with_a_checkpoint_of_another_section_is_refused(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    archive = make_layer(4 * PART, seed=62)
    ecr.faults.add(PART_OP, FaultKind.DELAY, call=2)
    uploader = LayerUploader(client, repository, part_size=PART)
    cts = CancellationTokenSource()
    canceled = await cancel_when(
        uploader.upload_file(archive.path, length=2 * PART, cancellation_token=cts.token),
        cts,
        lambda: ecr.wait_for_delay_async(PART_OP, call=2),
    )
    await ecr.wait_idle_async()
    ecr.faults.clear()
    since = last_sequence(ecr)

    with pytest.raises(ValueError, match="resume"):
        await uploader.upload_file(
            archive.path, offset=PART, length=2 * PART, resume=canceled.checkpoint
        )
    assert records_since(ecr, since) == []


class StreamBroke(Exception):
    pass


async def test_an_error_from_the_stream_propagates_without_completing(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    data = random_bytes(PART, seed=63)

    async def breaking() -> AsyncIterator[bytes]:
        yield data
        yield data
        raise StreamBroke

    before = running_tasks()
    with pytest.raises(StreamBroke):
        await LayerUploader(client, repository, part_size=PART).upload_stream(breaking())
    assert running_tasks() - before == set()
    assert ecr.requests(COMPLETE) == []


@pytest.mark.parametrize("chunks", [[b"abc"], b"abc", None])
async def test_upload_stream_wants_an_async_iterable(
    ecr: LocalEcr, client: EcrClient, repository: str, chunks: Any
) -> None:
    with pytest.raises(TypeError, match="async iterable"):
        await LayerUploader(client, repository).upload_stream(chunks)
    assert ecr.requests() == []


@pytest.mark.parametrize(
    ("fault", "gone"),
    [
        (FaultKind.DELAY_AFTER_APPLY, False),  # ECR completed it; the answer never came
        (FaultKind.DELAY, True),  # ECR never saw the complete, then expired the upload
    ],
    ids=["completed-before-the-cancel", "upload-expired"],
)
async def test_resume_after_a_cancel_during_complete(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    make_layer: Callable[..., LayerFile],
    fault: FaultKind,
    gone: bool,
) -> None:
    """A resume whose upload ECR no longer knows: done if ECR has the layer, else start over."""
    layer = make_layer(2 * PART + 9, seed=71)
    ecr.faults.add(COMPLETE, fault, call=1)
    uploader = LayerUploader(client, repository, part_size=PART)
    cts = CancellationTokenSource()
    canceled = await cancel_when(
        uploader.upload_file(layer.path, cancellation_token=cts.token),
        cts,
        lambda: ecr.wait_for_delay_async(COMPLETE, call=1),
    )
    checkpoint = canceled.checkpoint
    assert checkpoint.bytes_committed == len(layer.data)
    await ecr.wait_idle_async()
    ecr.faults.clear()
    if gone:
        assert ecr.forget_upload(checkpoint.upload_id)
    since = last_sequence(ecr)

    result = await uploader.upload_file(layer.path, resume=checkpoint)

    assert result.digest == digest_of(layer.data)
    assert result.restarted == (1 if gone else 0)
    if gone:
        await assert_layer_uploaded(ecr, client, repository, result, layer.data, since=since)
        assert len(records_since(ecr, since, INITIATE)) == 1
    else:
        assert records_since(ecr, since, PART_OP) == []
        assert records_since(ecr, since, INITIATE) == []
        check = await client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(repository, (result.digest,))
        )
        assert check.available_digests() == {result.digest}


async def test_a_resume_stopped_before_it_sends_hands_its_checkpoint_back(
    ecr: LocalEcr, client: EcrClient, repository: str, make_layer: Callable[..., LayerFile]
) -> None:
    layer = make_layer(2 * PART + 1, seed=72)
    checkpoint = await canceled_checkpoint(ecr, client, repository, layer, "request")
    since = last_sequence(ecr)
    uploader = LayerUploader(client, repository, part_size=PART)
    cts = CancellationTokenSource()
    cts.cancel()

    with pytest.raises(OperationCanceledError) as early:
        await uploader.upload_file(layer.path, resume=checkpoint, cancellation_token=cts.token)

    assert early.value.checkpoint == checkpoint
    assert records_since(ecr, since) == []
    # The same while the committed prefix is re-hashed (the first await of a resume).
    cts = CancellationTokenSource()
    task = asyncio.ensure_future(
        uploader.upload_file(layer.path, resume=checkpoint, cancellation_token=cts.token)
    )
    await asyncio.sleep(0)  # let it start: the cancel lands on its first await, wherever
    cts.cancel()
    with pytest.raises(OperationCanceledError) as during:
        await task
    assert during.value.checkpoint is not None
    assert during.value.checkpoint.upload_id == checkpoint.upload_id
    assert during.value.checkpoint.bytes_committed == checkpoint.bytes_committed
