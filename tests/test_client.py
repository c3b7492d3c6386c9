"""EcrClient over real HTTP: aiobotocore -> the strict local proxy -> moto, all on 127.0.0.1.

Nothing here mocks aiobotocore or patches a response: every request goes over a socket and
the proxy's records say what was sent. What each group proves (issue 3, "Done when"):

- every method, through ``EcrClient.create(...)`` and through ``EcrClient(raw_client)``;
- retries: transient errors of every operation but UploadLayerPart are retried by EcrClient
  exactly ``RetryPolicy.max_attempts`` times in total, UploadLayerPart never, and botocore's
  own retries are vetoed whatever the wrapped client's Config says;
- cancellation: a canceled token sends nothing; a cancel during a delayed call ends it within
  a second and the client stays usable; a read timeout and an outside cancellation are not
  taken for a cancel;
- the UploadLayerPart fast path: ``prepare_part`` builds what botocore's serializer would, and
  that body (with its SHA-256 as the payload hash) is what goes on the wire.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import botocore.session
import pytest
import trustme
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import HTTPClientError
from botocore.serialize import create_serializer
from helpers import digest_of, push_layer, random_bytes
from lying_ecr import LyingEcr

from ecrstream.body import PartBody
from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenSource,
    OperationCanceledError,
)
from ecrstream.client import EcrClient
from ecrstream.errors import (
    CertificateVerificationError,
    EcrConnectionError,
    EcrServiceError,
    InvalidArgumentError,
    RepositoryNotFoundError,
    ServerError,
    ThrottlingError,
    is_transient,
)
from ecrstream.local import FaultKind, LocalEcr, Operation, RecordedRequest
from ecrstream.lowlevel import PreparedPart, prepare_part
from ecrstream.models import (
    MAX_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    BatchGetImageRequest,
    CompleteLayerUploadRequest,
    InitiateLayerUploadRequest,
    PutImageRequest,
    UploadLayerPartRequest,
)
from ecrstream.retry import RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

MIB = 1024 * 1024
INITIATE = Operation.INITIATE_LAYER_UPLOAD
UPLOAD_PART = Operation.UPLOAD_LAYER_PART
COMPLETE = Operation.COMPLETE_LAYER_UPLOAD
CHECK = Operation.BATCH_CHECK_LAYER_AVAILABILITY
PUT_IMAGE = Operation.PUT_IMAGE
GET_IMAGE = Operation.BATCH_GET_IMAGE
ALL_OPERATIONS = (INITIATE, UPLOAD_PART, COMPLETE, CHECK, PUT_IMAGE, GET_IMAGE)
RETRIED_OPERATIONS = (INITIATE, COMPLETE, CHECK, PUT_IMAGE, GET_IMAGE)
#: The default number of attempts, with no backoff so the retry tests take milliseconds.
NO_BACKOFF = RetryPolicy(base_delay=0.0)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: A raw aiobotocore client that sends exactly one request per call.
BOTOCORE_NO_RETRIES = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"})
#: What a caller might well configure: botocore retrying 5 times on its own.
BOTOCORE_FIVE_RETRIES = AioConfig(retries={"max_attempts": 5, "mode": "standard"})

Call = Callable[[CancellationToken], Coroutine[Any, Any, object]]


# -- helpers ---------------------------------------------------------------------------------


async def settled(ecr: LocalEcr, operation: str | None = None) -> list[RecordedRequest]:
    """The records once every request in flight has been recorded."""
    with anyio.fail_after(10):
        await ecr.wait_idle_async()
    return ecr.requests(operation)


def manifest_of(config: bytes, layers: list[bytes]) -> str:
    """An OCI image manifest for this config blob and these layer blobs."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        },
        separators=(",", ":"),
    )


async def push_blobs_for_manifest(client: EcrClient, repository: str, seed: int = 0) -> str:
    """Upload a config blob and a layer; returns a manifest that references both."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = random_bytes(4096, seed)
    await push_layer(client, repository, config)
    await push_layer(client, repository, layer)
    return manifest_of(config, [layer])


async def prepare_call(operation: str, client: EcrClient, repository: str) -> Call:
    """Set up the state ``operation`` needs and return a call of it that may be repeated once.

    Each call is one the proxy can delay or fail without applying it, so calling it again
    afterwards succeeds: the way to show a client is still usable.
    """
    if operation == INITIATE:
        request = InitiateLayerUploadRequest(repository)
        return lambda token: client.initiate_layer_upload(request, token)
    if operation == CHECK:
        check = BatchCheckLayerAvailabilityRequest(repository, (digest_of(b"absent"),))
        return lambda token: client.batch_check_layer_availability(check, token)
    if operation in (UPLOAD_PART, COMPLETE):
        data = random_bytes(1000, seed=7)
        upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
        part = UploadLayerPartRequest(repository, upload.upload_id, 0, len(data) - 1, data)
        if operation == UPLOAD_PART:
            return lambda token: client.upload_layer_part(part, token)
        await client.upload_layer_part(part)
        complete = CompleteLayerUploadRequest(repository, upload.upload_id, (digest_of(data),))
        return lambda token: client.complete_layer_upload(complete, token)
    manifest = await push_blobs_for_manifest(client, repository)
    put = PutImageRequest(repository, manifest, OCI_MANIFEST, image_tag="v1")
    if operation == PUT_IMAGE:
        return lambda token: client.put_image(put, token)
    await client.put_image(put)
    get = BatchGetImageRequest(repository, ("v1",))
    return lambda token: client.batch_get_image(get, token)


async def expect_canceled_quickly(
    ecr: LocalEcr, operation: str, call: Call, cancel: Callable[[CancellationTokenSource], Any]
) -> float:
    """Run ``call`` into a DELAY fault, cancel it there; returns seconds from cancel to raise."""
    ecr.faults.add(operation, FaultKind.DELAY, delay_seconds=30.0)
    source = CancellationTokenSource()
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            await call(source.token)
        except BaseException as exc:
            outcome["raised_at"] = time.monotonic()
            outcome["error"] = exc
            if not isinstance(exc, Exception):
                raise

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(10):
            await ecr.wait_for_delay_async(operation)
        canceled_at = time.monotonic()
        result = cancel(source)
        if isinstance(result, Awaitable):
            await result
    error = outcome.get("error")
    assert isinstance(error, OperationCanceledError), f"{operation} ended with {error!r}"
    assert error.cancellation_token == source.token
    elapsed: float = outcome["raised_at"] - canceled_at
    return elapsed


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def client(
    ecr: LocalEcr, aio_session: AioSession, anyio_backend: str
) -> AsyncIterator[EcrClient]:
    """An EcrClient made by ``EcrClient.create`` on the proxy; transient retries: no backoff."""
    async with EcrClient.create(
        **ecr.client_kwargs(), session=aio_session, retry=NO_BACKOFF
    ) as made:
        yield made


def raw_client(ecr: LocalEcr, aio_session: AioSession, config: AioConfig) -> Any:
    """A raw aiobotocore ECR client context on the proxy (the caller enters it)."""
    return aio_session.create_client("ecr", config=config, **ecr.client_kwargs())


# -- every method ----------------------------------------------------------------------------


async def test_layer_upload_round_trip_through_create(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    data = random_bytes(3000, seed=1)

    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    assert uuid.UUID(upload.upload_id)
    assert upload.part_size == 10 * MIB  # what ECR (and moto) answer

    part = await client.upload_layer_part(
        UploadLayerPartRequest(repository, upload.upload_id, 0, len(data) - 1, data)
    )
    assert part.last_byte_received == len(data) - 1
    assert part.upload_id == upload.upload_id
    assert part.repository_name == repository
    assert part.registry_id == ecr.registry_id

    done = await client.complete_layer_upload(
        CompleteLayerUploadRequest(repository, upload.upload_id, (digest_of(data),))
    )
    assert done.layer_digest == digest_of(data)
    assert (done.upload_id, done.repository_name) == (upload.upload_id, repository)
    assert done.registry_id == ecr.registry_id

    records = await settled(ecr)
    assert [r.operation for r in records] == [INITIATE, UPLOAD_PART, COMPLETE]
    assert all(r.status == 200 and r.fault is None for r in records)
    sent = records[1]
    assert (sent.part_first_byte, sent.part_last_byte, sent.blob_length) == (0, 2999, 3000)
    assert sent.blob_sha256 == hashlib.sha256(data).hexdigest()
    assert records[2].layer_digests == (digest_of(data),)


async def test_multi_part_layer_at_ecr_minimum_part_size(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    data = random_bytes(5 * MIB + 1234, seed=2)
    first, second = data[: 5 * MIB], data[5 * MIB :]
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))

    answers = [
        await client.upload_layer_part(
            UploadLayerPartRequest(
                repository, upload.upload_id, offset, offset + len(chunk) - 1, chunk
            )
        )
        for offset, chunk in ((0, first), (len(first), second))
    ]
    assert [a.last_byte_received for a in answers] == [5 * MIB - 1, len(data) - 1]
    done = await client.complete_layer_upload(
        CompleteLayerUploadRequest(repository, upload.upload_id, (digest_of(data),))
    )
    assert done.layer_digest == digest_of(data)
    accepted = ecr.accepted_parts(upload.upload_id)
    assert [(r.part_first_byte, r.blob_length) for r in accepted] == [
        (0, 5 * MIB),
        (5 * MIB, 1234),
    ]


async def test_initiate_reports_the_part_size_the_endpoint_asks_for(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    ecr.part_size = 6 * MIB
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    assert upload.part_size == 6 * MIB


async def test_batch_check_layer_availability_reports_layers_and_failures(
    client: EcrClient, repository: str
) -> None:
    data = random_bytes(2048, seed=3)
    present = await push_layer(client, repository, data)
    absent = digest_of(b"never uploaded")

    answer = await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(repository, (present, absent))
    )

    assert answer.available_digests() == {present}
    (layer,) = answer.layers
    assert (layer.layer_digest, layer.layer_size, layer.available) == (present, 2048, True)
    (failure,) = answer.failures
    assert failure.layer_digest == absent
    assert failure.failure_code == "MissingLayerDigest"


async def test_put_image_and_batch_get_image_by_tag_and_digest(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    manifest = await push_blobs_for_manifest(client, repository)

    put = await client.put_image(
        PutImageRequest(
            repository,
            manifest,
            image_manifest_media_type=OCI_MANIFEST,
            image_tag="v1.0",
            image_digest=digest_of(manifest),
        )
    )
    assert put.image.image_digest == digest_of(manifest)
    assert put.image.image_tag == "v1.0"
    assert put.image.repository_name == repository
    assert put.image.registry_id == ecr.registry_id

    by_tag = await client.batch_get_image(BatchGetImageRequest(repository, ("v1.0",)))
    by_digest = await client.batch_get_image(
        BatchGetImageRequest(repository, (digest_of(manifest),))
    )
    for answer in (by_tag, by_digest):
        (image,) = answer.images
        assert image.image_manifest == manifest
        assert image.image_digest == digest_of(manifest)
        assert answer.failures == ()

    missing = await client.batch_get_image(BatchGetImageRequest(repository, ("no-such-tag",)))
    assert missing.images == ()
    assert [f.get("failureCode") for f in missing.failures] == ["ImageNotFound"]


async def test_wrapped_client_serves_every_method_and_is_never_closed(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    async with raw_client(ecr, aio_session, BOTOCORE_NO_RETRIES) as raw:
        wrapped = EcrClient(raw, retry=NO_BACKOFF)
        assert wrapped.aiobotocore_client is raw
        manifest = await push_blobs_for_manifest(wrapped, repository)
        layer_digests = [layer["digest"] for layer in json.loads(manifest)["layers"]]
        check = await wrapped.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(repository, tuple(layer_digests))
        )
        assert check.available_digests() == set(layer_digests)
        await wrapped.put_image(PutImageRequest(repository, manifest, image_tag="wrapped"))
        got = await wrapped.batch_get_image(BatchGetImageRequest(repository, ("wrapped",)))
        assert [image.image_manifest for image in got.images] == [manifest]

        del wrapped  # dropping the wrapper must leave the caller's client working
        answer = await raw.initiate_layer_upload(repositoryName=repository)
        assert uuid.UUID(answer["uploadId"])

    operations = {r.operation for r in await settled(ecr)}
    assert operations == set(ALL_OPERATIONS)


async def test_create_closes_the_client_it_made(ecr: LocalEcr, repository: str) -> None:
    async with EcrClient.create(**ecr.client_kwargs()) as made:
        await made.initiate_layer_upload(InitiateLayerUploadRequest(repository))
        raw = made.aiobotocore_client
    with pytest.raises(HTTPClientError):  # its HTTP session is gone
        await raw.initiate_layer_upload(repositoryName=repository)


async def test_create_leaves_the_garbage_collector_as_it_found_it(ecr: LocalEcr) -> None:
    # create() pauses the collector while botocore builds the client, and only that long.
    assert gc.isenabled()
    async with EcrClient.create(**ecr.client_kwargs()):
        assert gc.isenabled()
    gc.disable()
    try:
        async with EcrClient.create(**ecr.client_kwargs()):
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_create_lets_exceptions_of_the_body_through_untranslated(
    ecr: LocalEcr, aio_session: AioSession
) -> None:
    # An OSError or TimeoutError of the caller's own code is not a connection failure of
    # CreateClient: it must come out exactly as raised.
    for error in (FileNotFoundError("layer.tar"), TimeoutError("mine")):
        with pytest.raises(type(error)) as caught:
            async with EcrClient.create(**ecr.client_kwargs(), session=aio_session):
                raise error
        assert caught.value is error


async def test_create_without_a_region_is_a_value_error(
    ecr: LocalEcr, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/ecrstream-test-config")
    kwargs = dict(ecr.client_kwargs())
    del kwargs["region_name"]
    with pytest.raises(ValueError, match=r"^region_name: "):
        async with EcrClient.create(**kwargs) as made:  # type: ignore[arg-type]
            await made.initiate_layer_upload(InitiateLayerUploadRequest("some-repository"))
    assert await settled(ecr) == []


async def test_create_takes_aws_region_before_aws_default_region(
    ecr: LocalEcr, monkeypatch: pytest.MonkeyPatch, repository: str
) -> None:
    # AWS_REGION is what the AWS CLI and the other SDKs read (botocore only reads
    # AWS_DEFAULT_REGION); as in the AWS CLI, it wins over AWS_DEFAULT_REGION.
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)  # CodeBuild, GitHub's AWS action set it
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/ecrstream-test-config")
    kwargs = dict(ecr.client_kwargs())
    del kwargs["region_name"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    async with EcrClient.create(**kwargs) as made:  # type: ignore[arg-type]
        assert made.region_name == "ap-south-1"
    monkeypatch.setenv("AWS_REGION", ecr.region_name)
    async with EcrClient.create(**kwargs) as made:  # type: ignore[arg-type]
        assert made.region_name == ecr.region_name
        # and the requests go to that region (the repository is there, not in ap-south-1)
        await made.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    async with EcrClient.create(**kwargs, region_name="eu-west-2") as made:  # type: ignore[arg-type]
        assert made.region_name == "eu-west-2"  # an explicit region still comes first


async def test_create_keeps_a_sessions_own_region_and_refuses_a_bad_aws_region(
    ecr: LocalEcr, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobotocore.session import AioSession

    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/ecrstream-test-config")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    kwargs: dict[str, Any] = dict(ecr.client_kwargs())
    del kwargs["region_name"]
    session = AioSession()
    session.set_config_variable("region", ecr.region_name)  # as boto3's Session(region_name=)
    async with EcrClient.create(**{**kwargs, "session": session}) as made:
        assert made.region_name == ecr.region_name

    for bad in ("nowhere 1", "us-east-1\n"):
        monkeypatch.setenv("AWS_REGION", bad)
        with pytest.raises(InvalidArgumentError) as caught:
            async with EcrClient.create(**kwargs):
                pass
        assert caught.value.field == "region_name"
        assert "from AWS_REGION" in str(caught.value)
    with pytest.raises(InvalidArgumentError, match="from region_name"):
        async with EcrClient.create(**{**kwargs, "region_name": "us east 1"}):
            pass
    assert await settled(ecr) == []


async def test_repr_names_the_endpoint_and_never_the_keys(
    ecr: LocalEcr, aio_session: AioSession
) -> None:
    async with EcrClient.create(
        session=aio_session,
        region_name="eu-west-1",
        endpoint_url=ecr.endpoint_url,
        aws_access_key_id="AKIDEXAMPLEKEYID1234",
        aws_secret_access_key="very-secret-key-material",
    ) as made:
        shown = repr(made)
    assert made.region_name == "eu-west-1"
    assert ecr.endpoint_url in shown
    assert "eu-west-1" in shown
    assert "AKIDEXAMPLE" not in shown
    assert "very-secret" not in shown


# -- retries ---------------------------------------------------------------------------------

TRANSIENT_FAULTS = {
    FaultKind.SERVER_EXCEPTION: ServerError,
    FaultKind.HTTP_500: ServerError,
    FaultKind.THROTTLING: ThrottlingError,
    FaultKind.RESET: EcrConnectionError,
}


@pytest.mark.parametrize("kind", list(TRANSIENT_FAULTS), ids=lambda k: k.value)
@pytest.mark.parametrize("operation", RETRIED_OPERATIONS)
async def test_transient_errors_are_tried_exactly_max_attempts_times(
    client: EcrClient, ecr: LocalEcr, repository: str, operation: str, kind: FaultKind
) -> None:
    call = await prepare_call(operation, client, repository)
    ecr.reset()
    ecr.faults.add(operation, kind, times=None)

    with pytest.raises(TRANSIENT_FAULTS[kind]):
        await call(CancellationToken.NONE)

    records = await settled(ecr)
    assert client.retry.max_attempts == RetryPolicy().max_attempts == 3
    assert [(r.operation, r.fault) for r in records] == [(operation, kind)] * 3


@pytest.mark.parametrize("operation", RETRIED_OPERATIONS)
async def test_a_transient_error_then_success_returns_the_answer(
    client: EcrClient, ecr: LocalEcr, repository: str, operation: str
) -> None:
    call = await prepare_call(operation, client, repository)
    ecr.reset()
    ecr.faults.add(operation, FaultKind.SERVER_EXCEPTION, times=1)
    ecr.faults.add(operation, FaultKind.THROTTLING, call=2, times=1)

    await call(CancellationToken.NONE)

    records = await settled(ecr)
    assert [(r.status, r.error_code) for r in records] == [
        (500, "ServerException"),
        (400, "ThrottlingException"),
        (200, None),
    ]


@pytest.mark.parametrize("attempts", [1, 2, 5])
async def test_the_per_call_retry_policy_sets_the_number_of_requests(
    client: EcrClient, ecr: LocalEcr, repository: str, attempts: int
) -> None:
    ecr.faults.add(CHECK, FaultKind.THROTTLING, times=None)
    request = BatchCheckLayerAvailabilityRequest(repository, (digest_of(b"x"),))
    with pytest.raises(ThrottlingError):
        await client.batch_check_layer_availability(
            request, retry=RetryPolicy(max_attempts=attempts, base_delay=0.0)
        )
    assert len(await settled(ecr, CHECK)) == attempts


async def test_errors_that_are_not_transient_are_not_retried(
    client: EcrClient, ecr: LocalEcr
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        await client.initiate_layer_upload(InitiateLayerUploadRequest("no-such-repository"))
    ecr.faults.add(CHECK, FaultKind.UPLOAD_NOT_FOUND, times=None)  # a 400 that is no throttle
    with pytest.raises(EcrServiceError) as caught:
        await client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest("no-such-repository", (digest_of(b"x"),))
        )
    assert caught.value.code == "UploadNotFoundException"
    assert [r.operation for r in await settled(ecr)] == [INITIATE, CHECK]


@pytest.mark.parametrize(
    "kind",
    [*TRANSIENT_FAULTS, FaultKind.LOST_RESPONSE, FaultKind.UPLOAD_NOT_FOUND],
    ids=lambda k: k.value,
)
async def test_upload_layer_part_is_never_retried(
    ecr: LocalEcr, repository: str, kind: FaultKind, aio_session: AioSession
) -> None:
    async with EcrClient.create(
        **ecr.client_kwargs(),
        session=aio_session,
        retry=RetryPolicy(max_attempts=5, base_delay=0.0),
    ) as made:
        call = await prepare_call(UPLOAD_PART, made, repository)
        ecr.reset()
        ecr.faults.add(UPLOAD_PART, kind, times=None)
        with pytest.raises((EcrServiceError, EcrConnectionError)):
            await call(CancellationToken.NONE)
    (record,) = await settled(ecr)
    assert (record.operation, record.fault) == (UPLOAD_PART, kind)


@pytest.mark.parametrize("mode", ["standard", "legacy"])
async def test_botocore_retries_of_a_wrapped_client_are_suppressed(
    ecr: LocalEcr, repository: str, mode: str, aio_session: AioSession
) -> None:
    config = AioConfig(retries={"max_attempts": 5, "mode": mode})
    async with raw_client(ecr, aio_session, config) as raw:
        wrapped = EcrClient(raw, retry=RetryPolicy(max_attempts=2, base_delay=0.0))
        for operation in ALL_OPERATIONS:
            ecr.reset()
            # A repository per operation: the setups upload the same layers.
            fresh = f"{repository}/{operation.lower()}"
            ecr.create_repository(fresh)
            call = await prepare_call(operation, wrapped, fresh)
            ecr.reset()
            ecr.faults.add(operation, FaultKind.THROTTLING, times=None)
            with pytest.raises(ThrottlingError):
                await call(CancellationToken.NONE)
            expected = 1 if operation == UPLOAD_PART else 2
            assert len(await settled(ecr, operation)) == expected, operation


async def test_botocore_retries_are_suppressed_for_a_client_from_create(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    async with EcrClient.create(
        **ecr.client_kwargs(), session=aio_session, config=BOTOCORE_FIVE_RETRIES, retry=NO_BACKOFF
    ) as made:
        for operation in (CHECK, UPLOAD_PART):
            ecr.reset()
            call = await prepare_call(operation, made, repository)
            ecr.reset()
            ecr.faults.add(operation, FaultKind.SERVER_EXCEPTION, times=None)
            with pytest.raises(ServerError):
                await call(CancellationToken.NONE)
            expected = 1 if operation == UPLOAD_PART else NO_BACKOFF.max_attempts
            assert len(await settled(ecr, operation)) == expected, operation


async def test_calls_outside_ecrclient_keep_botocore_retries(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    # The control for the two tests above: the same kind of client, wrapped, still retries
    # on its own when called directly, so the fault is one botocore would retry.
    async with raw_client(ecr, aio_session, BOTOCORE_FIVE_RETRIES) as raw:
        EcrClient(raw)
        ecr.faults.add(CHECK, FaultKind.THROTTLING, times=1)
        answer = await raw.batch_check_layer_availability(
            repositoryName=repository, layerDigests=[digest_of(b"x")]
        )
    assert answer["failures"][0]["failureCode"] == "MissingLayerDigest"
    assert [r.status for r in await settled(ecr, CHECK)] == [400, 200]


# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ALL_OPERATIONS)
async def test_a_canceled_token_raises_before_anything_is_sent(
    client: EcrClient, ecr: LocalEcr, repository: str, operation: str
) -> None:
    call = await prepare_call(operation, client, repository)
    ecr.reset()
    source = CancellationTokenSource()
    source.cancel()

    with pytest.raises(OperationCanceledError) as caught:
        await call(source.token)
    assert caught.value.cancellation_token == source.token

    await call(CancellationToken.NONE)  # the same call, uncanceled, does reach the proxy
    assert [r.operation for r in await settled(ecr)] == [operation]


@pytest.mark.parametrize("operation", ALL_OPERATIONS)
async def test_cancel_during_a_delayed_call_ends_it_at_once_and_the_client_goes_on(
    client: EcrClient, ecr: LocalEcr, repository: str, operation: str
) -> None:
    call = await prepare_call(operation, client, repository)
    ecr.reset()

    elapsed = await expect_canceled_quickly(ecr, operation, call, lambda s: s.cancel())

    assert elapsed < 1.0, f"cancel took {elapsed:.3f} s"
    await call(CancellationToken.NONE)  # same client, same request: now it goes through
    records = await settled(ecr)
    assert [(r.operation, r.status, r.accepted) for r in records] == [
        (operation, None, False),  # the delayed request: never answered, never applied
        (operation, 200, True),
    ]


async def test_cancel_from_another_thread_ends_a_delayed_part_upload(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    call = await prepare_call(UPLOAD_PART, client, repository)
    ecr.reset()

    elapsed = await expect_canceled_quickly(
        ecr, UPLOAD_PART, call, lambda s: anyio.to_thread.run_sync(s.cancel)
    )

    assert elapsed < 1.0, f"cancel took {elapsed:.3f} s"
    await call(CancellationToken.NONE)


class _LongBackoff(RetryPolicy):
    """A policy whose backoff is always an hour: a cancel can only end it."""

    def delay(self, retry_number: int) -> float:
        return 3600.0


async def test_cancel_during_the_retry_backoff_raises_and_sends_no_retry(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    async with EcrClient.create(
        **ecr.client_kwargs(), session=aio_session, retry=_LongBackoff()
    ) as made:
        call = await prepare_call(CHECK, made, repository)
        ecr.reset()
        ecr.faults.add(CHECK, FaultKind.THROTTLING, times=None)
        source = CancellationTokenSource()
        raised: list[Exception] = []

        async def run() -> None:
            try:
                await call(source.token)
            except Exception as exc:
                raised.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            with anyio.fail_after(10):
                await ecr.wait_for_request_async(CHECK)
                await ecr.wait_idle_async()  # answered: the client is backing off now
            source.cancel()
    assert [type(exc) for exc in raised] == [OperationCanceledError]
    assert len(await settled(ecr, CHECK)) == 1


async def test_a_read_timeout_is_a_connection_error_not_a_cancel(
    ecr: LocalEcr, repository: str, aio_session: AioSession
) -> None:
    source = CancellationTokenSource()
    async with EcrClient.create(
        **ecr.client_kwargs(),
        session=aio_session,
        config=Config(read_timeout=0.2, connect_timeout=5),
        retry=RetryPolicy(max_attempts=2, base_delay=0.0),
    ) as made:
        part = await prepare_call(UPLOAD_PART, made, repository)
        check = await prepare_call(CHECK, made, repository)
        ecr.reset()
        ecr.faults.add(UPLOAD_PART, FaultKind.DELAY, times=None, delay_seconds=30.0)
        ecr.faults.add(CHECK, FaultKind.DELAY, times=None, delay_seconds=30.0)

        for call in (part, check):
            with pytest.raises(EcrConnectionError) as caught:
                await call(source.token)
            assert caught.value.timed_out is True
            assert not isinstance(caught.value, OperationCanceledError)

    assert not source.is_cancellation_requested
    records = await settled(ecr)
    # a timed-out part is not retried; a timed-out check is (it is transient), twice in all
    assert [r.operation for r in records] == [UPLOAD_PART, CHECK, CHECK]


async def test_an_outside_cancellation_stays_a_cancellation(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    call = await prepare_call(UPLOAD_PART, client, repository)
    ecr.reset()
    ecr.faults.add(UPLOAD_PART, FaultKind.DELAY, delay_seconds=30.0)
    source = CancellationTokenSource()

    # An OperationCanceledError here would escape the task group as an ExceptionGroup.
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(call, source.token)
            with anyio.fail_after(10):
                await ecr.wait_for_delay_async(UPLOAD_PART)
            scope.cancel()
    assert scope.cancelled_caught
    assert not source.is_cancellation_requested

    await call(source.token)  # and the client is still usable


# -- the UploadLayerPart fast path -----------------------------------------------------------

B64_SLICE = 3 * 256 * 1024  # prepare_part encodes in slices of this many bytes


def botocore_body(request: UploadLayerPartRequest) -> bytes:
    """The body botocore's own JSON serializer makes for this request."""
    model = botocore.session.get_session().get_service_model("ecr")
    params: dict[str, Any] = {
        "repositoryName": request.repository_name,
        "uploadId": request.upload_id,
        "partFirstByte": request.part_first_byte,
        "partLastByte": request.part_last_byte,
        "layerPartBlob": bytes(request.layer_part_blob),
    }
    if request.registry_id is not None:
        params["registryId"] = request.registry_id
    serialized = create_serializer("json").serialize_to_request(
        params, model.operation_model("UploadLayerPart")
    )
    body = serialized["body"]
    assert isinstance(body, bytes)
    return body


@pytest.mark.parametrize(
    "size",
    [1, 2, 3, 4, 1000, B64_SLICE - 1, B64_SLICE, B64_SLICE + 1, 2 * B64_SLICE + 2],
)
@pytest.mark.parametrize("registry_id", [None, "123456789012"])
def test_prepare_part_builds_the_body_botocore_would(size: int, registry_id: str | None) -> None:
    data = random_bytes(size, seed=size)
    request = UploadLayerPartRequest(
        "name/space-repo",
        str(uuid.uuid4()),
        7 * MIB,
        7 * MIB + size - 1,
        data,
        registry_id=registry_id,
    )

    prepared = prepare_part(request)

    ours, theirs = bytes(prepared.body), botocore_body(request)
    assert json.loads(ours) == json.loads(theirs)
    assert base64.b64decode(json.loads(ours)["layerPartBlob"]) == data
    assert prepared.body_sha256 == hashlib.sha256(ours).hexdigest()
    assert (prepared.part_first_byte, prepared.part_last_byte) == (7 * MIB, 7 * MIB + size - 1)
    assert prepared.size == size


@pytest.mark.parametrize("blob_type", [bytearray, memoryview])
def test_prepare_part_takes_any_bytes_like_blob(blob_type: type[Any]) -> None:
    data = random_bytes(4097, seed=4)
    request = UploadLayerPartRequest("repo", str(uuid.uuid4()), 0, 4096, blob_type(data))
    expected = json.loads(
        botocore_body(UploadLayerPartRequest("repo", request.upload_id, 0, 4096, data))
    )
    assert json.loads(bytes(prepare_part(request).body)) == expected


def test_prepare_part_reuses_a_buffer_even_while_an_earlier_part_is_held() -> None:
    upload_id = str(uuid.uuid4())
    small = UploadLayerPartRequest("repo", upload_id, 0, 99, random_bytes(100, 1))
    large = UploadLayerPartRequest("repo", upload_id, 100, 100_099, random_bytes(100_000, 2))
    buffer = bytearray()

    held = prepare_part(small, buffer)  # its body views the buffer while we keep it
    grown = prepare_part(large, buffer)
    assert json.loads(bytes(grown.body)) == json.loads(botocore_body(large))

    again = prepare_part(small, bytearray(10 * len(grown.body)))  # larger than needed
    assert bytes(again.body) == bytes(prepare_part(small).body)
    assert held.size == 100


async def body_bytes(body: Any) -> bytes:
    """The bytes of a request body: bytes-like, or an async iterable of slices.

    A fresh iteration of the body reads the same view aiohttp then sends; it takes nothing
    from the request.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    return b"".join([bytes(piece) async for piece in body])


async def test_a_part_body_goes_out_as_a_short_first_slice_then_mebibyte_slices() -> None:
    # aiohttp joins the request head with the first slice (a copy): that slice stays short.
    body = random_bytes(3 * MIB + 7, seed=4)
    pieces = [bytes(piece) async for piece in PartBody(memoryview(body))]
    assert b"".join(pieces) == body
    assert [len(piece) for piece in pieces] == [16 * 1024, MIB, MIB, MIB - 16 * 1024 + 7]
    assert len(PartBody(body)) == len(body)


async def test_the_prepared_body_and_its_hash_are_what_goes_on_the_wire(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    data = random_bytes(MIB + 5, seed=5)
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    request = UploadLayerPartRequest(repository, upload.upload_id, 0, len(data) - 1, data)
    prepared = prepare_part(request)
    sent: list[tuple[str | bytes, bytes]] = []

    async def observe(request: Any, **_: Any) -> None:
        # Observes the signed request aiobotocore is about to send; changes nothing.
        sent.append((request.headers["X-Amz-Content-SHA256"], await body_bytes(request.body)))

    events = client.aiobotocore_client.meta.events
    events.register("before-send.ecr.UploadLayerPart", observe)
    try:
        answer = await client.upload_prepared_part(prepared)
    finally:
        events.unregister("before-send.ecr.UploadLayerPart", observe)

    assert answer.last_byte_received == len(data) - 1
    ((header, body),) = sent
    if isinstance(header, bytes):  # aiobotocore encodes header values before sending
        header = header.decode("ascii")
    assert body == bytes(prepared.body)
    assert header == hashlib.sha256(body).hexdigest() == prepared.body_sha256
    (record,) = await settled(ecr, UPLOAD_PART)
    assert record.blob_sha256 == hashlib.sha256(data).hexdigest()
    assert record.blob_length == len(data)
    assert record.accepted


async def test_upload_layer_part_sends_the_body_prepare_part_builds(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    data = random_bytes(70_001, seed=6)
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    request = UploadLayerPartRequest(repository, upload.upload_id, 0, len(data) - 1, data)
    sent: list[bytes] = []

    async def observe(request: Any, **_: Any) -> None:
        sent.append(await body_bytes(request.body))

    events = client.aiobotocore_client.meta.events
    events.register("before-send.ecr.UploadLayerPart", observe)
    try:
        await client.upload_layer_part(request)
    finally:
        events.unregister("before-send.ecr.UploadLayerPart", observe)

    assert sent == [bytes(prepare_part(request).body)]
    (record,) = await settled(ecr, UPLOAD_PART)
    assert record.blob_sha256 == hashlib.sha256(data).hexdigest()


async def test_the_user_agent_is_botocores_own_and_built_once_per_feature_set(
    ecr: LocalEcr, repository: str, aio_session: AioSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.useragent import UserAgentString

    original = UserAgentString.to_string
    built: list[str] = []

    def counting(self: Any) -> str:
        text: str = original(self)
        built.append(text)
        return text

    monkeypatch.setattr(UserAgentString, "to_string", counting)
    sent: list[tuple[str, str]] = []
    async with raw_client(ecr, aio_session, BOTOCORE_NO_RETRIES) as raw:
        wrapped = EcrClient(raw, retry=NO_BACKOFF)
        creator = raw._user_agent_creator

        async def observe(request: Any, **_: Any) -> None:
            # The header about to be sent, and what botocore's own builder makes right now.
            header = request.headers["User-Agent"]
            if isinstance(header, bytes):
                header = header.decode("ascii")
            sent.append((header, original(creator)))

        raw.meta.events.register("before-send.ecr", observe)
        upload = await wrapped.initiate_layer_upload(InitiateLayerUploadRequest(repository))
        for index in range(4):
            data = random_bytes(1000, seed=index)
            first = 1000 * index
            request = UploadLayerPartRequest(repository, upload.upload_id, first, first + 999, data)
            await wrapped.upload_prepared_part(prepare_part(request))
        raw.meta.events.unregister("before-send.ecr", observe)

    assert len(sent) == 5
    assert all(header == expected for header, expected in sent)
    assert sent[0][0].startswith("aiobotocore/")
    # botocore alone builds it twice per request (10 here): for the request dict, with the
    # call's features so far, then with all of them. Now once per feature set, never again.
    assert len(built) == len(set(built)) <= 2


async def test_a_prepared_part_over_the_size_limit_is_refused_before_sending(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    oversized = PreparedPart(
        body=b"{}",
        body_sha256=hashlib.sha256(b"{}").hexdigest(),
        repository_name=repository,
        registry_id=None,
        upload_id=upload.upload_id,
        part_first_byte=0,
        part_last_byte=MAX_PART_SIZE,  # MAX_PART_SIZE + 1 bytes
    )
    with pytest.raises(ValueError, match=r"^layer_part_blob: "):
        await client.upload_prepared_part(oversized)
    assert await settled(ecr, UPLOAD_PART) == []


# -- TLS certificates and the endpoint's host -------------------------------------------------


def endpoint_kwargs(ecr: LocalEcr, endpoint_url: str) -> dict[str, Any]:
    return {**ecr.client_kwargs(), "endpoint_url": endpoint_url}


@pytest.fixture
def tls_proxy(ecr: LocalEcr) -> Iterator[tuple[LyingEcr, trustme.CA]]:
    """The local endpoint behind HTTPS, with a certificate for localhost from a new CA."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with LyingEcr(ecr, ssl=context) as proxy:
        yield proxy, ca


async def test_an_untrusted_certificate_fails_at_once_and_says_how_to_trust_it(
    ecr: LocalEcr,
    repository: str,
    tls_proxy: tuple[LyingEcr, trustme.CA],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13 item 4: it was retried as transient (max_attempts handshakes), then raised
    as a connection error."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    proxy, _ = tls_proxy
    url = f"https://localhost:{proxy.port}"
    async with EcrClient.create(**endpoint_kwargs(ecr, url)) as client:
        assert client.retry.max_attempts == 3
        with pytest.raises(CertificateVerificationError) as caught:
            await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))

    assert proxy.handshakes == 1  # permanent: one attempt
    assert not is_transient(caught.value)
    assert caught.value.operation == "InitiateLayerUpload"
    text = str(caught.value)
    for needed in ("InitiateLayerUpload", "certificate", "AWS_CA_BUNDLE", "--ca-bundle"):
        assert needed in text
    assert "--no-verify-ssl" in text
    assert proxy.hosts == []  # no request went through


@pytest.mark.parametrize("how", ["bundle", "bundle-path", "no-verify", "environment"])
async def test_a_certificate_is_trusted_through_a_bundle_or_not_checked(
    ecr: LocalEcr,
    repository: str,
    tls_proxy: tuple[LyingEcr, trustme.CA],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    proxy, ca = tls_proxy
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    choices: dict[str, bool | str | Path | None] = {
        "bundle": str(bundle),
        "bundle-path": bundle,
        "no-verify": False,
        "environment": None,
    }
    verify = choices[how]
    if how == "environment":
        monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    url = f"https://localhost:{proxy.port}"
    async with EcrClient.create(**endpoint_kwargs(ecr, url), verify=verify) as client:
        upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    assert upload.upload_id
    assert len(proxy.hosts) == 1


@pytest.mark.parametrize(
    ("verify", "rule"),
    [(42, "must be None, True, False or a CA bundle path"), ("/no/such/ca.pem", "no such CA")],
)
async def test_a_bad_verify_is_refused_before_any_request(
    ecr: LocalEcr, verify: Any, rule: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        async with EcrClient.create(**ecr.client_kwargs(), verify=verify):
            pass  # pragma: no cover - never entered
    assert caught.value.field == "verify"
    assert rule in caught.value.rule
    assert ecr.requests() == []


async def test_a_mixed_case_endpoint_host_is_sent_as_botocore_signs_it(
    ecr: LocalEcr, repository: str
) -> None:
    """Issue 13 item 5: aiohttp sent Host: LocalHost:PORT, botocore signed localhost:PORT."""
    with LyingEcr(ecr) as proxy:
        url = f"http://LocalHost:{proxy.port}"
        async with EcrClient.create(**endpoint_kwargs(ecr, url)) as client:
            await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
            assert f"localhost:{proxy.port}" in repr(client)
        assert proxy.hosts == [f"localhost:{proxy.port}"]
