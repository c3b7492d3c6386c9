"""Helpers the core's tests and the reliability tool share: digests, layer bytes, file
descriptors, a one-part layer push, and the invariant every successful upload satisfies;
for the copy tests, an image read back from the local ECR and the parts ECR applied.

The invariant, in one place: the parts the local endpoint accepted for an upload are, in
order and without gaps, exactly the source's bytes (``check_parts`` says what is wrong, in
words, and how many bytes; ``assert_parts_are_source`` fails a test on it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ecrstream import (
    CompleteLayerUploadRequest,
    EcrClient,
    InitiateLayerUploadRequest,
    UploadLayerPartRequest,
)
from ecrstream.local import LocalEcr
from ecrstream.registry import RegistryClient, manifest_blobs, parse_reference

if TYPE_CHECKING:
    from registry_fixtures import SeededImage

MIB = 1024 * 1024


def digest_of(data: bytes | bytearray | memoryview | str) -> str:
    """``sha256:<hex>`` of ``data`` (a str is hashed as its UTF-8 bytes)."""
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def random_bytes(size: int, seed: int | str = 0) -> bytes:
    """``size`` random bytes, the same for the same seed (layers that do not compress)."""
    return random.Random(seed).randbytes(size)


def open_fds_of(path: Path) -> list[str]:
    """File descriptors of this process open on ``path`` (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
    return found


async def push_layer(client: EcrClient, repository: str, data: bytes) -> str:
    """Upload ``data`` as a one-part layer through EcrClient; returns its digest."""
    upload = await client.initiate_layer_upload(InitiateLayerUploadRequest(repository))
    await client.upload_layer_part(
        UploadLayerPartRequest(repository, upload.upload_id, 0, len(data) - 1, data)
    )
    done = await client.complete_layer_upload(
        CompleteLayerUploadRequest(repository, upload.upload_id, (digest_of(data),))
    )
    return done.layer_digest


@dataclass
class PartsCheck:
    """The accepted parts of an upload against its source.

    ``covered``: bytes from byte 0 on that are exactly the source's; ``bad``: accepted bytes
    that are not (out of place, or other bytes); ``problems``: what is wrong, in words.
    """

    covered: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)


def sha256_of_bytes(data: bytes) -> Callable[[int, int], str]:
    """``sha256_of(offset, length)`` for a source held in memory."""
    view = memoryview(data)
    return lambda offset, length: hashlib.sha256(view[offset : offset + length]).hexdigest()


def sha256_of_file(path: Path) -> Callable[[int, int], str]:
    """``sha256_of(offset, length)`` for a source on disk (read when asked)."""

    def sha256_of(offset: int, length: int) -> str:
        with path.open("rb") as file:
            file.seek(offset)
            return hashlib.sha256(file.read(length)).hexdigest()

    return sha256_of


def check_parts(
    ecr: LocalEcr,
    upload_id: str,
    size: int,
    sha256_of: Callable[[int, int], str],
    *,
    whole: bool = True,
) -> PartsCheck:
    """Walk the parts ``ecr`` accepted for ``upload_id`` against a ``size``-byte source.

    ``whole``: the upload must hold the whole source (a success); else a prefix of it will
    do (an upload that was stopped).
    """
    check = PartsCheck()
    parts = ecr.accepted_parts(upload_id)
    if whole and not parts:
        check.problems.append(f"no part of upload {upload_id} was accepted")
    for part in parts:
        first, last, length = part.part_first_byte, part.part_last_byte, part.blob_length
        if first is None or last is None or length is None:
            check.problems.append(f"accepted part #{part.sequence} has no byte range")
            continue
        if last - first + 1 != length:
            check.problems.append(f"part {first}..{last} has a byte range of {length} bytes")
            check.bad += length
        elif first != check.covered:
            check.problems.append(f"part {first}..{last} accepted after byte {check.covered - 1}")
            check.bad += length
        elif first + length > size or part.blob_sha256 != sha256_of(first, length):
            check.problems.append(f"part {first}..{last} is not the source's bytes {first}..{last}")
            check.bad += length
        else:
            check.covered += length
    if whole and check.covered != size:
        check.problems.append(f"the accepted parts hold {check.covered} bytes, the source {size}")
    return check


def assert_parts_are_source(ecr: LocalEcr, upload_id: str, source: bytes | Path) -> None:
    """The parts ECR accepted for ``upload_id`` are, in order, exactly the source's bytes."""
    if isinstance(source, bytes):
        check = check_parts(ecr, upload_id, len(source), sha256_of_bytes(source))
    else:
        check = check_parts(ecr, upload_id, source.stat().st_size, sha256_of_file(source))
    assert check.problems == [], check.problems


# -- copies: what the local ECR holds after a copy_image or ``ecrstream copy`` -----------------


def repo_name(prefix: str = "src") -> str:
    """A repository name no other test uses."""
    return f"{prefix}/app-{uuid.uuid4().hex[:10]}"


async def ecr_reader(ecr: LocalEcr, client: EcrClient) -> RegistryClient:
    """A RegistryClient on the local ECR's /v2/ API, logged in as docker would be."""
    raw = client._client  # the aiobotocore client: GetAuthorizationToken is not wrapped
    data = (await raw.get_authorization_token())["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return RegistryClient(
        ecr.registry_address, credentials=(user, password), plain_http=True, docker_config=False
    )


async def assert_image_in_ecr(
    reader: RegistryClient, repository: str, reference: str, image: SeededImage
) -> None:
    """The manifest (by ``reference``) and every blob, byte for byte as seeded."""
    manifest = await reader.get_manifest(
        parse_reference(f"{reader.registry}/{repository}{reference}")
    )
    assert manifest.data == image.manifest
    assert manifest.digest == image.digest
    for descriptor in manifest_blobs(manifest):
        async with await reader.open_blob(repository, descriptor.digest, descriptor.size) as blob:
            data = bytearray()
            buffer = bytearray(256 * 1024)
            while count := await blob.readinto(memoryview(buffer)):
                data += buffer[:count]
        assert bytes(data) == image.blobs[descriptor.digest]


def parts_by_upload(ecr: LocalEcr, after: int = 0) -> dict[str, list[tuple[int, int]]]:
    """The UploadLayerPart byte ranges ECR applied, per upload id, in arrival order.

    ``after``: only records with a later sequence number (those of a resume).
    """
    parts: dict[str, list[tuple[int, int]]] = {}
    for record in ecr.requests("UploadLayerPart"):
        if record.accepted and record.upload_id is not None and record.sequence > after:
            assert record.part_first_byte is not None
            assert record.part_last_byte is not None
            parts.setdefault(record.upload_id, []).append(
                (record.part_first_byte, record.part_last_byte)
            )
    return parts


def last_sequence(ecr: LocalEcr) -> int:
    return max((r.sequence for r in ecr.requests()), default=0)


def assert_no_byte_sent_twice(ecr: LocalEcr) -> None:
    """Each upload's applied parts, over the whole test, follow each other from byte 0."""
    for upload_id, ranges in parts_by_upload(ecr).items():
        expected = 0
        for first, last in ranges:
            assert first == expected, (upload_id, ranges)
            expected = last + 1


async def assert_copied(
    ecr: LocalEcr, client: EcrClient, repository: str, reference: str, image: SeededImage
) -> None:
    """``image`` is in ``repository`` of the local ECR under ``reference`` (":tag" or
    "@digest"), read back through its /v2/ API byte for byte."""
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, reference, image)
