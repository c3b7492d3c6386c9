"""Smoke test of the benchmark harness: the sink, the baseline loops and bench.py still work.

No timing is asserted; this only guards against the benchmark rotting while the library
changes. It starts benchmarks/sink.py with --verify, so every part is decoded and every
digest checked by the sink.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
FILE_SIZE = 8 * 1024 * 1024
# Small parts so that the 8 MiB file needs several, the last one short (3 + 3 + 2 MiB).
PART_SIZE = 3 * 1024 * 1024
RESULT_PREFIX = "BENCH_RESULT "

pytestmark = pytest.mark.timeout(60)


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


@pytest.fixture(scope="module")
def layer_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("bench") / "layer.bin"
    data = os.urandom(FILE_SIZE)
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


@pytest.mark.parametrize("variant", ["boto3", "aiobotocore"])
def test_baseline_uploads_every_byte_once(
    variant: str, sink_url: str, layer_file: tuple[Path, str]
) -> None:
    path, digest = layer_file
    before = _stats(sink_url)
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "variants.py"),
            variant,
            str(path),
            "--endpoint-url",
            sink_url,
            "--part-size",
            str(PART_SIZE),
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, completed.stdout + completed.stderr
    record = json.loads(lines[-1][len(RESULT_PREFIX) :])
    assert record["status"] == "ok", record
    assert completed.returncode == 0
    assert record["digest"] == digest
    assert record["size"] == FILE_SIZE
    assert record["part_count"] == 3
    assert record["peak_rss_kib"] > 0
    if variant == "aiobotocore":
        assert record["stall"]["ticks"] > 0

    after = _stats(sink_url)
    assert after["layer_bytes_accepted"] - before["layer_bytes_accepted"] == FILE_SIZE
    assert after["parts_accepted"] - before["parts_accepted"] == 3
    assert after["parts_rejected"] == before["parts_rejected"]
    upload = after["completed"][-1]
    assert upload["layerDigest"] == digest
    assert upload["verified"] is True
    assert upload["layerSize"] == FILE_SIZE
    assert upload["partsAccepted"] == 3
    assert upload["partsRejected"] == 0


def test_sink_rejects_out_of_order_part_and_wrong_digest(sink_url: str) -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "ecr",
        region_name="us-east-1",
        endpoint_url=sink_url,
        aws_access_key_id="AKIDBENCHMARK",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    upload_id = client.initiate_layer_upload(repositoryName="smoke")["uploadId"]
    first = os.urandom(1000)
    response = client.upload_layer_part(
        repositoryName="smoke",
        uploadId=upload_id,
        partFirstByte=0,
        partLastByte=999,
        layerPartBlob=first,
    )
    assert response["lastByteReceived"] == 999
    with pytest.raises(ClientError) as skipped:
        client.upload_layer_part(
            repositoryName="smoke",
            uploadId=upload_id,
            partFirstByte=2000,
            partLastByte=2999,
            layerPartBlob=os.urandom(1000),
        )
    error = skipped.value.response["Error"]
    assert error["Code"] == "InvalidLayerPartException"
    # ECR puts the field beside "Error"; botocore's type hints do not know it.
    assert cast(dict[str, Any], skipped.value.response)["lastValidByteReceived"] == 999
    with pytest.raises(ClientError) as mismatch:
        client.complete_layer_upload(
            repositoryName="smoke", uploadId=upload_id, layerDigests=["sha256:" + "0" * 64]
        )
    assert mismatch.value.response["Error"]["Code"] == "InvalidLayerException"
    digest = "sha256:" + hashlib.sha256(first).hexdigest()
    done = client.complete_layer_upload(
        repositoryName="smoke", uploadId=upload_id, layerDigests=[digest]
    )
    assert done["layerDigest"] == digest
    check = client.batch_check_layer_availability(
        repositoryName="smoke", layerDigests=[digest, "sha256:" + "1" * 64]
    )
    assert [layer["layerDigest"] for layer in check["layers"]] == [digest]
    assert check["layers"][0]["layerSize"] == 1000
    assert [failure["failureCode"] for failure in check["failures"]] == ["MissingLayerDigest"]


def test_bench_command_runs_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench.py"),
            "--sizes",
            "6M",
            "--runs",
            "1",
            "--part-size",
            "5MiB",
            "--variants",
            "boto3,aiobotocore",
            "--ceiling-size",
            "16M",
            "--verify",
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
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert [row["status"] for row in report["summary"]] == ["ok", "ok"]
    assert all(run["status"] == "ok" for run in report["runs"])
    assert "| 6 MiB | boto3 |" in completed.stdout
