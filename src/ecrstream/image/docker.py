"""Planning an older ``docker save`` archive (or its extracted folder).

``manifest.json`` names a config file and layer tars. Their Docker v2 schema 2 manifest is
built here, with layer digests and sizes computed by hashing the layer tars (streaming, in
worker threads; nothing is extracted).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any, Final

from ecrstream.cancellation import CancellationToken
from ecrstream.image.archive import (
    GZIP_MAGIC,
    ZSTD_MAGIC,
    Entry,
    Tree,
    hash_member,
    json_object,
    member_name,
    parse_json,
    read_member,
    regular,
    source_error,
)
from ecrstream.image.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
)
from ecrstream.image.plan import Blob, LegacyImage, Manifest, Plan, check_blob_size, choose_image
from ecrstream.image.tasks import run_limited
from ecrstream.models import MAX_MANIFEST_BYTES

__all__ = ["build_legacy", "plan_legacy"]

_CONFIG_LIMIT: Final = 32 * 1024 * 1024  # a legacy archive's config, read to hash and check it


def plan_legacy(tree: Tree, image_ref: str | None) -> LegacyImage:
    """The image of an older docker save archive, checked; its layers are not hashed yet."""
    entry = regular(tree, tree.entry("manifest.json"), "manifest.json", "file")
    document = parse_json(
        tree, read_member(tree, entry, MAX_MANIFEST_BYTES, "manifest.json"), "manifest.json"
    )
    if (
        not isinstance(document, list)
        or not document
        or not all(isinstance(item, dict) for item in document)
    ):
        raise source_error(tree, "manifest.json is not a list of images")

    def tags_of(item: dict[str, Any]) -> list[str]:
        tags = item.get("RepoTags")
        return [str(tag) for tag in tags] if isinstance(tags, list) else []

    image = choose_image(tree, document, tags_of, image_ref, "manifest.json")
    if image.get("LayerSources"):
        raise source_error(
            tree,
            "the image has foreign layers (LayerSources), whose blobs a docker save archive"
            " does not hold; ECR stores only layers it is given",
        )
    config_raw, layers_raw = image.get("Config"), image.get("Layers")
    if not isinstance(config_raw, str) or not isinstance(layers_raw, list):
        raise source_error(tree, "manifest.json: an image lacks Config/Layers")
    names: list[str] = []
    for raw in [config_raw, *layers_raw]:
        name = member_name(raw) if isinstance(raw, str) else None
        if not name:
            raise source_error(
                tree, f"manifest.json names {raw!r}, which lies outside the archive root"
            )
        names.append(name)
    config_entry = regular(tree, tree.entry(names[0]), names[0], "config")
    config = read_member(tree, config_entry, _CONFIG_LIMIT, "config")
    config_document = json_object(tree, config, f"config {names[0]}")
    check_blob_size(tree, names[0], len(config), "config")
    layer_names = set(names[1:])
    layers = [
        _legacy_layer(tree, name, layer_names, f"layer {number}")
        for number, name in enumerate(names[1:], start=1)
    ]
    for number, layer in enumerate(layers, start=1):
        check_blob_size(tree, layer.name, layer.size, f"layer {number}")
    rootfs = config_document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is not None:
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise source_error(
                tree,
                f"the config lists {len(diff_ids or [])} rootfs.diff_ids for {len(layers)} layers",
            )
        diff_ids = [str(value) for value in diff_ids]
    return LegacyImage(tree, config, config_entry, layers, diff_ids)


def _legacy_layer(tree: Tree, name: str, layer_names: set[str], what: str) -> Entry:
    """A layer tar of an older docker save; a link is followed only to another layer of it.

    Older ``docker save`` stores a layer that occurs twice once, and links the second
    occurrence to the first with a relative symbolic link.
    """
    entry = tree.entry(name)
    if entry is not None and entry.kind == "symlink" and entry.link is not None:
        target = None
        if not entry.link.startswith("/"):
            target = member_name(
                posixpath.normpath(posixpath.join(posixpath.dirname(name), entry.link))
            )
        if target is None or target == name or target not in layer_names:
            raise source_error(
                tree,
                f"{what} {name} is a symbolic link to {entry.link!r}, which is not another"
                " layer of the image; refusing to follow it",
            )
        return regular(tree, tree.entry(target), target, what)
    return regular(tree, entry, name, what)


async def build_legacy(image: LegacyImage, token: CancellationToken, concurrency: int) -> Plan:
    """Hash the layer tars (concurrently) and build the image's Docker v2 schema 2 manifest."""
    tree = image.tree
    hashed: dict[int, tuple[str, bytes]] = {}

    async def hash_one(number: int) -> None:
        hashed[number] = await hash_member(tree, image.layers[number], token)

    # Largest first, as the uploads go: the longest hash starts at once.
    order = sorted(range(len(image.layers)), key=lambda n: -image.layers[n].size)
    await run_limited(order, hash_one, concurrency)
    config_digest = "sha256:" + hashlib.sha256(image.config).hexdigest()
    plan_blobs: dict[str, Blob] = {}
    layers: list[dict[str, Any]] = []
    for number, entry in enumerate(image.layers):
        digest, head = hashed[number]
        compressed = head.startswith(GZIP_MAGIC)
        if image.diff_ids is not None and not compressed and digest != image.diff_ids[number]:
            raise source_error(
                tree,
                f"layer {number + 1} ({entry.name}) hashes to {digest}, but the config's"
                f" rootfs.diff_ids[{number}] is {image.diff_ids[number]}",
            )
        if head == ZSTD_MAGIC:
            raise source_error(
                tree,
                f"layer {number + 1} ({entry.name}) is zstd-compressed; a Docker v2 schema 2"
                " manifest cannot describe it",
            )
        media_type = DOCKER_LAYER_GZIP if compressed else DOCKER_LAYER
        layers.append({"mediaType": media_type, "size": entry.size, "digest": digest})
        plan_blobs.setdefault(digest, Blob(digest, entry.size, media_type, "layer", entry))
    if config_digest in plan_blobs:
        raise source_error(tree, "the config is also one of the layers")
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(image.config), "digest": config_digest},
        "layers": layers,
    }
    text = json.dumps(document, indent=3)
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise source_error(tree, "the image's manifest would be over 4 MiB (too many layers)")
    manifest = Manifest(
        "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest(), DOCKER_MANIFEST, text
    )
    blobs = {
        config_digest: Blob(
            config_digest, len(image.config), DOCKER_CONFIG, "config", image.config_entry
        )
    }
    blobs.update(plan_blobs)
    return Plan(tree, top=manifest, blobs=blobs)
