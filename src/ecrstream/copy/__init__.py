"""copy_image: an image from another registry (or from ECR) into ECR, streaming, resumable.

The source is read by reference: any OCI distribution registry (``registry.RegistryClient``:
anonymous, Basic or token auth, docker's credentials), or ECR through its API. The reference
is pinned to a digest first; an index is copied byte for byte (or only chosen platforms).
Every blob ECR lacks streams from the source's HTTP response into the layer upload
(``source.RemoteBlobSource`` behind ``LayerUploader.upload_source``): no temporary file, its
digest and size checked as it streams. A stop raises ``CopyCanceledError`` with the blobs
committed and the in-flight uploads' checkpoints; ``resume=`` it to go on.
"""

from __future__ import annotations

from ecrstream.copy.copy import CopyImageResult, copy_image
from ecrstream.copy.source import EcrSource, ImageSource, RegistrySource, RemoteBlobSource
from ecrstream.errors import CopyCanceledError

__all__ = [
    "CopyCanceledError",
    "CopyImageResult",
    "EcrSource",
    "ImageSource",
    "RegistrySource",
    "RemoteBlobSource",
    "copy_image",
]
