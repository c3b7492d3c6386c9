"""Reading an untrusted image source safely: a folder or a plain tar, as a tree of members.

Nothing is extracted: a member is a path and an offset (``Entry``), its bytes read in place.
Refused with ``ImageSourceError``: member paths outside the root, a name that occurs twice,
data past the end of the tar, a tar without its end-of-archive block (truncated), a
compressed tar; symbolic links anywhere on the way to a member of a folder. Links inside a
tar are reported as links (``Entry.kind``), never followed here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, Protocol

import anyio

from ecrstream.cancellation import CancellationToken
from ecrstream.errors import ImageSourceError, InvalidArgumentError

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "DirTree",
    "Entry",
    "EntryKind",
    "TarTree",
    "Tree",
    "hash_member",
    "json_object",
    "member_name",
    "open_tree",
    "parse_json",
    "read_member",
    "regular",
    "source_error",
]

_HASH_CHUNK: Final = 8 * 1024 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

EntryKind = Literal["file", "dir", "symlink", "hardlink", "other"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a source: what it is, and where its bytes lie (``path`` at ``offset``)."""

    name: str
    kind: EntryKind
    size: int
    path: Path
    offset: int = 0
    link: str | None = None


class Tree(Protocol):
    """The members of a source, by archive-relative name (a folder or a tar)."""

    @property
    def path(self) -> Path:
        """The folder or archive itself."""
        ...

    @property
    def description(self) -> str:
        """``folder PATH`` or ``archive PATH``, to start error messages with."""
        ...

    def entry(self, name: str) -> Entry | None:
        """The member ``name``, or None if there is none."""
        ...

    def names(self) -> Iterable[str]:
        """Member names, at least the top two levels (for error messages)."""
        ...


def source_error(tree: Tree, message: str) -> ImageSourceError:
    """An ImageSourceError about ``tree``: its description, then ``message``."""
    return ImageSourceError(f"{tree.description}: {message}", source=str(tree.path))


def member_name(raw: str) -> str | None:
    """The archive-relative form of a member name; None if it lies outside the root."""
    if raw.startswith("/") or re.match(r"[A-Za-z]:[\\/]", raw):
        return None
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class DirTree:
    """A folder. Symbolic links are refused (they could lead outside it)."""

    def __init__(self, root: Path) -> None:
        self.path = root
        self.root = root.resolve()
        self.description = f"folder {root}"

    def entry(self, name: str) -> Entry | None:
        """The member ``name`` (lstat'ed part by part: no link is followed on the way)."""
        parts = name.split("/")
        current = self.root
        for position, part in enumerate(parts):
            current = current / part
            try:
                info = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise source_error(self, f"cannot read {name}: {exc}") from None
            if stat.S_ISLNK(info.st_mode):
                if position < len(parts) - 1:
                    raise source_error(
                        self,
                        f"{'/'.join(parts[: position + 1])} is a symbolic link; refusing to"
                        f" follow it to {name}",
                    )
                return Entry(name, "symlink", 0, current, link=os.readlink(current))
        if stat.S_ISREG(info.st_mode):
            return Entry(name, "file", info.st_size, current)
        return Entry(name, "dir" if stat.S_ISDIR(info.st_mode) else "other", 0, current)

    def names(self) -> Iterable[str]:
        """The names of the top two levels."""
        # Two levels are enough for the hint about a layout one folder down.
        try:
            with os.scandir(self.root) as top:
                children = list(top)
            for child in children:
                yield child.name
                if child.is_dir(follow_symlinks=False):
                    with os.scandir(child.path) as inner:
                        yield from (f"{child.name}/{item.name}" for item in inner)
        except OSError as exc:
            raise source_error(self, f"cannot list it: {exc}") from None


class TarTree:
    """A plain (uncompressed) tar archive, scanned once; members are read at their offset.

    Refuses, for every member: a path outside the archive root, a name that appears twice,
    data past the end of the file; and an archive without its end-of-archive block
    (truncated).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"archive {path}"
        self._entries: dict[str, Entry] = {}
        try:
            with path.open("rb") as file:
                self._scan(file, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            raise source_error(self, f"cannot read it: {exc}") from None

    def _scan(self, file: BinaryIO, file_size: int) -> None:
        head = file.read(4)
        if head.startswith(GZIP_MAGIC) or head == ZSTD_MAGIC:
            raise source_error(
                self,
                "is compressed; blobs are read in place, so give the plain tar"
                " (decompress it first, e.g. gunzip)",
            )
        file.seek(0)
        try:
            with tarfile.open(fileobj=file, mode="r:") as archive:
                while (info := archive.next()) is not None:
                    self._add(info, file_size)
                end = archive.offset
        except (tarfile.TarError, ValueError, OverflowError) as exc:
            raise source_error(
                self, f"is not a readable tar archive (truncated or corrupt: {exc})"
            ) from None
        # tarfile stops quietly at a short or garbled header: demand the end-of-archive block.
        file.seek(end)
        if file.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise source_error(
                self,
                f"is truncated or corrupt: no end-of-archive block at byte {end}"
                f" (the file has {file_size} bytes)",
            )

    def _add(self, info: tarfile.TarInfo, file_size: int) -> None:
        name = member_name(info.name)
        if name is None:
            raise source_error(self, f"member {info.name!r} lies outside the archive root")
        if not name:
            return  # the root folder itself ("./")
        kind: EntryKind
        if info.isreg() and not info.issparse():
            kind = "file"
            if info.offset_data + info.size > file_size:
                raise source_error(
                    self,
                    f"is truncated: member {name} needs bytes up to"
                    f" {info.offset_data + info.size}, the file has {file_size}",
                )
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            kind = "other"
        previous = self._entries.get(name)
        if previous is not None and not (previous.kind == kind == "dir"):
            raise source_error(
                self, f"member {name} appears twice (which one is meant is ambiguous)"
            )
        self._entries[name] = Entry(
            name,
            kind,
            info.size if kind == "file" else 0,
            self.path,
            info.offset_data,
            info.linkname if kind in ("symlink", "hardlink") else None,
        )

    def entry(self, name: str) -> Entry | None:
        """The member ``name``, or None if the archive has none."""
        return self._entries.get(name)

    def names(self) -> Iterable[str]:
        """Every member name."""
        return self._entries.keys()


def open_tree(source: Path) -> Tree:
    """The folder or tar at ``source``; InvalidArgumentError if there is neither."""
    try:
        info = source.stat()
    except FileNotFoundError:
        raise InvalidArgumentError("source", f"no such file or folder: {source}") from None
    except OSError as exc:
        raise InvalidArgumentError(
            "source", f"cannot use {source}: {exc.strerror or exc}"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        return DirTree(source)
    if stat.S_ISREG(info.st_mode):
        return TarTree(source)
    raise InvalidArgumentError("source", f"not a folder or a regular file: {source}")


def _label(what: str, name: str) -> str:
    # "index.json", not "index.json index.json"; "config abc.json" keeps both.
    return name if what == name else f"{what} {name}"


def regular(tree: Tree, entry: Entry | None, name: str, what: str) -> Entry:
    """``entry`` if it is a regular file; else a clear ImageSourceError about ``what``."""
    label = _label(what, name)
    if entry is None:
        raise source_error(tree, f"{label} is missing")
    if entry.kind in ("symlink", "hardlink"):
        kind = "a symbolic link" if entry.kind == "symlink" else "a hard link"
        raise source_error(
            tree,
            f"{label} is {kind} (to {entry.link!r}), not a file; refusing to follow links"
            " in an image source",
        )
    if entry.kind != "file":
        raise source_error(tree, f"{label} is not a regular file")
    return entry


def read_member(tree: Tree, entry: Entry, limit: int, what: str) -> bytes:
    """The bytes of a (small) member, at most ``limit`` of them (blocking: call off the loop)."""
    label = _label(what, entry.name)
    if entry.size > limit:
        raise source_error(tree, f"{label} is {entry.size} bytes, over the {limit}-byte limit")
    with entry.path.open("rb") as file:
        file.seek(entry.offset)
        data = file.read(entry.size)
    if len(data) != entry.size:
        raise source_error(tree, f"{label} changed as it was read")
    return data


def parse_json(tree: Tree, data: bytes, what: str) -> Any:
    """``data`` parsed as JSON; ImageSourceError naming ``what`` if it is not."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise source_error(tree, f"{what} is not valid JSON ({exc})") from None


def json_object(tree: Tree, data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ImageSourceError naming ``what`` if it is not one."""
    document = parse_json(tree, data, what)
    if not isinstance(document, dict):
        raise source_error(tree, f"{what} is not a JSON object")
    return document


async def hash_member(tree: Tree, entry: Entry, token: CancellationToken) -> tuple[str, bytes]:
    """sha256 and first bytes of a member, hashed in worker-thread chunks.

    The token is checked between chunks (a chunk takes milliseconds), so a cancel stops it
    soon without leaving a thread behind.
    """
    sha = hashlib.sha256()
    head = bytearray()

    def step(file: BinaryIO, position: int) -> int:
        file.seek(entry.offset + position)
        chunk = file.read(min(_HASH_CHUNK, entry.size - position))
        sha.update(chunk)
        if position == 0:
            head.extend(chunk[:4])
        return len(chunk)

    with entry.path.open("rb") as file:
        position = 0
        while position < entry.size:
            token.throw_if_cancellation_requested()
            count = await anyio.to_thread.run_sync(step, file, position)
            if count == 0:
                raise source_error(tree, f"{entry.name} shrank while it was read")
            position += count
    return "sha256:" + sha.hexdigest(), bytes(head)
