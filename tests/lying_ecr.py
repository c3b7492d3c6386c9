"""A proxy in front of the local ECR endpoint that tells the lies it is given.

ECR can never truthfully claim bytes the client never sent, nor refuse a part that starts at
the very byte it asks for. A broken proxy, emulator or middlebox can. ``LyingEcr`` is such a
middlebox, on 127.0.0.1 in a thread of its own (with its own event loop, so the client's loop
sees none of its tasks): it forwards every request to a ``LocalEcr`` and answers with what
the endpoint said, unless a ``Lie`` for that operation picks the exchange, in which case the
lie's ``Reply`` is sent instead, either without forwarding (the request never reaches ECR)
or after it (the request was applied; only the answer lies).

It records, per upload, the bytes the client sent (``sent_end``: the end of the furthest
part that reached it), so a test can say what a checkpoint may claim at most, and the Host
header of every request (``hosts``). With ``ssl`` (a server context) it speaks HTTPS and
counts the TLS handshakes that reached it (``handshakes``, by SNI: use a host name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl as ssl_module
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from ecrstream.local import LocalEcr

_TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
_FIELD = {
    name: re.compile(rb'"' + name.encode() + rb'":\s*(?:"([^"]*)"|(-?\d+))')
    for name in ("uploadId", "repositoryName", "registryId", "partFirstByte", "partLastByte")
}
_HEAD = 4096  # the small fields come before the blob in every UploadLayerPart body


@dataclass(frozen=True)
class Exchange:
    """One request the proxy got, and (for a lie told after forwarding) ECR's answer."""

    operation: str
    call: int
    """1-based, per operation."""
    upload_id: str | None
    repository_name: str | None
    part_first_byte: int | None
    part_last_byte: int | None
    status: int | None = None
    answer: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    """What to answer instead: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


@dataclass
class Lie:
    """Answer ``operation`` with ``reply(exchange)`` (None: the truth), ``times`` times at most.

    ``forward``: the request reaches ECR first (it is applied), and only its answer lies.
    """

    operation: str
    reply: Callable[[Exchange], Reply | None]
    forward: bool = False
    times: int | None = None
    told: int = 0


def invalid_part(exchange: Exchange, last_valid_byte_received: int) -> Reply:
    """ECR's InvalidLayerPartException, claiming to hold bytes up to ``last_valid...``."""
    return Reply(
        400,
        {
            "__type": "InvalidLayerPartException",
            "message": "The layer part is not valid (a lie).",
            "lastValidByteReceived": last_valid_byte_received,
            "uploadId": exchange.upload_id,
            "repositoryName": exchange.repository_name,
            "registryId": "123456789012",
        },
    )


def part_taken(exchange: Exchange, last_byte_received: int) -> Reply:
    """A 200 for UploadLayerPart claiming ECR now holds bytes up to ``last_byte_received``."""
    return Reply(
        200,
        {
            "uploadId": exchange.upload_id,
            "repositoryName": exchange.repository_name,
            "registryId": "123456789012",
            "lastByteReceived": last_byte_received,
        },
    )


@dataclass
class _State:
    lies: list[Lie] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    sent_end: dict[str, int] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    told: int = 0
    handshakes: int = 0


class LyingEcr:
    """A lying middlebox in front of ``upstream`` (see the module docstring)."""

    def __init__(self, upstream: LocalEcr, *, ssl: ssl_module.SSLContext | None = None) -> None:
        self.upstream = upstream
        self._ssl = ssl
        if ssl is not None:
            ssl.sni_callback = self._count_handshake
        self._state = _State()
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lying-ecr", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.endpoint_url = ""

    def __enter__(self) -> LyingEcr:
        self._thread.start()
        if not self._started.wait(30) or not self.endpoint_url:
            raise RuntimeError("the lying proxy did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)

    def client_kwargs(self) -> dict[str, Any]:
        """What ``EcrClient.create`` needs to talk to ECR through this proxy."""
        return {**self.upstream.client_kwargs(), "endpoint_url": self.endpoint_url}

    def lie(
        self,
        operation: str,
        reply: Callable[[Exchange], Reply | None],
        *,
        forward: bool = False,
        times: int | None = None,
    ) -> Lie:
        """Tell ``reply``'s lie to requests of ``operation`` from now on (see ``Lie``)."""
        lie = Lie(operation, reply, forward, times)
        with self._lock:
            self._state.lies.append(lie)
        return lie

    def _count_handshake(self, *_: object) -> None:
        with self._lock:
            self._state.handshakes += 1

    @property
    def handshakes(self) -> int:
        """TLS handshakes begun with this proxy (HTTPS only)."""
        with self._lock:
            return self._state.handshakes

    @property
    def hosts(self) -> list[str]:
        """The Host header of every request that reached the proxy, in order."""
        with self._lock:
            return list(self._state.hosts)

    @property
    def port(self) -> int:
        """The proxy's TCP port on 127.0.0.1."""
        return int(self.endpoint_url.rsplit(":", 1)[1])

    @property
    def told(self) -> int:
        """How many lies were told so far."""
        with self._lock:
            return self._state.told

    def sent_end(self, upload_id: str) -> int:
        """The end of the furthest part of ``upload_id`` that reached the proxy (0: none)."""
        with self._lock:
            return self._state.sent_end.get(upload_id, 0)

    # -- the server, in its own thread ------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            self._started.set()  # a failed start: __enter__ says so at once
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        async with aiohttp.ClientSession() as session:

            async def handle(request: web.Request) -> web.Response:
                return await self._handle(request, session)

            app.router.add_post("/", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl)
            await site.start()
            port = runner.addresses[0][1]
            scheme = "http" if self._ssl is None else "https"
            self.endpoint_url = f"{scheme}://127.0.0.1:{port}"
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def _exchange(self, operation: str, body: bytes) -> Exchange:
        head = body[:_HEAD]
        values: dict[str, str | int | None] = {}
        for name, pattern in _FIELD.items():
            match = pattern.search(head)
            if match is None:
                values[name] = None
            elif match.group(1) is not None:
                values[name] = match.group(1).decode()
            else:
                values[name] = int(match.group(2))
        with self._lock:
            call = self._state.calls.get(operation, 0) + 1
            self._state.calls[operation] = call
            upload_id, last = values["uploadId"], values["partLastByte"]
            is_part = operation == "UploadLayerPart"
            if is_part and isinstance(upload_id, str) and isinstance(last, int):
                ends = self._state.sent_end
                ends[upload_id] = max(ends.get(upload_id, 0), last + 1)
        first = values["partFirstByte"]
        return Exchange(
            operation=operation,
            call=call,
            upload_id=upload_id if isinstance(upload_id, str) else None,
            repository_name=str(values["repositoryName"]) if values["repositoryName"] else None,
            part_first_byte=first if isinstance(first, int) else None,
            part_last_byte=last if isinstance(last, int) else None,
        )

    def _pick(self, exchange: Exchange, forwarded: bool) -> Reply | None:
        with self._lock:
            for lie in self._state.lies:
                if lie.operation != exchange.operation or lie.forward != forwarded:
                    continue
                if lie.times is not None and lie.told >= lie.times:
                    continue
                reply = lie.reply(exchange)
                if reply is not None:
                    lie.told += 1
                    self._state.told += 1
                    return reply
        return None

    async def _handle(self, request: web.Request, session: aiohttp.ClientSession) -> web.Response:
        body = await request.read()
        with self._lock:
            self._state.hosts.append(request.headers.get("Host", ""))
        target = request.headers.get("X-Amz-Target", "")
        operation = target.removeprefix(_TARGET_PREFIX)
        exchange = self._exchange(operation, body)
        reply = self._pick(exchange, forwarded=False)
        if reply is not None:
            return _respond(reply)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in {"host", "content-length", "transfer-encoding"}
        }
        async with session.post(self.upstream.endpoint_url, data=body, headers=headers) as upstream:
            status, raw = upstream.status, await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/x-amz-json-1.1")
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            answered = dataclasses.replace(exchange, status=status, answer=answer)
            told = self._pick(answered, forwarded=True)
            if told is not None:
                return _respond(told)
        return web.Response(status=status, body=raw, headers={"Content-Type": content_type})


def _respond(reply: Reply) -> web.Response:
    return web.Response(
        status=reply.status,
        body=json.dumps(reply.body).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )
