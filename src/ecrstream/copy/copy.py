"""copy_image: pin the source image, check what ECR has, stream the rest, then put manifests."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ecrstream.cancellation import CancellationToken, OperationCanceledError
from ecrstream.client import EcrClient
from ecrstream.copy.referrers import REFERRERS_NOTE, Referrer, find_referrers
from ecrstream.copy.source import EcrSource, ImageSource, RegistrySource, RemoteBlobSource
from ecrstream.errors import (
    CopyCanceledError,
    DigestMismatchError,
    EcrStreamError,
    ImageSelectionError,
    InvalidArgumentError,
    ManifestInvalidError,
)
from ecrstream.image.push import (
    DEFAULT_PUT_IMAGE_RETRY,
    BlobProgress,
    PushProgressCallback,
    _check_arguments,
    _check_client,
    available_digests,
    missing_largest_first,
    put_image_checked,
)
from ecrstream.image.tasks import ConcurrencyLimit, run_limited
from ecrstream.models import (
    PutImageRequest,
    UploadCheckpoint,
    UploadProgress,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.registry.blob import BlobReader
from ecrstream.registry.client import DEFAULT_REGISTRY_RETRY, RegistryClient
from ecrstream.registry.credentials import CredentialsArgument
from ecrstream.registry.manifest import IndexChild, Manifest, index_children, manifest_blobs
from ecrstream.registry.reference import parse_reference
from ecrstream.retry import RetryPolicy
from ecrstream.uploader import LayerUploader

__all__ = ["CopyImageResult", "copy_image"]

_NONE: Final = CancellationToken.NONE
_ECR_HOST: Final = re.compile(
    r"(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
)
_PLATFORM: Final = re.compile(r"[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?")


@dataclass(frozen=True, slots=True)
class CopyImageResult:
    """What copy_image did.

    ``manifest_digest`` is the top manifest pushed: the source's own digest when the image
    (or its whole index) was copied; with ``platforms=`` selecting one child, that child's;
    selecting several, a new index listing only them. ``source_digest`` is the digest the
    source reference was pinned to. ``blobs_uploaded``/``blobs_skipped`` count distinct
    blobs (configs included); ``bytes_moved`` the blob bytes this call streamed into ECR
    (after a resume, not those its checkpoints had committed).
    ``manifest_digests`` lists the platform manifests put by digest. ``lowest_concurrency``
    is the fewest blobs the copy let run at once: below ``max_concurrent_layers`` when ECR
    throttled it (each retried ThrottlingException takes one off; successes give them back).
    ``referrer_digests``: with ``with_referrers=True``, the referrer manifests put (parents
    first; an index referrer's own manifests before it); their blobs are in the counts.
    """

    manifest_digest: str
    blobs_uploaded: int
    blobs_skipped: int
    bytes_moved: int
    source_digest: str = ""
    media_type: str = ""
    tags: tuple[str, ...] = ()
    manifest_digests: tuple[str, ...] = ()
    lowest_concurrency: int = 0
    referrer_digests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Blob:
    digest: str
    size: int
    media_type: str
    kind: Literal["layer", "config"]


@dataclass(frozen=True, slots=True)
class _Plan:
    source_digest: str
    top: Manifest
    children: tuple[Manifest, ...]
    blobs: dict[str, _Blob]
    #: The digests put that are the source's too (not a filtered index): whose referrers
    #: ``with_referrers`` looks for.
    copied: tuple[str, ...] = ()


def ecr_registry_of(host: str) -> tuple[str, str] | None:
    """(account, region) of an ECR registry host (``ACCOUNT.dkr.ecr.REGION.amazonaws.com``)."""
    match = _ECR_HOST.fullmatch(host)
    return (match.group(1), match.group(2)) if match else None


def _check_platforms(platforms: object) -> tuple[str, ...] | None:
    if platforms is None:
        return None
    if isinstance(platforms, str | bytes) or not isinstance(platforms, Iterable):
        raise InvalidArgumentError(
            "platforms", f"must be a sequence of 'os/arch[/variant]' strings (got {platforms!r})"
        )
    chosen = tuple(platforms)
    if not chosen:
        raise InvalidArgumentError("platforms", "must name at least one platform, or be None")
    for item in chosen:
        if not isinstance(item, str) or not _PLATFORM.fullmatch(item):
            raise InvalidArgumentError(
                "platforms", f"every platform must be 'os/arch[/variant]' (got {item!r})"
            )
    return chosen


def _matches(wanted: str, entry: IndexChild) -> bool:
    """``os/arch/variant`` matches exactly; ``os/arch`` matches any variant of it (as docker)."""
    platform = entry.platform
    assert platform is not None
    if wanted.count("/") == 2:
        return str(platform) == wanted
    return f"{platform.os}/{platform.architecture}" == wanted


def _blobs_of(manifest: Manifest, blobs: dict[str, _Blob]) -> None:
    for number, descriptor in enumerate(manifest_blobs(manifest)):
        kind: Literal["layer", "config"] = "config" if number == 0 else "layer"
        known = blobs.get(descriptor.digest)
        if known is not None and known.size != descriptor.size:
            raise ManifestInvalidError(
                f"blob {descriptor.digest} is listed with sizes {known.size} and"
                f" {descriptor.size} in the manifests of {manifest.digest}"
            )
        if descriptor.size == 0:
            raise ManifestInvalidError(
                f"blob {descriptor.digest} of {manifest.digest} is empty: ECR takes no empty blobs"
            )
        if known is None:
            blobs[descriptor.digest] = _Blob(
                descriptor.digest, descriptor.size, descriptor.media_type, kind
            )


def _filtered_index(top: Manifest, keep: set[str]) -> Manifest:
    import hashlib

    document: dict[str, Any] = json.loads(top.data)
    document["manifests"] = [m for m in document["manifests"] if m.get("digest") in keep]
    data = json.dumps(document, separators=(",", ":")).encode()
    return Manifest("sha256:" + hashlib.sha256(data).hexdigest(), top.media_type, data)


async def _plan(
    source: ImageSource, reference: str, platforms: tuple[str, ...] | None, token: CancellationToken
) -> _Plan:
    """Pin the reference, fetch the children by digest, gather the blobs."""
    top = await source.manifest(reference, token)
    blobs: dict[str, _Blob] = {}
    if not top.is_index:
        if platforms is not None:
            raise ImageSelectionError(
                f"platforms: {source.description}@{top.digest} is one image, not an index;"
                f" it has no platform {list(platforms)} to choose",
                source=f"{source.description}@{top.digest}",
                image_ref=" ".join(platforms),
            )
        _blobs_of(top, blobs)
        return _Plan(top.digest, top, (), blobs, (top.digest,))
    entries = index_children(top)
    if platforms is not None:
        selected: list[IndexChild] = []
        missing: list[str] = []
        for wanted in platforms:
            matches = [e for e in entries if e.platform is not None and _matches(wanted, e)]
            if not matches:
                missing.append(wanted)
            selected.extend(e for e in matches if e not in selected)
        if missing:
            listed = sorted({str(e.platform) for e in entries if e.platform is not None})
            raise ImageSelectionError(
                f"platforms: {source.description}@{top.digest} has no platform {missing}"
                f" (it has {listed})",
                source=f"{source.description}@{top.digest}",
                image_ref=" ".join(missing),
                names=tuple(listed),
            )
        entries = tuple(e for e in entries if e in selected)  # in the index's order
    children = []
    for entry in entries:
        child = await source.manifest(entry.digest, token)
        if child.is_index:
            raise ManifestInvalidError(
                f"{source.description}@{top.digest} lists an index ({child.digest}): ECR takes"
                " no index of indexes"
            )
        _blobs_of(child, blobs)
        children.append(child)
    pushed_top = top
    if platforms is not None:
        # One platform: its manifest is the image; several: an index of just those.
        pushed_top = (
            children[0]
            if len(children) == 1
            else _filtered_index(top, {c.digest for c in children})
        )
    children_put = tuple(c for c in children if c.digest != pushed_top.digest)
    filtered = platforms is not None and len(children) > 1
    copied = tuple(c.digest for c in children_put)
    return _Plan(
        top.digest,
        pushed_top,
        children_put,
        blobs,
        copied if filtered else (pushed_top.digest, *copied),
    )


class _Copy(BlobProgress):
    """One copy_image call: availability check, streamed uploads, PutImage; counters."""

    def __init__(
        self,
        client: EcrClient,
        uploader: LayerUploader,
        source: ImageSource,
        plan: _Plan,
        token: CancellationToken,
        on_progress: PushProgressCallback | None,
        max_concurrent_layers: int,
        resume: Mapping[str, UploadCheckpoint],
        after: _Copy | None = None,
    ) -> None:
        self.client = client
        self.uploader = uploader
        self.source = source
        self.plan = plan
        self.token = token
        self.on_progress = on_progress
        self.limit = ConcurrencyLimit(max_concurrent_layers)
        self.resume = resume
        self.missing: list[_Blob] = []
        self.existed: set[str] = set()
        self.committed: list[str] = []
        self.checkpoints: dict[str, UploadCheckpoint] = {}
        self.sent: dict[str, int] = {}
        self.total_bytes_sent = 0
        self.total_bytes = 0
        self.bytes_moved = 0
        self.layers_done = 0
        self.layers_total = sum(1 for b in plan.blobs.values() if b.kind == "layer")
        #: The image's copy, when this one copies its referrers: progress goes on from its
        #: totals, and a stop names its committed blobs too.
        self.after = after

    async def check_availability(self) -> None:
        digests = list(self.plan.blobs)
        available = (
            await available_digests(self.client, self.uploader, digests, self.token)
            if digests
            else set()
        )
        self.existed, self.missing = missing_largest_first(self.plan.blobs, available)
        self.layers_done = sum(1 for d in self.existed if self.plan.blobs[d].kind == "layer")
        self.total_bytes = sum(b.size for b in self.missing)
        if self.after is not None:
            self.layers_done += self.after.layers_done
            self.layers_total += self.after.layers_total
            self.total_bytes += self.after.total_bytes
            self.total_bytes_sent += self.after.total_bytes_sent

    async def upload(self, blob: _Blob) -> None:
        if self.token.is_cancellation_requested:
            return  # nothing new once stopped; run() raises the cancel with what it has
        checkpoint = self.resume.get(blob.digest)
        start = checkpoint.bytes_committed if checkpoint is not None else 0
        self.count_sent(blob, start)
        await self.report(blob, "started")

        async def part_done(progress: UploadProgress) -> None:
            self.count_sent(blob, progress.bytes_sent)
            await self.report(blob, "progress")

        async def opener(offset: int) -> BlobReader:
            return await self.source.open_blob(blob.digest, blob.size, offset, self.token)

        remote = RemoteBlobSource(blob.digest, blob.size, opener)
        try:
            result = await self.uploader.upload_source(
                remote,
                expected_digest=blob.digest,
                resume=checkpoint,
                cancellation_token=self.token,
                on_progress=part_done,
                check_existing=False,  # the batched check found it missing
            )
        except OperationCanceledError as exc:
            if not self.token.is_cancellation_requested:
                raise
            # Returned, not raised: the other uploads see the token themselves and stop
            # with their own checkpoints (a raise would cancel them from outside first).
            if isinstance(exc.checkpoint, UploadCheckpoint):
                self.checkpoints[blob.digest] = exc.checkpoint
            return
        except DigestMismatchError as exc:
            exc.add_note(
                f"{self.source.description}: {blob.kind} {blob.digest} does not hash to its"
                " digest; its upload was not completed and no image was put"
            )
            raise
        finally:
            await remote.aclose()
        if result.already_existed:
            self.existed.add(blob.digest)
        else:
            self.committed.append(blob.digest)
            # What ECR held when the call began, not what the checkpoint said: they differ
            # when ECR lost the upload (0) or the checkpoint is behind or ahead of it.
            self.bytes_moved += blob.size - result.resumed_from
        self.count_sent(blob, blob.size)
        if blob.kind == "layer":
            self.layers_done += 1
        await self.report(blob, "done")

    def canceled(self) -> CopyCanceledError:
        committed_here = set(self.committed)
        committed = [*(self.after.committed if self.after else ()), *self.committed]
        # Checkpoints of blobs this copy does not handle (a referrer's, from an earlier stop,
        # while the image is copied again) go on to the next resume.
        checkpoints = {
            digest: checkpoint
            for digest, checkpoint in self.resume.items()
            if digest not in self.plan.blobs
        }
        checkpoints.update(self.checkpoints)
        return CopyCanceledError(
            f"copy canceled; {len(committed)} blob(s) committed,"
            f" {len(self.checkpoints)} in flight with a checkpoint; pass this error as"
            " resume= to go on",
            self.token,
            committed_digests=committed,
            pending_digests=[b.digest for b in self.missing if b.digest not in committed_here],
            checkpoints=checkpoints,
            source_digest=self.plan.source_digest,
        )

    async def transfer(self, puts: list[PutImageRequest], put_retry: RetryPolicy) -> None:
        """The availability check, the uploads, then ``puts``; CopyCanceledError if stopped."""
        try:
            await self.check_availability()
            await run_limited(self.missing, self.upload, self.limit)
            if self.token.is_cancellation_requested:
                raise self.canceled()
            for request in puts:
                await put_image_checked(self.client, request, self.token, put_retry)
        except OperationCanceledError as exc:
            if isinstance(exc, CopyCanceledError) or not self.token.is_cancellation_requested:
                raise
            raise self.canceled() from exc

    async def run(
        self, puts: list[PutImageRequest], put_retry: RetryPolicy, tags: tuple[str, ...]
    ) -> CopyImageResult:
        await self.transfer(puts, put_retry)
        return CopyImageResult(
            manifest_digest=self.plan.top.digest,
            blobs_uploaded=len(self.committed),
            blobs_skipped=len(self.existed),
            bytes_moved=self.bytes_moved,
            source_digest=self.plan.source_digest,
            media_type=self.plan.top.media_type,
            tags=tags,
            manifest_digests=tuple(c.digest for c in self.plan.children),
            lowest_concurrency=self.limit.lowest,
        )


def _put_request(
    manifest: Manifest, repository_name: str, registry_id: str | None, tag: str | None = None
) -> PutImageRequest:
    """PutImage of ``manifest``, byte for byte, by its digest (and ``tag`` if given)."""
    return PutImageRequest(
        repository_name=repository_name,
        image_manifest=manifest.data.decode(),
        image_manifest_media_type=manifest.media_type,
        image_tag=tag,
        image_digest=manifest.digest,
        registry_id=registry_id,
    )


def _put_requests(
    plan: _Plan, repository_name: str, registry_id: str | None, tags: tuple[str, ...]
) -> list[PutImageRequest]:
    """Child manifests by digest first, then the top one once per tag (untagged if none)."""
    requests = [_put_request(child, repository_name, registry_id) for child in plan.children]
    for tag in tags or (None,):
        requests.append(_put_request(plan.top, repository_name, registry_id, tag))
    return requests


def _referrer_plan(plan: _Plan, found: list[Referrer]) -> _Plan:
    """The blobs of the referrers found (the image's own already went in)."""
    blobs: dict[str, _Blob] = {}
    for referrer in found:
        for manifest in (*referrer.children, referrer.manifest):
            if not manifest.is_index:
                _blobs_of(manifest, blobs)
    for digest in plan.blobs:
        blobs.pop(digest, None)
    return _Plan(plan.source_digest, plan.top, (), blobs)


def _referrer_puts(
    found: list[Referrer], repository_name: str, registry_id: str | None
) -> list[PutImageRequest]:
    """Each referrer by digest (an index's manifests first), then once per cosign tag."""
    requests = []
    for referrer in found:
        for manifest in (*referrer.children, referrer.manifest):
            requests.append(_put_request(manifest, repository_name, registry_id))
        for tag in referrer.tags:
            requests.append(_put_request(referrer.manifest, repository_name, registry_id, tag))
    return requests


async def _copy_referrers(
    image: _Copy, result: CopyImageResult, put_retry: RetryPolicy
) -> CopyImageResult:
    """Find the referrers of what ``image`` put, copy their blobs and put them."""
    try:
        return await _referrers_after(image, result, put_retry)
    except EcrStreamError as exc:  # a stop (CopyCanceledError) is none: it resumes
        exc.add_note(f"{REFERRERS_NOTE}: the image itself is in {image.uploader.repository_name}")
        raise


async def _referrers_after(
    image: _Copy, result: CopyImageResult, put_retry: RetryPolicy
) -> CopyImageResult:
    uploader = image.uploader
    # The checkpoints the image's copy did not use: a referrer's, from an earlier stop.
    resume = {d: c for d, c in image.resume.items() if d not in image.plan.blobs}
    try:
        found = await find_referrers(image.source, image.plan.copied, image.token)
    except OperationCanceledError as exc:
        if not image.token.is_cancellation_requested:
            raise
        raise CopyCanceledError(
            "copy canceled while looking for referrers; the image is in; pass this error as"
            " resume= to go on",
            image.token,
            committed_digests=image.committed,
            checkpoints=resume,
            source_digest=image.plan.source_digest,
        ) from exc
    if not found:
        return result
    plan = _referrer_plan(image.plan, found)
    copy = _Copy(
        image.client,
        uploader,
        image.source,
        plan,
        image.token,
        image.on_progress,
        image.limit.limit,
        resume,
        after=image,
    )
    puts = _referrer_puts(found, uploader.repository_name, uploader.registry_id)
    await copy.transfer(puts, put_retry)
    digests: list[str] = []
    for referrer in found:
        digests.extend(m.digest for m in (*referrer.children, referrer.manifest))
    return dataclasses.replace(
        result,
        blobs_uploaded=result.blobs_uploaded + len(copy.committed),
        blobs_skipped=result.blobs_skipped + len(copy.existed),
        bytes_moved=result.bytes_moved + copy.bytes_moved,
        lowest_concurrency=min(result.lowest_concurrency, copy.limit.lowest),
        referrer_digests=tuple(digests),
    )


def _check_resume(resume: object) -> tuple[dict[str, UploadCheckpoint], str | None]:
    if resume is None:
        return {}, None
    if isinstance(resume, CopyCanceledError):
        return dict(resume.checkpoints), resume.source_digest
    if isinstance(resume, Mapping) and all(
        isinstance(k, str) and isinstance(v, UploadCheckpoint) for k, v in resume.items()
    ):
        return dict(resume), None
    raise InvalidArgumentError(
        "resume",
        "must be a CopyCanceledError or a mapping of blob digest to UploadCheckpoint"
        f" (got {type(resume).__name__})",
    )


async def copy_image(
    client: EcrClient,
    source: str,
    repository_name: str,
    *,
    tags: Iterable[str] = (),
    registry_id: str | None = None,
    platforms: Iterable[str] | None = None,
    max_concurrent_layers: int = 4,
    cancellation_token: CancellationToken = _NONE,
    on_progress: PushProgressCallback | None = None,
    source_credentials: CredentialsArgument | None = None,
    plain_http: bool = False,
    verify: bool | str | os.PathLike[str] | None = None,
    source_client: EcrClient | None = None,
    source_registry_id: str | None = None,
    resume: CopyCanceledError | Mapping[str, UploadCheckpoint] | None = None,
    part_size: int | None = None,
    put_image_retry: RetryPolicy | None = None,
    source_retry: RetryPolicy | None = None,
    source_read_timeout: float = 60.0,
    with_referrers: bool = False,
) -> CopyImageResult:
    """Copy an image (or index) from a registry or from ECR into an ECR repository.

    ``source`` is a reference as ``docker pull`` takes it (``host/repo:tag``,
    ``repo@sha256:...``, Docker Hub short forms). It is read from the registry with
    ``source_credentials`` (None: docker's config and credential helpers, then anonymous),
    over HTTPS (``verify``: True, False or a CA bundle path) or ``plain_http``. A reference
    whose host is an ECR registry (``ACCOUNT.dkr.ecr.REGION.amazonaws.com``), or any
    reference when ``source_client`` is given, is read through the ECR API instead
    (BatchGetImage, GetDownloadUrlForLayer) with ``source_client`` (default: ``client``) and
    ``source_registry_id`` (default: the host's account).

    The reference is pinned to a digest first. An index is copied whole, byte for byte
    (its digest kept), or only the children ``platforms`` names (``"linux/arm64"``,
    ``"linux/arm/v7"``). Blobs ECR lacks (one batched check) stream from the source into
    the upload, largest first, at most ``max_concurrent_layers`` at once, digest and size
    checked as they stream (a mismatch is never completed). Then child manifests by digest,
    the top manifest, then each tag. ``source_retry`` bounds consecutive failed source
    requests (default ``registry.DEFAULT_REGISTRY_RETRY``); a GET resumes from the byte it
    reached. A source body that sends nothing for ``source_read_timeout`` seconds counts as
    one failed request (and resumes the same way).

    A resumed blob is not downloaded again: its upload goes on with one ranged GET from the
    byte ECR holds (``Range: bytes=<committed>-``; a source that ignores Range sends the whole
    blob and the prefix is dropped unsent). The committed prefix is not hashed again here
    either (hashlib cannot save a sha256 midway): the blob's digest, known from its
    descriptor, is sent to CompleteLayerUpload and ECR's own digest check verifies the whole
    blob, so a blob whose bytes changed is still never completed. An upload that ECR lost and
    that starts over from byte 0 is hashed, and checked, here as usual.

    ``with_referrers=True``: after the image, the manifests that refer to what was copied
    (the top manifest and each child put; with ``platforms=`` selecting several, the
    children only, the new index being no manifest of the source) are copied too:
    signatures, SBOMs, attestations, and their own referrers (a signature of an SBOM) down
    to ``referrers.MAX_REFERRER_DEPTH`` levels, each manifest once (no cycle). They are
    found through the source's OCI referrers API (``GET /v2/<name>/referrers/<digest>``);
    where it has none (a 404), through the referrers tag schema (the tag ``sha256-<hex>``,
    an index of them; no tag, no referrers); and always through cosign's tags
    ``sha256-<hex>.sig``/``.att``/``.sbom``. Their blobs go through the same pipeline (one
    batched check, largest first) and each manifest is put by digest, byte for byte, so its
    digest and its ``subject`` stay valid: ECR answers its own referrers API from the
    ``subject`` fields, so the tag schema's index is not copied (it would go stale as
    referrers are added). Cosign's tags are put again on the destination (cosign's
    manifests have no ``subject``; their tag is what finds them). An ECR source's referrers
    come from ListImageReferrers of ``source_client`` (every page, ACTIVE ones); where that
    call is unknown (to the endpoint or to botocore), from its registry endpoint's referrers
    API (ECR serves OCI 1.1 there): the endpoint and its login come from GetAuthorizationToken
    (for ``source_registry_id``; asked once, and again within ``source.LOGIN_MARGIN_SECONDS``
    of its ``expiresAt``), its TLS checked per ``verify``; a 404 there falls back to the tag
    schema. Cosign's tags are read with one BatchGetImage per
    digest. ``result.referrer_digests`` names those
    put. A
    stop while referrers are copied raises ``CopyCanceledError`` like any other: the resume
    finds the image in (nothing sent again) and goes on with the referrers' blobs.
    Any other error met while copying referrers (the image is in by then) carries a note
    starting with ``referrers.REFERRERS_NOTE`` (``referrers.referrers_notes`` finds it).

    Raises:
        InvalidArgumentError/TypeError: bad arguments (named), before any request.
        ImageSelectionError: ``platforms`` names one the source's index does not have
            (``image_ref``: those missing, ``names``: those it has), or the source is
            one image, not an index.
        CopyCanceledError: the token stopped the copy; pass it as ``resume=`` to skip what
            is committed and continue the blobs in flight from their checkpoints.
        DigestMismatchError/BlobSizeError: a source blob that is not what its descriptor
            says (its upload is not completed, nothing is put); after a resume, ECR's digest
            check finds it (``actual`` is then ``""``).
        RegistryError (and subclasses), ManifestInvalidError: the source's failures.
        EcrServiceError/EcrConnectionError: what made an ECR request give up.
    """
    _check_client(client)
    if not isinstance(with_referrers, bool):
        raise InvalidArgumentError(
            "with_referrers", f"must be True or False (got {with_referrers!r})"
        )
    repository_name = validate_repository_name(repository_name)
    tag_tuple = _check_arguments(tags, max_concurrent_layers, on_progress, None, repository_name)
    registry_id = validate_registry_id(registry_id)
    chosen = _check_platforms(platforms)
    checkpoints, pinned = _check_resume(resume)
    if source_client is not None:
        _check_client(source_client)
    if source_retry is not None and not isinstance(source_retry, RetryPolicy):
        raise InvalidArgumentError("source_retry", "must be a RetryPolicy or None")
    if (
        isinstance(source_read_timeout, bool)
        or not isinstance(source_read_timeout, int | float)
        or not 0 < source_read_timeout < float("inf")
    ):
        raise InvalidArgumentError(
            "source_read_timeout", f"must be a number of seconds > 0 (got {source_read_timeout!r})"
        )
    reference = parse_reference(source)
    source_registry_id = validate_registry_id(source_registry_id, "source_registry_id")
    uploader = LayerUploader(client, repository_name, registry_id=registry_id, part_size=part_size)
    ecr_host = _ECR_HOST.fullmatch(reference.registry)
    image_source: ImageSource
    if source_client is not None or ecr_host is not None:
        image_source = EcrSource(
            source_client or client,
            reference.repository,
            source_registry_id or (ecr_host.group(1) if ecr_host else None),
            verify=True if verify is None else verify,
            retry=source_retry or DEFAULT_REGISTRY_RETRY,
            read_timeout=source_read_timeout,
        )
    else:
        image_source = RegistrySource(
            RegistryClient(
                reference.registry,
                credentials=source_credentials,
                plain_http=plain_http,
                verify=True if verify is None else verify,
                retry=source_retry or DEFAULT_REGISTRY_RETRY,
                read_timeout=source_read_timeout,
            ),
            reference,
        )
    try:
        if cancellation_token.is_cancellation_requested:
            raise CopyCanceledError(
                cancellation_token=cancellation_token,
                checkpoints=checkpoints,
                source_digest=pinned,
            )
        target = pinned or reference.digest or reference.manifest_reference
        try:
            plan = await _plan(image_source, target, chosen, cancellation_token)
        except OperationCanceledError:
            raise CopyCanceledError(
                cancellation_token=cancellation_token,
                checkpoints=checkpoints,
                source_digest=pinned,
            ) from None
        puts = _put_requests(plan, repository_name, registry_id, tag_tuple)
        copy = _Copy(
            client,
            uploader,
            image_source,
            plan,
            cancellation_token,
            on_progress,
            max_concurrent_layers,
            checkpoints,
        )
        put_retry = put_image_retry or DEFAULT_PUT_IMAGE_RETRY
        result = await copy.run(puts, put_retry, tag_tuple)
        if with_referrers:
            result = await _copy_referrers(copy, result, put_retry)
        return result
    finally:
        await image_source.aclose()
