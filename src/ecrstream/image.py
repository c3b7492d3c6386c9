"""push_image: an OCI image layout or a ``docker save`` archive into ECR.

Sources (``source`` is a path; the kind is recognized from what it holds):

- an OCI image layout: a folder with ``oci-layout``, ``index.json`` and ``blobs/sha256/...``,
  or the same as a tar archive. ``docker save`` from Docker 25 on writes this form (with a
  ``manifest.json`` beside it, which is then ignored);
- an older ``docker save`` archive (or its extracted folder): ``manifest.json`` naming a
  config file and layer tars. Their Docker v2 schema 2 manifest is built here, with layer
  digests and sizes computed by hashing the layer tars (streaming; nothing is extracted).

Blobs inside a tar are read in place from their offset in the archive (never extracted).
Manifests are pushed with their bytes exactly as in the source, so their digests are kept.

Everything is checked before the first request is sent: what ECR cannot take (manifests over
4 MiB, unknown manifest media types, an index of indexes, foreign or non-distributable layers
whose blob is not in the source, empty blobs, non-sha256 digests) and what an untrusted
archive may hold (member paths outside the archive root, symbolic or hard links where a blob
should be, a truncated tar, a blob whose size is not its descriptor's, a manifest whose bytes
do not hash to its digest) raise ``ImageSourceError``; bad arguments raise ``ValueError``.

Then: one BatchCheckLayerAvailability (per 100 blobs) for every blob, uploads of the missing
ones (config blobs included), at most ``max_concurrent_layers`` at once, largest first, each
through ``LayerUploader`` (parts strictly sequential, its digest checked while it streams:
``DigestMismatchError`` before CompleteLayerUpload); then PutImage. The first failure of an
upload stops the others and is raised.

Cancellation: one token stops the whole push. Every upload in flight stops, no task is left
behind, and ``PushCanceledError`` (an ``OperationCanceledError``) lists in
``committed_digests`` the blobs this push committed; a second push skips them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TypeVar

import anyio

from ecrstream.cancellation import CancellationToken, OperationCanceledError
from ecrstream.client import EcrClient, RetryPolicy
from ecrstream.errors import (
    DigestMismatchError,
    ImageAlreadyExistsError,
    ImageSourceError,
    LayersNotFoundError,
    ReferencedImagesNotFoundError,
)
from ecrstream.models import (
    MAX_LAYER_PARTS,
    MAX_MANIFEST_BYTES,
    MAX_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    PutImageRequest,
    UploadProgress,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.uploader import LayerUploader

__all__ = [
    "PushCanceledError",
    "PushImageResult",
    "PushProgress",
    "PushProgressCallback",
    "push_image",
]

logger = logging.getLogger("ecrstream")

_NONE: Final = CancellationToken.NONE
_T = TypeVar("_T")

DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_MANIFEST_TYPES: Final = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
_INDEX_TYPES: Final = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
_FOREIGN_LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
# What a Docker v2 schema 2 manifest may hold (OCI manifests may carry any artifact type).
_SCHEMA2_CONFIG_TYPES: Final = frozenset({DOCKER_CONFIG, OCI_CONFIG})
_SCHEMA2_LAYER_TYPES: Final = frozenset(
    {
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        *_FOREIGN_LAYER_TYPES,
    }
)
_MEDIA_TYPE_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_SHA256_RE: Final = re.compile(r"sha256:([0-9a-f]{64})")
_REF_ANNOTATIONS: Final = ("org.opencontainers.image.ref.name", "io.containerd.image.name")

_SMALL_FILE_LIMIT: Final = 64 * 1024  # oci-layout
_CONFIG_LIMIT: Final = 32 * 1024 * 1024  # a legacy archive's config, read to hash and check it
_HASH_CHUNK: Final = 8 * 1024 * 1024
_MAX_BLOB_SIZE: Final = MAX_LAYER_PARTS * MAX_PART_SIZE
_BATCH_CHECK_LIMIT: Final = 100
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

#: PutImage may briefly answer LayersNotFound/ReferencedImagesNotFound right after uploads.
DEFAULT_PUT_IMAGE_RETRY: Final = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0)


# -- public data --------------------------------------------------------------------------


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


class PushCanceledError(OperationCanceledError):
    """push_image stopped because its token was canceled.

    ``committed_digests`` lists the blobs this push uploaded and committed before it stopped
    (a second push finds them and skips them); ``pending_digests`` the blobs it meant to
    upload that are not committed. A blob whose CompleteLayerUpload was cut off may be on ECR
    without being listed; a second push finds it too.
    """

    committed_digests: tuple[str, ...]
    pending_digests: tuple[str, ...]

    def __init__(
        self,
        message: str | None = None,
        cancellation_token: CancellationToken = _NONE,
        *,
        committed_digests: Sequence[str] = (),
        pending_digests: Sequence[str] = (),
    ) -> None:
        """Create the error with what was committed and what was left."""
        super().__init__(message, cancellation_token)
        self.committed_digests = tuple(committed_digests)
        self.pending_digests = tuple(pending_digests)


# -- reading a source: a tree of members, from a folder or a tar --------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One member of a source: what it is, and where its bytes lie (``path`` at ``offset``)."""

    name: str
    kind: Literal["file", "dir", "symlink", "hardlink", "other"]
    size: int
    path: Path
    offset: int = 0
    link: str | None = None


def _member_name(raw: str) -> str | None:
    """The archive-relative form of a member name; None if it lies outside the root."""
    if raw.startswith("/") or re.match(r"[A-Za-z]:[\\/]", raw):
        return None
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _Tree:
    """The members of a source, by archive-relative name."""

    description: str

    def entry(self, name: str) -> _Entry | None:
        """The member ``name``, or None if there is none."""
        raise NotImplementedError

    def names(self) -> Iterable[str]:
        """Member names, at least the top two levels (for error messages)."""
        raise NotImplementedError


class _DirTree(_Tree):
    """A folder. Symbolic links are refused (they could lead outside it)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.description = f"folder {root}"

    def entry(self, name: str) -> _Entry | None:
        parts = name.split("/")
        current = self.root
        for position, part in enumerate(parts):
            current = current / part
            try:
                info = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise ImageSourceError(f"{self.description}: cannot read {name}: {exc}") from None
            if stat.S_ISLNK(info.st_mode):
                if position < len(parts) - 1:
                    raise ImageSourceError(
                        f"{self.description}: {'/'.join(parts[: position + 1])} is a symbolic"
                        f" link; refusing to follow it to {name}"
                    )
                return _Entry(name, "symlink", 0, current, link=os.readlink(current))
        if stat.S_ISREG(info.st_mode):
            return _Entry(name, "file", info.st_size, current)
        return _Entry(name, "dir" if stat.S_ISDIR(info.st_mode) else "other", 0, current)

    def names(self) -> Iterable[str]:
        # Two levels are enough for the hint about a layout one folder down.
        with os.scandir(self.root) as top:
            for child in top:
                yield child.name
                if child.is_dir(follow_symlinks=False):
                    with os.scandir(child.path) as inner:
                        yield from (f"{child.name}/{item.name}" for item in inner)


class _TarTree(_Tree):
    """A plain (uncompressed) tar archive, scanned once; members are read at their offset.

    Refuses, for every member: a path outside the archive root, a name that appears twice,
    data past the end of the file; and an archive without its end-of-archive block
    (truncated).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"archive {path}"
        self._entries: dict[str, _Entry] = {}
        try:
            with path.open("rb") as file:
                self._scan(file, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            raise ImageSourceError(f"{self.description}: cannot read it: {exc}") from None

    def _fail(self, message: str) -> ImageSourceError:
        return ImageSourceError(f"{self.description}: {message}")

    def _scan(self, file: Any, file_size: int) -> None:
        head = file.read(4)
        if head.startswith(_GZIP_MAGIC) or head == _ZSTD_MAGIC:
            raise self._fail(
                "is compressed; blobs are read in place, so give the plain tar"
                " (decompress it first, e.g. gunzip)"
            )
        file.seek(0)
        try:
            with tarfile.open(fileobj=file, mode="r:") as archive:
                while (info := archive.next()) is not None:
                    self._add(info, file_size)
                end = archive.offset
        except (tarfile.TarError, ValueError, OverflowError) as exc:
            raise self._fail(
                f"is not a readable tar archive (truncated or corrupt: {exc})"
            ) from None
        # tarfile stops quietly at a short or garbled header: demand the end-of-archive block.
        file.seek(end)
        if file.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise self._fail(
                f"is truncated or corrupt: no end-of-archive block at byte {end}"
                f" (the file has {file_size} bytes)"
            )

    def _add(self, info: tarfile.TarInfo, file_size: int) -> None:
        name = _member_name(info.name)
        if name is None:
            raise self._fail(f"member {info.name!r} lies outside the archive root")
        if not name:
            return  # the root folder itself ("./")
        kind: Literal["file", "dir", "symlink", "hardlink", "other"]
        if info.isreg() and not info.issparse():
            kind = "file"
            if info.offset_data + info.size > file_size:
                raise self._fail(
                    f"is truncated: member {name} needs bytes up to"
                    f" {info.offset_data + info.size}, the file has {file_size}"
                )
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            kind = "other"
        previous = self._entries.get(name)
        if previous is not None and not (previous.kind == kind == "dir"):
            raise self._fail(f"member {name} appears twice (which one is meant is ambiguous)")
        self._entries[name] = _Entry(
            name,
            kind,
            info.size if kind == "file" else 0,
            self.path,
            info.offset_data,
            info.linkname if kind in ("symlink", "hardlink") else None,
        )

    def entry(self, name: str) -> _Entry | None:
        return self._entries.get(name)

    def names(self) -> Iterable[str]:
        return self._entries.keys()


def _open_tree(source: Path) -> _Tree:
    try:
        info = source.stat()
    except FileNotFoundError:
        raise ValueError(f"source: no such file or folder: {source}") from None
    except OSError as exc:
        raise ValueError(f"source: cannot use {source}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        return _DirTree(source)
    if stat.S_ISREG(info.st_mode):
        return _TarTree(source)
    raise ValueError(f"source: not a folder or a regular file: {source}")


def _regular(tree: _Tree, entry: _Entry | None, name: str, what: str) -> _Entry:
    """``entry`` if it is a regular file; else a clear ImageSourceError."""
    if entry is None:
        raise ImageSourceError(f"{tree.description}: {what} {name} is missing")
    if entry.kind in ("symlink", "hardlink"):
        kind = "a symbolic link" if entry.kind == "symlink" else "a hard link"
        raise ImageSourceError(
            f"{tree.description}: {what} {name} is {kind} (to {entry.link!r}), not a file;"
            " refusing to follow links in an image source"
        )
    if entry.kind != "file":
        raise ImageSourceError(f"{tree.description}: {what} {name} is not a regular file")
    return entry


def _read(tree: _Tree, entry: _Entry, limit: int, what: str) -> bytes:
    if entry.size > limit:
        raise ImageSourceError(
            f"{tree.description}: {what} {entry.name} is {entry.size} bytes, over the"
            f" {limit}-byte limit"
        )
    with entry.path.open("rb") as file:
        file.seek(entry.offset)
        data = file.read(entry.size)
    if len(data) != entry.size:
        raise ImageSourceError(f"{tree.description}: {what} {entry.name} changed as it was read")
    return data


def _json(tree: _Tree, data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ImageSourceError(f"{tree.description}: {what} is not valid JSON ({exc})") from None


def _json_object(tree: _Tree, data: bytes, what: str) -> dict[str, Any]:
    document = _json(tree, data, what)
    if not isinstance(document, dict):
        raise ImageSourceError(f"{tree.description}: {what} is not a JSON object")
    return document


# -- the plan: blobs to upload and manifests to put ----------------------------------------


@dataclass(frozen=True, slots=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    has_urls: bool = False


@dataclass(slots=True)
class _Blob:
    digest: str
    size: int
    media_type: str
    kind: Literal["layer", "config"]
    entry: _Entry


@dataclass(frozen=True, slots=True)
class _Manifest:
    digest: str
    media_type: str
    text: str


@dataclass(slots=True)
class _Plan:
    """Everything push_image will send, checked before anything is sent."""

    top: _Manifest
    children: list[_Manifest] = field(default_factory=list)
    blobs: dict[str, _Blob] = field(default_factory=dict)


@dataclass(slots=True)
class _LegacyImage:
    """An older docker save image whose layers still need hashing before its manifest exists."""

    tree: _Tree
    config: bytes
    config_entry: _Entry
    layers: list[_Entry]
    diff_ids: list[str] | None


def _descriptor(tree: _Tree, value: object, what: str) -> _Descriptor:
    if not isinstance(value, dict):
        raise ImageSourceError(f"{tree.description}: {what}: a descriptor must be a JSON object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not _MEDIA_TYPE_RE.fullmatch(media_type):
        raise ImageSourceError(
            f"{tree.description}: {what}: bad or missing mediaType {media_type!r}"
        )
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise ImageSourceError(
            f"{tree.description}: {what}: digest {digest!r} is not sha256:<64 hex digits>"
            " (ECR takes sha256 digests only)"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageSourceError(f"{tree.description}: {what}: bad or missing size {size!r}")
    urls = value.get("urls")
    return _Descriptor(media_type, digest, size, has_urls=bool(urls))


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _read_manifest(tree: _Tree, descriptor: _Descriptor, what: str) -> _Manifest:
    """A manifest or index blob, checked against its descriptor (size, limit, digest, UTF-8)."""
    if descriptor.size > MAX_MANIFEST_BYTES:
        raise ImageSourceError(
            f"{tree.description}: {what} {descriptor.digest} is {descriptor.size} bytes;"
            f" ECR takes manifests up to {MAX_MANIFEST_BYTES} bytes (4 MiB)"
        )
    name = _blob_name(descriptor.digest)
    entry = _regular(tree, tree.entry(name), name, what)
    if entry.size != descriptor.size:
        raise ImageSourceError(
            f"{tree.description}: {what} {name} is {entry.size} bytes, its descriptor says"
            f" {descriptor.size}"
        )
    data = _read(tree, entry, MAX_MANIFEST_BYTES, what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor.digest:
        raise ImageSourceError(
            f"{tree.description}: {what} {name} hashes to {actual}, not its digest"
            f" {descriptor.digest} (corrupt source)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageSourceError(f"{tree.description}: {what} {name} is not UTF-8 text") from None
    return _Manifest(descriptor.digest, descriptor.media_type, text)


def _add_blob(
    plan: _Plan, tree: _Tree, descriptor: _Descriptor, kind: Literal["layer", "config"], what: str
) -> None:
    known = plan.blobs.get(descriptor.digest)
    if known is not None:
        if known.size != descriptor.size:
            raise ImageSourceError(
                f"{tree.description}: blob {descriptor.digest} is described with sizes"
                f" {known.size} and {descriptor.size}"
            )
        return
    name = _blob_name(descriptor.digest)
    entry = tree.entry(name)
    if entry is None and (descriptor.media_type in _FOREIGN_LAYER_TYPES or descriptor.has_urls):
        raise ImageSourceError(
            f"{tree.description}: {what} {descriptor.digest} is a foreign/non-distributable"
            f" layer ({descriptor.media_type}) whose blob is not in the source; ECR stores only"
            " layers it is given (re-export the image with its foreign layers included)"
        )
    entry = _regular(tree, entry, name, what)
    if entry.size != descriptor.size:
        raise ImageSourceError(
            f"{tree.description}: {what} {name} is {entry.size} bytes, its descriptor says"
            f" {descriptor.size}"
        )
    _check_blob_size(tree, descriptor.digest, descriptor.size, what)
    plan.blobs[descriptor.digest] = _Blob(
        descriptor.digest, descriptor.size, descriptor.media_type, kind, entry
    )


def _check_blob_size(tree: _Tree, digest: str, size: int, what: str) -> None:
    if size == 0:
        raise ImageSourceError(
            f"{tree.description}: {what} {digest} is empty; ECR does not store empty blobs"
        )
    if size > _MAX_BLOB_SIZE:
        raise ImageSourceError(
            f"{tree.description}: {what} {digest} is {size} bytes; ECR takes at most"
            f" {MAX_LAYER_PARTS} parts of {MAX_PART_SIZE} bytes per layer"
        )


def _add_image_manifest(plan: _Plan, tree: _Tree, manifest: _Manifest, what: str) -> None:
    """Check one image manifest and add its config and layer blobs to the plan."""
    document = _json_object(tree, manifest.text.encode("utf-8"), what)
    if document.get("schemaVersion") != 2:
        raise ImageSourceError(f"{tree.description}: {what} is not schemaVersion 2")
    declared = document.get("mediaType")
    if declared is not None and declared != manifest.media_type:
        raise ImageSourceError(
            f"{tree.description}: {what} says mediaType {declared!r}, its descriptor"
            f" {manifest.media_type!r}"
        )
    if "manifests" in document:
        raise ImageSourceError(f"{tree.description}: {what} is an index, described as a manifest")
    config = _descriptor(tree, document.get("config"), f"{what} config")
    layers_value = document.get("layers")
    if not isinstance(layers_value, list):
        raise ImageSourceError(f"{tree.description}: {what} has no layers list")
    layers = [
        _descriptor(tree, value, f"{what} layer {number}")
        for number, value in enumerate(layers_value, start=1)
    ]
    if manifest.media_type == DOCKER_MANIFEST:
        if config.media_type not in _SCHEMA2_CONFIG_TYPES:
            raise ImageSourceError(
                f"{tree.description}: {what} config has unknown media type {config.media_type!r}"
            )
        for number, layer in enumerate(layers, start=1):
            if layer.media_type not in _SCHEMA2_LAYER_TYPES:
                raise ImageSourceError(
                    f"{tree.description}: {what} layer {number} has unknown media type"
                    f" {layer.media_type!r}"
                )
    _add_blob(plan, tree, config, "config", f"{what} config")
    for number, layer in enumerate(layers, start=1):
        _add_blob(plan, tree, layer, "layer", f"{what} layer {number}")


def _choose_image(
    items: list[dict[str, Any]],
    names_of: Callable[[dict[str, Any]], list[str]],
    image_ref: str | None,
    where: str,
) -> dict[str, Any]:
    """The one image of ``items`` named ``image_ref`` (or the only one); ImageSourceError."""
    if image_ref is None:
        if len(items) == 1:
            return items[0]
        known = sorted({name for item in items for name in names_of(item)})
        raise ImageSourceError(
            f"{where} holds {len(items)} images; choose one with image_ref (names: {known})"
        )
    chosen = [item for item in items if image_ref in names_of(item)]
    if len(chosen) != 1:
        known = sorted({name for item in items for name in names_of(item)})
        raise ImageSourceError(
            f"{where}: {len(chosen)} images are named {image_ref!r} (names: {known})"
        )
    return chosen[0]


def _refs_of(entry: dict[str, Any]) -> list[str]:
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return []
    return [str(annotations[key]) for key in _REF_ANNOTATIONS if key in annotations]


def _plan_oci(tree: _Tree, image_ref: str | None) -> _Plan:
    layout_entry = _regular(tree, tree.entry("oci-layout"), "oci-layout", "file")
    layout = _json_object(
        tree, _read(tree, layout_entry, _SMALL_FILE_LIMIT, "oci-layout"), "oci-layout"
    )
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageSourceError(
            f"{tree.description}: oci-layout has imageLayoutVersion {version!r}; 1.x is supported"
        )
    index_entry = _regular(tree, tree.entry("index.json"), "index.json", "file")
    index = _json_object(
        tree, _read(tree, index_entry, MAX_MANIFEST_BYTES, "index.json"), "index.json"
    )
    entries = index.get("manifests")
    if index.get("schemaVersion") != 2 or not isinstance(entries, list) or not entries:
        raise ImageSourceError(
            f"{tree.description}: index.json is not a schemaVersion 2 index with manifests"
        )
    if any(not isinstance(item, dict) for item in entries):
        raise ImageSourceError(f"{tree.description}: index.json: a descriptor is not an object")
    entry = _choose_image(entries, _refs_of, image_ref, f"{tree.description}: index.json")
    top = _descriptor(tree, entry, "index.json image")
    plan: _Plan
    if top.media_type in _MANIFEST_TYPES:
        manifest = _read_manifest(tree, top, "manifest")
        plan = _Plan(top=manifest)
        _add_image_manifest(plan, tree, manifest, f"manifest {manifest.digest}")
    elif top.media_type in _INDEX_TYPES:
        plan = _plan_index(tree, top)
    else:
        raise ImageSourceError(
            f"{tree.description}: index.json image has media type {top.media_type!r}, which"
            f" ECR cannot take as an image (supported: {sorted(_MANIFEST_TYPES | _INDEX_TYPES)})"
        )
    return plan


def _plan_index(tree: _Tree, descriptor: _Descriptor) -> _Plan:
    """A multi-platform image: the index, and each image manifest it lists."""
    index = _read_manifest(tree, descriptor, "image index")
    plan = _Plan(top=index)
    document = _json_object(tree, index.text.encode("utf-8"), "image index")
    declared = document.get("mediaType")
    if declared is not None and declared != index.media_type:
        raise ImageSourceError(
            f"{tree.description}: image index says mediaType {declared!r}, its descriptor"
            f" {index.media_type!r}"
        )
    entries = document.get("manifests")
    if document.get("schemaVersion") != 2 or not isinstance(entries, list):
        raise ImageSourceError(f"{tree.description}: image index has no manifests list")
    seen: set[str] = set()
    for number, value in enumerate(entries, start=1):
        child = _descriptor(tree, value, f"image index entry {number}")
        if child.media_type in _INDEX_TYPES:
            raise ImageSourceError(
                f"{tree.description}: image index entry {number} is itself an index"
                f" ({child.digest}); nested indexes are not supported"
            )
        if child.media_type not in _MANIFEST_TYPES:
            raise ImageSourceError(
                f"{tree.description}: image index entry {number} has media type"
                f" {child.media_type!r}, which ECR cannot take as an image"
            )
        if child.digest in seen:
            continue
        seen.add(child.digest)
        what = f"manifest {child.digest} (index entry {number})"
        manifest = _read_manifest(tree, child, what)
        plan.children.append(manifest)
        _add_image_manifest(plan, tree, manifest, what)
    return plan


def _legacy_layer(tree: _Tree, name: str, layer_names: set[str], what: str) -> _Entry:
    """A layer tar of an older docker save; a link is followed only to another layer of it.

    Older ``docker save`` stores a layer that occurs twice once, and links the second
    occurrence to the first with a relative symbolic link.
    """
    entry = tree.entry(name)
    if entry is not None and entry.kind == "symlink" and entry.link is not None:
        target = None
        if not entry.link.startswith("/"):
            target = _member_name(
                posixpath.normpath(posixpath.join(posixpath.dirname(name), entry.link))
            )
        if target is None or target == name or target not in layer_names:
            raise ImageSourceError(
                f"{tree.description}: {what} {name} is a symbolic link to {entry.link!r},"
                " which is not another layer of the image; refusing to follow it"
            )
        return _regular(tree, tree.entry(target), target, what)
    return _regular(tree, entry, name, what)


def _plan_legacy(tree: _Tree, image_ref: str | None) -> _LegacyImage:
    entry = _regular(tree, tree.entry("manifest.json"), "manifest.json", "file")
    document = _json(tree, _read(tree, entry, MAX_MANIFEST_BYTES, "manifest.json"), "manifest.json")
    if (
        not isinstance(document, list)
        or not document
        or not all(isinstance(item, dict) for item in document)
    ):
        raise ImageSourceError(f"{tree.description}: manifest.json is not a list of images")

    def tags_of(item: dict[str, Any]) -> list[str]:
        tags = item.get("RepoTags")
        return [str(tag) for tag in tags] if isinstance(tags, list) else []

    image = _choose_image(document, tags_of, image_ref, f"{tree.description}: manifest.json")
    if image.get("LayerSources"):
        raise ImageSourceError(
            f"{tree.description}: the image has foreign layers (LayerSources), whose blobs a"
            " docker save archive does not hold; ECR stores only layers it is given"
        )
    config_raw, layers_raw = image.get("Config"), image.get("Layers")
    if not isinstance(config_raw, str) or not isinstance(layers_raw, list):
        raise ImageSourceError(f"{tree.description}: manifest.json: an image lacks Config/Layers")
    names: list[str] = []
    for raw in [config_raw, *layers_raw]:
        name = _member_name(raw) if isinstance(raw, str) else None
        if not name:
            raise ImageSourceError(
                f"{tree.description}: manifest.json names {raw!r}, which lies outside the"
                " archive root"
            )
        names.append(name)
    config_entry = _regular(tree, tree.entry(names[0]), names[0], "config")
    config = _read(tree, config_entry, _CONFIG_LIMIT, "config")
    config_document = _json_object(tree, config, f"config {names[0]}")
    _check_blob_size(tree, names[0], len(config), "config")
    layer_names = set(names[1:])
    layers = [
        _legacy_layer(tree, name, layer_names, f"layer {number}")
        for number, name in enumerate(names[1:], start=1)
    ]
    for number, layer in enumerate(layers, start=1):
        _check_blob_size(tree, layer.name, layer.size, f"layer {number}")
    rootfs = config_document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is not None:
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise ImageSourceError(
                f"{tree.description}: the config lists {len(diff_ids or [])} rootfs.diff_ids"
                f" for {len(layers)} layers"
            )
        diff_ids = [str(value) for value in diff_ids]
    return _LegacyImage(tree, config, config_entry, layers, diff_ids)


def _load(source: Path, image_ref: str | None) -> _Plan | _LegacyImage:
    """Open and check a source (blocking file reads: run it in a worker thread)."""
    tree = _open_tree(source)
    has = {name: tree.entry(name) is not None for name in ("oci-layout", "index.json")}
    if all(has.values()):
        return _plan_oci(tree, image_ref)
    if tree.entry("manifest.json") is not None:
        return _plan_legacy(tree, image_ref)
    nested = sorted(
        name
        for name in tree.names()
        if name.count("/") == 1 and name.rsplit("/", 1)[1] in ("index.json", "manifest.json")
    )
    hint = f" (found {nested}: point at that folder, or archive its contents)" if nested else ""
    raise ImageSourceError(
        f"{tree.description}: neither an OCI image layout (oci-layout, index.json) nor a"
        f" docker save archive (manifest.json) at its root{hint}"
    )


async def _hash_entry(entry: _Entry, token: CancellationToken) -> tuple[str, bytes]:
    """sha256 and first bytes of a member, hashed in worker-thread chunks.

    The token is checked between chunks (a chunk takes milliseconds), so a cancel stops it
    soon without leaving a thread behind.
    """
    sha = hashlib.sha256()
    head = bytearray()

    def step(file: BinaryIO, position: int) -> int:
        file.seek(entry.offset + position)
        chunk = file.read(min(_HASH_CHUNK, entry.size - position))
        sha.update(chunk)
        if position == 0:
            head.extend(chunk[:4])
        return len(chunk)

    with entry.path.open("rb") as file:
        position = 0
        while position < entry.size:
            token.throw_if_cancellation_requested()
            count = await anyio.to_thread.run_sync(step, file, position)
            if count == 0:
                raise ImageSourceError(f"{entry.path}: {entry.name} shrank while it was read")
            position += count
    return "sha256:" + sha.hexdigest(), bytes(head)


async def _run_limited(
    items: Iterable[_T], work: Callable[[_T], Awaitable[None]], concurrency: int
) -> None:
    """``work(item)`` for every item, at most ``concurrency`` at once, in order of start.

    The first exception stops the others (they are cancelled and awaited: no task is left)
    and is raised as it is, not in an ExceptionGroup; later ones are added as notes.
    Cancellation from outside propagates.
    """
    limiter = anyio.CapacityLimiter(concurrency)
    failures: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def guarded(item: _T) -> None:
            try:
                async with limiter:
                    if not group.cancel_scope.cancel_called:  # nothing new once one failed
                        await work(item)
            except Exception as exc:  # not BaseException: cancellation propagates
                failures.append(exc)
                group.cancel_scope.cancel()

        for item in items:
            group.start_soon(guarded, item)
    if failures:
        first = failures[0]
        for other in failures[1:]:
            if not isinstance(other, OperationCanceledError):
                first.add_note(f"also failed: {type(other).__name__}: {other}")
        raise first


async def _build_legacy(image: _LegacyImage, token: CancellationToken, concurrency: int) -> _Plan:
    """Hash the layer tars (concurrently) and build the image's Docker v2 schema 2 manifest."""
    tree = image.tree
    hashed: dict[int, tuple[str, bytes]] = {}

    async def hash_one(number: int) -> None:
        hashed[number] = await _hash_entry(image.layers[number], token)

    await _run_limited(range(len(image.layers)), hash_one, concurrency)
    config_digest = "sha256:" + hashlib.sha256(image.config).hexdigest()
    plan_blobs: dict[str, _Blob] = {}
    layers: list[dict[str, Any]] = []
    for number, entry in enumerate(image.layers):
        digest, head = hashed[number]
        compressed = head.startswith(_GZIP_MAGIC)
        if image.diff_ids is not None and not compressed and digest != image.diff_ids[number]:
            raise ImageSourceError(
                f"{tree.description}: layer {number + 1} ({entry.name}) hashes to {digest},"
                f" but the config's rootfs.diff_ids[{number}] is {image.diff_ids[number]}"
            )
        if head == _ZSTD_MAGIC:
            raise ImageSourceError(
                f"{tree.description}: layer {number + 1} ({entry.name}) is zstd-compressed;"
                " a Docker v2 schema 2 manifest cannot describe it"
            )
        media_type = DOCKER_LAYER_GZIP if compressed else DOCKER_LAYER
        layers.append({"mediaType": media_type, "size": entry.size, "digest": digest})
        plan_blobs.setdefault(digest, _Blob(digest, entry.size, media_type, "layer", entry))
    if config_digest in plan_blobs:
        raise ImageSourceError(f"{tree.description}: the config is also one of the layers")
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(image.config), "digest": config_digest},
        "layers": layers,
    }
    text = json.dumps(document, indent=3)
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise ImageSourceError(
            f"{tree.description}: the image's manifest would be over 4 MiB (too many layers)"
        )
    manifest = _Manifest(
        "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest(), DOCKER_MANIFEST, text
    )
    blobs = {
        config_digest: _Blob(
            config_digest, len(image.config), DOCKER_CONFIG, "config", image.config_entry
        )
    }
    blobs.update(plan_blobs)
    return _Plan(top=manifest, blobs=blobs)


# -- pushing -------------------------------------------------------------------------------


class _Push:
    """One push_image call: availability check, uploads, PutImage; progress and counters."""

    def __init__(
        self,
        client: EcrClient,
        uploader: LayerUploader,
        plan: _Plan,
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
        self.max_concurrent_layers = max_concurrent_layers
        self.put_image_retry = put_image_retry
        self.layers_total = sum(1 for blob in plan.blobs.values() if blob.kind == "layer")
        self.missing: list[_Blob] = []
        self.committed: list[str] = []
        self.existed: set[str] = set()
        self.sent: dict[str, int] = {}
        self.total_bytes = 0

    @property
    def layers_done(self) -> int:
        done = self.existed | set(self.committed)
        return sum(1 for digest in done if self.plan.blobs[digest].kind == "layer")

    async def run(self) -> PushImageResult:
        try:
            await self.check_availability()
            await self.upload_missing()
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
        )

    async def check_availability(self) -> None:
        digests = list(self.plan.blobs)
        available: set[str] = set()
        for start in range(0, len(digests), _BATCH_CHECK_LIMIT):
            response = await self.client.batch_check_layer_availability(
                BatchCheckLayerAvailabilityRequest(
                    repository_name=self.uploader.repository_name,
                    layer_digests=tuple(digests[start : start + _BATCH_CHECK_LIMIT]),
                    registry_id=self.uploader.registry_id,
                ),
                self.token,
            )
            available |= response.available_digests()
        self.existed = {digest for digest in digests if digest in available}
        # Largest first: the long uploads start early, small ones fill in around them.
        self.missing = sorted(
            (blob for blob in self.plan.blobs.values() if blob.digest not in available),
            key=lambda blob: (-blob.size, blob.digest),
        )
        self.total_bytes = sum(blob.size for blob in self.missing)

    async def upload_missing(self) -> None:
        await _run_limited(self.missing, self.upload, self.max_concurrent_layers)

    async def report(self, blob: _Blob, event: Literal["started", "progress", "done"]) -> None:
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
                total_bytes_sent=sum(self.sent.values()),
                total_bytes=self.total_bytes,
                layers_done=self.layers_done,
                layers_total=self.layers_total,
            )
        )
        if inspect.isawaitable(outcome):
            await outcome

    async def upload(self, blob: _Blob) -> None:
        self.sent[blob.digest] = 0
        await self.report(blob, "started")

        async def part_done(progress: UploadProgress) -> None:
            self.sent[blob.digest] = progress.bytes_sent
            await self.report(blob, "progress")

        entry = blob.entry
        result = await self.uploader.upload_file(
            entry.path,
            offset=entry.offset,
            length=entry.size,
            expected_digest=blob.digest,
            cancellation_token=self.token,
            on_progress=part_done,
        )
        self.sent[blob.digest] = blob.size
        if result.already_existed:  # another push got there between our check and now
            self.existed.add(blob.digest)
        else:
            self.committed.append(blob.digest)
        await self.report(blob, "done")

    async def put(self, request: PutImageRequest) -> None:
        """PutImage, retrying while ECR does not see the blobs/manifests just pushed."""
        expected = request.image_digest
        attempt = 1
        while True:
            try:
                response = await self.client.put_image(request, self.token)
            except ImageAlreadyExistsError:
                return  # the same manifest with the same tag: already done
            except (LayersNotFoundError, ReferencedImagesNotFoundError) as exc:
                if attempt >= self.put_image_retry.max_attempts:
                    raise
                logger.info("PutImage attempt %d: %s; retrying", attempt, exc.code)
                await self.put_image_retry.sleep(attempt, self.token)
                attempt += 1
                continue
            actual = response.image.image_digest
            if expected is not None and actual is not None and actual != expected:
                raise DigestMismatchError(
                    f"PutImage stored the manifest as {actual}, not its digest {expected}",
                    expected=expected,
                    actual=actual,
                )
            return


def _check_arguments(
    client: object,
    tags: object,
    max_concurrent_layers: object,
    on_progress: object,
    image_ref: object,
) -> tuple[str, ...]:
    if not isinstance(client, EcrClient):
        raise TypeError(
            f"client: must be an ecrstream.EcrClient (got {type(client).__name__});"
            " wrap an aiobotocore client with EcrClient(client)"
        )
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise ValueError(f"tags: must be a sequence of tag strings, not {tags!r}")
    tag_list = list(tags)
    if any(not isinstance(tag, str) for tag in tag_list):
        raise ValueError(f"tags: every tag must be a string (got {tag_list!r})")
    if (
        not isinstance(max_concurrent_layers, int)
        or isinstance(max_concurrent_layers, bool)
        or max_concurrent_layers < 1
    ):
        raise ValueError(
            f"max_concurrent_layers: must be an integer >= 1 (got {max_concurrent_layers!r})"
        )
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress: must be callable or None (got {on_progress!r})")
    if image_ref is not None and not isinstance(image_ref, str):
        raise ValueError(f"image_ref: must be a string or None (got {image_ref!r})")
    return tuple(dict.fromkeys(tag_list))


def _put_requests(
    plan: _Plan, repository_name: str, registry_id: str | None, tags: tuple[str, ...]
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
) -> PushImageResult:
    """Push an OCI image layout (folder or tar) or a ``docker save`` archive into ECR.

    Uploads the blobs the repository lacks (at most ``max_concurrent_layers`` at once), then
    puts the manifest once per tag (once untagged with no tags); a multi-platform image's
    manifests by digest first, then its index with the tags. ``image_ref`` picks one image of
    a source holding several (an index.json ``org.opencontainers.image.ref.name`` or
    ``io.containerd.image.name``, or a manifest.json ``RepoTags`` entry). ``on_progress``
    (plain or async) gets a ``PushProgress`` per blob started, part sent and blob done; an
    exception it raises stops the push. ``put_image_retry`` bounds the retries of PutImage on
    LayersNotFound/ReferencedImagesNotFound (``DEFAULT_PUT_IMAGE_RETRY``: 6 attempts).

    Raises:
        ValueError/TypeError: bad arguments, before anything is read or sent.
        ImageSourceError: the source is malformed, unsafe, or holds what ECR cannot take;
            before any request.
        DigestMismatchError: a blob's bytes do not hash to its digest (that blob is not
            completed; the push stops).
        PushCanceledError: the token stopped the push (``committed_digests``).
        EcrServiceError/EcrConnectionError: what made a request give up.
    """
    tag_tuple = _check_arguments(client, tags, max_concurrent_layers, on_progress, image_ref)
    repository_name = validate_repository_name(repository_name)
    registry_id = validate_registry_id(registry_id)
    uploader = LayerUploader(client, repository_name, registry_id=registry_id, part_size=part_size)
    try:
        source_path = Path(source)
    except TypeError:
        raise ValueError(f"source: must be a path (got {source!r})") from None
    if cancellation_token.is_cancellation_requested:
        raise PushCanceledError(cancellation_token=cancellation_token)
    loaded = await anyio.to_thread.run_sync(_load, source_path, image_ref)
    if isinstance(loaded, _LegacyImage):
        try:
            plan = await _build_legacy(loaded, cancellation_token, max_concurrent_layers)
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
    return await push.run()
