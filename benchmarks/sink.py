#!/usr/bin/env python3
"""A minimal, fast ECR-compatible HTTP/1.1 sink for benchmarks, on 127.0.0.1.

    python benchmarks/sink.py [--port N] [--part-size BYTES] [--verify]
        [--certfile PEM --keyfile PEM] [--latency-ms MS]

Prints ``SINK_PORT=<port>`` on stdout once it listens (``--port 0``, the default, picks a
free port). It speaks the ECR JSON protocol (awsJson1_1: ``POST /`` with
``X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Operation>``) and ignores SigV4.

- ``InitiateLayerUpload`` returns a new ``uploadId`` and ``partSize``.
- ``UploadLayerPart`` accepts a part only if ``partFirstByte == lastByteReceived + 1``
  (0 for the first part), else answers ``InvalidLayerPartException`` with
  ``lastValidByteReceived``, as ECR does.
- ``CompleteLayerUpload`` returns the digest; with ``--verify`` it checks it against the
  sha256 of the decoded parts and answers ``InvalidLayerException`` on a mismatch.
- ``BatchCheckLayerAvailability`` reports the layers completed in this process, per
  repository (a fresh repository name starts empty, so runs do not see each other's layers).
- ``PutImage`` stores the manifest's digest under its tag; an image manifest whose config or
  layers the repository lacks gets ``LayersNotFoundException``, as ECR answers.
- Anything else gets an empty ``{}`` 200.
- ``GET /stats`` returns the sink's counters and its own CPU time (for the benchmark).

With ``--certfile``/``--keyfile`` it serves HTTPS. A thread per connection reads the TLS
socket with blocking reads (OpenSSL decrypts straight from its socket buffer into the
request buffer, with the GIL released), which costs about half the CPU of asyncio's
memory-BIO TLS (``--asyncio-tls``, kept to compare): the sink shares the two cores with the
client under test, and on real ECR the decryption is not the client's machine's work. Once
a request's head is parsed, its body is read by ``SSLSocket``'s C method in a tight loop
(one call per 16 KiB record, no lock, no per-read bookkeeping), and OpenSSL reads ahead two
records per system call (``tune_tls_reads``): about 1.5-1.75 sink CPU-s per GiB of layer
where it took 2.3-2.6, of which AES-GCM is ~0.75 (1.43 GB of base64 to decrypt). With
``--latency-ms`` every ECR answer waits that long before it is written (the round trip
to a distant region), while the sink goes on receiving; ``/stats`` answers at once.

Why it is built this way: the client under test must be the bottleneck, so the per-part
work here is a few ``recv_into`` calls straight into a reused per-connection buffer
(``asyncio.BufferedProtocol``, woken by ``SO_RCVLOWAT`` only once a MiB has arrived), a
search for the blob's closing quote in the last 4 KiB of the body, and regexes over the few
hundred bytes of JSON around the blob. The 27 MiB body is never JSON-parsed, never copied,
never scanned, and never base64-decoded unless ``--verify`` asks for it. Measured on a
2-core machine: about 0.3 CPU-seconds per GiB of layer, and a ceiling of about 1.6 GB/s
from a raw-socket client (benchmarks/sink_ceiling.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import re
import resource
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

try:  # SIMD base64, only used by --verify; the standard library is the fallback.
    import pybase64

    def _b64decode(data: memoryview | bytes) -> bytes:
        return pybase64.b64decode(data, validate=True)

except ImportError:  # pragma: no cover - depends on the environment

    def _b64decode(data: memoryview | bytes) -> bytes:
        return base64.b64decode(data, validate=True)


TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
DEFAULT_PART_SIZE = 20_971_520
REGISTRY_ID = "123456789012"

_HEADER_END = b"\r\n\r\n"
_BLOB_KEY = re.compile(rb'"layerPartBlob"\s*:\s*"')
_FIRST_BYTE = re.compile(rb'"partFirstByte"\s*:\s*(\d+)')
_LAST_BYTE = re.compile(rb'"partLastByte"\s*:\s*(\d+)')
_UPLOAD_ID = re.compile(rb'"uploadId"\s*:\s*"([^"]*)"')
_REPOSITORY = re.compile(rb'"repositoryName"\s*:\s*"([^"]*)"')
_INITIAL_BUFFER = 1 << 16
_RECEIVE_LOW_WATER = 1 << 20
# Over TLS the socket's bytes are records: a record partly received sits undecrypted in
# asyncio's BIO, so the bytes still to come on the socket can be fewer than the body bytes
# still missing. The low-water mark stays this far below (more than two 16 KiB records).
_TLS_LOW_WATER_SLACK = 64 << 10
_BUFFER_GRANULE = 4 << 20
_MAX_SPARE_BUFFERS = 8
# Fields after the blob (none in botocore's order) are expected within this many bytes of
# the end of the body, so the blob's closing quote is looked for there, not by a 27 MiB scan.
_TAIL_WINDOW = 4096
_BASE64_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@dataclass(slots=True)
class Upload:
    """One layer upload in progress: what ECR tracks, plus what the benchmark asks about."""

    upload_id: str
    repository_name: str
    last_byte_received: int = -1
    parts_accepted: int = 0
    parts_rejected: int = 0
    hasher: Any = None  # hashlib sha256 object, only with --verify


@dataclass(slots=True)
class SinkState:
    """Everything the sink remembers, shared by all connections of the process."""

    part_size: int
    verify: bool
    latency_s: float = 0.0
    tls: bool = False
    tls_read_ahead: bool = False  # tune_tls_reads applied
    uploads: dict[str, Upload] = field(default_factory=dict)
    # (repository, completed digest) -> size
    layer_sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)  # one record per PutImage
    completed: list[dict[str, Any]] = field(default_factory=list)  # one record per upload
    requests: int = 0
    connections: int = 0
    parts_accepted: int = 0
    parts_rejected: int = 0
    layer_bytes_accepted: int = 0
    body_bytes_received: int = 0
    spare_buffers: list[bytearray] = field(default_factory=list)  # of closed connections

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": self.requests,
            "connections": self.connections,
            "parts_accepted": self.parts_accepted,
            "parts_rejected": self.parts_rejected,
            "layer_bytes_accepted": self.layer_bytes_accepted,
            "body_bytes_received": self.body_bytes_received,
            "uploads_open": len(self.uploads),
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "verify": self.verify,
            "tls": self.tls,
            "tls_read_ahead": self.tls_read_ahead,
            "latency_ms": self.latency_s * 1000,
            "completed": self.completed[-1000:],
            "images": self.images[-1000:],
        }


class EcrError(Exception):
    """An ECR service error, answered as HTTP 400 with an awsJson1_1 error body."""

    def __init__(self, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


def _decoded_length(blob: memoryview) -> int:
    """Bytes that a padded base64 string decodes to, without decoding it."""
    length = len(blob)
    if length == 0:
        return 0
    if length % 4:
        raise EcrError("InvalidLayerPartException", "layerPartBlob is not valid base64")
    padding = (blob[-1] == 0x3D) + (blob[-2] == 0x3D)
    return length // 4 * 3 - padding


class _BlockingTransport:
    """The part of asyncio.Transport that SinkProtocol uses, over a blocking (TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closing = False
        self.closed = False
        # Answers are written by the connection's thread after the state lock is released.
        self.pending: list[tuple[float, bytes]] = []  # (delay in s, data)

    def write(self, data: bytes) -> None:
        self.write_later(0.0, data)

    def write_later(self, delay: float, data: bytes) -> None:
        if not self.closing:
            self.pending.append((delay, data))

    def close(self) -> None:
        self.closing = True

    def flush(self) -> None:
        """Write the pending answers (sleeping their delays first); close if asked to."""
        pending, self.pending = self.pending, []
        for delay, data in pending:
            if delay > 0:
                time.sleep(delay)
            self.sock.sendall(data)
        if self.closing:
            self.closed = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # No "socket": SO_RCVLOWAT would not help the small reads of OpenSSL's socket BIO.
        return default


class SinkProtocol(asyncio.BufferedProtocol):
    """One HTTP/1.1 keep-alive connection; the request body lands in a reused buffer."""

    def __init__(self, state: SinkState) -> None:
        self.state = state
        self.buffer = bytearray(_INITIAL_BUFFER)
        self.filled = 0  # bytes of self.buffer holding received data
        self.header_length = -1  # length of the head including CRLFCRLF, once parsed
        self.request_length = -1  # header_length + Content-Length
        self.scan_from = 0  # where to resume looking for the end of the head
        self.method = b""
        self.path = b""
        self.headers: dict[bytes, bytes] = {}
        self.transport: asyncio.Transport | _BlockingTransport | None = None
        self.socket: Any = None  # for SO_RCVLOWAT; None where it is not available
        self.receive_low_water = 1

    # asyncio.BufferedProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport | _BlockingTransport) -> None:
        assert isinstance(transport, asyncio.Transport | _BlockingTransport)
        self.transport = transport
        self.state.connections += 1
        sock = transport.get_extra_info("socket")
        self.socket = sock if sock is not None and hasattr(socket, "SO_RCVLOWAT") else None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.filled == len(self.buffer):
            self._grow(max(len(self.buffer) * 2, self.filled + _INITIAL_BUFFER))
        # With the body length known, the kernel copies the rest of it in as few recv
        # calls as the socket allows, straight into place.
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        while True:
            if self.header_length < 0 and not self._parse_head():
                return
            if self.filled < self.request_length:
                self._set_receive_low_water(self.request_length - self.filled)
                return
            self._handle_request()
            if self.transport is None or self.transport.is_closing():
                return
            self._shift_leftover()
            self._set_receive_low_water(1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if len(self.buffer) > _INITIAL_BUFFER:
            self._give_back(self.buffer)
        self.buffer = bytearray(0)

    def _set_receive_low_water(self, missing: int) -> None:
        # Wake up once a good chunk of the body (or all that is missing) has arrived rather
        # than for every few hundred KiB: 6x fewer wake-ups and recv calls per part.
        wanted = min(missing, _RECEIVE_LOW_WATER)
        if self.state.tls:
            wanted = max(1, wanted - _TLS_LOW_WATER_SLACK)
        if wanted == self.receive_low_water or self.socket is None:
            return
        self.receive_low_water = wanted
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, wanted)
        except OSError:
            self.socket = None  # not supported here: stay with the default of 1

    # HTTP -------------------------------------------------------------------------------

    def _grow(self, size: int) -> None:
        # A new buffer instead of an in-place resize: asyncio may still hold a view of the old.
        # Buffers of closed connections are reused, so a fresh connection (one per benchmark
        # run) does not fault in and zero another 28 MiB.
        spares = self.state.spare_buffers
        fitting = [spare for spare in spares if len(spare) >= size]
        if fitting:
            bigger = min(fitting, key=len)
            spares.remove(bigger)
        else:
            bigger = bytearray(-(-size // _BUFFER_GRANULE) * _BUFFER_GRANULE)
        bigger[: self.filled] = memoryview(self.buffer)[: self.filled]
        if len(self.buffer) > _INITIAL_BUFFER:
            self._give_back(self.buffer)
        self.buffer = bigger

    def _give_back(self, buffer: bytearray) -> None:
        spares = self.state.spare_buffers
        spares.append(buffer)
        if len(spares) > _MAX_SPARE_BUFFERS:
            spares.remove(min(spares, key=len))

    def _parse_head(self) -> bool:
        end = self.buffer.find(_HEADER_END, self.scan_from, self.filled)
        if end < 0:
            self.scan_from = max(0, self.filled - 3)
            if self.filled > 1 << 20:
                self._fail_connection(b"431 Request Header Fields Too Large")
            return False
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        try:
            self.method, self.path, _version = lines[0].split(b" ", 2)
        except ValueError:
            self._fail_connection(b"400 Bad Request")
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            # Neither botocore nor aiobotocore chunk a bytes body; keep this sink simple.
            self._fail_connection(b"411 Length Required")
            return False
        content_length = int(headers.get(b"content-length", b"0"))
        self.header_length = end + len(_HEADER_END)
        self.request_length = self.header_length + content_length
        if self.request_length > len(self.buffer):
            self._grow(self.request_length)
        if headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _shift_leftover(self) -> None:
        leftover = self.filled - self.request_length
        if leftover:  # a pipelined next request; rare, so a copy is fine
            self.buffer[:leftover] = self.buffer[self.request_length : self.filled]
        self.filled = leftover
        self.header_length = self.request_length = -1
        self.scan_from = 0

    def _fail_connection(self, status: bytes) -> None:
        if self.transport:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def _respond(
        self, status: int, payload: dict[str, Any], extra_headers: bytes = b"", delay: bool = True
    ) -> None:
        if self.transport is None:
            return
        body = json.dumps(payload).encode()
        reason = b"OK" if status == 200 else b"Bad Request"
        close = self.headers.get(b"connection", b"").lower() == b"close"
        head = b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, reason),
                b"Content-Type: application/x-amz-json-1.1\r\n",
                b"Content-Length: %d\r\n" % len(body),
                b"x-amzn-RequestId: %s\r\n" % uuid.uuid4().hex.encode(),
                extra_headers,
                b"Connection: close\r\n\r\n" if close else b"\r\n",
            )
        )
        if isinstance(self.transport, _BlockingTransport):
            # Written (after the delay) by this connection's thread, outside the state lock.
            self.transport.write_later(self.state.latency_s if delay else 0.0, head + body)
            if close:
                self.transport.close()
        elif delay and self.state.latency_s > 0:
            # call_later keeps the answers of one connection in order (same delay, FIFO).
            asyncio.get_running_loop().call_later(
                self.state.latency_s, self._write_answer, self.transport, head + body, close
            )
        else:
            self._write_answer(self.transport, head + body, close)

    @staticmethod
    def _write_answer(
        transport: asyncio.Transport | _BlockingTransport, data: bytes, close: bool
    ) -> None:
        if transport.is_closing():
            return
        transport.write(data)
        if close:
            transport.close()

    def _handle_request(self) -> None:
        state = self.state
        state.requests += 1
        body = memoryview(self.buffer)[self.header_length : self.request_length]
        state.body_bytes_received += len(body)
        if self.method == b"GET" and self.path.startswith(b"/stats"):
            self._respond(200, state.stats(), delay=False)
            return
        target = self.headers.get(b"x-amz-target", b"").decode("latin-1")
        operation = target.removeprefix(TARGET_PREFIX)
        try:
            if operation == "UploadLayerPart":
                payload = self._upload_layer_part(body)
            else:
                request = json.loads(bytes(body)) if len(body) else {}
                handler = _HANDLERS.get(operation)
                payload = handler(state, request) if handler else {}
        except EcrError as error:
            self._respond(
                400,
                {"__type": error.code, "message": error.message, **error.fields},
                b"x-amzn-ErrorType: %s\r\n" % error.code.encode(),
            )
            return
        self._respond(200, payload)

    # ECR operations ---------------------------------------------------------------------

    def _upload_layer_part(self, body: memoryview) -> dict[str, Any]:
        state = self.state
        buffer = self.buffer
        start, stop = self.header_length, self.request_length
        # The blob key, then its closing quote found by memchr; every other field is
        # searched for only in the JSON outside the blob.
        key = _BLOB_KEY.search(buffer, start, min(stop, start + 4096))
        if key is None:
            key = _BLOB_KEY.search(buffer, start, stop)  # a body with huge fields first
        if key is None:
            raise EcrError("InvalidParameterException", "layerPartBlob is missing")
        key_start, blob_start = key.start(), key.end()
        blob_end = -1
        tail_start = stop - _TAIL_WINDOW
        if tail_start > blob_start and buffer[tail_start - 1] in _BASE64_BYTES:
            blob_end = buffer.find(b'"', tail_start, stop)
        if blob_end < 0:
            blob_end = buffer.find(b'"', blob_start, stop)
        if blob_end < 0:
            raise EcrError("InvalidParameterException", "layerPartBlob is not terminated")

        def find_field(pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
            return pattern.search(buffer, start, key_start) or pattern.search(
                buffer, blob_end + 1, stop
            )

        first = find_field(_FIRST_BYTE)
        last = find_field(_LAST_BYTE)
        upload_match = find_field(_UPLOAD_ID)
        repository = find_field(_REPOSITORY)
        if first is None or last is None or upload_match is None:
            raise EcrError("InvalidParameterException", "a required field is missing")
        upload_id = upload_match.group(1).decode()
        upload = state.uploads.get(upload_id)
        if upload is None:
            raise EcrError("UploadNotFoundException", f"upload {upload_id} does not exist")
        repository_name = repository.group(1).decode() if repository else upload.repository_name
        part_first_byte = int(first.group(1))
        part_last_byte = int(last.group(1))
        blob = memoryview(buffer)[blob_start:blob_end]
        expected_first = upload.last_byte_received + 1
        if part_first_byte != expected_first or part_last_byte < part_first_byte:
            upload.parts_rejected += 1
            state.parts_rejected += 1
            raise EcrError(
                "InvalidLayerPartException",
                f"part {part_first_byte}-{part_last_byte} is not next; expected first byte "
                f"{expected_first}",
                registryId=REGISTRY_ID,
                repositoryName=repository_name,
                uploadId=upload_id,
                lastValidByteReceived=upload.last_byte_received,
            )
        part_length = part_last_byte - part_first_byte + 1
        if upload.hasher is not None:
            # JSON may escape "/" as "\/"; only a verifying sink pays for undoing it.
            escaped = buffer.find(b"\\", blob_start, blob_end) >= 0
            try:
                decoded = _b64decode(bytes(blob).replace(b"\\/", b"/") if escaped else blob)
            except (binascii.Error, ValueError) as exc:
                raise EcrError("InvalidLayerPartException", f"bad base64: {exc}") from exc
            decoded_length = len(decoded)
        else:
            decoded = b""
            decoded_length = _decoded_length(blob)
        if decoded_length != part_length:
            upload.parts_rejected += 1
            state.parts_rejected += 1
            raise EcrError(
                "InvalidLayerPartException",
                f"blob has {decoded_length} bytes, range {part_first_byte}-{part_last_byte} "
                f"says {part_length}",
                registryId=REGISTRY_ID,
                repositoryName=repository_name,
                uploadId=upload_id,
                lastValidByteReceived=upload.last_byte_received,
            )
        if upload.hasher is not None:
            upload.hasher.update(decoded)
        upload.last_byte_received = part_last_byte
        upload.parts_accepted += 1
        state.parts_accepted += 1
        state.layer_bytes_accepted += part_length
        return {
            "registryId": REGISTRY_ID,
            "repositoryName": repository_name,
            "uploadId": upload_id,
            "lastByteReceived": part_last_byte,
        }


def _initiate_layer_upload(state: SinkState, request: dict[str, Any]) -> dict[str, Any]:
    upload_id = str(uuid.uuid4())
    state.uploads[upload_id] = Upload(
        upload_id=upload_id,
        repository_name=str(request.get("repositoryName", "")),
        hasher=hashlib.sha256() if state.verify else None,
    )
    return {"uploadId": upload_id, "partSize": state.part_size}


def _complete_layer_upload(state: SinkState, request: dict[str, Any]) -> dict[str, Any]:
    upload_id = str(request.get("uploadId", ""))
    upload = state.uploads.get(upload_id)
    if upload is None:
        raise EcrError("UploadNotFoundException", f"upload {upload_id} does not exist")
    digests = request.get("layerDigests") or []
    if len(digests) != 1:
        raise EcrError("InvalidParameterException", "expected exactly one layer digest")
    digest = str(digests[0])
    if upload.last_byte_received < 0:
        raise EcrError("EmptyUploadException", f"upload {upload_id} has no parts")
    if upload.hasher is not None:
        actual = "sha256:" + upload.hasher.hexdigest()
        if actual != digest:
            raise EcrError(
                "InvalidLayerException",
                f"digest {digest} does not match the uploaded content {actual}",
            )
    del state.uploads[upload_id]
    state.layer_sizes[upload.repository_name, digest] = upload.last_byte_received + 1
    state.completed.append(
        {
            "layerDigest": digest,
            "layerSize": upload.last_byte_received + 1,
            "uploadId": upload_id,
            "repositoryName": upload.repository_name,
            "partsAccepted": upload.parts_accepted,
            "partsRejected": upload.parts_rejected,
            "verified": upload.hasher is not None,
        }
    )
    return {
        "registryId": REGISTRY_ID,
        "repositoryName": str(request.get("repositoryName", upload.repository_name)),
        "uploadId": upload_id,
        "layerDigest": digest,
    }


def _batch_check_layer_availability(state: SinkState, request: dict[str, Any]) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    repository_name = str(request.get("repositoryName", ""))
    for digest in request.get("layerDigests") or []:
        size = state.layer_sizes.get((repository_name, digest))
        if size is None:
            failures.append(
                {
                    "layerDigest": digest,
                    "failureCode": "MissingLayerDigest",
                    "failureReason": "layer not found",
                }
            )
        else:
            layers.append(
                {
                    "layerDigest": digest,
                    "layerAvailability": "AVAILABLE",
                    "layerSize": size,
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                }
            )
    return {"layers": layers, "failures": failures}


def _put_image(state: SinkState, request: dict[str, Any]) -> dict[str, Any]:
    repository_name = str(request.get("repositoryName", ""))
    manifest = str(request.get("imageManifest", ""))
    digest = "sha256:" + hashlib.sha256(manifest.encode("utf-8")).hexdigest()
    try:
        document = json.loads(manifest)
    except ValueError as exc:
        raise EcrError("InvalidParameterException", f"imageManifest is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise EcrError("InvalidParameterException", "imageManifest is not a JSON object")
    blobs = [document.get("config") or {}, *(document.get("layers") or [])]
    needed = [blob.get("digest") for blob in blobs if "manifests" not in document and blob]
    missing = [d for d in needed if (repository_name, d) not in state.layer_sizes]
    if missing:
        raise EcrError(
            "LayersNotFoundException",
            f"Layers with digests {missing} required for pushing image into repository"
            f" {repository_name} do not exist",
        )
    image_id: dict[str, str] = {"imageDigest": digest}
    if request.get("imageTag"):
        image_id["imageTag"] = str(request["imageTag"])
    state.images.append({"repositoryName": repository_name, **image_id})
    return {
        "image": {
            "registryId": REGISTRY_ID,
            "repositoryName": repository_name,
            "imageId": image_id,
            "imageManifest": manifest,
            "imageManifestMediaType": request.get("imageManifestMediaType")
            or document.get("mediaType", ""),
        }
    }


_HANDLERS = {
    "InitiateLayerUpload": _initiate_layer_upload,
    "CompleteLayerUpload": _complete_layer_upload,
    "BatchCheckLayerAvailability": _batch_check_layer_availability,
    "PutImage": _put_image,
}


_SSL_CTRL_SET_READ_AHEAD = 41
# Two full TLS records (16 KiB of plaintext plus header, tag and padding each). Not more:
# OpenSSL moves the bytes it read ahead to the front of its buffer before every record, so a
# bigger buffer means more copying (1 MiB made the sink slower than no read-ahead at all).
_TLS_READ_BUFFER = 2 * (16384 + 256)


def tune_tls_reads(context: ssl.SSLContext) -> bool:
    """Let OpenSSL read ahead two records at a time: one ``read`` per two records, not four.

    Without read-ahead OpenSSL's socket BIO reads each TLS record with two ``read`` calls
    (its 5-byte header, then its body): about 175,000 system calls per GiB of layer (base64
    makes 1.43 GB of records). Python's ``ssl`` does not expose the setting, so it is made
    through ctypes on the ``SSL_CTX`` behind ``context``, found where CPython keeps it (the
    first field after the object header) and used only if ``SSL_CTX_get_options`` there
    gives back ``context.options``. Returns whether it was applied; the sink works either way.
    """
    try:
        import ctypes

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libssl.so" in line}
        if len(paths) != 1:
            return False
        libssl = ctypes.CDLL(paths.pop())
        libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
        libssl.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        libssl.SSL_CTX_ctrl.restype = ctypes.c_long
        libssl.SSL_CTX_ctrl.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_long,
            ctypes.c_void_p,
        ]
        libssl.SSL_CTX_set_default_read_buffer_len.restype = None
        libssl.SSL_CTX_set_default_read_buffer_len.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer or libssl.SSL_CTX_get_options(pointer) != context.options:
            return False
        libssl.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_READ_AHEAD, 1, None)
        libssl.SSL_CTX_set_default_read_buffer_len(pointer, _TLS_READ_BUFFER)
        return True
    except (OSError, AttributeError, ValueError):
        return False


def _serve_tls_connection(
    state: SinkState, lock: threading.Lock, tls: ssl.SSLContext, raw: socket.socket
) -> None:
    protocol = SinkProtocol(state)
    try:
        with tls.wrap_socket(raw, server_side=True) as sock:
            transport = _BlockingTransport(sock)
            with lock:
                protocol.connection_made(transport)
            transport.flush()
            # SSLSocket.recv_into is three Python calls deep; OpenSSL returns one 16 KiB
            # record per call, so the body loop below calls the C method itself.
            read = sock._sslobj.read  # type: ignore[attr-defined]
            while not transport.closed:
                end = protocol.request_length
                if protocol.header_length >= 0 and protocol.filled < end:
                    # The body's length is known and its buffer allocated: read the rest of
                    # it straight into place, without the lock (nothing shared is touched)
                    # and without the protocol's per-read bookkeeping.
                    view = memoryview(protocol.buffer)
                    filled = start = protocol.filled
                    while filled < end:
                        got = read(end - filled, view[filled:end])
                        if got == 0:
                            break
                        filled += got
                    del view
                    count = filled - start
                else:
                    view = protocol.get_buffer(-1)
                    count = sock.recv_into(view)
                    del view  # the protocol may grow (replace) its buffer
                if count == 0:
                    break
                with lock:
                    protocol.buffer_updated(count)
                transport.flush()
    except (OSError, ssl.SSLError):
        pass  # the client went away; nothing to answer
    finally:
        with lock:
            protocol.connection_lost(None)
        raw.close()


def serve_tls_threads(
    port: int, part_size: int, verify: bool, tls: ssl.SSLContext, latency_s: float
) -> None:
    """Like ``serve`` over TLS, with a blocking thread per connection (see the docstring)."""
    state = SinkState(
        part_size=part_size,
        verify=verify,
        latency_s=latency_s,
        tls=True,
        tls_read_ahead=tune_tls_reads(tls),
    )
    lock = threading.Lock()  # one request handled at a time, as on the event loop
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    print(f"SINK_PORT={listener.getsockname()[1]}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    listener.settimeout(0.2)  # so that a signal is seen promptly
    with listener:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            raw.settimeout(None)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=_serve_tls_connection, args=(state, lock, tls, raw), daemon=True
            ).start()


async def serve(
    port: int,
    part_size: int,
    verify: bool,
    tls: ssl.SSLContext | None = None,
    latency_s: float = 0.0,
) -> None:
    """Listen on 127.0.0.1:port (0 picks one), print ``SINK_PORT=<port>``, serve forever."""
    state = SinkState(part_size=part_size, verify=verify, latency_s=latency_s, tls=tls is not None)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SinkProtocol(state), "127.0.0.1", port, reuse_address=True, backlog=128, ssl=tls
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"SINK_PORT={bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    parser.add_argument(
        "--part-size",
        type=int,
        default=DEFAULT_PART_SIZE,
        help="partSize that InitiateLayerUpload returns (default %(default)s)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="decode every part and check the layer digest on CompleteLayerUpload",
    )
    parser.add_argument("--certfile", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="wait this long before each ECR answer (default %(default)s)",
    )
    parser.add_argument(
        "--asyncio-tls",
        action="store_true",
        help="serve TLS with asyncio's SSL transport instead of a thread per connection",
    )
    args = parser.parse_args(argv)
    if args.latency_ms < 0:
        parser.error("--latency-ms: must be >= 0")
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
        if not args.asyncio_tls:
            serve_tls_threads(args.port, args.part_size, args.verify, tls, args.latency_ms / 1000)
            return 0
    asyncio.run(serve(args.port, args.part_size, args.verify, tls, args.latency_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
