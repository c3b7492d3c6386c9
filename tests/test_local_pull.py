"""Images ecrstream pushes to the local endpoint, pulled back by skopeo, a client nobody here wrote.

skopeo (the Debian package ``skopeo``; ``python3 run.py test`` installs it) logs in with the
password of GetAuthorizationToken and reads the registry API under ``/v2/``; every manifest and
blob it gets must be the source's, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ecrstream import EcrClient, push_image
from ecrstream.local import LocalEcr

if TYPE_CHECKING:
    from types_aiobotocore_ecr import ECRClient

pytestmark = pytest.mark.timeout(120)

KIB, MIB = 1024, 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def skopeo() -> str:
    """The skopeo program; its absence fails the tests that need it, saying how to get it."""
    found = shutil.which("skopeo")
    if found is None:
        pytest.fail(
            "skopeo not found: install the Debian package 'skopeo' (apt-get install skopeo); "
            "python3 run.py test installs it"
        )
    return found


def write_oci_layout(folder: Path, layers: list[bytes]) -> tuple[bytes, bytes]:
    """An OCI image layout with these layers; returns its manifest and config bytes."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]},
        }
    ).encode()
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
                    "digest": digest_of(x),
                    "size": len(x),
                }
                for x in layers
            ],
        },
        indent=2,
    ).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}
        ],
    }
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (folder / "oci-layout").write_bytes(b'{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps(index))
    for data in (config, manifest, *layers):
        (blobs / digest_of(data).removeprefix("sha256:")).write_bytes(data)
    return manifest, config


def write_docker_save(archive: Path, layers: list[bytes]) -> bytes:
    """An older ``docker save`` tar (manifest.json, <id>.json, <id>/layer.tar); its config."""
    import io
    import tarfile

    rootfs = {"type": "layers", "diff_ids": [digest_of(x) for x in layers]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    config_name = digest_of(config).removeprefix("sha256:") + ".json"
    files = {config_name: config}
    names = []
    for number, layer in enumerate(layers):
        folder = hashlib.sha256(f"layer-{number}".encode()).hexdigest()
        files[f"{folder}/layer.tar"] = layer
        names.append(f"{folder}/layer.tar")
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": ["example/app:1.0"], "Layers": names}]
    ).encode()
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return config


async def registry_password(client: ECRClient) -> str:
    token = (await client.get_authorization_token())["authorizationData"][0]
    return base64.b64decode(token["authorizationToken"]).decode().partition(":")[2]


def skopeo_copy(skopeo: str, source: str, destination: str, password: str, home: Path) -> None:
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
    command = [
        skopeo,
        "--insecure-policy",  # no /etc/containers/policy.json needed
        "copy",
        "--src-tls-verify=false",  # the endpoint is plain HTTP on 127.0.0.1
        "--preserve-digests",  # copy as is: no recompressing layers, no rewriting manifests
        "--src-creds",
        f"AWS:{password}",
        source,
        destination,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr


@pytest.mark.anyio
async def test_skopeo_pulls_an_oci_image_exactly_as_pushed(
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    aio_ecr_client: ECRClient,
    skopeo: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    # Over one part, under one part, and one byte over two parts of the default 10 MiB.
    layers = [rng.randbytes(12 * MIB), rng.randbytes(300 * KIB), rng.randbytes(20 * MIB + 1)]
    manifest, config = write_oci_layout(tmp_path / "source", layers)
    result = await push_image(client, tmp_path / "source", repository, tags=["1.0"])
    assert result.manifest_digest == digest_of(manifest)

    password = await registry_password(aio_ecr_client)
    address = ecr.endpoint_url.removeprefix("http://")
    pulled = tmp_path / "pulled"
    skopeo_copy(
        skopeo, f"docker://{address}/{repository}:1.0", f"oci:{pulled}", password, tmp_path / "h"
    )

    index = json.loads((pulled / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest_of(manifest)]
    blobs = pulled / "blobs" / "sha256"
    expected = {digest_of(data): data for data in (manifest, config, *layers)}
    assert {path.name for path in blobs.iterdir()} == {d[7:] for d in expected}
    for digest, data in expected.items():
        assert (blobs / digest.removeprefix("sha256:")).read_bytes() == data, digest


@pytest.mark.anyio
async def test_skopeo_pulls_a_docker_save_archive_as_pushed(
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    aio_ecr_client: ECRClient,
    skopeo: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(12)
    layers = [rng.randbytes(6 * MIB), rng.randbytes(50 * KIB)]
    config = write_docker_save(tmp_path / "image.tar", layers)
    result = await push_image(client, tmp_path / "image.tar", repository, tags=["2.0"])
    pushed = await aio_ecr_client.batch_get_image(
        repositoryName=repository, imageIds=[{"imageTag": "2.0"}]
    )
    manifest = pushed["images"][0]["imageManifest"].encode()
    assert digest_of(manifest) == result.manifest_digest

    # dir: keeps the manifest as served (oci: would convert a Docker manifest to OCI).
    password = await registry_password(aio_ecr_client)
    address = ecr.endpoint_url.removeprefix("http://")
    pulled = tmp_path / "pulled"
    skopeo_copy(
        skopeo, f"docker://{address}/{repository}:2.0", f"dir:{pulled}", password, tmp_path / "h"
    )

    assert (pulled / "manifest.json").read_bytes() == manifest
    for data in (config, *layers):
        assert (pulled / digest_of(data).removeprefix("sha256:")).read_bytes() == data
