"""Fault rules, the plan that picks them, and the records of what the proxy saw and did.

A rule (``Fault``) is eligible from call number ``call`` of its operation on (1-based, counted
per operation since the last reset), fires with ``probability`` (default: always; drawn from
``random.Random(seed)``) and retires after ``times`` injections (``None``: never): so
``call=3, times=2`` hits calls 3 and 4. Rules are tried in the order added; the first that
fires is injected. What each ``FaultKind`` does is said on its member.
"""

from __future__ import annotations

import enum
import random
import threading
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Fault",
    "FaultKind",
    "FaultPlan",
    "Operation",
    "RecordedRequest",
    "UploadSnapshot",
]


class Operation(enum.StrEnum):
    """ECR operations the proxy treats specially; any other name passes through as a str."""

    INITIATE_LAYER_UPLOAD = "InitiateLayerUpload"
    UPLOAD_LAYER_PART = "UploadLayerPart"
    COMPLETE_LAYER_UPLOAD = "CompleteLayerUpload"
    BATCH_CHECK_LAYER_AVAILABILITY = "BatchCheckLayerAvailability"
    PUT_IMAGE = "PutImage"
    BATCH_GET_IMAGE = "BatchGetImage"
    GET_DOWNLOAD_URL_FOR_LAYER = "GetDownloadUrlForLayer"
    GET_AUTHORIZATION_TOKEN = "GetAuthorizationToken"
    LIST_IMAGE_REFERRERS = "ListImageReferrers"


class FaultKind(enum.Enum):
    """What the proxy does to a request a fault rule picked.

    aiobotocore reports RESET and LOST_RESPONSE alike, as ``EndpointConnectionError`` wrapping
    aiohttp's "Connection reset by peer". Delays never block other requests, and end early
    when the client goes away or the endpoint stops.
    """

    HTTP_500 = "http_500"
    """A bare 500 with an HTML body; not applied."""
    SERVER_EXCEPTION = "server_exception"
    """500 ``ServerException`` in ECR's JSON shape; not applied."""
    THROTTLING = "throttling"
    """400 ``ThrottlingException``; not applied."""
    UPLOAD_NOT_FOUND = "upload_not_found"
    """400 ``UploadNotFoundException``; not applied (the upload stays: ``forget_upload`` makes
    it disappear for good, as when ECR expires it)."""
    RESET = "reset"
    """Reads ``reset_after_bytes`` of the body, then resets the connection (RST); not applied."""
    LOST_RESPONSE = "lost_response"
    """Applied as usual, then the connection is reset without an answer."""
    DELAY = "delay"
    """Waits ``delay_seconds`` before handling (nothing applied while waiting)."""
    DELAY_AFTER_APPLY = "delay_after_apply"
    """Applies the request, then waits ``delay_seconds`` before answering."""
    EXPIRED_URL = "expired_url"
    """GetDownloadUrlForLayer only: answered as usual, with a download URL whose time has
    already run out (a GET of it gets S3's 403 AccessDenied, "Request has expired")."""


ANSWERED_WITHOUT_APPLYING: Final = frozenset(
    {
        FaultKind.HTTP_500,
        FaultKind.SERVER_EXCEPTION,
        FaultKind.THROTTLING,
        FaultKind.UPLOAD_NOT_FOUND,
    }
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule: which calls of which operation it hits, and how.

    Raises ValueError for a call number under 1, times under 1, a probability outside [0, 1],
    or a negative delay or byte count.
    """

    operation: str
    kind: FaultKind
    call: int = 1
    times: int | None = 1
    probability: float | None = None
    seed: int = 0
    delay_seconds: float = 30.0
    reset_after_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.call < 1:
            raise ValueError(f"Fault.call is a 1-based call number, got {self.call}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times must be at least 1 (or None), got {self.times}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Fault.probability must lie in [0, 1], got {self.probability}")
        if self.delay_seconds < 0:
            raise ValueError(f"Fault.delay_seconds must be >= 0, got {self.delay_seconds}")
        if self.reset_after_bytes < 0:
            raise ValueError(f"Fault.reset_after_bytes must be >= 0, got {self.reset_after_bytes}")
        if self.kind is FaultKind.EXPIRED_URL and self.operation != "GetDownloadUrlForLayer":
            raise ValueError(
                "FaultKind.EXPIRED_URL applies to GetDownloadUrlForLayer only,"
                f" not {self.operation}"
            )


class _Rule:
    """A fault with its mutable firing state (owned by FaultPlan, under its lock)."""

    __slots__ = ("fault", "injected", "random")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.injected = 0
        self.random = random.Random(fault.seed)

    def fires(self, operation: str, call: int) -> bool:
        fault = self.fault
        if fault.operation != operation or call < fault.call:
            return False
        if fault.times is not None and self.injected >= fault.times:
            return False
        if fault.probability is not None and self.random.random() >= fault.probability:
            return False
        self.injected += 1
        return True


class FaultPlan:
    """The fault rules of one endpoint. Thread-safe: tests add, the proxy thread consumes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def add(
        self,
        operation: str,
        kind: FaultKind,
        *,
        call: int = 1,
        times: int | None = 1,
        probability: float | None = None,
        seed: int = 0,
        delay_seconds: float = 30.0,
        reset_after_bytes: int = 64 * 1024,
    ) -> Fault:
        """Add a rule after the existing ones and return it. Raises ValueError (see Fault)."""
        fault = Fault(
            operation=str(operation),
            kind=kind,
            call=call,
            times=times,
            probability=probability,
            seed=seed,
            delay_seconds=delay_seconds,
            reset_after_bytes=reset_after_bytes,
        )
        with self._lock:
            self._rules.append(_Rule(fault))
        return fault

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The rules, in the order they are tried."""
        with self._lock:
            return tuple(rule.fault for rule in self._rules)

    def select(self, operation: str, call: int) -> Fault | None:
        """The first rule that fires for this call (counting it as injected), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.fires(operation, call):
                    return rule.fault
        return None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What the proxy saw of one ECR API request, and what it did with it.

    A RESET request's body is never parsed, so only its operation, call and fault are known.
    """

    sequence: int
    """Arrival order since the last reset, from 1."""
    operation: str
    call: int
    """1-based number of this call of ``operation`` since the last reset."""
    fault: FaultKind | None
    repository_name: str | None
    upload_id: str | None
    part_first_byte: int | None
    part_last_byte: int | None
    blob_length: int | None
    blob_sha256: str | None
    """Hex sha256 of the decoded layerPartBlob (blobs are never kept in a record)."""
    layer_digests: tuple[str, ...]
    status: int | None
    """HTTP status answered; None when the connection was reset or the client went away."""
    error_code: str | None
    accepted: bool
    """The request was applied (for a part: its bytes are now in the upload)."""


@dataclass(frozen=True, slots=True)
class UploadSnapshot:
    """The proxy's view of an open upload: what has been accepted so far."""

    upload_id: str
    repository_name: str
    registry_id: str
    part_sizes: tuple[int, ...]
    last_byte_received: int
    """Offset of the last byte accepted; -1 before the first part."""
    digest: str
    """``sha256:<hex>`` of the bytes accepted so far."""

    @property
    def bytes_received(self) -> int:
        """How many bytes have been accepted."""
        return self.last_byte_received + 1


class Exchange:
    """One request in flight: its record under construction. Touched on the proxy loop only."""

    __slots__ = (
        "accepted",
        "blob_length",
        "blob_sha256",
        "call",
        "error_code",
        "fault",
        "generation",
        "layer_digests",
        "operation",
        "owners",
        "part_first_byte",
        "part_last_byte",
        "repository_name",
        "sequence",
        "status",
        "upload_id",
    )

    def __init__(
        self, sequence: int, operation: str, call: int, fault: Fault | None, generation: int
    ) -> None:
        self.sequence = sequence
        self.operation = operation
        self.call = call
        self.fault = fault
        self.generation = generation
        # The handler owns it; so does the shielded apply task while it runs.
        self.owners = 1
        self.repository_name: str | None = None
        self.upload_id: str | None = None
        self.part_first_byte: int | None = None
        self.part_last_byte: int | None = None
        self.blob_length: int | None = None
        self.blob_sha256: str | None = None
        self.layer_digests: tuple[str, ...] = ()
        self.status: int | None = None
        self.error_code: str | None = None
        self.accepted = False

    def record(self) -> RecordedRequest:
        return RecordedRequest(
            sequence=self.sequence,
            operation=self.operation,
            call=self.call,
            fault=self.fault.kind if self.fault is not None else None,
            repository_name=self.repository_name,
            upload_id=self.upload_id,
            part_first_byte=self.part_first_byte,
            part_last_byte=self.part_last_byte,
            blob_length=self.blob_length,
            blob_sha256=self.blob_sha256,
            layer_digests=self.layer_digests,
            status=self.status,
            error_code=self.error_code,
            accepted=self.accepted,
        )
