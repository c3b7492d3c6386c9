"""push_image: check the arguments, plan the source, then send the plan.

One BatchCheckLayerAvailability (per 100 blobs) for every blob; uploads of the missing ones
(configs included), at most ``max_concurrent_layers`` at once, largest first, each through
``LayerUploader`` (its digest checked while it streams); then PutImage, platform manifests
first. The first failure stops the other uploads and is raised; a token stops them all.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, TypeVar

import anyio

from ecrstream.buffers import PartBufferPool
from ecrstream.cancellation import CancellationToken, OperationCanceledError
from ecrstream.client import EcrClient
from ecrstream.errors import (
    CorruptBlobError,
    DigestMismatchError,
    ImageAlreadyExistsError,
    InvalidArgumentError,
    LayersNotFoundError,
    PushCanceledError,
    ReferencedImagesNotFoundError,
)
from ecrstream.image.archive import hash_member, open_tree, source_error
from ecrstream.image.docker import build_legacy, plan_legacy
from ecrstream.image.oci import plan_oci
from ecrstream.image.plan import Blob, LegacyImage, Plan
from ecrstream.image.tasks import ConcurrencyLimit, run_limited
from ecrstream.models import (
    BatchCheckLayerAvailabilityRequest,
    PutImageRequest,
    PutImageResponse,
    UploadProgress,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.retry import RetryPolicy, call_with_retries
from ecrstream.uploader import LayerUploader

__all__ = [
    "DEFAULT_PUT_IMAGE_RETRY",
    "PushImageResult",
    "PushProgress",
    "PushProgressCallback",
    "push_image",
]

logger = logging.getLogger("ecrstream")

_NONE: Final = CancellationToken.NONE
_BATCH_CHECK_LIMIT: Final = 100

#: PutImage may briefly answer LayersNotFound/ReferencedImagesNotFound right after uploads.
DEFAULT_PUT_IMAGE_RETRY: Final = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0)


@dataclass(frozen=True, slots=True)
class PushProgress:
    """One step of a push, for progress bars: one blob's bytes and the whole push's.

    ``event`` is ``"started"`` when a blob's upload begins (0 bytes sent), ``"progress"``
    after each part ECR took, ``"done"`` once the blob is committed (or turned out to exist).
    ``kind`` says whether the blob is a ``"layer"`` or a ``"config"``.
    ``total_bytes``/``total_bytes_sent`` cover the blobs this push uploads (configs
    included; blobs the repository already had are not counted). ``layers_total`` counts
    the image's distinct layer blobs, ``layers_done`` those now in the repository (skipped
    ones count from the start).
    """

    digest: str
    media_type: str
    kind: Literal["layer", "config"]
    event: Literal["started", "progress", "done"]
    blob_bytes_sent: int
    blob_total_bytes: int
    total_bytes_sent: int
    total_bytes: int
    layers_done: int
    layers_total: int


PushProgressCallback = Callable[[PushProgress], "Awaitable[None] | None"]


@dataclass(frozen=True, slots=True)
class PushImageResult:
    """What push_image did.

    ``manifest_digest`` is the digest of the top manifest (the image index for a
    multi-platform image), the same as in the source. ``layers_uploaded``/``layers_skipped``
    count distinct layer blobs (configs apart: ``configs_uploaded``/``configs_skipped``).
    ``platform_manifest_digests`` lists the manifests an index refers to, pushed by digest.
    ``lowest_concurrency`` is the fewest blobs the push let run at once: below
    ``max_concurrent_layers`` when ECR throttled it (see ``image.tasks.ConcurrencyLimit``).
    """

    manifest_digest: str
    layers_uploaded: int
    layers_skipped: int
    configs_uploaded: int = 0
    configs_skipped: int = 0
    bytes_uploaded: int = 0
    media_type: str = ""
    tags: tuple[str, ...] = ()
    platform_manifest_digests: tuple[str, ...] = ()
    lowest_concurrency: int = 0


class ProgressBlob(Protocol):
    """What a progress report says of a blob (push's and copy's blobs both are one)."""

    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> str: ...
    @property
    def kind(self) -> Literal["layer", "config"]: ...


_B = TypeVar("_B", bound=ProgressBlob)


def missing_largest_first(
    blobs: Mapping[str, _B], available: Collection[str]
) -> tuple[set[str], list[_B]]:
    """The digests ECR has, and the blobs it lacks, largest first: the long uploads start
    early and small ones fill in around them, so a push or a copy ends when its largest blob
    does, not a small one started after it."""
    existed = {digest for digest in blobs if digest in available}
    missing = sorted(
        (blob for blob in blobs.values() if blob.digest not in available),
        key=lambda blob: (-blob.size, blob.digest),
    )
    return existed, missing


class BlobProgress:
    """The running totals of a push or a copy, and the PushProgress reports built from them.

    Running totals: a report costs the same whatever the number of blobs.
    """

    on_progress: PushProgressCallback | None
    sent: dict[str, int]
    total_bytes_sent: int
    total_bytes: int
    layers_done: int
    layers_total: int

    async def report(
        self, blob: ProgressBlob, event: Literal["started", "progress", "done"]
    ) -> None:
        """Tell ``on_progress`` (plain or async) where ``blob`` and the whole transfer stand."""
        if self.on_progress is None:
            return
        outcome = self.on_progress(
            PushProgress(
                digest=blob.digest,
                media_type=blob.media_type,
                kind=blob.kind,
                event=event,
                blob_bytes_sent=self.sent.get(blob.digest, 0),
                blob_total_bytes=blob.size,
                total_bytes_sent=self.total_bytes_sent,
                total_bytes=self.total_bytes,
                layers_done=self.layers_done,
                layers_total=self.layers_total,
            )
        )
        if inspect.isawaitable(outcome):
            await outcome

    def count_sent(self, blob: ProgressBlob, bytes_sent: int) -> None:
        """``blob`` now has ``bytes_sent`` bytes in ECR (this call's or committed before)."""
        self.total_bytes_sent += bytes_sent - self.sent.get(blob.digest, 0)
        self.sent[blob.digest] = bytes_sent


class _Push(BlobProgress):
    """One push_image call: availability check, uploads, PutImage; progress and counters."""

    def __init__(
        self,
        client: EcrClient,
        uploader: LayerUploader,
        plan: Plan,
        puts: list[PutImageRequest],
        token: CancellationToken,
        on_progress: PushProgressCallback | None,
        max_concurrent_layers: int,
        put_image_retry: RetryPolicy,
    ) -> None:
        self.client = client
        self.uploader = uploader
        self.plan = plan
        self.puts = puts
        self.token = token
        self.on_progress = on_progress
        self.limit = ConcurrencyLimit(max_concurrent_layers)
        self.put_image_retry = put_image_retry
        self.layers_total = sum(1 for blob in plan.blobs.values() if blob.kind == "layer")
        self.missing: list[Blob] = []
        self.committed: list[str] = []
        self.existed: set[str] = set()
        # Running totals: a progress report costs the same whatever the number of blobs.
        self.sent: dict[str, int] = {}
        self.total_bytes_sent = 0
        self.total_bytes = 0
        self.layers_done = 0

    async def run(self) -> PushImageResult:
        try:
            await self.check_availability()
            await run_limited(self.missing, self.upload, self.limit)
            for request in self.puts:
                await self.put(request)
        except OperationCanceledError as exc:
            if isinstance(exc, PushCanceledError) or not self.token.is_cancellation_requested:
                raise
            committed = set(self.committed)
            raise PushCanceledError(
                f"push canceled; {len(committed)} blob(s) committed, a second push skips them",
                self.token,
                committed_digests=self.committed,
                pending_digests=[b.digest for b in self.missing if b.digest not in committed],
            ) from exc
        return self.result()

    def result(self) -> PushImageResult:
        blobs = self.plan.blobs
        uploaded = [blobs[digest] for digest in self.committed]
        return PushImageResult(
            manifest_digest=self.plan.top.digest,
            layers_uploaded=sum(1 for blob in uploaded if blob.kind == "layer"),
            layers_skipped=sum(1 for d in self.existed if blobs[d].kind == "layer"),
            configs_uploaded=sum(1 for blob in uploaded if blob.kind == "config"),
            configs_skipped=sum(1 for d in self.existed if blobs[d].kind == "config"),
            bytes_uploaded=sum(blob.size for blob in uploaded),
            media_type=self.plan.top.media_type,
            tags=tuple(r.image_tag for r in self.puts if r.image_tag is not None),
            platform_manifest_digests=tuple(child.digest for child in self.plan.children),
            lowest_concurrency=self.limit.lowest,
        )

    async def check_availability(self) -> None:
        digests = list(self.plan.blobs)
        available = await available_digests(self.client, self.uploader, digests, self.token)
        self.existed, self.missing = missing_largest_first(self.plan.blobs, available)
        self.layers_done = sum(1 for d in self.existed if self.plan.blobs[d].kind == "layer")
        self.total_bytes = sum(blob.size for blob in self.missing)

    async def upload(self, blob: Blob) -> None:
        self.count_sent(blob, 0)
        await self.report(blob, "started")

        async def part_done(progress: UploadProgress) -> None:
            self.count_sent(blob, progress.bytes_sent)
            await self.report(blob, "progress")

        entry = blob.entry
        try:
            result = await self.uploader.upload_file(
                entry.path,
                offset=entry.offset,
                length=entry.size,
                expected_digest=blob.digest,
                cancellation_token=self.token,
                on_progress=part_done,
                check_existing=False,  # the push checked every blob in one batch
            )
        except DigestMismatchError as exc:
            raise await self.explain_mismatch(blob, exc) from exc
        self.count_sent(blob, blob.size)
        if result.already_existed:  # another push got there between our check and now
            self.existed.add(blob.digest)
        else:
            self.committed.append(blob.digest)
        if blob.kind == "layer":
            self.layers_done += 1
        await self.report(blob, "done")

    async def explain_mismatch(self, blob: Blob, exc: DigestMismatchError) -> Exception:
        """A CorruptBlobError if the blob's bytes in the source are not its digest's.

        Hashed again to be sure which side is wrong (this costs one read of the blob, on a
        failure only): a blob that does hash to its digest was changed while it was read,
        or ECR answered wrongly, and ``exc`` says so itself.
        """
        actual, _ = await hash_member(self.plan.tree, blob.entry, self.token)
        if actual == blob.digest:
            return exc
        return _corrupt_blob(self.plan, blob, actual)

    async def put(self, request: PutImageRequest) -> None:
        """PutImage, retrying while ECR does not see the blobs/manifests just pushed."""
        await put_image_checked(self.client, request, self.token, self.put_image_retry)


async def available_digests(
    client: EcrClient, uploader: LayerUploader, digests: list[str], token: CancellationToken
) -> set[str]:
    """Those of ``digests`` the uploader's repository has: BatchCheckLayerAvailability, in
    batches of the 100 digests ECR takes per call."""
    available: set[str] = set()
    for start in range(0, len(digests), _BATCH_CHECK_LIMIT):
        response = await client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(
                repository_name=uploader.repository_name,
                layer_digests=tuple(digests[start : start + _BATCH_CHECK_LIMIT]),
                registry_id=uploader.registry_id,
            ),
            token,
        )
        available |= response.available_digests()
    return available


async def put_image_checked(
    client: EcrClient, request: PutImageRequest, token: CancellationToken, retry: RetryPolicy
) -> None:
    """PutImage, retrying while ECR does not see the blobs/manifests just pushed.

    The same manifest already there with the same tag counts as done; a stored digest other
    than ``request.image_digest`` raises DigestMismatchError.
    """
    expected = request.image_digest

    async def attempt(_: int) -> PutImageResponse | None:
        try:
            return await client.put_image(request, token)
        except ImageAlreadyExistsError:
            return None  # the same manifest with the same tag: already done

    def log_retry(number: int, exc: Exception) -> None:
        logger.info("PutImage attempt %d: %s; retrying", number, getattr(exc, "code", exc))

    response = await call_with_retries(
        attempt,
        policy=retry,
        token=token,
        is_retryable=lambda exc: isinstance(
            exc, LayersNotFoundError | ReferencedImagesNotFoundError
        ),
        on_retry=log_retry,
    )
    if response is None:
        return
    actual = response.image.image_digest
    if expected is not None and actual is not None and actual != expected:
        raise DigestMismatchError(
            f"PutImage stored the manifest as {actual}, not its digest {expected}",
            expected=expected,
            actual=actual,
        )


def _corrupt_blob(plan: Plan, blob: Blob, actual: str) -> CorruptBlobError:
    tree = plan.tree
    member = blob.entry.name
    return CorruptBlobError(
        f"{tree.description}: {blob.kind} {blob.digest} ({member}) hashes to {actual}, not"
        " its digest: the source is corrupt; the blob's upload was not completed and no"
        " image was put",
        expected=blob.digest,
        actual=actual,
        kind=blob.kind,
        member=member,
        source=str(tree.path),
    )


def _check_client(client: object) -> None:
    if not isinstance(client, EcrClient):
        raise TypeError(
            f"client: must be an ecrstream.EcrClient (got {type(client).__name__});"
            " wrap an aiobotocore client with EcrClient(client)"
        )


def _check_arguments(
    tags: object,
    max_concurrent_layers: object,
    on_progress: object,
    image_ref: object,
    repository_name: str,
) -> tuple[str, ...]:
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise InvalidArgumentError("tags", f"must be a sequence of tag strings, not {tags!r}")
    tag_list = list(tags)
    if any(not isinstance(tag, str) for tag in tag_list):
        raise InvalidArgumentError("tags", f"every tag must be a string (got {tag_list!r})")
    for tag in tag_list:
        _check_tag(repository_name, tag)
    if (
        not isinstance(max_concurrent_layers, int)
        or isinstance(max_concurrent_layers, bool)
        or max_concurrent_layers < 1
    ):
        raise InvalidArgumentError(
            "max_concurrent_layers", f"must be an integer >= 1 (got {max_concurrent_layers!r})"
        )
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress: must be callable or None (got {on_progress!r})")
    if image_ref is not None and not isinstance(image_ref, str):
        raise InvalidArgumentError("image_ref", f"must be a string or None (got {image_ref!r})")
    return tuple(dict.fromkeys(tag_list))


def _check_tag(repository_name: str, tag: str) -> None:
    """InvalidArgumentError("image_tag", ...) unless PutImage takes ``tag`` (models' rule)."""
    try:
        PutImageRequest(repository_name=repository_name, image_manifest="{}", image_tag=tag)
    except InvalidArgumentError:
        raise
    except ValueError as exc:
        # models raises a plain ValueError "image_tag: <rule>"; keep its rule, type the field.
        rule = str(exc).removeprefix("image_tag:").strip()
        raise InvalidArgumentError("image_tag", rule) from None


def _put_requests(
    plan: Plan, repository_name: str, registry_id: str | None, tags: tuple[str, ...]
) -> list[PutImageRequest]:
    """The PutImage calls, in order: platform manifests by digest, then the top one per tag.

    Built (and so validated) before anything is sent.
    """
    requests = [
        PutImageRequest(
            repository_name=repository_name,
            image_manifest=child.text,
            image_manifest_media_type=child.media_type,
            image_digest=child.digest,
            registry_id=registry_id,
        )
        for child in plan.children
    ]
    top = plan.top
    for tag in tags or (None,):
        requests.append(
            PutImageRequest(
                repository_name=repository_name,
                image_manifest=top.text,
                image_manifest_media_type=top.media_type,
                image_tag=tag,
                image_digest=top.digest,
                registry_id=registry_id,
            )
        )
    return requests


def _load(source: Path, image_ref: str | None) -> Plan | LegacyImage:
    """Open and check a source (blocking file reads: run it in a worker thread)."""
    tree = open_tree(source)
    if all(tree.entry(name) is not None for name in ("oci-layout", "index.json")):
        return plan_oci(tree, image_ref)
    if tree.entry("manifest.json") is not None:
        return plan_legacy(tree, image_ref)
    nested = sorted(
        name
        for name in tree.names()
        if name.count("/") == 1 and name.rsplit("/", 1)[1] in ("index.json", "manifest.json")
    )
    hint = f" (found {nested}: point at that folder, or archive its contents)" if nested else ""
    raise source_error(
        tree,
        "neither an OCI image layout (oci-layout, index.json) nor a docker save archive"
        f" (manifest.json) at its root{hint}",
    )


async def push_image(
    client: EcrClient,
    source: str | os.PathLike[str],
    repository_name: str,
    *,
    tags: Iterable[str] = (),
    registry_id: str | None = None,
    max_concurrent_layers: int = 4,
    cancellation_token: CancellationToken = _NONE,
    on_progress: PushProgressCallback | None = None,
    part_size: int | None = None,
    image_ref: str | None = None,
    put_image_retry: RetryPolicy | None = None,
    buffer_pool: PartBufferPool | None = None,
) -> PushImageResult:
    """Push an OCI image layout (folder or tar) or a ``docker save`` archive into ECR.

    Uploads the blobs the repository lacks (at most ``max_concurrent_layers`` at once,
    largest first), then puts the manifest once per tag (once untagged with no tags); a
    multi-platform image's manifests by digest first, then its index with the tags.
    ``image_ref`` picks one image of a source holding several (an index.json
    ``org.opencontainers.image.ref.name`` or ``io.containerd.image.name``, or a manifest.json
    ``RepoTags`` entry). ``on_progress`` (plain or async) gets a ``PushProgress`` per blob
    started, part sent and blob done; an exception it raises stops the push.
    ``put_image_retry`` bounds the retries of PutImage on
    LayersNotFound/ReferencedImagesNotFound (``DEFAULT_PUT_IMAGE_RETRY``: 6 attempts).
    The uploads share their part buffers (sized to each blob, reused from blob to blob):
    memory is bounded by the uploads in flight, not by the number of layers; by default they
    are freed when the push returns, ``buffer_pool`` (a ``PartBufferPool``) keeps them for
    the caller's next push.

    Raises:
        InvalidArgumentError (a ValueError; ``.field`` names the argument: ``tags``,
            ``image_tag``, ``max_concurrent_layers``, ``image_ref``, ``source``,
            ``repository_name``...)/TypeError: bad arguments, before anything is read or sent.
        ImageSourceError: the source is not a usable image (malformed, unsafe, not an image
            at all, or holding what ECR cannot take); ``ImageSelectionError`` when it holds
            several images and ``image_ref`` does not pick one. Before any request.
        CorruptBlobError: a blob's bytes do not hash to its digest (a DigestMismatchError;
            that blob is not completed, nothing is put; the push stops).
        DigestMismatchError: ECR stored or answered another digest than the one sent.
        PushCanceledError: the token stopped the push (``committed_digests``).
        EcrServiceError/EcrConnectionError: what made a request give up.
    """
    _check_client(client)
    repository_name = validate_repository_name(repository_name)
    tag_tuple = _check_arguments(
        tags, max_concurrent_layers, on_progress, image_ref, repository_name
    )
    registry_id = validate_registry_id(registry_id)
    if buffer_pool is not None and not isinstance(buffer_pool, PartBufferPool):
        raise TypeError(
            f"buffer_pool: must be a PartBufferPool or None (got {type(buffer_pool).__name__})"
        )
    pool = buffer_pool if buffer_pool is not None else PartBufferPool()
    uploader = LayerUploader(
        client, repository_name, registry_id=registry_id, part_size=part_size, buffer_pool=pool
    )
    try:
        source_path = Path(source)
    except TypeError:
        raise InvalidArgumentError("source", f"must be a path (got {source!r})") from None
    if cancellation_token.is_cancellation_requested:
        raise PushCanceledError(cancellation_token=cancellation_token)
    loaded = await anyio.to_thread.run_sync(_load, source_path, image_ref)
    if isinstance(loaded, LegacyImage):
        try:
            plan = await build_legacy(loaded, cancellation_token, max_concurrent_layers)
        except OperationCanceledError:
            raise PushCanceledError(cancellation_token=cancellation_token) from None
    else:
        plan = loaded
    puts = _put_requests(plan, repository_name, registry_id, tag_tuple)
    push = _Push(
        client,
        uploader,
        plan,
        puts,
        cancellation_token,
        on_progress,
        max_concurrent_layers,
        put_image_retry or DEFAULT_PUT_IMAGE_RETRY,
    )
    try:
        return await push.run()
    finally:
        if buffer_pool is None:
            pool.clear()  # the push's own: free its buffers now, not when collected
