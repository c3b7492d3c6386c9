"""``ecrstream local-ecr``: the local endpoint served by the command, used by the command."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli, error_line, make_env, make_layer

pytestmark = pytest.mark.timeout(90)

LAST_LINE = "Ctrl-C or SIGTERM stops it."


def test_local_ecr_serves_an_upload_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "ecrstream", "local-ecr", "--repository", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as child:
        assert child.stdout is not None
        url = child.stdout.readline().strip()  # the first line is the URL alone
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        for line in child.stdout:  # pytest-timeout bounds a child that never gets there
            if line.strip() == LAST_LINE:
                break
        layer = tmp_path / "layer.bin"
        digest = make_layer(layer, 6 * 1024 * 1024)
        args = ["upload-layer", str(layer), "--repository", "demo", "--region", "us-east-1"]

        done = cli(*args, "--endpoint-url", url, "--quiet", env=env)

        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == digest + "\n"
    assert child.returncode == 0, stderr


def test_local_ecr_on_a_taken_port_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = cli("local-ecr", "--port", str(port), env=make_env(tmp_path))

    assert done.returncode == 2
    line = error_line(done)
    assert line.startswith(f"ecrstream local-ecr: error: --port: cannot listen on 127.0.0.1:{port}")
    assert done.stdout == ""
