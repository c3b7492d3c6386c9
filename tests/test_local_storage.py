"""The local endpoint keeps layers' bytes on disk and serves them back: download URLs, /v2/.

Everything over real HTTP on 127.0.0.1: aiobotocore for the ECR API, aiohttp for the reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from ecrstream.local import FaultKind, LocalEcr, Operation, store

if TYPE_CHECKING:
    from types_aiobotocore_ecr import ECRClient

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_layer(client: ECRClient, repository: str, *parts: bytes) -> str:
    upload_id = (await client.initiate_layer_upload(repositoryName=repository))["uploadId"]
    offset = 0
    for part in parts:
        await client.upload_layer_part(
            repositoryName=repository,
            uploadId=upload_id,
            partFirstByte=offset,
            partLastByte=offset + len(part) - 1,
            layerPartBlob=part,
        )
        offset += len(part)
    answer = await client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(b"".join(parts))]
    )
    return answer["layerDigest"]


async def push_image(
    client: ECRClient, repository: str, layers: list[bytes], tag: str = "v1"
) -> bytes:
    """Push a config and ``layers`` and put their manifest under ``tag``; returns its bytes."""
    config = b'{"architecture": "amd64", "os": "linux"}'
    for data in [config, *layers]:
        await push_layer(client, repository, data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(data),
                    "size": len(data),
                }
                for data in layers
            ],
        },
        indent=3,
    ).encode()
    await client.put_image(repositoryName=repository, imageManifest=manifest.decode(), imageTag=tag)
    return manifest


async def client_error(call: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        await call
    return dict(caught.value.response)


@pytest.fixture
async def http(anyio_backend: str) -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress off: the bytes on the wire are what is compared.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def login(client: ECRClient) -> dict[str, str]:
    token = (await client.get_authorization_token())["authorizationData"][0]
    return {"Authorization": "Basic " + token["authorizationToken"]}


# -- bytes on disk ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_completed_layer_is_its_bytes_in_the_content_addressed_store(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    ecr.min_part_size = 1
    first, second = blob(3000, seed=1), blob(1000, seed=2)
    digest = await push_layer(aio_ecr_client, repository, first, second)

    stored = ecr.data_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert stored.read_bytes() == first + second
    checked = await aio_ecr_client.batch_check_layer_availability(
        repositoryName=repository, layerDigests=[digest]
    )
    assert [layer["layerSize"] for layer in checked["layers"]] == [4000]


@pytest.mark.anyio
async def test_an_open_upload_is_on_disk_and_a_refused_completion_keeps_no_blob(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    data = blob(5000)
    upload_id = (await aio_ecr_client.initiate_layer_upload(repositoryName=repository))["uploadId"]
    await aio_ecr_client.upload_layer_part(
        repositoryName=repository,
        uploadId=upload_id,
        partFirstByte=0,
        partLastByte=len(data) - 1,
        layerPartBlob=data,
    )
    assert (ecr.data_dir / "uploads" / upload_id).read_bytes() == data

    error = await client_error(
        aio_ecr_client.complete_layer_upload(
            repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(b"other")]
        )
    )
    assert error["Error"]["Code"] == "InvalidLayerException"
    blobs = ecr.data_dir / "blobs" / "sha256"
    assert not (blobs / digest_of(b"other").removeprefix("sha256:")).exists()
    assert not (blobs / digest_of(data).removeprefix("sha256:")).exists()

    assert ecr.forget_upload(upload_id)
    assert not (ecr.data_dir / "uploads" / upload_id).exists()


@pytest.mark.anyio
async def test_a_temporary_store_goes_with_the_endpoint_and_a_named_one_stays(
    tmp_path: Path, aio_session: AioSession
) -> None:
    data = blob(1000)
    named = tmp_path / "data"
    for data_dir in (None, named):
        name = f"store-{uuid.uuid4().hex[:12]}"
        async with LocalEcr(data_dir=data_dir) as endpoint:
            endpoint.create_repository(name)
            root = endpoint.data_dir
            async with aio_session.create_client("ecr", **endpoint.client_kwargs()) as client:
                await push_layer(client, name, data)
        blob_file = root / "blobs" / "sha256" / digest_of(data).removeprefix("sha256:")
        if data_dir is None:
            assert not root.exists()
        else:
            assert root == named.resolve()
            assert blob_file.read_bytes() == data
            assert list((root / "uploads").glob("*")) == []


@pytest.mark.anyio
async def test_client_leaving_mid_write_then_the_layer_completes_with_exactly_its_bytes(
    ecr: LocalEcr,
    repository: str,
    aio_ecr_client: ECRClient,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 12: the part is being written when its client goes away. The write and the
    # bookkeeping finish as one unit, so the retry re-aligns and the layer is right.
    ecr.min_part_size = 1
    first, second = blob(200_000, seed=3), blob(100_000, seed=4)
    upload_id = (await aio_ecr_client.initiate_layer_upload(repositoryName=repository))["uploadId"]
    writing, release = threading.Event(), threading.Event()
    write_at = store._write_at

    def held_write(*args: Any) -> None:
        writing.set()
        release.wait(10)
        write_at(*args)

    async def send(first_byte: int, data: bytes) -> int:
        answer = await aio_ecr_client.upload_layer_part(
            repositoryName=repository,
            uploadId=upload_id,
            partFirstByte=first_byte,
            partLastByte=first_byte + len(data) - 1,
            layerPartBlob=data,
        )
        return answer["lastByteReceived"]

    monkeypatch.setattr(store, "_write_at", held_write)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send, 0, first)
            await anyio.to_thread.run_sync(writing.wait)
            tasks.cancel_scope.cancel()
        # A second request for the upload waits for the first to finish (one at a time).
        async with anyio.create_task_group() as tasks:
            retried: list[dict[str, Any]] = []

            async def retry() -> None:
                retried.append(await client_error(send(0, first)))

            tasks.start_soon(retry)
            await ecr.wait_for_request_async(Operation.UPLOAD_LAYER_PART, call=2)
            release.set()
        await ecr.wait_idle_async()
    monkeypatch.undo()

    assert retried[0]["Error"]["Code"] == "InvalidLayerPartException"
    assert retried[0]["lastValidByteReceived"] == len(first) - 1
    assert await send(len(first), second) == len(first) + len(second) - 1
    layer = first + second
    await aio_ecr_client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest_of(layer)]
    )
    records = ecr.requests(Operation.UPLOAD_LAYER_PART)
    assert [(r.status, r.accepted) for r in records] == [
        (None, True),
        (400, False),
        (200, True),
    ]
    stored = ecr.data_dir / "blobs" / "sha256" / digest_of(layer).removeprefix("sha256:")
    assert stored.read_bytes() == layer


# -- GetDownloadUrlForLayer ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_download_url_serves_the_layer_and_answers_ranges_as_s3(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient, http: aiohttp.ClientSession
) -> None:
    layer = blob(3 * MIB + 17, seed=5)
    await push_image(aio_ecr_client, repository, [layer])
    answer = await aio_ecr_client.get_download_url_for_layer(
        repositoryName=repository, layerDigest=digest_of(layer)
    )
    assert answer["layerDigest"] == digest_of(layer)
    url = answer["downloadUrl"]
    assert url.startswith(ecr.endpoint_url + "/")

    async def get(range_: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Range": range_} if range_ is not None else {}
        async with http.get(url, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()

    status, headers, body = await get()
    assert (status, body) == (200, layer)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(len(layer))

    size = len(layer)
    pieces = []
    for start in range(0, size, MIB):  # the whole layer in ranged GETs, the last one clipped
        status, headers, body = await get(f"bytes={start}-{start + MIB - 1}")
        end = min(start + MIB, size) - 1
        assert status == 206
        assert headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        pieces.append(body)
    assert b"".join(pieces) == layer

    status, headers, body = await get("bytes=-10")
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes {size - 10}-{size - 1}/{size}",
        layer[-10:],
    )
    status, headers, body = await get(f"bytes={size - 5}-")
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes {size - 5}-{size - 1}/{size}",
        layer[-5:],
    )
    for past_the_end in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}"):
        status, headers, body = await get(past_the_end)
        assert status == 416
        assert headers["Content-Range"] == f"bytes */{size}"
        assert b"<Code>InvalidRange</Code>" in body
    status, _, body = await get("bytes=10-5")  # invalid: S3 ignores it and sends everything
    assert (status, body) == (200, layer)

    async with http.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as response:
        assert response.status == 403
        assert b"<Code>SignatureDoesNotMatch</Code>" in await response.read()


@pytest.mark.anyio
async def test_an_expired_url_fault_answers_a_url_the_storage_refuses(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient, http: aiohttp.ClientSession
) -> None:
    layer = blob(1000, seed=8)
    await push_image(aio_ecr_client, repository, [layer])
    ecr.faults.add(Operation.GET_DOWNLOAD_URL_FOR_LAYER, FaultKind.EXPIRED_URL)
    urls = [
        (
            await aio_ecr_client.get_download_url_for_layer(
                repositoryName=repository, layerDigest=digest_of(layer)
            )
        )["downloadUrl"]
        for _ in range(2)
    ]
    async with http.get(urls[0]) as response:
        assert response.status == 403
        text = await response.text()
        assert "<Code>AccessDenied</Code>" in text
        assert "Request has expired" in text
    async with http.get(urls[1]) as response:  # the fault's one time is spent
        assert (response.status, await response.read()) == (200, layer)
    records = ecr.requests(Operation.GET_DOWNLOAD_URL_FOR_LAYER)
    assert [(r.fault, r.status) for r in records] == [(FaultKind.EXPIRED_URL, 200), (None, 200)]
    with pytest.raises(ValueError, match="GetDownloadUrlForLayer only"):
        ecr.faults.add(Operation.BATCH_GET_IMAGE, FaultKind.EXPIRED_URL)


@pytest.mark.anyio
async def test_download_url_errors_are_ecrs(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient
) -> None:
    unreferenced = await push_layer(aio_ecr_client, repository, blob(100, seed=6))
    cases = [
        (repository, digest_of(b"never pushed"), "LayersNotFoundException"),
        (repository, unreferenced, "LayerInaccessibleException"),
        (repository + "-absent", unreferenced, "RepositoryNotFoundException"),
        (repository, "not a digest", "InvalidParameterException"),
    ]
    for repository_name, digest, code in cases:
        error = await client_error(
            aio_ecr_client.get_download_url_for_layer(
                repositoryName=repository_name, layerDigest=digest
            )
        )
        assert error["Error"]["Code"] == code, (repository_name, digest)
    records = ecr.requests(Operation.GET_DOWNLOAD_URL_FOR_LAYER)
    assert [(r.status, r.error_code) for r in records] == [(400, code) for _, _, code in cases]


# -- the registry API ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_registry_needs_the_authorization_tokens_password(
    ecr: LocalEcr, aio_ecr_client: ECRClient, http: aiohttp.ClientSession
) -> None:
    data = (await aio_ecr_client.get_authorization_token())["authorizationData"]
    assert [item["proxyEndpoint"] for item in data] == [ecr.endpoint_url]
    user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
    assert user == "AWS"
    assert password
    assert ecr.requests()[-1].operation == Operation.GET_AUTHORIZATION_TOKEN

    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    refused: list[dict[str, str]] = [
        {},
        basic("AWS", password + "x"),
        basic("someone", password),
        {"Authorization": "Bearer " + password},
    ]
    for headers in refused:
        async with http.get(ecr.endpoint_url + "/v2/", headers=headers) as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith(f'Basic realm="{ecr.endpoint_url}/"')
            assert (await response.json())["errors"][0]["code"] == "UNAUTHORIZED"
    async with http.get(ecr.endpoint_url + "/v2/", headers=basic("AWS", password)) as response:
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.anyio
async def test_registry_serves_manifests_blobs_and_tags(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient, http: aiohttp.ClientSession
) -> None:
    layers = [blob(70_000, seed=7), blob(1000, seed=8)]
    manifest = await push_image(aio_ecr_client, repository, layers, tag="v1")
    await aio_ecr_client.put_image(
        repositoryName=repository, imageManifest=manifest.decode(), imageTag="latest"
    )
    auth = await login(aio_ecr_client)
    base = f"{ecr.endpoint_url}/v2/{repository}"

    for reference in ("v1", "latest", digest_of(manifest)):
        async with http.get(f"{base}/manifests/{reference}", headers=auth) as response:
            assert response.status == 200
            assert await response.read() == manifest
            assert response.headers["Content-Type"] == OCI_MANIFEST
            assert response.headers["Docker-Content-Digest"] == digest_of(manifest)
        async with http.head(f"{base}/manifests/{reference}", headers=auth) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(manifest))
            assert response.headers["Docker-Content-Digest"] == digest_of(manifest)
            assert await response.read() == b""

    for data in layers:
        async with http.get(f"{base}/blobs/{digest_of(data)}", headers=auth) as response:
            assert response.status == 200
            assert await response.read() == data
            assert response.headers["Docker-Content-Digest"] == digest_of(data)
        async with http.head(f"{base}/blobs/{digest_of(data)}", headers=auth) as response:
            assert response.headers["Content-Length"] == str(len(data))
        ranged = {**auth, "Range": "bytes=100-199"}
        async with http.get(f"{base}/blobs/{digest_of(data)}", headers=ranged) as response:
            assert response.status == 206
            assert await response.read() == data[100:200]

    async with http.get(f"{base}/tags/list", headers=auth) as response:
        assert await response.json() == {"name": repository, "tags": ["latest", "v1"]}

    missing = [
        (f"{base}/manifests/v2", "MANIFEST_UNKNOWN"),
        (f"{base}/manifests/{digest_of(b'no such manifest')}", "MANIFEST_UNKNOWN"),
        (f"{base}/blobs/{digest_of(b'no such blob')}", "BLOB_UNKNOWN"),
        (f"{ecr.endpoint_url}/v2/{repository}-absent/manifests/v1", "NAME_UNKNOWN"),
        (f"{ecr.endpoint_url}/v2/{repository}-absent/tags/list", "NAME_UNKNOWN"),
    ]
    for url, code in missing:
        async with http.get(url, headers=auth) as response:
            assert response.status == 404, url
            assert (await response.json())["errors"][0]["code"] == code
    # Registry reads are not ECR API calls: nothing recorded past the token.
    assert ecr.requests()[-1].operation == Operation.GET_AUTHORIZATION_TOKEN


@pytest.mark.anyio
async def test_a_blob_of_another_repository_is_not_served(
    ecr: LocalEcr, repository: str, aio_ecr_client: ECRClient, http: aiohttp.ClientSession
) -> None:
    data = blob(500, seed=9)
    await push_layer(aio_ecr_client, repository, data)
    other = repository + "-other"
    ecr.create_repository(other)
    auth = await login(aio_ecr_client)
    url = f"{ecr.endpoint_url}/v2/{other}/blobs/{digest_of(data)}"
    async with http.get(url, headers=auth) as response:
        assert response.status == 404
        assert (await response.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
