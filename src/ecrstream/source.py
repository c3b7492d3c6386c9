"""Where a layer's bytes come from: the ``LayerSource`` interface and its file and stream kinds.

A source answers the questions the uploader asks and nothing else, so the uploader never asks
what kind of source it has:

- ``size``: the layer's size when known up front (a file), else None (a stream);
- ``can_rewind``: whether ``read`` works at any offset at any time (a file), or only from
  the last ``release`` on (a stream, which keeps the bytes not yet committed and no more);
- ``read(offset, into)``: the bytes from ``offset`` into a caller's buffer; when it returns
  or raises (canceled included), nothing goes on writing into the buffer;
- ``release(offset)``: bytes before it will never be asked for again;
- ``checkpoint_fields()``: what a checkpoint records to recognize the source at resume
  (``check_same_source`` compares two of them);
- ``check_unchanged()``: raise SourceChangedError if the bytes may have changed since open;
- ``aclose()``: free what it holds; safe under either kind of cancellation.

One optional attribute (a source without it is taken as False): ``verified_by_destination``,
True when the source's bytes are named by the upload's ``expected_digest`` and are costly to
read again (a remote blob). A resume of such an upload does not re-read the committed prefix:
it reads from the checkpoint on, and the digest is checked by ECR at CompleteLayerUpload
(``LayerHasher(unseen=...)``). Files and streams leave it False: a file's prefix is re-read and
hashed locally, as its digest is computed, not known.

``FileSource`` is a regular file, or a section of one; ``StreamSource`` any async iterable of
bytes-like chunks. Files are read in worker threads (one per read: seek and readinto).
``LayerHasher`` is the layer's incremental sha256: it is fed the bytes as
they are read, each byte once, whatever the order of reads, and refuses a gap.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio

from ecrstream._shield import finish
from ecrstream.errors import InvalidArgumentError, SourceChangedError

__all__ = [
    "CheckpointFields",
    "FileIdentity",
    "FileSource",
    "LayerHasher",
    "LayerSource",
    "StreamSource",
    "check_path",
    "check_same_source",
    "verified_by_destination",
]


class LayerHasher:
    """The layer digest, fed in byte order; bytes it has already seen are skipped.

    ``unseen`` > 0 starts it past a prefix it will not see (a resume whose committed prefix
    ECR verifies): it then only tracks offsets, hashes nothing, and has no ``digest`` until
    it is fed the layer from byte 0 again (an upload that starts over), which makes it a
    full hasher. Not thread-safe: one worker thread at a time (the pipeline guarantees it).
    """

    __slots__ = ("_sha", "hashed", "unseen")

    def __init__(self, unseen: int = 0) -> None:
        self._sha = hashlib.sha256()
        self.hashed = unseen
        #: Bytes [0, unseen) were never hashed (0: the digest covers every byte fed).
        self.unseen = unseen

    @property
    def complete(self) -> bool:
        """True if every byte from 0 to ``hashed`` went through the sha256."""
        return self.unseen == 0

    def update(self, offset: int, data: memoryview) -> None:
        """Feed ``data``, the layer's bytes from ``offset``; raises if it would leave a gap."""
        if self.unseen and offset == 0:
            # The layer from its first byte again: everything passes through the hash now.
            self.unseen = self.hashed = 0
        if offset > self.hashed:
            raise RuntimeError(f"hash gap: have {self.hashed} bytes, got bytes from {offset}")
        skip = self.hashed - offset
        if skip < len(data):
            if not self.unseen:  # without the prefix the sha256 is of no use: save the CPU
                self._sha.update(data[skip:])
            self.hashed = offset + len(data)

    def digest(self) -> str:
        """``sha256:<hex>`` of everything fed so far (RuntimeError if not ``complete``)."""
        if self.unseen:
            raise RuntimeError(f"the hasher never saw bytes 0..{self.unseen}: no digest")
        return "sha256:" + self._sha.hexdigest()


def verified_by_destination(source: object) -> bool:
    """The source's optional ``verified_by_destination`` flag (absent: False)."""
    return getattr(source, "verified_by_destination", False) is True


@dataclass(frozen=True, slots=True)
class CheckpointFields:
    """What an ``UploadCheckpoint`` records about its source (a stream records nothing).

    The names are the checkpoint's own: the file's resolved path, its size and modification
    time when it was opened, and the section of it the layer is.
    """

    source_path: str | None = None
    source_size: int | None = None
    source_mtime_ns: int | None = None
    source_offset: int = 0
    source_length: int | None = None


@runtime_checkable
class LayerSource(Protocol):
    """The bytes of one layer, readable by offset (see the module docstring)."""

    @property
    def size(self) -> int | None:
        """Total size when known up front (files), else None (streams)."""

    @property
    def can_rewind(self) -> bool:
        """True if ``read`` works at any offset, also below the last ``release``."""

    async def read(self, offset: int, into: memoryview) -> int:
        """Fill ``into`` with the layer's bytes from ``offset``; fewer only at the end.

        Nothing writes into ``into`` once this returns or raises, canceled or not.
        """

    def release(self, offset: int) -> None:
        """Bytes before ``offset`` will never be asked for again (committed upstream)."""

    def checkpoint_fields(self) -> CheckpointFields:
        """What a checkpoint of an upload of this source records about it."""

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if the bytes may differ from those read."""

    async def aclose(self) -> None:
        """Free what the source holds (idempotent; holds under any cancellation)."""


def check_same_source(recorded: CheckpointFields, current: CheckpointFields) -> None:
    """Refuse a resume whose checkpoint was taken of another source (InvalidArgumentError).

    Fields the checkpoint leaves unset (a checkpoint written by hand) are not compared.
    """
    if recorded.source_path is not None and (
        current.source_path is None
        or Path(recorded.source_path).resolve() != Path(current.source_path).resolve()
    ):
        raise InvalidArgumentError(
            "resume", f"the checkpoint belongs to {recorded.source_path}, not {current.source_path}"
        )
    if (recorded.source_size is not None and recorded.source_size != current.source_size) or (
        recorded.source_mtime_ns is not None and recorded.source_mtime_ns != current.source_mtime_ns
    ):
        raise InvalidArgumentError(
            "resume",
            "the checkpoint belongs to another file or an older version of it"
            f" (checkpoint: {recorded.source_size} bytes, mtime_ns {recorded.source_mtime_ns};"
            f" {current.source_path}: {current.source_size} bytes,"
            f" mtime_ns {current.source_mtime_ns})",
        )
    if recorded.source_offset != current.source_offset or (
        recorded.source_length is not None and recorded.source_length != current.source_length
    ):
        end = recorded.source_offset + (recorded.source_length or 0)
        current_end = current.source_offset + (current.source_length or 0)
        raise InvalidArgumentError(
            "resume",
            f"the checkpoint is for bytes {recorded.source_offset}..{end} of"
            f" {current.source_path}, not {current.source_offset}..{current_end}"
            " (another section)",
        )


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What identifies a file's content cheaply: its size and modification time."""

    size: int
    mtime_ns: int


def _identity(result: os.stat_result) -> FileIdentity:
    return FileIdentity(size=result.st_size, mtime_ns=result.st_mtime_ns)


def check_path(path: str | os.PathLike[str]) -> Path:
    """Resolve and check a layer file path; InvalidArgumentError naming ``path`` and the rule."""
    try:
        candidate = Path(path)
    except TypeError:
        raise InvalidArgumentError("path", f"must be a str or os.PathLike (got {path!r})") from None
    try:
        info = candidate.stat()
    except FileNotFoundError:
        raise InvalidArgumentError("path", f"no such file: {candidate}") from None
    except PermissionError:
        raise InvalidArgumentError("path", f"permission denied: {candidate}") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, ...
        raise InvalidArgumentError(
            "path", f"cannot use {candidate}: {exc.strerror or exc}"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidArgumentError("path", f"is a directory, not a file: {candidate}")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidArgumentError(
            "path",
            f"not a regular file (a FIFO, socket or device cannot be re-read): {candidate}",
        )
    if not os.access(candidate, os.R_OK):
        raise InvalidArgumentError("path", f"permission denied (not readable): {candidate}")
    return candidate


def _open_checked(path: Path, identity: FileIdentity) -> Any:
    # buffering=0: readinto goes straight into our buffer, without BufferedReader's copy.
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by FileSource.aclose
    try:
        if _identity(os.fstat(file.fileno())) != identity:
            raise SourceChangedError(f"{path}: the file changed as it was opened")
    except BaseException:
        file.close()
        raise
    return file


def _read_into(file: Any, position: int, into: memoryview) -> int:
    # One worker-thread hop per read (seek and read together); reads of a source never
    # overlap, the pipeline has one reader.
    file.seek(position)
    filled = 0
    while filled < len(into):
        count = file.readinto(into[filled:])
        if not count:
            break
        filled += count
    return filled


class FileSource:
    """A regular file (or ``length`` bytes of it from ``start``): a source that can rewind.

    Offsets given to ``read`` are layer offsets (0 is byte ``start`` of the file). Use as an
    async context manager (or call ``aclose``); ``identity`` is the file's size and mtime
    seen when it was checked, and ``check_unchanged`` compares them again. Reads run in a
    worker thread and always end before ``read`` returns, canceled or not.
    """

    can_rewind = True
    #: A resume re-reads and hashes the committed prefix: the digest is computed here.
    verified_by_destination = False

    def __init__(
        self, path: str | os.PathLike[str], *, start: int = 0, length: int | None = None
    ) -> None:
        self.path = check_path(path)
        self._file: Any = None
        self.identity = _identity(self.path.stat())
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise InvalidArgumentError("offset", f"must be an integer >= 0 (got {start!r})")
        if length is not None and (
            not isinstance(length, int) or isinstance(length, bool) or length < 0
        ):
            raise InvalidArgumentError(
                "length", f"must be an integer >= 0 or None (got {length!r})"
            )
        if start + (length or 0) > self.identity.size:
            raise InvalidArgumentError(
                "offset/length",
                f"bytes {start}..{start + (length or 0)} lie past the end of"
                f" {self.path} ({self.identity.size} bytes)",
            )
        self.start = start
        self.length = self.identity.size - start if length is None else length

    @property
    def size(self) -> int:
        """The layer's size: the file's (or the section's) when it was opened."""
        return self.length

    async def __aenter__(self) -> FileSource:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the file; SourceChangedError if it is not the one checked at construction.

        A cancel while the worker thread opens it waits for the thread, closes the file and
        is then raised: the file object is never lost.
        """
        if self._file is None:
            self._file = await finish(
                anyio.to_thread.run_sync(_open_checked, self.path, self.identity),
                undo=lambda file: file.close(),
            )

    async def aclose(self) -> None:
        """Close the file (idempotent). Closing a file opened for reading does not block,
        so it happens at once, with no await a cancel could interrupt."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    async def read(self, offset: int, into: memoryview) -> int:
        """Read up to ``len(into)`` bytes from ``offset``; fewer only at the end of the file."""
        file = self._file
        if file is None:
            raise RuntimeError("FileSource is not open")
        into = into[: max(0, min(len(into), self.length - offset))]
        if not len(into):
            return 0
        # A canceled read would go on writing into the buffer from its thread: it always
        # runs to its end (a part-sized read from a file takes milliseconds).
        filled = await finish(anyio.to_thread.run_sync(_read_into, file, self.start + offset, into))
        if filled < len(into):
            raise SourceChangedError(
                f"{self.path}: the file shrank while it was read "
                f"(was {self.identity.size} bytes, ended at {self.start + offset + filled})"
            )
        return filled

    def release(self, offset: int) -> None:
        """Nothing to free: a file can always be read again."""

    def checkpoint_fields(self) -> CheckpointFields:
        """The file's resolved path, size and mtime when checked, and the section."""
        return CheckpointFields(
            source_path=str(self.path.resolve()),
            source_size=self.identity.size,
            source_mtime_ns=self.identity.mtime_ns,
            source_offset=self.start,
            source_length=self.length,
        )

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
    so any chunk sizes cost linear time and memory bounded by about two parts. It cannot
    rewind below the window.
    """

    can_rewind = False
    verified_by_destination = False

    def __init__(self, chunks: AsyncIterable[bytes | bytearray | memoryview]) -> None:
        self._iterator: AsyncIterator[bytes | bytearray | memoryview] = aiter(chunks)
        self._window = bytearray()
        self._start = 0  # offset of _window[0]
        self._exhausted = False
        self._closed = False

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

    @property
    def released(self) -> int:
        """The first offset still held: a stream cannot be read below it."""
        return self._start

    def checkpoint_fields(self) -> CheckpointFields:
        """Nothing identifies a stream: its checkpoint records how far it got, no more."""
        return CheckpointFields()

    def check_unchanged(self) -> None:
        """A stream's bytes were read once: nothing can change behind them."""

    async def aclose(self) -> None:
        """Close the iterator if it can be closed (an async generator); idempotent."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._iterator, "aclose", None)
        if close is not None:
            await finish(close())
