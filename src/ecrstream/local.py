"""The embedded local ECR endpoint: moto's server behind a strict, fault-injecting proxy.

Tests, ``ecrstream demo`` and the benchmarks talk to real HTTP servers on 127.0.0.1 that speak
ECR's JSON protocol (awsJson1_1, ``X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Op>``).
Nothing leaves the machine and no AWS credentials are used (``client_kwargs()`` hands out dummy
ones). Needs the ``local`` extra (moto[server], aiohttp)::

    with LocalEcr() as ecr:                       # or: async with LocalEcr() as ecr:
        ecr.create_repository("demo")
        session = aiobotocore.session.get_session()
        async with session.create_client("ecr", **ecr.client_kwargs()) as client:
            ...

Two servers run in-process, each on a free port:

- ``upstream_url``: moto's server (``moto.server.ThreadedMotoServer``), which keeps the
  repositories, uploads, layers and images;
- ``endpoint_url``: a proxy in front of it (aiohttp, in its own thread with its own event loop,
  so sync and async callers use it alike). It enforces the ECR rules moto skips, injects faults
  and records every request. Clients should always talk to the proxy.

What moto 5.2 does, and what the proxy adds (checked before anything is forwarded; errors in
ECR's JSON shape ``{"__type": ..., "message": ...}`` with an ``x-amzn-RequestId`` header)::

    InitiateLayerUpload   moto: uploadId, partSize 10 MiB (as ECR).
                          proxy: ``part_size`` overrides the returned partSize.
    UploadLayerPart       moto: UploadNotFoundException; partFirstByte != lastByteReceived + 1
                          -> InvalidLayerPartException with lastValidByteReceived, uploadId,
                          registryId, repositoryName (as ECR).
                          proxy adds, as InvalidLayerPartException with the same fields: a part
                          over 20,971,520 bytes, an empty part, a byte range whose length is not
                          the blob's; and an upload id unknown to this repository ->
                          UploadNotFoundException.
    CompleteLayerUpload   moto: ignores layerDigests and stores whatever bytes arrived, even none,
                          even if the layer exists. proxy adds, in this order:
                          UploadNotFoundException, EmptyUploadException (no parts),
                          LayerPartTooSmallException (a part but the last under
                          ``min_part_size``), InvalidLayerException (layerDigests is not exactly
                          [sha256 of the bytes]), LayerAlreadyExistsException. After such an
                          error the upload stays open; after success it is gone (a retried
                          complete gets UploadNotFoundException).
    BatchCheckLayerAvailability  moto: as ECR (AVAILABLE with layerSize, MissingLayerDigest,
                          InvalidLayerDigest). proxy: passes through.
    PutImage              moto: image digest = sha256 of the joined layer digests, imageDigest not
                          checked, referenced blobs not checked, unknown repository -> HTTP 500.
                          proxy adds: ImageDigestDoesNotMatchException, InvalidParameterException
                          (manifest not JSON), RepositoryNotFoundException, LayersNotFoundException
                          (config or layer blob missing), and makes the stored digest
                          sha256(manifest) as ECR does.
    BatchGetImage         moto: finds images by tag or digest. proxy: passes through.

Every other operation (CreateRepository, ...) is forwarded untouched (and recorded).

Faults (``ecr.faults.add(operation, kind, call=1, times=1, probability=None, seed=0, ...)``)
are tried in the order added; the first that fires is injected. A rule is eligible from call
number ``call`` of its operation on (1-based, counted per operation since the last
``reset()``), fires with ``probability`` (default: always; drawn from ``random.Random(seed)``)
and retires after ``times`` injections (``None``: never). So ``call=3, times=2`` hits calls 3
and 4. The kinds (``FaultKind``):

- ``HTTP_500``: a bare 500 with an HTML body, not forwarded.
- ``SERVER_EXCEPTION``: 500 ``ServerException`` in ECR's JSON shape, not forwarded.
- ``THROTTLING``: 400 ``ThrottlingException``, not forwarded.
- ``UPLOAD_NOT_FOUND``: 400 ``UploadNotFoundException``, not forwarded (the upload stays; use
  ``forget_upload`` to make it disappear for good, as when ECR expires it).
- ``RESET``: reads ``reset_after_bytes`` of the request body, then resets the connection (RST):
  the client sees a reset mid-body; nothing is forwarded.
- ``LOST_RESPONSE``: handled normally (forwarded, applied upstream and in the proxy's state),
  then the connection is reset without an answer.
- ``DELAY``: waits ``delay_seconds`` before handling (nothing applied while waiting).
- ``DELAY_AFTER_APPLY``: handles the request, then waits ``delay_seconds`` before answering.

aiobotocore reports RESET and LOST_RESPONSE alike, as ``EndpointConnectionError`` wrapping
aiohttp's "Connection reset by peer". Note that botocore's ``retries={"max_attempts": n}``
counts retries, not attempts: ``{"total_max_attempts": 1}`` turns its retries off.

Delays never block other requests, and end early when the client goes away or the endpoint
stops. The forwarding of a request and the update of the proxy's state form one unit that a
client going away never interrupts, so the proxy and moto always agree.

Records (``RecordedRequest``): every request that reached the proxy since the last ``reset()``,
in arrival order, committed once the proxy is done with it and before the client reads its
answer: ``sequence``, ``operation``, ``call``, ``fault``, ``repository_name``, ``upload_id``,
``part_first_byte``, ``part_last_byte``, ``blob_length``, ``blob_sha256`` (hex digest of the
decoded part; blobs are never kept), ``layer_digests``, ``status`` (``None`` when no answer was
sent), ``error_code``, ``accepted`` (applied upstream: for a part, its bytes are now in the
upload). A RESET request's body is never parsed, so only its operation, call and fault are
known. Helpers: ``requests(operation=None)``, ``accepted_parts(upload_id)``,
``upload(upload_id) -> UploadSnapshot | None``, and, to synchronize without sleeping,
``wait_for_request`` (a call has arrived), ``wait_for_delay`` (it sleeps in its delay: the
moment to cancel a client), ``wait_idle`` (all recorded), and their ``_async`` twins (use those
from a coroutine: the sync ones block the event loop the client needs to finish).

Settings: ``min_part_size`` (default 5 MiB, as ECR) and ``part_size`` (default None: moto's
10 MiB) are properties that may be changed while running; ``reset()`` restores the values given
to the constructor.

Threads: every public method may be called from any thread. Repositories live in moto's
process-wide state: two ``LocalEcr`` in one process share them (and ``moto.mock_aws`` resets
them), so use unique repository names. While an endpoint runs, werkzeug's access log (INFO) is
muted.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import contextlib
import enum
import hashlib
import http.client
import json
import logging
import random
import re
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypedDict

import anyio.to_thread
import botocore.session
from aiohttp import web
from botocore.config import Config
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
    "DEFAULT_MIN_PART_SIZE",
    "ClientKwargs",
    "MAX_PART_SIZE",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "LocalEcr",
    "Operation",
    "RecordedRequest",
    "UploadSnapshot",
]

MAX_PART_SIZE: Final = 20_971_520
"""The largest layerPartBlob ECR accepts (its API model's limit), in bytes."""

DEFAULT_MIN_PART_SIZE: Final = 5 * 1024 * 1024
"""ECR's minimum size of every part but the last, in bytes."""

_TARGET_PREFIX: Final = "AmazonEC2ContainerRegistry_V20150921."
_JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.1"
# A 20 MiB part is ~28 MB of base64 in JSON; leave room for parts the proxy must reject.
_MAX_BODY: Final = 64 * 1024 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CREDENTIAL_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/")
_HOP_BY_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect"}
)
_PASSED_BACK: Final = ("content-type", "x-amzn-requestid", "x-amzn-errortype")
# moto serves account 123456789012 for any key; these are not secrets and never real ones.
_DUMMY_ACCESS_KEY_ID: Final = "testing"
_DUMMY_SECRET_ACCESS_KEY: Final = "testing"


class ClientKwargs(TypedDict):
    """Keyword arguments for ``create_client("ecr", **kwargs)`` pointing at the local endpoint."""

    region_name: str
    endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str


class Operation(enum.StrEnum):
    """ECR operations the proxy treats specially; any other name passes through as a str."""

    INITIATE_LAYER_UPLOAD = "InitiateLayerUpload"
    UPLOAD_LAYER_PART = "UploadLayerPart"
    COMPLETE_LAYER_UPLOAD = "CompleteLayerUpload"
    BATCH_CHECK_LAYER_AVAILABILITY = "BatchCheckLayerAvailability"
    PUT_IMAGE = "PutImage"
    BATCH_GET_IMAGE = "BatchGetImage"


class FaultKind(enum.Enum):
    """What the proxy does to a request a fault rule picked (see the module docstring)."""

    HTTP_500 = "http_500"
    SERVER_EXCEPTION = "server_exception"
    THROTTLING = "throttling"
    UPLOAD_NOT_FOUND = "upload_not_found"
    RESET = "reset"
    LOST_RESPONSE = "lost_response"
    DELAY = "delay"
    DELAY_AFTER_APPLY = "delay_after_apply"


_ANSWERED_WITHOUT_FORWARDING: Final = frozenset(
    {
        FaultKind.HTTP_500,
        FaultKind.SERVER_EXCEPTION,
        FaultKind.THROTTLING,
        FaultKind.UPLOAD_NOT_FOUND,
    }
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule: which calls of which operation it hits, and how.

    Raises ValueError for a call number under 1, times under 1, a probability outside [0, 1],
    or a negative delay or byte count.
    """

    operation: str
    kind: FaultKind
    call: int = 1
    times: int | None = 1
    probability: float | None = None
    seed: int = 0
    delay_seconds: float = 30.0
    reset_after_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.call < 1:
            raise ValueError(f"Fault.call is a 1-based call number, got {self.call}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times must be at least 1 (or None), got {self.times}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Fault.probability must lie in [0, 1], got {self.probability}")
        if self.delay_seconds < 0:
            raise ValueError(f"Fault.delay_seconds must be >= 0, got {self.delay_seconds}")
        if self.reset_after_bytes < 0:
            raise ValueError(f"Fault.reset_after_bytes must be >= 0, got {self.reset_after_bytes}")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What the proxy saw of one request, and what it did with it."""

    sequence: int
    """Arrival order since the last reset, from 1."""
    operation: str
    call: int
    """1-based number of this call of ``operation`` since the last reset."""
    fault: FaultKind | None
    repository_name: str | None
    upload_id: str | None
    part_first_byte: int | None
    part_last_byte: int | None
    blob_length: int | None
    blob_sha256: str | None
    """Hex sha256 of the decoded layerPartBlob."""
    layer_digests: tuple[str, ...]
    status: int | None
    """HTTP status answered; None when the connection was reset or the client went away."""
    error_code: str | None
    accepted: bool
    """Upstream applied the request (for a part: its bytes are now in the upload)."""


@dataclass(frozen=True, slots=True)
class UploadSnapshot:
    """The proxy's view of an open upload: what has been accepted so far."""

    upload_id: str
    repository_name: str
    registry_id: str
    part_sizes: tuple[int, ...]
    last_byte_received: int
    """Offset of the last byte accepted; -1 before the first part."""
    digest: str
    """``sha256:<hex>`` of the bytes accepted so far."""

    @property
    def bytes_received(self) -> int:
        """How many bytes have been accepted."""
        return self.last_byte_received + 1


class _Rule:
    """A fault with its mutable firing state (owned by FaultPlan, under its lock)."""

    __slots__ = ("fault", "injected", "random")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.injected = 0
        self.random = random.Random(fault.seed)

    def fires(self, operation: str, call: int) -> bool:
        fault = self.fault
        if fault.operation != operation or call < fault.call:
            return False
        if fault.times is not None and self.injected >= fault.times:
            return False
        if fault.probability is not None and self.random.random() >= fault.probability:
            return False
        self.injected += 1
        return True


class FaultPlan:
    """The fault rules of one endpoint. Thread-safe: tests add, the proxy thread consumes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def add(
        self,
        operation: str,
        kind: FaultKind,
        *,
        call: int = 1,
        times: int | None = 1,
        probability: float | None = None,
        seed: int = 0,
        delay_seconds: float = 30.0,
        reset_after_bytes: int = 64 * 1024,
    ) -> Fault:
        """Add a rule after the existing ones and return it. Raises ValueError (see Fault)."""
        fault = Fault(
            operation=str(operation),
            kind=kind,
            call=call,
            times=times,
            probability=probability,
            seed=seed,
            delay_seconds=delay_seconds,
            reset_after_bytes=reset_after_bytes,
        )
        with self._lock:
            self._rules.append(_Rule(fault))
        return fault

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The rules, in the order they are tried."""
        with self._lock:
            return tuple(rule.fault for rule in self._rules)

    def _select(self, operation: str, call: int) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.fires(operation, call):
                    return rule.fault
        return None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    from_upstream: bool

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


def _error(code: str, message: str, *, status: int = 400, **fields: str | int) -> _Reply:
    body = json.dumps({"__type": code, "message": message, **fields}).encode()
    headers = (
        ("Content-Type", _JSON_CONTENT_TYPE),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("x-amzn-ErrorType", code),
    )
    return _Reply(status, body, headers, from_upstream=False)


def _bare_500() -> _Reply:
    body = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    return _Reply(500, body, (("Content-Type", "text/html"),), from_upstream=False)


@dataclass(frozen=True, slots=True)
class _Parsed:
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


def _parse_fields(body: bytes) -> _Parsed | None:
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    return _Parsed(fields) if isinstance(fields, dict) else None


def _parse_part(body: bytes) -> _Parsed | None:
    """Parse an UploadLayerPart body, decode and hash its blob (CPU-heavy: run off the loop)."""
    parsed = _parse_fields(body)
    if parsed is None:
        return None
    encoded = parsed.fields.pop("layerPartBlob", None)
    if not isinstance(encoded, str):
        return parsed
    try:
        blob = binascii.a2b_base64(encoded, strict_mode=True)
    except binascii.Error:
        return parsed
    return _Parsed(parsed.fields, blob, hashlib.sha256(blob).hexdigest())


class _Upload:
    """The proxy's state of one open upload. Mutated on the proxy loop, under _Proxy._lock."""

    __slots__ = (
        "hasher",
        "last_byte_received",
        "lock",
        "part_sizes",
        "region_name",
        "registry_id",
        "repository_name",
        "upload_id",
    )

    def __init__(
        self, upload_id: str, repository_name: str, registry_id: str, region_name: str
    ) -> None:
        self.upload_id = upload_id
        self.repository_name = repository_name
        self.registry_id = registry_id
        self.region_name = region_name
        self.hasher: HASH = hashlib.sha256()
        self.part_sizes: list[int] = []
        self.last_byte_received = -1
        # Serializes check, forward and apply of one upload's parts and completion.
        self.lock = asyncio.Lock()

    def snapshot(self) -> UploadSnapshot:
        return UploadSnapshot(
            upload_id=self.upload_id,
            repository_name=self.repository_name,
            registry_id=self.registry_id,
            part_sizes=tuple(self.part_sizes),
            last_byte_received=self.last_byte_received,
            digest="sha256:" + self.hasher.hexdigest(),
        )


class _Exchange:
    """One request in flight: the record under construction. Touched on the proxy loop only."""

    __slots__ = (
        "accepted",
        "blob_length",
        "blob_sha256",
        "call",
        "error_code",
        "fault",
        "generation",
        "layer_digests",
        "operation",
        "owners",
        "part_first_byte",
        "part_last_byte",
        "repository_name",
        "sequence",
        "status",
        "upload_id",
    )

    def __init__(
        self, sequence: int, operation: str, call: int, fault: Fault | None, generation: int
    ) -> None:
        self.sequence = sequence
        self.operation = operation
        self.call = call
        self.fault = fault
        self.generation = generation
        # The handler owns it; so does the shielded forward/apply task while it runs.
        self.owners = 1
        self.repository_name: str | None = None
        self.upload_id: str | None = None
        self.part_first_byte: int | None = None
        self.part_last_byte: int | None = None
        self.blob_length: int | None = None
        self.blob_sha256: str | None = None
        self.layer_digests: tuple[str, ...] = ()
        self.status: int | None = None
        self.error_code: str | None = None
        self.accepted = False

    def fill(self, parsed: _Parsed) -> None:
        self.repository_name = parsed.text("repositoryName")
        self.upload_id = parsed.text("uploadId")
        self.part_first_byte = parsed.integer("partFirstByte")
        self.part_last_byte = parsed.integer("partLastByte")
        self.layer_digests = parsed.texts("layerDigests")
        if parsed.blob is not None:
            self.blob_length = len(parsed.blob)
            self.blob_sha256 = parsed.blob_sha256

    def answered(self, reply: _Reply) -> None:
        self.status = reply.status
        self.error_code = reply.error_code

    def record(self) -> RecordedRequest:
        return RecordedRequest(
            sequence=self.sequence,
            operation=self.operation,
            call=self.call,
            fault=self.fault.kind if self.fault is not None else None,
            repository_name=self.repository_name,
            upload_id=self.upload_id,
            part_first_byte=self.part_first_byte,
            part_last_byte=self.part_last_byte,
            blob_length=self.blob_length,
            blob_sha256=self.blob_sha256,
            layer_digests=self.layer_digests,
            status=self.status,
            error_code=self.error_code,
            accepted=self.accepted,
        )


def _operation_of(headers: Mapping[str, str]) -> str:
    target = headers.get("X-Amz-Target", "")
    return target.rsplit(".", 1)[-1] if target else "Unknown"


def _forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in _HOP_BY_HOP}


def _reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST, whatever is still unread or unsent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, so the client sees a reset, not an EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _read_some(request: web.BaseRequest, limit: int) -> None:
    remaining = limit
    while remaining > 0:
        chunk = await request.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


def _post_blocking(upstream: tuple[str, int], headers: Mapping[str, str], body: bytes) -> _Reply:
    connection = http.client.HTTPConnection(*upstream, timeout=600)
    try:
        connection.request("POST", "/", body=body, headers=dict(headers))
        answer = connection.getresponse()
        payload = answer.read()
        passed = tuple(
            (name, value) for name, value in answer.getheaders() if name.lower() in _PASSED_BACK
        )
        return _Reply(answer.status, payload, passed, from_upstream=True)
    finally:
        connection.close()


class _Proxy:
    """The strict, fault-injecting, recording proxy; its server runs on its own thread and loop."""

    def __init__(
        self,
        *,
        upstream_host: str,
        upstream_port: int,
        region_name: str,
        registry_id: str,
        min_part_size: int,
        part_size: int | None,
        faults: FaultPlan,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._region_name = region_name
        self._registry_id = registry_id
        self.min_part_size = min_part_size
        self.part_size = part_size
        self._faults = faults
        # Guards everything the test thread reads: records, counters, uploads.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[RecordedRequest] = []
        self._calls: dict[str, int] = {}
        self._sequence = 0
        self._generation = 0
        self._in_flight = 0
        self._delays_started: set[tuple[str, int]] = set()
        self._uploads: dict[str, _Upload] = {}
        self._waiters: list[tuple[Callable[[_Proxy], bool], Callable[[], None]]] = []
        # Loop-thread only.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[_Reply]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle (caller's thread) --

    def start(self) -> None:
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="ecrstream-local-proxy", daemon=True
        )
        self._thread.start()
        try:
            self.port = started.result()
        except BaseException:
            self._thread.join()
            raise

    def stop(self) -> None:
        loop, stop_requested, thread = self._loop, self._stop_requested, self._thread
        if thread is None:
            return
        if loop is not None and stop_requested is not None and not loop.is_closed():
            # The loop may have closed since the check; then the thread is ending anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join()
        with self._lock:
            self._thread = None
            # Nothing will change any more: release async waiters (they raise RuntimeError).
            for _, wake in self._waiters:
                wake()
            self._waiters.clear()

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        try:
            asyncio.run(self._serve_until_stopped(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                logging.getLogger(__name__).exception("local ECR proxy failed")

    async def _serve_until_stopped(self, started: concurrent.futures.Future[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler (ends delays).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port: int = runner.addresses[0][1]
            started.set_result(port)
            await self._stop_requested.wait()
            for handler in list(self._handlers):
                handler.cancel()
        finally:
            await runner.cleanup()
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)

    # -- bookkeeping (any thread, under the lock) --

    def _begin(self, operation: str) -> _Exchange:
        with self._lock:
            self._sequence += 1
            call = self._calls.get(operation, 0) + 1
            self._calls[operation] = call
            self._in_flight += 1
            exchange = _Exchange(
                self._sequence,
                operation,
                call,
                self._faults._select(operation, call),
                self._generation,
            )
            self._notify()
        return exchange

    def _release(self, exchange: _Exchange) -> None:
        exchange.owners -= 1
        if exchange.owners:
            return
        with self._lock:
            # A straggler from before a reset must not pollute the next test's records.
            if exchange.generation == self._generation:
                self._records.append(exchange.record())
            self._in_flight -= 1
            self._notify()

    def reset(self, *, min_part_size: int, part_size: int | None) -> None:
        with self._lock:
            self._generation += 1
            self._records.clear()
            self._calls.clear()
            self._delays_started.clear()
            self._sequence = 0
            self.min_part_size = min_part_size
            self.part_size = part_size

    def requests(self, operation: str | None) -> list[RecordedRequest]:
        with self._lock:
            records = sorted(self._records, key=lambda record: record.sequence)
        if operation is None:
            return records
        return [record for record in records if record.operation == operation]

    def snapshot(self, upload_id: str) -> UploadSnapshot | None:
        with self._lock:
            upload = self._uploads.get(upload_id)
            return upload.snapshot() if upload is not None else None

    def forget(self, upload_id: str) -> _Upload | None:
        with self._lock:
            return self._uploads.pop(upload_id, None)

    # Predicates for the waits below; called under the lock.
    def arrived(self, operation: str, call: int) -> bool:
        return self._calls.get(operation, 0) >= call

    def delaying(self, operation: str, call: int) -> bool:
        return (operation, call) in self._delays_started

    def idle(self) -> bool:
        return self._in_flight == 0

    def wait(self, predicate: Callable[[_Proxy], bool], timeout: float, what: str) -> None:
        with self._lock:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"{what} within {timeout} s")

    async def wait_async(self, predicate: Callable[[_Proxy], bool]) -> None:
        loop = asyncio.get_running_loop()
        satisfied: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not satisfied.done():
                satisfied.set_result(None)

        def wake() -> None:  # on whichever thread changed the state, under the lock
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(settle)

        with self._lock:
            if predicate(self):
                return
            waiter = (predicate, wake)
            self._waiters.append(waiter)
        try:
            await satisfied
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if self._thread is None:
            raise RuntimeError("the local ECR endpoint stopped")

    def _notify(self) -> None:
        """Wake sync and async waiters whose condition now holds (call under the lock)."""
        self._changed.notify_all()
        for waiter in list(self._waiters):
            predicate, wake = waiter
            if predicate(self):
                self._waiters.remove(waiter)
                wake()

    def _current(self, upload: _Upload) -> bool:
        with self._lock:
            return self._uploads.get(upload.upload_id) is upload

    def _lookup(self, upload_id: str | None, repository_name: str | None) -> _Upload | None:
        with self._lock:
            upload = self._uploads.get(upload_id) if upload_id is not None else None
        if upload is None or upload.repository_name != repository_name:
            return None
        return upload

    # -- serving (proxy loop) --

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        exchange = self._begin(_operation_of(request.headers))
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._serve(request, exchange)
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._release(exchange)

    async def _serve(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        fault = exchange.fault
        kind = fault.kind if fault is not None else None
        if fault is not None and kind is FaultKind.RESET:
            await _read_some(request, fault.reset_after_bytes)
            _reset_connection(request)
            return web.Response()  # never sent: the connection is gone
        body = await request.read()
        if exchange.operation == Operation.UPLOAD_LAYER_PART:
            parsed = await asyncio.to_thread(_parse_part, body)
        else:
            parsed = _parse_fields(body)
        if parsed is not None:
            exchange.fill(parsed)
        if fault is not None and kind is FaultKind.DELAY:
            await self._delay(exchange, fault.delay_seconds)
        if fault is not None and kind in _ANSWERED_WITHOUT_FORWARDING:
            reply = self._fault_reply(fault.kind, exchange)
        else:
            reply = await self._apply_shielded(exchange, request, body, parsed)
            if kind is FaultKind.LOST_RESPONSE:
                _reset_connection(request)
                return web.Response()  # never sent: the connection is gone
            if fault is not None and kind is FaultKind.DELAY_AFTER_APPLY:
                await self._delay(exchange, fault.delay_seconds)
        exchange.answered(reply)
        return reply.to_response()

    async def _delay(self, exchange: _Exchange, seconds: float) -> None:
        with self._lock:
            if exchange.generation == self._generation:
                self._delays_started.add((exchange.operation, exchange.call))
                self._notify()
        await asyncio.sleep(seconds)

    def _fault_reply(self, kind: FaultKind, exchange: _Exchange) -> _Reply:
        if kind is FaultKind.HTTP_500:
            return _bare_500()
        if kind is FaultKind.SERVER_EXCEPTION:
            return _error("ServerException", "Injected server error.", status=500)
        if kind is FaultKind.THROTTLING:
            return _error("ThrottlingException", "Rate exceeded")
        return self._upload_not_found(exchange.upload_id, exchange.repository_name, None)

    async def _apply_shielded(
        self, exchange: _Exchange, request: web.Request, body: bytes, parsed: _Parsed | None
    ) -> _Reply:
        """Forward and apply as one unit that a client going away cannot interrupt."""
        work = asyncio.create_task(
            self._apply(exchange, _forwarded_headers(request.headers), body, parsed)
        )
        exchange.owners += 1
        self._background.add(work)

        def done(finished: asyncio.Task[_Reply]) -> None:
            self._background.discard(finished)
            self._release(exchange)

        # Registered before shield's own callback, so it runs first: the handler, resuming
        # after it, is the last owner and commits the record before the answer is sent.
        work.add_done_callback(done)
        return await asyncio.shield(work)

    async def _apply(
        self,
        exchange: _Exchange,
        headers: dict[str, str],
        body: bytes,
        parsed: _Parsed | None,
    ) -> _Reply:
        try:
            reply = await self._dispatch(exchange, headers, body, parsed)
        except Exception as exc:  # the upstream broke: answer like ECR's 500, never hang
            reply = _error("ServerException", f"local ECR proxy: {exc!r}", status=500)
        exchange.accepted = reply.from_upstream and 200 <= reply.status < 300
        return reply

    async def _dispatch(
        self,
        exchange: _Exchange,
        headers: dict[str, str],
        body: bytes,
        parsed: _Parsed | None,
    ) -> _Reply:
        operation = exchange.operation
        if parsed is None:
            if operation == Operation.UPLOAD_LAYER_PART:
                return _error("InvalidParameterException", "The request body is not valid JSON.")
            return await self._post_upstream(headers, body)
        if operation == Operation.INITIATE_LAYER_UPLOAD:
            return await self._initiate(exchange, headers, body, parsed)
        if operation == Operation.UPLOAD_LAYER_PART:
            return await self._upload_part(headers, body, parsed)
        if operation == Operation.COMPLETE_LAYER_UPLOAD:
            return await self._complete(headers, body, parsed)
        if operation == Operation.PUT_IMAGE:
            return await self._put_image(headers, body, parsed)
        return await self._post_upstream(headers, body)

    async def _post_upstream(self, headers: Mapping[str, str], body: bytes) -> _Reply:
        # http.client in a worker thread, not aiohttp: moto's answers repeat the Server header,
        # which aiohttp's strict parser (python -X dev) refuses.
        return await asyncio.to_thread(_post_blocking, self._upstream, headers, body)

    def _registry_of(self, parsed: _Parsed) -> str:
        return parsed.text("registryId") or self._registry_id

    def _upload_not_found(
        self, upload_id: str | None, repository_name: str | None, registry_id: str | None
    ) -> _Reply:
        return _error(
            "UploadNotFoundException",
            f"Upload with id '{upload_id}' could not be found for the repository with name "
            f"'{repository_name}' in the registry with id '{registry_id or self._registry_id}'",
        )

    async def _initiate(
        self, exchange: _Exchange, headers: dict[str, str], body: bytes, parsed: _Parsed
    ) -> _Reply:
        reply = await self._post_upstream(headers, body)
        repository_name = parsed.text("repositoryName")
        if reply.status != 200 or repository_name is None:
            return reply
        answer = json.loads(reply.body)
        upload_id = answer["uploadId"]
        match = _CREDENTIAL_REGION.search(headers.get("Authorization", ""))
        region_name = match.group(1) if match else self._region_name
        upload = _Upload(upload_id, repository_name, self._registry_of(parsed), region_name)
        with self._lock:
            self._uploads[upload_id] = upload
            part_size = self.part_size
        exchange.upload_id = upload_id
        if part_size is not None:
            answer["partSize"] = part_size
            reply = _Reply(reply.status, json.dumps(answer).encode(), reply.headers, True)
        return reply

    async def _upload_part(self, headers: dict[str, str], body: bytes, parsed: _Parsed) -> _Reply:
        repository_name = parsed.text("repositoryName")
        upload = self._lookup(parsed.text("uploadId"), repository_name)
        if upload is None:
            return self._upload_not_found(
                parsed.text("uploadId"), repository_name, parsed.text("registryId")
            )
        async with upload.lock:
            if not self._current(upload):
                return self._upload_not_found(upload.upload_id, repository_name, None)
            problem = self._part_problem(upload, parsed)
            if problem is not None:
                return _error(
                    "InvalidLayerPartException",
                    problem,
                    registryId=upload.registry_id,
                    repositoryName=upload.repository_name,
                    uploadId=upload.upload_id,
                    lastValidByteReceived=upload.last_byte_received,
                )
            reply = await self._post_upstream(headers, body)
            if reply.status == 200 and parsed.blob is not None:
                # Hash into a copy and swap under the lock: a snapshot never sees a digest
                # ahead of part_sizes.
                hasher = upload.hasher.copy()
                await asyncio.to_thread(hasher.update, parsed.blob)
                with self._lock:
                    upload.hasher = hasher
                    upload.part_sizes.append(len(parsed.blob))
                    upload.last_byte_received += len(parsed.blob)
            return reply

    @staticmethod
    def _part_problem(upload: _Upload, parsed: _Parsed) -> str | None:
        blob = parsed.blob
        first, last = parsed.integer("partFirstByte"), parsed.integer("partLastByte")
        if blob is None:
            return "The layer part blob is missing or not valid base64."
        if len(blob) > MAX_PART_SIZE:
            return f"The layer part is {len(blob)} bytes, over the {MAX_PART_SIZE} byte limit."
        if not blob:
            return "The layer part is empty."
        if first is None or last is None or last - first + 1 != len(blob):
            return f"The byte range {first}-{last} does not match the {len(blob)} byte layer part."
        if first != upload.last_byte_received + 1:
            return (
                f"The layer part starts at byte {first}; the next expected byte is "
                f"{upload.last_byte_received + 1}."
            )
        return None

    async def _complete(self, headers: dict[str, str], body: bytes, parsed: _Parsed) -> _Reply:
        repository_name = parsed.text("repositoryName")
        upload = self._lookup(parsed.text("uploadId"), repository_name)
        if upload is None:
            return self._upload_not_found(
                parsed.text("uploadId"), repository_name, parsed.text("registryId")
            )
        async with upload.lock:
            if not self._current(upload):
                return self._upload_not_found(upload.upload_id, repository_name, None)
            if not upload.part_sizes:
                return _error(
                    "EmptyUploadException",
                    f"The upload with id '{upload.upload_id}' contains no layer parts.",
                )
            with self._lock:
                min_part_size = self.min_part_size
            too_small = [
                number
                for number, size in enumerate(upload.part_sizes[:-1], start=1)
                if size < min_part_size
            ]
            if too_small:
                return _error(
                    "LayerPartTooSmallException",
                    f"Layer part(s) {too_small} of upload '{upload.upload_id}' are smaller "
                    f"than the minimum of {min_part_size} bytes (only the last may be).",
                )
            digest = "sha256:" + upload.hasher.hexdigest()
            if parsed.texts("layerDigests") != (digest,):
                return _error(
                    "InvalidLayerException",
                    f"The layer digests {list(parsed.texts('layerDigests'))} do not match "
                    f"the computed digest '{digest}' of the uploaded bytes.",
                )
            found = await self._available_layers(
                headers, repository_name, parsed.text("registryId"), [digest]
            )
            if isinstance(found, _Reply):
                return found
            if digest in found:
                return _error(
                    "LayerAlreadyExistsException",
                    f"The layer with digest '{digest}' already exists in the repository "
                    f"with name '{repository_name}' in the registry with id "
                    f"'{upload.registry_id}'.",
                )
            reply = await self._post_upstream(headers, body)
            if reply.status == 200:
                self.forget(upload.upload_id)
            return reply

    async def _available_layers(
        self,
        headers: dict[str, str],
        repository_name: str | None,
        registry_id: str | None,
        digests: list[str],
    ) -> set[str] | _Reply:
        """Ask upstream which of these digests it has; an upstream error comes back as is."""
        available: set[str] = set()
        check_headers = {**headers, "X-Amz-Target": _TARGET_PREFIX + "BatchCheckLayerAvailability"}
        for start in range(0, len(digests), 100):  # ECR's limit per call
            request: dict[str, Any] = {
                "repositoryName": repository_name,
                "layerDigests": digests[start : start + 100],
            }
            if registry_id is not None:
                request["registryId"] = registry_id
            reply = await self._post_upstream(check_headers, json.dumps(request).encode())
            if reply.status != 200:
                return reply
            for layer in json.loads(reply.body).get("layers", []):
                if layer.get("layerAvailability") == "AVAILABLE":
                    available.add(layer["layerDigest"])
        return available

    async def _put_image(self, headers: dict[str, str], body: bytes, parsed: _Parsed) -> _Reply:
        manifest = parsed.text("imageManifest")
        if manifest is None:
            return await self._post_upstream(headers, body)
        digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        given = parsed.text("imageDigest")
        if given is not None and given != digest:
            return _error(
                "ImageDigestDoesNotMatchException",
                f"The imageDigest '{given}' does not match the digest '{digest}' of the manifest.",
            )
        try:
            document = json.loads(manifest)
        except ValueError:
            return _error(
                "InvalidParameterException",
                "Invalid parameter at 'imageManifest' failed to satisfy constraint: "
                "'Invalid JSON syntax'",
            )
        referenced = _referenced_blobs(document)
        # With nothing to look up, the placeholder still proves the repository exists
        # (moto answers an unknown repository's PutImage with a bare 500).
        found = await self._available_layers(
            headers,
            parsed.text("repositoryName"),
            parsed.text("registryId"),
            referenced or ["sha256:" + "0" * 64],
        )
        if isinstance(found, _Reply):
            return found
        missing = [blob for blob in referenced if blob not in found]
        if missing:
            return _error(
                "LayersNotFoundException",
                f"Layers with digests {missing} required for pushing the image into the "
                f"repository with name '{parsed.text('repositoryName')}' do not exist.",
            )
        # moto derives its own digest unless told; tell it the one ECR would compute.
        forwarded = json.dumps({**parsed.fields, "imageDigest": digest}).encode()
        return await self._post_upstream(headers, forwarded)


def _referenced_blobs(document: object) -> list[str]:
    """The config and layer digests a manifest needs in the repository (none for an index)."""
    if not isinstance(document, dict):
        return []
    blobs: list[str] = []
    config = document.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        blobs.append(config["digest"])
    layers = document.get("layers")
    if isinstance(layers, list):
        for layer in layers:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                blobs.append(layer["digest"])
    return list(dict.fromkeys(blobs))


class _MuteAccessLog(logging.Filter):
    """Drops werkzeug's per-request INFO lines (moto's server logs every request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_mute_lock = threading.Lock()
_mute_users = 0
_MUTE = _MuteAccessLog()


def _mute_werkzeug(on: bool) -> None:
    global _mute_users
    with _mute_lock:
        _mute_users += 1 if on else -1
        logger = logging.getLogger("werkzeug")
        if on and _mute_users == 1:
            logger.addFilter(_MUTE)
        elif not on and _mute_users == 0:
            logger.removeFilter(_MUTE)


class LocalEcr:
    """The local ECR endpoint: moto's server on 127.0.0.1 behind the strict proxy.

    A sync and async context manager (``start()``/``stop()`` by hand work too); one instance
    starts once. Every method is thread-safe. See the module docstring for the rules, faults
    and records.
    """

    def __init__(
        self,
        *,
        region_name: str = "us-east-1",
        min_part_size: int = DEFAULT_MIN_PART_SIZE,
        part_size: int | None = None,
    ) -> None:
        """Configure (nothing starts yet).

        ``min_part_size``: every part but the last must have at least this many bytes at
        CompleteLayerUpload. ``part_size``: the partSize InitiateLayerUpload returns (None:
        moto's 10 MiB, as ECR). Both can be changed while running; ``reset()`` restores these.
        Raises ValueError for a min_part_size under 1 or a part_size outside [1, MAX_PART_SIZE].
        """
        _check_sizes(min_part_size, part_size)
        self._region_name = region_name
        self._initial_min_part_size = min_part_size
        self._initial_part_size = part_size
        self.faults = FaultPlan()
        self._lifecycle = threading.Lock()
        self._moto: Any = None
        self._proxy: _Proxy | None = None
        self._upstream_url: str | None = None
        self._repository_client: Any = None
        self._used = False

    # -- lifecycle --

    def start(self) -> None:
        """Start moto and the proxy; returns once both accept connections.

        Raises RuntimeError if this instance was started before.
        """
        with self._lifecycle:
            if self._used:
                raise RuntimeError("a LocalEcr starts once; create a new one")
            self._used = True
            _mute_werkzeug(True)
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            try:
                moto.start()
                host, port = moto.get_host_and_port()
                upstream_url = f"http://{host}:{port}"
                proxy = _Proxy(
                    upstream_host=host,
                    upstream_port=port,
                    region_name=self._region_name,
                    registry_id=DEFAULT_ACCOUNT_ID,
                    min_part_size=self._initial_min_part_size,
                    part_size=self._initial_part_size,
                    faults=self.faults,
                )
                proxy.start()
            except BaseException:
                moto.stop()
                _mute_werkzeug(False)
                raise
            self._moto, self._proxy, self._upstream_url = moto, proxy, upstream_url

    def stop(self) -> None:
        """Stop both servers and join their threads; ports are closed on return. Idempotent.

        Requests still delayed are cut short; work already forwarded upstream finishes first.
        """
        with self._lifecycle:
            proxy, moto, client = self._proxy, self._moto, self._repository_client
            self._proxy = self._moto = self._repository_client = None
            if proxy is None:
                return
            try:
                proxy.stop()
                if client is not None:
                    client.close()
            finally:
                moto.stop()
                _mute_werkzeug(False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    @property
    def running(self) -> bool:
        """Whether the endpoint is started and not yet stopped."""
        return self._proxy is not None

    def _running_proxy(self) -> _Proxy:
        proxy = self._proxy
        if proxy is None:
            raise RuntimeError("the local ECR endpoint is not running; use start() or `with`")
        return proxy

    # -- connection details --

    @property
    def endpoint_url(self) -> str:
        """The proxy's URL: what clients should use. Raises RuntimeError unless running."""
        return f"http://127.0.0.1:{self._running_proxy().port}"

    @property
    def upstream_url(self) -> str:
        """moto's own URL (no strict rules, no faults, no records). RuntimeError unless running."""
        self._running_proxy()
        assert self._upstream_url is not None
        return self._upstream_url

    @property
    def region_name(self) -> str:
        """The region clients should sign for."""
        return self._region_name

    @property
    def registry_id(self) -> str:
        """The registry (account) id moto serves for the dummy credentials."""
        return str(DEFAULT_ACCOUNT_ID)

    def client_kwargs(self) -> ClientKwargs:
        """Keyword arguments for ``session.create_client("ecr", **kwargs)`` (aiobotocore or
        botocore): region, the proxy's endpoint_url and dummy credentials, never real ones.
        """
        return ClientKwargs(
            region_name=self._region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=_DUMMY_SECRET_ACCESS_KEY,
        )

    # -- settings --

    @property
    def min_part_size(self) -> int:
        """The minimum size of every part but the last, enforced at CompleteLayerUpload."""
        return self._running_proxy().min_part_size

    @min_part_size.setter
    def min_part_size(self, value: int) -> None:
        _check_sizes(value, None)
        proxy = self._running_proxy()
        with proxy._lock:
            proxy.min_part_size = value

    @property
    def part_size(self) -> int | None:
        """The partSize InitiateLayerUpload returns; None: moto's (10 MiB, as ECR)."""
        return self._running_proxy().part_size

    @part_size.setter
    def part_size(self, value: int | None) -> None:
        _check_sizes(1, value)
        proxy = self._running_proxy()
        with proxy._lock:
            proxy.part_size = value

    # -- state --

    def create_repository(self, repository_name: str) -> str:
        """Create a repository directly upstream (not recorded, no faults); returns its URI.

        Raises botocore's ClientError (e.g. RepositoryAlreadyExistsException).
        """
        with self._lifecycle:
            if self._repository_client is None:
                self._repository_client = botocore.session.get_session().create_client(
                    "ecr",
                    region_name=self._region_name,
                    endpoint_url=self.upstream_url,
                    config=Config(retries={"max_attempts": 1, "mode": "standard"}),
                    aws_access_key_id=_DUMMY_ACCESS_KEY_ID,
                    aws_secret_access_key=_DUMMY_SECRET_ACCESS_KEY,
                )
            client = self._repository_client
        answer = client.create_repository(repositoryName=repository_name)
        return str(answer["repository"]["repositoryUri"])

    def forget_upload(self, upload_id: str) -> bool:
        """Make an open upload disappear, in the proxy and in moto, as when ECR expires it.

        Later parts and completion get UploadNotFoundException. Returns False if the proxy
        did not know the upload (never initiated, completed or forgotten before).
        """
        upload = self._running_proxy().forget(upload_id)
        if upload is None:
            return False
        # moto keeps the bytes of open uploads in memory; free them too.
        from moto.ecr.models import ecr_backends

        try:
            backend = ecr_backends[upload.registry_id][upload.region_name]
            backend.repositories[upload.repository_name].uploads.pop(upload_id, None)
        except KeyError:
            pass
        return True

    def upload(self, upload_id: str) -> UploadSnapshot | None:
        """The proxy's view of an open upload, or None if unknown, completed or forgotten."""
        return self._running_proxy().snapshot(upload_id)

    def reset(self) -> None:
        """Clear faults, records and call counters; restore min_part_size and part_size.

        Open uploads, repositories and layers stay. Requests still in flight are not recorded.
        """
        proxy = self._running_proxy()
        self.faults.clear()
        proxy.reset(min_part_size=self._initial_min_part_size, part_size=self._initial_part_size)

    # -- records --

    def requests(self, operation: str | None = None) -> list[RecordedRequest]:
        """Records since the last reset, in arrival order; only ``operation``'s if given."""
        return self._running_proxy().requests(operation)

    def accepted_parts(self, upload_id: str) -> list[RecordedRequest]:
        """The UploadLayerPart records of ``upload_id`` that were applied, in arrival order."""
        return [
            record
            for record in self.requests(Operation.UPLOAD_LAYER_PART)
            if record.upload_id == upload_id and record.accepted
        ]

    def wait_for_request(self, operation: str, *, call: int = 1, timeout: float = 10.0) -> None:
        """Block until call number ``call`` of ``operation`` has reached the proxy.

        Raises TimeoutError. From a coroutine, use ``wait_for_request_async``.
        """
        self._running_proxy().wait(
            lambda proxy: proxy.arrived(operation, call),
            timeout,
            f"call {call} of {operation} did not reach the proxy",
        )

    def wait_for_delay(self, operation: str, *, call: int = 1, timeout: float = 10.0) -> None:
        """Block until call number ``call`` of ``operation`` sleeps in its DELAY fault.

        For DELAY_AFTER_APPLY that is after the request was applied. The point to cancel a
        client at. Raises TimeoutError. From a coroutine, use ``wait_for_delay_async``.
        """
        self._running_proxy().wait(
            lambda proxy: proxy.delaying(operation, call),
            timeout,
            f"call {call} of {operation} did not start a delay",
        )

    def wait_idle(self, *, timeout: float = 10.0) -> None:
        """Block until no request is in flight (all recorded). Raises TimeoutError.

        From a coroutine, use ``wait_idle_async``: blocking the loop would keep its client
        from closing connections the proxy waits on.
        """
        self._running_proxy().wait(lambda proxy: proxy.idle(), timeout, "requests in flight")

    async def wait_for_request_async(self, operation: str, *, call: int = 1) -> None:
        """Wait until call number ``call`` of ``operation`` has reached the proxy.

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.arrived(operation, call))

    async def wait_for_delay_async(self, operation: str, *, call: int = 1) -> None:
        """Wait until call number ``call`` of ``operation`` sleeps in its DELAY fault.

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.delaying(operation, call))

    async def wait_idle_async(self) -> None:
        """Wait until no request is in flight (all recorded).

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.idle())


def _check_sizes(min_part_size: int, part_size: int | None) -> None:
    if min_part_size < 1:
        raise ValueError(f"min_part_size must be at least 1 byte, got {min_part_size}")
    if part_size is not None and not 1 <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must lie in [1, {MAX_PART_SIZE}], got {part_size}")
