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
do not hash to its digest) raise ``ImageSourceError``; bad arguments raise
``InvalidArgumentError`` (a ``ValueError``).

Then: one BatchCheckLayerAvailability (per 100 blobs) for every blob, uploads of the missing
ones (config blobs included), at most ``max_concurrent_layers`` at once, largest first, each
through ``LayerUploader`` (parts strictly sequential, its digest checked while it streams: a
blob that does not hash to its digest raises ``CorruptBlobError`` before
CompleteLayerUpload); then PutImage. The first failure of an upload stops the others and is
raised.

Cancellation: one token stops the whole push. Every upload in flight stops, no task is left
behind, and ``PushCanceledError`` (an ``OperationCanceledError``) lists in
``committed_digests`` the blobs this push committed; a second push skips them.

The modules: ``archive`` reads a folder or tar safely; ``plan`` holds what a push sends and
the checks the planners share; ``oci`` and ``docker`` plan the two source kinds; ``push``
sends a plan; ``tasks`` runs uploads a few at a time; ``mediatypes`` names the media types.
"""

from __future__ import annotations

from ecrstream.errors import CorruptBlobError, ImageSelectionError, PushCanceledError
from ecrstream.image.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
)
from ecrstream.image.push import (
    DEFAULT_PUT_IMAGE_RETRY,
    PushImageResult,
    PushProgress,
    PushProgressCallback,
    push_image,
)

__all__ = [
    "DEFAULT_PUT_IMAGE_RETRY",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "CorruptBlobError",
    "ImageSelectionError",
    "PushCanceledError",
    "PushImageResult",
    "PushProgress",
    "PushProgressCallback",
    "push_image",
]
