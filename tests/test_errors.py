"""The error tree and the one translation boundary, over real HTTP and on botocore's own types.

Over HTTP (aiobotocore -> the strict local proxy -> moto on 127.0.0.1, nothing mocked): every
ECR error the endpoint can produce, and every fault the proxy injects, reaches the caller as
the matching ``EcrServiceError`` subclass (with ``code``, ``message``, ``operation``,
``request_id``) or as ``EcrConnectionError``. Codes no local server can produce are checked
by handing ``translate_botocore_error`` the ``ClientError`` botocore itself would raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import anyio
import botocore.session
import pytest
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from helpers import digest_of, push_layer, random_bytes

import ecrstream.errors
from ecrstream.cancellation import OperationCanceledError
from ecrstream.client import EcrClient
from ecrstream.errors import (
    AuthenticationError,
    CredentialsError,
    EcrConnectionError,
    EcrServiceError,
    EcrStreamError,
    EmptyUploadError,
    ImageAlreadyExistsError,
    ImageDigestDoesNotMatchError,
    InvalidArgumentError,
    InvalidLayerError,
    InvalidLayerPartError,
    InvalidParameterError,
    LayerAlreadyExistsError,
    LayerPartTooSmallError,
    LayersNotFoundError,
    RepositoryNotFoundError,
    ServerError,
    ThrottlingError,
    UploadNotFoundError,
    is_transient,
    map_botocore_errors,
    translate_botocore_error,
)
from ecrstream.local import FaultKind, LocalEcr, Operation
from ecrstream.models import (
    BatchCheckLayerAvailabilityRequest,
    BatchGetImageRequest,
    CompleteLayerUploadRequest,
    InitiateLayerUploadRequest,
    PutImageRequest,
    UploadLayerPartRequest,
)
from ecrstream.retry import RetryPolicy

pytestmark = pytest.mark.timeout(30)

UPLOAD_OPERATIONS = (
    "InitiateLayerUpload",
    "UploadLayerPart",
    "CompleteLayerUpload",
    "BatchCheckLayerAvailability",
    "PutImage",
)
ONE_ATTEMPT = RetryPolicy(max_attempts=1)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def client_error(
    code: str | None,
    message: str = "It went wrong.",
    *,
    status: int = 400,
    operation: str = "PutImage",
    request_id: str | None = "req-1234",
    **fields: object,
) -> ClientError:
    """The ClientError botocore raises for an ECR JSON error answer with these parts."""
    error: dict[str, str] = {"Message": message} if message else {}
    if code is not None:
        error["Code"] = code
    metadata: dict[str, object] = {"HTTPStatusCode": status, "HTTPHeaders": {}}
    if request_id is not None:
        metadata["RequestId"] = request_id
    response: dict[str, object] = {"Error": error, "ResponseMetadata": metadata, **fields}
    return ClientError(response, operation)  # type: ignore[arg-type]


def assert_service_error(
    error: BaseException,
    cls: type[EcrServiceError],
    *,
    code: str,
    operation: str,
    status: int = 400,
) -> None:
    """``error`` is exactly ``cls``, carries the answer's details, and chains the original."""
    assert type(error) is cls
    assert isinstance(error, EcrServiceError)
    assert error.code == code
    assert error.operation == operation
    assert error.status_code == status
    assert error.message
    assert error.request_id
    assert str(error) == f"{operation}: {code}: {error.message}"
    assert isinstance(error.__cause__, ClientError)
    assert error.__cause__.response["Error"]["Code"] == code


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def client(
    ecr: LocalEcr, aio_session: AioSession, anyio_backend: str
) -> AsyncIterator[EcrClient]:
    """An EcrClient on the proxy that tries each request once, so each error is one request."""
    async with EcrClient.create(
        **ecr.client_kwargs(), session=aio_session, retry=ONE_ATTEMPT
    ) as made:
        yield made


async def start_upload(client: EcrClient, repository: str) -> str:
    answer = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    return answer.upload_id


async def send_part(
    client: EcrClient, repository: str, upload_id: str, first: int, data: bytes
) -> int:
    answer = await client.upload_layer_part(
        UploadLayerPartRequest(repository, upload_id, first, first + len(data) - 1, data)
    )
    return answer.last_byte_received


def manifest_of(config_digest: str, layer_digests: list[str]) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 1}
                for d in layer_digests
            ],
        }
    )


async def valid_manifest(client: EcrClient, repository: str) -> str:
    config = await push_layer(client, repository, b"{}")
    layer = await push_layer(client, repository, random_bytes(512, 1))
    return manifest_of(config, [layer])


async def recorded_codes(ecr: LocalEcr, operation: str) -> list[str | None]:
    with anyio.fail_after(10):
        await ecr.wait_idle_async()
    return [record.error_code for record in ecr.requests(operation)]


# -- service errors over HTTP ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "operation", ["InitiateLayerUpload", "BatchCheckLayerAvailability", "PutImage", "BatchGetImage"]
)
async def test_repository_not_found(client: EcrClient, ecr: LocalEcr, operation: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    manifest = manifest_of(digest_of(b"c"), [digest_of(b"l")])
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "InitiateLayerUpload": lambda: client.initiate_layer_upload(
            InitiateLayerUploadRequest(missing)
        ),
        "BatchCheckLayerAvailability": lambda: client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(missing, (digest_of(b"x"),))
        ),
        "PutImage": lambda: client.put_image(PutImageRequest(missing, manifest, image_tag="v1")),
        "BatchGetImage": lambda: client.batch_get_image(BatchGetImageRequest(missing, ("v1",))),
    }
    with pytest.raises(RepositoryNotFoundError) as caught:
        await calls[operation]()

    assert_service_error(
        caught.value,
        RepositoryNotFoundError,
        code="RepositoryNotFoundException",
        operation=operation,
    )
    assert missing in caught.value.message
    assert await recorded_codes(ecr, operation) == ["RepositoryNotFoundException"]


@pytest.mark.anyio
async def test_upload_not_found_for_a_part_and_for_completion(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(UploadNotFoundError) as part_error:
        await send_part(client, repository, unknown, 0, b"data")
    with pytest.raises(UploadNotFoundError) as complete_error:
        await client.complete_layer_upload(
            CompleteLayerUploadRequest(repository, unknown, (digest_of(b"data"),))
        )

    assert_service_error(
        part_error.value,
        UploadNotFoundError,
        code="UploadNotFoundException",
        operation="UploadLayerPart",
    )
    assert_service_error(
        complete_error.value,
        UploadNotFoundError,
        code="UploadNotFoundException",
        operation="CompleteLayerUpload",
    )
    assert unknown in part_error.value.message


@pytest.mark.anyio
async def test_upload_not_found_after_the_upload_expired(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    upload_id = await start_upload(client, repository)
    await send_part(client, repository, upload_id, 0, b"first")
    assert ecr.forget_upload(upload_id)  # as when ECR expires an upload
    with pytest.raises(UploadNotFoundError):
        await send_part(client, repository, upload_id, 5, b"second")


@pytest.mark.anyio
async def test_invalid_layer_part_says_where_the_upload_stands(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    upload_id = await start_upload(client, repository)

    with pytest.raises(InvalidLayerPartError) as before_any:
        await send_part(client, repository, upload_id, 10, b"too late")
    assert before_any.value.last_valid_byte_received == -1
    assert before_any.value.upload_id == upload_id

    assert await send_part(client, repository, upload_id, 0, b"0123456789") == 9
    with pytest.raises(InvalidLayerPartError) as replayed:
        await send_part(client, repository, upload_id, 0, b"0123456789")  # already there

    error = replayed.value
    assert_service_error(
        error, InvalidLayerPartError, code="InvalidLayerPartException", operation="UploadLayerPart"
    )
    assert error.last_valid_byte_received == 9
    assert error.upload_id == upload_id


@pytest.mark.anyio
async def test_invalid_layer_when_the_digest_does_not_match_the_bytes(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    upload_id = await start_upload(client, repository)
    await send_part(client, repository, upload_id, 0, b"the real bytes")
    with pytest.raises(InvalidLayerError) as caught:
        await client.complete_layer_upload(
            CompleteLayerUploadRequest(repository, upload_id, (digest_of(b"other bytes"),))
        )
    assert_service_error(
        caught.value,
        InvalidLayerError,
        code="InvalidLayerException",
        operation="CompleteLayerUpload",
    )


@pytest.mark.anyio
async def test_layer_part_too_small_at_complete(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    # ECR's real 5 MiB minimum: two 1 KiB parts leave the first one too small.
    data = random_bytes(2048, 2)
    upload_id = await start_upload(client, repository)
    await send_part(client, repository, upload_id, 0, data[:1024])
    await send_part(client, repository, upload_id, 1024, data[1024:])
    with pytest.raises(LayerPartTooSmallError) as caught:
        await client.complete_layer_upload(
            CompleteLayerUploadRequest(repository, upload_id, (digest_of(data),))
        )
    assert_service_error(
        caught.value,
        LayerPartTooSmallError,
        code="LayerPartTooSmallException",
        operation="CompleteLayerUpload",
    )


@pytest.mark.anyio
async def test_empty_upload_at_complete(client: EcrClient, ecr: LocalEcr, repository: str) -> None:
    upload_id = await start_upload(client, repository)
    with pytest.raises(EmptyUploadError) as caught:
        await client.complete_layer_upload(
            CompleteLayerUploadRequest(repository, upload_id, (digest_of(b""),))
        )
    assert_service_error(
        caught.value, EmptyUploadError, code="EmptyUploadException", operation="CompleteLayerUpload"
    )


@pytest.mark.anyio
async def test_layer_already_exists_at_complete(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    data = random_bytes(3000, 3)
    await push_layer(client, repository, data)
    upload_id = await start_upload(client, repository)
    await send_part(client, repository, upload_id, 0, data)
    with pytest.raises(LayerAlreadyExistsError) as caught:
        await client.complete_layer_upload(
            CompleteLayerUploadRequest(repository, upload_id, (digest_of(data),))
        )
    assert_service_error(
        caught.value,
        LayerAlreadyExistsError,
        code="LayerAlreadyExistsException",
        operation="CompleteLayerUpload",
    )


@pytest.mark.anyio
async def test_layers_not_found_at_put_image(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    config = await push_layer(client, repository, b"{}")
    manifest = manifest_of(config, [digest_of(b"never uploaded")])
    with pytest.raises(LayersNotFoundError) as caught:
        await client.put_image(PutImageRequest(repository, manifest, OCI_MANIFEST))
    assert_service_error(
        caught.value, LayersNotFoundError, code="LayersNotFoundException", operation="PutImage"
    )


@pytest.mark.anyio
async def test_image_already_exists_for_the_same_manifest_and_tag(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    manifest = await valid_manifest(client, repository)
    request = PutImageRequest(repository, manifest, OCI_MANIFEST, image_tag="v1")
    await client.put_image(request)
    with pytest.raises(ImageAlreadyExistsError) as caught:
        await client.put_image(request)
    assert_service_error(
        caught.value,
        ImageAlreadyExistsError,
        code="ImageAlreadyExistsException",
        operation="PutImage",
    )


@pytest.mark.anyio
async def test_image_digest_does_not_match_and_invalid_parameter_at_put_image(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    manifest = await valid_manifest(client, repository)
    with pytest.raises(ImageDigestDoesNotMatchError) as mismatch:
        await client.put_image(
            PutImageRequest(repository, manifest, image_digest=digest_of("another manifest"))
        )
    with pytest.raises(InvalidParameterError) as not_json:
        await client.put_image(PutImageRequest(repository, "this is not JSON"))

    assert_service_error(
        mismatch.value,
        ImageDigestDoesNotMatchError,
        code="ImageDigestDoesNotMatchException",
        operation="PutImage",
    )
    assert_service_error(
        not_json.value,
        InvalidParameterError,
        code="InvalidParameterException",
        operation="PutImage",
    )


# -- injected faults over HTTP ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("operation", ["BatchCheckLayerAvailability", "UploadLayerPart"])
@pytest.mark.parametrize(
    ("kind", "cls", "code", "status"),
    [
        (FaultKind.THROTTLING, ThrottlingError, "ThrottlingException", 400),
        (FaultKind.SERVER_EXCEPTION, ServerError, "ServerException", 500),
        (FaultKind.UPLOAD_NOT_FOUND, UploadNotFoundError, "UploadNotFoundException", 400),
    ],
    ids=["throttling", "server_exception", "upload_not_found"],
)
async def test_injected_service_errors(
    client: EcrClient,
    ecr: LocalEcr,
    repository: str,
    operation: str,
    kind: FaultKind,
    cls: type[EcrServiceError],
    code: str,
    status: int,
) -> None:
    upload_id = await start_upload(client, repository)
    ecr.faults.add(operation, kind)
    check = BatchCheckLayerAvailabilityRequest(repository, (digest_of(b"x"),))
    call: Callable[[], Awaitable[object]] = (
        (lambda: send_part(client, repository, upload_id, 0, b"part"))
        if operation == "UploadLayerPart"
        else (lambda: client.batch_check_layer_availability(check))
    )
    with pytest.raises(cls) as caught:
        await call()
    assert_service_error(caught.value, cls, code=code, operation=operation, status=status)
    assert is_transient(caught.value) is (kind is not FaultKind.UPLOAD_NOT_FOUND)


@pytest.mark.anyio
async def test_a_bare_http_500_is_a_server_error(
    client: EcrClient, ecr: LocalEcr, repository: str
) -> None:
    ecr.faults.add(Operation.INITIATE_LAYER_UPLOAD, FaultKind.HTTP_500)
    with pytest.raises(ServerError) as caught:
        await start_upload(client, repository)
    error = caught.value
    assert type(error) is ServerError
    assert (error.status_code, error.code, error.operation) == (500, "500", "InitiateLayerUpload")
    assert error.message  # botocore's reason phrase, as no JSON came back
    assert is_transient(error)
    assert await recorded_codes(ecr, Operation.INITIATE_LAYER_UPLOAD) == [None]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [FaultKind.RESET, FaultKind.LOST_RESPONSE], ids=lambda k: k.value)
@pytest.mark.parametrize("operation", ["UploadLayerPart", "CompleteLayerUpload"])
async def test_no_answer_is_a_connection_error(
    client: EcrClient, ecr: LocalEcr, repository: str, operation: str, kind: FaultKind
) -> None:
    data = random_bytes(200_000, 4)  # larger than what RESET reads before it resets
    upload_id = await start_upload(client, repository)
    if operation == "CompleteLayerUpload":
        await send_part(client, repository, upload_id, 0, data)
    ecr.faults.add(operation, kind)

    complete = CompleteLayerUploadRequest(repository, upload_id, (digest_of(data),))
    call: Callable[[], Awaitable[object]] = (
        (lambda: send_part(client, repository, upload_id, 0, data))
        if operation == "UploadLayerPart"
        else (lambda: client.complete_layer_upload(complete))
    )
    with pytest.raises(EcrConnectionError) as caught:
        await call()

    error = caught.value
    assert (error.operation, error.timed_out) == (operation, False)
    assert str(error).startswith(f"{operation}: ")
    # It says what happened: the connection was made, then reset (not "could not connect").
    assert "connection was reset" in str(error)
    assert "Could not connect" not in str(error)
    assert error.__cause__ is not None
    assert is_transient(error)
    with anyio.fail_after(10):
        await ecr.wait_idle_async()
    (record,) = ecr.requests(operation)
    assert record.status is None
    # A lost response was applied all the same; a reset one never reached moto.
    assert record.accepted is (kind is FaultKind.LOST_RESPONSE)


@pytest.mark.anyio
async def test_a_read_timeout_is_a_timed_out_connection_error(
    ecr: LocalEcr, aio_session: AioSession, repository: str
) -> None:
    ecr.faults.add(Operation.INITIATE_LAYER_UPLOAD, FaultKind.DELAY, delay_seconds=30.0)
    async with EcrClient.create(
        **ecr.client_kwargs(),
        session=aio_session,
        config=Config(read_timeout=0.2),
        retry=ONE_ATTEMPT,
    ) as made:
        with pytest.raises(EcrConnectionError) as caught:
            await start_upload(made, repository)
    error = caught.value
    assert error.timed_out is True
    assert error.operation == "InitiateLayerUpload"
    assert isinstance(error.__cause__, ReadTimeoutError)
    assert not isinstance(error, OperationCanceledError)


@pytest.mark.anyio
async def test_nothing_listening_is_a_connection_error(aio_session: AioSession) -> None:
    with socketless_port() as port:
        async with EcrClient.create(
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            session=aio_session,
            retry=ONE_ATTEMPT,
        ) as made:
            with pytest.raises(EcrConnectionError) as caught:
                await made.initiate_layer_upload(InitiateLayerUploadRequest("repo"))
    assert caught.value.timed_out is False
    assert isinstance(caught.value.__cause__, EndpointConnectionError)
    assert "connect" in str(caught.value).lower()
    assert "reset" not in str(caught.value)


@contextlib.contextmanager
def socketless_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but never listens: connections to it are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


# -- the translation table, on botocore's own exceptions -------------------------------------

MAPPED_CODES: dict[str, type[EcrServiceError]] = {
    "InvalidLayerPartException": InvalidLayerPartError,
    "InvalidParameterException": InvalidParameterError,
    "KmsException": ecrstream.errors.KmsError,
    "LimitExceededException": ecrstream.errors.LimitExceededError,
    "RepositoryNotFoundException": RepositoryNotFoundError,
    "ServerException": ServerError,
    "UploadNotFoundException": UploadNotFoundError,
    "LayerPartTooSmallException": LayerPartTooSmallError,
    "LayerAlreadyExistsException": LayerAlreadyExistsError,
    "EmptyUploadException": EmptyUploadError,
    "InvalidLayerException": InvalidLayerError,
    "LayersNotFoundException": LayersNotFoundError,
    "ImageAlreadyExistsException": ImageAlreadyExistsError,
    "ImageTagAlreadyExistsException": ecrstream.errors.ImageTagAlreadyExistsError,
    "ImageDigestDoesNotMatchException": ImageDigestDoesNotMatchError,
    "ReferencedImagesNotFoundException": ecrstream.errors.ReferencedImagesNotFoundError,
    "ThrottlingException": ThrottlingError,
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "AccessDeniedException": AuthenticationError,
}


@pytest.mark.parametrize(("code", "cls"), list(MAPPED_CODES.items()))
def test_each_code_maps_to_its_class(code: str, cls: type[EcrServiceError]) -> None:
    original = client_error(code, "The message.", operation="CompleteLayerUpload")
    error = translate_botocore_error(original, "CompleteLayerUpload")
    assert type(error) is cls
    assert isinstance(error, EcrServiceError)
    assert (error.code, error.message, error.operation, error.request_id, error.status_code) == (
        code,
        "The message.",
        "CompleteLayerUpload",
        "req-1234",
        400,
    )


def test_every_error_of_the_upload_operations_in_botocores_model_has_its_class() -> None:
    model = botocore.session.get_session().get_service_model("ecr")
    codes = {
        shape.name
        for operation in UPLOAD_OPERATIONS
        for shape in model.operation_model(operation).error_shapes
    }
    assert "ServerException" in codes  # the model was read
    for code in sorted(codes | {"ThrottlingException"}):
        error = translate_botocore_error(client_error(code), "PutImage")
        assert type(error) is not EcrServiceError, f"{code} has no class of its own"
        assert isinstance(error, EcrServiceError)
        assert type(error).aws_code == code


def test_invalid_layer_part_reads_its_fields_from_the_answer() -> None:
    upload_id = str(uuid.uuid4())
    error = translate_botocore_error(
        client_error(
            "InvalidLayerPartException",
            operation="UploadLayerPart",
            lastValidByteReceived=5242879,
            uploadId=upload_id,
            registryId="123456789012",
            repositoryName="repo",
        ),
        "UploadLayerPart",
    )
    assert isinstance(error, InvalidLayerPartError)
    assert (error.last_valid_byte_received, error.upload_id) == (5242879, upload_id)

    bare = translate_botocore_error(client_error("InvalidLayerPartException"), "UploadLayerPart")
    assert isinstance(bare, InvalidLayerPartError)
    assert (bare.last_valid_byte_received, bare.upload_id) == (None, None)


def test_an_unknown_code_stays_an_ecr_service_error() -> None:
    error = translate_botocore_error(
        client_error("SomeFutureException", "New in 2030."), "InitiateLayerUpload"
    )
    assert type(error) is EcrServiceError
    assert isinstance(error, EcrServiceError)
    assert (error.code, error.message, error.operation) == (
        "SomeFutureException",
        "New in 2030.",
        "InitiateLayerUpload",
    )
    assert not is_transient(error)


def test_an_unknown_code_with_a_5xx_status_is_a_transient_server_error() -> None:
    error = translate_botocore_error(
        client_error("SomeFutureException", status=503), "InitiateLayerUpload"
    )
    assert type(error) is ServerError
    assert is_transient(error)


def test_501_not_implemented_is_permanent() -> None:
    # An endpoint without the operation (an emulator's 501) will not grow it on a retry.
    error = translate_botocore_error(
        client_error("InternalFailure", status=501), "ListImageReferrers"
    )
    assert type(error) is EcrServiceError
    assert error.status_code == 501
    assert not is_transient(error)


def test_an_answer_without_code_or_message_is_named_by_its_status() -> None:
    error = translate_botocore_error(
        client_error(None, "", status=502, request_id=None), "PutImage"
    )
    assert isinstance(error, ServerError)
    assert error.code == "HTTP502"
    assert error.message == "HTTP 502 without an error message"
    assert error.request_id is None


@pytest.mark.parametrize(
    ("original", "timed_out"),
    [
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1/"), True),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1/"), True),
        (TimeoutError(), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"), False),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1/"), False),
        (aiohttp.ServerDisconnectedError(), False),
        (ConnectionResetError(104, "Connection reset by peer"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_translated_no_answer_is_a_connection_error(original: Exception, timed_out: bool) -> None:
    error = translate_botocore_error(original, "UploadLayerPart")
    assert type(error) is EcrConnectionError
    assert (error.operation, error.timed_out) == ("UploadLayerPart", timed_out)
    assert is_transient(error)


def test_a_wrapped_reset_is_called_a_reset() -> None:
    endpoint = "http://127.0.0.1:1/"
    reset = aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer")
    error = translate_botocore_error(
        EndpointConnectionError(endpoint_url=endpoint, error=reset), "UploadLayerPart"
    )
    assert isinstance(error, EcrConnectionError)
    assert f"the connection was reset by {endpoint}: " in str(error)
    assert "Connection reset by peer" in str(error)

    refused = aiohttp.ClientOSError(errno.ECONNREFUSED, "Connect call failed")
    error = translate_botocore_error(
        EndpointConnectionError(endpoint_url=endpoint, error=refused), "UploadLayerPart"
    )
    assert "Could not connect to the endpoint URL" in str(error)
    assert "Connect call failed" in str(error)


def test_client_side_problems_become_credentials_or_value_errors() -> None:
    for missing in (NoCredentialsError(), PartialCredentialsError(provider="env", cred_var="k")):
        assert isinstance(translate_botocore_error(missing, "PutImage"), CredentialsError)
    no_region = translate_botocore_error(NoRegionError(), "PutImage")
    assert isinstance(no_region, ValueError)
    assert str(no_region).startswith("region_name: ")
    invalid = translate_botocore_error(ParamValidationError(report="bad imageTag"), "PutImage")
    assert isinstance(invalid, ValueError)
    assert "bad imageTag" in str(invalid)


def test_exceptions_it_does_not_know_come_back_unchanged() -> None:
    for original in (KeyError("x"), RuntimeError("y"), ValueError("z")):
        assert translate_botocore_error(original, "PutImage") is original


def test_is_transient_only_for_errors_worth_the_same_request_again() -> None:
    def service(cls: type[EcrServiceError], status: int = 400) -> EcrServiceError:
        return cls("m", code="C", operation="PutImage", status_code=status)

    assert is_transient(service(ThrottlingError))
    assert is_transient(service(ServerError, 500))
    assert is_transient(EcrConnectionError("reset", operation="PutImage"))
    assert is_transient(service(EcrServiceError, 503))
    assert not is_transient(service(EcrServiceError, 400))
    assert not is_transient(service(InvalidLayerPartError))
    assert not is_transient(service(RepositoryNotFoundError))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(asyncio.CancelledError())


def test_the_tree() -> None:
    for name in ecrstream.errors.__all__:
        value = getattr(ecrstream.errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            # Cancellation has its own branch of the tree, outside EcrStreamError.
            canceled = issubclass(value, OperationCanceledError)
            assert issubclass(value, EcrStreamError) != canceled, name
            assert value.__doc__, name
            # The tree in the module docstring draws every class.
            assert f" {name} " in (ecrstream.errors.__doc__ or "").replace("\n", " "), name
            if value is not EcrServiceError and issubclass(value, EcrServiceError):
                assert value.aws_code, name
    assert not issubclass(OperationCanceledError, EcrStreamError)
    assert issubclass(EcrConnectionError, EcrStreamError)
    assert not issubclass(EcrConnectionError, EcrServiceError)


# -- the boundary as a context manager -----------------------------------------------------


def test_the_boundary_raises_the_translation_from_the_original() -> None:
    original = client_error("UploadNotFoundException", operation="UploadLayerPart")
    with pytest.raises(UploadNotFoundError) as caught, map_botocore_errors("UploadLayerPart"):
        raise original
    assert caught.value.__cause__ is original
    assert caught.value.operation == "UploadLayerPart"
    with pytest.raises(InvalidArgumentError) as region, map_botocore_errors("CreateClient"):
        raise NoRegionError()
    assert (region.value.field, region.value.__cause__.__class__) == ("region_name", NoRegionError)


@pytest.mark.parametrize(
    "error", [KeyError("not botocore's"), asyncio.CancelledError(), KeyboardInterrupt()]
)
def test_the_boundary_lets_what_it_does_not_know_and_cancellation_through(
    error: BaseException,
) -> None:
    with pytest.raises(type(error)) as caught, map_botocore_errors("PutImage"):
        raise error
    assert caught.value is error
    assert caught.value.__cause__ is None


def test_importing_the_errors_loads_neither_botocore_nor_aiohttp() -> None:
    code = (
        "import sys, ecrstream.errors; print('botocore' in sys.modules, 'aiohttp' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.split() == ["False", "False"]
