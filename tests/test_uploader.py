"""LayerUploader end to end: real HTTP through aiobotocore to the local ECR endpoint.

Every upload goes through the strict, fault-injecting proxy of ``ecrstream.local`` to moto;
nothing is mocked. The proxy's records are the witness: every successful upload is checked
with ``assert_layer_uploaded`` (the layer is in the repository under the sha256 of the source,
and the parts the server accepted are, in order, exactly the source's bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiobotocore.session
import anyio
import pytest
from aiobotocore.config import AioConfig

from ecrstream import (
    BatchCheckLayerAvailabilityRequest,
    CancellationTokenSource,
    EcrClient,
    EmptyUploadError,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    UploadCheckpoint,
)
from ecrstream.local import LocalEcr, Operation

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


def sha256_digest(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
        return sha256_digest(self.data)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


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


def assert_parts_are_source(ecr: LocalEcr, upload_id: str, source: bytes | Path) -> None:
    """The parts ECR accepted for ``upload_id`` are, in order, exactly the source's bytes."""
    parts = ecr.accepted_parts(upload_id)
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    assert parts, f"no part of upload {upload_id} was accepted"
    offset = 0
    with contextlib.ExitStack() as stack:
        file = None if isinstance(source, bytes) else stack.enter_context(source.open("rb"))
        for part in parts:
            assert part.part_first_byte == offset, f"part {part} does not start at byte {offset}"
            assert part.part_last_byte is not None
            length = part.part_last_byte - part.part_first_byte + 1
            assert part.blob_length == length, f"part {part} has a byte range of {length} bytes"
            if file is None:
                assert isinstance(source, bytes)
                expected = source[offset : offset + length]
            else:
                file.seek(offset)
                expected = file.read(length)
            assert part.blob_sha256 == hashlib.sha256(expected).hexdigest(), (
                f"part {part} is not bytes {offset}..{offset + length - 1} of the source"
            )
            offset += length
    assert offset == size, f"the accepted parts hold {offset} bytes, the source {size}"


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
) -> None:
    """The invariant of every successful upload (see the module docstring)."""
    if isinstance(source, bytes):
        size, digest = len(source), sha256_digest(source)
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
    assert result.part_count == len(ecr.accepted_parts(result.upload_id))
    completes = [r for r in ecr.requests(COMPLETE) if r.upload_id == result.upload_id]
    assert completes, "CompleteLayerUpload was never called"
    assert all(r.layer_digests == (digest,) for r in completes)
    if not result.already_existed:
        assert any(r.status == 200 for r in completes)


# -- clients, tasks, files ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_client(ecr: LocalEcr, **config: Any) -> AsyncIterator[EcrClient]:
    """An EcrClient on the proxy; botocore retries off unless ``config`` says otherwise."""
    config.setdefault("retries", NO_BOTOCORE_RETRIES)
    session = aiobotocore.session.get_session()
    async with session.create_client(
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


def open_fds_of(path: Path) -> list[str]:
    """File descriptors of this process open on ``path`` (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
    return found


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


async def cancel_when(
    upload: Awaitable[LayerUploadResult],
    cts: CancellationTokenSource,
    ready: Callable[[], Awaitable[None]],
) -> Canceled:
    """Run ``upload``; once ``ready()`` returns, cancel ``cts``; the upload must stop."""
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(upload)
    with anyio.fail_after(20):
        await ready()
    assert not task.done(), "the upload finished before it could be canceled"
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
