"""Where a layer's bytes come from: a file (read with aiofiles) or an async iterator of bytes.

Both kinds answer one question, ``read(offset, into)``: the bytes of the layer from
``offset`` on, into a caller's buffer. A file can be read at any offset again (that is how
the uploader re-aligns backwards or resumes); a stream keeps only the bytes not yet
committed and can go back no further than that.

``LayerHasher`` is the layer's incremental sha256: it is fed the bytes as they are read,
each byte once, whatever the order of reads, and refuses a gap.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiofiles
import anyio

from ecrstream.errors import SourceChangedError

__all__ = ["FileSource", "LayerHasher", "LayerSource", "StreamSource"]

_HASH_SLICE = 8 * 1024 * 1024


class LayerHasher:
    """The layer digest, fed in byte order; bytes it has already seen are skipped.

    Not thread-safe: one worker thread at a time (the uploader's pipeline guarantees it).
    """

    __slots__ = ("_sha", "hashed")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.hashed = 0

    def update(self, offset: int, data: memoryview) -> None:
        """Feed ``data``, the layer's bytes from ``offset``; raises if it would leave a gap."""
        if offset > self.hashed:
            raise RuntimeError(f"hash gap: have {self.hashed} bytes, got bytes from {offset}")
        skip = self.hashed - offset
        if skip < len(data):
            self._sha.update(data[skip:])
            self.hashed = offset + len(data)

    def digest(self) -> str:
        """``sha256:<hex>`` of everything fed so far."""
        return "sha256:" + self._sha.hexdigest()


class LayerSource(Protocol):
    """The bytes of one layer, readable by offset."""

    @property
    def size(self) -> int | None:
        """Total size when known up front (files), else None (streams)."""

    async def read(self, offset: int, into: memoryview) -> int:
        """Fill ``into`` with the layer's bytes from ``offset``; fewer only at the end."""

    def release(self, offset: int) -> None:
        """Bytes before ``offset`` will never be asked for again (committed upstream)."""


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What identifies a file's content cheaply: its size and modification time."""

    size: int
    mtime_ns: int


def _identity(result: os.stat_result) -> FileIdentity:
    return FileIdentity(size=result.st_size, mtime_ns=result.st_mtime_ns)


def check_path(path: str | os.PathLike[str]) -> Path:
    """Resolve and check a layer file path; ValueError naming ``path`` and the rule."""
    try:
        candidate = Path(path)
    except TypeError:
        raise ValueError(f"path: must be a str or os.PathLike (got {path!r})") from None
    try:
        info = candidate.stat()
    except FileNotFoundError:
        raise ValueError(f"path: no such file: {candidate}") from None
    except PermissionError:
        raise ValueError(f"path: permission denied: {candidate}") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, ...
        raise ValueError(f"path: cannot use {candidate}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"path: is a directory, not a file: {candidate}")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"path: not a regular file (a FIFO, socket or device cannot be re-read): {candidate}"
        )
    if not os.access(candidate, os.R_OK):
        raise ValueError(f"path: permission denied (not readable): {candidate}")
    return candidate


class FileSource:
    """A regular file (or ``length`` bytes of it from ``start``), read with aiofiles.

    Offsets given to ``read`` are layer offsets (0 is byte ``start`` of the file). Use as an
    async context manager; ``identity`` is the file's size and mtime seen on opening, and
    ``check_unchanged`` compares them again.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, start: int = 0, length: int | None = None
    ) -> None:
        self.path = check_path(path)
        self._file: Any = None
        self.identity = _identity(self.path.stat())
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise ValueError(f"offset: must be an integer >= 0 (got {start!r})")
        if length is not None and (
            not isinstance(length, int) or isinstance(length, bool) or length < 0
        ):
            raise ValueError(f"length: must be an integer >= 0 or None (got {length!r})")
        if start + (length or 0) > self.identity.size:
            raise ValueError(
                f"offset/length: bytes {start}..{start + (length or 0)} lie past the end of"
                f" {self.path} ({self.identity.size} bytes)"
            )
        self.start = start
        self.length = self.identity.size - start if length is None else length

    @property
    def size(self) -> int:
        """The layer's size: the file's (or the section's) when it was opened."""
        return self.length

    async def __aenter__(self) -> FileSource:
        # buffering=0: readinto goes straight into our buffer, without BufferedReader's copy.
        # Shielded: a task cancelled while the worker thread opens the file would never see
        # the file object, and it would leak (ResourceWarning); the cancel lands after.
        with anyio.CancelScope(shield=True):
            self._file = await aiofiles.open(self.path, "rb", buffering=0)
            opened = _identity(os.fstat(self._file.fileno()))
            if opened != self.identity:
                await self._file.close()
                self._file = None
                raise SourceChangedError(f"{self.path}: the file changed as it was opened")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with anyio.CancelScope(shield=True):
                await file.close()

    async def read(self, offset: int, into: memoryview) -> int:
        """Read up to ``len(into)`` bytes from ``offset``; fewer only at the end of the file."""
        file = self._file
        if file is None:
            raise RuntimeError("FileSource is not open")
        into = into[: max(0, min(len(into), self.length - offset))]
        await file.seek(self.start + offset)
        filled = 0
        while filled < len(into):
            count = await file.readinto(into[filled:])
            if not count:
                break
            filled += count
        if filled < len(into):
            raise SourceChangedError(
                f"{self.path}: the file shrank while it was read "
                f"(was {self.identity.size} bytes, ended at {self.start + offset + filled})"
            )
        return filled

    def release(self, offset: int) -> None:
        """Nothing to free: a file can always be read again."""

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if size or mtime differ from when the file was opened."""
        now = _identity(os.stat(self.path))
        if now != self.identity:
            raise SourceChangedError(
                f"{self.path}: the file changed while it was read (size {self.identity.size}"
                f" -> {now.size}, mtime_ns {self.identity.mtime_ns} -> {now.mtime_ns});"
                " the layer was not completed"
            )


class StreamSource:
    """Any async iterable of bytes-like chunks (1 byte to many MiB), re-chunked by offset.

    Holds one window of bytes, from the oldest offset still needed (``release`` moves it)
    to what has been pulled: appends are amortized linear and releases drop from the front,
    so any chunk sizes cost linear time and memory bounded by about two parts.
    """

    def __init__(self, chunks: AsyncIterable[bytes | bytearray | memoryview]) -> None:
        self._iterator: AsyncIterator[bytes | bytearray | memoryview] = aiter(chunks)
        self._window = bytearray()
        self._start = 0  # offset of _window[0]
        self._exhausted = False

    @property
    def size(self) -> None:
        """Unknown up front."""
        return None

    async def _pull(self) -> bool:
        while not self._exhausted:
            try:
                chunk = await anext(self._iterator)
            except StopAsyncIteration:
                self._exhausted = True
                return False
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(
                    f"chunks: every chunk must be bytes-like (got {type(chunk).__name__})"
                )
            if len(chunk):
                self._window += chunk
                return True
        return False

    async def read(self, offset: int, into: memoryview) -> int:
        """Copy the bytes from ``offset`` into ``into``; pulls chunks as needed."""
        if offset < self._start:
            raise RuntimeError(
                f"stream: bytes from {offset} were already released (a stream cannot rewind;"
                f" it holds bytes from {self._start})"
            )
        wanted_end = offset + len(into)
        while self._start + len(self._window) < wanted_end and await self._pull():
            pass
        begin = offset - self._start
        available = max(0, min(len(into), len(self._window) - begin))
        into[:available] = memoryview(self._window)[begin : begin + available]
        return available

    def release(self, offset: int) -> None:
        """Drop held bytes before ``offset``."""
        cut = min(offset - self._start, len(self._window))
        if cut > 0:
            del self._window[:cut]
            self._start += cut

    async def aclose(self) -> None:
        """Close the iterator if it can be closed (an async generator)."""
        close = getattr(self._iterator, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()
