"""`python -m ecrstream push` end to end, in a subprocess, against the local ECR endpoint.

The images are built here (tarfile, hashlib, json); no Docker daemon, no AWS account: the
subprocess gets dummy credentials and the local endpoint's URL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from terminal import run_on_terminal

from ecrstream.local import LocalEcr, Operation

pytestmark = pytest.mark.timeout(60)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def write_oci_tar(path: Path, layer_sizes: list[int]) -> tuple[bytes, list[str]]:
    """An OCI image layout as a tar; returns the manifest bytes and the layer digests."""
    rng = random.Random(7)
    layers = [rng.randbytes(size) for size in layer_sizes]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(x),
                    "size": len(x),
                }
                for x in layers
            ],
        },
        indent=2,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest)}
            ],
        }
    ).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        **{_blob(_digest(data)): data for data in [config, manifest, *layers]},
    }
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return manifest, [_digest(x) for x in layers]


@pytest.fixture
def sync_client(ecr: LocalEcr) -> Iterator[Any]:
    """A plain botocore ECR client on the local endpoint, to read back what the CLI pushed."""
    client = botocore.session.get_session().create_client("ecr", **ecr.client_kwargs())
    try:
        yield client
    finally:
        client.close()


def run_cli(*args: str, ecr: LocalEcr) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key != "HTTPS_PROXY"
    }
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    command = [
        sys.executable,
        "-m",
        "ecrstream",
        *args,
        "--endpoint-url",
        ecr.endpoint_url,
        "--region",
        "us-east-1",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=50)


def test_push_subcommand_pushes_an_oci_archive_end_to_end(
    ecr: LocalEcr, repository: str, sync_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "image.tar"
    manifest, layer_digests = write_oci_tar(path, [3_000, 200_000, 1_500_000])

    done = run_cli("push", str(path), "--repository", repository, "--tag", "v1", "--json", ecr=ecr)

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["manifest_digest"] == _digest(manifest)
    assert (summary["layers_uploaded"], summary["layers_skipped"]) == (3, 0)
    images = sync_client.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": "v1"}])
    (image,) = images["images"]
    assert image["imageManifest"].encode() == manifest
    assert image["imageId"]["imageDigest"] == _digest(manifest)
    committed = {
        digest
        for record in ecr.requests(Operation.COMPLETE_LAYER_UPLOAD)
        if record.status == 200
        for digest in record.layer_digests
    }
    assert set(layer_digests) <= committed

    ecr.reset()
    again = run_cli("push", str(path), "--repository", repository, "--tag", "v1", "--json", ecr=ecr)

    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert (summary["layers_uploaded"], summary["layers_skipped"]) == (0, 3)
    assert ecr.requests(Operation.UPLOAD_LAYER_PART) == []


def test_push_subcommand_reports_an_unsafe_archive_without_sending_anything(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        for name in ("oci-layout", "index.json", "../escape"):
            info = tarfile.TarInfo(name)
            info.size = 2
            archive.addfile(info, io.BytesIO(b"{}"))

    done = run_cli("push", str(path), "--repository", repository, "--tag", "v1", ecr=ecr)

    assert done.returncode == 1
    assert "outside the archive root" in done.stderr
    assert "Traceback" not in done.stderr
    assert ecr.requests() == []


def test_push_on_a_terminal_shows_a_bar_per_layer_in_flight_and_a_total(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    path = tmp_path / "image.tar"
    _, layer_digests = write_oci_tar(path, [6 * 1024 * 1024, 2_000_000, 3_000_000])
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    command = [sys.executable, "-m", "ecrstream", "push", str(path), "--repository", repository]
    command += ["--tag", "v1", "--endpoint-url", ecr.endpoint_url, "--region", "us-east-1"]

    run = run_on_terminal(command, env, timeout=50)

    assert run.returncode == 0, run.stderr
    screen = run.screen
    assert "layers 3/3" in screen  # the total bar
    for digest in layer_digests:  # a bar of its own for each layer while it uploads
        assert f"layer {digest[7:19]}" in screen
    assert "3 layers uploaded" in screen
