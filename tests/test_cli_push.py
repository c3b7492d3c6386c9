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
import re
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from cli_run import error_line, interrupt_at_part
from terminal import run_on_terminal

from ecrstream.local import LocalEcr, Operation

pytestmark = pytest.mark.timeout(60)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def write_oci_tar(
    path: Path, layer_sizes: list[int], *, images: int = 1
) -> tuple[bytes, list[str]]:
    """An OCI image layout as a tar; returns the manifest bytes and the layer digests.

    With ``images`` > 1 its index lists that many images (the same layers, manifests that
    differ in an annotation), named ``image-1``, ``image-2``...
    """
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
    manifests = [manifest]
    for number in range(2, images + 1):
        other = json.loads(manifest)
        other["annotations"] = {"number": str(number)}
        manifests.append(json.dumps(other).encode())
    entries: list[dict[str, Any]] = [
        {"mediaType": OCI_MANIFEST, "digest": _digest(data), "size": len(data)}
        for data in manifests
    ]
    if images > 1:
        for number, entry in enumerate(entries, 1):
            entry["annotations"] = {"org.opencontainers.image.ref.name": f"image-{number}"}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        **{_blob(_digest(data)): data for data in [config, *manifests, *layers]},
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


def push_env() -> dict[str, str]:
    """The child's environment: dummy keys, no AWS config files, no instance metadata."""
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
    return env


def push_command(*args: str, ecr: LocalEcr) -> list[str]:
    where = ["--endpoint-url", ecr.endpoint_url, "--region", "us-east-1"]
    return [sys.executable, "-m", "ecrstream", *args, *where]


def run_cli(*args: str, ecr: LocalEcr) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        push_command(*args, ecr=ecr), env=push_env(), capture_output=True, text=True, timeout=50
    )


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


# -- bad sources and options: exit 2, named as typed ----------------------------------------


def _not_a_tar(folder: Path) -> Path:
    path = folder / "image.tar"
    path.write_bytes(b"this is not a tar archive\n" * 100)
    return path


def _empty_folder(folder: Path) -> Path:
    path = folder / "empty"
    path.mkdir()
    return path


def _folder_without_layout(folder: Path) -> Path:
    path = folder / "photos"
    path.mkdir()
    (path / "cat.jpg").write_bytes(b"\xff\xd8")
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_not_a_tar, "is not a tar archive"),
        (_empty_folder, "is an empty folder"),
        (_folder_without_layout, "is neither an OCI image layout"),
    ],
    ids=["a file that is not a tar", "an empty folder", "a folder that is not a layout"],
)
def test_a_source_that_is_not_an_image_is_a_usage_error(
    make: Any, says: str, ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    source = make(tmp_path)

    done = run_cli("push", str(source), "--repository", repository, "--tag", "v1", ecr=ecr)

    assert done.returncode == 2, done.stderr
    line = error_line(done)
    assert line.startswith(f"ecrstream push: error: SOURCE: {source} {says}")
    assert line.endswith("(see 'ecrstream push --help')")
    assert ecr.requests() == []


def test_errors_name_the_options_not_python_fields(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    write_oci_tar(one, [3_000])
    write_oci_tar(two, [3_000], images=2)

    bad_tag = run_cli("push", str(one), "--repository", repository, "--tag", "no spaces", ecr=ecr)
    which = run_cli("push", str(two), "--repository", repository, "--tag", "v1", ecr=ecr)

    assert bad_tag.returncode == 2, bad_tag.stderr
    assert "error: --tag: must be" in error_line(bad_tag)
    assert "image_tag" not in bad_tag.stderr
    assert which.returncode == 2, which.stderr
    line = error_line(which)
    assert "holds several images: choose one with --image-ref (names: image-1, image-2)" in line
    assert re.search(r"(?<!-)image_ref", line) is None
    assert ecr.requests(Operation.UPLOAD_LAYER_PART) == []


# -- progress, plurals, Ctrl-C ----------------------------------------------------------------


def test_piped_progress_is_a_line_per_part(ecr: LocalEcr, repository: str, tmp_path: Path) -> None:
    path = tmp_path / "image.tar"
    _, (big, middle, small) = write_oci_tar(path, [12 * 1024 * 1024, 200_000, 3_000])
    args = ["push", str(path), "--repository", repository, "--tag", "v1", "--part-size", "5MiB"]

    done = run_cli(*args, "--max-concurrent-layers", "1", ecr=ecr)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    name = f"layer {big[:19]}"
    assert lines[0].startswith(f"{name} part 1/3: 5.0 MiB of 12.0 MiB; layers 0/3, 5.0 MiB of")
    assert lines[1].startswith(f"{name} part 2/3: 10.0 MiB of 12.0 MiB; layers 0/3,")
    assert "MB/s" in lines[0]
    assert lines[2].startswith(f"{name} done (12.0 MiB); layers 1/3")  # the last part's line
    assert lines[3].startswith(f"layer {middle[:19]} done")
    assert lines[4].startswith(f"layer {small[:19]} done")
    assert lines[5].startswith("config sha256:")
    assert lines[6].startswith("pushed sha256:")
    assert ": 3 layers uploaded, 0 already there" in lines[6]
    assert len(lines) == 7


def test_one_layer_is_one_layer(ecr: LocalEcr, repository: str, tmp_path: Path) -> None:
    path = tmp_path / "image.tar"
    write_oci_tar(path, [3_000])

    done = run_cli("push", str(path), "--repository", repository, "--tag", "v1", ecr=ecr)

    assert done.returncode == 0, done.stderr
    assert ": 1 layer uploaded, 0 already there" in done.stdout.splitlines()[-1]


def ctrl_c_at_the_second_blob(
    ecr: LocalEcr, repository: str, tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], list[str], str, str]:
    """A push of three layers stopped by Ctrl-C at part 4: (the stopped run, its command,
    the big layer committed, the middle one in flight)."""
    path = tmp_path / "image.tar"
    _, (big, middle, _) = write_oci_tar(path, [12 * 1024 * 1024, 200_000, 3_000])
    # One blob at a time, largest first: parts 1-3 are the big layer, part 4 the middle one.
    args = ["push", str(path), "--repository", repository, "--tag", "v1", "--part-size", "5MiB"]
    args += ["--max-concurrent-layers", "1", *extra]
    command = push_command(*args, ecr=ecr)
    stopped, _ = interrupt_at_part(ecr, command, push_env(), part=4, timeout=30)
    return stopped, command, big, middle


def test_ctrl_c_says_what_is_committed_and_what_starts_over(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    stopped, _, big, middle = ctrl_c_at_the_second_blob(ecr, repository, tmp_path)
    stderr = stopped.stderr

    assert stopped.returncode == 130, stderr
    lines = stderr.splitlines()
    assert "Ctrl-C: stopping" in lines[0]
    assert lines[1] == (
        f"ecrstream push: interrupted; 1 blob committed to {repository} (layer {big[:19]}):"
        " skipped next time"
    )
    assert lines[2] == (
        f"ecrstream push: 1 blob in flight (layer {middle[:19]}; 0 B of 195.3 KiB sent):"
        " uploaded again from the start next time"
    )
    assert lines[3] == "ecrstream push: to finish, run the same command again:"
    again = subprocess.run(
        shlex.split(lines[4]), env=push_env(), capture_output=True, text=True, timeout=50
    )
    assert again.returncode == 0, again.stderr
    assert ": 2 layers uploaded, 1 already there" in again.stdout.splitlines()[-1]


def test_a_stopped_push_with_json_prints_what_is_committed_as_json(
    ecr: LocalEcr, repository: str, tmp_path: Path
) -> None:
    stopped, command, big, middle = ctrl_c_at_the_second_blob(ecr, repository, tmp_path, "--json")

    assert stopped.returncode == 130, stopped.stderr
    report = json.loads(stopped.stdout)
    assert report == {
        "stopped": True,
        "reason": "interrupted",
        "exit_code": 130,
        "committed_digests": [big],
        "in_flight_digests": [middle],
        "resume_command": stopped.stderr.splitlines()[-1].strip(),
    }
    assert shlex.split(report["resume_command"]) == command
