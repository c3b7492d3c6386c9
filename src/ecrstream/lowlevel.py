"""The second public tier: the pieces LayerUploader is built from, for those who build their own.

Most code needs only ``ecrstream``. These are stable, documented and tested, but closer to
the wire: an UploadLayerPart body built once (``prepare_part`` -> ``PreparedPart``, sent with
``EcrClient.upload_prepared_part``), the token bucket behind ``max_bandwidth``, the source
interface and its file and stream kinds, the layer's incremental sha256, the part buffers
uploads share (``PartBufferPool``), the one retry loop, and the boundary that maps botocore
errors into ecrstream's tree. Importing this module imports neither aiobotocore nor botocore.
"""

from __future__ import annotations

from ecrstream.bandwidth import BandwidthLimiter
from ecrstream.body import PreparedPart, prepare_part
from ecrstream.buffers import PartBufferPool
from ecrstream.errors import is_transient, map_botocore_errors
from ecrstream.retry import call_with_retries
from ecrstream.source import (
    CheckpointFields,
    FileSource,
    LayerHasher,
    LayerSource,
    StreamSource,
)

__all__ = [
    "BandwidthLimiter",
    "CheckpointFields",
    "FileSource",
    "LayerHasher",
    "LayerSource",
    "PartBufferPool",
    "PreparedPart",
    "StreamSource",
    "call_with_retries",
    "is_transient",
    "map_botocore_errors",
    "prepare_part",
]
