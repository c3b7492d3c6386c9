"""EcrClient: the typed, cancellable ECR operations over aiobotocore.

Each method takes a frozen request dataclass (validated when built) and a
``CancellationToken``, and returns a frozen response dataclass. The wire names (camelCase)
are mapped here and nowhere else; every call into aiobotocore runs inside
``errors.map_botocore_errors``, which raises the ecrstream error ``from`` the original.

Cancellation: a token already canceled raises ``OperationCanceledError`` and sends nothing; a
cancel during a call aborts the HTTP request in flight (the connection is dropped, the client
stays usable) and raises ``OperationCanceledError``. Read timeouts are ``EcrConnectionError``
(transient), never confused with a cancel.

Retries, and who owns them. botocore's retry layer never retries a call made through
EcrClient, whatever the wrapped client's retry configuration says: EcrClient registers a
``needs-retry`` handler on the client that vetoes botocore's retry for its own calls (calls
made on the same aiobotocore client outside EcrClient keep botocore's behaviour). Instead:

- ``upload_layer_part`` is one HTTP attempt, always. Retrying a part safely needs to know
  what the server already holds (a lost response means the part was applied), so
  ``LayerUploader`` retries parts itself and re-aligns on ``InvalidLayerPartError``.
- The other operations retry transient errors (``errors.is_transient``: 5xx/ServerException,
  ThrottlingException, no answer) through ``retry.call_with_retries``, as set by the client's
  ``RetryPolicy`` or the ``retry=`` argument of each call (``max_attempts`` counts requests).

So a request is never retried by both layers, and ``EcrClient(client)`` over a client built
with botocore retries off behaves exactly like ``EcrClient.create()``.

The fast path for UploadLayerPart: ``body.prepare_part`` builds the request body (JSON
prefix, base64 of the part, suffix) and its SHA-256 once, in a worker thread;
``upload_prepared_part`` hands that body (a ``body.PartBody``, paced by an optional
``BandwidthLimiter``) to botocore through its ``before-call`` event, so botocore's JSON
serializer never sees the part bytes, and botocore's SigV4 signer takes the precomputed
payload hash from the ``X-Amz-Content-SHA256`` header instead of hashing the body on the
event loop thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.config import Config

from ecrstream.bandwidth import BandwidthLimiter
from ecrstream.body import PartBody, PreparedPart, prepare_part, wire_part_params
from ecrstream.cancellation import (
    CancellationToken,
    OperationCanceledError,
    cancellation_scope,
    run_cancellable,
)
from ecrstream.errors import (
    EcrServiceError,
    InvalidArgumentError,
    ProtocolViolationError,
    map_botocore_errors,
)
from ecrstream.models import (
    MAX_PART_SIZE,
    AuthorizationData,
    BatchCheckLayerAvailabilityRequest,
    BatchCheckLayerAvailabilityResponse,
    BatchGetImageRequest,
    BatchGetImageResponse,
    CompleteLayerUploadRequest,
    CompleteLayerUploadResponse,
    GetAuthorizationTokenRequest,
    GetAuthorizationTokenResponse,
    GetDownloadUrlForLayerRequest,
    GetDownloadUrlForLayerResponse,
    Image,
    ImageReferrer,
    InitiateLayerUploadRequest,
    InitiateLayerUploadResponse,
    Layer,
    LayerFailure,
    ListImageReferrersRequest,
    ListImageReferrersResponse,
    PutImageRequest,
    PutImageResponse,
    UploadLayerPartRequest,
    UploadLayerPartResponse,
    is_region_name,
    validate_digest,
)
from ecrstream.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from types_aiobotocore_ecr import ECRClient

__all__ = ["UNKNOWN_OPERATION", "EcrClient"]

#: The error code of an endpoint that lacks an operation (EcrServiceError.code); also raised
#: without a request where the installed botocore lacks it (``list_image_referrers``).
UNKNOWN_OPERATION: Final = "UnknownOperationException"

logger = logging.getLogger("ecrstream")

_NONE: Final = CancellationToken.NONE
# Set while EcrClient makes a call: tells the hooks below that the call is ours.
_OUR_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("ecrstream_call", default=False)


@dataclass(slots=True)
class _Outgoing:
    """The prepared body of the UploadLayerPart call in progress, for the hook to swap in."""

    prepared: PreparedPart
    limiter: BandwidthLimiter | None
    used: bool = False


_OUTGOING: contextvars.ContextVar[_Outgoing | None] = contextvars.ContextVar(
    "ecrstream_outgoing_part", default=None
)


def _veto_botocore_retry(**_: Any) -> bool | None:
    # aiobotocore treats a handler's False as "do not retry"; None leaves the decision to
    # botocore's own handler, which is what calls made outside EcrClient get.
    return False if _OUR_CALL.get() else None


def _inject_prepared_body(params: dict[str, Any], **_: Any) -> None:
    outgoing = _OUTGOING.get()
    if outgoing is None:
        return
    params["body"] = PartBody(outgoing.prepared.body, outgoing.limiter)
    params["headers"]["X-Amz-Content-SHA256"] = outgoing.prepared.body_sha256
    outgoing.used = True


def _log_request(
    operation: str,
    params: dict[str, Any],
    attempt: int,
    started: float,
    response: dict[str, Any] | None,
    error: BaseException | None,
) -> None:
    """One debug line per request: operation, byte range, attempt, status, duration, id.

    Only these fields: never the request's headers (its signature), the credentials, nor an
    error's message (AWS may quote the canonical request in it).
    """
    what = ""
    if "partFirstByte" in params:
        what = f" bytes {params['partFirstByte']}..{params['partLastByte']}"
    if "uploadId" in params:
        what += f" of upload {params['uploadId']}"
    took = (time.perf_counter() - started) * 1000
    if error is None:
        metadata = (response or {}).get("ResponseMetadata", {})
        status, request_id = metadata.get("HTTPStatusCode"), metadata.get("RequestId")
        outcome = f"HTTP {status}"
    elif isinstance(error, EcrServiceError):
        status, request_id = error.status_code, error.request_id
        outcome = f"{error.code} (HTTP {status})"
    else:
        request_id = None
        canceled = isinstance(error, OperationCanceledError | anyio.get_cancelled_exc_class())
        outcome = "canceled" if canceled else type(error).__name__
    logger.debug(
        "%s%s attempt %d: %s in %.1f ms (request id %s)",
        operation,
        what,
        attempt,
        outcome,
        took,
        request_id,
    )


def _remember_user_agent(client: Any) -> None:
    """Make ``client`` build each User-Agent string once per feature set, not twice a call.

    botocore rebuilds the header from about 20 components (each sanitised a character at a
    time) when it makes a request dict and again in a ``request-created`` handler: ~0.12 ms
    of the loop thread each time. Its only input that changes after the client is made is
    the set of feature ids (the client's and the call context's), so the string is kept per
    feature set, in the order botocore joins them: the header stays botocore's, byte for
    byte. A botocore without these attributes is left as it is.
    """
    creator: Any = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if build is None or not hasattr(creator, "_client_features"):
        return
    if getattr(build, "_ecrstream_remembers", False):  # a second EcrClient on this client
        return
    from botocore.context import get_context

    known: dict[tuple[str, ...], str] = {}

    def to_string() -> str:
        context = get_context()
        # The same union, of the same sets, that botocore joins into the ``m/`` component.
        client_features: set[str] = creator._client_features or set()
        features = client_features.union(set() if context is None else context.features)
        key = tuple(features)
        text = known.get(key)
        if text is None:
            if len(known) >= 64:  # feature sets are few; never let the table grow unbounded
                known.clear()
            text = known[key] = build()
        return text

    to_string._ecrstream_remembers = True  # type: ignore[attr-defined]
    creator.to_string = to_string


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the garbage collector while botocore builds a client, then restore it.

    Making a client loads and parses the service model, endpoint rules and partitions into
    tens of thousands of objects that live as long as the client; the collector would walk
    them several times while they are made and free none (about 0.05 CPU-s per client).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _check_verify(verify: object) -> bool | str | None:
    if verify is None or isinstance(verify, bool):
        return verify
    if isinstance(verify, str | os.PathLike):
        bundle = os.fspath(verify)
        if not os.path.isfile(bundle):
            raise InvalidArgumentError("verify", f"no such CA bundle file: {bundle}")
        return str(bundle)
    raise InvalidArgumentError(
        "verify", f"must be None, True, False or a CA bundle path (got {verify!r})"
    )


def _normalized_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` with its host in lowercase (what botocore signs), else unchanged."""
    if endpoint_url is None:
        return None
    parts = urllib.parse.urlsplit(endpoint_url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport == hostport.lower():
        return endpoint_url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hostport.lower()}"))


def _opt(value: str | None, key: str, params: dict[str, Any]) -> None:
    if value is not None:
        params[key] = value


def _image(data: dict[str, Any]) -> Image:
    image_id = data.get("imageId") or {}
    return Image(
        registry_id=data.get("registryId"),
        repository_name=data.get("repositoryName"),
        image_digest=image_id.get("imageDigest"),
        image_tag=image_id.get("imageTag"),
        image_manifest=data.get("imageManifest"),
        image_manifest_media_type=data.get("imageManifestMediaType"),
    )


class EcrClient:
    """Typed, cancellable ECR operations over an aiobotocore ECR client.

    ``EcrClient(client)`` wraps a client the caller owns (and never closes);
    ``EcrClient.create(...)`` makes and owns one. ``retry`` is the policy for operations other
    than UploadLayerPart (see the module docstring for who retries what).
    """

    def __init__(self, client: ECRClient | Any, *, retry: RetryPolicy | None = None) -> None:
        self._client = client
        self.retry = retry or RetryPolicy()
        _remember_user_agent(client)
        events: Any = client.meta.events
        events.register_first(
            "needs-retry.ecr", _veto_botocore_retry, unique_id="ecrstream-veto-retry"
        )
        events.register(
            "before-call.ecr.UploadLayerPart",
            _inject_prepared_body,
            unique_id="ecrstream-prepared-body",
        )

    @classmethod
    @asynccontextmanager
    async def create(
        cls,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        session: AioSession | None = None,
        config: Config | None = None,
        retry: RetryPolicy | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        verify: bool | str | os.PathLike[str] | None = None,
    ) -> AsyncIterator[EcrClient]:
        """Create an aiobotocore ECR client (standard AWS credential chain) and wrap it.

        An async context manager: the client is closed on exit. ``region_name`` None takes
        the ``session``'s own region if one was set on it (``set_config_variable``), else
        ``AWS_REGION`` (what the AWS CLI and every other AWS SDK read, and what Lambda, ECS
        and CodeBuild set; botocore alone ignores it), then botocore's chain
        (``AWS_DEFAULT_REGION``, the profile's ``region``), as the AWS CLI orders them. A
        region that is no DNS label raises InvalidArgumentError (``region_name``, naming
        AWS_REGION when it came from there) before anything is made.
        Explicit keys, when given, override the credential chain; they are never logged or
        shown in a repr.
        ``verify`` is boto3's: None (check TLS certificates against the default CA bundle,
        or ``AWS_CA_BUNDLE``), a CA bundle path to check them against, or False not to check
        them. A certificate that cannot be verified raises CertificateVerificationError
        at once (it is never retried). A mixed-case endpoint host is lowercased first:
        aiohttp would send it as given while botocore signs it in lowercase.
        """
        verify = _check_verify(verify)
        endpoint_url = _normalized_endpoint(endpoint_url)
        session = session or get_session()
        origin = "region_name"
        # A region set on the session itself (set_config_variable) outranks the environment,
        # as boto3's Session(region_name=...) does; AWS_REGION only fills in for the chain.
        if not region_name and not session.instance_variables().get("region"):
            region_name = os.environ.get("AWS_REGION") or None
            origin = "AWS_REGION"
        if region_name is not None and not is_region_name(region_name):
            # botocore's own check lets a trailing newline through and raises no ValueError
            raise InvalidArgumentError(
                "region_name",
                f"{region_name!r} (from {origin}) is not an AWS region name (like us-east-1)",
            )
        # aiobotocore wants its own Config subclass; carry over what the caller set
        options = dict(getattr(config, "_user_provided_options", {})) if config else {}
        if "http_session_cls" not in options:
            # HTTPS encrypted off the event loop thread (ecrstream.tls), unless the caller
            # chose an HTTP session class of their own.
            from ecrstream.tls import TlsHttpSession

            options["http_session_cls"] = TlsHttpSession
        config = AioConfig(**options)
        async with AsyncExitStack() as stack:
            # Only the making of the client is translated: an exception from the caller's
            # ``async with`` body (a FileNotFoundError, a TimeoutError) must reach it as is.
            with _bad_configuration(), map_botocore_errors("CreateClient"):
                creator = cast(Any, session).create_client(
                    "ecr",
                    region_name=region_name,
                    endpoint_url=endpoint_url,
                    config=config,
                    aws_access_key_id=aws_access_key_id,
                    aws_secret_access_key=aws_secret_access_key,
                    aws_session_token=aws_session_token,
                    verify=verify,
                )
                with _collector_paused():
                    client = await stack.enter_async_context(creator)
            yield cls(client, retry=retry)

    @property
    def aiobotocore_client(self) -> Any:
        """The wrapped aiobotocore client (for operations EcrClient does not cover)."""
        return self._client

    @property
    def region_name(self) -> str | None:
        """The region the client signs for."""
        region: str | None = self._client.meta.region_name
        return region

    def __repr__(self) -> str:
        endpoint = self._client.meta.endpoint_url
        return f"EcrClient(region_name={self.region_name!r}, endpoint={endpoint!r})"

    async def _call(
        self,
        operation: str,
        method: Callable[..., Any],
        params: dict[str, Any],
        token: CancellationToken,
        retry: RetryPolicy | None,
    ) -> dict[str, Any]:
        async def attempt(number: int) -> dict[str, Any]:
            return await self._call_once(operation, method, params, token, number)

        return await call_with_retries(attempt, policy=retry or self.retry, token=token)

    async def _call_once(
        self,
        operation: str,
        method: Callable[..., Any],
        params: dict[str, Any],
        token: CancellationToken,
        attempt: int = 1,
    ) -> dict[str, Any]:
        marker = _OUR_CALL.set(True)
        started = time.perf_counter()
        try:
            async with cancellation_scope(token):
                with map_botocore_errors(operation):
                    response: dict[str, Any] = await method(**params)
        except BaseException as exc:
            if logger.isEnabledFor(logging.DEBUG):
                _log_request(operation, params, attempt, started, None, exc)
            raise
        finally:
            _OUR_CALL.reset(marker)
        if logger.isEnabledFor(logging.DEBUG):
            _log_request(operation, params, attempt, started, response, None)
        return response

    async def initiate_layer_upload(
        self,
        request: InitiateLayerUploadRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> InitiateLayerUploadResponse:
        """Start a layer upload; returns its id and the part size ECR asks for."""
        params: dict[str, Any] = {"repositoryName": request.repository_name}
        _opt(request.registry_id, "registryId", params)
        data = await self._call(
            "InitiateLayerUpload",
            self._client.initiate_layer_upload,
            params,
            cancellation_token,
            retry,
        )
        part_size = data.get("partSize")
        return InitiateLayerUploadResponse(
            upload_id=data["uploadId"], part_size=int(part_size) if part_size else None
        )

    async def upload_layer_part(
        self,
        request: UploadLayerPartRequest,
        cancellation_token: CancellationToken = _NONE,
    ) -> UploadLayerPartResponse:
        """Send one part (one HTTP attempt; never retried here, see the module docstring).

        The body is built off the event loop (``prepare_part`` in a worker thread), then sent
        through ``upload_prepared_part``.
        """
        cancellation_token.throw_if_cancellation_requested()
        prepared = await run_cancellable(
            anyio.to_thread.run_sync(prepare_part, request), cancellation_token
        )
        return await self.upload_prepared_part(prepared, cancellation_token)

    async def upload_prepared_part(
        self,
        prepared: PreparedPart,
        cancellation_token: CancellationToken = _NONE,
        *,
        limiter: BandwidthLimiter | None = None,
        attempt: int = 1,
    ) -> UploadLayerPartResponse:
        """Send a part whose body ``prepare_part`` built (one HTTP attempt).

        botocore serializes only the small fields (with an empty blob); the ``before-call``
        hook swaps in the prepared body and its payload hash before botocore signs it.
        With ``limiter``, the body goes out no faster than the limiter allows. ``attempt``
        (the caller's count of tries of this part) only goes into the debug log.
        """
        if prepared.size > MAX_PART_SIZE:
            raise InvalidArgumentError("layer_part_blob", f"must be at most {MAX_PART_SIZE} bytes")
        params = wire_part_params(
            prepared.repository_name,
            prepared.registry_id,
            prepared.upload_id,
            prepared.part_first_byte,
            prepared.part_last_byte,
        )
        params["layerPartBlob"] = b""
        outgoing = _Outgoing(prepared, limiter)
        marker = _OUTGOING.set(outgoing)
        try:
            data = await self._call_once(
                "UploadLayerPart",
                self._client.upload_layer_part,
                params,
                cancellation_token,
                attempt,
            )
        finally:
            _OUTGOING.reset(marker)
        if not outgoing.used:  # pragma: no cover - would mean botocore changed its events
            raise RuntimeError("UploadLayerPart: the prepared body was not sent (hook not run)")
        return UploadLayerPartResponse(
            registry_id=data.get("registryId", ""),
            repository_name=data.get("repositoryName", prepared.repository_name),
            upload_id=data.get("uploadId", prepared.upload_id),
            last_byte_received=int(data["lastByteReceived"]),
        )

    async def complete_layer_upload(
        self,
        request: CompleteLayerUploadRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> CompleteLayerUploadResponse:
        """Finish an upload with the layer's digest; returns the digest ECR computed."""
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "uploadId": request.upload_id,
            "layerDigests": list(request.layer_digests),
        }
        _opt(request.registry_id, "registryId", params)
        data = await self._call(
            "CompleteLayerUpload",
            self._client.complete_layer_upload,
            params,
            cancellation_token,
            retry,
        )
        return CompleteLayerUploadResponse(
            registry_id=data.get("registryId", ""),
            repository_name=data.get("repositoryName", request.repository_name),
            upload_id=data.get("uploadId", request.upload_id),
            layer_digest=data["layerDigest"],
        )

    async def batch_check_layer_availability(
        self,
        request: BatchCheckLayerAvailabilityRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> BatchCheckLayerAvailabilityResponse:
        """Which of the digests the repository has (up to 100 per request)."""
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "layerDigests": list(request.layer_digests),
        }
        _opt(request.registry_id, "registryId", params)
        data = await self._call(
            "BatchCheckLayerAvailability",
            self._client.batch_check_layer_availability,
            params,
            cancellation_token,
            retry,
        )
        return BatchCheckLayerAvailabilityResponse(
            layers=tuple(
                Layer(
                    layer_digest=item.get("layerDigest", ""),
                    layer_availability=item.get("layerAvailability"),
                    layer_size=item.get("layerSize"),
                    media_type=item.get("mediaType"),
                )
                for item in data.get("layers", ())
            ),
            failures=tuple(
                LayerFailure(
                    layer_digest=item.get("layerDigest"),
                    failure_code=item.get("failureCode"),
                    failure_reason=item.get("failureReason"),
                )
                for item in data.get("failures", ())
            ),
        )

    async def put_image(
        self,
        request: PutImageRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> PutImageResponse:
        """Store an image manifest (or index), optionally with a tag."""
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "imageManifest": request.image_manifest,
        }
        _opt(request.registry_id, "registryId", params)
        _opt(request.image_manifest_media_type, "imageManifestMediaType", params)
        _opt(request.image_tag, "imageTag", params)
        _opt(request.image_digest, "imageDigest", params)
        data = await self._call(
            "PutImage", self._client.put_image, params, cancellation_token, retry
        )
        return PutImageResponse(image=_image(data.get("image", {})))

    async def batch_get_image(
        self,
        request: BatchGetImageRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> BatchGetImageResponse:
        """Fetch images by tag or digest (ids starting with ``sha256:`` are digests)."""
        image_ids = [
            {"imageDigest": i} if i.startswith("sha256:") else {"imageTag": i}
            for i in request.image_ids
        ]
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "imageIds": image_ids,
        }
        _opt(request.registry_id, "registryId", params)
        if request.accepted_media_types:
            params["acceptedMediaTypes"] = list(request.accepted_media_types)
        data = await self._call(
            "BatchGetImage", self._client.batch_get_image, params, cancellation_token, retry
        )
        return BatchGetImageResponse(
            images=tuple(_image(item) for item in data.get("images", ())),
            failures=tuple(dict(item) for item in data.get("failures", ())),
        )

    async def get_download_url_for_layer(
        self,
        request: GetDownloadUrlForLayerRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> GetDownloadUrlForLayerResponse:
        """A URL serving the layer's bytes (presigned, it expires; Range works on it)."""
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "layerDigest": request.layer_digest,
        }
        _opt(request.registry_id, "registryId", params)
        data = await self._call(
            "GetDownloadUrlForLayer",
            self._client.get_download_url_for_layer,
            params,
            cancellation_token,
            retry,
        )
        return GetDownloadUrlForLayerResponse(
            download_url=str(data.get("downloadUrl", "")), layer_digest=data.get("layerDigest")
        )

    async def get_authorization_token(
        self,
        request: GetAuthorizationTokenRequest | None = None,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> GetAuthorizationTokenResponse:
        """A login for the registry API (``/v2/``) of the client's registry, or of those
        ``request`` names: Basic auth, user ``AWS``, the password in the token (never logged)."""
        request = request or GetAuthorizationTokenRequest()
        params: dict[str, Any] = {}
        if request.registry_ids:
            params["registryIds"] = list(request.registry_ids)
        data = await self._call(
            "GetAuthorizationToken",
            self._client.get_authorization_token,
            params,
            cancellation_token,
            retry,
        )
        return GetAuthorizationTokenResponse(
            authorization_data=tuple(
                AuthorizationData(
                    authorization_token=str(item.get("authorizationToken", "")),
                    expires_at=_timestamp(item.get("expiresAt")),
                    proxy_endpoint=str(item.get("proxyEndpoint", "")),
                )
                for item in data.get("authorizationData", ())
            )
        )

    async def list_image_referrers(
        self,
        request: ListImageReferrersRequest,
        cancellation_token: CancellationToken = _NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> ListImageReferrersResponse:
        """One page of the artifacts whose ``subject`` is the image (follow ``next_token``).

        Raises:
            EcrServiceError: code ``UnknownOperationException`` where the endpoint lacks the
                operation, and also (nothing sent, ``status_code`` None) where the installed
                botocore predates it; RepositoryNotFoundError; the usual others.
        """
        if "ListImageReferrers" not in self._client.meta.service_model.operation_names:
            raise EcrServiceError(
                "this botocore has no ListImageReferrers (a newer aiobotocore has it)",
                code=UNKNOWN_OPERATION,
                operation="ListImageReferrers",
            )
        params: dict[str, Any] = {
            "repositoryName": request.repository_name,
            "subjectId": {"imageDigest": request.subject_digest},
        }
        _opt(request.registry_id, "registryId", params)
        given: dict[str, Any] = {}
        if request.artifact_types:
            given["artifactTypes"] = list(request.artifact_types)
        _opt(request.artifact_status, "artifactStatus", given)
        if given:
            params["filter"] = given
        if request.max_results is not None:
            params["maxResults"] = request.max_results
        _opt(request.next_token, "nextToken", params)
        data = await self._call(
            "ListImageReferrers",
            self._client.list_image_referrers,
            params,
            cancellation_token,
            retry,
        )
        return ListImageReferrersResponse(
            referrers=tuple(_referrer(item) for item in data.get("referrers") or ()),
            next_token=data.get("nextToken") or None,
        )


def _referrer(item: dict[str, Any]) -> ImageReferrer:
    """One ListImageReferrers entry; ProtocolViolationError unless its digest is a sha256
    digest (anything else would be looked up as a tag, or refused as the caller's input)."""
    digest = item.get("digest")
    try:
        validate_digest(digest)
    except InvalidArgumentError:
        raise ProtocolViolationError(
            f"a referrer whose digest is no sha256 digest ({str(digest)[:80]!r})",
            operation="ListImageReferrers",
        ) from None
    return ImageReferrer(
        digest=str(digest),
        media_type=str(item.get("mediaType", "")),
        size=int(item.get("size", 0)),
        artifact_type=item.get("artifactType"),
        annotations=dict(item.get("annotations") or {}),
        artifact_status=item.get("artifactStatus"),
    )


@contextlib.contextmanager
def _bad_configuration() -> Iterator[None]:
    """A plain ValueError while botocore makes a client comes from a setting it read: an
    AWS_* variable or a profile's (``max_attempts`` that is no number, a credential_process
    whose output is not its JSON): an InvalidArgumentError that says so."""
    try:
        yield
    except InvalidArgumentError:
        raise
    except ValueError as exc:
        raise InvalidArgumentError(
            "AWS configuration",
            f"{exc} (a setting of the AWS_* variables or of the profile, such as max_attempts"
            " or the output of credential_process)",
        ) from exc


def _timestamp(value: object) -> float | None:
    """botocore's datetime (or a number of seconds) as seconds since the epoch."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None
