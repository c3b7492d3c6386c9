"""The bytes of layers on disk, content-addressed: nothing of a layer is kept in memory.

Layout under the store's folder: ``uploads/<uploadId>`` holds an open upload's bytes, each
part written at its offset as it arrives; CompleteLayerUpload moves it, once its bytes hash to
the digest the request names, to ``blobs/sha256/<hex>``. Every method blocks on the disk: call
them from a worker thread, never from the event loop.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Final

_DIGEST: Final = re.compile(r"sha256:([0-9a-f]{64})")
_UPLOAD_ID: Final = re.compile(r"[0-9A-Za-z-]{1,128}")


def _write_at(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and cut the file there: a retried part replaces a torn one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        position = offset
        while view:
            written = os.pwrite(fd, view, position)
            view = view[written:]
            position += written
        os.ftruncate(fd, position)
    finally:
        os.close(fd)


class BlobStore:
    """Open uploads and completed layers of one endpoint, in a folder.

    ``data_dir``: the folder (created if missing; completed layers stay after ``close()``), or
    None for a temporary one that ``close()`` removes.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        if data_dir is None:
            self.root = Path(tempfile.mkdtemp(prefix="ecrstream-local-"))
            self._owned = True
        else:
            self.root = Path(data_dir).resolve()
            self._owned = False
        self._uploads = self.root / "uploads"
        self._blobs = self.root / "blobs" / "sha256"
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._blobs.mkdir(parents=True, exist_ok=True)

    def _upload_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"upload id {upload_id!r} is not a file name")
        return self._uploads / upload_id

    def append(self, upload_id: str, offset: int, data: bytes) -> None:
        """Write a part of an open upload at its first byte's offset."""
        _write_at(self._upload_path(upload_id), offset, data)

    def commit(self, upload_id: str, digest: str) -> Path:
        """Make an upload's bytes the blob ``digest`` (the caller checked they hash to it)."""
        target = self.blob_path(digest)
        # Atomic: a reader sees the old file or the new one, both the same bytes.
        os.replace(self._upload_path(upload_id), target)
        return target

    def discard(self, upload_id: str) -> None:
        """Drop an open upload's bytes, if any were written."""
        self._upload_path(upload_id).unlink(missing_ok=True)

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it is there). ValueError if malformed."""
        match = _DIGEST.fullmatch(digest)
        if match is None:
            raise ValueError(f"digest {digest!r} is not sha256:<64 hex digits>")
        return self._blobs / match.group(1)

    def find(self, digest: str) -> Path | None:
        """The blob's file if the store has it (None for a malformed digest too)."""
        match = _DIGEST.fullmatch(digest)
        if match is None:
            return None
        path = self._blobs / match.group(1)
        return path if path.is_file() else None

    def close(self) -> None:
        """Remove a temporary store; in a named one, drop the open uploads, keep the blobs."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(self._uploads, ignore_errors=True)
