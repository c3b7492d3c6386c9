"""``ecrstream copy`` in a child process: from the docker-registry fixture into the local ECR."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
from cli_run import assert_clean, cli, make_env, on
from registry_fixtures import Fault, FaultProxy, RegistryServer, Seeder

from ecrstream.local import LocalEcr

pytestmark = pytest.mark.timeout(120)


def test_copy_stopped_by_timeout_then_resumed(
    tmp_path: Path,
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    repository: str,
) -> None:
    image = Seeder(anon_registry).push_image(f"cli/app-{uuid.uuid4().hex[:8]}", "v1", (300_000,))
    env = make_env(tmp_path)
    checkpoint = tmp_path / "copy.json"
    fault_proxy.add(Fault("stall", where=image.layers[0], at_byte=100_000))
    args = [
        "copy",
        f"{fault_proxy.host}/{image.repository}:v1",
        "--repository",
        repository,
        "--tag",
        "v1",
        "--src-plain-http",
        "--checkpoint-file",
        str(checkpoint),
        *on(ecr),
    ]
    stopped = cli(*args, "--timeout", "3", env=env)
    assert_clean(stopped)
    assert stopped.returncode == 1, stopped.stderr
    assert "timed out" in stopped.stderr
    saved = json.loads(checkpoint.read_text())
    assert saved["source_digest"] == image.digest
    assert ecr.requests("PutImage") == []
    lines = stopped.stderr.splitlines()
    again = shlex.split(lines[lines.index("ecrstream copy: to go on, run:") + 1])
    assert again[-2:] == ["--resume", str(checkpoint)]
    fault_proxy.reset()  # the stall ends
    resumed = cli(*again[3:], "--json", env=env)  # after "python -m ecrstream"
    assert_clean(resumed)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["manifest_digest"] == image.digest
    assert report["tags"] == ["v1"]
    assert not checkpoint.exists()  # spent
    assert ecr.requests("PutImage")[-1].status == 200
