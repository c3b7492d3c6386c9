"""The endpoint as a server of its own: ``ecrstream local-ecr`` / ``python -m ecrstream.local``.

``serve()`` runs it on 127.0.0.1 until SIGINT or SIGTERM (or a ``stop`` event). Its first
line of standard output is the endpoint URL and nothing else, for scripts; then come the
lines that point the AWS CLI, boto3 and ecrstream at it and say how to pull from it. No
password is printed: ``aws ecr get-login-password`` gets one, as from ECR.

``spawn()`` runs it in a child process (``python -m ecrstream.local``) for as long as an
``async with`` block lasts: the demo does, so that moto's memory is not the demo's, and so do
the tests that need the endpoint in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

import anyio

from ecrstream.cancellation import CancellationToken, OperationCanceledError
from ecrstream.errors import EcrStreamError, InvalidArgumentError

if TYPE_CHECKING:
    from ecrstream.local.endpoint import ClientKwargs, LocalEcr

__all__ = [
    "LAST_LINE",
    "LocalEcrProcess",
    "LocalEcrStartError",
    "add_arguments",
    "build_parser",
    "main",
    "run",
    "serve",
    "spawn",
]

_EXAMPLE_REPOSITORY = "demo"
#: The last line ``serve`` prints: once it is out, the endpoint serves and prints no more.
LAST_LINE: Final = "Ctrl-C or SIGTERM stops it."
# The same dummy keys as LocalEcr.client_kwargs (moto takes any); repeated here so that the
# parent of a spawned endpoint need not import the endpoint (moto, aiohttp) to get them.
_DUMMY_ACCESS_KEY_ID: Final = "testing"
_DUMMY_SECRET_ACCESS_KEY: Final = "testing"


def instructions(ecr: LocalEcr, repositories: Sequence[str]) -> list[str]:
    """The lines printed after the URL: how to use this endpoint from other programs."""
    url, address, region = ecr.endpoint_url, ecr.registry_address, ecr.region_name
    repository = repositories[0] if repositories else _EXAMPLE_REPOSITORY
    lines = [
        f"Local ECR endpoint (moto behind ecrstream's strict proxy), region {region}.",
        f"Layers are kept in {ecr.data_dir}; repositories and images in memory.",
    ]
    if repositories:
        lines.append("Repositories: " + ", ".join(repositories))
    lines += [
        "",
        "Point the AWS CLI, boto3 and ecrstream at it (dummy credentials; botocore reads",
        "AWS_ENDPOINT_URL_ECR):",
        f"  export AWS_ENDPOINT_URL_ECR={url}",
        f"  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION={region}",
        f"  export AWS_DEFAULT_REGION={region}",
    ]
    if not repositories:
        lines.append(f"  aws ecr create-repository --repository-name {repository}")
    lines += [
        f"  ecrstream push ./image --repository {repository} --tag 1.0",
        "  python3 -c 'import boto3; print(boto3.client(\"ecr\").describe_repositories())'",
        "",
        f"Pull from it: registry {address}, user AWS, password from GetAuthorizationToken:",
        "  aws ecr get-login-password | skopeo login --tls-verify=false -u AWS "
        f"--password-stdin {address}",
        f"  skopeo copy --src-tls-verify=false docker://{address}/{repository}:1.0 oci:./pulled",
        "",
        LAST_LINE,
    ]
    return lines


def serve(
    port: int = 0,
    repositories: Iterable[str] = (),
    data_dir: str | os.PathLike[str] | None = None,
    *,
    region_name: str = "us-east-1",
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    stop_at_stdin_eof: bool = False,
) -> None:
    """Serve a local ECR endpoint on 127.0.0.1 until SIGINT/SIGTERM or ``stop`` is set.

    Creates ``repositories`` first, then prints the endpoint URL as the first line of ``out``
    (standard output by default) and the instructions after it. Signals are caught only when
    called from the main thread (elsewhere, set ``stop``). ``stop_at_stdin_eof``: also stop
    when standard input reaches its end (a parent holding the other end of a pipe dies, even
    by SIGKILL, and the endpoint goes with it). Raises OSError if the port is taken,
    botocore's ClientError if a repository cannot be created, ValueError for a bad port;
    nothing is printed then.
    """
    out = out if out is not None else sys.stdout
    stop = stop if stop is not None else threading.Event()
    if stop_at_stdin_eof:
        _stop_at_eof(sys.stdin, stop)
    names = list(dict.fromkeys(repositories))
    previous: dict[signal.Signals, object] = {}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    from ecrstream.local.endpoint import LocalEcr  # moto, aiohttp: only when serving

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        with LocalEcr(region_name=region_name, data_dir=data_dir, port=port) as ecr:
            for name in names:
                ecr.create_repository(name)
            print(ecr.endpoint_url, file=out, flush=True)
            print("\n".join(instructions(ecr, names)), file=out, flush=True)
            # A timed wait: a signal handler runs only between the main thread's bytecodes.
            while not stop.wait(0.5):
                pass
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, handler)  # type: ignore[arg-type]


def _stop_at_eof(stream: TextIO | None, stop: threading.Event) -> None:
    """Set ``stop`` once ``stream`` reaches its end (a daemon thread reads and drops it)."""
    if stream is None:  # no standard input at all (pythonw): it never closes
        return
    # The file descriptor, not the buffered file: a daemon thread blocked in the buffered
    # reader's lock makes the interpreter abort at exit.
    descriptor = stream.fileno()

    def drain() -> None:
        with contextlib.suppress(OSError):
            while os.read(descriptor, 65536):
                pass
        stop.set()

    threading.Thread(target=drain, name="ecrstream-local-stdin", daemon=True).start()


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in [0, 65535] (0: a free port), got {value}")
    return value


DESCRIPTION = (
    "Serve a local ECR endpoint on 127.0.0.1 (moto behind ecrstream's strict proxy) until "
    "Ctrl-C or SIGTERM: the ECR API, GetDownloadUrlForLayer, and the registry's read side "
    "under /v2/ so skopeo, docker or crane can pull what was pushed. The first line of output "
    "is the endpoint URL; the next ones say how to point the AWS CLI, boto3 and ecrstream at "
    "it and how to pull. No AWS account, nothing leaves the machine."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to ``parser`` (e.g. the CLI's ``local-ecr`` subparser)."""
    parser.add_argument(
        "--port", type=_port, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--repository",
        metavar="NAME",
        action="append",
        default=[],
        help="create this repository at start (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep the layers' bytes in DIR, and leave them there at exit (default: a "
        "temporary folder, removed at exit); repositories and images live in memory",
    )
    parser.add_argument(
        "--region", default="us-east-1", help="the region clients sign for (default: us-east-1)"
    )


def build_parser(prog: str = "ecrstream local-ecr") -> argparse.ArgumentParser:
    """The command line of the server, on its own (``python -m ecrstream.local``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    parser.add_argument(
        "--stop-at-stdin-eof",
        action="store_true",
        help="also stop when standard input closes (for a program that starts this one with a"
        " pipe as its input: when that program exits, even killed, this one stops too)",
    )
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve with parsed options; usage errors (port taken, bad folder) go to ``parser``."""
    from botocore.exceptions import ClientError

    if args.data_dir is not None:
        try:
            Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--data-dir {args.data_dir}: cannot use it: {exc.strerror or exc}")
    try:
        serve(
            args.port,
            args.repository,
            args.data_dir,
            region_name=args.region,
            stop_at_stdin_eof=getattr(args, "stop_at_stdin_eof", False),
        )
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        parser.error(f"--repository: cannot create it: {message}")
    except OSError as exc:
        parser.error(f"--port {args.port}: cannot listen on 127.0.0.1: {exc.strerror or exc}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "ecrstream local-ecr") -> int:
    """Run the server from a command line; returns the exit status (0 after a stop signal)."""
    parser = build_parser(prog)
    return run(parser.parse_args(argv), parser)


class LocalEcrStartError(EcrStreamError):
    """A spawned endpoint did not start: it exited, or did not print its URL in time.

    The message ends with the last line of the child's standard error (its own reason).
    """


class LocalEcrProcess:
    """A local ECR endpoint served by a child process, as ``spawn`` yields it.

    ``lines`` are what the child printed, its URL first, up to :data:`LAST_LINE`;
    ``returncode`` is None until the ``spawn`` block has stopped the child (0: it stopped
    cleanly on SIGTERM).
    """

    __slots__ = ("endpoint_url", "lines", "pid", "region_name", "returncode")

    def __init__(self, endpoint_url: str, region_name: str, pid: int, lines: Sequence[str]) -> None:
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.pid = pid
        self.lines = tuple(lines)
        self.returncode: int | None = None

    @property
    def registry_address(self) -> str:
        """``127.0.0.1:PORT``: where registry clients (skopeo, docker) pull from."""
        return self.endpoint_url.removeprefix("http://")

    def client_kwargs(self) -> ClientKwargs:
        """Keyword arguments for ``create_client("ecr", **kwargs)``: dummy keys, never real."""
        return {
            "region_name": self.region_name,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": _DUMMY_ACCESS_KEY_ID,
            "aws_secret_access_key": _DUMMY_SECRET_ACCESS_KEY,
        }

    def __repr__(self) -> str:
        return f"LocalEcrProcess({self.endpoint_url!r}, pid={self.pid})"


@contextlib.asynccontextmanager
async def spawn(
    repositories: Iterable[str] = (),
    *,
    port: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    region_name: str = "us-east-1",
    env: Mapping[str, str] | None = None,
    cancellation_token: CancellationToken = CancellationToken.NONE,
    start_timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[LocalEcrProcess]:
    """Serve a local ECR endpoint from a child process for the length of the block.

    Starts ``python -m ecrstream.local`` (this interpreter; ``env`` or this environment) with
    these repositories created and yields it once it serves. At the end of the block, on an
    error or a cancellation, it sends SIGTERM, waits up to ``stop_timeout`` seconds and kills
    the child if it is still there: the child never outlives the block. The child has its
    own session (a Ctrl-C at the terminal reaches only this process, which stops it) and
    stops by itself if this process dies (its standard input is a pipe from here). Raises
    InvalidArgumentError for a port outside [0, 65535] or a timeout that is not positive
    (before anything starts), LocalEcrStartError if the child exits or prints no URL within
    ``start_timeout`` seconds (a repository it cannot create, a taken port: its reason), and
    OperationCanceledError if ``cancellation_token`` is canceled while it starts.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError("port", f"must be a whole number in [0, 65535], got {port!r}")
    for name, value in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
        if not value > 0:
            raise InvalidArgumentError(name, f"must be a positive number of seconds, got {value}")
    # NAME=VALUE: a value starting with "-" stays a value, not an option.
    command = [sys.executable, "-m", "ecrstream.local", "--stop-at-stdin-eof"]
    command += [f"--port={port}", f"--region={region_name}"]
    command += [f"--repository={name}" for name in dict.fromkeys(repositories)]
    if data_dir is not None:
        command.append(f"--data-dir={os.fspath(data_dir)}")
    # A file, not a pipe: nobody reads the child's stderr while it serves, and a full pipe
    # would stall it. Read back only to explain a failed start.
    with tempfile.TemporaryFile() as stderr_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr_file,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        spawned: LocalEcrProcess | None = None
        try:
            lines = await _started(process, stderr_file, cancellation_token, limit=start_timeout)
            spawned = LocalEcrProcess(lines[0], region_name, process.pid, lines)
            yield spawned
        finally:
            returncode = await _stop(process, limit=stop_timeout)
            if spawned is not None:
                spawned.returncode = returncode


async def _started(
    process: asyncio.subprocess.Process,
    stderr_file: IO[bytes],
    token: CancellationToken,
    *,
    limit: float,
) -> list[str]:
    """The child's lines up to LAST_LINE, or the reason it will not get there."""
    stdout = process.stdout
    assert stdout is not None

    async def read() -> list[str]:
        lines: list[str] = []
        while True:
            raw = await stdout.readline()
            if not raw:
                status = await process.wait()
                raise LocalEcrStartError(
                    f"the local ECR endpoint (python -m ecrstream.local) exited with status"
                    f" {status} before serving{_tail(stderr_file)}"
                )
            lines.append(raw.decode(errors="replace").rstrip("\r\n"))
            if lines[-1] == LAST_LINE:
                return lines

    reading = asyncio.ensure_future(read())
    waits: set[asyncio.Future[Any]] = {reading}
    canceled = asyncio.ensure_future(token.wait()) if token.can_be_canceled else None
    if canceled is not None:
        waits.add(canceled)
    try:
        await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in waits:
            future.cancel()
    if reading.done() and not reading.cancelled():
        return reading.result()  # raises LocalEcrStartError if the child exited
    if token.is_cancellation_requested:
        raise OperationCanceledError(cancellation_token=token)
    raise LocalEcrStartError(
        f"the local ECR endpoint (python -m ecrstream.local) printed no URL within"
        f" {limit:g} s{_tail(stderr_file)}"
    )


def _tail(stderr_file: IO[bytes]) -> str:
    """``: `` and the last line of the child's standard error (the reason), or nothing."""
    stderr_file.seek(0)
    text = stderr_file.read()[-4096:].decode(errors="replace").strip()
    return ": " + text.splitlines()[-1] if text else ""


async def _stop(process: asyncio.subprocess.Process, *, limit: float) -> int:
    """SIGTERM, a bounded wait, then SIGKILL; the child's exit status. Never leaves it running."""
    status: int | None = None
    try:
        # Shielded: an anyio scope canceling the block must not cut the wait short.
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), limit)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            assert process.stdin is not None
            process.stdin.close()
            status = await process.wait()
    except BaseException:
        # Canceled outright (a second task.cancel()): no time to wait, but no survivor either.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        raise
    assert status is not None
    return status
