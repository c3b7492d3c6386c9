"""The local ECR endpoint in a child process, for the length of an ``async with`` block.

``spawn()`` starts ``python -m ecrstream.local`` (``serve.py``, what ``ecrstream local-ecr``
runs), waits until it serves and stops it at the end of the block, however the block ends.
The demo runs its endpoint this way, so that moto's memory and CPU are not the demo's, and so
do the tests that need the endpoint in a process of its own. Importing this module loads
neither moto nor aiohttp: the child does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final

import anyio

from ecrstream.cancellation import CancellationToken, OperationCanceledError
from ecrstream.errors import EcrStreamError, InvalidArgumentError
from ecrstream.local.serve import LAST_LINE
from ecrstream.models import validate_repository_name

if TYPE_CHECKING:
    from ecrstream.local.endpoint import ClientKwargs

__all__ = ["LocalEcrProcess", "LocalEcrStartError", "spawn"]

# The same dummy keys as LocalEcr.client_kwargs (moto takes any); repeated here so that the
# parent of a spawned endpoint need not import the endpoint (moto, aiohttp) to get them.
_DUMMY_ACCESS_KEY_ID: Final = "testing"
_DUMMY_SECRET_ACCESS_KEY: Final = "testing"


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
    InvalidArgumentError for a port outside [0, 65535], a timeout that is not a positive
    finite number or a repository name ECR refuses (before anything starts),
    LocalEcrStartError if the child exits or prints no URL within ``start_timeout`` seconds
    (a repository it cannot create, a taken port: its reason), and OperationCanceledError if
    ``cancellation_token`` is canceled while it starts.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError("port", f"must be a whole number in [0, 65535], got {port!r}")
    for name, value in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
        # Finite: an endless stop wait would let the child outlive the block after all.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < float("inf")
        ):
            raise InvalidArgumentError(
                name, f"must be a positive, finite number of seconds, got {value!r}"
            )
    if isinstance(repositories, str | bytes):
        # Iterated, one str would create a repository per character.
        raise InvalidArgumentError(
            "repositories", f"must be an iterable of names, not one name ({repositories!r})"
        )
    names = list(dict.fromkeys(repositories))
    for repository in names:
        validate_repository_name(repository, "repositories")
    # NAME=VALUE: a value starting with "-" stays a value, not an option.
    command = [sys.executable, "-m", "ecrstream.local", "--stop-at-stdin-eof"]
    command += [f"--port={port}", f"--region={region_name}"]
    command += [f"--repository={name}" for name in names]
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
