"""The uploader's read-ahead: part N+1 is read, hashed and built while part N is sent.

A reader task (in the upload's task group) reads a part from the source into one reused,
page-aligned buffer; two worker threads then feed it to the layer's sha256 and build its
UploadLayerPart body (``body.prepare_part``) into one of two reused body buffers; the part goes
into a queue of one. The sender takes parts with ``next()``, in byte order, and gives each
body buffer back with ``release()``. Memory: one read buffer and two bodies, about 3.7 x
part_size (a layer of one part: one body, of its size), whatever the layer's size. The
buffers come from a ``buffers.PartBufferPool`` (the uploader's), taken by the reader when it
first runs (made in a worker thread if the pool has none free) and given back by ``close()``
once the layer was read to its end; after a failure or a stop they are dropped instead.

The pipeline is told where the parts go (``PartDestination``: repository, registry, upload
id) and never asks back. ``restart(offset)`` drops what was read ahead and reads from
``offset``: forward, the bytes skipped are hashed and not sent (``_hash_until``, the one
place that hashes without sending; a resume uses it for the committed prefix, unless its
hasher starts past that prefix: then nothing is read before ``offset``), backward, the
source reads them again. ``stop()`` takes every buffer back; it is idempotent and holds under
any cancellation, so a ``finally`` may always call it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecrstream._shield import finish
from ecrstream.body import PreparedPart, prepare_part
from ecrstream.buffers import PartBufferPool, PartBuffers
from ecrstream.errors import ProtocolViolationError
from ecrstream.models import UploadLayerPartRequest
from ecrstream.source import LayerHasher, LayerSource

__all__ = ["PartDestination", "Pipeline"]


@dataclass(frozen=True, slots=True)
class PartDestination:
    """Where the parts go: the upload they belong to."""

    repository_name: str
    registry_id: str | None
    upload_id: str


@dataclass(slots=True)
class _Failed:
    """An exception from the reader task, delivered in order through the part queue."""

    error: Exception


_Item = PreparedPart | _Failed | None


@dataclass(slots=True)
class _Reader:
    """One run of the reader task: its queue, its cancel scope, and when it has ended."""

    queue: MemoryObjectReceiveStream[_Item]
    scope: anyio.CancelScope
    done: anyio.Event


class Pipeline:
    """Reads and prepares parts ahead of the sender, in a task of the upload's task group.

    ``next()`` returns the part at the current offset (None at the end of the layer);
    ``restart(offset)`` throws away what was read ahead and reads from ``offset``.
    """

    def __init__(
        self,
        task_group: TaskGroup,
        source: LayerSource,
        hasher: LayerHasher,
        part_size: int,
        destination: PartDestination,
        pool: PartBufferPool | None = None,
    ) -> None:
        self._task_group = task_group
        self._source = source
        self._hasher = hasher
        self._part_size = part_size
        self._destination = destination
        self._pool = pool if pool is not None else PartBufferPool()
        # Taken from the pool by the reader's first run (``_take_buffers``), off the loop.
        self._set: PartBuffers | None = None
        self._raw = memoryview(b"")
        self._free_send, self._free = anyio.create_memory_object_stream[bytearray](2)
        self._buffers: dict[int, bytearray] = {}
        self._reader: _Reader | None = None
        self._ended = False  # next() returned None: every part was sent and answered

    def start(self, offset: int) -> None:
        """Start reading parts from ``offset``."""
        send, receive = anyio.create_memory_object_stream[_Item](1)
        self._reader = _Reader(receive, anyio.CancelScope(), anyio.Event())
        self._task_group.start_soon(self._read_parts, offset, send, self._reader)

    async def next(self) -> PreparedPart | None:
        """The next prepared part in byte order, or None when the layer has no more bytes."""
        assert self._reader is not None
        item = await self._reader.queue.receive()
        if isinstance(item, _Failed):
            raise item.error
        self._ended = item is None
        return item

    def release(self, part: PreparedPart) -> None:
        """Give a part's body buffer back for reuse (after it was committed or dropped)."""
        buffer = self._buffers.pop(id(part), None)
        if buffer is not None:
            self._free_send.send_nowait(buffer)

    async def stop(self) -> None:
        """Stop the reader and take back every buffer it holds (idempotent).

        Holds under both kinds of cancellation: a cancel that arrives meanwhile is raised
        once the reader has ended and its buffers are back.
        """
        reader, self._reader = self._reader, None
        if reader is not None:
            await finish(self._drain(reader))

    async def _drain(self, reader: _Reader) -> None:
        reader.scope.cancel()
        with reader.queue:
            async for item in reader.queue:
                if isinstance(item, PreparedPart):
                    self.release(item)
        await reader.done.wait()

    async def restart(self, offset: int) -> None:
        """Drop the parts read ahead and read from ``offset`` instead."""
        await self.stop()
        self.start(offset)

    def close(self) -> None:
        """Give the buffers back to the pool (the reader must be stopped).

        Back for reuse only if the layer was read to its end (every part answered); after
        a failure or a stop a request may still send from a body, so the pool drops them.
        """
        # Unclosed memory object streams warn (ResourceWarning) when collected.
        self._free_send.close()
        self._free.close()
        self._buffers.clear()
        self._raw.release()
        buffers, self._set = self._set, None
        if buffers is None:
            return
        if self._ended:
            self._pool.release(buffers)
        else:
            self._pool.discard(buffers)

    async def _take_buffers(self) -> None:
        # Once per pipeline (a restart keeps them): sized to the layer, from the pool.
        if self._set is not None:
            return
        buffers = self._set = await self._pool.acquire(self._part_size, self._source.size)
        self._raw = buffers.read[: self._part_size]
        for body in buffers.bodies:
            self._free_send.send_nowait(body)

    async def _hash_until(self, offset: int) -> None:
        # Hash the bytes the hasher lacks before ``offset`` and send none: the committed
        # prefix of a resume, or what ECR holds beyond what was read (a forward re-alignment).
        if not self._hasher.complete:
            # A hasher past an unseen prefix hashes nothing (ECR checks the digest): no read.
            self._hasher.hashed = max(self._hasher.hashed, offset)
            return
        while self._hasher.hashed < offset:
            start = self._hasher.hashed
            wanted = self._raw[: min(self._part_size, offset - start)]
            count = await self._source.read(start, wanted)
            if count == 0:
                # The uploader never restarts past the bytes it sent (it checks ECR's claims
                # against them first): only an endpoint claiming unsent bytes leads here.
                raise ProtocolViolationError(
                    f"the endpoint holds {offset} bytes, but the layer ends at {start}",
                    operation="UploadLayerPart",
                )
            await anyio.to_thread.run_sync(self._hasher.update, start, self._raw[:count])

    def _prepare(self, offset: int, data: memoryview, buffer: bytearray) -> PreparedPart:
        destination = self._destination
        request = UploadLayerPartRequest(
            repository_name=destination.repository_name,
            upload_id=destination.upload_id,
            part_first_byte=offset,
            part_last_byte=offset + len(data) - 1,
            layer_part_blob=data,
            registry_id=destination.registry_id,
        )
        return prepare_part(request, buffer)

    async def _build(self, offset: int, data: memoryview, buffer: bytearray) -> PreparedPart:
        # The layer's sha256 and the body (base64 + its SigV4 sha256) only read ``data``, and
        # both release the GIL: two worker threads do them at once, on the two cores.
        failures: list[Exception] = []

        async def hash_layer() -> None:
            try:
                await anyio.to_thread.run_sync(self._hasher.update, offset, data)
            except Exception as exc:
                failures.append(exc)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(hash_layer)
            part = await anyio.to_thread.run_sync(self._prepare, offset, data, buffer)
        if failures:
            raise failures[0]
        return part

    async def _next_part(self, offset: int) -> PreparedPart | None:
        """Read and build the part at ``offset`` (None at the end); owns a body buffer
        from the pool only while it returns a part."""
        buffer = await self._free.receive()
        try:
            count = await self._source.read(offset, self._raw)
            part = await self._build(offset, self._raw[:count], buffer) if count else None
        except BaseException:
            self._free_send.send_nowait(buffer)
            raise
        if part is None:
            self._free_send.send_nowait(buffer)
        else:
            self._buffers[id(part)] = buffer
        return part

    async def _read_parts(
        self, offset: int, send: MemoryObjectSendStream[_Item], reader: _Reader
    ) -> None:
        try:
            with reader.scope, send:
                try:
                    await self._take_buffers()
                    await self._hash_until(offset)
                    while (part := await self._next_part(offset)) is not None:
                        try:
                            await send.send(part)
                        except BaseException:
                            self.release(part)
                            raise
                        offset = part.part_last_byte + 1
                    await send.send(None)
                except Exception as exc:
                    # Broken/closed: the sender has stopped listening and no longer needs it
                    with (
                        anyio.CancelScope(shield=True),
                        contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
                    ):
                        await send.send(_Failed(exc))
        finally:
            reader.done.set()
