"""The aiohttp proxy in front of moto: strict rules, injected faults, a record of every call.

It runs in its own thread with its own event loop, so sync and async callers use it alike.
The apply of a request (its checks, its bytes, moto's answer) and the update of the proxy's
state form one unit that a client going away never interrupts, so the proxy, its store and
moto always agree. Records are committed once the proxy is done with a request and before
the client reads its answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ecrstream.local.faults import (
    ANSWERED_WITHOUT_APPLYING,
    Exchange,
    Fault,
    FaultKind,
    FaultPlan,
    Operation,
    RecordedRequest,
)
from ecrstream.local.protocol import (
    MAX_BODY,
    Parsed,
    Reply,
    bare_500,
    error,
    operation_of,
    parse_fields,
    parse_part,
    read_body,
)
from ecrstream.local.registry import Access, Registry
from ecrstream.local.rules import Rules
from ecrstream.local.store import BlobStore
from ecrstream.local.upstream import Upstream, forwarded_headers

_log = logging.getLogger(__name__)


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


def _fill(exchange: Exchange, parsed: Parsed) -> None:
    exchange.repository_name = parsed.text("repositoryName")
    exchange.upload_id = parsed.text("uploadId")
    exchange.part_first_byte = parsed.integer("partFirstByte")
    exchange.part_last_byte = parsed.integer("partLastByte")
    exchange.layer_digests = parsed.texts("layerDigests")
    if parsed.blob is not None:
        exchange.blob_length = len(parsed.blob)
        exchange.blob_sha256 = parsed.blob_sha256


class Proxy:
    """The strict, fault-injecting, recording proxy; its server runs on its own thread and loop."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        store: BlobStore,
        region_name: str,
        registry_id: str,
        min_part_size: int,
        part_size: int | None,
        faults: FaultPlan,
        port: int = 0,
    ) -> None:
        self._faults = faults
        self._requested_port = port
        # Guards everything other threads read: records, counters, uploads, settings.
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self.access = Access()
        self._registry = Registry(upstream, store, self.access, region_name=region_name)
        self.rules = Rules(
            upstream,
            store,
            self.access,
            self.lock,
            region_name=region_name,
            registry_id=registry_id,
            min_part_size=min_part_size,
            part_size=part_size,
        )
        self._records: list[RecordedRequest] = []
        self._calls: dict[str, int] = {}
        self._sequence = 0
        self._generation = 0
        self._in_flight = 0
        self._delays_started: set[tuple[str, int]] = set()
        self._waiters: list[tuple[Callable[[Proxy], bool], Callable[[], None]]] = []
        # Loop-thread only.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Reply]] = set()
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
        with self.lock:
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
                _log.exception("local ECR proxy failed")

    async def _serve_until_stopped(self, started: concurrent.futures.Future[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY)
        self._registry.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler (ends delays).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self._requested_port)
            await site.start()
            port: int = runner.addresses[0][1]
            self.access.base_url = f"http://127.0.0.1:{port}"
            started.set_result(port)
            await self._stop_requested.wait()
            for handler in list(self._handlers):
                handler.cancel()
        finally:
            await runner.cleanup()
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)

    # -- bookkeeping (any thread, under the lock) --

    def _begin(self, operation: str) -> Exchange:
        with self.lock:
            self._sequence += 1
            call = self._calls.get(operation, 0) + 1
            self._calls[operation] = call
            self._in_flight += 1
            exchange = Exchange(
                self._sequence,
                operation,
                call,
                self._faults.select(operation, call),
                self._generation,
            )
            self._notify()
        return exchange

    def _release(self, exchange: Exchange) -> None:
        exchange.owners -= 1
        if exchange.owners:
            return
        with self.lock:
            # A straggler from before a reset must not pollute the next test's records.
            if exchange.generation == self._generation:
                self._records.append(exchange.record())
            self._in_flight -= 1
            self._notify()

    def reset(self, *, min_part_size: int, part_size: int | None) -> None:
        with self.lock:
            self._generation += 1
            self._records.clear()
            self._calls.clear()
            self._delays_started.clear()
            self._sequence = 0
            self.rules.min_part_size = min_part_size
            self.rules.part_size = part_size

    def requests(self, operation: str | None) -> list[RecordedRequest]:
        with self.lock:
            records = sorted(self._records, key=lambda record: record.sequence)
        if operation is None:
            return records
        return [record for record in records if record.operation == operation]

    # Predicates for the waits below; called under the lock.
    def arrived(self, operation: str, call: int) -> bool:
        return self._calls.get(operation, 0) >= call

    def delaying(self, operation: str, call: int) -> bool:
        return (operation, call) in self._delays_started

    def idle(self) -> bool:
        return self._in_flight == 0

    def wait(self, predicate: Callable[[Proxy], bool], timeout: float, what: str) -> None:
        with self.lock:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"{what} within {timeout} s")

    async def wait_async(self, predicate: Callable[[Proxy], bool]) -> None:
        loop = asyncio.get_running_loop()
        satisfied: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not satisfied.done():
                satisfied.set_result(None)

        def wake() -> None:  # on whichever thread changed the state, under the lock
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(settle)

        with self.lock:
            if predicate(self):
                return
            waiter = (predicate, wake)
            self._waiters.append(waiter)
        try:
            await satisfied
        finally:
            with self.lock:
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

    # -- serving (proxy loop) --

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        exchange = self._begin(operation_of(request.headers))
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._serve(request, exchange)
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._release(exchange)

    async def _serve(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        fault = exchange.fault
        kind = fault.kind if fault is not None else None
        if fault is not None and kind is FaultKind.RESET:
            await _read_some(request, fault.reset_after_bytes)
            _reset_connection(request)
            return web.Response()  # never sent: the connection is gone
        if exchange.operation == Operation.UPLOAD_LAYER_PART:
            # The part's bytes go to the store, never upstream: keep only the decoded blob.
            parsed = await asyncio.to_thread(parse_part, await read_body(request))
            body = b""
        else:
            body = await request.read()
            parsed = parse_fields(body)
        if parsed is not None:
            _fill(exchange, parsed)
        if fault is not None and kind is FaultKind.DELAY:
            await self._delay(exchange, fault.delay_seconds)
        if fault is not None and kind in ANSWERED_WITHOUT_APPLYING:
            reply = self._fault_reply(fault, exchange)
        else:
            reply = await self._apply_shielded(exchange, request, body, parsed)
            if kind is FaultKind.LOST_RESPONSE:
                _reset_connection(request)
                return web.Response()  # never sent: the connection is gone
            if fault is not None and kind is FaultKind.DELAY_AFTER_APPLY:
                await self._delay(exchange, fault.delay_seconds)
        exchange.status = reply.status
        exchange.error_code = reply.error_code
        return reply.to_response()

    async def _delay(self, exchange: Exchange, seconds: float) -> None:
        with self.lock:
            if exchange.generation == self._generation:
                self._delays_started.add((exchange.operation, exchange.call))
                self._notify()
        await asyncio.sleep(seconds)

    def _fault_reply(self, fault: Fault, exchange: Exchange) -> Reply:
        if fault.kind is FaultKind.HTTP_500:
            return bare_500()
        if fault.kind is FaultKind.SERVER_EXCEPTION:
            return error("ServerException", "Injected server error.", status=500)
        if fault.kind is FaultKind.THROTTLING:
            return error("ThrottlingException", "Rate exceeded")
        return self.rules.upload_not_found(exchange.upload_id, exchange.repository_name, None)

    async def _apply_shielded(
        self, exchange: Exchange, request: web.Request, body: bytes, parsed: Parsed | None
    ) -> Reply:
        """Apply as one unit that a client going away cannot interrupt."""
        work = asyncio.create_task(
            self._apply(exchange, forwarded_headers(request.headers), body, parsed)
        )
        exchange.owners += 1
        self._background.add(work)

        def done(finished: asyncio.Task[Reply]) -> None:
            self._background.discard(finished)
            self._release(exchange)

        # Registered before shield's own callback, so it runs first: the handler, resuming
        # after it, is the last owner and commits the record before the answer is sent.
        work.add_done_callback(done)
        return await asyncio.shield(work)

    async def _apply(
        self, exchange: Exchange, headers: dict[str, str], body: bytes, parsed: Parsed | None
    ) -> Reply:
        reply = await self.rules.apply(exchange, headers, body, parsed)
        exchange.accepted = reply.applied and 200 <= reply.status < 300
        return reply
