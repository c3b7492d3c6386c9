"""LayerUploader: stream a file or a byte stream into ECR, part by part.

The entry points: argument and resume checks (before any request), the choice of source
(``FileSource`` for ``upload_file``, ``StreamSource`` for ``upload_stream``; both behind
``source.LayerSource``), the skip of a layer the repository has, and the token's scope. One
upload's protocol is ``upload.LayerUpload``; its read-ahead is ``pipeline.Pipeline``.

Faults:

- transient errors (``errors.is_transient``) retry the same part, same bytes, with
  exponential backoff and full jitter, ``max_attempts`` requests in all (``retry``);
- ``InvalidLayerPartError`` re-aligns to ``last_valid_byte_received + 1``: the bytes ECR
  already has are skipped (a response was lost after the part was applied), bytes it lost are
  read again from a source that can rewind; nothing is sent twice, nothing skipped. An
  upload re-aligns at most ``max_attempts`` times (a truthful ECR needs one per resume);
- ``UploadNotFoundError`` in the middle of an upload, or at CompleteLayerUpload when ECR does
  not have the layer either, starts one fresh upload if the source can rewind
  (``LayerUploadResult.restarted``, and a warning on the ``ecrstream`` logger);
- an answer no real ECR would give (bytes claimed that were never sent, a refusal of the very
  byte it asks for) raises ``ProtocolViolationError``.

Cancellation: one token reaches every await. When it stops an upload, the request in flight
is aborted, the file closed, no task is left behind, and ``OperationCanceledError`` carries
``.checkpoint``, an ``UploadCheckpoint`` (None if no upload had been initiated yet) that
never claims more bytes than ECR acknowledged and the client sent. A ``task.cancel()`` from
outside propagates as ``CancelledError`` after the same clean-up.

``on_progress`` is called after every committed part, with an ``UploadProgress``; it may be
a plain or an async callable. An exception it raises aborts the upload and propagates (the
upload is left as it stands on ECR, where it expires).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable
from typing import Final

import anyio

from ecrstream.buffers import PartBufferPool
from ecrstream.cancellation import CancellationToken, OperationCanceledError, cancellation_scope
from ecrstream.client import EcrClient
from ecrstream.errors import EmptyUploadError, InvalidArgumentError
from ecrstream.models import (
    MAX_LAYER_PARTS,
    MAX_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    LayerUploadResult,
    UploadCheckpoint,
    validate_digest,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.retry import RetryPolicy
from ecrstream.source import (
    CheckpointFields,
    FileSource,
    LayerHasher,
    LayerSource,
    StreamSource,
    check_same_source,
)
from ecrstream.upload import LayerUpload, ProgressCallback, UploadSettings, check_part_size

__all__ = ["LayerUploader", "ProgressCallback"]

_NONE: Final = CancellationToken.NONE


async def _digest_of(source: LayerSource) -> str:
    """The sha256 of a source that can be read again, 8 MiB at a time (off the loop)."""
    hasher = LayerHasher()
    buffer = memoryview(bytearray(8 * 1024 * 1024))
    offset = 0
    while count := await source.read(offset, buffer):
        await anyio.to_thread.run_sync(hasher.update, offset, buffer[:count])
        offset += count
    return hasher.digest()


class LayerUploader:
    """Uploads layers into one ECR repository, part by part, with retries and resume.

    ``part_size=None`` follows the partSize InitiateLayerUpload returns (10 MiB on ECR); an
    explicit one must lie in [5 MiB, 20,971,520]. A file that would need more than 4,200
    parts gets larger parts (whole MiB, within the bounds). ``max_attempts`` counts requests
    per part (3 means exactly 3), whatever botocore's retry configuration on the client, and
    bounds the re-alignments of one upload. ``max_bandwidth`` (bytes per second) holds the
    average rate under that limit; unset, it costs nothing. ``retry_base_delay`` is the first
    backoff's upper bound in seconds.

    Part buffers (about 3.7 x part_size per upload, less for a layer smaller than a part)
    come from ``buffer_pool``, by default one of this uploader's own: its uploads reuse them,
    so memory is bounded by the uploads in flight at once, and the pool keeps them between
    uploads until the uploader is dropped (or ``buffer_pool.clear()``).
    """

    def __init__(
        self,
        client: EcrClient,
        repository_name: str,
        *,
        registry_id: str | None = None,
        part_size: int | None = None,
        max_attempts: int = 5,
        max_bandwidth: float | None = None,
        retry_base_delay: float = 0.1,
        buffer_pool: PartBufferPool | None = None,
    ) -> None:
        if not isinstance(client, EcrClient):
            raise TypeError(
                f"client: must be an ecrstream.EcrClient (got {type(client).__name__});"
                " wrap an aiobotocore client with EcrClient(client)"
            )
        self.client = client
        self.repository_name = validate_repository_name(repository_name)
        self.registry_id = validate_registry_id(registry_id)
        self.part_size = None if part_size is None else check_part_size(part_size)
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise InvalidArgumentError(
                "max_attempts", f"must be an integer >= 1 (got {max_attempts!r})"
            )
        self.max_attempts = max_attempts
        if max_bandwidth is not None and (
            not isinstance(max_bandwidth, int | float) or not max_bandwidth > 0
        ):
            raise InvalidArgumentError(
                "max_bandwidth",
                f"must be a positive number of bytes per second or None (got {max_bandwidth!r})",
            )
        self.max_bandwidth = max_bandwidth
        self.retry = RetryPolicy(max_attempts=max_attempts, base_delay=retry_base_delay)
        if buffer_pool is not None and not isinstance(buffer_pool, PartBufferPool):
            raise TypeError(
                f"buffer_pool: must be a PartBufferPool or None (got {type(buffer_pool).__name__})"
            )
        self.buffer_pool = buffer_pool if buffer_pool is not None else PartBufferPool()

    def __repr__(self) -> str:
        return (
            f"LayerUploader(repository_name={self.repository_name!r},"
            f" registry_id={self.registry_id!r}, part_size={self.part_size!r})"
        )

    def _check_resume(self, resume: object, source: LayerSource) -> UploadCheckpoint:
        if not isinstance(resume, UploadCheckpoint):
            raise InvalidArgumentError(
                "resume", f"must be an UploadCheckpoint (got {type(resume).__name__})"
            )
        if resume.repository_name != self.repository_name:
            raise InvalidArgumentError(
                "resume",
                f"the checkpoint is for repository {resume.repository_name!r},"
                f" not {self.repository_name!r}",
            )
        if resume.registry_id != self.registry_id:
            raise InvalidArgumentError(
                "resume",
                f"the checkpoint is for registry {resume.registry_id!r}, not {self.registry_id!r}",
            )
        if not source.can_rewind:
            raise InvalidArgumentError("resume", "a stream cannot resume: its bytes are gone")
        recorded = CheckpointFields(
            source_path=resume.source_path,
            source_size=resume.source_size,
            source_mtime_ns=resume.source_mtime_ns,
            source_offset=resume.source_offset,
            source_length=resume.source_length,
        )
        check_same_source(recorded, source.checkpoint_fields())
        if source.size is not None and resume.bytes_committed > source.size:
            raise InvalidArgumentError(
                "resume",
                f"checkpoint.bytes_committed {resume.bytes_committed} is past the end"
                f" of the layer ({source.size} bytes)",
            )
        if resume.part_size is not None:
            check_part_size(resume.part_size, "checkpoint.part_size")
        return resume

    async def _skip_existing(
        self, digest: str, size: int | None, token: CancellationToken
    ) -> LayerUploadResult | None:
        response = await self.client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(
                repository_name=self.repository_name,
                layer_digests=(digest,),
                registry_id=self.registry_id,
            ),
            token,
            retry=self.retry,
        )
        for layer in response.layers:
            if layer.layer_digest == digest and layer.available:
                return LayerUploadResult(
                    digest=digest,
                    size=layer.layer_size if layer.layer_size is not None else (size or 0),
                    upload_id=None,
                    part_count=0,
                    already_existed=True,
                )
        return None

    async def _run(
        self,
        source: LayerSource,
        token: CancellationToken,
        on_progress: ProgressCallback | None,
        expected_digest: str | None,
        resume: UploadCheckpoint | None,
        check_existing: bool = True,
    ) -> LayerUploadResult:
        settings = UploadSettings(
            self.client,
            self.repository_name,
            self.registry_id,
            self.part_size,
            self.retry,
            self.max_bandwidth,
            self.buffer_pool,
        )
        upload = LayerUpload(settings, source, token, on_progress, expected_digest, resume)
        try:
            async with cancellation_scope(token):
                if check_existing and expected_digest is not None and resume is None:
                    existing = await self._skip_existing(expected_digest, source.size, token)
                    if existing is not None:
                        return existing
                return await upload.run()
        except OperationCanceledError as exc:
            # Raised by the token's scope, which knows nothing of uploads: the one place
            # that knows where the upload stands fills the checkpoint in.
            exc.checkpoint = upload.checkpoint()
            raise

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        *,
        cancellation_token: CancellationToken = _NONE,
        on_progress: ProgressCallback | None = None,
        expected_digest: str | None = None,
        resume: UploadCheckpoint | None = None,
        offset: int = 0,
        length: int | None = None,
        skip_existing: bool = False,
        check_existing: bool = True,
    ) -> LayerUploadResult:
        """Upload a file as one layer; returns its digest, size and what was done.

        ``offset``/``length`` upload a section of the file instead (a blob inside a tar
        archive, say), read in place. ``skip_existing=True`` hashes the file first (reading
        it once more) and, if the repository has a layer with that digest, uploads nothing
        (``already_existed``); it is what ``expected_digest`` does when the digest is known.
        ``check_existing=False`` skips that availability check of ``expected_digest`` (for a
        caller that checked a whole batch of digests at once, as ``push_image`` does).

        Raises ValueError (``InvalidArgumentError``) for bad arguments (before any request),
        EmptyUploadError for an empty file (before InitiateLayerUpload), DigestMismatchError
        when the bytes do not hash to ``expected_digest`` (the upload is not completed),
        SourceChangedError when the file changes while it is read, OperationCanceledError
        (with ``.checkpoint``) when the token stops it, ProtocolViolationError when the
        endpoint answers something ECR never would, and the EcrServiceError/EcrConnectionError
        that made it give up. With ``expected_digest``, a layer the repository already has is
        not uploaded. The result's ``part_count`` counts the parts this call put into ECR
        (after a ``resume=``, not the ones committed before).
        """
        if cancellation_token.is_cancellation_requested:
            raise OperationCanceledError(
                cancellation_token=cancellation_token,
                checkpoint=resume if isinstance(resume, UploadCheckpoint) else None,
            )  # still where it was
        if expected_digest is not None:
            validate_digest(expected_digest, "expected_digest")
        if not isinstance(skip_existing, bool):
            raise InvalidArgumentError(
                "skip_existing", f"must be True or False (got {skip_existing!r})"
            )
        source = FileSource(path, start=offset, length=length)
        checkpoint = None if resume is None else self._check_resume(resume, source)
        if source.size == 0:
            raise EmptyUploadError(
                f"{source.path} is empty: ECR does not take empty layers; nothing was uploaded",
                code="EmptyUploadException",
                operation="InitiateLayerUpload",
            )
        if self.part_size is not None or checkpoint is None:
            limit = MAX_LAYER_PARTS * MAX_PART_SIZE
            if source.size > limit:
                raise InvalidArgumentError(
                    "path",
                    f"{source.path} is {source.size} bytes; ECR takes at most "
                    f"{MAX_LAYER_PARTS} parts of {MAX_PART_SIZE} bytes ({limit} bytes)",
                )
        async with source:
            if skip_existing and expected_digest is None and checkpoint is None:
                async with cancellation_scope(cancellation_token):
                    expected_digest = await _digest_of(source)
            return await self._run(
                source,
                cancellation_token,
                on_progress,
                expected_digest,
                checkpoint,
                check_existing,
            )

    async def upload_stream(
        self,
        chunks: AsyncIterable[bytes | bytearray | memoryview],
        *,
        cancellation_token: CancellationToken = _NONE,
        on_progress: ProgressCallback | None = None,
        expected_digest: str | None = None,
    ) -> LayerUploadResult:
        """Upload any async iterable of bytes-like chunks (any sizes) as one layer.

        The total size need not be known. An empty stream raises EmptyUploadError before
        InitiateLayerUpload. A stream cannot rewind: if ECR loses bytes already committed,
        or the whole upload, an error is raised rather than the loss repaired. Otherwise as
        ``upload_file``; the checkpoint of a canceled stream upload cannot be resumed by
        this method (the bytes are gone), it records how far it got.
        """
        cancellation_token.throw_if_cancellation_requested()
        if expected_digest is not None:
            validate_digest(expected_digest, "expected_digest")
        if not isinstance(chunks, AsyncIterable):
            raise TypeError(
                f"chunks: must be an async iterable of bytes (got {type(chunks).__name__})"
            )
        source = StreamSource(chunks)
        try:
            probe = memoryview(bytearray(1))
            async with cancellation_scope(cancellation_token):
                has_bytes = await source.read(0, probe)
            if not has_bytes:
                raise EmptyUploadError(
                    "the stream has no bytes: ECR does not take empty layers; nothing was uploaded",
                    code="EmptyUploadException",
                    operation="InitiateLayerUpload",
                )
            return await self._run(source, cancellation_token, on_progress, expected_digest, None)
        finally:
            await source.aclose()

    async def upload_source(
        self,
        source: LayerSource,
        *,
        expected_digest: str | None = None,
        resume: UploadCheckpoint | None = None,
        cancellation_token: CancellationToken = _NONE,
        on_progress: ProgressCallback | None = None,
        check_existing: bool = True,
    ) -> LayerUploadResult:
        """Upload any ``LayerSource`` (open, owned and closed by the caller) as one layer.

        For sources other than files and streams (a registry blob, say). ``resume=`` needs a
        source that can rewind, and a checkpoint whose source fields match
        ``source.checkpoint_fields()``. ``check_existing=False`` skips the availability
        check of ``expected_digest`` (a caller that checked a batch of them already).
        Errors as ``upload_file``.
        """
        if cancellation_token.is_cancellation_requested:
            raise OperationCanceledError(
                cancellation_token=cancellation_token,
                checkpoint=resume if isinstance(resume, UploadCheckpoint) else None,
            )
        if not isinstance(source, LayerSource):
            raise TypeError(f"source: must be a LayerSource (got {type(source).__name__})")
        if expected_digest is not None:
            validate_digest(expected_digest, "expected_digest")
        checkpoint = None if resume is None else self._check_resume(resume, source)
        if source.size == 0:
            raise EmptyUploadError(
                "the source is empty: ECR does not take empty layers; nothing was uploaded",
                code="EmptyUploadException",
                operation="InitiateLayerUpload",
            )
        return await self._run(
            source, cancellation_token, on_progress, expected_digest, checkpoint, check_existing
        )
