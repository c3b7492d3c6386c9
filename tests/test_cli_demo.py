"""``ecrstream demo`` and its endpoint process: however the demo ends, the endpoint goes too.

The demo prints its endpoint's URL and process id; the tests hold a pidfd on that process
(Linux), which becomes readable when the process exits, whoever its parent is by then, so the
waits are on the event itself, never on sleeps.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_run import make_env

pytestmark = pytest.mark.timeout(90)

ENDPOINT_LINE = re.compile(
    r"local ECR endpoint: http://127\.0\.0\.1:\d+ \(moto behind a strict proxy, process (\d+)\)"
)


@contextmanager
def demo_with_endpoint(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """A running demo once it printed its endpoint line: the demo, the endpoint's pid, a pidfd.

    The demo's first layer is large enough that it is still generating or uploading when the
    test acts. At the end, neither process is left running, whatever the test did.
    """
    demo = subprocess.Popen(
        [sys.executable, "-m", "ecrstream", "demo", "--size", "256MiB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=make_env(tmp_path),
    )
    assert demo.stdout is not None
    endpoint = -1
    try:
        for line in demo.stdout:  # pytest-timeout bounds a demo that never prints it
            match = ENDPOINT_LINE.fullmatch(line.strip())
            if match is not None:
                break
        else:
            pytest.fail("the demo exited without printing its endpoint line")
        pid = int(match[1])
        endpoint = os.pidfd_open(pid)  # taken while the endpoint runs: it cannot be reused
        yield demo, pid, endpoint
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
        for stream in (demo.stdout, demo.stderr):
            if stream is not None:
                stream.close()
        if endpoint >= 0:
            if not exited(endpoint, 0):
                signal.pidfd_send_signal(endpoint, signal.SIGKILL)  # the test failed: tidy up
            os.close(endpoint)


def exited(pidfd: int, timeout: float) -> bool:
    """Whether the process exits within ``timeout`` seconds (a pidfd is readable once it has)."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


def test_ctrl_c_stops_the_demo_and_its_endpoint_process(tmp_path: Path) -> None:
    with demo_with_endpoint(tmp_path) as (demo, pid, endpoint):
        assert not exited(endpoint, 0)  # the endpoint serves in a process of its own

        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)

        assert demo.returncode == 130, stderr
        assert "ecrstream demo: interrupted" in stderr
        assert exited(endpoint, 0)  # gone before the demo itself exited
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # and reaped by the demo, not left as a zombie


def test_sigterm_stops_the_demo_and_its_endpoint_process(tmp_path: Path) -> None:
    with demo_with_endpoint(tmp_path) as (demo, pid, endpoint):
        demo.send_signal(signal.SIGTERM)
        _, stderr = demo.communicate(timeout=60)

        assert demo.returncode == 130, stderr
        assert exited(endpoint, 0)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_demo_takes_its_endpoint_process_with_it(tmp_path: Path) -> None:
    # SIGKILL leaves the demo no time to stop anything: the endpoint sees its standard input
    # (a pipe from the demo) close, and stops by itself.
    with demo_with_endpoint(tmp_path) as (demo, _, endpoint):
        demo.kill()
        demo.wait(timeout=30)

        assert exited(endpoint, 30)
