"""ecrstream: stream container image layers into Amazon ECR from asyncio applications.

The public API (see README.md): cancellation tokens ported from .NET, a typed cancellable
ECR client, the streaming LayerUploader, and push_image for whole images. The low-level
pieces (part bodies, the bandwidth limiter, sources, the retry loop) are in
``ecrstream.lowlevel``.

``import ecrstream`` imports nothing of its own (about 20 ms, interpreter excluded): every
public name is loaded on first use, and only the names that talk to ECR (``EcrClient``,
``LayerUploader``, ``push_image``, ``copy_image`` and their types) import aiobotocore,
botocore and aiohttp.
"""

from __future__ import annotations

import gc
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecrstream.cancellation import (
        CancellationToken,
        CancellationTokenRegistration,
        CancellationTokenSource,
        OperationCanceledError,
        cancellation_scope,
        run_cancellable,
        wait_async,
    )
    from ecrstream.client import (
        EcrClient,
    )
    from ecrstream.copy import (
        CopyImageResult,
        copy_image,
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
    from ecrstream.image import (
        PushCanceledError,
        PushImageResult,
        PushProgress,
        push_image,
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
    from ecrstream.retry import (
        RetryPolicy,
    )
    from ecrstream.uploader import (
        LayerUploader,
    )

# Every public name is loaded on first use (module __getattr__), so `import ecrstream` costs
# next to nothing; EcrClient, LayerUploader, push_image and copy_image import aiobotocore.
_LAZY = {
    "AuthenticationError": "ecrstream.errors",
    "BatchCheckLayerAvailabilityRequest": "ecrstream.models",
    "BatchCheckLayerAvailabilityResponse": "ecrstream.models",
    "BatchGetImageRequest": "ecrstream.models",
    "BatchGetImageResponse": "ecrstream.models",
    "CancellationToken": "ecrstream.cancellation",
    "CancellationTokenRegistration": "ecrstream.cancellation",
    "CancellationTokenSource": "ecrstream.cancellation",
    "CertificateVerificationError": "ecrstream.errors",
    "CompleteLayerUploadRequest": "ecrstream.models",
    "CompleteLayerUploadResponse": "ecrstream.models",
    "CopyCanceledError": "ecrstream.errors",
    "CopyImageResult": "ecrstream.copy",
    "CredentialsError": "ecrstream.errors",
    "DigestMismatchError": "ecrstream.errors",
    "EcrClient": "ecrstream.client",
    "EcrConnectionError": "ecrstream.errors",
    "EcrServiceError": "ecrstream.errors",
    "EcrStreamError": "ecrstream.errors",
    "EmptyUploadError": "ecrstream.errors",
    "Image": "ecrstream.models",
    "ImageAlreadyExistsError": "ecrstream.errors",
    "ImageDigestDoesNotMatchError": "ecrstream.errors",
    "ImageSourceError": "ecrstream.errors",
    "ImageTagAlreadyExistsError": "ecrstream.errors",
    "InitiateLayerUploadRequest": "ecrstream.models",
    "InitiateLayerUploadResponse": "ecrstream.models",
    "InvalidArgumentError": "ecrstream.errors",
    "InvalidLayerError": "ecrstream.errors",
    "InvalidLayerPartError": "ecrstream.errors",
    "InvalidParameterError": "ecrstream.errors",
    "KmsError": "ecrstream.errors",
    "Layer": "ecrstream.models",
    "LayerAlreadyExistsError": "ecrstream.errors",
    "LayerFailure": "ecrstream.models",
    "LayerPartTooSmallError": "ecrstream.errors",
    "LayerUploadResult": "ecrstream.models",
    "LayerUploader": "ecrstream.uploader",
    "LayersNotFoundError": "ecrstream.errors",
    "LimitExceededError": "ecrstream.errors",
    "OperationCanceledError": "ecrstream.cancellation",
    "ProtocolViolationError": "ecrstream.errors",
    "PushCanceledError": "ecrstream.image",
    "PushImageResult": "ecrstream.image",
    "PushProgress": "ecrstream.image",
    "PutImageRequest": "ecrstream.models",
    "PutImageResponse": "ecrstream.models",
    "ReferencedImagesNotFoundError": "ecrstream.errors",
    "RepositoryNotFoundError": "ecrstream.errors",
    "RetryPolicy": "ecrstream.retry",
    "ServerError": "ecrstream.errors",
    "SourceChangedError": "ecrstream.errors",
    "ThrottlingError": "ecrstream.errors",
    "UploadCheckpoint": "ecrstream.models",
    "UploadLayerPartRequest": "ecrstream.models",
    "UploadLayerPartResponse": "ecrstream.models",
    "UploadNotFoundError": "ecrstream.errors",
    "UploadProgress": "ecrstream.models",
    "cancellation_scope": "ecrstream.cancellation",
    "copy_image": "ecrstream.copy",
    "push_image": "ecrstream.image",
    "run_cancellable": "ecrstream.cancellation",
    "wait_async": "ecrstream.cancellation",
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
    # The names that talk to ECR import aiobotocore, botocore and aiohttp: some 100,000 objects
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
