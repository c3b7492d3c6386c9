"""ecrstream: stream container image layers into Amazon ECR from asyncio applications.

The public API (see README.md): cancellation tokens ported from .NET, a typed cancellable
ECR client, the streaming LayerUploader, and push_image for whole images. The low-level
pieces (part bodies, the bandwidth limiter, sources, the retry loop) are in
``ecrstream.lowlevel``.

``import ecrstream`` does not import aiobotocore, botocore or aiohttp: the names that need
them (``EcrClient``, ``LayerUploader``, ``push_image`` and the push's types) are loaded on
first use.
"""

from __future__ import annotations

import gc
import importlib
from typing import TYPE_CHECKING, Any

from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenRegistration,
    CancellationTokenSource,
    OperationCanceledError,
    cancellation_scope,
    run_cancellable,
    wait_async,
)
from ecrstream.errors import (
    AuthenticationError,
    CertificateVerificationError,
    CopyCanceledError,
    CredentialsError,
    DigestMismatchError,
    EcrConnectionError,
    EcrServiceError,
    EcrStreamError,
    EmptyUploadError,
    ImageAlreadyExistsError,
    ImageDigestDoesNotMatchError,
    ImageSourceError,
    ImageTagAlreadyExistsError,
    InvalidArgumentError,
    InvalidLayerError,
    InvalidLayerPartError,
    InvalidParameterError,
    KmsError,
    LayerAlreadyExistsError,
    LayerPartTooSmallError,
    LayersNotFoundError,
    LimitExceededError,
    ProtocolViolationError,
    ReferencedImagesNotFoundError,
    RepositoryNotFoundError,
    ServerError,
    SourceChangedError,
    ThrottlingError,
    UploadNotFoundError,
)
from ecrstream.models import (
    BatchCheckLayerAvailabilityRequest,
    BatchCheckLayerAvailabilityResponse,
    BatchGetImageRequest,
    BatchGetImageResponse,
    CompleteLayerUploadRequest,
    CompleteLayerUploadResponse,
    Image,
    InitiateLayerUploadRequest,
    InitiateLayerUploadResponse,
    Layer,
    LayerFailure,
    LayerUploadResult,
    PutImageRequest,
    PutImageResponse,
    UploadCheckpoint,
    UploadLayerPartRequest,
    UploadLayerPartResponse,
    UploadProgress,
)
from ecrstream.retry import RetryPolicy

if TYPE_CHECKING:
    from ecrstream.client import EcrClient
    from ecrstream.copy import CopyImageResult, copy_image
    from ecrstream.image import PushCanceledError, PushImageResult, PushProgress, push_image
    from ecrstream.uploader import LayerUploader

# Loaded on first use (module __getattr__): each of these imports aiobotocore.
_LAZY = {
    "CopyImageResult": "ecrstream.copy",
    "EcrClient": "ecrstream.client",
    "LayerUploader": "ecrstream.uploader",
    "PushCanceledError": "ecrstream.image",
    "PushImageResult": "ecrstream.image",
    "PushProgress": "ecrstream.image",
    "copy_image": "ecrstream.copy",
    "push_image": "ecrstream.image",
}

__all__ = [
    "AuthenticationError",
    "BatchCheckLayerAvailabilityRequest",
    "BatchCheckLayerAvailabilityResponse",
    "BatchGetImageRequest",
    "BatchGetImageResponse",
    "CancellationToken",
    "CancellationTokenRegistration",
    "CancellationTokenSource",
    "CertificateVerificationError",
    "CompleteLayerUploadRequest",
    "CompleteLayerUploadResponse",
    "CopyCanceledError",
    "CopyImageResult",
    "CredentialsError",
    "DigestMismatchError",
    "EcrClient",
    "EcrConnectionError",
    "EcrServiceError",
    "EcrStreamError",
    "EmptyUploadError",
    "Image",
    "ImageAlreadyExistsError",
    "ImageDigestDoesNotMatchError",
    "ImageSourceError",
    "ImageTagAlreadyExistsError",
    "InitiateLayerUploadRequest",
    "InitiateLayerUploadResponse",
    "InvalidArgumentError",
    "InvalidLayerError",
    "InvalidLayerPartError",
    "InvalidParameterError",
    "KmsError",
    "Layer",
    "LayerAlreadyExistsError",
    "LayerFailure",
    "LayerPartTooSmallError",
    "LayerUploadResult",
    "LayerUploader",
    "LayersNotFoundError",
    "LimitExceededError",
    "OperationCanceledError",
    "ProtocolViolationError",
    "PushCanceledError",
    "PushImageResult",
    "PushProgress",
    "PutImageRequest",
    "PutImageResponse",
    "ReferencedImagesNotFoundError",
    "RepositoryNotFoundError",
    "RetryPolicy",
    "ServerError",
    "SourceChangedError",
    "ThrottlingError",
    "UploadCheckpoint",
    "UploadLayerPartRequest",
    "UploadLayerPartResponse",
    "UploadNotFoundError",
    "UploadProgress",
    "cancellation_scope",
    "copy_image",
    "push_image",
    "run_cancellable",
    "wait_async",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ecrstream' has no attribute {name!r}")
    # The first lazy name imports aiobotocore, botocore and aiohttp: some 100,000 objects
    # that live as long as the process. The collector would walk them again and again while
    # they are made (about 0.1 CPU-s of the import) and free none: it waits until they exist.
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = getattr(importlib.import_module(module), name)
    finally:
        if collecting:
            gc.enable()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
