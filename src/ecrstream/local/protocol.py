"""ECR's wire format as the proxy speaks it: limits, parsed requests and replies.

ECR's API is awsJson1_1: a POST to ``/`` naming the operation in ``X-Amz-Target:
AmazonEC2ContainerRegistry_V20150921.<Op>``; errors are ``{"__type": ..., "message": ...}``
with an ``x-amzn-RequestId`` header.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import pybase64
from aiohttp import web

__all__ = ["DEFAULT_MIN_PART_SIZE", "MAX_PART_SIZE"]

MAX_PART_SIZE: Final = 20_971_520
"""The largest layerPartBlob ECR accepts (its API model's limit), in bytes."""

DEFAULT_MIN_PART_SIZE: Final = 5 * 1024 * 1024
"""ECR's minimum size of every part but the last, in bytes."""

TARGET_PREFIX: Final = "AmazonEC2ContainerRegistry_V20150921."
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.1"
# A 20 MiB part is ~28 MB of base64 in JSON; leave room for parts the proxy must reject.
MAX_BODY: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to send: its status, body and headers, and whether the request was applied."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    applied: bool

    @property
    def error_code(self) -> str | None:
        if self.status < 400:
            return None
        for name, value in self.headers:
            if name.lower() == "x-amzn-errortype":
                return value.split(":", 1)[0]
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        code = payload.get("__type") if isinstance(payload, dict) else None
        return code.rsplit("#", 1)[-1] if isinstance(code, str) else None

    def to_response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=dict(self.headers))


def _request_id() -> tuple[str, str]:
    return ("x-amzn-RequestId", str(uuid.uuid4()))


def success(payload: Mapping[str, Any]) -> Reply:
    """A 200 answer the proxy applied itself, in ECR's JSON shape."""
    headers = (("Content-Type", JSON_CONTENT_TYPE), _request_id())
    return Reply(200, json.dumps(payload).encode(), headers, applied=True)


def error(code: str, message: str, *, status: int = 400, **fields: str | int) -> Reply:
    """An ECR error answer (nothing applied)."""
    body = json.dumps({"__type": code, "message": message, **fields}).encode()
    headers = (("Content-Type", JSON_CONTENT_TYPE), _request_id(), ("x-amzn-ErrorType", code))
    return Reply(status, body, headers, applied=False)


def bare_500() -> Reply:
    body = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    return Reply(500, body, (("Content-Type", "text/html"),), applied=False)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request body parsed once: its fields, and for a part the decoded blob."""

    fields: dict[str, Any]
    blob: bytes | None = None
    blob_sha256: str | None = None

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if isinstance(value, str) else None

    def integer(self, name: str) -> int | None:
        value = self.fields.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.fields.get(name)
        if not isinstance(value, list):
            return ()
        return tuple(item for item in value if isinstance(item, str))


def parse_fields(body: bytes) -> Parsed | None:
    """The JSON object of a request body, or None if it is not one."""
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    return Parsed(fields) if isinstance(fields, dict) else None


def parse_part(body: bytes) -> Parsed | None:
    """Parse an UploadLayerPart body, decode and hash its blob (CPU-heavy: run off the loop)."""
    parsed = parse_fields(body)
    if parsed is None:
        return None
    encoded = parsed.fields.pop("layerPartBlob", None)
    if not isinstance(encoded, str):
        return parsed
    try:
        # pybase64 (SIMD): about 15 times binascii's speed on a 20 MiB part.
        blob = pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return parsed
    return Parsed(parsed.fields, blob, hashlib.sha256(blob).hexdigest())


def operation_of(headers: Mapping[str, str]) -> str:
    """The operation an ECR request names in its X-Amz-Target header ("Unknown" if none)."""
    target = headers.get("X-Amz-Target", "")
    return target.rsplit(".", 1)[-1] if target else "Unknown"
