"""Where a layer's bytes come from: LayerHasher, FileSource and StreamSource, one by one."""

from __future__ import annotations

import array
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import digest_of, open_fds_of, random_bytes

from ecrstream.errors import SourceChangedError
from ecrstream.source import (
    FileSource,
    LayerHasher,
    StreamSource,
    check_path,
    verified_by_destination,
)

pytestmark = pytest.mark.anyio


# -- LayerHasher ---------------------------------------------------------------------------------


def test_hasher_of_nothing_is_the_empty_digest() -> None:
    hasher = LayerHasher()
    assert (hasher.hashed, hasher.digest()) == (0, digest_of(b""))


def test_hasher_feeds_each_byte_once_whatever_the_overlaps() -> None:
    data = random_bytes(10_000)
    hasher = LayerHasher()
    hasher.update(0, memoryview(data)[:4000])
    hasher.update(1000, memoryview(data)[1000:6000])  # re-read from behind: 1000..3999 skipped
    hasher.update(0, memoryview(data)[:6000])  # nothing new
    hasher.update(6000, memoryview(data)[6000:])
    assert hasher.hashed == len(data)
    assert hasher.digest() == digest_of(data)


def test_hasher_refuses_a_gap() -> None:
    hasher = LayerHasher()
    hasher.update(0, memoryview(b"abc"))
    with pytest.raises(RuntimeError, match="gap"):
        hasher.update(4, memoryview(b"e"))
    assert (hasher.hashed, hasher.digest()) == (3, digest_of(b"abc"))


def test_hasher_past_an_unseen_prefix_has_no_digest_until_fed_from_byte_0() -> None:
    data = random_bytes(10_000)
    hasher = LayerHasher(unseen=4000)
    assert (hasher.hashed, hasher.complete) == (4000, False)
    with pytest.raises(RuntimeError, match="gap"):
        hasher.update(5000, memoryview(data)[5000:])
    hasher.update(4000, memoryview(data)[4000:8000])
    hasher.update(2000, memoryview(data)[2000:9000])  # a re-alignment backwards, not to 0
    assert (hasher.hashed, hasher.complete) == (9000, False)
    with pytest.raises(RuntimeError, match=r"never saw bytes 0\.\.4000"):
        hasher.digest()
    hasher.update(0, memoryview(data)[:6000])  # the layer from its first byte again
    assert (hasher.hashed, hasher.complete) == (6000, True)
    hasher.update(6000, memoryview(data)[6000:])
    assert hasher.digest() == digest_of(data)


async def test_files_and_streams_are_not_verified_by_the_destination(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x")
    assert not verified_by_destination(FileSource(path))
    stream = StreamSource(chunks_of(b"x", [1]))
    assert not verified_by_destination(stream)
    await stream.aclose()
    assert not verified_by_destination(object())  # the attribute is optional


# -- check_path and FileSource -------------------------------------------------------------------


def test_check_path_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        check_path(tmp_path / "missing")
    with pytest.raises(ValueError, match="directory"):
        check_path(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        check_path(fifo)
    with pytest.raises(ValueError, match=r"str or os\.PathLike"):
        check_path(42)  # type: ignore[arg-type]
    regular = tmp_path / "ok"
    regular.write_bytes(b"x")
    assert check_path(str(regular)) == regular


async def test_file_source_reads_at_any_offset_and_closes(tmp_path: Path) -> None:
    data = random_bytes(100_000, seed=1)
    path = tmp_path / "layer"
    path.write_bytes(data)
    source = FileSource(path)
    assert source.size == len(data)
    async with source:
        assert open_fds_of(path) != []
        for offset, length in [(0, 10), (99_990, 10), (5, 70_000), (50_000, 1), (0, 100_000)]:
            buffer = bytearray(length)
            assert await source.read(offset, memoryview(buffer)) == length
            assert bytes(buffer) == data[offset : offset + length]
        buffer = bytearray(64)
        assert await source.read(99_980, memoryview(buffer)) == 20  # fewer only at the end
        assert bytes(buffer[:20]) == data[99_980:]
        assert await source.read(100_000, memoryview(buffer)) == 0
        source.check_unchanged()
    assert open_fds_of(path) == []
    with pytest.raises(RuntimeError, match="not open"):
        await source.read(0, memoryview(bytearray(1)))


async def test_file_source_section_reads_layer_offsets(tmp_path: Path) -> None:
    data = random_bytes(10_000, seed=2)
    path = tmp_path / "archive"
    path.write_bytes(data)
    async with FileSource(path, start=1000, length=3000) as section:
        assert section.size == 3000
        buffer = bytearray(5000)
        assert await section.read(0, memoryview(buffer)) == 3000
        assert bytes(buffer[:3000]) == data[1000:4000]
        assert await section.read(2990, memoryview(buffer)) == 10
        assert bytes(buffer[:10]) == data[3990:4000]
    async with FileSource(path, start=9000) as tail:
        assert tail.size == 1000


@pytest.mark.parametrize(
    ("start", "length", "match"),
    [
        (-1, None, "offset"),
        (True, None, "offset"),
        (0, -1, "length"),
        (0, 1.5, "length"),
        (10, 1, "past the end"),
        (5, 6, "past the end"),
    ],
)
def test_file_source_refuses_a_bad_section(
    tmp_path: Path, start: object, length: object, match: str
) -> None:
    path = tmp_path / "ten"
    path.write_bytes(b"0123456789")
    with pytest.raises(ValueError, match=match):
        FileSource(path, start=start, length=length)  # type: ignore[arg-type]


async def test_file_source_notices_a_file_that_shrinks_while_read(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(random_bytes(10_000, seed=3))
    async with FileSource(path) as source:
        os.truncate(path, 5000)
        with pytest.raises(SourceChangedError, match="shrank"):
            await source.read(4000, memoryview(bytearray(2000)))
        with pytest.raises(SourceChangedError, match="changed"):
            source.check_unchanged()


@pytest.mark.parametrize("change", ["grow", "touch"])
async def test_file_source_check_unchanged_compares_size_and_mtime(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"abc")
    async with FileSource(path) as source:
        source.check_unchanged()
        if change == "grow":
            with path.open("ab") as file:
                file.write(b"d")
        else:
            info = path.stat()
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
        with pytest.raises(SourceChangedError):
            source.check_unchanged()


async def test_file_source_refuses_a_file_changed_before_it_was_opened(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"abc")
    source = FileSource(path)
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    with pytest.raises(SourceChangedError):
        async with source:
            pass  # pragma: no cover - never entered
    assert open_fds_of(path) == []


# -- StreamSource --------------------------------------------------------------------------------


async def chunks_of(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    offset, index = 0, 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        index += 1


@pytest.mark.parametrize(
    "sizes",
    [[1], [7, 1, 300, 2], [4096], [100_000], [3, 9000, 1, 1, 65_537]],
    ids=["1-byte", "uneven", "part-sized", "one-chunk", "mixed"],
)
async def test_stream_source_rechunks_any_chunk_sizes(sizes: list[int]) -> None:
    data = random_bytes(50_000, seed=4)
    source = StreamSource(chunks_of(data, sizes))
    assert source.size is None
    got = bytearray()
    offset = 0
    buffer = bytearray(4096)
    while count := await source.read(offset, memoryview(buffer)):
        got += buffer[:count]
        offset += count
        source.release(offset)
        assert count == 4096 or offset == len(data)  # full parts until the end
    assert bytes(got) == data
    await source.aclose()


async def test_stream_source_rereads_what_was_not_released_only() -> None:
    data = random_bytes(10_000, seed=5)
    source = StreamSource(chunks_of(data, [333]))
    buffer = bytearray(4000)
    assert await source.read(0, memoryview(buffer)) == 4000
    assert await source.read(4000, memoryview(buffer)) == 4000
    source.release(2000)
    # behind what was read, not behind what was released: still there (a re-alignment)
    assert await source.read(2000, memoryview(buffer)) == 4000
    assert bytes(buffer) == data[2000:6000]
    with pytest.raises(RuntimeError, match="cannot rewind"):
        await source.read(1999, memoryview(buffer))
    source.release(10_000)
    assert await source.read(10_000, memoryview(buffer)) == 0
    await source.aclose()


async def test_stream_source_takes_any_bytes_like_chunk_and_skips_empty_ones() -> None:
    words = array.array("H", [1, 2, 3])

    async def chunks() -> AsyncIterator[bytes | bytearray | memoryview]:
        yield b""
        yield bytearray(b"ab")
        yield memoryview(b"xcdx")[1:3]
        yield memoryview(words)
        yield b""

    source = StreamSource(chunks())
    buffer = bytearray(100)
    count = await source.read(0, memoryview(buffer))
    assert bytes(buffer[:count]) == b"abcd" + words.tobytes()
    await source.aclose()


async def test_stream_source_refuses_a_chunk_that_is_not_bytes() -> None:
    async def chunks() -> AsyncIterator[object]:
        yield b"ok"
        yield "text"

    source = StreamSource(chunks())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes-like"):
        await source.read(0, memoryview(bytearray(10)))
    await source.aclose()


async def test_stream_source_aclose_closes_the_generator() -> None:
    closed = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 100
        finally:
            closed.append(True)

    source = StreamSource(chunks())
    assert await source.read(0, memoryview(bytearray(250))) == 250
    await source.aclose()
    assert closed == [True]


async def test_stream_source_holds_a_bounded_window() -> None:
    """Bytes released are dropped: a long stream read part by part never piles up."""
    part = 64 * 1024
    source = StreamSource(chunks_of(random_bytes(4 * 1024 * 1024, seed=6), [1000, 70_000]))
    buffer = bytearray(part)
    offset = 0
    while count := await source.read(offset, memoryview(buffer)):
        offset += count
        source.release(offset)
        held = len(source._window)
        assert held <= part + 70_000  # what is not yet read, at most one chunk past a part
    await source.aclose()
