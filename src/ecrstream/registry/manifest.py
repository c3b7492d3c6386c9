"""Manifests and indexes as a registry serves them: exact bytes, their digest, what they list.

:class:`Manifest` keeps the bytes the registry sent (its digest is the sha256 of exactly
those bytes, so they must be copied as they are). :func:`manifest_blobs` lists an image
manifest's blobs (config first, then the layers in order); :func:`index_children` lists an
index's manifests with their platforms. Both check the JSON and name the field that is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ecrstream.errors import ManifestInvalidError

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "Descriptor",
    "IndexChild",
    "Manifest",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Platform",
    "index_children",
    "manifest_blobs",
    "media_type_of",
]

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
#: What ``get_manifest`` asks for, most wanted first.
ACCEPTED_MEDIA_TYPES: Final = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

_IMAGE_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_SCHEMA1_TYPES: Final = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
_DIGEST_RE: Final = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as served: ``digest`` is ``sha256:`` of ``data``."""

    digest: str
    media_type: str
    data: bytes

    @property
    def is_index(self) -> bool:
        """Whether this is an index (OCI image index or Docker manifest list)."""
        return self.media_type in _INDEX_TYPES

    def __repr__(self) -> str:
        return f"Manifest({self.digest}, {self.media_type}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A blob an image manifest refers to: its media type, digest and size in bytes."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Platform:
    """Where an index's child runs: ``linux/arm64/v8`` is os, architecture, variant."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True, slots=True)
class IndexChild:
    """A manifest an index lists; ``platform`` is None for children without one (attestations)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None


def _invalid(where: str, rule: str) -> ManifestInvalidError:
    return ManifestInvalidError(f"manifest {where}: {rule}")


def media_type_of(data: bytes, content_type: str | None) -> str:
    """The media type of a manifest body: the JSON's ``mediaType``, else the Content-Type.

    An OCI manifest may omit ``mediaType``; then the registry's Content-Type decides, and
    failing that the shape (``manifests`` for an index, ``layers`` for a manifest).

    Raises:
        ManifestInvalidError: not JSON, a schema 1 manifest, or not one of the four types.
    """
    document = _load(data, "body")
    declared = document.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if document.get("schemaVersion") == 1 or declared in _SCHEMA1_TYPES or header in _SCHEMA1_TYPES:
        raise _invalid(
            "body",
            "is a Docker schema 1 manifest, which ecrstream does not copy (push the image "
            "again with a current docker or buildkit to get schema 2)",
        )
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType", "must be a string")
    media_type = declared or (header if header in _IMAGE_TYPES | _INDEX_TYPES else None)
    if media_type is None:
        if "manifests" in document:
            media_type = OCI_INDEX
        elif "layers" in document:
            media_type = OCI_MANIFEST
    if media_type not in _IMAGE_TYPES | _INDEX_TYPES:
        raise _invalid(
            "mediaType",
            f"{media_type or header or 'none'!r} is not an OCI or Docker v2 manifest or index",
        )
    assert media_type is not None
    return media_type


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError:
        raise _invalid(where, "is not valid JSON") from None
    if not isinstance(document, dict):
        raise _invalid(where, "must be a JSON object")
    return document


def _descriptor_fields(item: Any, where: str) -> tuple[str, str, int]:
    if not isinstance(item, dict):
        raise _invalid(where, "must be an object")
    media_type = item.get("mediaType")
    digest = item.get("digest")
    size = item.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType", "must be a non-empty string")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise _invalid(f"{where}.digest", "must be sha256: and 64 lower-case hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size", "must be an integer >= 0")
    return media_type, digest, size


def manifest_blobs(manifest: Manifest) -> tuple[Descriptor, ...]:
    """The blobs of an image manifest: its config first, then its layers in order.

    Raises:
        ManifestInvalidError: an index was given, or a descriptor is malformed (the message
            names it, e.g. ``layers[2].size``).
    """
    if manifest.media_type not in _IMAGE_TYPES:
        raise _invalid("mediaType", f"{manifest.media_type} is not an image manifest")
    document = _load(manifest.data, "body")
    config = Descriptor(*_descriptor_fields(document.get("config"), "config"))
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise _invalid("layers", "must be a list")
    return (
        config,
        *(Descriptor(*_descriptor_fields(item, f"layers[{i}]")) for i, item in enumerate(layers)),
    )


def _platform(item: dict[str, Any], where: str) -> Platform | None:
    platform = item.get("platform")
    if platform is None:
        return None
    if not isinstance(platform, dict):
        raise _invalid(f"{where}.platform", "must be an object")
    os_name = platform.get("os")
    architecture = platform.get("architecture")
    variant = platform.get("variant")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        raise _invalid(f"{where}.platform", "must have string os and architecture")
    if variant is not None and not isinstance(variant, str):
        raise _invalid(f"{where}.platform.variant", "must be a string")
    return Platform(os_name, architecture, variant or None)


def index_children(manifest: Manifest) -> tuple[IndexChild, ...]:
    """The manifests an index lists, in its order, with their platforms.

    Raises:
        ManifestInvalidError: an image manifest was given, or an entry is malformed (the
            message names it, e.g. ``manifests[1].digest``).
    """
    if manifest.media_type not in _INDEX_TYPES:
        raise _invalid("mediaType", f"{manifest.media_type} is not an index")
    document = _load(manifest.data, "body")
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise _invalid("manifests", "must be a list")
    children = []
    for i, item in enumerate(entries):
        where = f"manifests[{i}]"
        media_type, digest, size = _descriptor_fields(item, where)
        children.append(IndexChild(media_type, digest, size, _platform(item, where)))
    return tuple(children)
