"""The local endpoint's memory does not grow with layer size: a 1 GiB layer, in and out.

The endpoint runs alone in a child process (``ecrstream.local.child.spawn``: ``python -m
ecrstream.local``) so its resident set is its own; this process uploads with ecrstream and
reads the layer back through ``/v2/``. Linux only: it reads ``/proc/<pid>/status`` and resets
the peak with ``clear_refs``.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiobotocore.session
import aiohttp
import pytest

from ecrstream import EcrClient, LayerUploader
from ecrstream.local.child import LocalEcrProcess, spawn

MIB = 1024 * 1024
LAYER_MIB = 1024
# The goal is ~100 MiB over idle (measured: about 60); the bound leaves room for allocator
# and machine noise while still failing at once if a layer, or a tenth of it, were held.
BOUND_MIB = 160


def memory_mib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start or the last reset), in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) // 1024
    return values


async def layer_chunks(total_mib: int, sha: Any) -> AsyncIterator[bytes]:
    blocks = [random.Random(seed).randbytes(MIB) for seed in range(4)]
    for number in range(total_mib):
        block = blocks[number % len(blocks)]
        sha.update(block)
        yield block


def reset_peak(pid: int) -> None:
    """Make VmHWM the current resident set (Linux: writing 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture
async def endpoint(anyio_backend: str) -> AsyncIterator[tuple[LocalEcrProcess, str]]:
    """A ``python -m ecrstream.local`` child with a repository: the process, the repository."""
    repository = f"memory-{uuid.uuid4().hex[:12]}"
    async with spawn([repository]) as child:
        yield child, repository


@pytest.mark.anyio
@pytest.mark.timeout(600)
async def test_a_1_gib_layer_keeps_the_endpoints_memory_flat(
    endpoint: tuple[LocalEcrProcess, str],
) -> None:
    child, repository = endpoint
    url = child.endpoint_url
    options: dict[str, Any] = dict(child.client_kwargs())
    async with EcrClient.create(**options) as client:
        uploader = LayerUploader(client, repository)
        # Warm up every code path (imports, pools) before idle is measured.
        await uploader.upload_stream(layer_chunks(12, hashlib.sha256()))
        idle = memory_mib(child.pid)["VmRSS"]
        reset_peak(child.pid)

        sent = hashlib.sha256()
        result = await uploader.upload_stream(layer_chunks(LAYER_MIB, sent))
        assert result.digest == "sha256:" + sent.hexdigest()
        after_upload = memory_mib(child.pid)["VmHWM"]

    async with aiobotocore.session.get_session().create_client("ecr", **options) as raw:
        token = (await raw.get_authorization_token())["authorizationData"][0]["authorizationToken"]
    received = hashlib.sha256()
    size = 0
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Basic " + token}) as http,
        http.get(f"{url}/v2/{repository}/blobs/{result.digest}") as response,
    ):
        assert response.status == 200
        async for chunk in response.content.iter_chunked(MIB):
            received.update(chunk)
            size += len(chunk)
    assert (size, received.hexdigest()) == (LAYER_MIB * MIB, sent.hexdigest())
    after_download = memory_mib(child.pid)["VmHWM"]

    print(
        f"endpoint RSS: idle {idle} MiB, peak {after_upload} MiB uploading and "
        f"{after_download} MiB after reading back a {LAYER_MIB} MiB layer"
    )
    assert after_upload - idle < BOUND_MIB
    assert after_download - idle < BOUND_MIB
