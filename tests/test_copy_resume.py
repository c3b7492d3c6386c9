"""A resumed copy continues the blob in flight with a ranged GET at the byte ECR holds.

The source is the CNCF distribution registry behind the fault proxy (which records every
blob GET: its Range header and the body bytes it answered with), the destination the local
ECR endpoint. Each test stops a copy of a 25 MiB layer (10 MiB parts) once its first part is
committed, then resumes it, and reads the image back from the local ECR byte for byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from helpers import (
    assert_copied,
    assert_no_byte_sent_twice,
    last_sequence,
    parts_by_upload,
    repo_name,
)
from registry_fixtures import Fault, FaultProxy, RegistryServer, SeededImage, Seeder

from ecrstream.cancellation import CancellationTokenSource
from ecrstream.client import EcrClient
from ecrstream.copy import CopyCanceledError, copy_image
from ecrstream.errors import DigestMismatchError
from ecrstream.image import PushProgress
from ecrstream.local import LocalEcr
from ecrstream.models import (
    BatchCheckLayerAvailabilityRequest,
    InitiateLayerUploadRequest,
    UploadCheckpoint,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

MIB = 1024 * 1024
PART = 10 * MIB  # the part size the local ECR's InitiateLayerUpload returns, as ECR's
SIZE = 25 * MIB  # three parts: 10 + 10 + 5 MiB


async def stop_after_first_part(
    client: EcrClient, proxy: FaultProxy, image: SeededImage, repository: str
) -> CopyCanceledError:
    """Copy ``image`` through the proxy and cancel once its layer's first part is committed."""
    layer = image.layers[0]
    source = CancellationTokenSource()

    def cancel_after_first_part(event: PushProgress) -> None:
        if event.digest == layer and event.event == "progress":
            source.cancel()

    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            f"{proxy.host}/{image.repository}:v1",
            repository,
            tags=["v1"],
            plain_http=True,
            max_concurrent_layers=1,  # the layer alone: the config waits for the resume
            cancellation_token=source.token,
            on_progress=cancel_after_first_part,
        )
    stopped = caught.value
    assert stopped.checkpoints[layer].bytes_committed == PART
    return stopped


@dataclass
class Stopped:
    """A copy of a one-layer image stopped once its layer's first part was committed."""

    image: SeededImage
    layer: str
    error: CopyCanceledError
    checkpoint: UploadCheckpoint
    first_run: int
    """Bytes of the layer the stopped copy downloaded."""
    mark: int
    """The sequence of ECR's last record at the stop: the resume's records come after."""


@pytest.fixture
async def stopped(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> Stopped:
    """A SIZE layer's copy through the fault proxy, stopped after its first part; the proxy's
    records and faults reset, for the resume's alone."""
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (SIZE,))
    layer = image.layers[0]
    error = await stop_after_first_part(client, fault_proxy, image, repository)
    first_run = sum(r.served for r in fault_proxy.blob_gets(layer))
    fault_proxy.reset()
    return Stopped(image, layer, error, error.checkpoints[layer], first_run, last_sequence(ecr))


async def resume(
    client: EcrClient,
    proxy: FaultProxy,
    image: SeededImage,
    repository: str,
    stopped: CopyCanceledError,
) -> None:
    result = await copy_image(
        client,
        f"{proxy.host}/{image.repository}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
        resume=stopped,
    )
    assert result.manifest_digest == image.digest


async def layer_in_ecr(client: EcrClient, repository: str, digest: str) -> bool:
    response = await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(repository_name=repository, layer_digests=(digest,))
    )
    return digest in response.available_digests()


async def assert_refused_here(
    error: DigestMismatchError,
    image: SeededImage,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    """The resume read the layer from byte 0 with byte 1000 corrupted and refused it here,
    before any CompleteLayerUpload (the whole blob went through the hash): no layer in ECR."""
    layer = image.layers[0]
    bad = bytearray(image.blobs[layer])
    bad[1_000] ^= 0xFF
    assert error.expected == layer
    assert error.actual == "sha256:" + hashlib.sha256(bad).hexdigest()
    assert not any(layer in r.layer_digests for r in ecr.requests("CompleteLayerUpload"))
    assert not await layer_in_ecr(client, repository, layer)


async def test_a_resumed_blob_is_fetched_from_the_committed_byte_not_again_from_0(
    fault_proxy: FaultProxy, ecr: LocalEcr, client: EcrClient, repository: str, stopped: Stopped
) -> None:
    image, layer, checkpoint, mark = stopped.image, stopped.layer, stopped.checkpoint, stopped.mark
    first_run = stopped.first_run
    assert first_run <= SIZE

    await resume(client, fault_proxy, image, repository, stopped.error)

    gets = fault_proxy.blob_gets(layer)
    assert [g.range for g in gets] == [f"bytes={PART}-"]  # one GET, at the byte ECR holds
    assert gets[0].served == SIZE - PART  # the committed 10 MiB were not downloaded again
    assert first_run + gets[0].served < 2 * SIZE
    # The blob's own upload went on from the committed byte: nothing re-sent to ECR.
    resumed_parts = parts_by_upload(ecr, mark)[checkpoint.upload_id]
    assert resumed_parts == [(PART, 2 * PART - 1), (2 * PART, SIZE - 1)]
    assert_no_byte_sent_twice(ecr)
    completes = [r for r in ecr.requests("CompleteLayerUpload") if r.sequence > mark]
    assert [
        (r.layer_digests, r.accepted) for r in completes if r.upload_id == checkpoint.upload_id
    ] == [
        ((layer,), True)  # with the descriptor's digest, which ECR checked
    ]
    await assert_copied(ecr, client, repository, ":v1", image)


async def test_a_source_that_ignores_range_is_read_from_0_and_the_prefix_not_sent(
    fault_proxy: FaultProxy, ecr: LocalEcr, client: EcrClient, repository: str, stopped: Stopped
) -> None:
    image, layer, checkpoint, mark = stopped.image, stopped.layer, stopped.checkpoint, stopped.mark
    fault_proxy.add(Fault("ignore_range", where=layer, times=10))  # every GET of the layer

    await resume(client, fault_proxy, image, repository, stopped.error)

    gets = fault_proxy.blob_gets(layer)
    # Asked from the committed byte; answered 200 with the whole blob; its prefix dropped.
    assert [(g.range, g.fault, g.served) for g in gets] == [
        (f"bytes={PART}-", "ignore_range", SIZE)
    ]
    assert parts_by_upload(ecr, mark)[checkpoint.upload_id][0] == (PART, 2 * PART - 1)
    assert_no_byte_sent_twice(ecr)
    await assert_copied(ecr, client, repository, ":v1", image)


async def test_a_suffix_changed_at_the_source_is_refused_by_ecrs_digest_check(
    fault_proxy: FaultProxy, ecr: LocalEcr, client: EcrClient, repository: str, stopped: Stopped
) -> None:
    image, layer, checkpoint, mark = stopped.image, stopped.layer, stopped.checkpoint, stopped.mark
    # The source now serves other bytes past the committed prefix (same size).
    fault_proxy.add(Fault("corrupt", where=layer, at_byte=PART + 3 * MIB, times=10))

    with pytest.raises(DigestMismatchError) as caught:
        await resume(client, fault_proxy, image, repository, stopped.error)

    error = caught.value
    assert error.expected == layer
    assert error.actual == ""  # the prefix was never read here: ECR's check found it
    assert "InvalidLayerException" in str(error)
    assert any(layer in note and "not completed" in note for note in error.__notes__)
    assert [g.range for g in fault_proxy.blob_gets(layer)] == [f"bytes={PART}-"]
    # ECR was asked to complete with the descriptor's digest and refused: no layer.
    completes = [
        (r.layer_digests, r.accepted)
        for r in ecr.requests("CompleteLayerUpload")
        if r.sequence > mark and r.upload_id == checkpoint.upload_id
    ]
    assert completes == [((layer,), False)]
    assert ecr.upload(checkpoint.upload_id) is not None  # still open, never completed
    assert not await layer_in_ecr(client, repository, layer)
    assert ecr.requests("PutImage") == []


@pytest.mark.parametrize("corrupt", [False, True], ids=["intact", "corrupt-prefix"])
async def test_an_upload_lost_on_resume_starts_over_and_is_hashed_locally(
    fault_proxy: FaultProxy,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    stopped: Stopped,
    corrupt: bool,
) -> None:
    image, layer, checkpoint, mark = stopped.image, stopped.layer, stopped.checkpoint, stopped.mark
    assert ecr.forget_upload(checkpoint.upload_id)  # as when ECR expires an upload
    if corrupt:  # a byte of the prefix: only a read from byte 0 sees it
        fault_proxy.add(Fault("corrupt", where=layer, at_byte=1_000, times=10))

    if not corrupt:
        await resume(client, fault_proxy, image, repository, stopped.error)
        await assert_copied(ecr, client, repository, ":v1", image)
    else:
        with pytest.raises(DigestMismatchError) as caught:
            await resume(client, fault_proxy, image, repository, stopped.error)
        await assert_refused_here(caught.value, image, ecr, client, repository)
    # First the ranged GET of the resume, then, after UploadNotFound, the blob from byte 0.
    assert [g.range for g in fault_proxy.blob_gets(layer)] == [f"bytes={PART}-", None]
    if not corrupt:  # the layer's new upload, and the config's first
        assert len([r for r in ecr.requests("InitiateLayerUpload") if r.sequence > mark]) == 2


async def test_ecr_to_ecr_resumes_from_the_committed_byte(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    """The download URL of GetDownloadUrlForLayer is read from the committed byte too."""
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (SIZE,))
    await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
    )
    target = repo_name("copy")
    ecr.create_repository(target)
    layer = image.layers[0]
    source = CancellationTokenSource()
    reference = f"{ecr.registry_address}/{repository}:v1"

    def cancel_after_first_part(event: PushProgress) -> None:
        if event.digest == layer and event.event == "progress":
            source.cancel()

    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            reference,
            target,
            tags=["v1"],
            source_client=client,
            max_concurrent_layers=1,
            cancellation_token=source.token,
            on_progress=cancel_after_first_part,
        )
    checkpoint = caught.value.checkpoints[layer]
    assert checkpoint.bytes_committed == PART
    mark = last_sequence(ecr)
    result = await copy_image(
        client, reference, target, tags=["v1"], source_client=client, resume=caught.value
    )
    assert result.manifest_digest == image.digest
    assert parts_by_upload(ecr, mark)[checkpoint.upload_id] == [
        (PART, 2 * PART - 1),
        (2 * PART, SIZE - 1),
    ]
    assert_no_byte_sent_twice(ecr)
    await assert_copied(ecr, client, target, ":v1", image)


@pytest.mark.parametrize("corrupt", [False, True], ids=["intact", "corrupt-prefix"])
async def test_a_checkpoint_ahead_of_an_empty_upload_realigns_to_0_and_is_hashed_locally(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    corrupt: bool,
) -> None:
    """A checkpoint claiming a prefix ECR does not hold (it holds no byte): the resume starts
    past the prefix unhashed, ECR asks for byte 0, and from there every byte is hashed here
    again, so a changed prefix is refused locally, before any CompleteLayerUpload."""
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (SIZE,))
    layer = image.layers[0]
    initiated = await client.initiate_layer_upload(
        InitiateLayerUploadRequest(repository_name=repository)
    )
    checkpoint = UploadCheckpoint(
        repository_name=repository,
        registry_id=None,
        upload_id=initiated.upload_id,
        bytes_committed=PART,  # a lie: ECR holds none of this upload's bytes
        part_size=PART,
        source_size=SIZE,
        source_length=SIZE,
    )
    stopped = CopyCanceledError(checkpoints={layer: checkpoint}, source_digest=image.digest)
    if corrupt:
        fault_proxy.add(Fault("corrupt", where=layer, at_byte=1_000, times=10))
    mark = last_sequence(ecr)

    if not corrupt:
        result = await copy_image(
            client,
            f"{fault_proxy.host}/{image.repository}:v1",
            repository,
            tags=["v1"],
            plain_http=True,
            resume=stopped,
        )
        assert result.manifest_digest == image.digest
        # Every blob byte went to ECR in this call: the checkpoint's prefix was not there.
        assert result.bytes_moved == sum(len(blob) for blob in image.blobs.values())
        await assert_copied(ecr, client, repository, ":v1", image)
        resumed_parts = parts_by_upload(ecr, mark)[initiated.upload_id]
        assert resumed_parts[-3:] == [(0, PART - 1), (PART, 2 * PART - 1), (2 * PART, SIZE - 1)]
    else:
        with pytest.raises(DigestMismatchError) as caught:
            await resume(client, fault_proxy, image, repository, stopped)
        await assert_refused_here(caught.value, image, ecr, client, repository)
    # The first GET at the checkpoint's byte, then, after ECR asked for byte 0, from byte 0.
    ranges = [g.range for g in fault_proxy.blob_gets(layer)]
    assert ranges[0] == f"bytes={PART}-"
    assert ranges[1] in (None, "bytes=0-")
