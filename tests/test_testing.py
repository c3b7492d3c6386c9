"""ecrstream.testing, the pytest plugin, as a user's test suite meets it.

A fresh pytest run in an empty folder (no conftest, no settings of ours): the plugin comes in
through the package's ``pytest11`` entry point alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

USER_TESTS = """
import hashlib

import pytest

from ecrstream import LayerUploader
from ecrstream.local import FaultKind, Operation

seen = []


@pytest.mark.anyio
async def test_upload_survives_a_throttled_part(
    ecrstream_client, ecrstream_repository, ecrstream_faults, ecrstream_requests
):
    ecrstream_faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.THROTTLING)
    data = b"layer bytes" * 1000
    result = await LayerUploader(ecrstream_client, ecrstream_repository).upload_stream(
        _chunks(data)
    )
    assert result.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    parts = ecrstream_requests(Operation.UPLOAD_LAYER_PART)
    assert [(r.fault, r.status) for r in parts] == [(FaultKind.THROTTLING, 400), (None, 200)]
    seen.append(ecrstream_repository)


def test_the_next_test_gets_a_reset_endpoint_and_its_own_repository(
    ecrstream_ecr, ecrstream_local_ecr, ecrstream_repository
):
    assert ecrstream_ecr is ecrstream_local_ecr
    assert ecrstream_ecr.faults.faults == ()
    assert ecrstream_ecr.requests() == []
    assert seen and ecrstream_repository != seen[0]
    assert ecrstream_ecr.endpoint_url.startswith("http://127.0.0.1:")


async def _chunks(data):
    yield data
"""


def test_plugin_fixtures_work_in_a_suite_that_only_installed_ecrstream(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
