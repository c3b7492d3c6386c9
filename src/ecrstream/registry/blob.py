"""Reading one blob from a registry: a ranged GET that survives source faults.

:class:`BlobReader` streams ``GET /v2/<repository>/blobs/<digest>`` (following the redirect to
storage most registries answer with) from any starting byte with ``Range: bytes=N-``. On a
fault (5xx, 429 with Retry-After, a reset connection, a body that stalls past the read
timeout or ends short of its Content-Length) it backs off and sends a new ranged GET from
the byte it reached, so no byte is read twice by the caller and none is skipped. A server
that ignores Range (200 instead of 206) is read from byte 0 and the prefix discarded. The
size is checked against the descriptor: more bytes, or a response that ends cleanly before
the end, is :class:`~ecrstream.errors.BlobSizeError`. The digest is the caller's to check
(it hashes the bytes anyway, and a reader that starts mid-blob cannot).
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import TYPE_CHECKING, Final

from ecrstream.cancellation import CancellationToken, cancellation_scope
from ecrstream.errors import BlobSizeError, InvalidArgumentError, RegistryError
from ecrstream.registry.auth import redacted_url
from ecrstream.registry.transport import Attempts, TransientFault, Transport
from ecrstream.retry import RetryPolicy

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BlobReader"]

_CONTENT_RANGE_RE: Final = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class BlobReader:
    """The bytes of one blob from ``position`` on; fill buffers with :meth:`readinto`.

    Get one from :meth:`RegistryClient.open_blob`, which has already sent the first GET. Use
    it from one task at a time; close it with :meth:`aclose` (or ``async with``).
    ``requests`` counts the GETs sent (1 + the resumes).
    """

    __slots__ = (
        "_attempts",
        "_closed",
        "_leftover",
        "_path",
        "_range_end",
        "_response",
        "_response_progress",
        "_scope",
        "_skip",
        "_token",
        "_transport",
        "digest",
        "position",
        "repository",
        "requests",
        "size",
    )

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy,
        repository: str,
        digest: str,
        size: int,
        offset: int,
        token: CancellationToken,
    ) -> None:
        """Internal: use :meth:`RegistryClient.open_blob`."""
        self._transport = transport
        self._attempts = Attempts(policy, token)
        self._token = token
        self.repository = repository
        self.digest = digest
        self.size = size
        #: The offset in the blob of the next byte readinto returns.
        self.position = offset
        self.requests = 0
        self._path = f"/v2/{repository}/blobs/{digest}"
        self._scope = f"repository:{repository}:pull"
        self._response: aiohttp.ClientResponse | None = None
        self._leftover: memoryview | None = None
        self._skip = 0
        self._range_end = size
        self._response_progress = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<BlobReader {self.repository}@{self.digest} at {self.position}/{self.size}>"

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Drop the response (its connection is closed if the body was not read to the end)."""
        self._closed = True
        self._drop_response()

    def _drop_response(self) -> None:
        response, self._response = self._response, None
        self._leftover = None
        if response is not None:
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def open(self) -> None:
        """Send the first GET (with retries) unless the blob is already read to its end.

        Raises:
            RegistryNotFoundError, RegistryAuthError, BlobSizeError, RegistryError: as
                :meth:`readinto`.
            OperationCanceledError: the token was canceled.
        """
        async with cancellation_scope(self._token):
            while self._response is None and self.position < self.size:
                try:
                    await self._request()
                except TransientFault as fault:
                    await self._attempts.failed(fault)

    async def _request(self) -> None:
        headers = {"Range": f"bytes={self.position}-"} if self.position else {}
        self.requests += 1
        response = await self._transport.send("GET", self._path, scope=self._scope, headers=headers)
        try:
            self._accept(response)
        except BaseException:
            response.close()
            raise
        self._response = response
        self._response_progress = 0

    def _accept(self, response: aiohttp.ClientResponse) -> None:
        """Check the status and ranges of a fresh response and set where it starts."""
        where = redacted_url(str(response.url))
        status = response.status
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE_RE.fullmatch(content_range.strip())
        total = int(match.group(3)) if match and match.group(3) != "*" else None
        if total is not None and total != self.size:
            raise self._size_error(total, where, status, "has")
        if status == 416:
            raise RegistryError(
                f"{where} refused the range from byte {self.position} (HTTP 416)",
                status=status,
                url=where,
            )
        if status == 200:
            length = response.content_length
            if length is not None and length != self.size:
                raise self._size_error(length, where, status, "sent a whole blob of")
            # Range ignored: the body starts at byte 0 and the prefix is thrown away.
            self._skip = self.position
            self._range_end = self.size
            return
        if status != 206 or match is None or match.group(1) is None:
            raise RegistryError(
                f"{where} answered HTTP {status} to a ranged blob GET"
                + (" without a usable Content-Range" if status == 206 else ""),
                status=status,
                url=where,
            )
        first, last = int(match.group(1)), int(match.group(2))
        if first > self.position or last < first:
            raise RegistryError(
                f"{where} sent bytes {first}-{last} when asked for bytes from {self.position}",
                status=status,
                url=where,
            )
        if last >= self.size:
            raise self._size_error(last + 1, where, status, "sent bytes up to")
        self._skip = self.position - first
        self._range_end = last + 1

    def _size_error(self, actual: int, where: str, status: int | None, verb: str) -> BlobSizeError:
        return BlobSizeError(
            f"blob {self.digest} from {where} {verb} {actual} bytes, but its descriptor says "
            f"{self.size}",
            expected=self.size,
            actual=actual,
            status=status,
            url=where,
        )

    async def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` with the blob's next bytes; fewer only at the end, 0 once at the end.

        Source faults are retried (a new ranged GET from ``position``); ``position``
        advances by the count returned.

        Raises:
            BlobSizeError: the registry has or sends more bytes than ``size``, or its answer
                ends cleanly before ``size`` bytes.
            RegistryConnectionError, RegistryError: faults still there when the attempts ran
                out (consecutive attempts without progress), or an answer that makes no
                sense (a range other than the one asked for).
            OperationCanceledError: the token was canceled; ``position`` says how far it got.
            InvalidArgumentError: the reader is closed.
        """
        if self._closed:
            raise InvalidArgumentError("reader", "is closed; open the blob again to read it")
        view = memoryview(buf).cast("B")
        want = min(len(view), self.size - self.position)
        if want <= 0:
            return 0
        filled = 0
        try:
            async with cancellation_scope(self._token):
                while filled < want:
                    try:
                        if self._response is None:
                            await self._request()
                        count = await self._read_step(view[filled:want])
                    except TransientFault as fault:
                        self._drop_response()
                        await self._attempts.failed(fault)
                        continue
                    if count == 0:
                        self._response_ended()
                        continue
                    filled += count
                    self.position += count
                    self._response_progress += count
                    self._attempts.succeeded()
        except BaseException:
            # position stays exact; a later call starts a new GET from there.
            self._drop_response()
            raise
        return filled

    def _response_ended(self) -> None:
        """The response ended cleanly before ``size``: ask for the rest, or give up."""
        where = redacted_url(str(self._response.url)) if self._response is not None else ""
        status = self._response.status if self._response is not None else None
        partial = self._range_end < self.size and self.position == self._range_end
        progressed = self._response_progress > 0
        self._drop_response()
        if partial and progressed:
            return  # the server sent a shorter range than asked: ask for the next one
        raise self._size_error(self.position, where, status, "ended after")

    async def _read_step(self, into: memoryview) -> int:
        """Copy the response's next bytes into ``into``; 0 if the response ended cleanly."""
        leftover = self._leftover
        if leftover is None:
            leftover = await self._next_chunk()
            if leftover is None:
                return 0
        count = min(len(into), len(leftover))
        into[:count] = leftover[:count]
        self._leftover = leftover[count:] if count < len(leftover) else None
        return count

    async def _next_chunk(self) -> memoryview | None:
        """The next chunk of body after the discarded prefix, None at a clean end."""
        import aiohttp

        response = self._response
        assert response is not None
        while True:
            try:
                chunk, _ = await response.content.readchunk()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                fault = self._transport.fault(exc, str(response.url))
                raise fault from exc
            if not chunk:
                if response.content.at_eof():
                    if self._skip:
                        where = redacted_url(str(response.url))
                        ended = self.position - self._skip
                        raise self._size_error(ended, where, response.status, "ended after")
                    return None
                continue  # an HTTP chunk boundary
            if self._skip >= len(chunk):
                self._skip -= len(chunk)
                continue
            view = memoryview(chunk)[self._skip :]
            self._skip = 0
            if self.position + len(view) > self._range_end:
                where = redacted_url(str(response.url))
                raise BlobSizeError(
                    f"blob {self.digest} from {where} sent more bytes than the "
                    f"{self._range_end - self.position} left of its descriptor's {self.size}",
                    expected=self.size,
                    actual=self.position + len(view),
                    status=response.status,
                    url=where,
                )
            return view
