"""One layer upload's protocol: initiate, the parts, the checks of ECR's answers, complete.

``LayerUpload`` is the state of one ``upload_file``/``upload_stream`` call, built in one
place (its constructor), from a checkpoint when it resumes one; state flows one way, from it
to the ``pipeline.Pipeline`` it starts (told the upload id) and to the checkpoint it hands
out. It speaks to its source only through ``source.LayerSource``.

- A part is sent through ``retry.call_with_retries`` (transient errors: the same bytes
  again); an ``InvalidLayerPartError`` is read inside the attempt: the offset ECR expects.
- ECR's answers are checked before anything believes them (``check_answer``): a claim of
  bytes never sent, or of fewer bytes than acknowledged from a source that cannot rewind,
  is a ``ProtocolViolationError``. So a checkpoint never claims more than the client sent.
- A claim other than the part's end re-aligns the pipeline; at most ``max_attempts``
  re-alignments per upload.
- ``UploadNotFoundError`` (at a part, or at CompleteLayerUpload when ECR lacks the layer)
  goes through one restart path, ``start_over``: one fresh upload, if the source can rewind.
- A resume of a source ``verified_by_destination`` with an ``expected_digest`` does not
  re-read the committed prefix: its hasher starts past it (``LayerHasher(unseen=...)``), the
  local digest comparison is skipped, and CompleteLayerUpload names ``expected_digest`` for
  ECR to check; its InvalidLayerException (the bytes ECR holds hash otherwise) is raised as
  the ``DigestMismatchError`` a local mismatch raises. An upload that starts over from
  byte 0 hashes every byte again and is checked locally as usual.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.abc import TaskGroup

from ecrstream.bandwidth import BandwidthLimiter
from ecrstream.body import PreparedPart
from ecrstream.buffers import PartBufferPool
from ecrstream.cancellation import CancellationToken
from ecrstream.client import EcrClient
from ecrstream.errors import (
    DigestMismatchError,
    EmptyUploadError,
    InvalidArgumentError,
    InvalidLayerError,
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
)
from ecrstream.pipeline import PartDestination, Pipeline
from ecrstream.retry import RetryPolicy, call_with_retries
from ecrstream.source import LayerHasher, LayerSource, verified_by_destination

__all__ = ["LayerUpload", "ProgressCallback", "UploadSettings", "check_part_size"]

logger = logging.getLogger("ecrstream")

#: What ``on_progress`` may be: called with an UploadProgress; plain or async.
ProgressCallback = Callable[[UploadProgress], "Awaitable[None] | None"]

_DEFAULT_PART_SIZE: Final = 10 * 1024 * 1024
_MIB: Final = 1024 * 1024
_ONCE: Final = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class UploadSettings:
    """What a LayerUploader gives each of its uploads: where, how big, how persistent.

    ``part_size`` None follows the part size InitiateLayerUpload returns.
    """

    client: EcrClient
    repository_name: str
    registry_id: str | None
    part_size: int | None
    retry: RetryPolicy
    max_bandwidth: float | None
    buffers: PartBufferPool | None = None  # the uploader's part buffers, shared by its uploads


def check_part_size(value: object, field_name: str = "part_size") -> int:
    """Return ``value`` if it is a part size ECR takes, else InvalidArgumentError."""
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


@dataclass(frozen=True, slots=True)
class _PartAnswer:
    """What ECR said to a part: the offset it expects next, and whether this call's part
    was taken; ``refusal`` is the InvalidLayerPartError that said so, if any."""

    next_offset: int
    taken: bool
    refusal: InvalidLayerPartError | None = None


class LayerUpload:
    """The state of one layer upload (one call of upload_file/upload_stream).

    Built here, and only here, from a checkpoint when it resumes one.
    """

    def __init__(
        self,
        settings: UploadSettings,
        source: LayerSource,
        token: CancellationToken,
        on_progress: ProgressCallback | None,
        expected_digest: str | None,
        resume: UploadCheckpoint | None,
    ) -> None:
        self.settings = settings
        self.client = settings.client
        self.retry = settings.retry
        self.source = source
        self.token = token
        self.on_progress = on_progress
        self.expected_digest = expected_digest
        self.total = source.size
        self.hasher = LayerHasher()
        self.parts_sent = 0
        self.restarted = 0
        self.realignments = 0
        rate = settings.max_bandwidth
        self.limiter = BandwidthLimiter(rate) if rate is not None else None
        self.upload_id: str | None = None
        self.part_size = settings.part_size or _DEFAULT_PART_SIZE
        self.committed = 0  # what ECR acknowledged holding: [0, committed)
        # The most bytes ECR can truthfully hold: what this process put on the wire, or,
        # resuming, anything up to the layer's end (an earlier run may have sent more than
        # its checkpoint says).
        self.sent_end = 0
        self.resumed_from = 0  # what ECR held when this call began (LayerUploadResult's)
        if resume is not None:
            self.upload_id = resume.upload_id
            self.part_size = resume.part_size or self.part_size
            self.committed = self.resumed_from = resume.bytes_committed
            self.sent_end = max(source.size or 0, resume.bytes_committed)
            if expected_digest is not None and verified_by_destination(source):
                # The prefix ECR holds is not read again (a remote blob: costly); ECR's digest
                # check at CompleteLayerUpload covers it, as the local one cannot.
                self.hasher = LayerHasher(unseen=resume.bytes_committed)

    def checkpoint(self) -> UploadCheckpoint | None:
        """Where the upload stands, for ``resume=`` (None before InitiateLayerUpload)."""
        if self.upload_id is None:
            return None
        fields = self.source.checkpoint_fields()
        return UploadCheckpoint(
            repository_name=self.settings.repository_name,
            registry_id=self.settings.registry_id,
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
                repository_name=self.settings.repository_name,
                registry_id=self.settings.registry_id,
            ),
            self.token,
            retry=self.retry,
        )
        self.upload_id = response.upload_id
        if self.settings.part_size is None and response.part_size:
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
                    part, self.token, limiter=self.limiter, attempt=number
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
                f" this client sent it only {self.sent_end}{of_layer}: no ECR answers that;"
                " check the endpoint URL and any proxy between this client and ECR. The"
                " upload was not completed",
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
            self.settings.repository_name, self.settings.registry_id, self.upload_id
        )
        pipeline = Pipeline(
            task_group,
            self.source,
            self.hasher,
            self.part_size,
            destination,
            self.settings.buffers,
        )
        try:
            pipeline.start(self.committed)
            while (part := await self.next_part(pipeline)) is not None:
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
                if answer.refusal is not None and not answer.taken and self.parts_sent == 0:
                    # A refusal before any part of this call was taken says what ECR held
                    # when the call began (a checkpoint behind or ahead of it).
                    self.resumed_from = answer.next_offset
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
            try:
                await pipeline.stop()  # raises a cancel it held until the reader had stopped
            finally:
                pipeline.close()

    async def next_part(self, pipeline: Pipeline) -> PreparedPart | None:
        """The pipeline's next part; a wait for it (reading, hashing ahead) is logged."""
        started = time.perf_counter()
        part = await pipeline.next()
        waited = time.perf_counter() - started
        if waited > 0.001 and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "upload %s: waited %.1f ms for the %s (read and prepared ahead)",
                self.upload_id,
                waited * 1000,
                "end of the layer" if part is None else f"part at byte {part.part_first_byte}",
            )
        return part

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
        if not self.hasher.complete:
            self.hasher = LayerHasher()  # from byte 0: this upload is checked locally again
        self.restarted += 1
        self.parts_sent = 0
        self.realignments = 0
        self.resumed_from = 0
        logger.warning(
            "upload %s was gone on ECR (UploadNotFoundException at %s): started over as upload %s",
            old,
            lost.operation,
            self.upload_id,
        )

    async def complete(self) -> tuple[str, bool]:
        """CompleteLayerUpload with the computed digest; returns (digest, already_existed).

        A hasher that never saw the committed prefix (a resume ECR verifies) has no digest:
        ``expected_digest`` is sent, and ECR's InvalidLayerException is the mismatch.
        """
        verified_here = self.hasher.complete
        if verified_here:
            digest = self.hasher.digest()
            if self.expected_digest is not None and digest != self.expected_digest:
                raise DigestMismatchError(
                    f"the layer's sha256 is {digest}, not the expected {self.expected_digest};"
                    " the upload was not completed",
                    expected=self.expected_digest,
                    actual=digest,
                )
        else:
            assert self.expected_digest is not None
            digest = self.expected_digest
        assert self.upload_id is not None
        request = CompleteLayerUploadRequest(
            repository_name=self.settings.repository_name,
            upload_id=self.upload_id,
            layer_digests=(digest,),
            registry_id=self.settings.registry_id,
        )

        async def attempt(_: int) -> bool:
            try:
                response = await self.client.complete_layer_upload(request, self.token, retry=_ONCE)
            except LayerAlreadyExistsError:
                return True
            except InvalidLayerError as exc:
                if verified_here:
                    raise  # the bytes sent hash to the digest: ECR holds others (not ours)
                raise DigestMismatchError(
                    f"the layer's bytes do not hash to the expected {digest}: ECR's digest"
                    f" check refused upload {self.upload_id} of {self.committed} bytes"
                    f" ({exc.code}: {exc.message}); the upload was not completed",
                    expected=digest,
                    actual="",  # unknown: this resume never read the prefix ECR holds
                ) from exc
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
                repository_name=self.settings.repository_name,
                layer_digests=(digest,),
                registry_id=self.settings.registry_id,
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
            resumed_from=self.resumed_from,
        )
