"""Smoke test of the whole-image benchmark: the sink's PutImage, the layout, bench_image.py.

No timing is asserted; this guards the image benchmark against rot while the library
changes, and checks that the sink answers PutImage and BatchCheckLayerAvailability the way
the comparison relies on (per repository, LayersNotFound for a missing blob).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
# benchmarks/ is a folder of scripts, not a package: imported by path, untyped here.
bench_image = importlib.import_module("bench_image")

MIB = 1 << 20

pytestmark = pytest.mark.timeout(180)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHMARK",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    return env


@pytest.fixture(scope="module")
def sink_url() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "sink.py"), "--verify"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("SINK_PORT="), line
        yield f"http://127.0.0.1:{int(line.split('=', 1)[1])}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(("total", "count"), [(12 * MIB, 4), (1536 * MIB, 12), (5 * MIB, 1)])
def test_layer_sizes_grow_from_the_smallest_and_add_up(total: int, count: int) -> None:
    sizes = bench_image.layer_sizes(total, count, MIB)

    assert len(sizes) == count
    assert sum(sizes) == total
    assert sizes == sorted(sizes)
    assert sizes[0] == (MIB if count > 1 else total)
    if count == 12:  # the image: about 1 MiB to 512 MiB and more
        assert 512 * MIB <= sizes[-1] <= 700 * MIB
    with pytest.raises(ValueError, match="cannot make"):
        bench_image.layer_sizes(3 * MIB, 4, MIB)


def test_sink_put_image_needs_the_repositorys_blobs(sink_url: str) -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client: Any = boto3.client(
        "ecr",
        region_name="us-east-1",
        endpoint_url=sink_url,
        aws_access_key_id="AKIDBENCHMARK",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    blob = os.urandom(1000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    upload_id = client.initiate_layer_upload(repositoryName="put/one")["uploadId"]
    client.upload_layer_part(
        repositoryName="put/one",
        uploadId=upload_id,
        partFirstByte=0,
        partLastByte=999,
        layerPartBlob=blob,
    )
    client.complete_layer_upload(
        repositoryName="put/one", uploadId=upload_id, layerDigests=[digest]
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": bench_image.MANIFEST_TYPE,
            "config": {"mediaType": "x/y", "digest": digest, "size": 1000},
            "layers": [{"mediaType": bench_image.LAYER_TYPE, "digest": digest, "size": 1000}],
        }
    )

    stored = client.put_image(repositoryName="put/one", imageManifest=manifest, imageTag="t")
    # Another repository has not got the blob: availability and PutImage say so.
    other = client.batch_check_layer_availability(repositoryName="put/two", layerDigests=[digest])
    with pytest.raises(ClientError) as missing:
        client.put_image(repositoryName="put/two", imageManifest=manifest, imageTag="t")

    manifest_digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    assert stored["image"]["imageId"] == {"imageDigest": manifest_digest, "imageTag": "t"}
    assert other["layers"] == []
    assert missing.value.response["Error"]["Code"] == "LayersNotFoundException"
    image = {"repositoryName": "put/one", "imageDigest": manifest_digest, "imageTag": "t"}
    assert image in _stats(sink_url)["images"]


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def test_bench_image_runs_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_image.py"),
            "--total",
            "12MiB",
            "--layers",
            "4",
            "--runs",
            "1",
            "--part-size",
            "5MiB",
            "--wait-quiet",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(output),
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert [(run["variant"], run["status"]) for run in report["runs"]] == [
        ("ecrstream", "ok"),
        ("boto3", "ok"),
    ]
    sizes = report["config"]["layer_sizes"]
    assert sum(sizes) == 12 * MIB
    for run in report["runs"]:
        assert run["layer_bytes_accepted"] == report["config"]["blob_bytes"]
        assert run["wall_s"] > run["push_s"] > 0
        assert run["peak_rss_kib"] > 0
    ecrstream, _ = report["summary"]
    assert ecrstream["paired_ratio_to_boto3"] > 0
    assert "| ecrstream |" in completed.stdout
    assert "| boto3 |" in completed.stdout
