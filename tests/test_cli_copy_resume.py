"""``ecrstream copy`` stopped by Ctrl-C mid-blob, then run again: the blob goes on from the
byte ECR holds with one ranged GET, and nothing is downloaded or sent twice."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cli_run import assert_clean, cli, ecrstream, go_on_command, interrupt_at_part, make_env, on
from registry_fixtures import FaultProxy, RegistryServer, Seeder

from ecrstream.local import LocalEcr

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
PART = 10 * MIB  # the local ECR's partSize, as ECR's
SIZE = 25 * MIB


def test_ctrl_c_then_again_continues_the_blob_with_a_ranged_get(
    tmp_path: Path,
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    repository: str,
) -> None:
    image = Seeder(anon_registry).push_image(f"cli/big-{uuid.uuid4().hex[:8]}", "v1", (SIZE,))
    layer = image.layers[0]
    env = make_env(tmp_path)
    checkpoint = tmp_path / "copy.json"
    # One blob at a time, largest first: parts 1 and 2 are the layer's; stop during part 2.
    args = [
        "copy",
        f"{fault_proxy.host}/{image.repository}:v1",
        "--repository",
        repository,
        "--tag",
        "v1",
        "--src-plain-http",
        "--max-concurrent-layers",
        "1",
        "--checkpoint-file",
        str(checkpoint),
        *on(ecr),
    ]
    stopped, _ = interrupt_at_part(ecr, ecrstream(*args), env, part=2)
    stderr = stopped.stderr
    assert stopped.returncode == 130, stderr
    saved = json.loads(checkpoint.read_text())
    assert saved["source_digest"] == image.digest
    assert saved["checkpoints"][layer]["bytes_committed"] == PART
    first_run = sum(g.served for g in fault_proxy.blob_gets(layer))
    again = go_on_command(stderr)
    assert again[-2:] == ["--resume", str(checkpoint)]
    ecr.wait_idle(timeout=60)  # the delayed part has ended with the child's connection
    ecr.faults.clear()
    fault_proxy.reset()

    resumed = cli(*again[3:], "--json", env=env)  # after "python -m ecrstream"

    assert_clean(resumed)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["manifest_digest"] == image.digest
    assert not checkpoint.exists()  # spent
    gets = fault_proxy.blob_gets(layer)
    assert [(g.range, g.served) for g in gets] == [(f"bytes={PART}-", SIZE - PART)]
    assert first_run + gets[0].served < 2 * SIZE  # not downloaded twice
    upload_id = saved["checkpoints"][layer]["upload_id"]
    parts = [
        (r.part_first_byte, r.part_last_byte) for r in ecr.accepted_parts(upload_id)
    ]  # over both runs: each byte sent once, in order
    assert parts == [(0, PART - 1), (PART, 2 * PART - 1), (2 * PART, SIZE - 1)]
    assert ecr.requests("PutImage")[-1].status == 200


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_the_command_to_go_on_does_not_print_the_source_password(
    tmp_path: Path,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    repository: str,
    form: str,
) -> None:
    """A stopped copy prints how to go on: its --src-creds password is not in it."""
    image = Seeder(anon_registry).push_image(f"cli/pw-{uuid.uuid4().hex[:8]}", "v1", (MIB,))
    # The same text as SOURCE's tag: only the option's value is masked, not SOURCE.
    password = "v1"
    creds = (
        ["--src-creds", f"puller:{password}"]
        if form == "separate"
        else [f"--src-creds=puller:{password}"]
    )
    args = [
        "copy",
        f"{anon_registry.host}/{image.repository}:v1",
        *("--repository", repository, "--src-plain-http"),
        *("--checkpoint-file", str(tmp_path / "copy.json")),
        *creds,
        *on(ecr),
    ]
    stopped, _ = interrupt_at_part(ecr, ecrstream(*args), make_env(tmp_path), part=1)
    stdout, stderr = stopped.stdout, stopped.stderr
    ecr.wait_idle(timeout=60)
    ecr.faults.clear()
    assert stopped.returncode == 130, stderr
    assert f"puller:{password}" not in stdout + stderr
    again = go_on_command(stderr)
    # The user stays (the command still says whose credentials it needs), the password not.
    assert "puller:***" in " ".join(again)
    assert f"{anon_registry.host}/{image.repository}:v1" in again  # SOURCE as typed


def test_a_second_copy_stopped_in_the_same_folder_keeps_the_first_ones_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --checkpoint-file, each stopped copy gets a file of its own in the current
    folder (the first's printed --resume command must still name the first's checkpoint),
    and the path written is absolute, so the printed command works from any folder."""
    from ecrstream.cli.copy import load_copy_checkpoint, write_copy_checkpoint
    from ecrstream.errors import CopyCanceledError

    monkeypatch.chdir(tmp_path)
    first_digest, second_digest = "sha256:" + "1" * 64, "sha256:" + "2" * 64

    first = write_copy_checkpoint(CopyCanceledError(source_digest=first_digest), None)
    second = write_copy_checkpoint(CopyCanceledError(source_digest=second_digest), None)

    assert first == tmp_path / "ecrstream-copy.checkpoint.json"
    assert second == tmp_path / "ecrstream-copy-2.checkpoint.json"
    assert load_copy_checkpoint(str(first)).source_digest == first_digest
    assert load_copy_checkpoint(str(second)).source_digest == second_digest
    # An explicit place (--checkpoint-file, or the --resume file) is written as given.
    again = write_copy_checkpoint(CopyCanceledError(source_digest=second_digest), first)
    assert again == first
    assert load_copy_checkpoint(str(first)).source_digest == second_digest
