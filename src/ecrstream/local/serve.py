"""The endpoint as a server of its own: ``ecrstream local-ecr`` / ``python -m ecrstream.local``.

``serve()`` runs it on 127.0.0.1 until SIGINT or SIGTERM (or a ``stop`` event). Its first
line of standard output is the endpoint URL and nothing else, for scripts; then come the
lines that point the AWS CLI, boto3 and ecrstream at it and say how to pull from it. No
password is printed: ``aws ecr get-login-password`` gets one, as from ECR.

``ecrstream.local.child.spawn()`` runs it in a child process for as long as an ``async with``
block lasts. This module stays cheap to import: the ``ecrstream`` parser loads it each run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from ecrstream.local.endpoint import LocalEcr

__all__ = ["LAST_LINE", "add_arguments", "build_parser", "main", "run", "serve"]

_EXAMPLE_REPOSITORY = "demo"
#: The last line ``serve`` prints: once it is out, the endpoint serves and prints no more.
LAST_LINE: Final = "Ctrl-C or SIGTERM stops it."


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
