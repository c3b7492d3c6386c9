#!/usr/bin/env python3
"""The project's two set-up commands, for a fresh machine that has only python3.

    python3 run.py demo [ARGS...]   # everything on an embedded local ECR endpoint
    python3 run.py test [PYTEST ARGS...]  # ruff, ruff format, mypy --strict, pytest
                                          # (installs the Debian package skopeo if missing)

Each creates (or reuses) the virtual environment ``.venv`` in the checkout and installs
what it needs into it; it reinstalls only when pyproject.toml changes. Needs Python 3.11 or
newer. Afterwards the command is ``.venv/bin/ecrstream`` (or activate the venv:
``. .venv/bin/activate``, then ``ecrstream --help``).
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


# What each extra brings along (pyproject.toml): an install of one covers the ones after it.
_INCLUDES = {"test": ("test", "local", "cli"), "local": ("local", "cli"), "cli": ("cli",)}


def _stamp(extra: str, digest: str) -> Path:
    return VENV / f".installed-{extra}-{digest}"


def _install_steps(extra: str) -> list[tuple[str, list[str]]]:
    """What a first run does, step by step: (what to say, the command), pip's output shown."""
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check"]
    return [
        ("upgrading pip in .venv", [*pip, "install", "--upgrade", "pip"]),
        (
            f"installing ecrstream[{extra}] and its dependencies into .venv (a few minutes)",
            [*pip, "install", "-e", f"{ROOT}[{extra}]"],
        ),
    ]


def _ensure_venv(extra: str) -> None:
    """Create .venv if needed and install the project with ``extra`` when it changed."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    covering = [name for name, covers in _INCLUDES.items() if extra in covers]
    if PYTHON.exists() and any(_stamp(name, digest).exists() for name in covering):
        return
    print(
        "run.py: setting up .venv; this happens once, and again only when pyproject.toml changes",
        flush=True,
    )
    if not PYTHON.exists():
        print(f"run.py: creating the virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    for what, command in _install_steps(extra):
        print(f"run.py: {what}", flush=True)
        subprocess.run(command, check=True)
    _stamp(extra, digest).touch()


def how_to_run() -> str:
    """The last words of run.py: where the ecrstream command is."""

    def shown(path: Path) -> Path:
        try:
            return path.relative_to(Path.cwd())
        except ValueError:
            return path

    where = shown(BIN / "ecrstream")
    activate = shown(BIN / "activate")
    return (
        f"run.py: the ecrstream command is {where} (or activate the venv: . {activate}, then"
        " ecrstream --help); it is not on your PATH otherwise"
    )


def _run(*args: str) -> int:
    print("+", " ".join(args), flush=True)
    return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode


def demo(argv: list[str]) -> int:
    _ensure_venv("local")
    code = _run("-m", "ecrstream", "demo", *argv)
    print(how_to_run(), flush=True)
    return code


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
        print(how_to_run(), flush=True)
        return 1
    print("run.py: all checks passed", flush=True)
    print(how_to_run(), flush=True)
    return 0


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py runs on whatever python3 there is
        version = ".".join(map(str, sys.version_info[:3]))
        print(f"run.py: ecrstream needs Python 3.11 or newer; this is Python {version}")
        return 1
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
