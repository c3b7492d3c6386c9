"""What a push sends, checked before anything is sent: the plan, and the checks it shares.

A ``Plan`` is the top manifest (or index), the platform manifests an index lists, and every
blob with the member its bytes come from. ``oci`` and ``docker`` build plans from a source;
``push`` sends them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ecrstream.errors import ImageSelectionError
from ecrstream.image.archive import Entry, Tree, source_error
from ecrstream.image.mediatypes import MEDIA_TYPE_RE
from ecrstream.models import MAX_LAYER_PARTS, MAX_PART_SIZE

__all__ = [
    "MAX_BLOB_SIZE",
    "Blob",
    "BlobKind",
    "Descriptor",
    "LegacyImage",
    "Manifest",
    "Plan",
    "blob_name",
    "check_blob_size",
    "choose_image",
    "parse_descriptor",
]

MAX_BLOB_SIZE: Final = MAX_LAYER_PARTS * MAX_PART_SIZE
_SHA256_RE: Final = re.compile(r"sha256:([0-9a-f]{64})")

BlobKind = Literal["layer", "config"]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI descriptor, checked: media type, sha256 digest, size; whether it has urls."""

    media_type: str
    digest: str
    size: int
    has_urls: bool = False


@dataclass(frozen=True, slots=True)
class Blob:
    """A layer or config blob to push: its descriptor's facts and the member it is read from."""

    digest: str
    size: int
    media_type: str
    kind: BlobKind
    entry: Entry


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as it is pushed (its text hashes to its digest)."""

    digest: str
    media_type: str
    text: str


@dataclass(slots=True)
class Plan:
    """Everything push_image will send, checked before anything is sent."""

    tree: Tree
    top: Manifest
    children: list[Manifest] = field(default_factory=list)
    blobs: dict[str, Blob] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LegacyImage:
    """An older docker save image whose layers still need hashing before its manifest exists."""

    tree: Tree
    config: bytes
    config_entry: Entry
    layers: list[Entry]
    diff_ids: list[str] | None


def parse_descriptor(tree: Tree, value: object, what: str) -> Descriptor:
    """A descriptor object checked for what ECR needs; ImageSourceError naming ``what``."""
    if not isinstance(value, dict):
        raise source_error(tree, f"{what}: a descriptor must be a JSON object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not MEDIA_TYPE_RE.fullmatch(media_type):
        raise source_error(tree, f"{what}: bad or missing mediaType {media_type!r}")
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise source_error(
            tree,
            f"{what}: digest {digest!r} is not sha256:<64 hex digits> (ECR takes sha256"
            " digests only)",
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise source_error(tree, f"{what}: bad or missing size {size!r}")
    return Descriptor(media_type, digest, size, has_urls=bool(value.get("urls")))


def blob_name(digest: str) -> str:
    """Where an OCI layout keeps the blob ``digest``."""
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def check_blob_size(tree: Tree, name: str, size: int, what: str) -> None:
    """Refuse a blob ECR cannot store: empty, or more than 4,200 parts of 20 MiB."""
    if size == 0:
        raise source_error(tree, f"{what} {name} is empty; ECR does not store empty blobs")
    if size > MAX_BLOB_SIZE:
        raise source_error(
            tree,
            f"{what} {name} is {size} bytes; ECR takes at most {MAX_LAYER_PARTS} parts of"
            f" {MAX_PART_SIZE} bytes per layer",
        )


def choose_image(
    tree: Tree,
    items: list[dict[str, Any]],
    names_of: Callable[[dict[str, Any]], list[str]],
    image_ref: str | None,
    where: str,
) -> dict[str, Any]:
    """The one image of ``items`` named ``image_ref`` (or the only one); ImageSelectionError.

    Items that differ only in their names are one image listed twice (an index.json naming
    one manifest ``1.0`` and ``latest``, say), not a choice.
    """
    known = tuple(sorted({name for item in items for name in names_of(item)}))
    chosen = items if image_ref is None else [i for i in items if image_ref in names_of(i)]
    distinct = {_identity(item): item for item in chosen}
    if len(distinct) == 1:
        return chosen[0]
    if image_ref is None:
        message = f"{where} holds {len(distinct)} images; choose one with image_ref"
    else:
        message = f"{where}: {len(distinct)} images are named {image_ref!r}"
    raise ImageSelectionError(
        f"{tree.description}: {message} (names: {list(known)})",
        source=str(tree.path),
        image_ref=image_ref,
        names=known,
    )


def _identity(item: dict[str, Any]) -> str:
    """What an image entry is, apart from the names it is listed under."""
    # The keys the names come from: annotations in index.json (the descriptor's other fields
    # say which manifest it is), RepoTags in manifest.json.
    return json.dumps(
        {key: value for key, value in item.items() if key not in ("annotations", "RepoTags")},
        sort_keys=True,
        default=str,
    )
