"""``RegistryClient``: read manifests and blobs from one OCI distribution registry.

Read-only, over HTTPS (or plain HTTP when asked), with anonymous, Basic or token auth (see
:mod:`ecrstream.registry.auth`) and credentials given or found as docker finds them.
``get_manifest`` pins a tag to the digest of the exact bytes served; ``open_blob`` streams a
blob from any offset, resuming after source faults. aiohttp is imported when a client is
built, not with ecrstream.
"""

from __future__ import annotations

import hashlib
import os
from types import TracebackType
from typing import Final

from ecrstream.cancellation import CancellationToken, cancellation_scope
from ecrstream.errors import (
    DigestMismatchError,
    InvalidArgumentError,
    ManifestInvalidError,
    RegistryError,
    RegistryNotFoundError,
)
from ecrstream.registry.auth import redacted_url
from ecrstream.registry.blob import BlobReader
from ecrstream.registry.credentials import CredentialsArgument, credential_provider
from ecrstream.registry.manifest import (
    ACCEPTED_MEDIA_TYPES,
    OCI_INDEX,
    IndexChild,
    Manifest,
    index_children,
    media_type_of,
)
from ecrstream.registry.reference import (
    ImageReference,
    check_digest,
    check_registry,
    check_repository,
)
from ecrstream.registry.transport import Attempts, TransientFault, Transport
from ecrstream.retry import RetryPolicy

__all__ = ["DEFAULT_REGISTRY_RETRY", "MAX_MANIFEST_SIZE", "RegistryClient"]

#: The largest manifest get_manifest takes (the size distribution and ECR accept).
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
#: Retries for registry requests: 6 attempts in a row without progress, backoff up to 10 s.
DEFAULT_REGISTRY_RETRY: Final = RetryPolicy(max_attempts=6, base_delay=0.25, max_delay=10.0)
_USER_AGENT: Final = "ecrstream"
#: The most pages of one referrers list followed (a registry's Link loop stops there).
_MAX_REFERRER_PAGES: Final = 100
_ACCEPT: Final = ", ".join(ACCEPTED_MEDIA_TYPES)


class RegistryClient:
    """A read-only client of one registry (``host`` or ``host:port``), as an async context.

    ::

        async with RegistryClient(ref.registry) as registry:
            manifest = await registry.get_manifest(ref)
            async with await registry.open_blob(ref.repository, digest, size) as blob:
                while count := await blob.readinto(buffer):
                    ...

    ``credentials``: ``"USER:PASSWORD"``, a (user, password) pair,
    :class:`~ecrstream.registry.credentials.RegistryCredentials`, or a callable (sync or
    async) given the registry host; None (the default) looks in docker's config.json and
    credential helpers unless ``docker_config=False``, then anonymous. ``plain_http`` speaks
    HTTP instead of HTTPS; ``verify`` is True (the system CAs), False (no check) or the path
    of a CA bundle. ``read_timeout``: seconds without a byte before a response counts as
    stalled (and is retried). ``retry`` bounds consecutive failed attempts.

    Raises:
        InvalidArgumentError: a bad argument (named), before any request.
    """

    __slots__ = ("_max_manifest_size", "_retry", "_transport", "registry")

    def __init__(
        self,
        registry: str,
        *,
        credentials: CredentialsArgument | None = None,
        docker_config: bool = True,
        plain_http: bool = False,
        verify: bool | str | os.PathLike[str] = True,
        retry: RetryPolicy = DEFAULT_REGISTRY_RETRY,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
        user_agent: str = _USER_AGENT,
    ) -> None:
        if not isinstance(registry, str):
            raise InvalidArgumentError("registry", "must be a host name or host:port string")
        check_registry("registry", registry)
        if not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError("retry", "must be a RetryPolicy")
        if not isinstance(max_manifest_size, int) or max_manifest_size < 1:
            raise InvalidArgumentError("max_manifest_size", "must be an integer >= 1 (bytes)")
        self.registry = registry
        self._retry = retry
        self._max_manifest_size = max_manifest_size
        self._transport = Transport(
            registry,
            credential_provider(credentials, docker_config=docker_config),
            plain_http=plain_http,
            verify=verify,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent=user_agent,
        )

    def __repr__(self) -> str:
        return f"<RegistryClient {self._transport.base_url}>"

    @property
    def token_requests(self) -> int:
        """How many token requests the client has sent (tokens are cached per scope)."""
        return self._transport.auth.token_requests

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (open blob readers stop working)."""
        await self._transport.close()

    async def get_manifest(
        self,
        reference: ImageReference,
        *,
        cancellation_token: CancellationToken = CancellationToken.NONE,
    ) -> Manifest:
        """The manifest or index ``reference`` names, pinned: its digest is of the bytes served.

        The bytes are checked against the reference's digest (if it has one) and against the
        registry's Docker-Content-Digest header (if sha256). A tag resolves once: fetch the
        children and blobs by the digest returned, so a tag moved meanwhile cannot mix two
        images.

        Raises:
            InvalidArgumentError: ``reference`` is not an ImageReference of this registry.
            DigestMismatchError: the bytes do not match the pinned or announced digest.
            ManifestInvalidError: schema 1, another media type, over ``max_manifest_size``,
                or not JSON.
            RegistryNotFoundError, RegistryAuthError, RegistryConnectionError, RegistryError:
                the registry's answer, after the retries.
            OperationCanceledError: the token was canceled.
        """
        path, scope = self._manifest_path(reference)
        async with cancellation_scope(cancellation_token):
            attempts = Attempts(self._retry, cancellation_token)
            while True:
                try:
                    data, content_type, announced, where, _ = await self._fetch(path, scope)
                    break
                except TransientFault as fault:
                    await attempts.failed(fault)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        for expected, what in ((reference.digest, "the reference"), (announced, where)):
            if expected is not None and expected.startswith("sha256:") and expected != digest:
                raise DigestMismatchError(
                    f"the manifest {where} sent has digest {digest}, but {what} says {expected}",
                    expected=expected,
                    actual=digest,
                )
        return Manifest(digest, media_type_of(data, content_type), data)

    async def has_manifest(
        self,
        reference: ImageReference,
        *,
        cancellation_token: CancellationToken = CancellationToken.NONE,
    ) -> bool:
        """Whether the registry has the manifest ``reference`` names: one HEAD, no body.

        For looking up tags that are mostly absent (cosign's, the referrers tag schema's):
        Docker Hub counts a manifest GET against its pull rate limit, not a HEAD.

        Raises:
            InvalidArgumentError: ``reference`` is not an ImageReference of this registry.
            RegistryAuthError, RegistryConnectionError, RegistryError: the registry's answer
                (other than 404), after the retries.
            OperationCanceledError: the token was canceled.
        """
        path, scope = self._manifest_path(reference)
        async with cancellation_scope(cancellation_token):
            attempts = Attempts(self._retry, cancellation_token)
            while True:
                try:
                    response = await self._transport.send(
                        "HEAD", path, scope=scope, headers={"Accept": _ACCEPT}
                    )
                except RegistryNotFoundError:
                    return False
                except TransientFault as fault:
                    await attempts.failed(fault)
                    continue
                response.release()
                return response.status == 200

    def _manifest_path(self, reference: object) -> tuple[str, str]:
        """The manifest path of ``reference`` and its pull scope; checks it is ours."""
        if not isinstance(reference, ImageReference):
            raise InvalidArgumentError("reference", "must be an ImageReference")
        if reference.registry != self.registry:
            raise InvalidArgumentError(
                "reference",
                f"is in registry {reference.registry!r}; this client reads {self.registry!r}",
            )
        path = f"/v2/{reference.repository}/manifests/{reference.manifest_reference}"
        return path, f"repository:{reference.repository}:pull"

    async def get_referrers(
        self,
        repository: str,
        digest: str,
        *,
        cancellation_token: CancellationToken = CancellationToken.NONE,
    ) -> tuple[IndexChild, ...] | None:
        """The manifests that refer to ``digest`` (OCI 1.1 referrers API), or None without it.

        ``GET /v2/<repository>/referrers/<digest>``: the answer is an OCI image index whose
        ``manifests`` are the referrers' descriptors, each digest once. Pages linked by
        ``Link: <URL>; rel="next"`` (relative or absolute) are followed on this registry
        only; a link back to a page already read ends the list. None means the registry
        lacks the API: its first answer is a 404 (a registry with the API never answers
        one) or something that is not an image index; then the referrers tag schema (tag
        ``sha256-<hex>``) is where to look. A 200 with an empty index is the API's answer:
        no referrers (the tag schema is then not looked at).

        Raises:
            InvalidArgumentError: a bad repository or digest (named).
            ManifestInvalidError: a page over ``max_manifest_size``, or a later page that is
                no image index.
            RegistryError: a next page on another host (not asked: the credentials are this
                registry's), more than 100 pages, or a later page that is a 404.
            RegistryAuthError, RegistryConnectionError: the registry's answer, after the
                retries.
            OperationCanceledError: the token was canceled.
        """
        _check_repository_and_digest(repository, digest)
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        scope = f"repository:{repository}:pull"
        what = f"the referrers list of {digest} in {self.registry}/{repository}"
        found: dict[str, IndexChild] = {}
        visited: set[str] = set()
        async with cancellation_scope(cancellation_token):
            while path is not None:
                if path in visited:
                    break  # a Link back to a page already read: every page is in
                if len(visited) == _MAX_REFERRER_PAGES:
                    raise RegistryError(
                        f"{what} has more than {_MAX_REFERRER_PAGES} pages (Link rel=next);"
                        " ecrstream stops there rather than copy only some referrers"
                    )
                first = not visited
                visited.add(path)
                attempts = Attempts(self._retry, cancellation_token)
                while True:
                    try:
                        data, content_type, _, where, link = await self._fetch(
                            path, scope, accept=OCI_INDEX
                        )
                        break
                    except RegistryNotFoundError:
                        if first:
                            return None  # the spec's sign of a registry without the API
                        raise
                    except ManifestInvalidError as exc:
                        if exc.status != 200 and first:
                            return None  # 2xx other than 200: not the API's answer
                        # Over the size limit (a real answer, too big), or a later page
                        # that is no answer of the API.
                        raise ManifestInvalidError(
                            f"{what}: {exc}", status=exc.status, url=exc.url
                        ) from None
                    except TransientFault as fault:
                        await attempts.failed(fault)
                try:
                    page = Manifest("", media_type_of(data, content_type), data)
                    entries = index_children(page)
                except ManifestInvalidError as exc:
                    if first:
                        return None  # not an image index: not the referrers API
                    raise ManifestInvalidError(
                        f"{what}: the page at {where} is not an image index ({exc})",
                        status=200,
                        url=where,
                    ) from None
                for entry in entries:
                    found.setdefault(entry.digest, entry)
                path = self._next_page(link, what)
        return tuple(found.values())

    def _next_page(self, link: str | None, what: str) -> str | None:
        """The path (and query) of a ``Link: <URL>; rel="next"`` on this registry, or None.

        Raises:
            RegistryError: the next page is on another host (or scheme, or port): it is not
                asked, as it would be with this registry's credentials.
        """
        from yarl import URL

        target = _next_link(link)
        if target is None:
            return None
        base = URL(self._transport.base_url)
        try:
            url = base.join(URL(target))
        except ValueError:
            # Not echoed: a URL's query may carry a token.
            raise RegistryError(f"{what}: its Link header's next page is no URL") from None
        if url.origin() != base.origin():
            raise RegistryError(
                f"{what}: its next page is on another host ({redacted_url(str(url.origin()))});"
                " ecrstream does not follow it (this registry's credentials stay with it)",
                url=redacted_url(str(url)),
            )
        return url.path_qs

    async def _fetch(
        self, path: str, scope: str, *, accept: str = _ACCEPT
    ) -> tuple[bytes, str | None, str | None, str, str | None]:
        """One GET of a manifest: (body, Content-Type, Docker-Content-Digest, redacted URL,
        Link)."""
        import aiohttp

        response = await self._transport.send("GET", path, scope=scope, headers={"Accept": accept})
        where = redacted_url(str(response.url))
        try:
            limit = self._max_manifest_size
            if response.status != 200:
                raise ManifestInvalidError(
                    f"{where} answered HTTP {response.status} to a manifest GET",
                    status=response.status,
                    url=where,
                )
            length = response.content_length
            if length is not None and length > limit:
                raise self._too_big(where, length)
            chunks: list[bytes] = []
            received = 0
            try:
                async for chunk in response.content.iter_any():
                    received += len(chunk)
                    if received > limit:
                        raise self._too_big(where, None)
                    chunks.append(chunk)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._transport.fault(exc, str(response.url)) from exc
            headers = response.headers
            return (
                b"".join(chunks),
                headers.get("Content-Type"),
                headers.get("Docker-Content-Digest"),
                where,
                headers.get("Link"),
            )
        finally:
            response.release()  # reuses the connection only if the body was read whole

    def _too_big(self, where: str, length: int | None) -> ManifestInvalidError:
        size = f"{length} bytes" if length is not None else "more"
        return ManifestInvalidError(
            f"the manifest at {where} has {size}, over the {self._max_manifest_size}-byte limit",
            status=200,
            url=where,
        )

    async def open_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        offset: int = 0,
        *,
        cancellation_token: CancellationToken = CancellationToken.NONE,
    ) -> BlobReader:
        """Start reading blob ``digest`` (of ``size`` bytes) of ``repository`` from ``offset``.

        The first GET is sent (and retried) now, so a missing blob or refused access raises
        here; at ``offset == size`` nothing is sent. ``cancellation_token`` also governs
        every later ``readinto`` of the reader.

        Raises:
            InvalidArgumentError: a bad repository, digest, size or offset (named).
            RegistryNotFoundError, RegistryAuthError, BlobSizeError, RegistryConnectionError,
                RegistryError: the registry's answer, after the retries.
            OperationCanceledError: the token was canceled.
        """
        _check_repository_and_digest(repository, digest)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgumentError("size", "must be an integer >= 0 (bytes)")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
            raise InvalidArgumentError("offset", f"must be an integer from 0 to size ({size})")
        reader = BlobReader(
            self._transport, self._retry, repository, digest, size, offset, cancellation_token
        )
        try:
            await reader.open()
        except BaseException:
            await reader.aclose()
            raise
        return reader


def _check_repository_and_digest(repository: object, digest: object) -> None:
    if not isinstance(repository, str):
        raise InvalidArgumentError("repository", "must be a string")
    check_repository("repository", repository)
    if not isinstance(digest, str):
        raise InvalidArgumentError("digest", "must be a string")
    check_digest("digest", digest)


def _next_link(link: str | None) -> str | None:
    """The URL (as written) of the ``rel="next"`` link of a Link header (RFC 8288), or None.

    ``<URL>; rel="next"`` (the relation quoted or not, possibly among others: ``rel="next
    last"``); commas inside ``<...>`` belong to the URL.
    """
    if not link:
        return None
    rest = link
    while True:
        start = rest.find("<")
        end = rest.find(">", start + 1)
        if start < 0 or end < 0:
            return None
        target = rest[start + 1 : end].strip()
        following = rest[end + 1 :]
        upto = following.find("<")
        params = following if upto < 0 else following[:upto]
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel":
                relations = value.strip().strip(",").strip().strip('"').lower().split()
                if "next" in relations:
                    return target
        if upto < 0:
            return None
        rest = following[upto:]
