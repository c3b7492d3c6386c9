"""Part buffers: sized to the layer, reused across an uploader's uploads, bounded by uploads in
flight, dropped after a failure; and the uploads that use them send the same parts as ever.

The pool's counters (``allocated``, ``in_use``, ``most_in_use``, ``held``) are what the tests
read: no timing. Uploads run against the local ECR endpoint; the parts it accepted are checked
against the source's bytes.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from helpers import assert_parts_are_source, digest_of, random_bytes

import ecrstream.lowlevel
from ecrstream import DigestMismatchError, EcrClient, LayerUploader, OperationCanceledError
from ecrstream.buffers import PartBufferPool, PartBuffers, body_size_for
from ecrstream.cancellation import CancellationTokenSource
from ecrstream.errors import EcrConnectionError
from ecrstream.local import FaultKind, LocalEcr, Operation
from ecrstream.lowlevel import PartBufferPool as ExportedPool
from ecrstream.models import UploadProgress
from ecrstream.retry import RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KIB = 1024
MIB = 1024 * KIB
ULP = Operation.UPLOAD_LAYER_PART


@pytest.fixture
async def client(ecr: LocalEcr) -> AsyncIterator[EcrClient]:
    async with EcrClient.create(
        **ecr.client_kwargs(), retry=RetryPolicy(max_attempts=3, base_delay=0.01)
    ) as ecr_client:
        yield ecr_client


def write(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random_bytes(size, seed))
    return path


# -- the pool alone ---------------------------------------------------------------------------


async def test_a_set_is_sized_to_the_layer_and_never_below_it_or_above_a_part() -> None:
    pool = PartBufferPool()
    cases = [
        (5 * MIB, None, 5 * MIB),  # a stream: a whole part
        (5 * MIB, 20 * MIB, 5 * MIB),  # larger than a part: a part
        (5 * MIB, 5 * MIB, 5 * MIB),
        (5 * MIB, 100 * KIB, 128 * KIB),  # smaller: the next power of two
        (5 * MIB, 1, 64 * KIB),  # at least 64 KiB
        (5 * MIB, 3 * MIB + 1, 4 * MIB),
        (6 * MIB, 5 * MIB, 6 * MIB),  # the power of two (8 MiB) would pass the part
    ]
    for part_size, layer_size, capacity in cases:
        buffers = await pool.acquire(part_size, layer_size)
        assert buffers.capacity == capacity, (part_size, layer_size)
        assert len(buffers.read) == capacity
        assert all(len(body) >= body_size_for(capacity) for body in buffers.bodies)
        pool.discard(buffers)
    assert (pool.allocated, pool.in_use, pool.held) == (len(cases), 0, 0)


async def test_sets_are_made_in_a_worker_thread_not_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made_on: list[int] = []
    allocate = PartBuffers.allocate

    def recording(capacity: int, bodies: int) -> PartBuffers:
        made_on.append(threading.get_ident())
        return allocate(capacity, bodies)

    monkeypatch.setattr(PartBuffers, "allocate", recording)
    pool = PartBufferPool()
    buffers = await pool.acquire(5 * MIB, 10 * MIB)
    assert buffers.capacity == 5 * MIB
    assert len(made_on) == 1
    assert made_on[0] != threading.get_ident()
    pool.release(buffers)


async def test_released_sets_are_reused_smallest_fitting_first_and_the_count_stays_bounded() -> (
    None
):
    pool = PartBufferPool()
    big = await pool.acquire(5 * MIB, None)
    small = await pool.acquire(5 * MIB, 100 * KIB)
    pool.release(big)
    pool.release(small)
    assert pool.free_capacities == [128 * KIB, 5 * MIB]
    # A small layer takes the small set, a large one the large set: nothing new is made
    again_small = await pool.acquire(5 * MIB, 90 * KIB)
    again_big = await pool.acquire(5 * MIB, 7 * MIB)
    assert (again_small, again_big) == (small, big)
    assert pool.allocated == 2
    pool.release(again_small)
    pool.release(again_big)
    # Nothing free fits (a larger part size): the largest free set that does not fit is
    # dropped for the new one, so the pool holds no more sets than were ever in use at once.
    larger = await pool.acquire(10 * MIB, None)
    assert larger.capacity == 10 * MIB
    assert pool.allocated == 3
    assert pool.held == 2 == pool.most_in_use
    pool.release(larger)
    pool.clear()
    assert (pool.held, pool.in_use, pool.free_capacities) == (0, 0, [])


async def test_a_cancel_during_allocation_still_hands_the_set_over() -> None:
    pool = PartBufferPool()
    got: list[PartBuffers] = []
    with anyio.CancelScope() as scope:
        scope.cancel()  # already cancelled when acquire starts allocating
        got.append(await pool.acquire(5 * MIB, None))
        await anyio.lowlevel.checkpoint()  # the cancel arrives here, with the set in hand
    assert scope.cancelled_caught
    assert len(got) == 1
    assert pool.in_use == 1
    pool.release(got[0])
    assert pool.free_capacities == [5 * MIB]


async def test_a_layer_of_one_part_gets_one_body_and_a_longer_layer_adds_the_second() -> None:
    pool = PartBufferPool()
    one_part = await pool.acquire(5 * MIB, 5 * MIB)
    assert len(one_part.bodies) == 1
    pool.release(one_part)
    longer = await pool.acquire(5 * MIB, 5 * MIB + 1)
    assert longer is one_part  # the same set, grown by one body
    assert len(longer.bodies) == 2
    assert pool.allocated == 1
    pool.release(longer)
    again = await pool.acquire(5 * MIB, 4 * MIB)
    assert len(again.bodies) == 2  # kept: bodies are never taken away
    pool.release(again)


def test_the_pool_is_exported_in_the_second_tier() -> None:
    assert ExportedPool is PartBufferPool
    assert "PartBufferPool" in ecrstream.lowlevel.__all__


# -- uploads that share it --------------------------------------------------------------------


async def test_an_uploaders_uploads_reuse_one_set_and_send_the_same_parts(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    uploader = LayerUploader(client, repository, part_size=5 * MIB, buffer_pool=pool)
    sizes = [11 * MIB + 5, 3 * MIB, 300 * KIB, 7]
    results = []
    for n, size in enumerate(sizes):
        path = write(tmp_path / f"layer-{n}", size, n)
        result = await uploader.upload_file(path)
        results.append(result)
        assert result.digest == digest_of(path.read_bytes())
        assert_parts_are_source(ecr, str(result.upload_id), path)
    # Largest first: the first upload's 5 MiB set serves every later one
    assert pool.allocated == 1
    assert (pool.in_use, pool.most_in_use, pool.free_capacities) == (0, 1, [5 * MIB])
    first_parts = ecr.accepted_parts(str(results[0].upload_id))
    assert [record.blob_length for record in first_parts] == [5 * MIB, 5 * MIB, MIB + 5]


async def test_a_set_larger_than_a_part_still_gives_parts_of_the_part_size(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    path = write(tmp_path / "layer", 12 * MIB, 3)
    wide = LayerUploader(client, repository, part_size=10 * MIB, buffer_pool=pool)
    await wide.upload_file(path)
    narrow = LayerUploader(client, repository, part_size=5 * MIB, buffer_pool=pool)
    result = await narrow.upload_file(path, skip_existing=False)
    assert pool.allocated == 1  # the 10 MiB set was reused
    parts = ecr.accepted_parts(str(result.upload_id))
    assert [record.blob_length for record in parts] == [5 * MIB, 5 * MIB, 2 * MIB]
    assert_parts_are_source(ecr, str(result.upload_id), path)


async def test_an_upload_that_fails_mid_layer_drops_its_set_and_the_next_makes_a_new_one(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    uploader = LayerUploader(
        client,
        repository,
        part_size=5 * MIB,
        max_attempts=2,
        retry_base_delay=0.01,
        buffer_pool=pool,
    )
    path = write(tmp_path / "layer", 11 * MIB, 4)
    # Every attempt at the second part is cut off mid-body: a request may still have been
    # sending from a body when the upload gave up, so that set is never handed out again.
    ecr.faults.add(ULP, FaultKind.RESET, call=2, times=None, reset_after_bytes=MIB)
    with pytest.raises(EcrConnectionError):
        await uploader.upload_file(path)
    assert (pool.allocated, pool.in_use, pool.held) == (1, 0, 0)
    ecr.faults.clear()
    result = await uploader.upload_file(path)
    assert_parts_are_source(ecr, str(result.upload_id), path)
    assert (pool.allocated, pool.in_use, pool.held) == (2, 0, 1)


async def test_a_layer_read_and_answered_to_its_end_gives_its_set_back_even_if_it_fails_then(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    uploader = LayerUploader(client, repository, part_size=5 * MIB, buffer_pool=pool)
    path = write(tmp_path / "layer", 6 * MIB, 4)
    with pytest.raises(DigestMismatchError):
        # Every part was sent and answered before the digest was compared: nothing sends
        # from the bodies any more, so the set is reused.
        await uploader.upload_file(
            path, expected_digest=digest_of(b"something else"), check_existing=False
        )
    assert (pool.allocated, pool.in_use, pool.held) == (1, 0, 1)
    await uploader.upload_file(path)
    assert pool.allocated == 1


async def test_a_canceled_upload_gives_its_set_up_and_leaves_nothing_in_use(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    uploader = LayerUploader(client, repository, part_size=5 * MIB, buffer_pool=pool)
    path = write(tmp_path / "layer", 16 * MIB, 5)
    source = CancellationTokenSource()

    def stop_after_first_part(progress: UploadProgress) -> None:
        source.cancel()

    with pytest.raises(OperationCanceledError):
        await uploader.upload_file(
            path, cancellation_token=source.token, on_progress=stop_after_first_part
        )
    assert (pool.allocated, pool.in_use, pool.held) == (1, 0, 0)
    assert len(ecr.requests(ULP)) < 4  # stopped before the end


async def test_concurrent_uploads_of_one_uploader_hold_one_set_each(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    pool = PartBufferPool()
    uploader = LayerUploader(client, repository, part_size=5 * MIB, buffer_pool=pool)
    paths = [write(tmp_path / f"layer-{n}", 6 * MIB + n, 10 + n) for n in range(6)]
    all_started = anyio.Event()
    started = 0

    async def one(path: Path) -> None:
        nonlocal started

        async def hold(progress: UploadProgress) -> None:
            # Every upload holds its set until three are past their first part
            nonlocal started
            if progress.parts_sent == 1:
                started += 1
                if started == 3:
                    all_started.set()
                await all_started.wait()

        result = await uploader.upload_file(path, on_progress=hold)
        assert_parts_are_source(ecr, str(result.upload_id), path)

    with anyio.fail_after(30):
        for batch in (paths[:3], paths[3:]):
            async with anyio.create_task_group() as group:
                for path in batch:
                    group.start_soon(one, path)
    # Three at once, twice: three sets made, reused by the second three
    assert (pool.most_in_use, pool.allocated, pool.in_use, pool.held) == (3, 3, 0, 3)
