"""Frozen dataclasses: the requests and responses of the ECR operations, results, progress.

Requests validate themselves when built, so invalid arguments raise ``InvalidArgumentError``
(a ``ValueError`` naming the field and the rule) before any request is sent. Wire names
(camelCase) live in ``client.py`` only; everything here is snake_case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ecrstream.errors import InvalidArgumentError

__all__ = [
    "ARTIFACT_STATUSES",
    "MAX_LAYER_PARTS",
    "MAX_MANIFEST_BYTES",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "BatchCheckLayerAvailabilityRequest",
    "BatchCheckLayerAvailabilityResponse",
    "BatchGetImageRequest",
    "BatchGetImageResponse",
    "AuthorizationData",
    "GetAuthorizationTokenRequest",
    "GetAuthorizationTokenResponse",
    "GetDownloadUrlForLayerRequest",
    "GetDownloadUrlForLayerResponse",
    "CompleteLayerUploadRequest",
    "CompleteLayerUploadResponse",
    "Image",
    "ImageReferrer",
    "InitiateLayerUploadRequest",
    "InitiateLayerUploadResponse",
    "Layer",
    "LayerFailure",
    "LayerUploadResult",
    "ListImageReferrersRequest",
    "ListImageReferrersResponse",
    "PutImageRequest",
    "PutImageResponse",
    "UploadCheckpoint",
    "UploadLayerPartRequest",
    "UploadLayerPartResponse",
    "UploadProgress",
    "is_region_name",
    "validate_digest",
    "validate_registry_id",
    "validate_repository_name",
    "validate_upload_id",
]

#: ECR's largest part, from the API model (ECR's quota is 10 MiB in practice).
MAX_PART_SIZE = 20_971_520
#: ECR's smallest part (all but the last).
MIN_PART_SIZE = 5 * 1024 * 1024
#: ECR's most parts per layer.
MAX_LAYER_PARTS = 4_200
#: ECR's largest image manifest (PutImage's imageManifest), in UTF-8 bytes.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_REPOSITORY_RE_ECR = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_REGISTRY_RE = re.compile(r"[0-9]{12}")
_UPLOAD_ID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A region name: one DNS label, not all digits (botocore's rule, without its trailing-newline
# gap: ``$`` matches before a final newline).
_REGION_NAME_RE = re.compile(r"(?![0-9]+$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_TAG_RE = re.compile(r"[A-Za-z0-9_.+-]{1,300}")


def _fail(field_name: str, value: object, rule: str) -> InvalidArgumentError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidArgumentError(field_name, f"{rule} (got {shown})")


def validate_repository_name(value: object, field_name: str = "repository_name") -> str:
    """Return ``value`` if it is a valid ECR repository name, else InvalidArgumentError."""
    if not isinstance(value, str):
        raise _fail(field_name, value, "must be a string")
    if not 2 <= len(value) <= 256:
        raise _fail(field_name, value, "must be 2 to 256 characters long")
    if not _REPOSITORY_RE_ECR.fullmatch(value):
        raise _fail(
            field_name,
            value,
            "must be lowercase letters and digits, separated by '.', '_', '__', '-' or '/'"
            " (ECR's repository name pattern)",
        )
    return value


def validate_registry_id(value: object, field_name: str = "registry_id") -> str | None:
    """Return ``value`` if it is None or a 12-digit AWS account id, else InvalidArgumentError."""
    if value is None:
        return None
    if not isinstance(value, str) or not _REGISTRY_RE.fullmatch(value):
        raise _fail(field_name, value, "must be a 12-digit AWS account id")
    return value


def validate_upload_id(value: object, field_name: str = "upload_id") -> str:
    """Return ``value`` if it has the UUID form ECR upload ids have, else InvalidArgumentError."""
    if not isinstance(value, str) or not _UPLOAD_ID_RE.fullmatch(value):
        raise _fail(field_name, value, "must be an ECR upload id (UUID form 8-4-4-4-12 hex)")
    return value


def is_region_name(value: object) -> bool:
    """True if ``value`` has the form of an AWS region name (one DNS label: ``us-east-1``)."""
    return isinstance(value, str) and _REGION_NAME_RE.fullmatch(value) is not None


def validate_digest(value: object, field_name: str = "digest") -> str:
    """Return ``value`` if it is ``sha256:`` + 64 lowercase hex, else InvalidArgumentError."""
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise _fail(field_name, value, "must be 'sha256:' followed by 64 lowercase hex digits")
    return value


def _validate_digests(values: object, field_name: str, *, at_least: int = 1) -> tuple[str, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise _fail(field_name, values, "must be a sequence of digests")
    if len(values) < at_least:
        raise _fail(field_name, values, f"must hold at least {at_least} digest(s)")
    if len(values) > 100:
        raise _fail(field_name, values, "must hold at most 100 digests per request")
    return tuple(validate_digest(v, f"{field_name}[{i}]") for i, v in enumerate(values))


def _check_int(value: object, field_name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(field_name, value, "must be an integer")
    if value < minimum:
        raise _fail(field_name, value, f"must be >= {minimum}")
    return value


@dataclass(frozen=True, slots=True)
class InitiateLayerUploadRequest:
    """Start a layer upload in a repository."""

    repository_name: str
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)


@dataclass(frozen=True, slots=True)
class InitiateLayerUploadResponse:
    """The new upload's id and the part size ECR asks for."""

    upload_id: str
    part_size: int | None


@dataclass(frozen=True, slots=True)
class UploadLayerPartRequest:
    """One part of a layer: bytes ``part_first_byte``..``part_last_byte`` (inclusive).

    ``layer_part_blob`` may be bytes, bytearray or memoryview; it is not copied here, so do
    not change it until the call returns.
    """

    repository_name: str
    upload_id: str
    part_first_byte: int
    part_last_byte: int
    layer_part_blob: bytes | bytearray | memoryview = field(repr=False)
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_upload_id(self.upload_id)
        validate_registry_id(self.registry_id)
        first = _check_int(self.part_first_byte, "part_first_byte", 0)
        last = _check_int(self.part_last_byte, "part_last_byte", 0)
        blob = self.layer_part_blob
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise _fail("layer_part_blob", type(blob).__name__, "must be bytes-like")
        size = blob.nbytes if isinstance(blob, memoryview) else len(blob)
        if size == 0:
            raise _fail("layer_part_blob", size, "must not be empty")
        if size > MAX_PART_SIZE:
            raise _fail("layer_part_blob", size, f"must be at most {MAX_PART_SIZE} bytes")
        if last - first + 1 != size:
            raise InvalidArgumentError(
                "part_last_byte",
                "part_last_byte - part_first_byte + 1 must equal "
                f"len(layer_part_blob) (got {first}..{last} for {size} bytes)",
            )


@dataclass(frozen=True, slots=True)
class UploadLayerPartResponse:
    """What ECR holds after a part: ``last_byte_received`` is the last offset it has."""

    registry_id: str
    repository_name: str
    upload_id: str
    last_byte_received: int


@dataclass(frozen=True, slots=True)
class CompleteLayerUploadRequest:
    """Finish an upload; ``layer_digests`` holds the layer's ``sha256:`` digest."""

    repository_name: str
    upload_id: str
    layer_digests: tuple[str, ...]
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_upload_id(self.upload_id)
        validate_registry_id(self.registry_id)
        object.__setattr__(
            self, "layer_digests", _validate_digests(self.layer_digests, "layer_digests")
        )


@dataclass(frozen=True, slots=True)
class CompleteLayerUploadResponse:
    """The completed layer's digest as ECR computed it."""

    registry_id: str
    repository_name: str
    upload_id: str
    layer_digest: str


@dataclass(frozen=True, slots=True)
class BatchCheckLayerAvailabilityRequest:
    """Ask which of up to 100 layer digests the repository has."""

    repository_name: str
    layer_digests: tuple[str, ...]
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)
        object.__setattr__(
            self, "layer_digests", _validate_digests(self.layer_digests, "layer_digests")
        )


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer BatchCheckLayerAvailability knows: ``layer_availability`` is AVAILABLE or not."""

    layer_digest: str
    layer_availability: str | None = None
    layer_size: int | None = None
    media_type: str | None = None

    @property
    def available(self) -> bool:
        """True when ECR reports the layer AVAILABLE."""
        return self.layer_availability == "AVAILABLE"


@dataclass(frozen=True, slots=True)
class LayerFailure:
    """A digest BatchCheckLayerAvailability could not report (MissingLayerDigest, ...)."""

    layer_digest: str | None
    failure_code: str | None
    failure_reason: str | None


@dataclass(frozen=True, slots=True)
class BatchCheckLayerAvailabilityResponse:
    """Layers found and digests that failed."""

    layers: tuple[Layer, ...]
    failures: tuple[LayerFailure, ...]

    def available_digests(self) -> frozenset[str]:
        """The digests ECR reports as AVAILABLE."""
        return frozenset(layer.layer_digest for layer in self.layers if layer.available)


@dataclass(frozen=True, slots=True)
class PutImageRequest:
    """Put an image manifest (or index), optionally tagged and/or pinned to a digest."""

    repository_name: str
    image_manifest: str = field(repr=False)
    image_manifest_media_type: str | None = None
    image_tag: str | None = None
    image_digest: str | None = None
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)
        if not isinstance(self.image_manifest, str):
            raise _fail("image_manifest", type(self.image_manifest).__name__, "must be a str")
        size = len(self.image_manifest.encode("utf-8"))
        if not 1 <= size <= MAX_MANIFEST_BYTES:
            raise _fail("image_manifest", size, "must be 1 byte to 4 MiB (UTF-8) long")
        if self.image_tag is not None and (
            not isinstance(self.image_tag, str) or not _TAG_RE.fullmatch(self.image_tag)
        ):
            raise _fail(
                "image_tag", self.image_tag, "must be 1 to 300 of letters, digits, '_', '.', '-'"
            )
        if self.image_digest is not None:
            validate_digest(self.image_digest, "image_digest")


@dataclass(frozen=True, slots=True)
class Image:
    """An image as PutImage/BatchGetImage return it."""

    registry_id: str | None
    repository_name: str | None
    image_digest: str | None
    image_tag: str | None
    image_manifest: str | None = field(default=None, repr=False)
    image_manifest_media_type: str | None = None


@dataclass(frozen=True, slots=True)
class PutImageResponse:
    """The image ECR stored."""

    image: Image


@dataclass(frozen=True, slots=True)
class BatchGetImageRequest:
    """Fetch images by tag or digest (``image_ids`` of ``"tag"`` or ``"sha256:..."``)."""

    repository_name: str
    image_ids: tuple[str, ...]
    accepted_media_types: tuple[str, ...] = ()
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)
        if isinstance(self.image_ids, str) or not self.image_ids:
            raise _fail("image_ids", self.image_ids, "must be a non-empty sequence of ids")
        object.__setattr__(self, "image_ids", tuple(self.image_ids))
        object.__setattr__(self, "accepted_media_types", tuple(self.accepted_media_types))


@dataclass(frozen=True, slots=True)
class BatchGetImageResponse:
    """Images found, and ids that failed."""

    images: tuple[Image, ...]
    failures: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class GetDownloadUrlForLayerRequest:
    """Ask for a URL that serves one layer's bytes (ranged GETs work on it)."""

    repository_name: str
    layer_digest: str
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)
        validate_digest(self.layer_digest, "layer_digest")


@dataclass(frozen=True, slots=True)
class GetDownloadUrlForLayerResponse:
    """The layer's download URL (presigned: its query carries a signature; never log it)."""

    download_url: str = field(repr=False)
    layer_digest: str | None


@dataclass(frozen=True, slots=True)
class GetAuthorizationTokenRequest:
    """Ask for a registry login token: of the client's own registry, or of ``registry_ids``
    (12-digit account ids; ECR still honours the field, deprecated as it is)."""

    registry_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.registry_ids, str):
            raise _fail("registry_ids", self.registry_ids, "must be a sequence of account ids")
        ids = tuple(self.registry_ids)
        for i, value in enumerate(ids):
            validate_registry_id(value, f"registry_ids[{i}]")
            if value is None:
                raise _fail(f"registry_ids[{i}]", value, "must be a 12-digit AWS account id")
        object.__setattr__(self, "registry_ids", ids)


@dataclass(frozen=True, slots=True)
class AuthorizationData:
    """One registry's login: ``authorization_token`` is base64 of ``AWS:<password>`` (a
    secret: not in the repr), valid until ``expires_at`` (seconds since the epoch, if given),
    for the registry at ``proxy_endpoint`` (``https://ACCOUNT.dkr.ecr.REGION.amazonaws.com``)."""

    authorization_token: str = field(repr=False)
    expires_at: float | None
    proxy_endpoint: str


@dataclass(frozen=True, slots=True)
class GetAuthorizationTokenResponse:
    """The logins ECR gave, one per registry asked for (one when none was named)."""

    authorization_data: tuple[AuthorizationData, ...]


#: ListImageReferrers' artifact statuses to filter on (ECR lists ACTIVE ones unless asked).
ARTIFACT_STATUSES = ("ACTIVE", "ARCHIVED", "ACTIVATING", "ANY")


@dataclass(frozen=True, slots=True)
class ListImageReferrersRequest:
    """List one page of the artifacts (signatures, SBOMs, attestations) whose ``subject`` is
    the image ``subject_digest``: up to ``max_results`` (1 to 50; ECR's default is 20), from
    ``next_token`` (a previous page's), only those of ``artifact_types`` (at most 5) when
    given, and of ``artifact_status`` (one of ARTIFACT_STATUSES; ECR's default: ACTIVE)."""

    repository_name: str
    subject_digest: str
    artifact_types: tuple[str, ...] = ()
    artifact_status: str | None = None
    max_results: int | None = None
    next_token: str | None = None
    registry_id: str | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name)
        validate_registry_id(self.registry_id)
        validate_digest(self.subject_digest, "subject_digest")
        if isinstance(self.artifact_types, str) or not isinstance(self.artifact_types, Sequence):
            raise _fail("artifact_types", self.artifact_types, "must be a sequence of strings")
        types = tuple(self.artifact_types)
        if len(types) > 5:
            raise _fail("artifact_types", types, "must hold at most 5 artifact types")
        for i, value in enumerate(types):
            if not isinstance(value, str) or not 1 <= len(value) <= 255:
                raise _fail(f"artifact_types[{i}]", value, "must be 1 to 255 characters")
        object.__setattr__(self, "artifact_types", types)
        if self.artifact_status is not None and self.artifact_status not in ARTIFACT_STATUSES:
            raise _fail(
                "artifact_status",
                self.artifact_status,
                "must be one of " + ", ".join(ARTIFACT_STATUSES),
            )
        if self.max_results is not None:
            _check_int(self.max_results, "max_results", 1)
            if self.max_results > 50:
                raise _fail("max_results", self.max_results, "must be at most 50")
        if self.next_token is not None and (
            not isinstance(self.next_token, str) or not self.next_token
        ):
            raise _fail("next_token", self.next_token, "must be a previous page's nextToken")


@dataclass(frozen=True, slots=True)
class ImageReferrer:
    """One artifact ListImageReferrers lists: its manifest's digest, media type and size, its
    ``artifact_type``, ``annotations`` and ``artifact_status`` (ACTIVE, ARCHIVED, ACTIVATING)."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_status: str | None = None


@dataclass(frozen=True, slots=True)
class ListImageReferrersResponse:
    """One page of referrers; ``next_token`` asks for the next page (None: this was the last)."""

    referrers: tuple[ImageReferrer, ...]
    next_token: str | None


@dataclass(frozen=True, slots=True)
class LayerUploadResult:
    """What one layer upload did.

    ``already_existed`` is True when the repository had the layer (no part sent, or ECR said
    so at complete). ``restarted`` counts fresh uploads started because ECR lost the upload.
    ``resumed_from`` is how many bytes ECR already held when this call began (the
    checkpoint's ``bytes_committed``, or what ECR said instead before this call sent any
    part); 0 for a fresh upload and for one that started over. So ``size - resumed_from``
    bytes went up in this call.
    """

    digest: str
    size: int
    upload_id: str | None
    part_count: int
    already_existed: bool
    restarted: int = 0
    resumed_from: int = 0


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """Progress after a committed part; ``total_bytes`` is None for a stream of unknown size."""

    bytes_sent: int
    total_bytes: int | None
    parts_sent: int


@dataclass(frozen=True, slots=True)
class UploadCheckpoint:
    """Where a stopped upload stands: ECR holds bytes [0, bytes_committed) of upload_id.

    Pass it as ``resume=`` to continue. ``source_size`` and ``source_mtime_ns`` identify the
    file it belongs to (a checkpoint of another file is refused); ``part_size`` is the size
    the upload used; ``source_offset``/``source_length`` the section of the file the layer
    is (the whole file: 0 and its size). Serialize with ``to_json``/``from_json``.
    """

    repository_name: str
    registry_id: str | None
    upload_id: str
    bytes_committed: int
    part_size: int | None = None
    source_path: str | None = None
    source_size: int | None = None
    source_mtime_ns: int | None = None
    source_offset: int = 0
    source_length: int | None = None

    def __post_init__(self) -> None:
        validate_repository_name(self.repository_name, "checkpoint.repository_name")
        validate_registry_id(self.registry_id, "checkpoint.registry_id")
        validate_upload_id(self.upload_id, "checkpoint.upload_id")
        _check_int(self.bytes_committed, "checkpoint.bytes_committed", 0)
        _check_int(self.source_offset, "checkpoint.source_offset", 0)
        for name in ("part_size", "source_size", "source_mtime_ns", "source_length"):
            value = getattr(self, name)
            if value is not None:
                _check_int(value, f"checkpoint.{name}", 0)
        if self.source_path is not None and not isinstance(self.source_path, str):
            # A number or a list here would only fail later, inside Path(), far from the cause.
            raise _fail("checkpoint.source_path", self.source_path, "must be a string (a path)")

    def to_json(self) -> str:
        """Serialize to a JSON object (``from_json`` reads it back)."""
        return json.dumps({"ecrstream_checkpoint": 1, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> UploadCheckpoint:
        """Read a checkpoint written by ``to_json``; InvalidArgumentError names what is wrong."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError("checkpoint", f"not valid JSON ({exc})") from None
        except RecursionError:  # hostile input: arrays or objects nested thousands deep
            raise InvalidArgumentError("checkpoint", "not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict) or data.get("ecrstream_checkpoint") != 1:
            raise InvalidArgumentError(
                "checkpoint", "not an ecrstream checkpoint (version 1) JSON object"
            )
        data.pop("ecrstream_checkpoint")
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise InvalidArgumentError("checkpoint", f"unknown field(s) {sorted(unknown)}")
        missing = {"repository_name", "upload_id", "bytes_committed"} - set(data)
        if missing:
            raise InvalidArgumentError("checkpoint", f"missing field(s) {sorted(missing)}")
        data.setdefault("registry_id", None)
        return cls(**data)
