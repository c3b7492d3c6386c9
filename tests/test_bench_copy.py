"""Smoke test of the copy benchmark: bench_copy.py end to end, tiny images, one round.

No timing is asserted; this guards the copy benchmark against rot while the library changes.
It runs every variant (``ecrstream copy``, the urllib3 + boto3 loop, skopeo) with ``--verify``
against a real docker-registry source seeded by the benchmark itself, and checks, from the
report, that the sink (or skopeo's destination registry) received exactly the image's blobs,
each hashed, with the bytes of the layout the benchmark wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_COPY = ROOT / "benchmarks" / "bench_copy.py"
MIB = 1 << 20

pytestmark = pytest.mark.timeout(300)


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


def _bench_copy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH_COPY), "--wait-quiet", "0", *args],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _layout_blobs(data_dir: Path, manifest_digest: str) -> dict[str, int]:
    """The config and layers of the layout holding ``manifest_digest``, hashed here."""
    for manifest_path in data_dir.glob("image-*/blobs/sha256/" + manifest_digest[7:]):
        blob_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_bytes())
        blobs = {}
        for descriptor in [manifest["config"], *manifest["layers"]]:
            data = (blob_dir / descriptor["digest"][7:]).read_bytes()
            blobs["sha256:" + hashlib.sha256(data).hexdigest()] = len(data)
        return blobs
    raise AssertionError(f"no layout in {data_dir} has {manifest_digest}")


def test_bench_copy_runs_every_variant_and_verifies_the_bytes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    output = tmp_path / "result.json"

    completed = _bench_copy(
        "--single-size",
        "6MiB",
        "--total",
        "7MiB",
        "--layers",
        "3",
        "--runs",
        "1",
        "--part-size",
        "5MiB",
        "--verify",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report: dict[str, Any] = json.loads(output.read_text())
    images = report["config"]["images"]
    assert images["single"]["layer_sizes"] == [6 * MIB]
    assert sum(images["multi"]["layer_sizes"]) == 7 * MIB
    assert len(images["multi"]["layer_sizes"]) == 3
    assert sorted((run["image"], run["variant"], run["status"]) for run in report["runs"]) == [
        (image, variant, "ok")
        for image in ("multi", "single")
        for variant in ("ecrstream", "loop", "skopeo")
    ]
    for run in report["runs"]:
        image = images[run["image"]]
        expected = _layout_blobs(data_dir, image["manifest_digest"])
        assert sum(expected.values()) == image["blob_bytes"]
        assert run["peak_rss_kib"] > 0
        assert run["wall_s"] > 0
        if run["variant"] == "skopeo":
            assert run["destination_blobs_hashed"] == len(expected)
        else:
            # The sink completed exactly the layout's blobs, each hashed by the sink.
            assert run["blobs_completed"] == expected
            assert run["blobs_verified_by_sink"] is True
            assert run["layer_bytes_accepted"] == image["blob_bytes"]
            assert run["manifest_digest"] == image["manifest_digest"]
            assert run["wall_s"] > run["push_s"] > 0
    rows = {(row["image"], row["variant"]): row for row in report["summary"]}
    assert rows["single", "ecrstream"]["paired_ratio_to_loop"] > 0
    assert rows["single", "ecrstream"]["paired_ratio_to_skopeo"] > 0
    assert "paired_ratio_to_loop" not in rows["multi", "loop"]
    table = report["table_markdown"]
    assert table in completed.stdout
    lines = table.splitlines()
    assert lines[0].startswith("| image | variant | whole process s | x loop | vs skopeo |")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["ecrstream", "loop", "skopeo"] * 2
    verdicts = [line for line in completed.stdout.splitlines() if "as fast as the loop" in line]
    assert len(verdicts) == 2
    assert all("5x target" in line and "times skopeo's" in line for line in verdicts)
    assert "seeding" in completed.stdout

    # A second run serves the registry storage kept in the data dir: nothing is seeded again.
    again = _bench_copy(
        "--images",
        "single",
        "--single-size",
        "6MiB",
        "--runs",
        "1",
        "--variants",
        "skopeo",
        "--data-dir",
        str(data_dir),
        "--output",
        str(tmp_path / "again.json"),
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "seeding" not in again.stdout
    second = json.loads((tmp_path / "again.json").read_text())
    assert [(run["variant"], run["status"]) for run in second["runs"]] == [("skopeo", "ok")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--part-size", "1MiB"], "--part-size"),
        (["--variants", "ecrstream,crane"], "--variants"),
        (["--images", "triple"], "--images"),
        (["--layers", "9", "--total", "4MiB"], "--total/--layers/--smallest"),
    ],
)
def test_bench_copy_refuses_bad_options_before_starting(
    tmp_path: Path, args: list[str], message: str
) -> None:
    completed = _bench_copy(*args, "--data-dir", str(tmp_path / "data"))

    assert completed.returncode == 2
    assert message in completed.stderr
    assert not (tmp_path / "data").exists()
