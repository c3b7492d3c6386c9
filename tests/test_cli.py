"""The ``ecrstream`` command, run as a user would: ``python -m ecrstream`` in a subprocess.

The children talk to the session's local ECR endpoint (the ``ecr`` fixture, in this process)
with dummy credentials from the environment. Synchronization uses the proxy's records and
delays, never sleeps.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import (
    ACCESS_KEY_ID,
    MIB,
    SECRET_ACCESS_KEY,
    assert_clean,
    cli,
    ecrstream,
    error_line,
    interrupt_at_part,
    make_env,
    make_layer,
    on,
    resume_command,
    run_all,
)
from terminal import run_on_terminal

from ecrstream.cli import parse_size
from ecrstream.local import FaultKind, LocalEcr, Operation


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


# -- success ---------------------------------------------------------------------------------


def test_upload_layer_json(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 12 * MIB)

    result = cli(
        "upload-layer", str(layer), "--repository", repository, *on(ecr), "--part-size", "5MiB",
        "--json", env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert_clean(result)
    report = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert report["digest"] == digest
    assert report["size"] == 12 * MIB
    assert report["part_count"] == 3
    assert report["already_existed"] is False
    assert report["restarted"] == 0
    assert report["upload_id"] == ecr.requests(Operation.INITIATE_LAYER_UPLOAD)[0].upload_id
    assert report["seconds"] > 0
    assert report["mb_per_s"] > 0
    assert [r.blob_length for r in ecr.accepted_parts(report["upload_id"])] == [
        5 * MIB,
        5 * MIB,
        2 * MIB,
    ]


def test_upload_layer_plain_lines_and_quiet(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 11 * MIB)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr)]

    result = cli(*args, "--part-size", "5M", env=env)

    assert result.returncode == 0, result.stderr
    assert_clean(result)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["part 1/3", "part 2/3", "part 3/3"]
    assert "11.0 MiB of 11.0 MiB (100.0%)" in lines[2]
    assert "MB/s" in lines[0]
    assert lines[3].startswith(f"uploaded {digest} (11.0 MiB) to {repository}")
    assert len(lines) == 4

    # Already there: with --expected-digest nothing is sent; --quiet prints only the digest.
    quiet = cli(*args, "--expected-digest", digest, "--quiet", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == digest + "\n"
    assert quiet.stderr == ""


def test_terminal_gets_a_live_bar(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 11 * MIB)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--part-size", "5M"]

    run = run_on_terminal([sys.executable, "-m", "ecrstream", *args], env)

    assert run.returncode == 0, run.stderr
    screen = run.screen
    assert "━" in screen  # the bar itself
    assert "11.0/11.0 MiB" in screen
    assert "part 3/3" in screen
    assert f"uploaded {digest} (11.0 MiB)" in screen
    assert "part 1/3:" not in screen  # no plain lines on a terminal


def test_help_lists_exit_codes(env: dict[str, str]) -> None:
    commands = {name: [name, "--help"] for name in ("upload-layer", "push", "demo")}
    for name, result in run_all({"": ["--help"], **commands}, env).items():
        assert result.returncode == 0, name
        assert "exit codes:" in result.stdout
        for code in ("0 ", "1 ", "2 ", "130"):
            assert f"  {code}" in result.stdout


def test_demo(env: dict[str, str]) -> None:
    result = cli("demo", "--size", "24MiB", env=env, timeout=90)  # 24 MiB, then 16 MiB

    assert result.returncode == 0, result.stderr
    assert_clean(result)
    assert "BatchCheckLayerAvailability: AVAILABLE, 25165824 bytes" in result.stdout
    assert re.search(r"canceled with \d+\.\d MiB in ECR", result.stdout)
    summary = result.stdout.split("summary")[1]
    assert len(re.findall(r"sha256:[0-9a-f]{64}", summary)) == 2
    assert "not re-sent" in summary
    # A whole image too, written on the fly, then pushed with push_image
    assert re.search(
        r"ecrstream-demo:demo is sha256:[0-9a-f]{64}: 3 layers and 1 config uploaded",
        result.stdout,
    )
    assert "image    ecrstream-demo:demo  3 layers" in summary
    # Its endpoint is a child process (gone once the demo is: test_cli_demo.py); its speeds
    # are that endpoint's, and it says so
    assert re.search(
        r"local ECR endpoint: http://127\.0\.0\.1:\d+ \(.*process \d+\)", result.stdout
    )
    assert "why these speeds: the endpoint here is moto, in a child process" in summary


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5242880", 5 * MIB),
        ("10MiB", 10 * MIB),
        ("5M", 5 * MIB),
        ("5MB", 5 * MIB),
        ("20mib", 20 * MIB),
        ("1.5KiB", 1536),
        ("7 B", 7),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "10XB", "-5M", "1.5", "0.3KiB", "10 MiBs"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|whole number"):
        parse_size(text)


# -- user errors -----------------------------------------------------------------------------


USAGE_ERRORS = {
    # case: (FILE, options, what the one line on stderr says)
    "missing file": ("nothing.bin", [], "FILE: no such file: "),
    "directory": (".", [], "is a directory; give a layer file"),
    "empty file": ("empty.bin", [], "is empty; ECR does not take empty layers"),
    "bad repository name": (
        "layer.bin",
        ["--repository", "Not_Valid"],
        "--repository: must be lowercase letters and digits",
    ),
    "part size too small": (
        "layer.bin",
        ["--part-size", "4MiB"],
        "argument --part-size: 4MiB is 4194304 bytes; ECR parts must be 5MiB to 20MiB",
    ),
    "part size not a size": (
        "layer.bin",
        ["--part-size", "10 apples"],
        "argument --part-size: '10 apples' is not a size",
    ),
    "checkpoint not JSON": (
        "layer.bin",
        ["--resume", "bad.json"],
        "is not a usable ecrstream checkpoint (checkpoint: not valid JSON",
    ),
    "checkpoint missing": ("layer.bin", ["--resume", "none.json"], "--resume: no such checkpoint"),
    "checkpoint of another file": (
        "layer.bin",
        ["--resume", "other.json"],
        "--resume: the checkpoint belongs to ",
    ),
    "no region": ("layer.bin", ["--no-region"], "no AWS region: pass --region"),
    "unknown profile": (
        "layer.bin",
        ["--profile", "nobody"],
        "--profile: no profile named 'nobody'",
    ),
    "no repository option": (
        "layer.bin",
        ["--no-repository"],
        "the following arguments are required: --repository",
    ),
}


def write_other_checkpoint(folder: Path) -> None:
    """other.json: a checkpoint of another (existing) file than layer.bin."""
    from ecrstream.models import UploadCheckpoint

    other = folder / "other.bin"
    other.write_bytes(b"y" * 10)
    checkpoint = UploadCheckpoint(
        repository_name="some-repo",
        registry_id=None,
        upload_id="12345678-1234-1234-1234-123456789012",
        bytes_committed=0,
        source_path=str(other),
        source_size=10,
    )
    (folder / "other.json").write_text(checkpoint.to_json())


@pytest.fixture(scope="module")
def usage_results(
    local_ecr: LocalEcr, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case of USAGE_ERRORS, run at once (each child is mostly interpreter start-up)."""
    folder = tmp_path_factory.mktemp("usage")
    (folder / "layer.bin").write_bytes(b"x" * 1000)
    (folder / "empty.bin").touch()
    (folder / "bad.json").write_text("{not json")
    write_other_checkpoint(folder)
    local_ecr.reset()
    commands = {}
    for case, (file, options, _) in USAGE_ERRORS.items():
        args = ["upload-layer", str(folder / file), "--endpoint-url", local_ecr.endpoint_url]
        if "--no-repository" not in options:
            args += ["--repository", "some-repo"]
        if "--no-region" not in options:
            args += ["--region", "us-east-1"]
        extra = [folder / o if o.endswith(".json") else o for o in options]
        commands[case] = args + [str(o) for o in extra if not str(o).startswith("--no-")]
    results = run_all(commands, make_env(folder))
    assert local_ecr.requests() == []  # all refused before any request
    return results


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors(
    case: str, usage_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = usage_results[case]

    assert result.returncode == 2, result.stderr
    assert_clean(result)
    assert result.stdout == ""
    line = error_line(result)
    assert line.startswith("ecrstream upload-layer: error: ")
    assert USAGE_ERRORS[case][2] in line
    assert line.endswith("(see 'ecrstream upload-layer --help')")


def test_the_region_comes_from_aws_region_before_aws_default_region(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 1000)
    args = ["upload-layer", str(layer), "--repository", repository]
    args += ["--endpoint-url", ecr.endpoint_url, "--json"]

    # The repository is in the endpoint's region only: where the upload went says which won.
    taken = cli(*args, env={**env, "AWS_REGION": ecr.region_name}, timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["digest"] == digest
    elsewhere = {**env, "AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": ecr.region_name}
    lost = cli(*args, env=elsewhere, timeout=60)
    assert lost.returncode == 1
    assert f"repository '{repository}' not found" in error_line(lost)
    assert "eu-north-1" in error_line(lost)
    explicit = cli(*args, "--region", ecr.region_name, env=elsewhere, timeout=60)
    assert explicit.returncode == 0, explicit.stderr

    bad = cli(*args, env={**env, "AWS_REGION": "nowhere 1"}, timeout=60)
    assert bad.returncode == 2
    assert_clean(bad)
    assert "AWS_REGION: 'nowhere 1' is not an AWS region name" in error_line(bad)


def test_repository_not_found(ecr: LocalEcr, env: dict[str, str], tmp_path: Path) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)

    result = cli("upload-layer", str(layer), "--repository", "no-such-repo", *on(ecr), env=env)

    assert result.returncode == 1
    assert_clean(result)
    line = error_line(result)
    assert "repository 'no-such-repo' not found" in line
    assert "create it (aws ecr create-repository --repository-name no-such-repo)" in line


def test_missing_credentials(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]

    result = cli("upload-layer", str(layer), "--repository", repository, *on(ecr), env=env)

    assert result.returncode == 1
    assert_clean(result)
    assert "error: no AWS credentials found: set AWS_PROFILE" in error_line(result)


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """An endpoint that refuses every request's credentials, quoting the key id, as AWS may."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            credential = self.headers.get("Authorization", "").split("Credential=")[-1]
            message = f"The security token included in the request is invalid ({credential})"
            body = json.dumps({"__type": "UnrecognizedClientException", "message": message})
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", "c0ffee00-0000-0000-0000-000000000000")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("debug", [False, True])
def test_bad_credentials(
    refusing_endpoint: str, env: dict[str, str], tmp_path: Path, debug: bool
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    args = ["upload-layer", str(layer), "--repository", "repo", "--region", "us-east-1"]

    result = cli(
        *args, "--endpoint-url", refusing_endpoint, *(["--debug"] if debug else []), env=env
    )

    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert ACCESS_KEY_ID not in output
    assert SECRET_ACCESS_KEY not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ecrstream upload-layer: error: AWS refused the credentials")
    assert "UnrecognizedClientException" in last
    if debug:
        assert "Traceback" in result.stderr
        assert "***" in result.stderr  # the key id the service quoted, hidden
    else:
        assert_clean(result)
        assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_endpoint(env: dict[str, str], tmp_path: Path) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    args = ["upload-layer", str(layer), "--repository", "repo", "--region", "us-east-1"]

    result = cli(*args, "--endpoint-url", url, env=env)

    assert result.returncode == 1
    assert_clean(result)
    line = error_line(result)
    assert f"error: cannot reach {url}: " in line
    assert "check --endpoint-url, --region and the network" in line


# -- stopping and resuming -------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_and_resume_command_finishes(
    signum: signal.Signals, ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 20 * MIB)
    # Part 3 hangs in the endpoint: the moment to interrupt, with two parts committed.
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr)]
    command = ecrstream(*args, "--part-size", "5MiB", "--json")
    stopped, stopped_after = interrupt_at_part(ecr, command, env, part=3, signum=signum, timeout=30)
    stdout, stderr = stopped.stdout, stopped.stderr

    assert stopped.returncode == 130, stderr
    assert stopped_after < 2.0  # 0.1-0.3 s here; the slack is for loaded CI machines
    stopped_report = json.loads(stdout)  # --json: one object, the stop's
    assert (stopped_report["stopped"], stopped_report["exit_code"]) == (True, 130)
    assert stopped_report["bytes_committed"] == 10 * MIB
    assert "Traceback" not in stderr
    assert "interrupted; ECR holds 10.0 MiB of 20.0 MiB" in stderr
    saved = tmp_path / "layer.bin.ecrstream-checkpoint.json"
    checkpoint = json.loads(saved.read_text())
    assert checkpoint["bytes_committed"] == 10 * MIB
    assert checkpoint["repository_name"] == repository
    upload_id = checkpoint["upload_id"]
    command = resume_command(stderr)
    assert command[-2:] == ["--resume", str(saved)]
    if signum != signal.SIGINT:
        return  # the same from here on

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["digest"] == digest
    assert report["upload_id"] == upload_id
    assert report["resumed_from"] == 10 * MIB
    assert report["part_count"] == 2
    # Each byte went into the upload once: the resumed run sent no committed byte again.
    parts = [(r.part_first_byte, r.blob_length) for r in ecr.accepted_parts(upload_id)]
    assert parts == [(0, 5 * MIB), (5 * MIB, 5 * MIB), (10 * MIB, 5 * MIB), (15 * MIB, 5 * MIB)]
    assert not saved.exists()  # a completed upload's checkpoint is of no more use


def test_timeout_writes_checkpoint_and_exits_1(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 6 * MIB)
    ecr.faults.add(Operation.UPLOAD_LAYER_PART, FaultKind.DELAY, call=1, delay_seconds=60)
    saved = tmp_path / "elsewhere" / "upload.json"
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr)]

    result = cli(*args, "--timeout", "4", "--checkpoint-file", str(saved), "--json", env=env)

    assert result.returncode == 1, result.stderr
    assert_clean(result)
    assert "timed out after 4 s (--timeout); ECR holds 0 B of 6.0 MiB" in result.stderr
    assert json.loads(saved.read_text())["bytes_committed"] == 0
    command = resume_command(result.stderr)
    assert command[command.index("--timeout") + 1] == "4.0"
    assert command[-2:] == ["--resume", str(saved)]
    # --json: one object on stdout for a script, saying the same as the lines on stderr
    report = json.loads(result.stdout)
    assert report == {
        "stopped": True,
        "reason": "timed out after 4 s (--timeout)",
        "exit_code": 1,
        "checkpoint": str(saved),
        "bytes_committed": 0,
        "upload_id": report["upload_id"],
        "resume_command": result.stderr.splitlines()[-1].strip(),
    }
    assert shlex.split(report["resume_command"]) == command
    ecr.wait_idle()  # the held part is recorded once the proxy sees the client gone
    assert len(ecr.requests(Operation.UPLOAD_LAYER_PART)) == 1


# The upload below ignores its token, so only the second signal can end the command.
STUCK_UPLOAD = """
import sys, anyio, ecrstream.cli as cli
from ecrstream import LayerUploader

async def upload_file(self, *args, **kwargs):
    print("uploading", flush=True)
    with anyio.CancelScope(shield=True):
        await anyio.sleep(60)

LayerUploader.upload_file = upload_file
sys.exit(cli.main(sys.argv[1:]))
"""


def test_second_ctrl_c_quits_at_once(ecr: LocalEcr, env: dict[str, str], tmp_path: Path) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    args = ["upload-layer", str(layer), "--repository", "repo", *on(ecr)]
    with subprocess.Popen(
        [sys.executable, "-c", STUCK_UPLOAD, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        assert child.stdout.readline() == "uploading\n"
        child.send_signal(signal.SIGINT)
        assert "stopping (press Ctrl-C again to quit at once)" in child.stderr.readline()
        first = time.monotonic()
        # A signal within REPEAT_WINDOW of the first is the same request (GNU timeout sends
        # two): press again until one lands after it, as a person would.
        while True:
            child.send_signal(signal.SIGINT)
            signaled = time.monotonic()
            try:
                child.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                assert signaled - first < 30
        _, stderr = child.communicate(timeout=30)

    assert child.returncode == 130
    assert time.monotonic() - signaled < 2.0
    assert stderr == "ecrstream: quit at once\n"
    assert not (tmp_path / "layer.bin.ecrstream-checkpoint.json").exists()
