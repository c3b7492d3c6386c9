"""run.py, the two set-up commands: what a new user sees from them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_py", ROOT / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_py_demo_ends_by_saying_how_to_run_the_command() -> None:
    """After run.py, ecrstream is in .venv, not on the PATH: run.py says where it is.

    Runs in this checkout, whose .venv the test suite itself runs from (run.py test made it):
    the demo needs nothing more installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run(
        [sys.executable, "run.py", "demo", "--size", "1MiB", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        stdin=subprocess.DEVNULL,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "setting up .venv" not in done.stdout  # run.py test's install covers the demo's
    assert done.stdout.splitlines()[-1] == (
        "run.py: the ecrstream command is .venv/bin/ecrstream (or activate the venv:"
        " . .venv/bin/activate, then ecrstream --help); it is not on your PATH otherwise"
    )


def test_the_first_run_shows_what_it_installs() -> None:
    """pip's own progress is shown (no -q), each step announced: the first run is not silent."""
    run_py = load_run_py()

    steps = run_py._install_steps("test")

    assert [what for what, _ in steps] == [
        "upgrading pip in .venv",
        "installing ecrstream[test] and its dependencies into .venv (a few minutes)",
    ]
    for _, command in steps:
        assert "-q" not in command
        assert "--quiet" not in command
