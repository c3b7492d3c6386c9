"""LayerUploader: stream a file or a byte stream into ECR, part by part.

Parts are read, hashed and built ahead by ``pipeline.Pipeline`` while the calling task sends
the one before, one request at a time, in byte order. The uploader only speaks to its source
through ``source.LayerSource`` (can it rewind, what goes in a checkpoint, did it change).

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

import inspect
import logging
import math
import os
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.abc import TaskGroup

from ecrstream.bandwidth import BandwidthLimiter
from ecrstream.body import PreparedPart
from ecrstream.cancellation import CancellationToken, OperationCanceledError, cancellation_scope
from ecrstream.client import EcrClient
from ecrstream.errors import (
    DigestMismatchError,
    EmptyUploadError,
    InvalidArgumentError,
    InvalidLayerPartError,
    LayerAlreadyExistsError,
    ProtocolViolationError,
    UploadNotFoundError,
)
from ecrstream.models import (
    MAX_LAYER_PARTS,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    CompleteLayerUploadRequest,
    InitiateLayerUploadRequest,
    LayerUploadResult,
    UploadCheckpoint,
    UploadProgress,
    validate_digest,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.pipeline import PartDestination, Pipeline
from ecrstream.retry import RetryPolicy, call_with_retries
from ecrstream.source import (
    CheckpointFields,
    FileSource,
    LayerHasher,
    LayerSource,
    StreamSource,
    check_same_source,
)

__all__ = ["LayerUploader", "ProgressCallback"]

logger = logging.getLogger("ecrstream")

ProgressCallback = Callable[[UploadProgress], "Awaitable[None] | None"]

_NONE: Final = CancellationToken.NONE
_DEFAULT_PART_SIZE: Final = 10 * 1024 * 1024
_MIB: Final = 1024 * 1024
_ONCE: Final = RetryPolicy(max_attempts=1)


def _check_part_size(value: object, field_name: str = "part_size") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(
            field_name, f"must be an integer number of bytes (got {value!r})"
        )
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise InvalidArgumentError(
            field_name,
            f"must lie in [{MIN_PART_SIZE}, {MAX_PART_SIZE}] bytes"
            f" (5 MiB to 20 MiB, ECR's part limits) (got {value})",
        )
    return value


def _fit_part_size(part_size: int, total: int | None) -> int:
    """Grow ``part_size`` (in whole MiB, within ECR's bounds) until ``total`` fits 4,200 parts."""
    if total is None or math.ceil(total / part_size) <= MAX_LAYER_PARTS:
        return part_size
    needed = math.ceil(math.ceil(total / MAX_LAYER_PARTS) / _MIB) * _MIB
    return min(max(needed, part_size), MAX_PART_SIZE)


def _recorded_fields(checkpoint: UploadCheckpoint) -> CheckpointFields:
    return CheckpointFields(
        source_path=checkpoint.source_path,
        source_size=checkpoint.source_size,
        source_mtime_ns=checkpoint.source_mtime_ns,
        source_offset=checkpoint.source_offset,
        source_length=checkpoint.source_length,
    )


@dataclass(frozen=True, slots=True)
class _PartAnswer:
    """What ECR said to a part: the offset it expects next, and whether this call's part
    was taken; ``refusal`` is the InvalidLayerPartError that said so, if any."""

    next_offset: int
    taken: bool
    refusal: InvalidLayerPartError | None = None


class _Upload:
    """The state of one layer upload (one call of upload_file/upload_stream).

    Built here, and only here, from a checkpoint when it resumes one.
    """

    def __init__(
        self,
        uploader: LayerUploader,
        source: LayerSource,
        token: CancellationToken,
        on_progress: ProgressCallback | None,
        expected_digest: str | None,
        resume: UploadCheckpoint | None,
    ) -> None:
        self.uploader = uploader
        self.client = uploader.client
        self.retry = uploader.retry
        self.source = source
        self.token = token
        self.on_progress = on_progress
        self.expected_digest = expected_digest
        self.total = source.size
        self.hasher = LayerHasher()
        self.parts_sent = 0
        self.restarted = 0
        self.realignments = 0
        rate = uploader.max_bandwidth
        self.limiter = BandwidthLimiter(rate) if rate is not None else None
        self.upload_id: str | None = None
        self.part_size = uploader.part_size or _DEFAULT_PART_SIZE
        self.committed = 0  # what ECR acknowledged holding: [0, committed)
        # The most bytes ECR can truthfully hold: what this process put on the wire, or,
        # resuming, anything up to the layer's end (an earlier run may have sent more than
        # its checkpoint says).
        self.sent_end = 0
        if resume is not None:
            self.upload_id = resume.upload_id
            self.part_size = resume.part_size or self.part_size
            self.committed = resume.bytes_committed
            self.sent_end = max(source.size or 0, resume.bytes_committed)

    def checkpoint(self) -> UploadCheckpoint | None:
        """Where the upload stands, for ``resume=`` (None before InitiateLayerUpload)."""
        if self.upload_id is None:
            return None
        fields = self.source.checkpoint_fields()
        return UploadCheckpoint(
            repository_name=self.uploader.repository_name,
            registry_id=self.uploader.registry_id,
            upload_id=self.upload_id,
            bytes_committed=self.committed,
            part_size=self.part_size,
            source_path=fields.source_path,
            source_size=fields.source_size,
            source_mtime_ns=fields.source_mtime_ns,
            source_offset=fields.source_offset,
            source_length=fields.source_length,
        )

    async def initiate(self) -> None:
        response = await self.client.initiate_layer_upload(
            InitiateLayerUploadRequest(
                repository_name=self.uploader.repository_name,
                registry_id=self.uploader.registry_id,
            ),
            self.token,
            retry=self.retry,
        )
        self.upload_id = response.upload_id
        if self.uploader.part_size is None and response.part_size:
            self.part_size = min(max(response.part_size, MIN_PART_SIZE), MAX_PART_SIZE)
        self.part_size = _fit_part_size(self.part_size, self.total)
        self.committed = 0
        self.sent_end = 0

    async def report(self) -> None:
        if self.on_progress is None:
            return
        outcome = self.on_progress(
            UploadProgress(
                bytes_sent=self.committed, total_bytes=self.total, parts_sent=self.parts_sent
            )
        )
        if inspect.isawaitable(outcome):
            await outcome

    async def send_part(self, part: PreparedPart) -> _PartAnswer:
        """Send one part with retries; what ECR expects next, and whether it took the part.

        The offset is ``part_last_byte + 1`` when the part was taken, or where
        InvalidLayerPartError says ECR stands. A refusal of a retry that shows ECR holding
        the whole part means an earlier attempt was applied (its answer was lost): taken.
        A refusal of the first attempt means ECR had those bytes before (a stale resume).
        """

        async def attempt(number: int) -> _PartAnswer:
            self.sent_end = max(self.sent_end, part.part_last_byte + 1)
            try:
                response = await self.client.upload_prepared_part(
                    part, self.token, limiter=self.limiter
                )
            except InvalidLayerPartError as exc:
                if exc.last_valid_byte_received is None:
                    raise
                logger.info(
                    "UploadLayerPart %d..%d refused; ECR holds bytes up to %d",
                    part.part_first_byte,
                    part.part_last_byte,
                    exc.last_valid_byte_received,
                )
                next_offset = exc.last_valid_byte_received + 1
                taken = number > 1 and next_offset > part.part_last_byte
                return _PartAnswer(next_offset, taken, exc)
            return _PartAnswer(response.last_byte_received + 1, True)

        def log_retry(number: int, exc: Exception) -> None:
            logger.info("UploadLayerPart attempt %d failed (%s); retrying", number, exc)

        return await call_with_retries(
            attempt, policy=self.retry, token=self.token, on_retry=log_retry
        )

    def check_answer(self, part: PreparedPart, answer: _PartAnswer) -> None:
        """Refuse an answer no real ECR gives, before anything believes it."""
        claimed = answer.next_offset
        if claimed > self.sent_end:
            of_layer = f" of a {self.total}-byte layer" if self.total is not None else ""
            raise ProtocolViolationError(
                f"the endpoint claims to hold {claimed} bytes of upload {self.upload_id}, but"
                f" this client sent it only {self.sent_end}{of_layer}: it answered something"
                " impossible (a proxy or emulator bug?); the upload was not completed",
                operation="UploadLayerPart",
            )
        if claimed < self.committed and not self.source.can_rewind:
            raise ProtocolViolationError(
                f"the endpoint now claims to hold {claimed} bytes of upload {self.upload_id},"
                f" after it acknowledged {self.committed}: ECR never forgets bytes, and a stream"
                " cannot be read again; upload it again (from a file, bytes can be re-read)",
                operation="UploadLayerPart",
            )

    def count_realignment(self, part: PreparedPart, answer: _PartAnswer) -> None:
        """One more re-alignment; past ``max_attempts`` in this upload, give up."""
        self.realignments += 1
        logger.info(
            "upload %s: ECR expects byte %d after part %d..%d: re-aligning (%d of at most %d)",
            self.upload_id,
            answer.next_offset,
            part.part_first_byte,
            part.part_last_byte,
            self.realignments,
            self.retry.max_attempts,
        )
        if self.realignments <= self.retry.max_attempts:
            return
        said = f" (it says: {answer.refusal.message})" if answer.refusal is not None else ""
        if answer.refusal is not None and answer.next_offset == part.part_first_byte:
            claim = f"keeps refusing the part at byte {answer.next_offset} while asking for it"
        else:
            claim = f"keeps asking for other bytes than sent (last: byte {answer.next_offset})"
        raise ProtocolViolationError(
            f"ECR {claim}{said}; gave up after {self.realignments - 1} re-alignments of upload"
            f" {self.upload_id}. A truthful endpoint needs at most one per resume: check that"
            " no other client sends to this upload and what sits between this client and ECR",
            operation="UploadLayerPart",
        )

    async def send_all(self, task_group: TaskGroup) -> None:
        """Send every part from ``committed`` to the end of the layer."""
        assert self.upload_id is not None
        destination = PartDestination(
            self.uploader.repository_name, self.uploader.registry_id, self.upload_id
        )
        pipeline = Pipeline(task_group, self.source, self.hasher, self.part_size, destination)
        try:
            pipeline.start(self.committed)
            while (part := await pipeline.next()) is not None:
                if self.parts_sent >= MAX_LAYER_PARTS:
                    raise InvalidArgumentError(
                        "part_size",
                        f"the layer needs more than {MAX_LAYER_PARTS} parts of"
                        f" {self.part_size} bytes (ECR's limit); pass a larger part_size",
                    )
                try:
                    answer = await self.send_part(part)
                finally:
                    pipeline.release(part)
                self.check_answer(part, answer)
                if answer.taken:
                    self.parts_sent += 1
                self.committed = answer.next_offset
                self.source.release(answer.next_offset)
                if answer.next_offset != part.part_last_byte + 1:
                    # ECR holds more or less than we sent: read on from where it stands
                    self.count_realignment(part, answer)
                    await pipeline.restart(answer.next_offset)
                await self.report()
            if self.committed == 0:
                raise EmptyUploadError(
                    "the layer has no bytes; nothing was uploaded",
                    code="EmptyUploadException",
                    operation="UploadLayerPart",
                )
        finally:
            await pipeline.stop()
            pipeline.close()

    async def send_from_committed(self) -> None:
        """Send the layer from ``committed`` to its end, then check the source did not change."""
        async with anyio.create_task_group() as task_group:
            failure: Exception | None = None
            try:
                await self.send_all(task_group)
            except Exception as exc:  # not BaseException: cancellation propagates as it is
                failure = exc
                task_group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        self.source.check_unchanged()
        if self.total is not None and self.committed != self.total:
            raise RuntimeError(f"sent {self.committed} bytes of a {self.total}-byte layer")

    async def start_over(self, lost: UploadNotFoundError) -> None:
        """ECR lost the upload: start one fresh upload from byte 0, if the source can rewind;
        else (or a second time) raise ``lost``."""
        if self.restarted >= 1 or not self.source.can_rewind:
            raise lost
        old = self.upload_id
        await self.initiate()
        self.restarted += 1
        self.parts_sent = 0
        self.realignments = 0
        logger.warning(
            "upload %s was gone on ECR (UploadNotFoundException at %s): started over as upload %s",
            old,
            lost.operation,
            self.upload_id,
        )

    async def complete(self) -> tuple[str, bool]:
        """CompleteLayerUpload with the computed digest; returns (digest, already_existed)."""
        digest = self.hasher.digest()
        if self.expected_digest is not None and digest != self.expected_digest:
            raise DigestMismatchError(
                f"the layer's sha256 is {digest}, not the expected {self.expected_digest};"
                " the upload was not completed",
                expected=self.expected_digest,
                actual=digest,
            )
        assert self.upload_id is not None
        request = CompleteLayerUploadRequest(
            repository_name=self.uploader.repository_name,
            upload_id=self.upload_id,
            layer_digests=(digest,),
            registry_id=self.uploader.registry_id,
        )

        async def attempt(_: int) -> bool:
            try:
                response = await self.client.complete_layer_upload(request, self.token, retry=_ONCE)
            except LayerAlreadyExistsError:
                return True
            if response.layer_digest != digest:
                raise DigestMismatchError(
                    f"CompleteLayerUpload returned digest {response.layer_digest}, but the"
                    f" bytes sent hash to {digest}",
                    expected=digest,
                    actual=response.layer_digest,
                )
            return False

        try:
            existed = await call_with_retries(attempt, policy=self.retry, token=self.token)
        except UploadNotFoundError:
            # An earlier attempt (or, after a resume, the call that was stopped during
            # CompleteLayerUpload) may have completed it before its answer was lost: if
            # ECR has a layer with exactly this digest, it has these bytes.
            if await self.layer_available(digest):
                return digest, False
            raise
        return digest, existed

    async def layer_available(self, digest: str) -> bool:
        response = await self.client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(
                repository_name=self.uploader.repository_name,
                layer_digests=(digest,),
                registry_id=self.uploader.registry_id,
            ),
            self.token,
            retry=self.retry,
        )
        return digest in response.available_digests()

    async def run(self) -> LayerUploadResult:
        if self.upload_id is None:
            await self.initiate()
        while True:
            try:
                await self.send_from_committed()
                digest, existed = await self.complete()
                break
            except UploadNotFoundError as lost:
                await self.start_over(lost)  # the one restart path: parts and complete alike
        return LayerUploadResult(
            digest=digest,
            size=self.committed,
            upload_id=self.upload_id,
            part_count=self.parts_sent,
            already_existed=existed,
            restarted=self.restarted,
        )


class LayerUploader:
    """Uploads layers into one ECR repository, part by part, with retries and resume.

    ``part_size=None`` follows the partSize InitiateLayerUpload returns (10 MiB on ECR); an
    explicit one must lie in [5 MiB, 20,971,520]. A file that would need more than 4,200
    parts gets larger parts (whole MiB, within the bounds). ``max_attempts`` counts requests
    per part (3 means exactly 3), whatever botocore's retry configuration on the client, and
    bounds the re-alignments of one upload. ``max_bandwidth`` (bytes per second) holds the
    average rate under that limit; unset, it costs nothing. ``retry_base_delay`` is the first
    backoff's upper bound in seconds.
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
    ) -> None:
        if not isinstance(client, EcrClient):
            raise TypeError(
                f"client: must be an ecrstream.EcrClient (got {type(client).__name__});"
                " wrap an aiobotocore client with EcrClient(client)"
            )
        self.client = client
        self.repository_name = validate_repository_name(repository_name)
        self.registry_id = validate_registry_id(registry_id)
        self.part_size = None if part_size is None else _check_part_size(part_size)
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
        check_same_source(_recorded_fields(resume), source.checkpoint_fields())
        if source.size is not None and resume.bytes_committed > source.size:
            raise InvalidArgumentError(
                "resume",
                f"checkpoint.bytes_committed {resume.bytes_committed} is past the end"
                f" of the layer ({source.size} bytes)",
            )
        if resume.part_size is not None:
            _check_part_size(resume.part_size, "checkpoint.part_size")
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
    ) -> LayerUploadResult:
        upload = _Upload(self, source, token, on_progress, expected_digest, resume)
        try:
            async with cancellation_scope(token):
                if expected_digest is not None and resume is None:
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
    ) -> LayerUploadResult:
        """Upload a file as one layer; returns its digest, size and what was done.

        ``offset``/``length`` upload a section of the file instead (a blob inside a tar
        archive, say), read in place.

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
            return await self._run(
                source, cancellation_token, on_progress, expected_digest, checkpoint
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
