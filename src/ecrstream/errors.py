"""Everything ecrstream raises on purpose, and the one place botocore errors are translated.

The tree::

    Exception
    ├── OperationCanceledError            (ecrstream.cancellation; a token stopped the operation)
    │   └── PushCanceledError             push_image stopped (.committed_digests .pending_digests)
    │       └── CopyCanceledError         copy_image stopped (+ .checkpoints .source_digest)
    ├── ValueError
    │   └── InvalidArgumentError          an argument broke a rule (.field, .rule); raised before
    │                                     any request is sent; also an EcrStreamError
    └── EcrStreamError
        ├── InvalidArgumentError          (the same class: both a ValueError and an EcrStreamError)
        ├── EcrServiceError               ECR answered with an error (.code .message .operation
        │   │                             .request_id .status_code); unknown codes stay here
        │   ├── InvalidLayerPartError     (.last_valid_byte_received, .upload_id)
        │   ├── InvalidParameterError
        │   ├── KmsError
        │   ├── LimitExceededError
        │   ├── RepositoryNotFoundError
        │   ├── ServerError               transient: retried
        │   ├── ThrottlingError           transient: retried
        │   ├── UploadNotFoundError
        │   ├── LayerPartTooSmallError
        │   ├── LayerAlreadyExistsError
        │   ├── EmptyUploadError
        │   ├── InvalidLayerError
        │   ├── LayersNotFoundError
        │   ├── ImageAlreadyExistsError
        │   ├── ImageTagAlreadyExistsError
        │   ├── ImageDigestDoesNotMatchError
        │   ├── ReferencedImagesNotFoundError
        │   └── AuthenticationError       the credentials were refused (bad key, signature, expired)
        ├── EcrConnectionError            transient: no answer (connection refused or reset,
        │   │                             read timeout, response lost); .operation, .timed_out
        │   └── CertificateVerificationError  the endpoint's TLS certificate is not trusted:
        │                                 permanent, never retried (not is_transient)
        ├── CredentialsError              no usable AWS credentials were found (.expired)
        ├── DigestMismatchError           computed digest differs from the expected/returned one
        │   └── CorruptBlobError          a blob of an image source does not hash to its digest
        │                                 (.kind .member .source; found as it streams)
        ├── SourceChangedError            the file changed while it was read
        ├── ProtocolViolationError        the endpoint answered something ECR never would (it
        │                                 claims bytes never sent, refuses the byte it asks
        │                                 for); .operation
        ├── ImageSourceError              push_image's source is not a usable image: malformed,
        │   │                             unsafe, or not an image at all (.source); before any
        │   │                             request
        │   └── ImageSelectionError       the source holds several images, or none by the name
        │                                 asked for (.image_ref .names)
        └── RegistryError                 a source registry failed a request (.status .url,
            │                             never with credentials); unknown statuses stay here
            ├── RegistryAuthError         401/403, a refused token request, a failed
            │                             credential helper or an unreadable docker config
            ├── RegistryNotFoundError     404: no such repository, manifest or blob
            ├── ManifestInvalidError      not a manifest ecrstream takes (schema 1, unknown
            │                             media type, over the size limit, malformed JSON)
            ├── BlobSizeError             a blob has more or fewer bytes than its descriptor
            └── RegistryConnectionError   no answer, reset, stalled or truncated body, still
                                          failing when the retries ran out (.timed_out)

``map_botocore_errors(operation)`` is the boundary, a context manager around every call into
aiobotocore: it maps a botocore/aiohttp exception raised inside it to the most specific class
above (``translate_botocore_error``) and raises that ``from`` the original; anything it does
not know passes unchanged. It only ever catches ``Exception`` (never ``BaseException``), so
task cancellation passes through untouched. Importing this module imports neither botocore
nor aiohttp: they are imported when an exception is translated.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from ecrstream.cancellation import CancellationToken, OperationCanceledError

__all__ = [
    "AuthenticationError",
    "BlobSizeError",
    "CertificateVerificationError",
    "CorruptBlobError",
    "CredentialsError",
    "DigestMismatchError",
    "EcrConnectionError",
    "EcrServiceError",
    "EcrStreamError",
    "EmptyUploadError",
    "ImageAlreadyExistsError",
    "ImageDigestDoesNotMatchError",
    "ImageSelectionError",
    "ImageSourceError",
    "ImageTagAlreadyExistsError",
    "InvalidArgumentError",
    "InvalidLayerError",
    "InvalidLayerPartError",
    "InvalidParameterError",
    "KmsError",
    "LayerAlreadyExistsError",
    "LayerPartTooSmallError",
    "LayersNotFoundError",
    "LimitExceededError",
    "ManifestInvalidError",
    "ProtocolViolationError",
    "PushCanceledError",
    "CopyCanceledError",
    "ReferencedImagesNotFoundError",
    "RegistryAuthError",
    "RegistryConnectionError",
    "RegistryError",
    "RegistryNotFoundError",
    "RepositoryNotFoundError",
    "ServerError",
    "SourceChangedError",
    "ThrottlingError",
    "UploadNotFoundError",
    "is_transient",
    "map_botocore_errors",
    "translate_botocore_error",
]


class EcrStreamError(Exception):
    """Root of every error ecrstream raises on purpose (OperationCanceledError aside)."""


class InvalidArgumentError(EcrStreamError, ValueError):
    """An argument broke a rule; raised before any request is sent.

    ``field`` is the argument's Python name (``part_size``, ``image_tag``), so that a caller
    such as the command line can name its own option for it; ``rule`` says what was wrong.
    The message is ``"<field>: <rule>"``.
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class EcrServiceError(EcrStreamError):
    """ECR answered a request with an error.

    ``code`` is the AWS error code (``"RepositoryNotFoundException"``), ``message`` the
    service's text, ``operation`` the API operation, ``request_id`` the AWS request id (quote
    it to AWS support), ``status_code`` the HTTP status. One subclass exists per ECR error code
    the upload operations can return; codes without one raise this class itself.
    """

    #: The AWS error code this class stands for (None on the base class).
    aws_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str,
        operation: str,
        request_id: str | None = None,
        status_code: int | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.operation = operation
        self.request_id = request_id
        self.status_code = status_code
        super().__init__(f"{operation}: {code}: {message}")


class InvalidLayerPartError(EcrServiceError):
    """The part was refused (out of order, too large); ECR says which byte it has last.

    ``last_valid_byte_received`` is the offset of the last byte ECR holds for the upload (-1
    for none, or None when ECR did not say); the uploader re-aligns to the byte after it.
    """

    aws_code = "InvalidLayerPartException"

    def __init__(self, message: str, **kwargs: Any) -> None:
        response = kwargs.get("response") or {}
        last = response.get("lastValidByteReceived")
        self.last_valid_byte_received: int | None = int(last) if last is not None else None
        self.upload_id: str | None = response.get("uploadId")
        super().__init__(message, **kwargs)


class InvalidParameterError(EcrServiceError):
    """ECR found a parameter invalid."""

    aws_code = "InvalidParameterException"


class KmsError(EcrServiceError):
    """ECR could not use the repository's KMS key."""

    aws_code = "KmsException"


class LimitExceededError(EcrServiceError):
    """A service quota would be exceeded."""

    aws_code = "LimitExceededException"


class RepositoryNotFoundError(EcrServiceError):
    """The repository does not exist in this registry (create it, or check the name/region)."""

    aws_code = "RepositoryNotFoundException"


class ServerError(EcrServiceError):
    """ECR failed internally (transient; the uploader retries)."""

    aws_code = "ServerException"


class ThrottlingError(EcrServiceError):
    """Too many requests (transient; the uploader backs off and retries)."""

    aws_code = "ThrottlingException"


class UploadNotFoundError(EcrServiceError):
    """The upload id is unknown to ECR (expired, completed, or from another repository)."""

    aws_code = "UploadNotFoundException"


class LayerPartTooSmallError(EcrServiceError):
    """A part other than the last was under ECR's 5 MiB minimum."""

    aws_code = "LayerPartTooSmallException"


class LayerAlreadyExistsError(EcrServiceError):
    """The layer is already in the repository (the uploader counts this as success)."""

    aws_code = "LayerAlreadyExistsException"


class EmptyUploadError(EcrServiceError):
    """The upload holds no bytes; also raised locally, before any request, for empty input."""

    aws_code = "EmptyUploadException"


class InvalidLayerError(EcrServiceError):
    """ECR found the layer's digest not to match its bytes."""

    aws_code = "InvalidLayerException"


class LayersNotFoundError(EcrServiceError):
    """PutImage names layers the repository does not have (yet)."""

    aws_code = "LayersNotFoundException"


class ImageAlreadyExistsError(EcrServiceError):
    """The same image (manifest and tag) is already in the repository."""

    aws_code = "ImageAlreadyExistsException"


class ImageTagAlreadyExistsError(EcrServiceError):
    """The tag exists on another image and the repository's tags are immutable."""

    aws_code = "ImageTagAlreadyExistsException"


class ImageDigestDoesNotMatchError(EcrServiceError):
    """The image digest given to PutImage does not match the manifest."""

    aws_code = "ImageDigestDoesNotMatchException"


class ReferencedImagesNotFoundError(EcrServiceError):
    """An image index references manifests that are not in the repository."""

    aws_code = "ReferencedImagesNotFoundException"


class AuthenticationError(EcrServiceError):
    """AWS refused the credentials (unknown key, bad signature, expired token, access denied)."""

    aws_code = "UnrecognizedClientException"


class EcrConnectionError(EcrStreamError):
    """No answer from the endpoint: refused, reset, read timeout or lost response (transient).

    ``operation`` names the API operation; ``timed_out`` is True for a read/connect timeout.
    The cause is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, operation: str, timed_out: bool = False) -> None:
        self.operation = operation
        self.timed_out = timed_out
        super().__init__(f"{operation}: {message}")


class CertificateVerificationError(EcrConnectionError):
    """The endpoint's TLS certificate could not be verified; the request is not retried.

    A connection error that is not transient: a certificate does not become trusted by
    asking again. Trust the CA that signed it (``AWS_CA_BUNDLE=<bundle.pem>``,
    ``EcrClient.create(verify="<bundle.pem>")``, the command line's ``--ca-bundle``), or, on
    a network you trust, do not check it (``verify=False``, ``--no-verify-ssl``).
    ``operation`` names the request.
    """

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message, operation=operation)


class CredentialsError(EcrStreamError):
    """No usable AWS credentials (set AWS_PROFILE, AWS_ACCESS_KEY_ID/..., or an IAM role).

    ``expired``: there were credentials, but they are expired and refreshing them gave
    expired ones again (a credential_process, SSO, an assumed role).
    """

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class DigestMismatchError(EcrStreamError):
    """A computed digest differs from the one expected or returned.

    ``expected`` and ``actual`` are ``sha256:<hex>`` strings; ``actual`` is ``""`` when ECR's
    digest check found the mismatch (a resumed copy whose committed prefix was not read again).
    """

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class SourceChangedError(EcrStreamError):
    """The file changed (size or modification time) while it was read."""


class CorruptBlobError(DigestMismatchError):
    """A blob of push_image's source does not hash to its digest: the source is corrupt.

    Found while the blob streams (its parts went up; its upload is never completed).
    ``expected`` is the blob's digest, ``actual`` what its bytes hash to; ``kind`` is
    ``"layer"`` or ``"config"``, ``member`` the blob's path inside the source (``blobs/sha256/...``
    in an OCI layout), ``source`` the archive or folder. The message names all of them.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: str,
        actual: str,
        kind: Literal["layer", "config"],
        member: str,
        source: str,
    ) -> None:
        super().__init__(message, expected=expected, actual=actual)
        self.kind = kind
        self.member = member
        self.source = source


class ImageSourceError(EcrStreamError):
    """push_image's source is not a usable image: malformed, unsafe, or not an image at all.

    Raised before any request. ``source`` is the path of the archive or folder (None where
    it is not known); the message says what is wrong, where in the source.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class ImageSelectionError(ImageSourceError):
    """The source holds several images and none was chosen, or none (or several) by that name.

    ``image_ref`` is the name asked for (None: none was given), ``names`` every name the
    source lists for its images (index.json ref names, manifest.json RepoTags), so that a
    caller can offer them under its own option name.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        image_ref: str | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, source=source)
        self.image_ref = image_ref
        self.names = names


class PushCanceledError(OperationCanceledError):
    """push_image stopped because its token was canceled.

    ``committed_digests`` lists the blobs this push uploaded and committed before it stopped
    (a second push finds them and skips them); ``pending_digests`` the blobs it meant to
    upload that are not committed. A blob whose CompleteLayerUpload was cut off may be on ECR
    without being listed; a second push finds it too.
    """

    committed_digests: tuple[str, ...]
    pending_digests: tuple[str, ...]

    def __init__(
        self,
        message: str | None = None,
        cancellation_token: CancellationToken = CancellationToken.NONE,
        *,
        committed_digests: Sequence[str] = (),
        pending_digests: Sequence[str] = (),
    ) -> None:
        """Create the error with what was committed and what was left."""
        super().__init__(message, cancellation_token)
        self.committed_digests = tuple(committed_digests)
        self.pending_digests = tuple(pending_digests)


class CopyCanceledError(PushCanceledError):
    """copy_image stopped because its token was canceled; pass it as ``resume=`` to go on.

    As PushCanceledError, plus ``checkpoints``: the uploads that were in flight, by blob
    digest (``UploadCheckpoint`` each), and ``source_digest``: the manifest digest the copy
    pinned, which a resume copies (so a tag moved meanwhile does not mix two images).
    """

    checkpoints: dict[str, Any]
    source_digest: str | None

    def __init__(
        self,
        message: str | None = None,
        cancellation_token: CancellationToken = CancellationToken.NONE,
        *,
        committed_digests: Sequence[str] = (),
        pending_digests: Sequence[str] = (),
        checkpoints: dict[str, Any] | None = None,
        source_digest: str | None = None,
    ) -> None:
        """Create the error with what was committed, left, and in flight."""
        super().__init__(
            message,
            cancellation_token,
            committed_digests=committed_digests,
            pending_digests=pending_digests,
        )
        self.checkpoints = dict(checkpoints or {})
        self.source_digest = source_digest


class RegistryError(EcrStreamError):
    """A source registry (OCI distribution API) failed a request.

    ``status`` is the HTTP status (None when no answer came), ``url`` the request's URL without
    credentials or query string (presigned storage URLs carry their signature there).
    """

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        self.status = status
        self.url = url
        super().__init__(message)


class RegistryAuthError(RegistryError):
    """The registry or its token service refused us, or credentials could not be found.

    401/403 answers, a token request refused, a credential helper that failed, or a docker
    config.json that cannot be read. The message never contains a credential.
    """


class RegistryNotFoundError(RegistryError):
    """404: the repository, manifest (tag or digest) or blob is not in the registry."""


class ManifestInvalidError(RegistryError):
    """The registry served a manifest ecrstream does not take.

    Schema 1, an unknown media type, one over the size limit, or JSON that is not a valid
    manifest or index (the message names the field).
    """


class BlobSizeError(RegistryError):
    """A blob has more (overrun) or fewer (underrun) bytes than its descriptor's size.

    ``expected`` is the descriptor's size, ``actual`` what the registry has or sent.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: int,
        actual: int,
        status: int | None = None,
        url: str | None = None,
    ) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(message, status=status, url=url)


class RegistryConnectionError(RegistryError):
    """No usable answer from the registry once the retries ran out (transient at heart).

    Refused or reset connections, a body that stalled past the read timeout (``timed_out``),
    or a truncated body. (5xx or 429 on every attempt raise :class:`RegistryError` with the
    last ``status``.) The last cause is chained as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str | None = None,
        timed_out: bool = False,
    ) -> None:
        self.timed_out = timed_out
        super().__init__(message, status=status, url=url)


class ProtocolViolationError(EcrStreamError):
    """The endpoint answered something a real ECR never would; nothing was completed.

    ECR cannot truthfully claim bytes the client never sent, nor refuse a part that starts
    at the very byte it asks for. Such an answer comes from a broken proxy, emulator or
    middlebox on the way: ``operation`` names the request that got it, and the message says
    what was claimed. Check what sits between the client and ECR (``--endpoint-url``, a
    proxy); a checkpoint taken at this point never claims more than the client sent.
    """

    def __init__(self, message: str, *, operation: str) -> None:
        self.operation = operation
        super().__init__(f"{operation}: {message}")


_AUTH_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "ExpiredToken",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "IncompleteSignature",
        "MissingAuthenticationTokenException",
    }
)

_BY_CODE: dict[str, type[EcrServiceError]] = {
    cls.aws_code: cls
    for cls in (
        InvalidLayerPartError,
        InvalidParameterError,
        KmsError,
        LimitExceededError,
        RepositoryNotFoundError,
        ServerError,
        ThrottlingError,
        UploadNotFoundError,
        LayerPartTooSmallError,
        LayerAlreadyExistsError,
        EmptyUploadError,
        InvalidLayerError,
        LayersNotFoundError,
        ImageAlreadyExistsError,
        ImageTagAlreadyExistsError,
        ImageDigestDoesNotMatchError,
        ReferencedImagesNotFoundError,
    )
    if cls.aws_code is not None
}
_BY_CODE.update({code: AuthenticationError for code in _AUTH_CODES})
_BY_CODE["ThrottledException"] = ThrottlingError
_BY_CODE["TooManyRequestsException"] = ThrottlingError
_BY_CODE["RequestLimitExceeded"] = ThrottlingError


def _service_error(
    code: str,
    message: str,
    *,
    operation: str,
    request_id: str | None = None,
    status_code: int | None = None,
    response: dict[str, Any] | None = None,
) -> EcrServiceError:
    """Build the most specific EcrServiceError for an AWS error code."""
    cls = _BY_CODE.get(code, EcrServiceError)
    if cls is EcrServiceError and _retryable_status(status_code):
        cls = ServerError
    return cls(
        message,
        code=code,
        operation=operation,
        request_id=request_id,
        status_code=status_code,
        response=response,
    )


def translate_botocore_error(exc: Exception, operation: str) -> Exception:
    """Map one exception raised by an aiobotocore call to the matching ecrstream error.

    Returns the new exception (the caller raises it ``from exc``); an exception it does not
    know is returned unchanged. Never given BaseException: cancellation is not translated.
    Prefer ``map_botocore_errors``, which does the raising.
    """
    # Imported here, not at module level: ``import ecrstream`` must not pay for botocore and
    # aiohttp (both are loaded by then: the exception came from them).
    import aiohttp
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
        ReadTimeoutError,
        SSLError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        metadata = exc.response.get("ResponseMetadata", {})
        status = metadata.get("HTTPStatusCode")
        code = str(error.get("Code") or (f"HTTP{status}" if status else "Unknown"))
        message = str(error.get("Message") or error.get("message") or "")
        if not message and status:
            message = f"HTTP {status} without an error message"
        return _service_error(
            code,
            message,
            operation=operation,
            request_id=metadata.get("RequestId"),
            status_code=status,
            response=dict(exc.response),
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return CredentialsError(
            f"{operation}: no usable AWS credentials ({exc}); set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an IAM role is available"
        )
    if isinstance(exc, RuntimeError) and "credentials" in str(exc).lower():
        # botocore's refresh of expired credentials (a credential_process, SSO, an assumed
        # role) that gave expired ones again raises a bare RuntimeError.
        return CredentialsError(
            f"{operation}: the AWS credentials are expired ({exc}); refresh them (aws sso"
            " login, the profile's credential_process or role) or set others",
            expired=True,
        )
    if isinstance(exc, NoRegionError):
        return InvalidArgumentError(
            "region_name",
            "no AWS region is configured; pass one or set AWS_REGION (or AWS_DEFAULT_REGION)",
        )
    if isinstance(exc, ParamValidationError):
        return InvalidArgumentError(operation, str(exc))
    if isinstance(exc, SSLError) and (reason := _certificate_problem(exc)) is not None:
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url") or "the endpoint"
        return CertificateVerificationError(
            f"the TLS certificate of {endpoint} cannot be verified ({reason}); not retried."
            " Trust its CA with AWS_CA_BUNDLE=<bundle.pem> or verify=<bundle.pem>"
            " (--ca-bundle), or skip the check with verify=False (--no-verify-ssl)",
            operation=operation,
        )
    if isinstance(exc, ReadTimeoutError | TimeoutError | asyncio.TimeoutError):
        return EcrConnectionError(f"read timed out ({exc})", operation=operation, timed_out=True)
    if isinstance(exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError):
        timed_out = "timeout" in type(exc).__name__.lower()
        return EcrConnectionError(
            f"no answer from the endpoint ({_connection_failure(exc)})",
            operation=operation,
            timed_out=timed_out,
        )
    if isinstance(exc, BotoCoreError):
        return EcrStreamError(f"{operation}: {exc}")
    return exc


@contextlib.contextmanager
def map_botocore_errors(operation: str) -> Iterator[None]:
    """Raise the ecrstream error for a botocore/aiohttp exception of the ``with`` body.

    The translation (``translate_botocore_error``) is raised ``from`` the original; an
    exception without one, and every BaseException (cancellation), passes unchanged.
    """
    try:
        yield
    except Exception as exc:
        translated = translate_botocore_error(exc, operation)
        if translated is exc:
            raise
        raise translated from exc


def _certificate_problem(exc: Exception) -> str | None:
    """Why the certificate behind ``exc`` failed verification; None if that is not it."""
    import ssl

    details: dict[str, Any] = getattr(exc, "kwargs", None) or {}
    seen: set[int] = set()
    current: BaseException | None = details.get("error")
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # aiohttp's ClientConnectorCertificateError is also an ssl.CertificateError; the
        # ssl error it wraps (certificate_error) says why.
        inner = getattr(current, "certificate_error", None)
        if isinstance(inner, ssl.SSLCertVerificationError):
            current = inner
        if isinstance(current, ssl.SSLCertVerificationError | ssl.CertificateError):
            return str(current)  # "[SSL: CERTIFICATE_VERIFY_FAILED] ...: <why>"
        current = current.__cause__ or current.__context__
    return None


_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def _connection_failure(exc: Exception) -> str:
    """What went wrong on the connection, in words that name the real cause.

    aiobotocore wraps a connection reset mid-request in botocore's EndpointConnectionError,
    whose text ("Could not connect to the endpoint URL") says the opposite of what happened;
    the aiohttp error it wraps (``kwargs["error"]``) knows better.
    """
    text = str(exc)
    from botocore.exceptions import BotoCoreError

    details: dict[str, Any] = getattr(exc, "kwargs", None) or {}
    cause = details.get("error") if isinstance(exc, BotoCoreError) else None
    if not isinstance(cause, BaseException):
        return text
    cause_text = str(cause) or type(cause).__name__
    reset = _reset_in_chain(cause)
    if reset is not None:
        endpoint = details.get("endpoint_url")
        where = f" by {endpoint}" if endpoint else ""
        reason = str(reset) or type(reset).__name__
        if reason not in cause_text:
            cause_text = f"{cause_text} ({reason})"
        return f"the connection was reset{where}: {cause_text}"
    return text if cause_text in text else f"{text}: {cause_text}"


def _reset_in_chain(error: BaseException) -> BaseException | None:
    """The connection reset behind ``error`` (itself, or a cause or context of it), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return current
        if getattr(current, "errno", None) in _RESET_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying the same request for: 5xx (not 501), throttling, no
    answer.

    Not an untrusted certificate (CertificateVerificationError): that never changes.
    """
    if isinstance(exc, CertificateVerificationError):
        return False
    if isinstance(exc, ServerError | ThrottlingError | EcrConnectionError):
        return True
    return (
        isinstance(exc, EcrServiceError)
        and type(exc) is EcrServiceError
        and _retryable_status(exc.status_code)
    )


def _retryable_status(status_code: int | None) -> bool:
    """A 5xx but 501 Not Implemented: an endpoint without the operation stays without it."""
    return status_code is not None and status_code >= 500 and status_code != 501
