"""Read images from any OCI distribution registry: references, auth, manifests, blobs.

The low-level tier under ``copy_image``: :func:`parse_reference` turns ``docker pull`` text
into an :class:`ImageReference`; :class:`RegistryClient` fetches pinned manifests and streams
blobs (ranged, resumed after faults) with anonymous, Basic or token auth and docker's
credentials. Nothing here imports aiohttp until a client is built.
"""

from __future__ import annotations

from ecrstream.registry.blob import BlobReader
from ecrstream.registry.client import DEFAULT_REGISTRY_RETRY, MAX_MANIFEST_SIZE, RegistryClient
from ecrstream.registry.credentials import (
    CredentialProvider,
    CredentialsArgument,
    DockerConfigCredentials,
    RegistryCredentials,
    docker_config_key,
)
from ecrstream.registry.manifest import (
    ACCEPTED_MEDIA_TYPES,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    IndexChild,
    Manifest,
    Platform,
    index_children,
    manifest_blobs,
)
from ecrstream.registry.reference import DOCKER_HUB_REGISTRY, ImageReference, parse_reference

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "DEFAULT_REGISTRY_RETRY",
    "DOCKER_HUB_REGISTRY",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MAX_MANIFEST_SIZE",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BlobReader",
    "CredentialProvider",
    "CredentialsArgument",
    "Descriptor",
    "DockerConfigCredentials",
    "ImageReference",
    "IndexChild",
    "Manifest",
    "Platform",
    "RegistryClient",
    "RegistryCredentials",
    "docker_config_key",
    "index_children",
    "manifest_blobs",
    "parse_reference",
]
