"""Run a command with its stdout on a pseudo-terminal, as a person at a terminal would see it."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import threading
from dataclasses import dataclass

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class TerminalRun:
    """Exit code, what the terminal showed (escape sequences removed), and stderr."""

    returncode: int
    screen: str
    stderr: bytes


def run_on_terminal(command: list[str], env: dict[str, str], timeout: float = 60) -> TerminalRun:
    """Run ``command`` with stdout on a pty (120 columns) and stderr piped; wait for it."""
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []

    def read_terminal() -> None:
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(controller, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        with subprocess.Popen(
            command,
            env={**env, "COLUMNS": "120", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
        ) as child:
            os.close(terminal)
            _, stderr = child.communicate(timeout=timeout)
        reader.join(timeout=30)
    finally:
        os.close(controller)
    screen = _ESCAPES.sub(b"", b"".join(chunks)).decode()
    return TerminalRun(child.returncode, screen, stderr)
