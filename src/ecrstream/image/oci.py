"""Planning an OCI image layout (folder or tar; also what ``docker save`` writes from 25 on).

``oci-layout`` and ``index.json`` at the root; manifests, configs and layers under
``blobs/sha256/``. Manifests are read, checked against their descriptors (size, digest,
UTF-8, what ECR takes) and pushed with their bytes exactly as they are; blobs are checked by
size here and by digest as they stream.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from ecrstream.image.archive import (
    Tree,
    json_object,
    read_member,
    regular,
    source_error,
)
from ecrstream.image.mediatypes import (
    DOCKER_MANIFEST,
    FOREIGN_LAYER_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    SCHEMA2_CONFIG_TYPES,
    SCHEMA2_LAYER_TYPES,
)
from ecrstream.image.plan import (
    Blob,
    BlobKind,
    Descriptor,
    Manifest,
    Plan,
    blob_name,
    check_blob_size,
    choose_image,
    parse_descriptor,
)
from ecrstream.models import MAX_MANIFEST_BYTES

__all__ = ["plan_oci"]

_SMALL_FILE_LIMIT: Final = 64 * 1024  # oci-layout
_REF_ANNOTATIONS: Final = ("org.opencontainers.image.ref.name", "io.containerd.image.name")


def plan_oci(tree: Tree, image_ref: str | None) -> Plan:
    """The plan of the image in an OCI layout (``image_ref`` picks one of several)."""
    layout_entry = regular(tree, tree.entry("oci-layout"), "oci-layout", "file")
    layout = json_object(
        tree, read_member(tree, layout_entry, _SMALL_FILE_LIMIT, "oci-layout"), "oci-layout"
    )
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise source_error(tree, f"oci-layout has imageLayoutVersion {version!r}; 1.x is supported")
    index_entry = regular(tree, tree.entry("index.json"), "index.json", "file")
    index = json_object(
        tree, read_member(tree, index_entry, MAX_MANIFEST_BYTES, "index.json"), "index.json"
    )
    entries = index.get("manifests")
    if index.get("schemaVersion") != 2 or not isinstance(entries, list) or not entries:
        raise source_error(tree, "index.json is not a schemaVersion 2 index with manifests")
    if any(not isinstance(item, dict) for item in entries):
        raise source_error(tree, "index.json: a descriptor is not an object")
    entry = choose_image(tree, entries, _refs_of, image_ref, "index.json")
    top = parse_descriptor(tree, entry, "index.json image")
    if top.media_type in MANIFEST_TYPES:
        manifest = _read_manifest(tree, top, "manifest")
        plan = Plan(tree, top=manifest)
        _add_image_manifest(plan, manifest, f"manifest {manifest.digest}")
        return plan
    if top.media_type in INDEX_TYPES:
        return _plan_index(tree, top)
    raise source_error(
        tree,
        f"index.json image has media type {top.media_type!r}, which ECR cannot take as an"
        f" image (supported: {sorted(MANIFEST_TYPES | INDEX_TYPES)})",
    )


def _refs_of(entry: dict[str, Any]) -> list[str]:
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return []
    return [str(annotations[key]) for key in _REF_ANNOTATIONS if key in annotations]


def _read_manifest(tree: Tree, descriptor: Descriptor, what: str) -> Manifest:
    """A manifest or index blob, checked against its descriptor (size, limit, digest, UTF-8)."""
    if descriptor.size > MAX_MANIFEST_BYTES:
        raise source_error(
            tree,
            f"{what} {descriptor.digest} is {descriptor.size} bytes; ECR takes manifests up to"
            f" {MAX_MANIFEST_BYTES} bytes (4 MiB)",
        )
    name = blob_name(descriptor.digest)
    entry = regular(tree, tree.entry(name), name, what)
    if entry.size != descriptor.size:
        raise source_error(
            tree, f"{what} {name} is {entry.size} bytes, its descriptor says {descriptor.size}"
        )
    data = read_member(tree, entry, MAX_MANIFEST_BYTES, what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor.digest:
        raise source_error(
            tree,
            f"{what} {name} hashes to {actual}, not its digest {descriptor.digest}"
            " (corrupt source)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise source_error(tree, f"{what} {name} is not UTF-8 text") from None
    return Manifest(descriptor.digest, descriptor.media_type, text)


def _plan_index(tree: Tree, descriptor: Descriptor) -> Plan:
    """A multi-platform image: the index, and each image manifest it lists."""
    index = _read_manifest(tree, descriptor, "image index")
    plan = Plan(tree, top=index)
    document = json_object(tree, index.text.encode("utf-8"), "image index")
    declared = document.get("mediaType")
    if declared is not None and declared != index.media_type:
        raise source_error(
            tree,
            f"image index says mediaType {declared!r}, its descriptor {index.media_type!r}",
        )
    entries = document.get("manifests")
    if document.get("schemaVersion") != 2 or not isinstance(entries, list):
        raise source_error(tree, "image index has no manifests list")
    seen: set[str] = set()
    for number, value in enumerate(entries, start=1):
        child = parse_descriptor(tree, value, f"image index entry {number}")
        if child.media_type in INDEX_TYPES:
            raise source_error(
                tree,
                f"image index entry {number} is itself an index ({child.digest}); nested"
                " indexes are not supported",
            )
        if child.media_type not in MANIFEST_TYPES:
            raise source_error(
                tree,
                f"image index entry {number} has media type {child.media_type!r}, which ECR"
                " cannot take as an image",
            )
        if child.digest in seen:
            continue
        seen.add(child.digest)
        what = f"manifest {child.digest} (index entry {number})"
        manifest = _read_manifest(tree, child, what)
        plan.children.append(manifest)
        _add_image_manifest(plan, manifest, what)
    return plan


def _add_image_manifest(plan: Plan, manifest: Manifest, what: str) -> None:
    """Check one image manifest and add its config and layer blobs to the plan."""
    tree = plan.tree
    document = json_object(tree, manifest.text.encode("utf-8"), what)
    if document.get("schemaVersion") != 2:
        raise source_error(tree, f"{what} is not schemaVersion 2")
    declared = document.get("mediaType")
    if declared is not None and declared != manifest.media_type:
        raise source_error(
            tree,
            f"{what} says mediaType {declared!r}, its descriptor {manifest.media_type!r}",
        )
    if "manifests" in document:
        raise source_error(tree, f"{what} is an index, described as a manifest")
    config = parse_descriptor(tree, document.get("config"), f"{what} config")
    layers_value = document.get("layers")
    if not isinstance(layers_value, list):
        raise source_error(tree, f"{what} has no layers list")
    layers = [
        parse_descriptor(tree, value, f"{what} layer {number}")
        for number, value in enumerate(layers_value, start=1)
    ]
    if manifest.media_type == DOCKER_MANIFEST:
        if config.media_type not in SCHEMA2_CONFIG_TYPES:
            raise source_error(tree, f"{what} config has unknown media type {config.media_type!r}")
        for number, layer in enumerate(layers, start=1):
            if layer.media_type not in SCHEMA2_LAYER_TYPES:
                raise source_error(
                    tree,
                    f"{what} layer {number} has unknown media type {layer.media_type!r}",
                )
    _add_blob(plan, config, "config", f"{what} config")
    for number, layer in enumerate(layers, start=1):
        _add_blob(plan, layer, "layer", f"{what} layer {number}")


def _add_blob(plan: Plan, descriptor: Descriptor, kind: BlobKind, what: str) -> None:
    tree = plan.tree
    known = plan.blobs.get(descriptor.digest)
    if known is not None:
        if known.size != descriptor.size:
            raise source_error(
                tree,
                f"blob {descriptor.digest} is described with sizes {known.size} and"
                f" {descriptor.size}",
            )
        return
    name = blob_name(descriptor.digest)
    entry = tree.entry(name)
    if entry is None and (descriptor.media_type in FOREIGN_LAYER_TYPES or descriptor.has_urls):
        raise source_error(
            tree,
            f"{what} {descriptor.digest} is a foreign/non-distributable layer"
            f" ({descriptor.media_type}) whose blob is not in the source; ECR stores only"
            " layers it is given (re-export the image with its foreign layers included)",
        )
    entry = regular(tree, entry, name, what)
    if entry.size != descriptor.size:
        raise source_error(
            tree, f"{what} {name} is {entry.size} bytes, its descriptor says {descriptor.size}"
        )
    check_blob_size(tree, descriptor.digest, descriptor.size, what)
    plan.blobs[descriptor.digest] = Blob(
        descriptor.digest, descriptor.size, descriptor.media_type, kind, entry
    )
