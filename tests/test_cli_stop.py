"""Stopping ``ecrstream upload-layer`` and running it again, as a user (or a CI job) would.

GNU ``timeout`` really runs the command here; the part in flight is held by the local
endpoint's DELAY fault (``wait_for_delay`` says when), never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import MIB, assert_clean, cli, ecrstream, interrupt_at_part, make_env, make_layer, on

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    LayerUploader,
    OperationCanceledError,
    UploadCheckpoint,
    UploadProgress,
)
from ecrstream.local import FaultKind, LocalEcr, Operation

CHECKPOINT_SUFFIX = ".ecrstream-checkpoint.json"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


def checkpoint_file(layer: Path) -> Path:
    """Where the command writes a stopped upload's checkpoint when not told otherwise."""
    return layer.with_name(layer.name + CHECKPOINT_SUFFIX)


def stopped_upload(ecr: LocalEcr, repository: str, layer: Path, parts: int) -> UploadCheckpoint:
    """Upload ``layer`` in 5 MiB parts through the library, stop it after ``parts`` parts and
    leave its checkpoint where the command would have written it."""

    async def upload() -> UploadCheckpoint:
        async with EcrClient.create(**ecr.client_kwargs()) as client:
            uploader = LayerUploader(client, repository, part_size=5 * MIB)
            source = CancellationTokenSource()

            def stop(progress: UploadProgress) -> None:
                if progress.parts_sent >= parts:
                    source.cancel()

            with pytest.raises(OperationCanceledError) as stopped:
                await uploader.upload_file(layer, cancellation_token=source.token, on_progress=stop)
        checkpoint = stopped.value.checkpoint
        assert isinstance(checkpoint, UploadCheckpoint)
        return checkpoint

    checkpoint = asyncio.run(upload())
    assert checkpoint.bytes_committed == parts * 5 * MIB
    checkpoint_file(layer).write_text(checkpoint.to_json())
    return checkpoint


# -- GNU timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_gnu_timeout_mid_upload_writes_the_checkpoint(
    signal_name: str, ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    """GNU timeout signals the command, then its process group: two signals, milliseconds
    apart. They are one request to stop; the checkpoint must be written."""
    timeout = shutil.which("timeout")
    assert timeout is not None, "GNU coreutils' timeout is needed"
    layer = tmp_path / "layer.bin"
    make_layer(layer, 20 * MIB)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--part-size", "5M"]
    # Part 3 is in flight: the time is up. SIGALRM is what timeout's own timer sends it; it
    # then does what it does at the end of its duration.
    command = [timeout, "-s", signal_name, "300", *ecrstream(*args)]
    stopped, _ = interrupt_at_part(ecr, command, env, part=3, signum=signal.SIGALRM, timeout=30)
    stderr = stopped.stderr

    assert stopped.returncode == 124, stderr  # timeout's "the command timed out"
    assert "ecrstream: quit at once" not in stderr
    assert "interrupted; ECR holds 10.0 MiB of 20.0 MiB" in stderr
    assert stderr.count("stopping (press Ctrl-C again to quit at once)") == 1
    checkpoint = json.loads(checkpoint_file(layer).read_text())
    assert checkpoint["bytes_committed"] == 10 * MIB
    assert checkpoint["repository_name"] == repository
    assert f"--resume {checkpoint_file(layer)}" in stderr


def test_a_signal_repeated_at_once_is_the_same_request(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    """The second SIGTERM arrives after the command took the first (its "stopping" line is
    out): what a scheduler does milliseconds apart. Still one request: the checkpoint is
    written and the command exits 130, not "quit at once" without it."""
    layer = tmp_path / "layer.bin"
    make_layer(layer, 12 * MIB)
    ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.DELAY, call=2, delay_seconds=60)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--part-size", "5M"]
    with subprocess.Popen(
        [sys.executable, "-m", "ecrstream", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as child:
        assert child.stderr is not None
        ecr.wait_for_delay(Operation.UPLOAD_LAYER_PART, call=2, timeout=30)
        child.send_signal(signal.SIGTERM)
        assert "SIGTERM: stopping" in child.stderr.readline()
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)

    assert child.returncode == 130, stderr
    assert "ecrstream: quit at once" not in stderr
    assert json.loads(checkpoint_file(layer).read_text())["bytes_committed"] == 5 * MIB


# -- running the same command again ----------------------------------------------------------


def test_the_same_command_again_resumes_and_says_so(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 20 * MIB)
    checkpoint = stopped_upload(ecr, repository, layer, parts=2)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--part-size", "5M"]

    result = cli(*args, "--json", env=env)

    assert result.returncode == 0, result.stderr
    assert_clean(result)
    assert (
        f"resuming the upload stopped at 10.0 MiB from {checkpoint_file(layer)}"
        " (pass --restart to start over)"
    ) in result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == digest
    assert report["upload_id"] == checkpoint.upload_id
    assert report["resumed_from"] == 10 * MIB
    assert report["part_count"] == 2
    parts = [(r.part_first_byte, r.blob_length) for r in ecr.accepted_parts(checkpoint.upload_id)]
    assert parts == [(0, 5 * MIB), (5 * MIB, 5 * MIB), (10 * MIB, 5 * MIB), (15 * MIB, 5 * MIB)]
    assert not checkpoint_file(layer).exists()  # done with


def test_restart_starts_over_and_removes_the_old_checkpoint(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 12 * MIB)
    checkpoint = stopped_upload(ecr, repository, layer, parts=1)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr)]

    result = cli(*args, "--restart", "--json", env=env)

    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == digest
    assert report["resumed_from"] == 0
    assert report["upload_id"] != checkpoint.upload_id
    assert not checkpoint_file(layer).exists()  # stale: that upload is of no more use


def test_a_checkpoint_of_an_older_version_of_the_file_is_not_resumed_but_removed(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 12 * MIB)
    checkpoint = stopped_upload(ecr, repository, layer, parts=1)
    digest = make_layer(layer, 12 * MIB)  # new bytes, same size
    stamp = os.stat(layer).st_mtime_ns + 5_000_000_000
    os.utime(layer, ns=(stamp, stamp))
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--json"]

    result = cli(*args, env=env)

    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == digest
    assert report["upload_id"] != checkpoint.upload_id
    assert not checkpoint_file(layer).exists()


def test_a_checkpoint_for_another_repository_is_left_alone(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 12 * MIB)
    checkpoint = stopped_upload(ecr, repository, layer, parts=1)
    other = repository + "-other"
    ecr.create_repository(other)

    result = cli("upload-layer", str(layer), "--repository", other, *on(ecr), "--json", env=env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resumed_from"] == 0
    assert UploadCheckpoint.from_json(checkpoint_file(layer).read_text()) == checkpoint


# -- rates -----------------------------------------------------------------------------------


def test_rates_count_only_what_this_run_sent_after_a_restart(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    """The checkpoint's upload is gone (expired, or completed by another copy of the
    checkpoint): the upload starts over, and its rate must not go negative."""
    layer = tmp_path / "layer.bin"
    make_layer(layer, 20 * MIB)
    checkpoint = stopped_upload(ecr, repository, layer, parts=3)
    assert ecr.forget_upload(checkpoint.upload_id)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr)]

    result = cli(*args, "--resume", str(checkpoint_file(layer)), env=env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 3, result.stdout  # the new upload's parts from byte 0, the summary
    parts = [re.match(r"part (\d+)/(\d+): ", line) for line in lines[:-1]]
    assert all(parts), result.stdout
    numbers = [(int(m.group(1)), int(m.group(2))) for m in parts if m]
    assert numbers == [(n, len(numbers)) for n in range(1, len(numbers) + 1)], result.stdout
    rates = [float(rate) for rate in re.findall(r"(-?[\d.]+) MB/s", result.stdout)]
    assert len(rates) == len(lines)
    assert all(rate > 0 for rate in rates), result.stdout
    assert "ETA ?" not in result.stdout
    assert "restarted once (ECR lost the upload)" in lines[-1]
