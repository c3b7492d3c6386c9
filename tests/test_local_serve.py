"""``python -m ecrstream.local``: the endpoint as a server of its own, run as a child process.

The child prints its URL first and the lines that point other programs at it; the test follows
those lines (the ``export`` ones) to upload a layer with the ecrstream command, then stops the
child with SIGTERM.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

LAST_LINE = "Ctrl-C or SIGTERM stops it."


def clean_env(home: Path) -> dict[str, str]:
    """The environment without the caller's AWS settings, so only the printed lines count."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


class Server:
    """A running ``python -m ecrstream.local`` child and what it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ecrstream.local", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        self.lines: list[str] = []
        for line in self.process.stdout:  # pytest-timeout bounds a child that never prints
            self.lines.append(line.rstrip("\n"))
            if line.strip() == LAST_LINE:
                break

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def server(tmp_path: Path, home: Path) -> Iterator[Server]:
    repository = f"serve-{uuid.uuid4().hex[:12]}"
    args = ["--repository", repository, "--repository", repository + "-b"]
    running = Server([*args, "--data-dir", str(tmp_path / "data")], clean_env(home))
    try:
        yield running
    finally:
        running.close()


def test_server_prints_its_url_first_serves_an_upload_and_stops_on_sigterm(
    server: Server, tmp_path: Path, home: Path
) -> None:
    url = server.lines[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), server.lines
    port = url.rsplit(":", 1)[1]
    assert server.lines[-1] == LAST_LINE
    printed = "\n".join(server.lines)
    assert f"export AWS_ENDPOINT_URL_ECR={url}" in printed
    assert f"--password-stdin 127.0.0.1:{port}" in printed
    assert f"docker://127.0.0.1:{port}/" in printed
    repositories = next(line for line in server.lines if line.startswith("Repositories: "))
    repository = repositories.removeprefix("Repositories: ").split(", ")[0]

    # Follow the printed lines: their exports, then the ecrstream command.
    env = clean_env(home)
    for line in server.lines:
        if line.strip().startswith("export "):
            for assignment in line.strip().removeprefix("export ").split():
                name, _, value = assignment.partition("=")
                env[name] = value
    layer = random.Random(5).randbytes(3 * 1024 * 1024 + 7)
    (tmp_path / "layer.bin").write_bytes(layer)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecrstream",
            "upload-layer",
            str(tmp_path / "layer.bin"),
            "--repository",
            repository,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(layer).hexdigest()
    assert digest in done.stdout
    stored = tmp_path / "data" / "blobs" / "sha256" / digest
    assert stored.read_bytes() == layer

    assert server.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    assert stored.read_bytes() == layer  # a named data dir keeps the layers


def test_a_taken_port_and_a_bad_port_are_usage_errors(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {str(port): f"--port {port}: cannot listen", "70000": "--port", "x": "--port"}
        for value, message in cases.items():
            done = subprocess.run(
                [sys.executable, "-m", "ecrstream.local", "--port", value],
                env=clean_env(home),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, (value, done.stderr)
            assert done.stdout == ""
            assert message in done.stderr
