"""How the command-line tests run ``ecrstream``: a child process, as a user would run it.

The children talk to the session's local ECR endpoint with dummy credentials from the
environment (never real ones: ``assert_clean`` checks that they are never printed).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ecrstream.local import FaultKind, LocalEcr, Operation

MIB = 1024 * 1024
# Not real credentials; distinctive, so a test can tell they were never printed.
ACCESS_KEY_ID = "AKIAECRSTREAMTEST123"
SECRET_ACCESS_KEY = "ecrstream-test-secret-do-not-print"


def make_env(folder: Path) -> dict[str, str]:
    """The child's environment: dummy keys, no AWS config files, no instance metadata."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_CONFIG_FILE=str(folder / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return clean


def ecrstream(*args: str) -> list[str]:
    """The command line that runs ``ecrstream`` with ``args`` in a child Python."""
    return [sys.executable, "-m", "ecrstream", *args]


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ecrstream(*args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_all(
    commands: dict[str, list[str]], env: dict[str, str]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run ``ecrstream`` with each argument list, all at once; their results by key."""
    children = {
        key: subprocess.Popen(
            ecrstream(*args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for key, args in commands.items()
    }
    results = {}
    for key, child in children.items():
        with child:
            stdout, stderr = child.communicate(timeout=60)
        results[key] = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    return results


def interrupt_at_part(
    ecr: LocalEcr,
    command: list[str],
    env: dict[str, str],
    *,
    part: int,
    signum: signal.Signals = signal.SIGINT,
    timeout: float = 60,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``command`` with UploadLayerPart call ``part`` held in the endpoint (a DELAY fault
    of 60 s); once that part is held, send the child ``signum``. Returns the child's result
    and the seconds from the signal to its exit."""
    ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.DELAY, call=part, delay_seconds=60)
    with subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as child:
        ecr.wait_for_delay(Operation.UPLOAD_LAYER_PART, call=part, timeout=timeout)
        child.send_signal(signum)
        signaled = time.monotonic()
        stdout, stderr = child.communicate(timeout=timeout)
        seconds = time.monotonic() - signaled
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr), seconds


def on(ecr: LocalEcr) -> list[str]:
    return ["--endpoint-url", ecr.endpoint_url, "--region", ecr.region_name]


def make_layer(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """No traceback, no credentials."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert ACCESS_KEY_ID not in output
    assert SECRET_ACCESS_KEY not in output


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def go_on_command(stderr: str) -> list[str]:
    """The command a stopped ``ecrstream copy`` prints to go on with (``python -m ecrstream
    copy ...``: its arguments are the list from index 3)."""
    lines = stderr.splitlines()
    return shlex.split(lines[lines.index("ecrstream copy: to go on, run:") + 1])


def resume_command(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith("to resume, run:"))
    return shlex.split(lines[index + 1])
