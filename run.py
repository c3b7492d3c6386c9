#!/usr/bin/env python3
"""The project's two set-up commands, for a fresh machine that has only python3.

    python3 run.py demo [ARGS...]   # everything on an embedded local ECR endpoint
    python3 run.py test [PYTEST ARGS...]  # ruff, ruff format, mypy --strict, pytest
                                          # (installs the Debian package skopeo if missing)

Each creates (or reuses) the virtual environment ``.venv`` in the checkout and installs
what it needs into it; it reinstalls only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _ensure_venv(extra: str) -> None:
    """Create .venv if needed and install the project with ``extra`` when it changed."""
    if not PYTHON.exists():
        print(f"run.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extra}-{digest}"
    if stamp.exists():
        return
    print(f"run.py: installing ecrstream[{extra}] into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.touch()


def _run(*args: str) -> int:
    print("+", " ".join(args), flush=True)
    return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode


def demo(argv: list[str]) -> int:
    _ensure_venv("local")
    return _run("-m", "ecrstream", "demo", *argv)


# Real third-party programs the tests run: the command each needs, and its Debian package.
TOOLS = {
    "docker-registry": "docker-registry",  # the CNCF distribution registry (copy sources)
    "skopeo": "skopeo",  # a pull client nobody here wrote (reads back what was pushed)
}


def _ensure_tools() -> bool:
    """Install the Debian packages of missing tools (as root), or say which are missing."""
    missing = [package for command, package in TOOLS.items() if not shutil.which(command)]
    if not missing:
        return True
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root and shutil.which("apt-get") and Path("/etc/debian_version").exists():
        names = " ".join(missing)
        print(f"run.py: installing {names} (once): apt-get update; apt-get install {names}")
        sys.stdout.flush()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, check=False)
        missing = [package for command, package in TOOLS.items() if not shutil.which(command)]
        if not missing:
            return True
    print(
        f"run.py: the tests need the Debian package(s) {', '.join(missing)}: "
        f"apt-get install {' '.join(missing)}, then run again",
        flush=True,
    )
    return False


def test(argv: list[str]) -> int:
    _ensure_venv("test")
    if not _ensure_tools():
        return 1
    failed = []
    for name, cmd in (
        ("ruff check", ["-m", "ruff", "check", "."]),
        ("ruff format", ["-m", "ruff", "format", "--check", "."]),
        ("mypy", ["-m", "mypy", "--strict", "src", "tests"]),
    ):
        if _run(*cmd) != 0:
            failed.append(name)
    # Long runs (fault-matrix long mode, big benchmarks) are opt-in: run.py test -m long
    marker = [] if any(a == "-m" or a.startswith("-m") for a in argv) else ["-m", "not long"]
    if _run("-m", "pytest", *marker, *argv) != 0:
        failed.append("pytest")
    if failed:
        print(f"run.py: FAILED: {', '.join(failed)}", flush=True)
        return 1
    print("run.py: all checks passed", flush=True)
    return 0


def main() -> int:
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
