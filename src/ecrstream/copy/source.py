"""Where copy_image reads from: a registry or ECR, and one blob of it as a ``LayerSource``.

``RemoteBlobSource`` is a blob of known size and digest read with ranged GETs: reads in
order continue the open response (the bytes go from the HTTP body straight into the
pipeline's buffers, no temporary file); a read at another offset (a re-alignment backwards)
opens a new ranged GET there, so it can rewind. It is ``verified_by_destination``: a resumed
upload's first GET asks for ``Range: bytes=<committed>-`` and the prefix ECR holds is never
downloaded again (ECR checks the digest at CompleteLayerUpload); a source that ignores Range
sends the whole blob and the prefix is read and dropped (``BlobReader``), not sent.
Source faults are retried inside ``BlobReader`` from the byte reached.

``ImageSource`` is what copy_image needs of a source: manifests by tag or digest, and blob
readers. ``RegistrySource`` reads any OCI distribution registry (``RegistryClient``);
``EcrSource`` reads ECR through its API (BatchGetImage, GetDownloadUrlForLayer) and reuses
``BlobReader`` on the download URL, fetching a fresh URL when one expires.

An ECR source's referrers come from ListImageReferrers, the ECR API's own listing (every
page; ACTIVE artifacts only, ECR's default: an archived one cannot be pulled until restored).
Where the endpoint or the installed botocore lacks that call (``UnknownOperationException``:
an older ECR-compatible service, an old botocore; or 501 Not Implemented: an emulator's), they
come from ECR's registry endpoint, as every OCI client reads them: ECR has served the OCI
1.1 referrers API (``GET /v2/<name>/referrers/<digest>``) since it took OCI Image and
Distribution 1.1 (announced 27 June 2024,
https://aws.amazon.com/about-aws/whats-new/2024/06/amazon-ecr-oci-image-distribution-version-1-1/;
how it works:
https://aws.amazon.com/blogs/opensource/diving-into-oci-image-and-distribution-1-1-support-in-amazon-ecr/).
That endpoint takes docker's login: Basic auth, user ``AWS``, the password inside
GetAuthorizationToken's token, at its ``proxyEndpoint``
(``https://ACCOUNT.dkr.ecr.REGION.amazonaws.com``); one that answers 404 there has no
referrers API, and the tags are looked up instead, as for a registry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from ecrstream.cancellation import CancellationToken
from ecrstream.client import UNKNOWN_OPERATION, EcrClient
from ecrstream.errors import (
    DigestMismatchError,
    EcrServiceError,
    ProtocolViolationError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from ecrstream.models import (
    BatchGetImageRequest,
    BatchGetImageResponse,
    GetAuthorizationTokenRequest,
    GetDownloadUrlForLayerRequest,
    Image,
    ListImageReferrersRequest,
)
from ecrstream.registry.auth import redacted_url
from ecrstream.registry.blob import BlobReader
from ecrstream.registry.client import DEFAULT_REGISTRY_RETRY, RegistryClient
from ecrstream.registry.credentials import RegistryCredentials, credential_provider
from ecrstream.registry.manifest import ACCEPTED_MEDIA_TYPES, Manifest, media_type_of
from ecrstream.registry.reference import ImageReference
from ecrstream.registry.transport import TransientFault, Transport
from ecrstream.retry import RetryPolicy
from ecrstream.source import CheckpointFields

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "LOGIN_MARGIN_SECONDS",
    "MAX_REFERRER_PAGES",
    "EcrSource",
    "ImageSource",
    "RegistrySource",
    "RemoteBlobSource",
]

#: The most ListImageReferrers pages (of 50) an ECR source reads for one digest.
MAX_REFERRER_PAGES: Final = 1000
#: An ECR source logs in to its registry endpoint again this long before the login's
#: ``expiresAt`` (GetAuthorizationToken's are valid 12 hours): a long copy never uses a
#: login that runs out mid-request.
LOGIN_MARGIN_SECONDS: Final = 300.0

#: Opens the blob's bytes from an offset (the first GET sent).
BlobOpener = Callable[[int], Awaitable[BlobReader]]


class RemoteBlobSource:
    """One remote blob as a ``LayerSource``: size known, rewinds by reopening at an offset.

    ``opener(offset)`` gives a ``BlobReader`` positioned there; the source owns the readers it
    opens and closes them in ``aclose``. The digest is checked by the uploader's hasher,
    or, for a resume that starts past the committed prefix, by ECR; the size by the reader
    (a body longer or shorter than ``size`` raises BlobSizeError).
    """

    can_rewind = True
    #: Content-addressed and costly to read again: a resume starts at the committed byte.
    verified_by_destination = True

    def __init__(self, digest: str, size: int, opener: BlobOpener) -> None:
        self.digest = digest
        self._size = size
        self._open = opener
        self._reader: BlobReader | None = None
        #: How many GETs were opened (each a ``BlobReader``; its own retries not counted).
        self.opens = 0

    @property
    def size(self) -> int:
        """The blob's size, from its descriptor."""
        return self._size

    async def read(self, offset: int, into: memoryview) -> int:
        """Fill ``into`` with the blob's bytes from ``offset``; fewer only at its end."""
        want = max(0, min(len(into), self._size - offset))
        if want == 0:
            return 0
        reader = self._reader
        if reader is None or reader.position != offset:
            await self._drop()
            self.opens += 1
            reader = self._reader = await self._open(offset)
        filled = 0
        while filled < want:
            count = await reader.readinto(into[filled:want])
            if count == 0:
                break
            filled += count
        return filled

    def release(self, offset: int) -> None:
        """Nothing held: a remote blob can be fetched again from any offset."""

    def checkpoint_fields(self) -> CheckpointFields:
        """The blob's size (its digest is the upload's ``expected_digest``)."""
        return CheckpointFields(source_size=self._size, source_length=self._size)

    def check_unchanged(self) -> None:
        """A blob is content-addressed: its digest, checked as it streams, is its identity."""

    async def _drop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def aclose(self) -> None:
        """Close the open response, if any (idempotent; does not block)."""
        await self._drop()


class ImageSource(Protocol):
    """What copy_image reads: pinned manifests and blob readers of one repository."""

    description: str

    async def manifest(self, reference: str, token: CancellationToken) -> Manifest:
        """The manifest ``reference`` (a tag or ``sha256:`` digest) names, digest checked."""

    async def open_blob(
        self, digest: str, size: int, offset: int, token: CancellationToken
    ) -> BlobReader:
        """A reader of the blob from ``offset`` (first GET sent)."""

    async def referrers(self, digest: str, token: CancellationToken) -> tuple[str, ...] | None:
        """The digests of the manifests the referrers API lists for ``digest``; None if the
        source has no referrers API (then the ``sha256-<hex>`` tag is looked up instead)."""

    async def tagged(self, tags: Sequence[str], token: CancellationToken) -> dict[str, Manifest]:
        """The manifests of those of ``tags`` the repository has (missing ones left out)."""

    async def aclose(self) -> None:
        """Free connections."""


class RegistrySource:
    """A repository of an OCI distribution registry, read by ``RegistryClient``."""

    def __init__(self, client: RegistryClient, reference: ImageReference) -> None:
        self._client = client
        self._reference = reference
        self.description = f"{reference.registry}/{reference.repository}"
        #: False once the registry answered 404 to the referrers API (it never will answer).
        self._referrers_api = True

    async def manifest(self, reference: str, token: CancellationToken) -> Manifest:
        """The manifest by tag or digest, from the registry."""
        return await self._client.get_manifest(self._named(reference), cancellation_token=token)

    def _named(self, reference: str) -> ImageReference:
        ref = self._reference
        if reference.startswith("sha256:"):
            return ImageReference(ref.registry, ref.repository, digest=reference)
        return ImageReference(ref.registry, ref.repository, tag=reference)

    async def open_blob(
        self, digest: str, size: int, offset: int, token: CancellationToken
    ) -> BlobReader:
        """``RegistryClient.open_blob`` in this repository."""
        return await self._client.open_blob(
            self._reference.repository, digest, size, offset, cancellation_token=token
        )

    async def referrers(self, digest: str, token: CancellationToken) -> tuple[str, ...] | None:
        """``RegistryClient.get_referrers``; after one None, None without asking again."""
        if not self._referrers_api:
            return None
        found = await self._client.get_referrers(
            self._reference.repository, digest, cancellation_token=token
        )
        if found is None:
            self._referrers_api = False
            return None
        return tuple(entry.digest for entry in found)

    async def tagged(self, tags: Sequence[str], token: CancellationToken) -> dict[str, Manifest]:
        """A HEAD per tag (most are absent; Docker Hub does not count a HEAD as a pull), then
        a GET of each one there; a 404 leaves the tag out."""
        found: dict[str, Manifest] = {}
        for tag in tags:
            if not await self._client.has_manifest(self._named(tag), cancellation_token=token):
                continue
            try:
                found[tag] = await self.manifest(tag, token)
            except RegistryNotFoundError:
                continue  # removed between the HEAD and the GET
        return found

    async def aclose(self) -> None:
        """Close the registry client."""
        await self._client.aclose()


class _DownloadUrlTransport(Transport):
    """GETs of layers' download URLs (from GetDownloadUrlForLayer), for BlobReaders.

    The blob is the last part of the path a BlobReader asks for. Its URL is asked for at the
    first GET and again after the storage refuses it (403: a presigned URL that expired),
    as a retried fault. No registry auth is sent.
    """

    __slots__ = ("_ecr", "_registry_id", "_repository_name", "_tokens", "_urls")

    def __init__(
        self,
        ecr: EcrClient,
        repository_name: str,
        registry_id: str | None,
        *,
        verify: bool | str | os.PathLike[str],
        read_timeout: float,
    ) -> None:
        super().__init__(
            "ecr-download",
            credential_provider(None, docker_config=False),
            plain_http=False,
            verify=verify,
            connect_timeout=30.0,
            read_timeout=read_timeout,
            user_agent="ecrstream",
        )
        self._ecr = ecr
        self._repository_name = repository_name
        self._registry_id = registry_id
        self._urls: dict[str, str] = {}
        self._tokens: dict[str, CancellationToken] = {}

    def token_for(self, digest: str, token: CancellationToken) -> None:
        """The token GetDownloadUrlForLayer calls for ``digest`` run under."""
        self._tokens[digest] = token

    async def send(
        self, method: str, path: str, *, scope: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """One GET of the blob's download URL (``scope`` is the registry's: unused)."""
        import aiohttp

        digest = path.rsplit("/", 1)[-1]
        url = self._urls.get(digest)
        if url is None:
            answer = await self._ecr.get_download_url_for_layer(
                GetDownloadUrlForLayerRequest(
                    repository_name=self._repository_name,
                    layer_digest=digest,
                    registry_id=self._registry_id,
                ),
                self._tokens.get(digest, CancellationToken.NONE),
            )
            url = self._urls[digest] = answer.download_url
        where = redacted_url(url)
        try:
            response = await self.session().request(method, url, headers=headers, ssl=self._ssl)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self.fault(exc, url) from exc
        status = response.status
        if status < 400 or status == 416:
            return response
        response.release()
        message = f"{where} answered HTTP {status} to a layer download"
        if status == 403:
            self._urls.pop(digest, None)  # expired or refused: the next attempt asks anew
            raise TransientFault(RegistryAuthError(message, status=status, url=where))
        if status == 404:
            raise RegistryNotFoundError(message, status=status, url=where)
        if status == 429 or status >= 500:
            raise TransientFault(RegistryError(message, status=status, url=where))
        raise RegistryError(message, status=status, url=where)


class EcrSource:
    """A repository in ECR, read through the ECR API with its own client and registry id."""

    def __init__(
        self,
        client: EcrClient,
        repository_name: str,
        registry_id: str | None,
        *,
        verify: bool | str | os.PathLike[str] = True,
        retry: RetryPolicy = DEFAULT_REGISTRY_RETRY,
        read_timeout: float = 60.0,
    ) -> None:
        self._client = client
        self.repository_name = repository_name
        self.registry_id = registry_id
        self._retry = retry
        self._verify = verify
        self._read_timeout = read_timeout
        self._transport = _DownloadUrlTransport(
            client, repository_name, registry_id, verify=verify, read_timeout=read_timeout
        )
        self.description = f"ECR {registry_id or '(default registry)'}/{repository_name}"
        #: The client of the registry endpoint (the referrers API), made when first needed.
        self._registry: RegistryClient | None = None
        self._login_expires_at: float | None = None
        #: False once the registry endpoint answered 404 to the referrers API.
        self._referrers_api = True
        #: False once ListImageReferrers turned out unknown (to the endpoint or botocore).
        self._list_referrers = True

    async def manifest(self, reference: str, token: CancellationToken) -> Manifest:
        """BatchGetImage of one tag or digest; its bytes hashed and checked."""
        response = await self._batch_get_image((reference,), token)
        for image in response.images:
            if image.image_manifest is not None:
                return self._checked(image, image.image_manifest, reference)
        reasons = "; ".join(
            f"{failure.get('failureCode')}: {failure.get('failureReason')}"
            for failure in response.failures
        )
        raise RegistryNotFoundError(
            f"{self.description}: no image {reference}" + (f" ({reasons})" if reasons else "")
        )

    async def referrers(self, digest: str, token: CancellationToken) -> tuple[str, ...] | None:
        """ListImageReferrers' digests, every page; where it is unknown, the referrers API of
        the registry endpoint (see the module notes), logged in with GetAuthorizationToken;
        None (then and after) if that answers 404: no such API there, the tag schema is looked
        up instead.

        Raises:
            EcrServiceError, EcrConnectionError: ListImageReferrers' or GetAuthorizationToken's.
            ProtocolViolationError: ListImageReferrers gave the same nextToken twice, or more
                than MAX_REFERRER_PAGES pages.
            RegistryAuthError: the endpoint refused the login (no credential in the text).
            RegistryError (and subclasses), ManifestInvalidError: its other failures.
        """
        if self._list_referrers:
            try:
                return await self._listed_referrers(digest, token)
            except EcrServiceError as exc:
                # ECR's answer to an operation it lacks; 501 Not Implemented: an emulator's
                if exc.code != UNKNOWN_OPERATION and exc.status_code != 501:
                    raise
                self._list_referrers = False
        if not self._referrers_api:
            return None
        registry = await self._registry_client(token)
        try:
            found = await registry.get_referrers(
                self.repository_name, digest, cancellation_token=token
            )
        except RegistryAuthError as exc:
            raise RegistryAuthError(
                f"{self.description}: the registry endpoint {registry.registry} (where ECR"
                f" serves the referrers API) refused the login GetAuthorizationToken gave: {exc}",
                status=exc.status,
                url=exc.url,
            ) from None
        if found is None:
            self._referrers_api = False
            return None
        return tuple(entry.digest for entry in found)

    async def _listed_referrers(self, digest: str, token: CancellationToken) -> tuple[str, ...]:
        """Every page of ListImageReferrers for ``digest`` (50 a page), each digest once."""
        found: dict[str, None] = {}
        next_token: str | None = None
        asked: set[str] = set()
        for _ in range(MAX_REFERRER_PAGES):
            page = await self._client.list_image_referrers(
                ListImageReferrersRequest(
                    repository_name=self.repository_name,
                    subject_digest=digest,
                    registry_id=self.registry_id,
                    max_results=50,
                    next_token=next_token,
                ),
                token,
            )
            found.update(dict.fromkeys(referrer.digest for referrer in page.referrers))
            next_token = page.next_token
            if next_token is None:
                return tuple(found)
            if next_token in asked:
                raise ProtocolViolationError(
                    f"{self.description}: the same nextToken came back twice (a listing that"
                    " never ends)",
                    operation="ListImageReferrers",
                )
            asked.add(next_token)
        raise ProtocolViolationError(
            f"{self.description}: still a nextToken after {MAX_REFERRER_PAGES} pages of"
            f" referrers of {digest} (a listing that never ends)",
            operation="ListImageReferrers",
        )

    async def _registry_client(self, token: CancellationToken) -> RegistryClient:
        """The registry endpoint's client: its address and login from GetAuthorizationToken
        (of ``registry_id``'s registry), this source's TLS setting and retries; made anew
        once the login is within LOGIN_MARGIN_SECONDS of its ``expiresAt``."""
        if self._registry is not None:
            expires_at = self._login_expires_at
            if expires_at is None or time.time() < expires_at - LOGIN_MARGIN_SECONDS:
                return self._registry
            # A copy that ran longer than the login (ECR's last 12 hours): log in again.
            stale, self._registry = self._registry, None
            await stale.aclose()
        from yarl import URL

        answer = await self._client.get_authorization_token(
            GetAuthorizationTokenRequest(
                registry_ids=(self.registry_id,) if self.registry_id else ()
            ),
            token,
        )
        if not answer.authorization_data:
            raise RegistryAuthError(f"{self.description}: GetAuthorizationToken gave no login")
        login = answer.authorization_data[0]
        try:
            user, colon, password = (
                base64.b64decode(login.authorization_token, validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            user, colon, password = "", "", ""
        if not colon or not user or not password:
            # Not quoted: it is the secret.
            raise RegistryAuthError(
                f"{self.description}: GetAuthorizationToken's token is not base64 of USER:PASSWORD"
            )
        try:
            endpoint = URL(login.proxy_endpoint)
        except ValueError:
            endpoint = URL()
        if endpoint.scheme not in ("https", "http") or not endpoint.host:
            raise RegistryError(
                f"{self.description}: GetAuthorizationToken's proxyEndpoint is no http(s) URL"
                f" ({redacted_url(login.proxy_endpoint)})"
            )
        host = (
            endpoint.host
            if endpoint.explicit_port is None
            else (f"{endpoint.host}:{endpoint.explicit_port}")
        )
        self._login_expires_at = login.expires_at
        self._registry = RegistryClient(
            host,
            credentials=RegistryCredentials(username=user, password=password),
            docker_config=False,
            plain_http=endpoint.scheme == "http",
            verify=self._verify,
            retry=self._retry,
            read_timeout=self._read_timeout,
        )
        return self._registry

    async def tagged(self, tags: Sequence[str], token: CancellationToken) -> dict[str, Manifest]:
        """One BatchGetImage of all ``tags``; those ECR does not have are left out.

        Raises:
            RegistryError: ECR could not read one of them for another reason than its absence
                (KmsError, a pull-through cache's upstream failing...): a referrer may be there.
            DigestMismatchError: a manifest that does not hash to the digest ECR gave.
        """
        if not tags:
            return {}
        response = await self._batch_get_image(tuple(tags), token)
        for failure in response.failures:
            if failure.get("failureCode") != "ImageNotFound":
                tag = (failure.get("imageId") or {}).get("imageTag", "?")
                raise RegistryError(
                    f"{self.description}: BatchGetImage could not read tag {tag}"
                    f" ({failure.get('failureCode')}: {failure.get('failureReason')})"
                )
        found: dict[str, Manifest] = {}
        for image in response.images:
            tag = image.image_tag
            if image.image_manifest is not None and tag is not None and tag in tags:
                found[tag] = self._checked(image, image.image_manifest, tag)
        return found

    async def _batch_get_image(
        self, image_ids: tuple[str, ...], token: CancellationToken
    ) -> BatchGetImageResponse:
        return await self._client.batch_get_image(
            BatchGetImageRequest(
                repository_name=self.repository_name,
                image_ids=image_ids,
                accepted_media_types=ACCEPTED_MEDIA_TYPES,
                registry_id=self.registry_id,
            ),
            token,
        )

    def _checked(self, image: Image, manifest: str, reference: str) -> Manifest:
        """``image``'s manifest, its digest checked against ECR's and a digest reference."""
        data = manifest.encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        for expected in (image.image_digest, reference):
            if expected is not None and expected.startswith("sha256:") and expected != digest:
                raise DigestMismatchError(
                    f"{self.description}: the manifest BatchGetImage returned for"
                    f" {reference} hashes to {digest}, not {expected}",
                    expected=expected,
                    actual=digest,
                )
        return Manifest(digest, media_type_of(data, image.image_manifest_media_type), data)

    async def open_blob(
        self, digest: str, size: int, offset: int, token: CancellationToken
    ) -> BlobReader:
        """A ``BlobReader`` on the layer's download URL, from ``offset``."""
        self._transport.token_for(digest, token)
        reader = BlobReader(
            self._transport, self._retry, self.repository_name, digest, size, offset, token
        )
        try:
            await reader.open()
        except BaseException:
            await reader.aclose()
            raise
        return reader

    async def aclose(self) -> None:
        """Close the download session and the registry endpoint's client (the ECR client is
        the caller's)."""
        registry, self._registry = self._registry, None
        try:
            await self._transport.close()
        finally:
            if registry is not None:
                await registry.aclose()
