"""``python -m ecrstream.local``: the endpoint as a server of its own, run as a child process.

The child (started by ``ecrstream.local.child.spawn``, as the demo starts it) prints its URL
first and the lines that point other programs at it; the test follows those lines (the
``export`` ones) to upload a layer with the ecrstream command, then the block stops the child
with SIGTERM. ``spawn`` itself: a start that fails says why, a canceled start leaves nothing.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import anyio.to_thread
import pytest

from ecrstream import CancellationTokenSource, InvalidArgumentError, OperationCanceledError
from ecrstream.local.child import LocalEcrStartError, spawn
from ecrstream.local.serve import LAST_LINE

pytestmark = pytest.mark.timeout(90)


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


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.mark.anyio
async def test_server_prints_its_url_first_serves_an_upload_and_stops_on_sigterm(
    tmp_path: Path, home: Path
) -> None:
    repository = f"serve-{uuid.uuid4().hex[:12]}"
    repositories = [repository, repository + "-b"]
    data = tmp_path / "data"
    async with spawn(repositories, data_dir=data, env=clean_env(home)) as server:
        lines = list(server.lines)
        url = lines[0]
        assert url == server.endpoint_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), lines
        port = url.rsplit(":", 1)[1]
        assert lines[-1] == LAST_LINE
        printed = "\n".join(lines)
        assert f"export AWS_ENDPOINT_URL_ECR={url}" in printed
        assert f"--password-stdin 127.0.0.1:{port}" in printed
        assert f"docker://127.0.0.1:{port}/" in printed
        assert f"Repositories: {repository}, {repository}-b" in lines

        # Follow the printed lines: their exports, then the ecrstream command.
        env = clean_env(home)
        for line in lines:
            if line.strip().startswith("export "):
                for assignment in line.strip().removeprefix("export ").split():
                    name, _, value = assignment.partition("=")
                    env[name] = value
        layer = random.Random(5).randbytes(3 * 1024 * 1024 + 7)
        (tmp_path / "layer.bin").write_bytes(layer)
        command = [sys.executable, "-m", "ecrstream", "upload-layer", str(tmp_path / "layer.bin")]
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [*command, "--repository", repository],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert done.returncode == 0, done.stderr
        digest = hashlib.sha256(layer).hexdigest()
        assert digest in done.stdout
        stored = data / "blobs" / "sha256" / digest
        assert stored.read_bytes() == layer
        assert server.returncode is None

    assert server.returncode == 0  # it stopped on SIGTERM, cleanly
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    assert stored.read_bytes() == layer  # a named data dir keeps the layers


@pytest.mark.anyio
async def test_spawn_says_why_the_endpoint_did_not_start(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(LocalEcrStartError) as raised:
            async with spawn(port=port, env=clean_env(home)):
                pytest.fail("the endpoint cannot serve on a taken port")

    message = str(raised.value)
    assert "exited with status 2 before serving" in message
    assert f"error: --port {port}: cannot listen on 127.0.0.1" in message  # the child's reason


def endpoint_processes(marker: str) -> list[int]:
    """The pids of running processes whose command line holds ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        if marker.encode() in command and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.anyio
async def test_a_canceled_start_raises_and_leaves_no_endpoint_process(home: Path) -> None:
    marker = f"canceled-{uuid.uuid4().hex[:12]}"  # in the child's command line
    source = CancellationTokenSource()
    source.cancel()

    with pytest.raises(OperationCanceledError) as raised:
        async with spawn([marker], env=clean_env(home), cancellation_token=source.token):
            pytest.fail("a canceled token must stop the start")

    assert raised.value.cancellation_token == source.token
    assert endpoint_processes(marker) == []


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


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"stop_timeout": 0}, "stop_timeout"),
        ({"start_timeout": "60"}, "start_timeout"),  # not a TypeError that names nothing
        ({"start_timeout": True}, "start_timeout"),
        ({"stop_timeout": float("inf")}, "stop_timeout"),
        ({"repositories": "demo"}, "repositories"),  # one str: not 'd', 'e', 'm', 'o'
        ({"repositories": ["demo", "Not Valid"]}, "repositories"),
    ],
)
async def test_spawn_refuses_bad_arguments_before_starting_anything(
    arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        async with spawn(**arguments):  # type: ignore[arg-type]
            pytest.fail("nothing may start")
    assert raised.value.field == field
