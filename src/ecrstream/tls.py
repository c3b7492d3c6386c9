"""HTTPS for aiobotocore with the encryption off the event loop thread.

asyncio's TLS transport encrypts inside ``transport.write()``, on the loop thread: every
1 MiB slice of a part body is encrypted into a memory BIO (zero-filled first), copied out
into a new bytes object and copied again into the socket transport's buffer before the
kernel copies it once more. Over HTTPS that work (~1.2 CPU-s per GiB of layer here) doubles
the loop thread's load, and while it runs nothing else on the loop runs: the loop stalls,
and the worker threads that hash and encode the next part wait for it.

``TlsHttpSession`` (an aiobotocore HTTP session class) makes its HTTPS connections with
``OffloopTlsTransport`` instead: the TCP connection is made by aiohttp as usual, the TLS
handshake is done on a blocking socket in a worker thread, and then a writer thread per
connection encrypts and sends straight to the socket (OpenSSL's socket BIO: no memory BIO,
no intermediate copies; the GIL is released while OpenSSL encrypts and writes). The loop
thread only queues the buffers it is given and reads the (small) responses. The bytes on the
wire are the same TLS records any client would send: what botocore signs and sends is not
touched.

Set ``ECRSTREAM_ASYNCIO_TLS=1`` to use asyncio's TLS transport instead (to compare).
Connections through a proxy always use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import socket
import ssl
import threading
from typing import Any, Final, cast

import aiohttp
from aiobotocore import httpsession as _aiobotocore_httpsession
from aiobotocore.httpsession import AIOHTTPSession

__all__ = ["OffloopTlsTransport", "TlsHttpSession", "offload_enabled"]

# Bytes queued before the protocol is paused, and resumed. The queue holds references to the
# caller's buffers, not copies (a bytearray's copy is made whatever the limits), so a high
# mark above the largest UploadLayerPart body (20 MiB of part, 26.7 MiB of base64) costs no
# memory: aiohttp queues a whole body without waiting, where a 4 MiB mark made the loop
# thread pause and resume the request's body writer about four times per 10 MiB part.
_HIGH_WATER: Final = 32 * 1024 * 1024
_LOW_WATER: Final = _HIGH_WATER // 4
_READ_SIZE: Final = 256 * 1024
# At most this much is encrypted per OpenSSL call, so a read on the loop thread waits for
# the connection's lock for well under a millisecond.
_WRITE_SLICE: Final = 256 * 1024
_POLL_MS: Final = 200  # how often a blocked writer looks for an abort
_CORK: Final = getattr(socket, "TCP_CORK", None)


def offload_enabled() -> bool:
    """Whether HTTPS connections encrypt off the loop (unset ``ECRSTREAM_ASYNCIO_TLS``)."""
    return os.environ.get("ECRSTREAM_ASYNCIO_TLS", "") in ("", "0")


class OffloopTlsTransport(asyncio.Transport):
    """An asyncio transport over a TLS socket whose writes happen in a thread of its own.

    ``write()`` keeps a reference to the buffer it is given until the writer thread has sent
    it (bytearrays are copied; bytes and memoryviews are not): the caller must not change a
    memoryview's bytes before the request is answered or the transport closed, which holds
    for aiohttp's request bodies. Reads run on the loop thread. One lock serialises OpenSSL
    calls on the connection (an SSL object is not thread-safe).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._ssl_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[memoryview] = collections.deque()  # under _cond
        self._queued = 0  # bytes in _queue, under _cond
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._stopping = False  # under _cond: the writer ends once the queue is empty
        self._aborted = False  # under _cond: the writer ends now, dropping the queue
        self._closing = False  # loop thread: close() or abort() was called
        self._paused = False  # loop thread: the protocol was told to pause writing
        # Under _cond: the loop paused the protocol and waits for the queue to fall to _low.
        # Only then does the writer thread wake the loop (one wake-up per pause, not one per
        # buffer sent: each costs the loop thread an iteration and a self-pipe read).
        self._resume_wanted = False
        self._reading = False
        self._finished = False
        self._error: Exception | None = None
        sock.setblocking(False)
        self._writer = threading.Thread(
            target=self._write_loop, name=f"ecrstream-tls-{self._fd}", daemon=True
        )
        self._writer.start()
        self._loop.call_soon(self._protocol.connection_made, self)
        self._loop.call_soon(self._start_reading)

    # asyncio.Transport ------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        with contextlib.suppress(OSError, ValueError, AttributeError):
            match name:
                case "socket" | "ssl_object":
                    return sock
                case "sslcontext":
                    return sock.context
                case "peercert":
                    return sock.getpeercert()
                case "cipher":
                    return sock.cipher()
                case "compression":
                    return sock.compression()
                case "peername":
                    return sock.getpeername()
                case "sockname":
                    return sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = _HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._queued

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if self._closing or not data:
            return
        # A bytearray may be changed by its owner as soon as write returns (as asyncio allows).
        view = memoryview(bytes(data) if isinstance(data, bytearray) else data).cast("B")
        with self._cond:
            self._queue.append(view)
            self._queued += len(view)
            pause = self._queued > self._high and not self._paused
            if pause:
                self._resume_wanted = True
            self._cond.notify()
        if pause:
            self._paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def close(self) -> None:
        """Send what is queued, then close the socket (the writer thread closes it)."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def abort(self) -> None:
        """Drop what is queued and close at once."""
        self._abort(None)

    # The loop thread --------------------------------------------------------------------

    def _abort(self, error: Exception | None) -> None:
        if self._error is None:
            self._error = error
        self._closing = True
        self._stop_reading()
        with self._cond:
            self._aborted = self._stopping = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify()
        # Wakes a writer blocked in poll(); the socket is closed once the writer has ended.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _start_reading(self) -> None:
        if not self._closing and not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _read_ready(self) -> None:
        chunks: list[bytes] = []
        eof = False
        try:
            while True:
                with self._ssl_lock:
                    data = self._sock.recv(_READ_SIZE)
                if not data:
                    eof = True
                    break
                chunks.append(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except OSError as exc:
            self._abort(exc)
            return
        if chunks:
            self._protocol.data_received(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if eof and not self._closing:
            self._stop_reading()
            keep_open = self._protocol.eof_received()
            if not keep_open:
                self.close()

    def _maybe_resume(self) -> None:
        if self._paused and self._queued <= self._low:
            self._paused = False
            self._protocol.resume_writing()

    def _writer_done(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._stop_reading()
        self._sock.close()
        self._protocol.connection_lost(self._error or error)

    # The writer thread ------------------------------------------------------------------

    def _cork(self, on: bool) -> None:
        # OpenSSL writes each 16 KiB record with its own send(): corked, the kernel joins
        # them into full segments while a burst lasts (fewer packets for both ends).
        if _CORK is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _CORK, int(on))

    def _write_loop(self) -> None:
        error: Exception | None = None
        corked = False
        try:
            while True:
                with self._cond:
                    if not self._queue and corked:
                        self._cork(False)
                        corked = False
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if self._aborted or not self._queue:
                        break
                    view = self._queue[0]
                if not corked and len(view) >= _WRITE_SLICE:
                    self._cork(True)
                    corked = True
                error = self._send(view)
                with self._cond:
                    if error is not None or self._aborted:
                        break
                    self._queue.popleft()
                    self._queued -= len(view)
                    resume = self._resume_wanted and self._queued <= self._low
                    if resume:
                        self._resume_wanted = False
                if resume:
                    self._loop.call_soon_threadsafe(self._maybe_resume)
        except Exception as exc:  # pragma: no cover - a bug here must not hang the loop
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._writer_done, error)

    def _send(self, view: memoryview) -> Exception | None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        for start in range(0, len(view), _WRITE_SLICE):
            piece = view[start : start + _WRITE_SLICE]
            while True:
                if self._aborted:
                    return None
                try:
                    with self._ssl_lock:
                        # Non-blocking: all of it, or SSLWantWriteError with part of it
                        # buffered by OpenSSL; the retry passes the same bytes (as it must).
                        self._sock.send(piece)
                    break
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    poller.poll(_POLL_MS)
                except OSError as exc:
                    return exc
        return None


async def _handshake(
    loop: asyncio.AbstractEventLoop,
    raw: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str | None,
    handshake_timeout_s: float | None,
) -> ssl.SSLSocket:
    """The TLS handshake on a blocking socket in a worker thread (a few ms of CPU)."""

    def handshake() -> ssl.SSLSocket:
        raw.settimeout(handshake_timeout_s)
        return context.wrap_socket(raw, server_hostname=server_hostname)

    future = loop.run_in_executor(None, handshake)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The thread goes on until the handshake ends or times out; close what it made then.
        future.add_done_callback(
            lambda done: done.exception() is None and done.result().close()  # type: ignore[func-returns-value]
        )
        raise


class _Handoff(asyncio.Protocol):
    """Holds the plain TCP connection aiohttp made until its socket is taken over."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


# The connector class aiobotocore builds (a TCPConnector subclass since aiobotocore 3).
_BaseConnector: type[aiohttp.TCPConnector] = getattr(
    _aiobotocore_httpsession, "_ProxySSLTCPConnector", aiohttp.TCPConnector
)


class _OffloopTlsConnector(_BaseConnector):  # type: ignore[misc,valid-type]
    """aiobotocore's connector, making direct HTTPS connections with OffloopTlsTransport."""

    async def _wrap_create_connection(
        self, protocol_factory: Any, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, Any]:
        context = kwargs.get("ssl")
        if not isinstance(context, ssl.SSLContext) or args or not offload_enabled():
            result: tuple[asyncio.Transport, Any] = await super()._wrap_create_connection(
                protocol_factory, *args, **kwargs
            )
            return result
        from aiohttp.client_exceptions import (
            ClientConnectorCertificateError,
            ClientConnectorSSLError,
        )

        req = kwargs["req"]
        server_hostname = kwargs.pop("server_hostname", None)
        kwargs["ssl"] = None
        # aiohttp connects (happy eyeballs, timeouts, its errors), then the socket is ours.
        plain, _ = await super()._wrap_create_connection(_Handoff, **kwargs)
        raw_sock = plain.get_extra_info("socket")
        raw = socket.socket(fileno=os.dup(raw_sock.fileno()))
        plain.abort()  # closes aiohttp's descriptor; the connection lives on in ours
        timeout = kwargs["timeout"].sock_connect
        try:
            sock = await _handshake(self._loop, raw, context, server_hostname, timeout)
        except ssl.CertificateError as exc:
            raw.close()
            raise ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raw.close()
            raise ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            raw.close()
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        except BaseException:
            raw.close()
            raise
        protocol = protocol_factory()
        transport = OffloopTlsTransport(self._loop, sock, protocol)
        return transport, protocol


class TlsHttpSession(AIOHTTPSession):
    """aiobotocore's aiohttp session whose direct HTTPS connections encrypt off the loop."""

    async def _create_connector(self, proxy_url: str | None) -> Any:
        # A method of aiobotocore 3's session (its type stubs do not know it); without it this
        # class is never asked, and every connection uses asyncio's TLS.
        connector = await cast(Any, super())._create_connector(proxy_url)
        if not proxy_url and type(connector) is _BaseConnector:
            # The same object, with _OffloopTlsConnector's way of connecting (no new state).
            connector.__class__ = _OffloopTlsConnector
        return connector
