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


def _blob_span(body: bytes | bytearray) -> tuple[int, int] | None:
    """Where the layerPartBlob string's characters lie in a part's JSON body, if plainly."""
    key = body.find(b'"layerPartBlob"')
    if key < 0:
        return None
    position = key + len(b'"layerPartBlob"')
    while position < len(body) and body[position] in b" \t\r\n:":
        position += 1
    if position >= len(body) or body[position] != ord('"'):
        return None
    end = body.find(b'"', position + 1)
    if end < 0 or body.find(b"\\", position + 1, end) >= 0:  # escapes: leave it to json
        return None
    return position + 1, end


def parse_part(body: bytes | bytearray) -> Parsed | None:
    """Parse an UploadLayerPart body, decode and hash its blob (CPU-heavy: run off the loop).

    The blob is decoded straight from the body, never copied into a str: only the small
    rest goes through the JSON parser.
    """
    span = _blob_span(body)
    parsed = None
    encoded: object = None
    if span is not None:
        start, end = span
        parsed = parse_fields(bytes(body[: start - 1]) + b'""' + bytes(body[end + 1 :]))
        if parsed is not None and parsed.fields.get("layerPartBlob") == "":
            encoded = memoryview(body)[start:end]
        else:
            parsed = None
    if parsed is None:
        parsed = parse_fields(bytes(body))
        if parsed is None:
            return None
        encoded = parsed.fields.get("layerPartBlob")
    parsed.fields.pop("layerPartBlob", None)
    if not isinstance(encoded, str | memoryview):
        return parsed
    try:
        # pybase64 (SIMD): about 15 times binascii's speed on a 20 MiB part.
        blob = pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return parsed
    return Parsed(parsed.fields, blob, hashlib.sha256(blob).hexdigest())


async def read_body(request: web.BaseRequest) -> bytes | bytearray:
    """A request's body, read into one buffer of its announced length (no second copy)."""
    length = request.content_length
    if length is None or length > MAX_BODY:
        return await request.read()  # aiohttp answers 413 over its limit
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    async for chunk in request.content.iter_any():
        if filled + len(chunk) > length:
            raise web.HTTPBadRequest(text="body longer than its Content-Length")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled < length:
        del view
        del buffer[filled:]
    return buffer


def operation_of(headers: Mapping[str, str]) -> str:
    """The operation an ECR request names in its X-Amz-Target header ("Unknown" if none)."""
    target = headers.get("X-Amz-Target", "")
    return target.rsplit(".", 1)[-1] if target else "Unknown"
