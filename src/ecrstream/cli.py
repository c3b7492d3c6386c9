"""The ``ecrstream`` command: upload-layer, push and demo.

Streams: results go to stdout (a line per part when stdout is not a terminal, then a summary
line, or one JSON object with ``--json``); errors, warnings and the resume instructions go to
stderr. On a terminal the progress is a rich live bar (plain lines if rich is missing).

Cancellation: the first Ctrl-C or SIGTERM cancels the command's token (the upload stops at
once, the request in flight is aborted), the checkpoint is written and the command that
resumes is printed; a second one exits at once. ``--timeout`` is a ``cancel_after`` on the
same token.

Error messages are one line on stderr, naming what failed and what to do; a traceback only
with ``--debug``. Credentials are never printed: anything shown passes through ``_redact``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO
from urllib.parse import urlsplit

from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenSource,
    OperationCanceledError,
)
from ecrstream.client import EcrClient
from ecrstream.errors import (
    AuthenticationError,
    CredentialsError,
    DigestMismatchError,
    EcrConnectionError,
    EcrServiceError,
    EcrStreamError,
    ImageSourceError,
    RepositoryNotFoundError,
    ServerError,
    SourceChangedError,
    ThrottlingError,
)
from ecrstream.models import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    LayerUploadResult,
    UploadCheckpoint,
    UploadProgress,
    validate_digest,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.uploader import LayerUploader

if TYPE_CHECKING:
    from ecrstream.image import PushProgress

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main", "parse_size"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EXIT_CODES = """\
exit codes:
  0    success
  1    failure: ECR refused or failed, no answer from the endpoint, no or bad
       credentials, digest mismatch, --timeout expired (checkpoint written)
  2    usage error: bad arguments, missing, unreadable or empty file, a
       directory, bad repository name, bad --part-size, bad checkpoint file,
       unknown profile, no region
  130  interrupted by Ctrl-C or SIGTERM (checkpoint written, resume command printed)
"""

_MIB = 1024 * 1024
_DEFAULT_PART_SIZE = 10 * _MIB
_CHECKPOINT_SUFFIX = ".ecrstream-checkpoint.json"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)

logger = logging.getLogger("ecrstream")


# -- errors and messages -------------------------------------------------------------------


class UsageError(ValueError):
    """A bad argument, found by the command itself: exit code 2."""


class Failure(Exception):
    """A failure the command explains itself: exit code 1 (or ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _redact(text: str) -> str:
    """Hide credentials: the values of the AWS key variables, and anything like a key id."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _KEY_ID_RE.sub("***", text)


def _one_line(text: str) -> str:
    return " ".join(_redact(text).split())


def _leaf(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap what their tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


_FIELD_OPTIONS = (
    ("repository_name:", "--repository:"),
    ("registry_id:", "--registry-id:"),
    ("expected_digest:", "--expected-digest:"),
    ("part_size:", "--part-size:"),
    ("path:", "FILE:"),
    ("resume:", "--resume:"),
    ("region_name:", "--region:"),
)


def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """One line saying what failed and what to do, and the exit code."""
    exc = _leaf(exc)
    repository = getattr(args, "repository", None)
    where = getattr(args, "endpoint_url", None) or (
        f"ECR in {args.region}" if getattr(args, "region", None) else "ECR"
    )
    if isinstance(exc, UsageError):
        return f"{exc} (see 'ecrstream {args.command} --help')", EXIT_USAGE
    if isinstance(exc, Failure):
        return str(exc), exc.exit_code
    if isinstance(exc, ValueError):
        text = str(exc)
        for field_name, option in _FIELD_OPTIONS:
            if text.startswith(field_name):
                text = option + text[len(field_name) :]
                break
        if text.startswith("--resume:"):
            text += "; run the command without --resume to start over"
        return f"{text} (see 'ecrstream {args.command} --help')", EXIT_USAGE
    if isinstance(exc, RepositoryNotFoundError):
        registry = getattr(args, "registry_id", None)
        in_registry = f"registry {registry}" if registry else "the default registry"
        return (
            f"repository {repository!r} not found in {in_registry} at {where}: create it"
            f" (aws ecr create-repository --repository-name {repository}) or check"
            " --repository, --region and --registry-id",
            EXIT_FAILURE,
        )
    if isinstance(exc, AuthenticationError):
        # The service's message is not shown: some echo the access key id.
        if exc.code == "AccessDeniedException":
            return (
                f"AWS denied {exc.operation} on repository {repository!r} (AccessDeniedException):"
                " these credentials lack the ECR permission; use a role or profile that has it",
                EXIT_FAILURE,
            )
        return (
            f"AWS refused the credentials ({exc.code}): check AWS_PROFILE/--profile or"
            " AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, and that they"
            " have not expired (aws sts get-caller-identity tests them)",
            EXIT_FAILURE,
        )
    if isinstance(exc, CredentialsError):
        return (
            "no AWS credentials found: set AWS_PROFILE (or pass --profile), or"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role is available",
            EXIT_FAILURE,
        )
    if isinstance(exc, EcrConnectionError):
        return (
            f"cannot reach {where}: {exc}; check --endpoint-url, --region and the network,"
            " then run the command again",
            EXIT_FAILURE,
        )
    if isinstance(exc, DigestMismatchError):
        return f"{exc}: check --expected-digest and the file", EXIT_FAILURE
    if isinstance(exc, SourceChangedError):
        return f"{exc}: run the command again once the file no longer changes", EXIT_FAILURE
    if isinstance(exc, ImageSourceError):
        return (
            f"{exc}: check SOURCE (an OCI layout folder or tar, or a docker save archive)",
            EXIT_FAILURE,
        )
    if isinstance(exc, ServerError | ThrottlingError):
        return (
            f"ECR kept failing after retries ({exc.code}: {exc.message}): try again later",
            EXIT_FAILURE,
        )
    if isinstance(exc, EcrServiceError):
        return f"ECR refused {exc.operation} ({exc.code}: {exc.message})", EXIT_FAILURE
    if isinstance(exc, EcrStreamError):
        return str(exc), EXIT_FAILURE
    if isinstance(exc, OSError):
        target = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{target}", EXIT_FAILURE
    return (
        f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback,"
        " and please report it)",
        EXIT_FAILURE,
    )


# -- sizes -----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A byte count: ``5242880``, ``10MiB``, ``10MB``, ``5M``, ``1.5GiB``.

    Units are binary (K = 1024), as in the AWS CLI's ``multipart_chunksize``: ECR's limits
    are in MiB, so ``5MB`` means the 5 MiB minimum. Raises ValueError.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 10MiB, 5M, 5242880)")
    number, unit = match.groups()
    try:
        value = Decimal(number) * _UNITS[(unit or "").lower()]
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
        raise ValueError(f"{text!r} is not a size") from None
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def _part_size_argument(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text} is {value} bytes; ECR parts must be 5MiB to 20MiB"
            f" ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)"
        )
    return value


def _demo_size_argument(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 1 <= value <= 16 * 1024**3:
        raise argparse.ArgumentTypeError(f"{text}: the demo takes 1 byte to 16GiB")
    return value


def _timeout_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds")
    return value


def _positive_int_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _mb_per_s(count: int, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second, as network rates are quoted)."""
    return round(count / seconds / 1e6, 2) if seconds > 0 else 0.0


# -- progress display ------------------------------------------------------------------------


class _PartCounter:
    """'part n/m' from byte counts; the part size is learned from the first part if unknown."""

    def __init__(self, total: int, already: int, part_size: int | None) -> None:
        self.total = total
        self.already = already
        self.part_size = part_size

    def text(self, bytes_sent: int, parts_sent: int) -> str:
        if self.part_size is None and parts_sent >= 1:
            self.part_size = max(1, (bytes_sent - self.already) // parts_sent)
        if self.part_size is None:
            # Until the first part lands: ECR's usual partSize
            size = _DEFAULT_PART_SIZE
            return f"{math.ceil(bytes_sent / size)}/~{max(1, math.ceil(self.total / size))}"
        count = max(1, math.ceil(self.total / self.part_size))
        return f"{min(count, math.ceil(bytes_sent / self.part_size))}/{count}"


class _RichBar:
    """A rich live bar: bytes, MB/s, ETA, and a detail column (part n/m, layers n/m)."""

    def __init__(self, stream: TextIO, label: str, total: int, completed: int, detail: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = Console(file=stream)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self._console,
        )
        self._task = self._progress.add_task(label, total=total, completed=completed, detail=detail)
        self._items: dict[str, Any] = {}
        self._progress.start()

    def show(self, completed: int, total: int, detail: str) -> None:
        self._progress.update(self._task, completed=completed, total=total, detail=detail)

    def show_item(self, key: str, label: str, completed: int, total: int, done: bool) -> None:
        """One more bar under the main one (a layer in flight); removed when ``done``."""
        task = self._items.get(key)
        if task is None:
            if done:
                return
            task = self._progress.add_task(label, total=total, completed=completed, detail="")
            self._items[key] = task
        self._progress.update(task, completed=completed, total=total)
        if done:
            self._progress.remove_task(task)
            del self._items[key]

    def close(self) -> None:
        self._progress.stop()

    def restore_terminal(self) -> None:
        self._console.show_cursor(True)


def _rich_available() -> bool:
    try:
        importlib.import_module("rich.progress")
    except ImportError:
        return False
    return True


class _Display:
    """Where progress goes: a rich bar on a terminal, plain lines to a pipe, or nowhere.

    Nowhere with --quiet; with --json, stdout carries only the JSON object, so the bar may go
    to stderr if that is a terminal, and there are no plain lines.
    """

    def __init__(
        self, args: argparse.Namespace, label: str, total: int, completed: int, detail: str
    ) -> None:
        self._bar: _RichBar | None = None
        self._lines: TextIO | None = None
        if args.quiet:
            return
        stream = sys.stderr if args.json else sys.stdout
        if stream.isatty() and _rich_available():
            self._bar = _RichBar(stream, label, total, completed, detail)
        elif not args.json:
            self._lines = sys.stdout

    def show(self, completed: int, total: int, detail: str, line: Callable[[], str]) -> None:
        if self._bar is not None:
            self._bar.show(completed, total, detail)
        elif self._lines is not None:
            print(line(), file=self._lines, flush=True)

    def show_item(self, key: str, label: str, completed: int, total: int, done: bool) -> None:
        """A bar of its own for one item in flight (terminal only)."""
        if self._bar is not None:
            self._bar.show_item(key, label, completed, total, done)

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def restore_terminal(self) -> None:
        if self._bar is not None:
            self._bar.restore_terminal()


class _LayerProgress:
    """on_progress for one layer upload: the bar, or a line per committed part."""

    def __init__(
        self,
        args: argparse.Namespace,
        label: str,
        total: int,
        already: int = 0,
        part_size: int | None = None,
    ) -> None:
        self._total = total
        self._already = already
        self._parts = _PartCounter(total, already, part_size)
        self._started = time.monotonic()
        self.display = _Display(args, label, total, already, "part " + self._parts.text(already, 0))

    def __call__(self, progress: UploadProgress) -> None:
        parts = self._parts.text(progress.bytes_sent, progress.parts_sent)

        def line() -> str:
            total = self._total
            elapsed = time.monotonic() - self._started
            rate = (progress.bytes_sent - self._already) / elapsed if elapsed > 0 else 0.0
            eta = _format_duration((total - progress.bytes_sent) / rate) if rate > 0 else "?"
            percent = 100 * progress.bytes_sent / total if total else 100.0
            return (
                f"part {parts}: {_format_bytes(progress.bytes_sent)} of {_format_bytes(total)}"
                f" ({percent:.1f}%), {rate / 1e6:.1f} MB/s, ETA {eta}"
            )

        self.display.show(progress.bytes_sent, self._total, f"part {parts}", line)


# -- signals ---------------------------------------------------------------------------------


class _Interrupts:
    """Ctrl-C and SIGTERM: the first cancels ``source``, a second exits at once (130)."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, source: CancellationTokenSource) -> None:
        self.source = source
        self.received: str | None = None
        self.displays: list[_Display] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are only delivered to the main thread
        self._loop = asyncio.get_running_loop()
        for signum in self._SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            try:
                self._loop.add_signal_handler(signum, self._first, signum)
            except NotImplementedError:  # pragma: no cover - Windows: no loop signal handlers
                signal.signal(signum, self._from_plain_handler)
            self._installed.append(signum)

    def _from_plain_handler(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._first, signal.Signals(signum))

    def uninstall(self) -> None:
        if self.received is not None:
            return  # the command is stopping: a second signal must still quit at once
        for signum in self._installed:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    self._loop.remove_signal_handler(signum)
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, self._previous[signum])
        self._installed.clear()

    def _first(self, signum: signal.Signals) -> None:
        self.received = "Ctrl-C" if signum == signal.SIGINT else signum.name
        # The second signal must work even if the loop is busy: a plain handler on the main
        # thread, not the loop's.
        for other in self._installed:
            if self._loop is not None:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    self._loop.remove_signal_handler(other)
            signal.signal(other, self._second)
        # On a terminal, start a fresh line after the echoed ^C
        fresh_line = "\n" if sys.stderr.isatty() else ""
        print(
            f"{fresh_line}ecrstream: {self.received}: stopping"
            " (press Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        self.source.cancel()

    def _second(self, signum: int, frame: FrameType | None) -> None:
        for display in self.displays:
            with contextlib.suppress(Exception):
                display.restore_terminal()
        with contextlib.suppress(Exception):
            fresh_line = "\n" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{fresh_line}ecrstream: quit at once\n")
            sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


@contextlib.asynccontextmanager
async def _interrupts(source: CancellationTokenSource) -> AsyncIterator[_Interrupts]:
    interrupts = _Interrupts(source)
    interrupts.install()
    try:
        yield interrupts
    finally:
        interrupts.uninstall()


# -- AWS session and client ------------------------------------------------------------------


def _session(args: argparse.Namespace) -> Any:
    """An AioSession for --profile; checks the profile and the region before any request."""
    from aiobotocore.session import AioSession
    from botocore.exceptions import ProfileNotFound

    profile = args.profile
    try:
        session = AioSession(profile=profile)
        if profile is not None and profile not in session.available_profiles:
            raise UsageError(
                f"--profile: no profile named {profile!r} in the AWS config files"
                " (~/.aws/config, ~/.aws/credentials); 'aws configure list-profiles' lists them"
            )
        # Also where a bad AWS_PROFILE shows up, before any request
        configured_region = session.get_config_variable("region")
    except ProfileNotFound as exc:
        raise UsageError(
            f"the AWS profile {exc.kwargs.get('profile')!r} (from AWS_PROFILE) does not exist:"
            " pass --profile NAME or unset AWS_PROFILE"
        ) from None
    region = args.region or configured_region
    if not region:
        raise UsageError(
            "no AWS region: pass --region (for example --region us-east-1)"
            " or set AWS_REGION or AWS_DEFAULT_REGION"
        )
    args.region = region
    return session


def _check_endpoint(url: str | None) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--endpoint-url: {url!r} is not an http:// or https:// URL")


def _client(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[EcrClient]:
    from aiobotocore.config import AioConfig

    session = _session(args)
    return EcrClient.create(
        region_name=args.region,
        endpoint_url=args.endpoint_url,
        session=session,
        # A black-holed endpoint fails in seconds rather than botocore's default minute.
        config=AioConfig(connect_timeout=10),
    )


# -- upload-layer ----------------------------------------------------------------------------


def _check_file(path_text: str) -> Path:
    path = Path(path_text)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"FILE: no such file: {path_text}") from None
    except OSError as exc:
        raise UsageError(f"FILE: cannot read {path_text}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise UsageError(
            f"FILE: {path_text} is a directory; give a layer file (a tar or tar.gz blob);"
            " for a whole image use 'ecrstream push'"
        )
    if not path.is_file():
        raise UsageError(f"FILE: {path_text} is not a regular file (pipes cannot be re-read)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"FILE: permission denied: {path_text}")
    if info.st_size == 0:
        raise UsageError(f"FILE: {path_text} is empty; ECR does not take empty layers")
    return path


_MAX_CHECKPOINT_BYTES = 64 * 1024


def _load_checkpoint(path_text: str) -> UploadCheckpoint:
    path = Path(path_text)
    with contextlib.suppress(OSError):  # a missing file is reported by the read below
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            # A FIFO or device would block the read (or never end): refuse it up front
            raise UsageError(f"--resume: {path_text} is not a regular file (a checkpoint is)")
        if info.st_size > _MAX_CHECKPOINT_BYTES:
            raise UsageError(
                f"--resume: {path_text} is {info.st_size} bytes; an ecrstream checkpoint is a"
                " small JSON file"
            )
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--resume: no such checkpoint file: {path_text}") from None
    except IsADirectoryError:
        raise UsageError(f"--resume: {path_text} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {path_text}: {exc.strerror or exc}") from None
    try:
        return UploadCheckpoint.from_json(text)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"--resume: {path_text} is not a usable ecrstream checkpoint ({exc}); run the upload"
            " without --resume to start over"
        ) from None


def _checkpoint_path(args: argparse.Namespace, file: Path) -> Path:
    """Where an interrupted upload writes its checkpoint (see --checkpoint-file's help)."""
    if args.checkpoint_file is not None:
        return Path(args.checkpoint_file)
    if args.resume is not None:
        return Path(args.resume)
    return file.with_name(file.name + _CHECKPOINT_SUFFIX)


def _write_checkpoint(checkpoint: UploadCheckpoint, preferred: Path, explicit: bool) -> Path:
    """Write atomically; next to the file, else (read-only folder) in the current folder."""
    candidates = [preferred]
    if not explicit:
        candidates.append(Path.cwd() / preferred.name)
    error: OSError | None = None
    for path in candidates:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(checkpoint.to_json() + "\n")
            os.replace(temporary, path)
            return path.resolve()
        except OSError as exc:
            error = exc
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
    assert error is not None
    raise error


def _program() -> list[str]:
    """How this command was started, to print a command that runs it again."""
    argv0 = sys.argv[0] if sys.argv else ""
    name = Path(argv0).name
    if name.startswith("ecrstream") and not name.endswith(".py"):
        found = shutil.which(name)
        if found and Path(found).resolve() == Path(argv0).resolve():
            return [name]
        return [str(Path(argv0).resolve())]
    return [sys.executable, "-m", "ecrstream"]


def _resume_command(args: argparse.Namespace, file: Path, checkpoint: Path) -> str:
    words = [*_program(), "upload-layer", str(file.resolve()), "--repository", args.repository]
    for option, value in (
        ("--region", args.region_given),
        ("--profile", args.profile),
        ("--endpoint-url", args.endpoint_url),
        ("--registry-id", args.registry_id),
        ("--part-size", args.part_size),
        ("--expected-digest", args.expected_digest),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            words += [option, str(value)]
    words += [flag for flag in ("--json", "--quiet", "--debug") if getattr(args, flag[2:])]
    words += ["--resume", str(checkpoint)]
    return shlex.join(words)


@dataclass(slots=True)
class _UploadOutcome:
    result: LayerUploadResult | None = None
    canceled: OperationCanceledError | None = None
    why: str | None = None
    seconds: float = 0.0


async def _run_upload(
    args: argparse.Namespace, file: Path, size: int, resume: UploadCheckpoint | None
) -> _UploadOutcome:
    outcome = _UploadOutcome()
    source = CancellationTokenSource()
    async with _interrupts(source) as interrupts:
        if args.timeout is not None:
            source.cancel_after(args.timeout)
        async with _client(args) as client:
            uploader = LayerUploader(
                client, args.repository, registry_id=args.registry_id, part_size=args.part_size
            )
            already = resume.bytes_committed if resume else 0
            part_size = (resume.part_size if resume else None) or args.part_size
            progress = _LayerProgress(args, file.name, size, already, part_size)
            interrupts.displays.append(progress.display)
            started = time.monotonic()
            try:
                outcome.result = await uploader.upload_file(
                    file,
                    cancellation_token=source.token,
                    on_progress=progress,
                    expected_digest=args.expected_digest,
                    resume=resume,
                )
            except OperationCanceledError as exc:
                if not source.is_cancellation_requested:
                    raise
                outcome.canceled = exc
                outcome.why = interrupts.received
            finally:
                progress.display.close()
                outcome.seconds = time.monotonic() - started
    return outcome


def _stopped(args: argparse.Namespace, file: Path, outcome: _UploadOutcome) -> int:
    """Write the checkpoint of a canceled upload and say how to resume; the exit code."""
    assert outcome.canceled is not None
    timed_out = outcome.why is None
    exit_code = EXIT_FAILURE if timed_out else EXIT_INTERRUPTED
    reason = f"timed out after {args.timeout:g} s (--timeout)" if timed_out else "interrupted"
    checkpoint = outcome.canceled.checkpoint
    if not isinstance(checkpoint, UploadCheckpoint):
        print(
            f"ecrstream upload-layer: {reason} before the upload started; nothing to resume"
            " (run the same command again)",
            file=sys.stderr,
        )
        return exit_code
    size = file.stat().st_size
    print(
        f"ecrstream upload-layer: {reason}; ECR holds {_format_bytes(checkpoint.bytes_committed)}"
        f" of {_format_bytes(size)} (upload {checkpoint.upload_id})",
        file=sys.stderr,
    )
    preferred = _checkpoint_path(args, file)
    try:
        written = _write_checkpoint(checkpoint, preferred, args.checkpoint_file is not None)
    except OSError as exc:
        print(
            f"ecrstream upload-layer: cannot write the checkpoint to {preferred}"
            f" ({exc.strerror or exc}); here it is, save it to a file and pass it to --resume:",
            file=sys.stderr,
        )
        print(checkpoint.to_json(), file=sys.stderr)
        return exit_code
    print(
        f"ecrstream upload-layer: checkpoint written to {written}; to resume, run:",
        file=sys.stderr,
    )
    print(f"  {_redact(_resume_command(args, file, written))}", file=sys.stderr, flush=True)
    return exit_code


def _cmd_upload_layer(args: argparse.Namespace) -> int:
    file = _check_file(args.file)
    validate_repository_name(args.repository)
    validate_registry_id(args.registry_id)
    if args.expected_digest is not None:
        validate_digest(args.expected_digest, "expected_digest")
    _check_endpoint(args.endpoint_url)
    resume = _load_checkpoint(args.resume) if args.resume is not None else None
    args.region_given = args.region
    outcome = asyncio.run(_run_upload(args, file, file.stat().st_size, resume))
    if outcome.canceled is not None:
        return _stopped(args, file, outcome)
    result = outcome.result
    assert result is not None
    if args.resume is not None:
        # The upload is complete: its checkpoint could only fail now (UploadNotFound).
        with contextlib.suppress(OSError):
            Path(args.resume).unlink()
    resumed_from = resume.bytes_committed if resume and not result.restarted else 0
    sent = result.size - resumed_from if result.part_count else 0
    if args.json:
        print(
            json.dumps(
                {
                    "digest": result.digest,
                    "size": result.size,
                    "upload_id": result.upload_id,
                    "part_count": result.part_count,
                    "already_existed": result.already_existed,
                    "restarted": result.restarted,
                    "resumed_from": resumed_from,
                    "seconds": round(outcome.seconds, 3),
                    "mb_per_s": _mb_per_s(sent, outcome.seconds),
                    "repository_name": args.repository,
                    "registry_id": args.registry_id,
                }
            ),
            flush=True,
        )
    elif args.quiet:
        print(result.digest, flush=True)
    elif result.already_existed and not result.part_count:
        print(f"{result.digest} is already in {args.repository}: nothing uploaded", flush=True)
    else:
        resumed = f", resumed at {_format_bytes(resumed_from)}" if resumed_from else ""
        restarted = ", restarted once (ECR lost the upload)" if result.restarted else ""
        existed = " (the repository already had it)" if result.already_existed else ""
        print(
            f"uploaded {result.digest} ({_format_bytes(result.size)}) to {args.repository}"
            f" in {outcome.seconds:.1f} s, {_mb_per_s(sent, outcome.seconds):.1f} MB/s,"
            f" {result.part_count} parts{resumed}{restarted}{existed}",
            flush=True,
        )
    return EXIT_OK


# -- push ------------------------------------------------------------------------------------


class _PushView:
    """on_progress for push_image: one bar over the bytes to upload, or a line per blob done."""

    def __init__(self, args: argparse.Namespace, label: str) -> None:
        self.display = _Display(args, label, 0, 0, "")

    def __call__(self, progress: PushProgress) -> None:
        layers = f"layers {progress.layers_done}/{progress.layers_total}"

        def line() -> str:
            return (
                f"{progress.kind} {progress.digest[:19]} done"
                f" ({_format_bytes(progress.blob_total_bytes)}); {layers},"
                f" {_format_bytes(progress.total_bytes_sent)} of"
                f" {_format_bytes(progress.total_bytes)} sent"
            )

        if progress.event == "done" or self.display.has_bar:
            self.display.show(progress.total_bytes_sent, progress.total_bytes, layers, line)
        self.display.show_item(
            progress.digest,
            f"  {progress.kind} {progress.digest[7:19]}",
            progress.blob_bytes_sent,
            progress.blob_total_bytes,
            progress.event == "done",
        )


def _cmd_push(args: argparse.Namespace) -> int:
    source_path = Path(args.source)
    if not source_path.exists():
        raise UsageError(
            f"SOURCE: no such file or folder: {args.source} (give an OCI image layout folder"
            " or tar, or a 'docker save' archive)"
        )
    validate_repository_name(args.repository)
    validate_registry_id(args.registry_id)
    _check_endpoint(args.endpoint_url)
    # Imported here: only this command needs it
    from ecrstream.image import PushCanceledError, PushImageResult, push_image

    async def run() -> tuple[PushImageResult | None, PushCanceledError | None, str | None, float]:
        source = CancellationTokenSource()
        async with _interrupts(source) as interrupts:
            if args.timeout is not None:
                source.cancel_after(args.timeout)
            async with _client(args) as client:
                view = _PushView(args, source_path.name)
                interrupts.displays.append(view.display)
                started = time.monotonic()
                try:
                    result = await push_image(
                        client,
                        source_path,
                        args.repository,
                        tags=tuple(args.tag),
                        registry_id=args.registry_id,
                        max_concurrent_layers=args.max_concurrent_layers,
                        cancellation_token=source.token,
                        on_progress=view,
                        part_size=args.part_size,
                        image_ref=args.image_ref,
                    )
                except OperationCanceledError as exc:
                    if not source.is_cancellation_requested:
                        raise
                    canceled = exc if isinstance(exc, PushCanceledError) else None
                    return None, canceled, interrupts.received, time.monotonic() - started
                finally:
                    view.display.close()
                return result, None, None, time.monotonic() - started

    result, canceled, signal_name, seconds = asyncio.run(run())
    if result is None:
        timed_out = signal_name is None
        reason = f"timed out after {args.timeout:g} s (--timeout)" if timed_out else "interrupted"
        committed = len(canceled.committed_digests) if canceled else 0
        print(
            f"ecrstream push: {reason}; {committed} blob(s) committed stay in {args.repository}"
            " and are skipped next time; to finish, run the same command again:",
            file=sys.stderr,
        )
        print(f"  {_redact(shlex.join([*_program(), *args.argv]))}", file=sys.stderr, flush=True)
        return EXIT_FAILURE if timed_out else EXIT_INTERRUPTED
    if args.json:
        print(
            json.dumps(
                {
                    "manifest_digest": result.manifest_digest,
                    "media_type": result.media_type,
                    "tags": list(result.tags),
                    "layers_uploaded": result.layers_uploaded,
                    "layers_skipped": result.layers_skipped,
                    "configs_uploaded": result.configs_uploaded,
                    "configs_skipped": result.configs_skipped,
                    "bytes_uploaded": result.bytes_uploaded,
                    "platform_manifest_digests": list(result.platform_manifest_digests),
                    "seconds": round(seconds, 3),
                    "mb_per_s": _mb_per_s(result.bytes_uploaded, seconds),
                    "repository_name": args.repository,
                    "registry_id": args.registry_id,
                }
            ),
            flush=True,
        )
    elif args.quiet:
        print(result.manifest_digest, flush=True)
    else:
        names = ", ".join(f"{args.repository}:{tag}" for tag in result.tags) or args.repository
        rate = (
            f", {_format_bytes(result.bytes_uploaded)} at"
            f" {_mb_per_s(result.bytes_uploaded, seconds):.1f} MB/s"
            if result.bytes_uploaded
            else ""
        )
        print(
            f"pushed {result.manifest_digest} to {names} in {seconds:.1f} s:"
            f" {result.layers_uploaded} layers uploaded, {result.layers_skipped} already"
            f" there{rate}",
            flush=True,
        )
    return EXIT_OK


# -- demo ------------------------------------------------------------------------------------


def _random_file(path: Path, size: int, token: CancellationToken) -> str:
    """Write ``size`` random bytes to ``path``; returns their ``sha256:`` digest."""
    digest = hashlib.sha256()
    chunk = 8 * _MIB
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            token.throw_if_cancellation_requested()
            data = os.urandom(min(chunk, remaining))
            digest.update(data)
            handle.write(data)
            remaining -= len(data)
    return "sha256:" + digest.hexdigest()


@dataclass(slots=True)
class _DemoLine:
    label: str
    digest: str
    size: int
    parts: int
    seconds: float
    sent: int
    notes: list[str] = field(default_factory=list)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    try:
        from ecrstream.local import LocalEcr
    except ImportError:
        raise Failure(
            "demo needs the local ECR endpoint: pip install 'ecrstream[local]'"
            " (or run 'python3 run.py demo' in a checkout)"
        ) from None
    size: int = args.size
    # The second layer only shows cancel and resume: a quarter is enough, but at least two
    # of ECR's 10 MiB parts, so that there is a half way to stop at.
    second_size = max(size // 4, 16 * _MIB)
    repository = "ecrstream-demo"
    interrupt_source = CancellationTokenSource()
    lines: list[_DemoLine] = []
    async with _interrupts(interrupt_source) as interrupts, LocalEcr() as ecr:
        _say(args, f"local ECR endpoint: {ecr.endpoint_url} (moto behind a strict proxy)")
        await asyncio.to_thread(ecr.create_repository, repository)
        _say(args, f"created repository {repository!r}")
        first, second = workdir / "layer-1.bin", workdir / "layer-2.bin"
        token = interrupt_source.token
        first_digest = await asyncio.to_thread(_random_file, first, size, token)
        second_digest = await asyncio.to_thread(_random_file, second, second_size, token)
        _say(
            args,
            f"generated {first.name} ({_format_bytes(size)}) and {second.name}"
            f" ({_format_bytes(second_size)}) of random bytes in {workdir}",
        )
        async with EcrClient.create(**ecr.client_kwargs()) as client:
            uploader = LayerUploader(client, repository)

            # 1. A plain upload, with the progress bar.
            _say(args, f"\n1. upload {first.name}")
            progress = _LayerProgress(args, first.name, size)
            interrupts.displays.append(progress.display)
            started = time.monotonic()
            try:
                result = await uploader.upload_file(
                    first, cancellation_token=token, on_progress=progress
                )
            finally:
                progress.display.close()
            seconds = time.monotonic() - started
            if result.digest != first_digest:
                raise Failure(f"demo: uploaded digest {result.digest} != {first_digest}")
            lines.append(
                _DemoLine("layer 1", result.digest, size, result.part_count, seconds, size)
            )
            _say(args, f"   {result.digest}, {result.part_count} parts")

            # 2. BatchCheckLayerAvailability says the repository has it.
            check = await client.batch_check_layer_availability(
                BatchCheckLayerAvailabilityRequest(repository, (result.digest,)), token
            )
            layer = check.layers[0] if check.layers else None
            if layer is None or not layer.available:
                raise Failure(f"demo: BatchCheckLayerAvailability does not list {result.digest}")
            _say(
                args,
                f"2. BatchCheckLayerAvailability: {layer.layer_availability},"
                f" {layer.layer_size} bytes",
            )
            lines[0].notes.append("confirmed AVAILABLE")

            # 3. A second upload whose token is canceled from on_progress at half way.
            _say(args, f"3. upload {second.name}, canceling its token half way")
            halfway = CancellationTokenSource.create_linked_token_source(token)
            progress = _LayerProgress(args, second.name, second_size)
            interrupts.displays.append(progress.display)

            def cancel_at_half(update: UploadProgress) -> None:
                progress(update)
                if update.bytes_sent * 2 >= second_size:
                    halfway.cancel()

            try:
                await uploader.upload_file(
                    second, cancellation_token=halfway.token, on_progress=cancel_at_half
                )
                raise Failure("demo: the second upload finished before it could be canceled")
            except OperationCanceledError as exc:
                if token.is_cancellation_requested:
                    raise
                checkpoint = exc.checkpoint
            finally:
                progress.display.close()
                halfway.dispose()
            assert isinstance(checkpoint, UploadCheckpoint)
            saved = workdir / (second.name + _CHECKPOINT_SUFFIX)
            saved.write_text(checkpoint.to_json())
            committed = checkpoint.bytes_committed
            _say(
                args,
                f"   canceled with {_format_bytes(committed)} in ECR;"
                f" checkpoint saved to {saved.name}",
            )

            # 4. Resume from the checkpoint file: the committed bytes are not sent again.
            _say(args, "4. resume from the checkpoint")
            resume = UploadCheckpoint.from_json(saved.read_text())
            progress = _LayerProgress(args, second.name, second_size, committed, resume.part_size)
            interrupts.displays.append(progress.display)
            started = time.monotonic()
            try:
                resumed = await uploader.upload_file(
                    second, cancellation_token=token, on_progress=progress, resume=resume
                )
            finally:
                progress.display.close()
            seconds = time.monotonic() - started
            if resumed.digest != second_digest:
                raise Failure(f"demo: resumed digest {resumed.digest} != {second_digest}")
            line = _DemoLine(
                "layer 2",
                resumed.digest,
                second_size,
                resumed.part_count,
                seconds,
                second_size - committed,
            )
            line.notes.append(f"resumed at {_format_bytes(committed)}, not re-sent")
            lines.append(line)
            _say(args, f"   {resumed.digest}, {resumed.part_count} more parts")
    _say(args, "\nsummary (digests match the sha256 of the files):")
    for item in lines:
        _say(
            args,
            f"  {item.label}  {item.digest}  {_format_bytes(item.size)}  {item.parts} parts"
            f"  {_mb_per_s(item.sent, item.seconds):.1f} MB/s  " + "; ".join(item.notes),
        )
    if args.json:
        layers = [
            {
                "layer": item.label,
                "digest": item.digest,
                "size": item.size,
                "part_count": item.parts,
                "mb_per_s": _mb_per_s(item.sent, item.seconds),
                "bytes_sent": item.sent,
            }
            for item in lines
        ]
        print(json.dumps({"repository_name": repository, "layers": layers}), flush=True)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    args.quiet = args.quiet or args.json
    with tempfile.TemporaryDirectory(prefix="ecrstream-demo-") as workdir:
        try:
            return asyncio.run(_demo(args, Path(workdir)))
        except OperationCanceledError:
            print("ecrstream demo: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


# -- arguments -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with one line on stderr for a usage error (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_aws_options(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group("AWS options (as in the AWS CLI)")
    aws.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's)")
    aws.add_argument(
        "--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE or default)"
    )
    aws.add_argument("--endpoint-url", metavar="URL", help="ECR endpoint (e.g. a local one)")
    aws.add_argument(
        "--registry-id", metavar="ACCOUNT", help="registry's 12-digit account id (default: yours)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="print one JSON object at the end (stdout)"
    )
    output.add_argument(
        "--quiet", "-q", action="store_true", help="no progress; print only the digest"
    )
    output.add_argument("--debug", action="store_true", help="tracebacks and debug logging")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ecrstream",
        description="Stream container image layers into Amazon ECR.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    upload = commands.add_parser(
        "upload-layer",
        help="upload one layer file, part by part",
        description=(
            "Upload FILE as one layer blob (InitiateLayerUpload, UploadLayerPart per part,"
            " CompleteLayerUpload with its sha256). Ctrl-C or SIGTERM stops it, writes a"
            " checkpoint and prints the command that resumes it."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    upload.add_argument("file", metavar="FILE", help="the layer file (tar or tar.gz blob)")
    upload.add_argument("--repository", required=True, metavar="NAME", help="ECR repository")
    _add_aws_options(upload)
    layer = upload.add_argument_group("upload")
    layer.add_argument(
        "--part-size",
        type=_part_size_argument,
        metavar="SIZE",
        help="bytes per part, 5MiB to 20MiB: 10MiB, 5M, 5242880 (units are binary, as in the"
        " AWS CLI; default: the partSize ECR returns, 10 MiB)",
    )
    layer.add_argument(
        "--expected-digest",
        metavar="sha256:HEX",
        help="refuse to complete unless the file hashes to this; skip if ECR already has it",
    )
    layer.add_argument(
        "--timeout",
        type=_timeout_argument,
        metavar="SECONDS",
        help="stop after this long (exit 1), writing a checkpoint as for Ctrl-C",
    )
    layer.add_argument(
        "--resume",
        metavar="CHECKPOINT_FILE",
        help="continue the upload a checkpoint file describes (the file is deleted on success)",
    )
    layer.add_argument(
        "--checkpoint-file",
        metavar="PATH",
        help="where to write the checkpoint if stopped (default: the --resume file, else"
        f" FILE{_CHECKPOINT_SUFFIX} next to FILE, or in the current folder if FILE's is"
        " read-only)",
    )
    _add_output_options(upload)
    upload.set_defaults(run=_cmd_upload_layer)

    push = commands.add_parser(
        "push",
        help="push a whole image (OCI layout or docker save archive)",
        description="Push an image: its layers, its config and its manifest, then tag it.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    push.add_argument(
        "source", metavar="SOURCE", help="OCI image layout (folder or tar) or docker save archive"
    )
    push.add_argument("--repository", required=True, metavar="NAME", help="ECR repository")
    push.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="image tag (repeatable)"
    )
    _add_aws_options(push)
    options = push.add_argument_group("push")
    options.add_argument(
        "--max-concurrent-layers",
        type=_positive_int_argument,
        default=4,
        metavar="N",
        help="layers uploaded at once (default 4)",
    )
    options.add_argument(
        "--part-size",
        type=_part_size_argument,
        metavar="SIZE",
        help="bytes per part, 5MiB to 20MiB (default: the partSize ECR returns, 10 MiB)",
    )
    options.add_argument(
        "--image-ref",
        metavar="REF",
        help="which image of a source that holds several (an OCI ref name or a docker tag)",
    )
    options.add_argument(
        "--timeout",
        type=_timeout_argument,
        metavar="SECONDS",
        help="stop after this long (exit 1); blobs already committed are skipped next time",
    )
    _add_output_options(push)
    push.set_defaults(run=_cmd_push)

    demo = commands.add_parser(
        "demo",
        help="everything on an embedded local ECR endpoint (no AWS account, no network)",
        description=(
            "Start a local ECR endpoint (moto behind a strict proxy), upload a random layer,"
            " confirm it with BatchCheckLayerAvailability, cancel a second upload half way"
            " with a token and resume it from its checkpoint."
        ),
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    demo.add_argument(
        "--size",
        type=_demo_size_argument,
        default=256 * _MIB,
        metavar="SIZE",
        help="size of the first layer (default 256MiB); the second, canceled and resumed,"
        " is a quarter of it (at least 16MiB)",
    )
    _add_output_options(demo)
    demo.set_defaults(run=_cmd_demo)
    return parser


# -- entry point -----------------------------------------------------------------------------


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ecrstream: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    # Only ecrstream's own logger: botocore's debug log shows request headers.
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``--help``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging(args.debug)
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        # Before the signal handlers were installed, or after they were removed
        print("\necrstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed by the reader (| head): not an error worth a message
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
        return EXIT_FAILURE
    except Exception as exc:
        message, code = _explain(exc, args)
        if args.debug:
            text = "".join(traceback.format_exception(exc))
            print(_redact(text), file=sys.stderr, end="")
        print(f"ecrstream {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return code
