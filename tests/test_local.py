"""The local ECR endpoint over real HTTP: moto behind the strict, fault-injecting proxy.

Every call goes through aiobotocore (or a plain socket) to 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import anyio
import botocore.session
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from ecrstream.local import (
    DEFAULT_MIN_PART_SIZE,
    MAX_PART_SIZE,
    Fault,
    FaultKind,
    LocalEcr,
    Operation,
    RecordedRequest,
    store,
)

if TYPE_CHECKING:
    from types_aiobotocore_ecr import ECRClient

pytestmark = pytest.mark.timeout(30)

MIB = 1024 * 1024
ULP = Operation.UPLOAD_LAYER_PART
CHECK = Operation.BATCH_CHECK_LAYER_AVAILABILITY


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def client_error(call: Awaitable[object]) -> dict[str, Any]:
    """The parsed error response of a call that must fail with a service error."""
    with pytest.raises(ClientError) as caught:
        await call
    return dict(caught.value.response)


async def initiate(client: ECRClient, repository: str) -> str:
    return (await client.initiate_layer_upload(repositoryName=repository))["uploadId"]


async def put_part(
    client: ECRClient, repository: str, upload_id: str, first_byte: int, data: bytes
) -> int:
    answer = await client.upload_layer_part(
        repositoryName=repository,
        uploadId=upload_id,
        partFirstByte=first_byte,
        partLastByte=first_byte + len(data) - 1,
        layerPartBlob=data,
    )
    return answer["lastByteReceived"]


async def push_layer(client: ECRClient, repository: str, data: bytes) -> str:
    """Upload ``data`` as a one-part layer; returns its digest."""
    upload_id = await initiate(client, repository)
    await put_part(client, repository, upload_id, 0, data)
    answer = await client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(data)]
    )
    return answer["layerDigest"]


def outcome(record: RecordedRequest) -> tuple[int | None, str | None, bool]:
    return record.status, record.error_code, record.accepted


# -- the happy path and the records ------------------------------------------------------------


@pytest.mark.anyio
async def test_layer_upload_happy_path_is_recorded_part_by_part(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    first, last = blob(DEFAULT_MIN_PART_SIZE, seed=1), blob(100_000, seed=2)
    layer = first + last

    initiated = await aio_ecr_client.initiate_layer_upload(repositoryName=repository)
    upload_id = initiated["uploadId"]
    assert initiated["partSize"] == 10 * MIB  # moto's value, as ECR's
    assert await put_part(aio_ecr_client, repository, upload_id, 0, first) == len(first) - 1
    assert await put_part(aio_ecr_client, repository, upload_id, len(first), last) == len(layer) - 1

    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.part_sizes == (len(first), len(last))
    assert snapshot.bytes_received == len(layer)
    assert snapshot.digest == digest_of(layer)

    completed = await aio_ecr_client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(layer)]
    )
    assert completed["layerDigest"] == digest_of(layer)
    assert ecr.upload(upload_id) is None

    checked = await aio_ecr_client.batch_check_layer_availability(
        repositoryName=repository, layerDigests=[digest_of(layer)]
    )
    assert checked["failures"] == []
    assert [(layer_["layerAvailability"], layer_["layerSize"]) for layer_ in checked["layers"]] == [
        ("AVAILABLE", len(layer))
    ]

    parts = ecr.accepted_parts(upload_id)
    assert [(p.part_first_byte, p.part_last_byte, p.blob_length) for p in parts] == [
        (0, len(first) - 1, len(first)),
        (len(first), len(layer) - 1, len(last)),
    ]
    assert [p.blob_sha256 for p in parts] == [
        hashlib.sha256(first).hexdigest(),
        hashlib.sha256(last).hexdigest(),
    ]
    records = ecr.requests()
    assert [(r.sequence, r.operation, r.call) for r in records] == [
        (1, "InitiateLayerUpload", 1),
        (2, "UploadLayerPart", 1),
        (3, "UploadLayerPart", 2),
        (4, "CompleteLayerUpload", 1),
        (5, "BatchCheckLayerAvailability", 1),
    ]
    assert all(outcome(r) == (200, None, True) for r in records)
    assert all(r.fault is None and r.repository_name == repository for r in records)
    assert records[0].upload_id == records[3].upload_id == upload_id
    assert records[3].layer_digests == (digest_of(layer),)


@pytest.mark.anyio
async def test_requests_filter_by_operation_and_reset_clears_everything(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.part_size = 6 * MIB
    ecr.min_part_size = 1
    ecr.faults.add(CHECK, FaultKind.THROTTLING, call=2)
    upload_id = await initiate(aio_ecr_client, repository)
    for _ in range(2):
        await aio_ecr_client.batch_check_layer_availability(
            repositoryName=repository, layerDigests=[digest_of(b"x")]
        )
        ecr.faults.clear()

    assert [r.call for r in ecr.requests(CHECK)] == [1, 2]
    assert [r.operation for r in ecr.requests("InitiateLayerUpload")] == ["InitiateLayerUpload"]
    assert ecr.requests(ULP) == []

    ecr.faults.add(CHECK, FaultKind.THROTTLING, call=1)
    ecr.reset()
    assert ecr.requests() == []
    assert ecr.faults.faults == ()
    restored: tuple[int, int | None] = (ecr.min_part_size, ecr.part_size)
    assert restored == (DEFAULT_MIN_PART_SIZE, None)
    assert ecr.upload(upload_id) is not None  # open uploads survive a reset
    await aio_ecr_client.batch_check_layer_availability(
        repositoryName=repository, layerDigests=[digest_of(b"x")]
    )
    assert [(r.sequence, r.call, r.fault) for r in ecr.requests()] == [(1, 1, None)]


@pytest.mark.anyio
async def test_part_size_returned_by_initiate_is_configurable(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.part_size = 6 * MIB
    answer = await aio_ecr_client.initiate_layer_upload(repositoryName=repository)
    assert answer["partSize"] == 6 * MIB
    with pytest.raises(ValueError, match="part_size"):
        ecr.part_size = MAX_PART_SIZE + 1


# -- the strict rules ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_part_not_starting_after_last_valid_byte_reports_where_to_resume(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, blob(1000))

    for first_byte in (2000, 0, 999):  # a gap, a replay, an overlap
        error = await client_error(
            put_part(aio_ecr_client, repository, upload_id, first_byte, blob(10))
        )
        assert error["Error"]["Code"] == "InvalidLayerPartException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error["ResponseMetadata"]["RequestId"]
        assert error["lastValidByteReceived"] == 999
        assert error["uploadId"] == upload_id
        assert error["repositoryName"] == repository
        assert error["registryId"] == ecr.registry_id

    assert [r.part_first_byte for r in ecr.accepted_parts(upload_id)] == [0]
    rejected = ecr.requests(ULP)[1:]
    assert [outcome(r) for r in rejected] == [(400, "InvalidLayerPartException", False)] * 3
    assert await put_part(aio_ecr_client, repository, upload_id, 1000, blob(10)) == 1009


@pytest.mark.anyio
async def test_part_over_20_mib_is_rejected_and_20_mib_is_accepted(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    # botocore checks the blob size itself; turn that off to see what the endpoint does.
    unchecked = AioConfig(
        parameter_validation=False, retries={"total_max_attempts": 1, "mode": "standard"}
    )
    async with aio_session.create_client("ecr", config=unchecked, **ecr.client_kwargs()) as client:
        upload_id = await initiate(client, repository)
        error = await client_error(
            put_part(client, repository, upload_id, 0, bytes(MAX_PART_SIZE + 1))
        )
        assert error["Error"]["Code"] == "InvalidLayerPartException"
        assert error["lastValidByteReceived"] == -1
        assert await put_part(client, repository, upload_id, 0, bytes(MAX_PART_SIZE)) == (
            MAX_PART_SIZE - 1
        )
    assert [r.blob_length for r in ecr.requests(ULP)] == [MAX_PART_SIZE + 1, MAX_PART_SIZE]
    assert [r.accepted for r in ecr.requests(ULP)] == [False, True]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("last_byte", "size"),
    [(110, 100), (108, 100), (9, 0)],  # the part starts at byte 10
    ids=["range-too-long", "range-too-short", "empty-part"],
)
async def test_part_whose_byte_range_does_not_match_its_blob_or_is_empty_is_rejected(
    ecr: LocalEcr,
    repository: str,
    aio_ecr_client: ECRClient,
    last_byte: int,
    size: int,
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, blob(10))
    error = await client_error(
        aio_ecr_client.upload_layer_part(
            repositoryName=repository,
            uploadId=upload_id,
            partFirstByte=10,
            partLastByte=last_byte,
            layerPartBlob=blob(size),
        )
    )
    assert error["Error"]["Code"] == "InvalidLayerPartException"
    assert error["lastValidByteReceived"] == 9
    assert [r.part_first_byte for r in ecr.accepted_parts(upload_id)] == [0]


@pytest.mark.anyio
async def test_complete_with_a_digest_not_matching_the_bytes_is_invalid_layer(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    data = blob(1000)
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, data)

    for wrong in ([digest_of(b"other")], [digest_of(data), digest_of(b"other")]):
        error = await client_error(
            aio_ecr_client.complete_layer_upload(
                repositoryName=repository, uploadId=upload_id, layerDigests=wrong
            )
        )
        assert error["Error"]["Code"] == "InvalidLayerException"

    # The upload stays open: the right digest still completes it.
    answer = await aio_ecr_client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(data)]
    )
    assert answer["layerDigest"] == digest_of(data)
    assert [r.accepted for r in ecr.requests("CompleteLayerUpload")] == [False, False, True]


@pytest.mark.anyio
async def test_part_under_min_size_before_the_last_is_layer_part_too_small(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    first, last = blob(1000, seed=1), blob(10, seed=2)
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, first)
    await put_part(aio_ecr_client, repository, upload_id, len(first), last)

    def complete() -> Awaitable[Any]:
        return aio_ecr_client.complete_layer_upload(
            repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(first + last)]
        )

    ecr.min_part_size = len(first) + 1
    error = await client_error(complete())
    assert error["Error"]["Code"] == "LayerPartTooSmallException"

    ecr.min_part_size = len(first)  # exactly the minimum is enough; the last may be smaller
    answer = await complete()
    assert answer["layerDigest"] == digest_of(first + last)


@pytest.mark.anyio
async def test_default_min_part_size_is_ecrs_5_mib(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    first, last = blob(DEFAULT_MIN_PART_SIZE - 1, seed=1), blob(1, seed=2)
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, first)
    await put_part(aio_ecr_client, repository, upload_id, len(first), last)
    error = await client_error(
        aio_ecr_client.complete_layer_upload(
            repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(first + last)]
        )
    )
    assert error["Error"]["Code"] == "LayerPartTooSmallException"


@pytest.mark.anyio
async def test_complete_without_parts_is_empty_upload(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    error = await client_error(
        aio_ecr_client.complete_layer_upload(
            repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(b"")]
        )
    )
    assert error["Error"]["Code"] == "EmptyUploadException"
    assert ecr.upload(upload_id) is not None


@pytest.mark.anyio
async def test_completing_a_layer_already_in_the_repository_is_layer_already_exists(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    data = blob(1000)
    await push_layer(aio_ecr_client, repository, data)
    error = await client_error(push_layer(aio_ecr_client, repository, data))
    assert error["Error"]["Code"] == "LayerAlreadyExistsException"
    # Another repository does not have it.
    other = repository + "-other"
    ecr.create_repository(other)
    assert await push_layer(aio_ecr_client, other, data) == digest_of(data)


@pytest.mark.anyio
async def test_unknown_or_foreign_upload_id_is_upload_not_found(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    unknown = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    other = repository + "-other"
    ecr.create_repository(other)
    foreign = await initiate(aio_ecr_client, other)
    for upload_id in (unknown, foreign):
        error = await client_error(put_part(aio_ecr_client, repository, upload_id, 0, b"x"))
        assert error["Error"]["Code"] == "UploadNotFoundException"
        error = await client_error(
            aio_ecr_client.complete_layer_upload(
                repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(b"x")]
            )
        )
        assert error["Error"]["Code"] == "UploadNotFoundException"
    assert ecr.upload(foreign) is not None


@pytest.mark.anyio
async def test_a_completed_upload_is_gone(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, b"abc")
    await aio_ecr_client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(b"abc")]
    )
    error = await client_error(put_part(aio_ecr_client, repository, upload_id, 3, b"d"))
    assert error["Error"]["Code"] == "UploadNotFoundException"


@pytest.mark.anyio
async def test_forget_upload_expires_it_in_the_proxy_and_in_moto(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, b"abc")

    assert ecr.forget_upload(upload_id) is True
    assert ecr.forget_upload(upload_id) is False
    assert ecr.upload(upload_id) is None
    error = await client_error(put_part(aio_ecr_client, repository, upload_id, 3, b"d"))
    assert error["Error"]["Code"] == "UploadNotFoundException"

    # Straight to moto, past the proxy: it has forgotten the upload (and its bytes) too.
    upstream: Any = botocore.session.get_session().create_client(
        "ecr",
        region_name=ecr.region_name,
        endpoint_url=ecr.upstream_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        with pytest.raises(ClientError) as caught:
            upstream.upload_layer_part(
                repositoryName=repository,
                uploadId=upload_id,
                partFirstByte=3,
                partLastByte=3,
                layerPartBlob=b"d",
            )
    finally:
        upstream.close()
    assert caught.value.response["Error"]["Code"] == "UploadNotFoundException"


# -- images -------------------------------------------------------------------------------------


def manifest_for(config_digest: str, layer_digests: list[str]) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": 1000,
                }
                for digest in layer_digests
            ],
        }
    )


@pytest.mark.anyio
async def test_put_image_digest_is_the_manifests_sha256_and_batch_get_finds_it(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    config = await push_layer(aio_ecr_client, repository, b"{}")
    layer = await push_layer(aio_ecr_client, repository, blob(1000))
    manifest = manifest_for(config, [layer])

    answer = await aio_ecr_client.put_image(
        repositoryName=repository, imageManifest=manifest, imageTag="v1"
    )
    assert answer["image"]["imageId"]["imageDigest"] == digest_of(manifest.encode())

    found = await aio_ecr_client.batch_get_image(
        repositoryName=repository, imageIds=[{"imageDigest": digest_of(manifest.encode())}]
    )
    assert [image["imageManifest"] for image in found["images"]] == [manifest]
    assert [image["imageId"]["imageTag"] for image in found["images"]] == ["v1"]


@pytest.mark.anyio
async def test_put_image_checks_digest_blobs_and_repository(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    config = await push_layer(aio_ecr_client, repository, b"{}")
    missing = digest_of(b"never uploaded")
    manifest = manifest_for(config, [missing])

    error = await client_error(
        aio_ecr_client.put_image(repositoryName=repository, imageManifest=manifest, imageTag="x")
    )
    assert error["Error"]["Code"] == "LayersNotFoundException"
    assert missing in error["Error"]["Message"]

    good = manifest_for(config, [])
    error = await client_error(
        aio_ecr_client.put_image(
            repositoryName=repository, imageManifest=good, imageDigest=digest_of(b"not it")
        )
    )
    assert error["Error"]["Code"] == "ImageDigestDoesNotMatchException"

    error = await client_error(
        aio_ecr_client.put_image(repositoryName=repository, imageManifest="{not json")
    )
    assert error["Error"]["Code"] == "InvalidParameterException"

    error = await client_error(
        aio_ecr_client.put_image(repositoryName=repository + "-absent", imageManifest=good)
    )
    assert error["Error"]["Code"] == "RepositoryNotFoundException"
    assert not any(r.accepted for r in ecr.requests(Operation.PUT_IMAGE))


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        (FaultKind.HTTP_500, 500, "500"),
        (FaultKind.SERVER_EXCEPTION, 500, "ServerException"),
        (FaultKind.THROTTLING, 400, "ThrottlingException"),
        (FaultKind.UPLOAD_NOT_FOUND, 400, "UploadNotFoundException"),
    ],
)
async def test_answering_faults_are_not_forwarded(
    ecr: LocalEcr,
    repository: str,
    aio_ecr_client: ECRClient,
    kind: FaultKind,
    status: int,
    code: str,
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    ecr.faults.add(ULP, kind)
    data = blob(1000)

    error = await client_error(put_part(aio_ecr_client, repository, upload_id, 0, data))
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["Error"]["Code"] == code
    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.bytes_received == 0  # nothing reached moto

    assert await put_part(aio_ecr_client, repository, upload_id, 0, data) == 999  # call 2: clean
    first, second = ecr.requests(ULP)
    assert (first.fault, first.status, first.accepted) == (kind, status, False)
    assert first.error_code == (None if kind is FaultKind.HTTP_500 else code)
    assert first.blob_sha256 == second.blob_sha256 == hashlib.sha256(data).hexdigest()
    assert (second.fault, second.accepted) == (None, True)


def test_http_500_is_bare_and_server_exception_is_ecr_json(ecr: LocalEcr) -> None:
    ecr.faults.add(CHECK, FaultKind.HTTP_500)
    ecr.faults.add(CHECK, FaultKind.SERVER_EXCEPTION, call=2)
    answers = []
    for _ in range(2):
        connection = http.client.HTTPConnection(ecr.endpoint_url.removeprefix("http://"))
        try:
            connection.request(
                "POST",
                "/",
                body=b"{}",
                headers={
                    "X-Amz-Target": f"AmazonEC2ContainerRegistry_V20150921.{CHECK}",
                    "Content-Type": "application/x-amz-json-1.1",
                },
            )
            answer = connection.getresponse()
            answers.append((answer.status, answer.getheaders(), answer.read()))
        finally:
            connection.close()

    (status, _, body), (json_status, json_headers, json_body) = answers
    assert status == 500
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        json.loads(body)
    assert json_status == 500
    assert json.loads(json_body)["__type"] == "ServerException"
    assert "x-amzn-requestid" in {name.lower() for name, _ in json_headers}
    assert [(r.status, r.error_code) for r in ecr.requests(CHECK)] == [
        (500, None),
        (500, "ServerException"),
    ]


@pytest.mark.anyio
async def test_fault_hits_calls_from_call_number_for_times_calls(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.faults.add(CHECK, FaultKind.THROTTLING, call=2, times=2)
    ecr.faults.add(Operation.PUT_IMAGE, FaultKind.THROTTLING, call=1, times=None)
    for _ in range(5):
        with contextlib.suppress(ClientError):
            await aio_ecr_client.batch_check_layer_availability(
                repositoryName=repository, layerDigests=[digest_of(b"x")]
            )
    assert [r.fault for r in ecr.requests(CHECK)] == [
        None,
        FaultKind.THROTTLING,
        FaultKind.THROTTLING,
        None,
        None,
    ]


@pytest.mark.anyio
async def test_fault_with_times_none_hits_every_later_call(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.faults.add(CHECK, FaultKind.SERVER_EXCEPTION, call=3, times=None)
    for _ in range(6):
        with contextlib.suppress(ClientError):
            await aio_ecr_client.batch_check_layer_availability(
                repositoryName=repository, layerDigests=[digest_of(b"x")]
            )
    assert [r.status for r in ecr.requests(CHECK)] == [200, 200, 500, 500, 500, 500]


@pytest.mark.anyio
async def test_first_rule_that_fires_wins(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.faults.add(CHECK, FaultKind.THROTTLING, call=1)
    ecr.faults.add(CHECK, FaultKind.SERVER_EXCEPTION, call=1)
    for _ in range(2):
        await client_error(
            aio_ecr_client.batch_check_layer_availability(
                repositoryName=repository, layerDigests=[digest_of(b"x")]
            )
        )
    assert [r.fault for r in ecr.requests(CHECK)] == [
        FaultKind.THROTTLING,
        FaultKind.SERVER_EXCEPTION,  # the second rule is still eligible on call 2
    ]


@pytest.mark.anyio
async def test_probability_faults_follow_their_seed(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    calls = 16
    draws = random.Random(7)
    expected = [FaultKind.THROTTLING if draws.random() < 0.5 else None for _ in range(calls)]
    assert None in expected  # the seed gives a mix
    assert FaultKind.THROTTLING in expected

    for _ in range(2):  # the same again after a reset
        ecr.reset()
        ecr.faults.add(CHECK, FaultKind.THROTTLING, probability=0.5, seed=7, times=None)
        for _ in range(calls):
            with contextlib.suppress(ClientError):
                await aio_ecr_client.batch_check_layer_availability(
                    repositoryName=repository, layerDigests=[digest_of(b"x")]
                )
        assert [r.fault for r in ecr.requests(CHECK)] == expected


@pytest.mark.anyio
async def test_reset_fault_drops_the_connection_and_nothing_is_applied(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    data = blob(2 * MIB)
    ecr.faults.add(ULP, FaultKind.RESET, reset_after_bytes=64 * 1024)

    with pytest.raises(BotoCoreError):  # EndpointConnectionError over "connection reset"
        await put_part(aio_ecr_client, repository, upload_id, 0, data)
    record = ecr.requests(ULP)[0]
    assert (record.fault, record.status, record.accepted) == (FaultKind.RESET, None, False)
    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.bytes_received == 0

    assert await put_part(aio_ecr_client, repository, upload_id, 0, data) == len(data) - 1


def test_reset_fault_resets_while_the_client_is_still_sending(ecr: LocalEcr) -> None:
    ecr.faults.add(CHECK, FaultKind.RESET, reset_after_bytes=1000)
    port = int(ecr.endpoint_url.rsplit(":", 1)[1])
    head = (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.{CHECK}\r\n"
        "Content-Type: application/x-amz-json-1.1\r\nContent-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head.encode() + b" " * 2000)  # far from the announced million
        # The proxy read its 1000 bytes and answers nothing: a RST, not a response, not a FIN.
        with pytest.raises(ConnectionResetError):
            connection.recv(1)
    ecr.wait_idle()
    assert [(r.fault, r.status) for r in ecr.requests()] == [(FaultKind.RESET, None)]


@pytest.mark.anyio
async def test_lost_response_part_was_applied_and_its_retry_realigns(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.min_part_size = 1
    first, second = blob(1000, seed=1), blob(500, seed=2)
    upload_id = await initiate(aio_ecr_client, repository)
    ecr.faults.add(ULP, FaultKind.LOST_RESPONSE)

    with pytest.raises(BotoCoreError):
        await put_part(aio_ecr_client, repository, upload_id, 0, first)
    lost = ecr.requests(ULP)[0]
    assert (lost.fault, lost.status, lost.accepted) == (FaultKind.LOST_RESPONSE, None, True)
    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.last_byte_received == 999

    error = await client_error(put_part(aio_ecr_client, repository, upload_id, 0, first))
    assert error["Error"]["Code"] == "InvalidLayerPartException"
    assert error["lastValidByteReceived"] == 999

    await put_part(aio_ecr_client, repository, upload_id, 1000, second)
    answer = await aio_ecr_client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(first + second)]
    )
    assert answer["layerDigest"] == digest_of(first + second)
    assert [r.part_first_byte for r in ecr.accepted_parts(upload_id)] == [0, 1000]


@pytest.mark.anyio
async def test_lost_response_on_complete_leaves_the_layer_in_place(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    data = blob(1000)
    upload_id = await initiate(aio_ecr_client, repository)
    await put_part(aio_ecr_client, repository, upload_id, 0, data)
    ecr.faults.add(Operation.COMPLETE_LAYER_UPLOAD, FaultKind.LOST_RESPONSE)
    complete = {"repositoryName": repository, "uploadId": upload_id}

    with pytest.raises(BotoCoreError):
        await aio_ecr_client.complete_layer_upload(**complete, layerDigests=[digest_of(data)])
    error = await client_error(
        aio_ecr_client.complete_layer_upload(**complete, layerDigests=[digest_of(data)])
    )
    assert error["Error"]["Code"] == "UploadNotFoundException"
    checked = await aio_ecr_client.batch_check_layer_availability(
        repositoryName=repository, layerDigests=[digest_of(data)]
    )
    assert [layer["layerAvailability"] for layer in checked["layers"]] == ["AVAILABLE"]


@pytest.mark.anyio
async def test_delay_answers_late_without_blocking_other_requests(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.faults.add(CHECK, FaultKind.DELAY, delay_seconds=0.5)
    answers: list[float] = []

    async def delayed() -> None:
        started = time.monotonic()
        await aio_ecr_client.batch_check_layer_availability(
            repositoryName=repository, layerDigests=[digest_of(b"x")]
        )
        answers.append(time.monotonic() - started)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(delayed)
            await ecr.wait_for_request_async(CHECK)
            await ecr.wait_for_delay_async(CHECK)
            await initiate(aio_ecr_client, repository)
            assert answers == []  # the other request was answered while this one waits
    assert answers[0] >= 0.5
    assert [(r.operation, r.status) for r in ecr.requests()] == [
        (CHECK, 200),
        ("InitiateLayerUpload", 200),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "applied"), [(FaultKind.DELAY, False), (FaultKind.DELAY_AFTER_APPLY, True)]
)
async def test_client_leaving_a_delayed_request_ends_it(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient, kind: FaultKind, applied: bool
) -> None:
    upload_id = await initiate(aio_ecr_client, repository)
    ecr.faults.add(ULP, kind, delay_seconds=60)

    with anyio.fail_after(10):  # far below the delay: the proxy stopped waiting
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(put_part, aio_ecr_client, repository, upload_id, 0, b"abc")
            await ecr.wait_for_delay_async(ULP)
            tasks.cancel_scope.cancel()
        await ecr.wait_idle_async()

    record = ecr.requests(ULP)[0]
    assert (record.fault, record.status, record.accepted) == (kind, None, applied)
    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.bytes_received == (3 if applied else 0)


@pytest.mark.anyio
async def test_client_leaving_while_the_request_is_applied_upstream_keeps_proxy_and_moto_in_step(
    ecr: LocalEcr,
    repository: str,
    aio_ecr_client: ECRClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hold the proxy's write of the part until the client has gone: the only way to leave at
    # that exact moment. Everything else stays real HTTP.
    upload_id = await initiate(aio_ecr_client, repository)
    forwarding, release = threading.Event(), threading.Event()
    write_at = store._write_at

    def held_write(*args: Any) -> Any:
        forwarding.set()
        release.wait(10)
        return write_at(*args)

    monkeypatch.setattr(store, "_write_at", held_write)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(put_part, aio_ecr_client, repository, upload_id, 0, b"abc")
            await anyio.to_thread.run_sync(forwarding.wait)
            tasks.cancel_scope.cancel()
        release.set()
        await ecr.wait_idle_async()
    monkeypatch.undo()

    record = ecr.requests(ULP)[0]
    assert (record.status, record.accepted) == (None, True)
    snapshot = ecr.upload(upload_id)
    assert snapshot is not None
    assert snapshot.bytes_received == 3  # moto has the part, and the proxy knows it
    error = await client_error(put_part(aio_ecr_client, repository, upload_id, 0, b"abc"))
    assert error["lastValidByteReceived"] == 2


@pytest.mark.anyio
async def test_a_request_in_flight_across_a_reset_is_not_recorded(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.faults.add(CHECK, FaultKind.DELAY, delay_seconds=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                functools.partial(
                    aio_ecr_client.batch_check_layer_availability,
                    repositoryName=repository,
                    layerDigests=[digest_of(b"")],
                )
            )
            await ecr.wait_for_delay_async(CHECK)
            ecr.reset()
            tasks.cancel_scope.cancel()
        await ecr.wait_idle_async()
    assert ecr.requests() == []


# -- lifecycle and API --------------------------------------------------------------------------


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_start_and_stop_leave_no_thread_and_no_open_port() -> None:
    before = set(threading.enumerate())
    endpoint = LocalEcr(min_part_size=1, part_size=MIB)
    with pytest.raises(RuntimeError, match="not running"):
        _ = endpoint.endpoint_url
    with endpoint:
        assert endpoint.running
        urls = (endpoint.endpoint_url, endpoint.upstream_url)
        assert all(url.startswith("http://127.0.0.1:") for url in urls)
        assert not any(refuses_connections(url) for url in urls)
        name = f"lifecycle-{uuid.uuid4().hex[:12]}"
        assert endpoint.create_repository(name).endswith("/" + name)
        assert (endpoint.min_part_size, endpoint.part_size) == (1, MIB)
    assert not endpoint.running
    assert all(refuses_connections(url) for url in urls)
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)  # moto's request threads end right after their answer
        assert not thread.is_alive(), thread
    endpoint.stop()  # idempotent
    with pytest.raises(RuntimeError, match="starts once"):
        endpoint.start()


@pytest.mark.anyio
async def test_async_context_manager_and_stop_with_a_request_in_flight(
    aio_session: AioSession,
) -> None:
    name = f"lifecycle-{uuid.uuid4().hex[:12]}"
    async with LocalEcr() as endpoint:
        endpoint.create_repository(name)
        endpoint.faults.add(CHECK, FaultKind.DELAY, delay_seconds=60)
        config = AioConfig(retries={"total_max_attempts": 1})
        async with aio_session.create_client("ecr", config=config, **endpoint.client_kwargs()) as c:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tasks:

                    async def delayed() -> None:
                        with pytest.raises(BotoCoreError):
                            await c.batch_check_layer_availability(
                                repositoryName=name, layerDigests=[digest_of(b"")]
                            )

                    tasks.start_soon(delayed)
                    await endpoint.wait_for_delay_async(CHECK)
                    started = time.monotonic()
                    await anyio.to_thread.run_sync(endpoint.stop)
    assert time.monotonic() - started < 3  # the delay was cut short, not waited out
    assert not endpoint.running


def test_client_kwargs_point_at_the_proxy_with_dummy_credentials(ecr: LocalEcr) -> None:
    kwargs = ecr.client_kwargs()
    assert kwargs == {
        "region_name": "us-east-1",
        "endpoint_url": ecr.endpoint_url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    assert ecr.endpoint_url != ecr.upstream_url
    assert ecr.registry_id == "123456789012"


def test_waits_time_out(ecr: LocalEcr) -> None:
    with pytest.raises(TimeoutError, match="did not reach the proxy"):
        ecr.wait_for_request(CHECK, timeout=0.01)
    with pytest.raises(TimeoutError, match="did not start a delay"):
        ecr.wait_for_delay(CHECK, timeout=0.01)


@pytest.mark.parametrize(
    "arguments",
    [
        {"call": 0},
        {"times": 0},
        {"probability": 1.5},
        {"probability": -0.1},
        {"delay_seconds": -1},
        {"reset_after_bytes": -1},
    ],
)
def test_invalid_fault_is_a_value_error(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(ULP, FaultKind.RESET, **arguments)


@pytest.mark.parametrize(
    "arguments", [{"min_part_size": 0}, {"part_size": 0}, {"part_size": MAX_PART_SIZE + 1}]
)
def test_invalid_sizes_are_value_errors(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="part_size"):
        LocalEcr(**arguments)
