"""Smoke test of the benchmark harness: the sink, the variants and bench.py still work.

No timing is asserted (except that an added latency is at least waited); this only guards
against the benchmark rotting while the library changes. It starts benchmarks/sink.py with
--verify, so every part is decoded and every digest checked by the sink, over plain HTTP and
over real TLS (a throwaway trustme CA, trusted by the clients through AWS_CA_BUNDLE).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
FILE_SIZE = 12 * 1024 * 1024
# The smallest parts ECR allows, so that the 12 MiB file needs several, the last one short
# (5 + 5 + 2 MiB).
PART_SIZE = 5 * 1024 * 1024
RESULT_PREFIX = "BENCH_RESULT "

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True, slots=True)
class Sink:
    """A running benchmarks/sink.py: its URL and, over TLS, the CA bundle that trusts it."""

    url: str
    ca_bundle: str | None = None

    @property
    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else None


def _child_env(ca_bundle: str | None = None) -> dict[str, str]:
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
    env.pop("AWS_CA_BUNDLE", None)
    if ca_bundle:
        env["AWS_CA_BUNDLE"] = ca_bundle
    return env


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(CA bundle, certificate chain, key) of a throwaway CA's certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = (directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(paths[1]), append=index > 0)
    cert.private_key_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


@contextmanager
def _started_sink(arguments: list[str], scheme: str, ca_bundle: str | None) -> Iterator[Sink]:
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "sink.py"), "--verify", *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("SINK_PORT="), line
        yield Sink(f"{scheme}://127.0.0.1:{int(line.split('=', 1)[1])}", ca_bundle)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# The sink over plain HTTP, over TLS from a thread per connection (the benchmark's), and over
# asyncio's TLS transport (kept to compare the sink's own cost).
SINK_MODES = ["http", "https", "https-asyncio"]


@pytest.fixture(scope="module", params=SINK_MODES)
def sink(request: pytest.FixtureRequest, tls_files: tuple[str, str, str]) -> Iterator[Sink]:
    mode = cast(str, request.param)
    if mode == "http":
        with _started_sink([], "http", None) as started:
            yield started
        return
    with _started_sink(_tls_arguments(tls_files, mode), "https", tls_files[0]) as started:
        yield started


def _tls_arguments(tls_files: tuple[str, str, str], mode: str = "https") -> list[str]:
    _, chain, key = tls_files
    return ["--certfile", chain, "--keyfile", key] + (
        ["--asyncio-tls"] if mode == "https-asyncio" else []
    )


@pytest.fixture(scope="module")
def sink_url() -> Iterator[str]:
    with _started_sink([], "http", None) as started:
        yield started.url


@pytest.fixture(scope="module")
def layer_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("bench") / "layer.bin"
    data = os.urandom(FILE_SIZE)
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def _stats(url: str, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=10, context=context) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


@pytest.mark.parametrize("variant", ["ecrstream", "boto3", "aiobotocore"])
def test_variant_uploads_every_byte_once(
    variant: str, sink: Sink, layer_file: tuple[Path, str]
) -> None:
    path, digest = layer_file
    before = _stats(sink.url, sink.context)
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "variants.py"),
            variant,
            str(path),
            "--endpoint-url",
            sink.url,
            "--part-size",
            str(PART_SIZE),
        ],
        env=_child_env(sink.ca_bundle),
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
    if variant != "boto3":
        assert record["stall"]["ticks"] > 0

    after = _stats(sink.url, sink.context)
    assert after["tls"] is (sink.ca_bundle is not None)
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


@pytest.mark.parametrize("mode", ["https", "https-asyncio"])
def test_https_variant_without_the_ca_is_refused(
    mode: str, tls_files: tuple[str, str, str], layer_file: tuple[Path, str]
) -> None:
    path, _ = layer_file
    with _started_sink(_tls_arguments(tls_files, mode), "https", tls_files[0]) as sink:
        completed = _run_without_ca(sink, path)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    record = json.loads(lines[-1][len(RESULT_PREFIX) :])
    assert record["status"] == "error"
    assert "CERTIFICATE_VERIFY_FAILED" in record["error"], record


def _run_without_ca(sink: Sink, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "variants.py"),
            "boto3",
            str(path),
            "--endpoint-url",
            sink.url,
            "--part-size",
            str(PART_SIZE),
        ],
        env=_child_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sink_waits_the_added_latency_before_each_answer(tls_files: tuple[str, str, str]) -> None:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config

    ca_bundle = tls_files[0]
    arguments = ["--latency-ms", "150", *_tls_arguments(tls_files)]
    with _started_sink(arguments, "https", ca_bundle) as sink:
        client = boto3.client(
            "ecr",
            region_name="us-east-1",
            endpoint_url=sink.url,
            aws_access_key_id="AKIDBENCHMARK",
            aws_secret_access_key="bench",
            verify=ca_bundle,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        client.describe_repositories()  # the connection and TLS handshake, outside the clock
        for _ in range(3):
            started = time.perf_counter()
            upload_id = client.initiate_layer_upload(repositoryName="latency")["uploadId"]
            assert time.perf_counter() - started >= 0.150
            assert upload_id
        stats = _stats(sink.url, sink.context)
        assert stats["latency_ms"] == 150
        assert stats["tls"] is True
        assert stats["tls_read_ahead"] is True  # the threaded TLS sink's OpenSSL tuning held
        assert stats["requests"] >= 4


@pytest.mark.timeout(120)
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
            "--cases",
            "http:5MiB,https:5MiB",
            "--latency-ms",
            "0,10",
            "--variants",
            "ecrstream,boto3",
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
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    labels = ["http 5 MiB", "http 5 MiB +10 ms", "https 5 MiB", "https 5 MiB +10 ms"]
    assert [row["case_label"] for row in report["summary"]] == [
        label for label in labels for _ in ("ecrstream", "boto3")
    ]
    assert [row["status"] for row in report["summary"]] == ["ok"] * 8
    assert all(run["status"] == "ok" for run in report["runs"])
    for run in report["runs"]:
        # The whole process holds the upload's clock, and its CPU holds the upload's.
        assert run["process_wall_s"] > run["wall_s"] > 0
        assert run["process_cpu_s"] >= run["cpu_user_s"] + run["cpu_system_s"]
        assert run["sink"]["layer_bytes_accepted"] == 6 * 1024 * 1024
    ours = [row for row in report["summary"] if row["variant"] == "ecrstream"]
    assert all(row["paired_process_ratio_to_boto3"] > 0 for row in ours)
    # A ceiling for each case without added latency, over its own scheme.
    assert [c["case"]["scheme"] for c in report["sink_ceilings"]] == ["http", "https"]
    assert [final["tls"] for final in report["sink_final"]] == [False, False, True, True]
    assert [final["latency_ms"] for final in report["sink_final"]] == [0, 10, 0, 10]
    assert "| https 5 MiB +10 ms | 6 MiB | boto3 |" in completed.stdout
    assert "| http 5 MiB | 6 MiB | ecrstream |" in completed.stdout
