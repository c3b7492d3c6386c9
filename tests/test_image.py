"""push_image end to end on the local ECR endpoint: sources built here, no Docker daemon.

Every source is made with tarfile/hashlib/json in tmp_path: OCI layouts (folder and tar),
Docker 25+ archives (OCI layout plus manifest.json) and older docker save archives. What
ECR stores is read back with batch_get_image; what was sent is read from the proxy's records.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import AioSession
from lying_ecr import Exchange, LyingEcr, Reply

from ecrstream.buffers import PartBufferPool
from ecrstream.cancellation import CancellationToken, CancellationTokenSource
from ecrstream.client import EcrClient
from ecrstream.errors import (
    CorruptBlobError,
    DigestMismatchError,
    ImageSelectionError,
    ImageSourceError,
    InvalidArgumentError,
    LayersNotFoundError,
)
from ecrstream.image import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PushCanceledError,
    PushImageResult,
    PushProgress,
    push_image,
)
from ecrstream.local import FaultKind, LocalEcr, Operation
from ecrstream.models import BatchGetImageRequest, PutImageRequest, PutImageResponse
from ecrstream.retry import RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KIB = 1024
MIB = 1024 * KIB
ULP = Operation.UPLOAD_LAYER_PART
CHECK = Operation.BATCH_CHECK_LAYER_AVAILABILITY
INITIATE = Operation.INITIATE_LAYER_UPLOAD
COMPLETE = Operation.COMPLETE_LAYER_UPLOAD
PUT = Operation.PUT_IMAGE
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


# -- building sources ---------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_bytes(size: int, seed: int) -> bytes:
    """Deterministic layer content; starts with a marker so it never looks gzipped."""
    prefix = f"layer-{seed}:".encode()
    return prefix + random.Random(seed).randbytes(size - len(prefix))


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


@dataclass
class Link:
    """A tar member that is a link, not a file."""

    target: str
    hard: bool = False


@dataclass
class Source:
    """An image source in memory: its members, and what push_image should make of it."""

    files: dict[str, bytes | Link]
    manifest: bytes  # the top manifest (or index) as ECR must store it; b"" when built
    manifest_media_type: str
    layer_digests: list[str]
    config_digests: list[str]
    children: list[bytes] = field(default_factory=list)

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def blob_count(self) -> int:
        return len(set(self.layer_digests)) + len(set(self.config_digests))


def config_for(layers: list[bytes], architecture: str = "amd64") -> bytes:
    return json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
        },
        sort_keys=True,
    ).encode()


def image_manifest(
    files: dict[str, bytes | Link],
    layers: list[bytes],
    *,
    media_type: str = OCI_MANIFEST,
    layer_type: str = OCI_LAYER,
    config_type: str = OCI_CONFIG,
    architecture: str = "amd64",
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, str]:
    """Write config and layer blobs into ``files``; returns the manifest bytes and config digest."""
    config = config_for(layers, architecture)
    files[blob_path(digest_of(config))] = config
    for layer in layers:
        files[blob_path(digest_of(layer))] = layer
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": layer_type, "digest": digest_of(layer), "size": len(layer)}
            for layer in layers
        ],
        **(extra or {}),
    }
    # Indented, with a trailing newline: bytes json.dumps would not reproduce as they are.
    manifest = (json.dumps(document, indent=2) + "\n").encode()
    files[blob_path(digest_of(manifest))] = manifest
    return manifest, digest_of(config)


def index_json(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def descriptor(media_type: str, data: bytes, **more: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **more}


def oci_source(layers: list[bytes], **options: Any) -> Source:
    files: dict[str, bytes | Link] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    media_type = options.get("media_type", OCI_MANIFEST)
    manifest, config_digest = image_manifest(files, layers, **options)
    files["index.json"] = index_json([descriptor(media_type, manifest)])
    return Source(
        files, manifest, media_type, [digest_of(layer) for layer in layers], [config_digest]
    )


def docker25_source(layers: list[bytes], tag: str = "example/app:1.0") -> Source:
    """What `docker save` writes from Docker 25 on: an OCI layout plus manifest.json."""
    files: dict[str, bytes | Link] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    manifest, config_digest = image_manifest(files, layers)
    annotations = {
        "io.containerd.image.name": f"docker.io/{tag}",
        "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[1],
    }
    files["index.json"] = index_json([descriptor(OCI_MANIFEST, manifest, annotations=annotations)])
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": blob_path(config_digest),
                "RepoTags": [tag],
                "Layers": [blob_path(digest_of(layer)) for layer in layers],
            }
        ]
    ).encode()
    files["repositories"] = b"{}"
    return Source(files, manifest, OCI_MANIFEST, [digest_of(x) for x in layers], [config_digest])


def legacy_source(layers: list[bytes], tag: str = "example/app:1.0") -> Source:
    """An older `docker save` archive: manifest.json, <id>.json config, <id>/layer.tar."""
    files: dict[str, bytes | Link] = {}
    config = config_for(layers)  # a gzipped layer's diff_id is not its digest: not checked
    config_name = digest_of(config).removeprefix("sha256:") + ".json"
    files[config_name] = config
    layer_names = []
    for number, layer in enumerate(layers):
        folder = hashlib.sha256(f"layer-folder-{number}".encode()).hexdigest()
        files[f"{folder}/VERSION"] = b"1.0"
        files[f"{folder}/json"] = b"{}"
        files[f"{folder}/layer.tar"] = layer
        layer_names.append(f"{folder}/layer.tar")
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
    ).encode()
    files["repositories"] = b"{}"
    return Source(files, b"", DOCKER_MANIFEST, [digest_of(x) for x in layers], [digest_of(config)])


def index_source() -> tuple[Source, list[bytes]]:
    """A two-platform image: an index in index.json, two manifests sharing a layer."""
    shared = layer_bytes(40 * KIB, 100)
    amd64 = [shared, layer_bytes(600 * KIB, 101)]
    arm64 = [shared, layer_bytes(300 * KIB, 102)]
    files: dict[str, bytes | Link] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    first, first_config = image_manifest(files, amd64, architecture="amd64")
    second, second_config = image_manifest(files, arm64, architecture="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, first, platform={"architecture": "amd64", "os": "linux"}),
                descriptor(OCI_MANIFEST, second, platform={"architecture": "arm64", "os": "linux"}),
            ],
        },
        indent=2,
    ).encode()
    files[blob_path(digest_of(index))] = index
    files["index.json"] = index_json([descriptor(OCI_INDEX, index)])
    layer_digests = [digest_of(layer) for layer in [*amd64, arm64[1]]]
    source = Source(files, index, OCI_INDEX, layer_digests, [first_config, second_config])
    return source, [first, second]


def write_folder(files: dict[str, bytes | Link], root: Path) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            if content.hard:
                os.link(root / content.target, path)
            else:
                path.symlink_to(content.target)
        else:
            path.write_bytes(content)
    return root


def write_tar(files: dict[str, bytes | Link], path: Path, prefix: str = "") -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        folders: set[str] = set()
        for name, content in files.items():
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in folders and not name.startswith(("/", "..")):
                    folders.add(folder)
                    info = tarfile.TarInfo(prefix + folder)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    archive.addfile(info)
            info = tarfile.TarInfo(name if name.startswith(("/", "..")) else prefix + name)
            if isinstance(content, Link):
                info.type = tarfile.LNKTYPE if content.hard else tarfile.SYMTYPE
                info.linkname = content.target
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def client(ecr: LocalEcr, aio_session: AioSession) -> AsyncIterator[EcrClient]:
    """An EcrClient on the local endpoint, with quick backoff."""
    async with EcrClient.create(
        **ecr.client_kwargs(),
        session=aio_session,
        retry=RetryPolicy(max_attempts=3, base_delay=0.01),
    ) as ecr_client:
        yield ecr_client


@pytest.fixture
def layers() -> list[bytes]:
    """Three layers: a few KB, a few hundred KB, ~6 MiB (two parts at 5 MiB)."""
    return [layer_bytes(4 * KIB, 1), layer_bytes(300 * KIB, 2), layer_bytes(6 * MIB, 3)]


async def fetch(client: EcrClient, repository: str, image_id: str) -> tuple[str, str, str | None]:
    """(manifest text, digest, media type) of one image, read back with BatchGetImage."""
    response = await client.batch_get_image(BatchGetImageRequest(repository, (image_id,)))
    assert not response.failures, response.failures
    (image,) = response.images
    assert image.image_manifest is not None
    assert image.image_digest is not None
    return image.image_manifest, image.image_digest, image.image_manifest_media_type


def uploaded_digests(ecr: LocalEcr) -> set[str]:
    """Blobs committed by successful CompleteLayerUpload calls."""
    return {
        digest
        for record in ecr.requests(COMPLETE)
        if record.status == 200
        for digest in record.layer_digests
    }


def sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci-folder", "oci-tar", "docker25-tar"])
async def test_oci_sources_round_trip_with_manifest_bytes_kept(
    kind: str,
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    tmp_path: Path,
    layers: list[bytes],
) -> None:
    source = docker25_source(layers) if kind == "docker25-tar" else oci_source(layers)
    if kind == "oci-folder":
        path = write_folder(source.files, tmp_path / "layout")
    else:  # "./"-prefixed names as `tar -C layout -cf image.tar .` writes them, and bare ones
        path = write_tar(source.files, tmp_path / "image.tar", "./" if kind == "oci-tar" else "")

    result = await push_image(client, path, repository, tags=["v1", "latest"], part_size=5 * MIB)

    config = source.files[blob_path(source.config_digests[0])]
    assert isinstance(config, bytes)
    assert result == PushImageResult(
        manifest_digest=source.manifest_digest,
        layers_uploaded=3,
        layers_skipped=0,
        configs_uploaded=1,
        configs_skipped=0,
        bytes_uploaded=sum(map(len, layers)) + len(config),
        media_type=OCI_MANIFEST,
        tags=("v1", "latest"),
        lowest_concurrency=4,  # never throttled: the default max_concurrent_layers throughout
    )
    for image_id in ("v1", "latest", source.manifest_digest):
        text, digest, media_type = await fetch(client, repository, image_id)
        assert text.encode() == source.manifest
        assert digest == source.manifest_digest
        assert media_type == OCI_MANIFEST
    # One availability check for every blob, before any upload starts
    first = ecr.requests()[0]
    assert first.operation == CHECK
    assert set(first.layer_digests) == {*source.layer_digests, *source.config_digests}
    assert uploaded_digests(ecr) == {*source.layer_digests, *source.config_digests}
    # The 6 MiB layer went as two parts, in order, read in place from the source
    big = [r for r in ecr.requests(ULP) if r.blob_length and r.blob_length >= MIB]
    assert [(r.part_first_byte, r.blob_length) for r in big] == [(0, 5 * MIB), (5 * MIB, MIB)]
    puts = ecr.requests(PUT)
    assert len(puts) == 2
    assert all(r.status == 200 for r in puts)

    ecr.reset()
    again = await push_image(client, path, repository, tags=["v1", "latest"])

    assert again.manifest_digest == source.manifest_digest
    assert (again.layers_uploaded, again.layers_skipped) == (0, 3)
    assert (again.configs_uploaded, again.configs_skipped) == (0, 1)
    assert again.bytes_uploaded == 0
    assert ecr.requests(ULP) == []
    assert ecr.requests(INITIATE) == []
    # The same manifest and tag again: ECR's ImageAlreadyExistsException counts as success
    assert {r.error_code for r in ecr.requests(PUT)} == {"ImageAlreadyExistsException"}


@pytest.mark.parametrize("form", ["tar", "folder"])
async def test_legacy_docker_save_gets_a_schema2_manifest_from_hashed_layer_tars(
    form: str,
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    tmp_path: Path,
    layers: list[bytes],
) -> None:
    gzipped = b"\x1f\x8b\x08\x00" + layer_bytes(2 * KIB, 9)  # looks like gzip: typed as such
    source = legacy_source([*layers, gzipped])
    if form == "tar":
        path = write_tar(source.files, tmp_path / "saved.tar")
    else:
        path = write_folder(source.files, tmp_path / "saved")

    result = await push_image(client, path, repository, tags=["legacy"])

    text, digest, media_type = await fetch(client, repository, "legacy")
    assert digest == result.manifest_digest == digest_of(text.encode())
    assert media_type == DOCKER_MANIFEST
    manifest = json.loads(text)
    config = source.files[source.config_digests[0].removeprefix("sha256:") + ".json"]
    assert isinstance(config, bytes)
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": digest_of(config)},
        "layers": [
            *({"mediaType": DOCKER_LAYER, "size": len(x), "digest": digest_of(x)} for x in layers),
            {"mediaType": DOCKER_LAYER_GZIP, "size": len(gzipped), "digest": digest_of(gzipped)},
        ],
    }
    assert (result.layers_uploaded, result.layers_skipped, result.configs_uploaded) == (4, 0, 1)
    assert uploaded_digests(ecr) == {digest_of(config), *map(digest_of, [*layers, gzipped])}

    ecr.reset()
    again = await push_image(client, path, repository, tags=["legacy"])
    assert again.manifest_digest == result.manifest_digest  # the built manifest is stable
    assert (again.layers_uploaded, again.layers_skipped) == (0, 4)
    assert ecr.requests(ULP) == []


async def test_legacy_duplicate_layer_linked_by_docker_save_is_followed(
    repository: str, client: EcrClient, tmp_path: Path
) -> None:
    # Older docker save stores a layer occurring twice once and symlinks the second one.
    layer = layer_bytes(8 * KIB, 5)
    other = layer_bytes(8 * KIB, 6)
    source = legacy_source([layer, other, layer])
    names = json.loads(source.files["manifest.json"])[0]["Layers"]  # type: ignore[arg-type]
    first_folder = names[0].split("/")[0]
    source.files[names[2]] = Link(f"../{first_folder}/layer.tar")
    path = write_tar(source.files, tmp_path / "saved.tar")

    result = await push_image(client, path, repository, tags=["dup"])

    text, _, _ = await fetch(client, repository, "dup")
    assert [x["digest"] for x in json.loads(text)["layers"]] == [
        digest_of(layer),
        digest_of(other),
        digest_of(layer),
    ]
    assert (result.layers_uploaded, result.layers_skipped) == (2, 0)


async def test_untagged_push_is_found_by_digest(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    source = oci_source([layer_bytes(10 * KIB, 7)])
    path = write_folder(source.files, tmp_path / "layout")

    result = await push_image(client, path, repository)

    (put,) = ecr.requests(PUT)
    assert put.status == 200
    text, digest, _ = await fetch(client, repository, result.manifest_digest)
    assert text.encode() == source.manifest
    assert digest == source.manifest_digest
    assert result.tags == ()


async def test_a_manifest_stored_under_another_digest_is_a_digest_mismatch(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    # PutImage names the digest it stored; one other than the manifest's own (a broken proxy
    # or emulator rewriting the manifest) fails the push instead of reporting success.
    source = oci_source([layer_bytes(10 * KIB, 8)])
    path = write_folder(source.files, tmp_path / "layout")
    other = "sha256:" + "0" * 64

    def stored_elsewhere(exchange: Exchange) -> Reply:
        answer = dict(exchange.answer or {})
        image = dict(answer["image"])
        image["imageId"] = {**image["imageId"], "imageDigest": other}
        return Reply(200, {**answer, "image": image})

    with LyingEcr(ecr) as liar:
        liar.lie("PutImage", stored_elsewhere, forward=True)
        async with EcrClient.create(**liar.client_kwargs()) as lied_to:
            with pytest.raises(DigestMismatchError) as caught:
                await push_image(lied_to, path, repository, tags=["v1"])
    assert caught.value.expected == source.manifest_digest
    assert caught.value.actual == other
    assert other in str(caught.value)
    assert liar.told == 1


async def test_multi_platform_index_pushes_each_manifest_by_digest_then_the_index(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    source, children = index_source()
    path = write_tar(source.files, tmp_path / "multi.tar")

    result = await push_image(client, path, repository, tags=["multi"])

    assert result.manifest_digest == source.manifest_digest
    assert result.media_type == OCI_INDEX
    assert result.platform_manifest_digests == tuple(digest_of(child) for child in children)
    # The shared layer counts (and goes) once
    assert (result.layers_uploaded, result.configs_uploaded) == (3, 2)
    assert sorted(str(r.blob_sha256) for r in ecr.requests(ULP)) == sorted(
        digest.removeprefix("sha256:") for digest in {*source.layer_digests, *source.config_digests}
    )
    # Platform manifests first, the index (tagged) last
    assert len(ecr.requests(PUT)) == 3
    assert all(r.status == 200 for r in ecr.requests(PUT))
    assert ecr.requests()[-1].operation == PUT
    text, digest, media_type = await fetch(client, repository, "multi")
    assert text.encode() == source.manifest
    assert digest == source.manifest_digest
    assert media_type == OCI_INDEX
    for child in children:
        text, digest, media_type = await fetch(client, repository, digest_of(child))
        assert text.encode() == child
        assert media_type == OCI_MANIFEST

    ecr.reset()
    again = await push_image(client, path, repository, tags=["multi"])
    assert (again.layers_uploaded, again.layers_skipped, again.configs_skipped) == (0, 3, 2)
    assert ecr.requests(ULP) == []


async def test_image_ref_picks_one_image_of_several(
    repository: str, client: EcrClient, tmp_path: Path
) -> None:
    first = docker25_source([layer_bytes(5 * KIB, 11)], tag="example/app:one")
    second = docker25_source([layer_bytes(5 * KIB, 12)], tag="example/app:two")
    files = {**first.files, **second.files}
    entries = [*json.loads(first.files["index.json"])["manifests"]]  # type: ignore[arg-type]
    entries += json.loads(second.files["index.json"])["manifests"]  # type: ignore[arg-type]
    files["index.json"] = index_json(entries)
    path = write_tar(files, tmp_path / "two.tar")

    with pytest.raises(ImageSourceError, match="choose one with image_ref"):
        await push_image(client, path, repository)
    result = await push_image(client, path, repository, tags=["t"], image_ref="two")

    assert result.manifest_digest == second.manifest_digest


# -- concurrency, progress ----------------------------------------------------------------


@pytest.mark.parametrize("limit", [2, 3])
async def test_layers_upload_concurrently_up_to_the_limit(
    limit: int, ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    layers = [
        layer_bytes(size, 20 + n)
        for n, size in enumerate([64 * KIB, 48 * KIB, 32 * KIB, 16 * KIB, 8 * KIB])
    ]
    source = oci_source(layers)
    path = write_folder(source.files, tmp_path / "layout")
    progressed: set[str] = set()
    all_in_flight = anyio.Event()
    in_flight: set[str] = set()
    most_in_flight = 0
    trace: list[PushProgress] = []

    async def on_progress(progress: PushProgress) -> None:
        nonlocal most_in_flight
        trace.append(progress)
        if progress.event == "started":
            in_flight.add(progress.digest)
            most_in_flight = max(most_in_flight, len(in_flight))
        elif progress.event == "done":
            in_flight.discard(progress.digest)
        elif progress.event == "progress":
            # Hold every upload after its part until `limit` uploads have a part in: only
            # an implementation running `limit` uploads at once gets past this.
            progressed.add(progress.digest)
            if len(progressed) >= limit:
                all_in_flight.set()
            await all_in_flight.wait()

    with anyio.fail_after(10):
        result = await push_image(
            client,
            path,
            repository,
            tags=["c"],
            max_concurrent_layers=limit,
            on_progress=on_progress,
        )

    assert result.layers_uploaded == 5
    assert most_in_flight == limit
    # The server saw it too: count uploads open (InitiateLayerUpload .. CompleteLayerUpload)
    records = ecr.requests()
    opened = {r.upload_id: r.sequence for r in records if r.operation == INITIATE}
    closed = {r.upload_id: r.sequence for r in records if r.operation == COMPLETE}
    assert opened.keys() == closed.keys()
    assert len(opened) == 6
    most_open = max(
        sum(1 for upload in opened if opened[upload] <= moment < closed[upload])
        for moment in range(1, len(records) + 1)
    )
    assert most_open == limit
    # The progress trace: every blob starts, sends, finishes; the totals add up
    uploaded = {*source.layer_digests, *source.config_digests}
    assert {p.digest for p in trace if p.event == "started"} == uploaded
    assert {p.digest for p in trace if p.event == "done"} == uploaded
    last = trace[-1]
    assert last.total_bytes_sent == last.total_bytes == result.bytes_uploaded
    assert (last.layers_done, last.layers_total) == (5, 5)
    assert all(
        p.kind == ("config" if p.digest in source.config_digests else "layer") for p in trace
    )
    sent = [p.total_bytes_sent for p in trace]
    assert sent == sorted(sent)


async def test_ecr_throttling_lowers_how_many_layers_push_uploads_at_once(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    """push_image shares copy's limit: the first 3 parts (of the 3 blobs in flight) are
    throttled, each retry takes one off, and the next blob starts with fewer in flight."""
    layers = [layer_bytes(40 * KIB - n * KIB, 200 + n) for n in range(6)]
    path = write_folder(oci_source(layers).files, tmp_path / "layout")
    ecr.faults.add(ULP, FaultKind.THROTTLING, times=3)
    running: set[str] = set()
    counts: list[int] = []

    def on_progress(progress: PushProgress) -> None:
        if progress.event == "started":
            running.add(progress.digest)
            counts.append(len(running))
        elif progress.event == "done":
            running.discard(progress.digest)

    result = await push_image(
        client, path, repository, tags=["t"], max_concurrent_layers=3, on_progress=on_progress
    )

    assert result.layers_uploaded == 6
    assert [r.fault for r in ecr.requests(ULP)].count(FaultKind.THROTTLING) == 3
    assert counts[:3] == [1, 2, 3]
    assert len(counts) == 7  # the config too
    # Unthrottled, each next blob starts as one ends: 3 in flight. Throttled, the first to
    # start after them waits for a free place under the lowered limit.
    assert counts[3] <= 2
    assert 1 <= result.lowest_concurrency <= 2


async def test_uploads_start_largest_first_and_each_blob_is_checked_once_in_one_batch(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    sizes = [8 * KIB, 96 * KIB, 16 * KIB, 300 * KIB, 1 * KIB, 64 * KIB, 5 * MIB + 7]
    layers = [layer_bytes(size, 110 + n) for n, size in enumerate(sizes)]
    source = oci_source(layers)
    path = write_folder(source.files, tmp_path / "layout")
    config = source.files[blob_path(source.config_digests[0])]
    assert isinstance(config, bytes)
    size_of = {digest_of(blob): len(blob) for blob in [*layers, config]}
    started: list[str] = []

    def on_progress(progress: PushProgress) -> None:
        if progress.event == "started":
            started.append(progress.digest)

    await push_image(
        client, path, repository, tags=["big"], max_concurrent_layers=2, on_progress=on_progress
    )

    assert [size_of[digest] for digest in started] == sorted(size_of.values(), reverse=True)
    initiated = [r.sequence for r in ecr.requests(INITIATE)]
    assert len(initiated) == len(size_of)
    # One batched availability check names every blob, before the first upload
    checks = ecr.requests(CHECK)
    assert set(checks[0].layer_digests) == set(size_of)
    assert checks[0].sequence < min(initiated)
    # ... and it is the only one: no blob pays a check of its own inside the uploader
    assert len(checks) == 1


async def test_progress_reports_parts_of_a_large_layer_and_skipped_layers_as_done(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path, layers: list[bytes]
) -> None:
    path = write_folder(oci_source(layers).files, tmp_path / "layout")
    await push_image(client, path, repository, tags=["p"])  # every blob there now
    more = oci_source([*layers, layer_bytes(6 * MIB, 30)])
    write_folder(more.files, tmp_path / "more")
    trace: list[PushProgress] = []

    result = await push_image(
        client,
        tmp_path / "more",
        repository,
        tags=["p2"],
        part_size=5 * MIB,
        on_progress=trace.append,
    )

    assert (result.layers_uploaded, result.layers_skipped) == (1, 3)
    big = digest_of(layer_bytes(6 * MIB, 30))
    events = [(p.event, p.blob_bytes_sent) for p in trace if p.digest == big]
    assert events == [
        ("started", 0),
        ("progress", 5 * MIB),
        ("progress", 6 * MIB),
        ("done", 6 * MIB),
    ]
    assert trace[0].layers_done == 3
    assert trace[-1].layers_done == trace[-1].layers_total == 4
    # Only what this push uploads counts: the new layer and the new config
    assert result.configs_uploaded == 1
    assert trace[-1].total_bytes == trace[-1].total_bytes_sent == result.bytes_uploaded


# -- integrity ----------------------------------------------------------------------------


async def test_corrupted_blob_fails_with_digest_mismatch_and_is_never_completed(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    good = layer_bytes(20 * KIB, 40)
    original = layer_bytes(900 * KIB, 41)
    source = oci_source([good, original])
    corrupted = bytearray(original)
    corrupted[1000] ^= 0xFF  # same size, other bytes
    source.files[blob_path(digest_of(original))] = bytes(corrupted)
    path = write_tar(source.files, tmp_path / "corrupt.tar")

    with pytest.raises(DigestMismatchError) as caught:
        await push_image(client, path, repository, tags=["bad"], max_concurrent_layers=1)

    assert caught.value.expected == digest_of(original)
    assert caught.value.actual == digest_of(bytes(corrupted))
    await ecr.wait_idle_async()
    # Its part went, its CompleteLayerUpload never did
    corrupt_uploads = {
        r.upload_id for r in ecr.requests(ULP) if r.blob_sha256 == sha_hex(bytes(corrupted))
    }
    assert len(corrupt_uploads) == 1
    assert not [r for r in ecr.requests(COMPLETE) if r.upload_id in corrupt_uploads]
    assert digest_of(original) not in uploaded_digests(ecr)
    assert digest_of(bytes(corrupted)) not in uploaded_digests(ecr)
    assert ecr.requests(PUT) == []


# -- untrusted sources: a clear ImageSourceError, and not one request ---------------------


def _oci(layers: list[bytes] | None = None, **options: Any) -> Source:
    return oci_source(layers or [layer_bytes(3 * KIB, 50), layer_bytes(5 * KIB, 51)], **options)


def _escaping_member(source: Source) -> None:
    source.files["../outside.txt"] = b"x"


def _absolute_member(source: Source) -> None:
    source.files["/etc/ecrstream-test"] = b"x"


def _symlinked_blob(source: Source) -> None:
    source.files[blob_path(source.layer_digests[0])] = Link("/etc/passwd")


def _symlink_to_other_blob(source: Source) -> None:
    source.files[blob_path(source.layer_digests[0])] = Link(blob_path(source.layer_digests[1]))


def _hardlinked_blob(source: Source) -> None:
    source.files[blob_path(source.layer_digests[0])] = Link("index.json", hard=True)


def _blob_size_differs(source: Source) -> None:
    name = blob_path(source.layer_digests[1])
    content = source.files[name]
    assert isinstance(content, bytes)
    source.files[name] = content + b"!"


def _missing_blob(source: Source) -> None:
    del source.files[blob_path(source.layer_digests[1])]


def _manifest_bytes_corrupted(source: Source) -> None:
    source.files[blob_path(source.manifest_digest)] = source.manifest.replace(b"2", b"3", 1)


def _unknown_manifest_type(source: Source) -> None:
    source.files["index.json"] = index_json(
        [descriptor("application/vnd.example.manifest+json", source.manifest)]
    )


def _legacy_layer_escapes(source: Source) -> None:
    source.files["manifest.json"] = json.dumps(
        [{"Config": "config.json", "RepoTags": [], "Layers": ["../../etc/passwd"]}]
    ).encode()
    source.files["config.json"] = b"{}"
    del source.files["oci-layout"]


def _legacy_layer_symlink_outside(source: Source) -> None:
    source.files["config.json"] = b"{}"
    source.files["abc/layer.tar"] = Link("../../../etc/passwd")
    source.files["manifest.json"] = json.dumps(
        [{"Config": "config.json", "RepoTags": [], "Layers": ["abc/layer.tar"]}]
    ).encode()
    del source.files["oci-layout"]


UNSAFE_TAR_CASES: dict[str, tuple[Callable[[Source], None], str]] = {
    "member outside the root": (_escaping_member, "outside the archive root"),
    "absolute member path": (_absolute_member, "outside the archive root"),
    "symlink where a blob should be": (_symlinked_blob, "symbolic link"),
    "symlink to another blob": (_symlink_to_other_blob, "symbolic link"),
    "hard link where a blob should be": (_hardlinked_blob, "hard link"),
    "blob size differs from its descriptor": (_blob_size_differs, "its descriptor says"),
    "blob missing": (_missing_blob, "is missing"),
    "manifest bytes do not match its digest": (_manifest_bytes_corrupted, "corrupt source"),
    "unknown manifest media type": (_unknown_manifest_type, "ECR cannot take"),
    "legacy layer path outside the root": (_legacy_layer_escapes, "outside the archive root"),
    "legacy layer symlink outside": (_legacy_layer_symlink_outside, "symbolic link"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TAR_CASES))
async def test_unsafe_or_broken_archive_is_refused_before_any_request(
    case: str, ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    mutate, message = UNSAFE_TAR_CASES[case]
    source = _oci()
    mutate(source)
    path = write_tar(source.files, tmp_path / "image.tar")

    with pytest.raises(ImageSourceError, match=message):
        await push_image(client, path, repository, tags=["x"])

    assert ecr.requests() == []


def _truncate_mid_blob(path: Path, offsets: dict[str, tarfile.TarInfo]) -> None:
    last = max(offsets.values(), key=lambda info: info.offset_data)
    os.truncate(path, last.offset_data + last.size // 2)


def _truncate_at_member_boundary(path: Path, offsets: dict[str, tarfile.TarInfo]) -> None:
    last = max(offsets.values(), key=lambda info: info.offset)
    os.truncate(path, last.offset)  # whole members gone, no end-of-archive block


def _truncate_mid_header(path: Path, offsets: dict[str, tarfile.TarInfo]) -> None:
    last = max(offsets.values(), key=lambda info: info.offset)
    os.truncate(path, last.offset + 100)


@pytest.mark.parametrize(
    "truncate", [_truncate_mid_blob, _truncate_at_member_boundary, _truncate_mid_header]
)
async def test_truncated_tar_is_refused_before_any_request(
    truncate: Callable[[Path, dict[str, tarfile.TarInfo]], None],
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    tmp_path: Path,
) -> None:
    source = _oci()
    files = dict(source.files)
    # The blob goes last so that cutting the tail cuts into (or before) it
    name = blob_path(source.layer_digests[1])
    files[name] = files.pop(name)
    path = write_tar(files, tmp_path / "image.tar")
    with tarfile.open(path) as archive:
        offsets = {info.name: info for info in archive.getmembers()}
    truncate(path, offsets)

    with pytest.raises(ImageSourceError, match="truncated"):
        await push_image(client, path, repository, tags=["x"])

    assert ecr.requests() == []


async def test_manifest_over_4_mib_is_refused_before_any_request(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    huge = {"annotations": {"padding": "x" * (4 * MIB)}}
    source = _oci(extra=huge)
    path = write_tar(source.files, tmp_path / "image.tar")

    with pytest.raises(ImageSourceError, match="manifests up to 4194304 bytes"):
        await push_image(client, path, repository, tags=["x"])

    assert ecr.requests() == []


def _nested_index(files: dict[str, bytes | Link]) -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    outer = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_INDEX, index)]}
    ).encode()
    files[blob_path(digest_of(index))] = index
    files[blob_path(digest_of(outer))] = outer
    files["index.json"] = index_json([descriptor(OCI_INDEX, outer)])


def _foreign_layer_without_blob(files: dict[str, bytes | Link]) -> None:
    foreign = layer_bytes(4 * KIB, 60)
    manifest, _ = image_manifest(
        files, [foreign], layer_type="application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    )
    del files[blob_path(digest_of(foreign))]
    files["index.json"] = index_json([descriptor(OCI_MANIFEST, manifest)])


def _unknown_schema2_layer_type(files: dict[str, bytes | Link]) -> None:
    manifest, _ = image_manifest(
        files,
        [layer_bytes(4 * KIB, 61)],
        media_type=DOCKER_MANIFEST,
        config_type=DOCKER_CONFIG,
        layer_type="application/x-unknown",
    )
    files["index.json"] = index_json([descriptor(DOCKER_MANIFEST, manifest)])


def _empty_blob(files: dict[str, bytes | Link]) -> None:
    manifest, _ = image_manifest(files, [b""])
    files["index.json"] = index_json([descriptor(OCI_MANIFEST, manifest)])


def _sha512_digest(files: dict[str, bytes | Link]) -> None:
    files["index.json"] = index_json(
        [{"mediaType": OCI_MANIFEST, "digest": "sha512:" + "0" * 128, "size": 10}]
    )


def _two_images_without_ref(files: dict[str, bytes | Link]) -> None:
    first, _ = image_manifest(files, [layer_bytes(4 * KIB, 62)])
    second, _ = image_manifest(files, [layer_bytes(4 * KIB, 63)])
    files["index.json"] = index_json(
        [descriptor(OCI_MANIFEST, first), descriptor(OCI_MANIFEST, second)]
    )


UNSUPPORTED_CASES: dict[str, tuple[Callable[[dict[str, bytes | Link]], None], str]] = {
    "nested index": (_nested_index, "nested indexes are not supported"),
    "foreign layer without its blob": (_foreign_layer_without_blob, "foreign/non-distributable"),
    "unknown layer type in a schema 2 manifest": (
        _unknown_schema2_layer_type,
        "unknown media type",
    ),
    "empty blob": (_empty_blob, "ECR does not store empty blobs"),
    "sha512 digest": (_sha512_digest, "ECR takes sha256 digests only"),
    "two images, no image_ref": (_two_images_without_ref, "choose one with image_ref"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED_CASES))
async def test_what_ecr_cannot_take_is_refused_before_any_request(
    case: str, ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    mutate, message = UNSUPPORTED_CASES[case]
    files: dict[str, bytes | Link] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    mutate(files)
    path = write_folder(files, tmp_path / "layout")

    with pytest.raises(ImageSourceError, match=message):
        await push_image(client, path, repository, tags=["x"])

    assert ecr.requests() == []


async def test_symlinks_in_a_layout_folder_are_refused(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    source = _oci()
    layout = write_folder(source.files, tmp_path / "layout")
    blob = layout / blob_path(source.layer_digests[0])
    (outside / "secret").write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside / "secret")

    with pytest.raises(ImageSourceError, match="symbolic link"):
        await push_image(client, layout, repository, tags=["x"])
    # A symlinked folder on the way to the blobs is refused too
    blob.unlink()
    (layout / "blobs" / "sha256").rename(outside / "sha256")
    (layout / "blobs" / "sha256").symlink_to(outside / "sha256")
    with pytest.raises(ImageSourceError, match="symbolic link"):
        await push_image(client, layout, repository, tags=["x"])

    assert ecr.requests() == []


async def test_legacy_layer_not_matching_the_configs_diff_id_is_refused(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    source = legacy_source([layer_bytes(4 * KIB, 70)])
    name = json.loads(source.files["manifest.json"])[0]["Layers"][0]  # type: ignore[arg-type]
    source.files[name] = layer_bytes(4 * KIB, 71)
    path = write_tar(source.files, tmp_path / "saved.tar")

    with pytest.raises(ImageSourceError, match=r"rootfs\.diff_ids"):
        await push_image(client, path, repository, tags=["x"])

    assert ecr.requests() == []


async def test_compressed_archive_or_not_an_image_is_refused(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    gz = tmp_path / "image.tar.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    with pytest.raises(ImageSourceError, match="compressed"):
        await push_image(client, gz, repository)
    nested = tmp_path / "nested.tar"
    write_tar({f"image/{name}": data for name, data in _oci().files.items()}, nested)
    with pytest.raises(ImageSourceError, match=r"found \['image/index.json'\]"):
        await push_image(client, nested, repository)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageSourceError, match="not a readable tar"):
        await push_image(client, garbage, repository)
    assert ecr.requests() == []


async def test_bad_arguments_raise_before_anything_is_read_or_sent(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    path = write_folder(_oci().files, tmp_path / "layout")
    with pytest.raises(ValueError, match="tags"):
        await push_image(client, path, repository, tags="latest")
    with pytest.raises(ValueError, match="image_tag"):
        await push_image(client, path, repository, tags=["bad tag!"])
    with pytest.raises(ValueError, match="max_concurrent_layers"):
        await push_image(client, path, repository, max_concurrent_layers=0)
    with pytest.raises(ValueError, match="part_size"):
        await push_image(client, path, repository, part_size=1024)
    with pytest.raises(ValueError, match="no such file"):
        await push_image(client, tmp_path / "missing", repository)
    with pytest.raises(ValueError, match="repository_name"):
        await push_image(client, path, "Not A Repository")
    with pytest.raises(TypeError, match="EcrClient"):
        await push_image(object(), path, repository)  # type: ignore[arg-type]
    assert ecr.requests() == []


# -- PutImage retries ---------------------------------------------------------------------


class FlakyPutImage(EcrClient):
    """An EcrClient whose first ``failures`` PutImage calls see LayersNotFoundException."""

    def __init__(self, inner: EcrClient, failures: int) -> None:
        super().__init__(inner.aiobotocore_client, retry=inner.retry)
        self.failures = failures
        self.calls = 0
        self.called = anyio.Event()

    async def put_image(
        self,
        request: PutImageRequest,
        cancellation_token: CancellationToken = CancellationToken.NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> PutImageResponse:
        self.calls += 1
        self.called.set()
        if self.calls <= self.failures:
            raise LayersNotFoundError(
                "Layers with digests [...] required for pushing image do not exist.",
                code="LayersNotFoundException",
                operation="PutImage",
            )
        return await super().put_image(request, cancellation_token, retry=retry)


async def test_put_image_retries_layers_not_found_a_bounded_number_of_times(
    repository: str, client: EcrClient, tmp_path: Path
) -> None:
    path = write_folder(_oci().files, tmp_path / "layout")
    quick = RetryPolicy(max_attempts=3, base_delay=0.0)

    flaky = FlakyPutImage(client, failures=2)
    result = await push_image(flaky, path, repository, tags=["r"], put_image_retry=quick)
    assert flaky.calls == 3
    assert (await fetch(client, repository, "r"))[1] == result.manifest_digest

    broken = FlakyPutImage(client, failures=100)
    with pytest.raises(LayersNotFoundError):
        await push_image(broken, path, repository, tags=["r2"], put_image_retry=quick)
    assert broken.calls == 3


async def test_put_image_backoff_is_cancellable(
    repository: str, client: EcrClient, tmp_path: Path
) -> None:
    path = write_folder(_oci().files, tmp_path / "layout")
    slow = RetryPolicy(max_attempts=5, base_delay=600.0, max_delay=600.0)
    flaky = FlakyPutImage(client, failures=100)
    with CancellationTokenSource() as cts:

        async def cancel_once_retrying() -> None:
            await flaky.called.wait()
            cts.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_once_retrying)
            with anyio.fail_after(10), pytest.raises(PushCanceledError) as caught:
                await push_image(
                    flaky,
                    path,
                    repository,
                    tags=["r"],
                    put_image_retry=slow,
                    cancellation_token=cts.token,
                )
        assert caught.value.cancellation_token == cts.token
    assert flaky.calls == 1


# -- cancellation -------------------------------------------------------------------------


async def test_cancel_mid_push_stops_every_upload_and_a_second_push_finishes(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    layers = [
        layer_bytes(size, 80 + n)
        for n, size in enumerate([400 * KIB, 300 * KIB, 200 * KIB, 100 * KIB])
    ]
    source = oci_source(layers)
    path = write_tar(source.files, tmp_path / "image.tar")
    # Two uploads go through; the next two hang in their part until the push is canceled
    ecr.faults.add(ULP, FaultKind.DELAY, call=3, times=None, delay_seconds=60)
    tasks_before = asyncio.all_tasks()
    caught: list[PushCanceledError] = []

    async def push() -> None:
        with pytest.raises(PushCanceledError) as error:
            await push_image(
                client,
                path,
                repository,
                tags=["c"],
                max_concurrent_layers=2,
                cancellation_token=cts.token,
            )
        caught.append(error.value)

    cts = CancellationTokenSource()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(push)
            await ecr.wait_for_delay_async(ULP, call=3)
            await ecr.wait_for_delay_async(ULP, call=4)
            cts.cancel()
        await ecr.wait_idle_async()

    assert asyncio.all_tasks() == tasks_before
    (error,) = caught
    assert error.cancellation_token == cts.token
    committed = uploaded_digests(ecr)
    assert set(error.committed_digests) == committed
    assert len(committed) == 2  # the two largest layers, uploaded first
    assert committed == {digest_of(layers[0]), digest_of(layers[1])}
    assert set(error.pending_digests) == {*source.layer_digests, *source.config_digests} - committed
    delayed = [r for r in ecr.requests(ULP) if r.call in (3, 4)]
    assert len(delayed) == 2
    assert all(r.status is None and not r.accepted for r in delayed)
    assert ecr.requests(PUT) == []

    ecr.reset()
    result = await push_image(client, path, repository, tags=["c"], max_concurrent_layers=2)

    assert (result.layers_uploaded, result.layers_skipped) == (2, 2)
    assert result.configs_uploaded == 1
    config = source.files[blob_path(source.config_digests[0])]
    assert isinstance(config, bytes)
    sent = {r.blob_sha256 for r in ecr.requests(ULP)}
    assert sent == {sha_hex(layers[2]), sha_hex(layers[3]), sha_hex(config)}
    text, _, _ = await fetch(client, repository, "c")
    assert text.encode() == source.manifest


async def test_a_canceled_token_stops_the_push_before_anything_is_sent(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    path = write_tar(legacy_source([layer_bytes(64 * KIB, 90)]).files, tmp_path / "saved.tar")
    with CancellationTokenSource() as cts:
        cts.cancel()
        with pytest.raises(PushCanceledError) as caught:
            await push_image(client, path, repository, cancellation_token=cts.token)
    assert caught.value.committed_digests == ()
    assert ecr.requests() == []


# -- errors that say what is wrong in words a caller can reuse ------------------------------


async def test_a_source_that_is_no_image_at_all_is_an_image_source_error_naming_it(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_tar = tmp_path / "notes.txt"
    not_a_tar.write_bytes(b"these are notes, not an image\n" * 40)
    unrelated = write_folder({"README": b"hello", "src/main.c": b"int main;"}, tmp_path / "src")

    for path, message in [
        (empty, "neither an OCI image layout"),
        (not_a_tar, "not a readable tar"),
        (unrelated, "neither an OCI image layout"),
    ]:
        with pytest.raises(ImageSourceError, match=message) as caught:
            await push_image(client, path, repository, tags=["x"])
        # The type says "this SOURCE is not a usable image" (the CLI's usage error), and
        # the path is there to name it without parsing the message.
        assert not isinstance(caught.value, ValueError)
        assert caught.value.source == str(path)
        assert str(path) in str(caught.value)
    assert ecr.requests() == []


@pytest.mark.parametrize("name", ["index.json", "oci-layout"])
async def test_a_file_over_its_size_limit_is_named_once(
    name: str, ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    source = _oci()
    padding = b" " * (4 * MIB + 1)
    content = source.files[name]
    assert isinstance(content, bytes)
    source.files[name] = content + padding  # still valid JSON, just too big
    path = write_tar(source.files, tmp_path / "image.tar")

    with pytest.raises(ImageSourceError) as caught:
        await push_image(client, path, repository, tags=["x"])

    message = str(caught.value)
    assert f"{name} is {len(content) + len(padding)} bytes, over the" in message
    assert f"{name} {name}" not in message
    assert ecr.requests() == []


def _listed_twice_oci(files: dict[str, bytes | Link]) -> tuple[bytes, list[str]]:
    manifest, _ = image_manifest(files, [layer_bytes(4 * KIB, 64)])
    names = ["1.0", "latest"]
    files["index.json"] = index_json(
        [
            descriptor(
                OCI_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": ref}
            )
            for ref in names
        ]
    )
    return manifest, names


def _listed_twice_legacy(files: dict[str, bytes | Link]) -> tuple[bytes, list[str]]:
    source = legacy_source([layer_bytes(4 * KIB, 65)])
    files.clear()
    files.update(source.files)
    (image,) = json.loads(source.files["manifest.json"])  # type: ignore[arg-type]
    names = ["example/app:1.0", "example/app:latest"]
    files["manifest.json"] = json.dumps([{**image, "RepoTags": [name]} for name in names]).encode()
    return b"", names


@pytest.mark.parametrize("layout", [_listed_twice_oci, _listed_twice_legacy])
async def test_one_image_listed_under_two_names_is_one_image(
    layout: Callable[[dict[str, bytes | Link]], tuple[bytes, list[str]]],
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    tmp_path: Path,
) -> None:
    files: dict[str, bytes | Link] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    manifest, names = layout(files)
    path = write_tar(files, tmp_path / "image.tar")

    result = await push_image(client, path, repository, tags=["one"])
    chosen = await push_image(client, path, repository, tags=["two"], image_ref=names[1])

    assert chosen.manifest_digest == result.manifest_digest
    if manifest:
        assert result.manifest_digest == digest_of(manifest)
    assert result.layers_uploaded == 1
    text, digest, _ = await fetch(client, repository, "two")
    assert digest == result.manifest_digest == digest_of(text.encode())


async def test_an_ambiguous_source_says_which_names_it_holds_for_the_caller_to_offer(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    first = docker25_source([layer_bytes(5 * KIB, 66)], tag="example/app:one")
    second = docker25_source([layer_bytes(5 * KIB, 67)], tag="example/app:two")
    files = {**first.files, **second.files}
    entries = [*json.loads(first.files["index.json"])["manifests"]]  # type: ignore[arg-type]
    entries += json.loads(second.files["index.json"])["manifests"]  # type: ignore[arg-type]
    files["index.json"] = index_json(entries)
    path = write_folder(files, tmp_path / "two")
    names = ("docker.io/example/app:one", "docker.io/example/app:two", "one", "two")

    with pytest.raises(ImageSelectionError) as none_chosen:
        await push_image(client, path, repository)
    with pytest.raises(ImageSelectionError) as unknown:
        await push_image(client, path, repository, image_ref="three")

    assert (none_chosen.value.image_ref, none_chosen.value.names) == (None, names)
    assert "holds 2 images" in str(none_chosen.value)
    assert (unknown.value.image_ref, unknown.value.names) == ("three", names)
    assert "0 images are named 'three'" in str(unknown.value)
    assert none_chosen.value.source == unknown.value.source == str(path)
    assert ecr.requests() == []


async def test_argument_errors_carry_the_argument_and_come_before_the_source_is_read(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    path = write_folder(_oci().files, tmp_path / "layout")
    missing = tmp_path / "missing"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tags": "latest"}, "tags"),
        ({"tags": [1]}, "tags"),
        ({"tags": ["bad tag!"]}, "image_tag"),
        ({"max_concurrent_layers": 0}, "max_concurrent_layers"),
        ({"image_ref": 3}, "image_ref"),
    ]
    for options, field_name in cases:
        # The source does not exist: the argument is refused before the source is looked at.
        with pytest.raises(InvalidArgumentError) as caught:
            await push_image(client, missing, repository, **options)
        assert caught.value.field == field_name, options
        assert str(caught.value) == f"{field_name}: {caught.value.rule}"
    for source in (missing, tmp_path / "fifo"):
        if source.name == "fifo":
            os.mkfifo(source)
        with pytest.raises(InvalidArgumentError) as caught:
            await push_image(client, source, repository)
        assert caught.value.field == "source"
        assert str(source) in caught.value.rule
    with pytest.raises(InvalidArgumentError) as caught:
        await push_image(client, object(), repository)  # type: ignore[arg-type]
    assert caught.value.field == "source"
    assert path.exists()
    assert ecr.requests() == []


@pytest.mark.parametrize("form", ["tar", "folder"])
@pytest.mark.parametrize("kind", ["layer", "config"])
async def test_a_corrupt_blob_is_named_with_its_kind_member_and_source(
    kind: str, form: str, ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    layer = layer_bytes(300 * KIB, 68)
    source = oci_source([layer])
    digest = digest_of(layer) if kind == "layer" else source.config_digests[0]
    member = blob_path(digest)
    original = source.files[member]
    assert isinstance(original, bytes)
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size, other bytes: found only as it streams
    source.files[member] = bytes(corrupted)
    if form == "tar":
        path = write_tar(source.files, tmp_path / "image.tar")
    else:
        path = write_folder(source.files, tmp_path / "image")

    with pytest.raises(CorruptBlobError) as caught:
        await push_image(client, path, repository, tags=["bad"], max_concurrent_layers=1)

    error = caught.value
    assert isinstance(error, DigestMismatchError)
    assert (error.expected, error.actual) == (digest, digest_of(bytes(corrupted)))
    assert (error.kind, error.member, error.source) == (kind, member, str(path))
    message = str(error)
    for part in (digest, member, str(path), f"{kind} {digest}", error.actual):
        assert part in message
    other = "config" if kind == "layer" else "layer"
    assert other not in message.replace(str(path), "")
    assert "expected_digest" not in message
    await ecr.wait_idle_async()
    assert digest not in uploaded_digests(ecr)
    assert ecr.requests(PUT) == []


async def test_a_push_of_many_layers_makes_no_more_part_buffers_than_uploads_in_flight(
    ecr: LocalEcr, repository: str, client: EcrClient, tmp_path: Path
) -> None:
    # Every blob in one capacity class (513-913 KiB: sets of 1 MiB), so any free set fits any
    # blob and the count of sets made does not hang on the order uploads take them: with
    # sizes of several classes a small blob may take a free set a larger one needs later,
    # and the larger one then replaces it (allowed: the pool bounds the sets it holds).
    sizes = [513 * KIB + n * 20 * KIB for n in range(21)]
    layers = [layer_bytes(size, 300 + n) for n, size in enumerate(sizes)]
    source = oci_source(layers)
    path = write_folder(source.files, tmp_path / "layout")
    pool = PartBufferPool()  # injected, to count: by default the push makes its own
    limit = 3
    result = await push_image(
        client,
        path,
        repository,
        tags=["a"],
        max_concurrent_layers=limit,
        buffer_pool=pool,
    )
    assert result.layers_uploaded == len(layers)
    # 21 blobs, at most 3 at once: at most 3 sets made; none left in use
    assert pool.most_in_use <= limit
    assert pool.allocated <= limit
    assert pool.in_use == 0
    assert pool.held == pool.allocated
    # Sized to the blobs, not to the 5 MiB parts: the blobs' power of two
    assert set(pool.free_capacities) == {MIB}
    # A second push (another repository: every blob again) with the same pool makes none
    made = pool.allocated
    ecr.create_repository(f"{repository}-again")
    again = await push_image(
        client,
        path,
        f"{repository}-again",
        tags=["a"],
        max_concurrent_layers=limit,
        buffer_pool=pool,
    )
    assert again.layers_uploaded == len(layers)
    assert pool.allocated == made
    assert uploaded_digests(ecr) >= set(source.layer_digests)
