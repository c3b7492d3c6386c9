"""The media types push_image knows: manifests, indexes, configs and layers."""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "FOREIGN_LAYER_TYPES",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MEDIA_TYPE_RE",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "SCHEMA2_CONFIG_TYPES",
    "SCHEMA2_LAYER_TYPES",
]

DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: What ECR takes as an image manifest, and as an image index.
MANIFEST_TYPES: Final = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES: Final = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
#: Layers whose blob may live elsewhere (a registry URL): ECR stores them only if given.
FOREIGN_LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
#: What a Docker v2 schema 2 manifest may hold (OCI manifests may carry any artifact type).
SCHEMA2_CONFIG_TYPES: Final = frozenset({DOCKER_CONFIG, OCI_CONFIG})
SCHEMA2_LAYER_TYPES: Final = frozenset(
    {
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        *FOREIGN_LAYER_TYPES,
    }
)
#: RFC 6838's type/subtype form, as the OCI descriptor spec asks.
MEDIA_TYPE_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
