"""copy_image against real parts: the CNCF distribution registry (Debian's docker-registry) as
the source, the local ECR endpoint as the destination (and as a source, ECR to ECR).

Every test seeds its source through the registry's push API, and every copy is read back
from the local ECR's registry API (``/v2/``, with the password of GetAuthorizationToken) by
``RegistryClient`` and compared byte for byte with what was seeded.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import (
    assert_copied,
    assert_image_in_ecr,
    assert_no_byte_sent_twice,
    ecr_reader,
    last_sequence,
    parts_by_upload,
    repo_name,
)
from registry_fixtures import (
    BASIC_PASSWORD,
    BASIC_USER,
    TOKEN_PASSWORD,
    TOKEN_USER,
    Fault,
    FaultProxy,
    RegistryServer,
    SeededIndex,
    Seeder,
    StorageServer,
    TokenIssuer,
    sha256_digest,
)

import ecrstream
from ecrstream.cancellation import CancellationTokenSource
from ecrstream.client import EcrClient
from ecrstream.copy import CopyCanceledError, CopyImageResult, RemoteBlobSource, copy_image
from ecrstream.errors import (
    BlobSizeError,
    DigestMismatchError,
    ImageSelectionError,
    InvalidArgumentError,
    ManifestInvalidError,
    RegistryNotFoundError,
)
from ecrstream.image import PushProgress
from ecrstream.local import FaultKind, LocalEcr, Operation
from ecrstream.models import BatchGetImageRequest
from ecrstream.registry import RegistryClient, parse_reference
from ecrstream.retry import RetryPolicy
from ecrstream.source import LayerSource

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

MIB = 1024 * 1024
FAST = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=1.0)


def test_exported_from_ecrstream() -> None:
    assert ecrstream.copy_image is copy_image
    assert ecrstream.CopyImageResult is CopyImageResult
    assert ecrstream.CopyCanceledError is CopyCanceledError
    assert issubclass(CopyCanceledError, ecrstream.PushCanceledError)


async def test_remote_blob_source_is_a_layer_source_that_rewinds(
    anon_registry: RegistryServer,
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (300_000,))
    layer = image.layers[0]
    expected = image.blobs[layer]
    async with RegistryClient(anon_registry.host, plain_http=True, docker_config=False) as reg:

        async def opener(offset: int) -> ecrstream.registry.BlobReader:
            return await reg.open_blob(image.repository, layer, len(expected), offset)

        source = RemoteBlobSource(layer, len(expected), opener)
        assert isinstance(source, LayerSource)
        assert source.size == len(expected)
        assert source.can_rewind
        first = bytearray(100_000)
        assert await source.read(0, memoryview(first)) == 100_000
        second = bytearray(100_000)
        assert await source.read(100_000, memoryview(second)) == 100_000
        assert source.opens == 1  # in order: the same response goes on
        back = bytearray(50_000)
        assert await source.read(10_000, memoryview(back)) == 50_000  # a rewind reopens
        assert source.opens == 2
        tail = bytearray(1_000_000)
        assert await source.read(250_000, memoryview(tail)) == 50_000
        assert bytes(first + second) == expected[:200_000]
        assert bytes(back) == expected[10_000:60_000]
        assert bytes(tail[:50_000]) == expected[250_000:]
        assert source.checkpoint_fields().source_size == len(expected)
        await source.aclose()


async def test_copy_multi_layer_image_then_nothing_to_send(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "1.0", (900_000, 40_000, 2_300_000))
    events: list[PushProgress] = []
    result = await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:1.0",
        repository,
        tags=("1.0", "stable"),
        plain_http=True,
        on_progress=events.append,
    )
    assert result.manifest_digest == image.digest == result.source_digest
    assert result.blobs_uploaded == 4
    assert result.blobs_skipped == 0
    assert result.bytes_moved == sum(len(b) for b in image.blobs.values())
    assert result.tags == ("1.0", "stable")
    # Largest first, one batched availability check.
    started = [e.digest for e in events if e.event == "started"]
    assert started[0] == sha256_digest(image.blobs[image.layers[2]])
    assert len(ecr.requests("BatchCheckLayerAvailability")) == 1
    assert ecr.requests("PutImage")[-1].operation == "PutImage"
    async with await ecr_reader(ecr, client) as reader:
        for reference in (":1.0", ":stable", f"@{image.digest}"):
            await assert_image_in_ecr(reader, repository, reference, image)
    ecr.reset()
    again = await copy_image(
        client, f"{anon_registry.host}/{image.repository}:1.0", repository, plain_http=True
    )
    assert (again.blobs_uploaded, again.blobs_skipped, again.bytes_moved) == (0, 4, 0)
    assert ecr.requests("InitiateLayerUpload") == []


def seed_index(server: RegistryServer, oci: bool = True) -> SeededIndex:
    return Seeder(server).push_index(
        repo_name("multi"),
        "multi",
        (("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7")),
        oci=oci,
    )


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
async def test_copy_index_whole_keeps_its_digest(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str, oci: bool
) -> None:
    index = seed_index(anon_registry, oci)
    result = await copy_image(
        client,
        f"{anon_registry.host}/{index.repository}:multi",
        repository,
        tags=["multi"],
        plain_http=True,
    )
    assert result.manifest_digest == index.digest
    assert set(result.manifest_digests) == {c.digest for c in index.children}
    puts = ecr.requests("PutImage")
    assert len(puts) == 4  # three children by digest, then the index with its tag, last
    async with await ecr_reader(ecr, client) as reader:
        top = await reader.get_manifest(parse_reference(f"{reader.registry}/{repository}:multi"))
        assert top.data == index.manifest
        assert top.digest == index.digest
        for child in index.children:
            await assert_image_in_ecr(reader, repository, f"@{child.digest}", child)


async def test_copy_one_platform_of_an_index(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    index = seed_index(anon_registry)
    arm = index.children[1]
    result = await copy_image(
        client,
        f"{anon_registry.host}/{index.repository}:multi",
        repository,
        tags=["arm"],
        platforms=["linux/arm64"],  # any variant, as docker matches it
        plain_http=True,
    )
    assert result.manifest_digest == arm.digest
    assert result.source_digest == index.digest
    assert result.blobs_uploaded == 2
    await assert_copied(ecr, client, repository, ":arm", arm)
    got = await client.batch_get_image(
        BatchGetImageRequest(repository_name=repository, image_ids=(index.digest,))
    )
    assert got.images == ()  # the index itself was not put
    # Two platforms: a new index of just those two.
    two = await copy_image(
        client,
        f"{anon_registry.host}/{index.repository}@{index.digest}",
        repository,
        tags=["two"],
        platforms=["linux/amd64", "linux/arm/v7"],
        plain_http=True,
    )
    async with await ecr_reader(ecr, client) as reader:
        top = await reader.get_manifest(parse_reference(f"{reader.registry}/{repository}:two"))
    listed = [m["digest"] for m in json.loads(top.data)["manifests"]]
    assert listed == [index.children[0].digest, index.children[2].digest]
    assert two.manifest_digest == top.digest
    with pytest.raises(ImageSelectionError, match=r"no platform \['linux/s390x'\]") as caught:
        await copy_image(
            client,
            f"{anon_registry.host}/{index.repository}:multi",
            repository,
            platforms=["linux/amd64", "linux/s390x"],
            plain_http=True,
        )
    assert caught.value.image_ref == "linux/s390x"
    assert "linux/arm64/v8" in caught.value.names  # names what the index has


async def test_ecr_to_ecr(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (700_000, 50_000))
    await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
    )
    target = repo_name("copy")
    ecr.create_repository(target)
    ecr.reset()
    result = await copy_image(
        client,
        f"{ecr.registry_address}/{repository}:v1",
        target,
        tags=["copied"],
        source_client=client,
    )
    assert result.manifest_digest == image.digest
    assert result.blobs_uploaded == 3
    downloads = ecr.requests("GetDownloadUrlForLayer")
    assert len(downloads) == 3  # one URL per blob
    assert len(ecr.requests("BatchGetImage")) == 1
    await assert_copied(ecr, client, target, ":copied", image)


async def test_cancel_mid_blob_then_resume_sends_no_byte_twice(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    ecr.part_size = 5 * MIB
    image = Seeder(anon_registry).push_image(repo_name(), "big", (13 * MIB, 30_000))
    big = image.layers[0]
    source = CancellationTokenSource()

    def stop_after_first_part(event: PushProgress) -> None:
        if event.digest == big and event.event == "progress":
            source.cancel()

    reference = f"{anon_registry.host}/{image.repository}:big"
    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            reference,
            repository,
            tags=["big"],
            plain_http=True,
            max_concurrent_layers=1,
            cancellation_token=source.token,
            on_progress=stop_after_first_part,
        )
    stopped = caught.value
    assert stopped.source_digest == image.digest
    checkpoint = stopped.checkpoints[big]
    assert 0 < checkpoint.bytes_committed < 13 * MIB
    assert big in stopped.pending_digests
    assert ecr.requests("PutImage") == []
    before = parts_by_upload(ecr)[checkpoint.upload_id]
    assert before[-1][1] + 1 >= checkpoint.bytes_committed  # never claims more than ECR has
    mark = last_sequence(ecr)
    result = await copy_image(
        client, reference, repository, tags=["big"], plain_http=True, resume=stopped
    )
    assert result.manifest_digest == image.digest
    # The in-flight blob continued its own upload at the byte ECR held: nothing re-sent
    # (over both calls, each upload's parts follow each other once from byte 0).
    for first, _ in parts_by_upload(ecr, mark).get(checkpoint.upload_id, [])[:1]:
        assert first >= checkpoint.bytes_committed
    initiated = [r for r in ecr.requests("InitiateLayerUpload") if r.sequence > mark]
    # Only blobs that had no upload yet start one.
    assert len(initiated) == len(stopped.pending_digests) - len(stopped.checkpoints)
    assert_no_byte_sent_twice(ecr)
    await assert_copied(ecr, client, repository, ":big", image)


async def test_a_resume_copies_the_pinned_digest_though_the_tag_moved(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    ecr.part_size = 5 * MIB
    seeder = Seeder(anon_registry)
    repo = repo_name()
    first = seeder.push_image(repo, "moving", (11 * MIB,), seed=1)
    source = CancellationTokenSource()
    reference = f"{anon_registry.host}/{repo}:moving"
    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            reference,
            repository,
            plain_http=True,
            cancellation_token=source.token,
            on_progress=lambda e: source.cancel() if e.event == "progress" else None,
        )
    seeder.push_image(repo, "moving", (20_000,), seed=2)  # the tag moves meanwhile
    result = await copy_image(client, reference, repository, plain_http=True, resume=caught.value)
    assert result.manifest_digest == first.digest
    await assert_copied(ecr, client, repository, f"@{first.digest}", first)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("reset", at_byte=200_000),
        Fault("truncate", at_byte=300_000),
        Fault("status", status=503, times=2),
        Fault("throttle", retry_after="0"),
        Fault("ignore_range"),  # after a truncate: the resumed GET gets the whole blob
    ],
    ids=lambda f: f.kind,
)
async def test_source_faults_are_retried_without_resending_to_ecr(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    fault: Fault,
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "f", (1_500_000, 600_000))
    largest = image.layers[0]  # the fault hits it, not whichever GET comes first
    if fault.kind == "ignore_range":
        fault_proxy.add(Fault("truncate", where=largest, at_byte=300_000))
    fault_proxy.add(dataclasses.replace(fault, where=largest))
    result = await copy_image(
        client,
        f"{fault_proxy.host}/{image.repository}:f",
        repository,
        tags=["f"],
        plain_http=True,
        source_retry=FAST,
    )
    assert result.blobs_uploaded == 3
    assert any(r.fault == fault.kind for r in fault_proxy.requests)
    assert len(fault_proxy.blob_gets()) > 3  # the faulted GET was sent again
    if fault.kind in ("truncate", "ignore_range"):  # (a reset may drop what had arrived)
        assert any(r.range is not None for r in fault_proxy.blob_gets())  # resumed by range
    assert_no_byte_sent_twice(ecr)
    assert len(ecr.requests("CompleteLayerUpload")) == 3
    await assert_copied(ecr, client, repository, ":f", image)


def in_flight_at_starts(events: list[PushProgress]) -> list[int]:
    """How many blobs were in flight (started, not done) as each blob started, itself counted."""
    running: set[str] = set()
    counts = []
    for event in events:
        if event.event == "started":
            running.add(event.digest)
            counts.append(len(running))
        elif event.event == "done":
            running.discard(event.digest)
    return counts


async def test_ecr_throttling_slows_the_copy_instead_of_failing_it(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    """The first 4 UploadLayerPart calls (one per blob in flight) are throttled: each retry
    takes one blob off the limit, so the next blob starts with fewer in flight."""
    sizes = tuple(60_000 - 5_000 * n for n in range(8))
    image = Seeder(anon_registry).push_image(repo_name("throttled"), "t", sizes)
    ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.THROTTLING, times=4)
    events: list[PushProgress] = []
    result = await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:t",
        repository,
        tags=["t"],
        plain_http=True,
        max_concurrent_layers=4,
        on_progress=events.append,
    )
    assert result.blobs_uploaded == 9
    throttled = [r for r in ecr.requests("UploadLayerPart") if r.fault is FaultKind.THROTTLING]
    assert len(throttled) == 4
    counts = in_flight_at_starts(events)
    assert len(counts) == 9
    assert counts[:4] == [1, 2, 3, 4]  # the limit before ECR said anything
    # Unthrottled, each next blob starts as one ends: 4 in flight. Throttled, the first to
    # start after them waits for a free place under the lowered limit.
    assert counts[4] <= 3
    assert 1 <= result.lowest_concurrency <= 3
    await assert_copied(ecr, client, repository, ":t", image)


async def test_a_stalled_source_body_times_out_and_resumes_from_the_byte_reached(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    """The body stops mid-blob (the connection stays open): the read times out, and the GET
    is sent again from the byte reached; ECR gets each byte once."""
    image = Seeder(anon_registry).push_image(repo_name(), "stall", (1_200_000, 30_000))
    largest = image.layers[0]
    fault_proxy.add(Fault("stall", where=largest, at_byte=400_000))
    result = await copy_image(
        client,
        f"{fault_proxy.host}/{image.repository}:stall",
        repository,
        tags=["stall"],
        plain_http=True,
        source_retry=FAST,
        source_read_timeout=0.5,
    )
    assert result.blobs_uploaded == 3
    assert fault_proxy.stalled.is_set()
    gets = [r for r in fault_proxy.blob_gets() if largest in r.path]
    assert [r.fault for r in gets] == ["stall", None]
    assert gets[0].range is None
    assert gets[1].range is not None
    assert gets[1].range.startswith("bytes=400000-")
    assert_no_byte_sent_twice(ecr)
    await assert_copied(ecr, client, repository, ":stall", image)


async def test_an_expired_download_url_is_asked_for_again(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    """ECR to ECR: a download URL whose time ran out (403) makes EcrSource ask for a fresh one."""
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (600_000, 80_000))
    await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
    )
    target = repo_name("copy")
    ecr.create_repository(target)
    ecr.reset()
    ecr.faults.add(Operation.GET_DOWNLOAD_URL_FOR_LAYER, FaultKind.EXPIRED_URL, times=2)
    result = await copy_image(
        client,
        f"{ecr.registry_address}/{repository}:v1",
        target,
        tags=["v1"],
        source_client=client,
        max_concurrent_layers=1,  # one blob at a time: the first gets both expired URLs
        source_retry=FAST,
    )
    assert result.manifest_digest == image.digest
    assert result.blobs_uploaded == 3
    asked = ecr.requests(Operation.GET_DOWNLOAD_URL_FOR_LAYER)
    assert [r.fault for r in asked] == [
        FaultKind.EXPIRED_URL,
        FaultKind.EXPIRED_URL,
        None,
        None,
        None,
    ]
    assert all(r.status == 200 for r in asked)
    assert_no_byte_sent_twice(ecr)
    await assert_copied(ecr, client, target, ":v1", image)


@pytest.mark.parametrize("kind", ["replace", "short", "overrun"])
async def test_a_corrupt_blob_is_never_completed(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    kind: str,
) -> None:
    """Other bytes of the same size, a body that ends cleanly short, one with extra bytes."""
    image = Seeder(anon_registry).push_image(repo_name(), "bad", (400_000,))
    layer = image.layers[0]
    good = image.blobs[layer]
    fault_proxy.add(
        Fault(kind, where=layer, body=bytes(len(good)), at_byte=100_000, times=10),
    )
    with pytest.raises((DigestMismatchError, BlobSizeError)) as caught:
        await copy_image(
            client,
            f"{fault_proxy.host}/{image.repository}:bad",
            repository,
            plain_http=True,
            max_concurrent_layers=1,
            source_retry=FAST,
        )
    if kind == "replace":
        assert isinstance(caught.value, DigestMismatchError)
        assert caught.value.expected == layer
        assert caught.value.actual == sha256_digest(bytes(len(good)))
    else:
        assert isinstance(caught.value, BlobSizeError)
        assert caught.value.expected == len(good)
    completed = [d for r in ecr.requests("CompleteLayerUpload") for d in r.layer_digests]
    assert layer not in completed
    assert ecr.requests("PutImage") == []


async def test_basic_auth_over_tls_source(
    basic_registry: tuple[RegistryServer, StorageServer],
    isolated_docker_config: object,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    server, _storage = basic_registry
    image = Seeder(server).push_image(repo_name(), "tls", (500_000, 20_000))
    assert server.ca_path is not None
    result = await copy_image(
        client,
        f"{server.host}/{image.repository}:tls",
        repository,
        tags=["tls"],
        source_credentials=f"{BASIC_USER}:{BASIC_PASSWORD}",
        verify=str(server.ca_path),
    )
    assert result.manifest_digest == image.digest
    await assert_copied(ecr, client, repository, ":tls", image)


async def test_token_auth_source(
    token_registry: tuple[RegistryServer, TokenIssuer],
    isolated_docker_config: object,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    server, issuer = token_registry
    image = Seeder(server).push_image(repo_name("private"), "tok", (300_000,))
    issuer.reset()
    result = await copy_image(
        client,
        f"{server.host}/{image.repository}:tok",
        repository,
        tags=["tok"],
        plain_http=True,
        source_credentials=(TOKEN_USER, TOKEN_PASSWORD),
    )
    assert result.manifest_digest == image.digest
    assert {r.user for r in issuer.requests} == {TOKEN_USER}
    await assert_copied(ecr, client, repository, ":tok", image)


async def test_a_missing_source_image_names_it(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    with pytest.raises(RegistryNotFoundError):
        await copy_image(
            client, f"{anon_registry.host}/{repo_name()}:nope", repository, plain_http=True
        )
    assert ecr.requests("InitiateLayerUpload") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"platforms": "linux/amd64"}, "platforms"),
        ({"platforms": ["linux"]}, "platforms"),
        ({"platforms": []}, "platforms"),
        ({"tags": "v1"}, "tags"),
        ({"tags": ["bad tag"]}, "image_tag"),
        ({"max_concurrent_layers": 0}, "max_concurrent_layers"),
        ({"resume": {"sha256:x": 1}}, "resume"),
        ({"registry_id": "123"}, "registry_id"),
        ({"source_read_timeout": 0}, "source_read_timeout"),
        ({"source_read_timeout": float("nan")}, "source_read_timeout"),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    ecr: LocalEcr, client: EcrClient, repository: str, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await copy_image(client, "127.0.0.1:1/never/contacted:v1", repository, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert ecr.requests() == []


async def test_a_bad_source_reference_is_named(client: EcrClient, repository: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await copy_image(client, "UPPER/Case::", repository)
    assert caught.value.field == "source"


async def test_an_ecr_registry_host_is_read_through_the_ecr_api(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "v1", (120_000,))
    await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
    )
    target = repo_name("copy")
    ecr.create_repository(target)
    ecr.reset()
    host = f"{ecr.registry_id}.dkr.ecr.{ecr.region_name}.amazonaws.com"
    result = await copy_image(client, f"{host}/{repository}:v1", target, tags=["v1"])
    assert result.manifest_digest == image.digest
    assert len(ecr.requests("GetDownloadUrlForLayer")) == 2
    await assert_copied(ecr, client, target, ":v1", image)


async def test_a_cancel_with_several_blobs_in_flight_checkpoints_each(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    ecr.part_size = 5 * MIB
    image = Seeder(anon_registry).push_image(repo_name(), "two", (11 * MIB, 12 * MIB))
    source = CancellationTokenSource()
    progressed: set[str] = set()

    def stop_once_both_sent_a_part(event: PushProgress) -> None:
        if event.event == "progress" and event.kind == "layer":
            progressed.add(event.digest)
        if len(progressed) == 2:
            source.cancel()

    reference = f"{anon_registry.host}/{image.repository}:two"
    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            reference,
            repository,
            plain_http=True,
            max_concurrent_layers=3,
            cancellation_token=source.token,
            on_progress=stop_once_both_sent_a_part,
        )
    stopped = caught.value
    assert set(image.layers) <= set(stopped.checkpoints)
    assert all(stopped.checkpoints[layer].bytes_committed > 0 for layer in image.layers)
    mark = last_sequence(ecr)
    result = await copy_image(client, reference, repository, plain_http=True, resume=stopped)
    assert result.manifest_digest == image.digest
    assert_no_byte_sent_twice(ecr)
    completed = {r.upload_id for r in ecr.requests("CompleteLayerUpload") if r.sequence > mark}
    for layer in image.layers:  # each layer's own upload went on, none started again
        assert stopped.checkpoints[layer].upload_id in completed
    initiated = [r for r in ecr.requests("InitiateLayerUpload") if r.sequence > mark]
    assert len(initiated) == len(stopped.pending_digests) - len(stopped.checkpoints)
    await assert_copied(ecr, client, repository, f"@{image.digest}", image)


async def test_upload_source_refuses_what_is_not_a_layer_source(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    uploader = ecrstream.LayerUploader(client, repository)
    with pytest.raises(TypeError, match="source: must be a LayerSource"):
        await uploader.upload_source(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError) as caught:
        await uploader.upload_source(
            RemoteBlobSource("sha256:" + "0" * 64, 10, _never_opened), expected_digest="md5:x"
        )
    assert caught.value.field == "expected_digest"
    assert ecr.requests() == []


async def _never_opened(offset: int) -> ecrstream.registry.BlobReader:
    raise AssertionError("no read expected")


async def test_an_image_of_many_layers_is_checked_in_batches_of_100(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    sizes = tuple(1_000 + n for n in range(120))
    image = Seeder(anon_registry).push_image(repo_name(), "many", sizes)
    result = await copy_image(
        client,
        f"{anon_registry.host}/{image.repository}:many",
        repository,
        tags=["many"],
        plain_http=True,
        max_concurrent_layers=8,
    )
    assert result.blobs_uploaded == 121
    assert [len(r.layer_digests) for r in ecr.requests("BatchCheckLayerAvailability")] == [
        100,
        21,
    ]
    await assert_copied(ecr, client, repository, ":many", image)


async def test_a_manifest_over_4_mib_is_refused_before_any_upload(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "huge", (10_000,))
    fault_proxy.add(
        Fault(
            "replace",
            where="/manifests/",
            body=b" " * (4 * MIB + 1),
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
    )
    with pytest.raises(ManifestInvalidError, match="limit"):
        await copy_image(
            client, f"{fault_proxy.host}/{image.repository}:huge", repository, plain_http=True
        )
    assert ecr.requests() == []
