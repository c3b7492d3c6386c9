"""Part buffers, sized to the layer and pooled across the uploads of one uploader or push.

An upload's read-ahead (``pipeline.Pipeline``) needs one page-aligned read buffer of a part
and two body buffers (the base64 JSON of a part, 4/3 of it): about 3.7 x part_size. Made
fresh per upload, that is ~37 MiB at 10 MiB parts for a 256 KiB layer too, zero-filled on the
event loop thread (~40 ms a blob), and glibc keeps the freed pages of each. A
``PartBufferPool`` instead hands out ``PartBuffers`` sized to the layer (``min(part_size,
layer size)``, rounded up to a power of two so near sizes share; one body for a layer of one
part, which never builds a part while another is sent) and takes them back when an upload
ends, for the next upload to reuse: a push of many layers allocates about as many sets as it
has uploads in flight at once, whatever the number of layers. Buffers are made in a worker
thread, never on the loop.

The bound: the pool never holds more sets (in use and free) than the most uploads that held
one at the same time; a free set too small for a request is dropped rather than kept beside
the new one. A set whose upload failed or was stopped is not taken back (a request aborted
mid-body may still be sending from it): it is forgotten, and freed once nothing views it.
The pool is used from one event loop thread at a time; it holds no loop-bound objects.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass, field
from typing import Final

import anyio

__all__ = ["PartBufferPool", "PartBuffers", "body_size_for"]

_SMALLEST: Final = 64 * 1024
# The JSON around a part's base64 (repository name, upload id, offsets): far below this.
_JSON_ROOM: Final = 1024


def body_size_for(part_bytes: int) -> int:
    """Bytes of an UploadLayerPart body for a part of ``part_bytes`` bytes (with JSON room)."""
    return 4 * ((part_bytes + 2) // 3) + _JSON_ROOM


def _capacity_for(part_size: int, layer_size: int | None) -> int:
    """The read capacity one upload needs: a part, or the whole layer if it is smaller
    (rounded up to a power of two, at least 64 KiB, so layers of near sizes share sets)."""
    if layer_size is None or layer_size >= part_size:
        return part_size
    rounded = max(_SMALLEST, 1 << max(0, layer_size - 1).bit_length())
    return min(part_size, rounded)


@dataclass(eq=False, slots=True)
class PartBuffers:
    """One upload's buffers: a page-aligned read buffer of ``capacity`` bytes and its bodies.

    ``read`` views an anonymous mmap (page-aligned reads measured 3x faster than unaligned);
    ``bodies`` (one or two) are what ``body.prepare_part`` writes into, each large enough for
    a part of ``capacity`` bytes. Made by ``PartBufferPool.acquire``; give them back with
    ``release``.
    """

    capacity: int
    read: memoryview
    bodies: list[bytearray]
    _map: mmap.mmap = field(repr=False)

    @classmethod
    def allocate(cls, capacity: int, bodies: int) -> PartBuffers:
        """A new set with ``bodies`` bodies (zero-filled: a worker thread's job)."""
        raw = mmap.mmap(-1, capacity)
        size = body_size_for(capacity)
        return cls(capacity, memoryview(raw), [bytearray(size) for _ in range(bodies)], raw)

    def add_bodies(self, bodies: int) -> None:
        """Grow to ``bodies`` bodies (zero-filled: a worker thread's job)."""
        size = body_size_for(self.capacity)
        self.bodies.extend(bytearray(size) for _ in range(bodies - len(self.bodies)))

    def free(self) -> None:
        """Unmap the read buffer now if nothing views it (else the GC frees it later)."""
        self.read.release()
        # BufferError: a view of it is still referenced somewhere; freed with the last one
        with contextlib.suppress(BufferError):
            self._map.close()


class PartBufferPool:
    """Part buffers for the uploads of one uploader (or one push): reused, sized to layers.

    ``acquire`` returns a free set large enough, or makes one in a worker thread; ``release``
    takes a set back for reuse after a clean end, ``discard`` forgets one whose upload did
    not end cleanly. ``allocated`` counts the sets made, ``in_use``/``most_in_use`` the sets
    out now and at most at once, ``held`` the sets the pool keeps alive (in use and free).
    ``clear()`` frees the free sets (the pool stays usable).
    """

    def __init__(self) -> None:
        self._free: list[PartBuffers] = []
        self.allocated = 0
        self.in_use = 0
        self.most_in_use = 0

    def __repr__(self) -> str:
        return (
            f"PartBufferPool(allocated={self.allocated}, in_use={self.in_use},"
            f" free={len(self._free)})"
        )

    @property
    def held(self) -> int:
        """Sets alive through the pool: in use plus free."""
        return self.in_use + len(self._free)

    @property
    def free_capacities(self) -> list[int]:
        """The capacities of the free sets, smallest first."""
        return [buffers.capacity for buffers in self._free]

    def _take(self, capacity: int) -> PartBuffers | None:
        for index, buffers in enumerate(self._free):  # smallest first
            if buffers.capacity >= capacity:
                return self._free.pop(index)
        if self._free:
            # None fits: drop the largest free set (it is replaced by the new one), so
            # the pool never holds more sets than uploads held them at once.
            self._free.pop().free()
        return None

    async def acquire(self, part_size: int, layer_size: int | None) -> PartBuffers:
        """A set for an upload in parts of ``part_size`` of a ``layer_size``-byte layer
        (None: unknown, a stream); its ``capacity`` is at least ``min(part_size,
        layer_size)``, with two bodies unless the layer is one part. Not interrupted by
        cancellation once it allocates (tens of ms): a cancel is raised at the caller's next
        await, with the set in the caller's hands.
        """
        capacity = _capacity_for(part_size, layer_size)
        bodies = 1 if layer_size is not None and layer_size <= part_size else 2
        self.in_use += 1
        self.most_in_use = max(self.most_in_use, self.in_use)
        free = self._take(capacity)
        if free is not None and len(free.bodies) >= bodies:
            return free
        try:
            with anyio.CancelScope(shield=True):
                if free is not None:
                    await anyio.to_thread.run_sync(free.add_bodies, bodies)
                    return free
                made = await anyio.to_thread.run_sync(PartBuffers.allocate, capacity, bodies)
        except BaseException:
            self.in_use -= 1
            raise
        self.allocated += 1
        return made

    def release(self, buffers: PartBuffers) -> None:
        """Take back a set whose upload ended cleanly (nothing sends from it any more)."""
        self.in_use -= 1
        self._free.append(buffers)
        self._free.sort(key=lambda free: free.capacity)

    def discard(self, buffers: PartBuffers) -> None:
        """Forget a set whose upload failed or stopped: a request aborted mid-body may still
        send from its bodies, so it is never handed out again (the GC frees it)."""
        self.in_use -= 1
        buffers.free()

    def clear(self) -> None:
        """Free the sets not in use now."""
        free, self._free = self._free, []
        for buffers in free:
            buffers.free()
