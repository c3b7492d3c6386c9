"""The one command runner: token, interrupts, timeout, client and displays, for every command.

``run_command(context, body, ...)`` runs ``await body(runner)`` in a fresh event loop with a
cancellation token that Ctrl-C, SIGTERM and ``--timeout`` cancel (see ``signals.py``). The
body asks the runner for what it needs (``runner.token``, ``await runner.client()``,
``runner.display(...)``) and the runner closes all of it. If the token stops the body, the
result is a ``Stopped`` saying why (``on_stopped`` runs first, inside the event loop, where a
quit-at-once cannot cut it short: the place to write a checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenSource,
    OperationCanceledError,
)
from ecrstream.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, Context, UsageError
from ecrstream.cli.options import AwsOptions, OutputOptions
from ecrstream.cli.progress import Display
from ecrstream.cli.signals import Interrupts, interrupts
from ecrstream.client import EcrClient
from ecrstream.models import is_region_name

__all__ = ["Runner", "Stopped", "check_endpoint", "client_arguments", "run_command"]

logger = logging.getLogger("ecrstream.cli")

_T = TypeVar("_T")

# A black-holed endpoint fails in seconds rather than botocore's default minute.
_CONNECT_TIMEOUT = 10
# botocore's own rule for a region name (it refuses others when the client is made)


@dataclass(frozen=True, slots=True)
class Stopped:
    """The token stopped the command: ``error`` is what the library raised."""

    error: OperationCanceledError
    #: "Ctrl-C", "SIGTERM", or None for --timeout
    signal_name: str | None
    timeout: float | None

    @property
    def timed_out(self) -> bool:
        return self.signal_name is None

    @property
    def reason(self) -> str:
        if self.timed_out:
            return f"timed out after {self.timeout:g} s (--timeout)"
        return "interrupted"

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURE if self.timed_out else EXIT_INTERRUPTED


def report_stopped(
    output: OutputOptions, stopped: Stopped, resume: str | None, **fields: object
) -> None:
    """With --json, a stopped command's one JSON object on stdout (the lines on stderr say
    the same to a person): ``"stopped": true``, the ``reason``, the ``exit_code``, the
    command's own ``fields`` and ``resume_command``, the shell line that goes on (None if
    there is nothing to go on from), credentials redacted as on stderr."""
    if not output.json:
        return
    report = {
        "stopped": True,
        "reason": stopped.reason,
        "exit_code": stopped.exit_code,
        **fields,
        "resume_command": resume,
    }
    print(json.dumps(report), flush=True)


def check_endpoint(url: str | None, option: str = "--endpoint-url") -> str | None:
    """``url`` with its host in lowercase (what the signature uses); UsageError if not a URL
    or if it holds a user or password (named by ``option``, the URL not printed)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # aiohttp refuses to send it (AWS signs the requests), and it must not be printed
        raise UsageError(f"{option}: must not hold a user or password")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{option}: {url!r} is not an http:// or https:// URL")
    # botocore signs the host in lowercase; aiohttp would send it as typed (LocalHost:PORT)
    return urlunsplit(parts._replace(netloc=parts.netloc.lower()))


def _session(aws: AwsOptions, prefix: str = "", region: str | None = None) -> tuple[Any, str]:
    """An AioSession for the profile, and the region; both checked before any request.

    ``prefix`` names the options in errors (``"src-"``: --src-profile); ``region`` is the
    one to use when ``aws`` names none and the profile configures none.
    """
    from aiobotocore.session import AioSession
    from botocore.exceptions import ConfigParseError, ProfileNotFound

    profile = aws.profile
    try:
        session = AioSession(profile=profile)
        if profile is not None and profile not in session.available_profiles:
            raise UsageError(
                f"--{prefix}profile: no profile named {profile!r} in the AWS config files"
                f" ({_config_files()}); 'aws configure list-profiles' lists them"
            )
        # Also where a bad AWS_PROFILE shows up, before any request
        configured_region = session.get_config_variable("region")
    except ConfigParseError as exc:
        raise UsageError(
            f"the AWS config file {exc.kwargs.get('path')} cannot be parsed: fix it, or point"
            " AWS_CONFIG_FILE (AWS_SHARED_CREDENTIALS_FILE) at another"
        ) from None
    except ProfileNotFound as exc:
        raise UsageError(
            f"the AWS profile {exc.kwargs.get('profile')!r} (from AWS_PROFILE) does not exist:"
            f" pass --{prefix}profile NAME or unset AWS_PROFILE"
        ) from None
    # The AWS CLI's order: the option, AWS_REGION (which botocore ignores), then botocore's
    # AWS_DEFAULT_REGION or the profile's region.
    choices = (
        (aws.region, f"--{prefix}region"),
        (os.environ.get("AWS_REGION"), "AWS_REGION"),
        (configured_region, "the region of AWS_DEFAULT_REGION or the profile"),
        (region, f"--{prefix}region"),
    )
    resolved, origin = next(((r, o) for r, o in choices if r), (None, ""))
    if not resolved:
        raise UsageError(
            f"no AWS region: pass --{prefix}region (for example --{prefix}region us-east-1)"
            " or set AWS_REGION or AWS_DEFAULT_REGION"
        )
    if not is_region_name(resolved):
        raise UsageError(f"{origin}: {resolved!r} is not an AWS region name (like us-east-1)")
    return session, resolved


def _config_files() -> str:
    """The AWS config and credentials files botocore reads (AWS_CONFIG_FILE and
    AWS_SHARED_CREDENTIALS_FILE, else their defaults)."""
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return f"{config}, {credentials}"


def _configured_endpoint() -> tuple[str, str] | None:
    """The ECR endpoint botocore takes from the environment (``AWS_ENDPOINT_URL_ECR``, else
    ``AWS_ENDPOINT_URL``, unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``): (variable, URL)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    for name in ("AWS_ENDPOINT_URL_ECR", "AWS_ENDPOINT_URL"):
        if value := os.environ.get(name):
            return name, value
    return None


def _check_ca_bundle(aws: AwsOptions, prefix: str = "") -> None:
    if aws.ca_bundle is not None and not Path(aws.ca_bundle).is_file():
        raise UsageError(f"--{prefix}ca-bundle: no such file: {aws.ca_bundle}")


def _check_configured_ca_bundle(session: Any, prefix: str = "") -> None:
    """The CA bundle botocore would use without --ca-bundle (AWS_CA_BUNDLE, else the
    profile's ``ca_bundle``) must be a file: else every request fails with a bare ENOENT
    that reads as "no answer from the endpoint" (exit 1) instead of naming the setting."""
    bundle = session.get_config_variable("ca_bundle")
    if not bundle or Path(bundle).is_file():
        return
    origin = "AWS_CA_BUNDLE" if os.environ.get("AWS_CA_BUNDLE") else "the profile's ca_bundle"
    raise UsageError(
        f"{origin}: no such file: {bundle} (fix it, unset it, or pass --{prefix}ca-bundle PATH)"
    )


def client_arguments(
    aws: AwsOptions, *, prefix: str = "", region: str | None = None
) -> dict[str, Any]:
    """``EcrClient.create``'s arguments for AWS options, checked before any request.

    ``prefix`` is that of the option names errors give (``"src-"`` for --src-region,
    --src-profile, --src-endpoint-url, --src-ca-bundle); ``region`` the fallback region.
    """
    _check_ca_bundle(aws, prefix)
    endpoint_url = check_endpoint(aws.endpoint_url, f"--{prefix}endpoint-url")
    if endpoint_url is None and (configured := _configured_endpoint()) is not None:
        # botocore would use it as it is: checked and named like the option instead
        endpoint_url = check_endpoint(configured[1], configured[0])
    session, resolved = _session(aws, prefix, region)
    if aws.verify is None:
        _check_configured_ca_bundle(session, prefix)
    from aiobotocore.config import AioConfig

    create: dict[str, Any] = {
        "region_name": resolved,
        "endpoint_url": endpoint_url,
        "session": session,
        "config": AioConfig(connect_timeout=_CONNECT_TIMEOUT),
    }
    if aws.verify is not None:
        create["verify"] = aws.verify
    logger.debug(
        "client%s: region %s, endpoint %s, profile %s, verify %s",
        f" ({prefix.rstrip('-')})" if prefix else "",
        resolved,
        endpoint_url or "(AWS)",
        aws.profile or "(default chain)",
        aws.verify if aws.verify is not None else "(default)",
    )
    return create


class Runner:
    """What a command's body gets: the token, an ECR client, displays; see the module."""

    def __init__(
        self,
        context: Context,
        handler: Interrupts,
        stack: contextlib.AsyncExitStack,
        aws: AwsOptions | None,
        output: OutputOptions,
    ) -> None:
        self.context = context
        self.output = output
        self._handler = handler
        self._stack = stack
        self._aws = aws

    @property
    def token(self) -> CancellationToken:
        """Canceled by Ctrl-C, SIGTERM or --timeout."""
        return self._handler.source.token

    @property
    def stopping(self) -> bool:
        return self._handler.source.is_cancellation_requested

    async def client(self, **create: Any) -> EcrClient:
        """An EcrClient for the command's AWS options (or for ``create``'s own arguments)."""
        if not create:
            aws = self._aws
            assert aws is not None, "a command without AWS options gives its client arguments"
            create = client_arguments(aws)
            self.context.region = create["region_name"]
            self.context.endpoint_url = create["endpoint_url"]  # AWS_ENDPOINT_URL_ECR's too
        client: EcrClient = await self._stack.enter_async_context(EcrClient.create(**create))
        return client

    def display(self, label: str, total: int, completed: int = 0, detail: str = "") -> Display:
        """A progress display (close it before the next one); a quit-at-once restores it."""
        display = Display(self.output, label, total, completed, detail)
        self._handler.displays.append(display)
        self._stack.callback(display.close)
        return display

    def critical(self) -> contextlib.AbstractContextManager[None]:
        """A quit-at-once waits for the end of this block."""
        return self._handler.critical()


def run_command(
    context: Context,
    body: Callable[[Runner], Awaitable[_T]],
    *,
    output: OutputOptions,
    aws: AwsOptions | None = None,
    timeout: float | None = None,
    on_stopped: Callable[[Stopped], None] | None = None,
) -> _T | Stopped:
    """Run ``body`` in a new event loop; its result, or Stopped if the token stopped it."""

    async def main() -> _T | Stopped:
        source = CancellationTokenSource()
        async with interrupts(source) as handler, contextlib.AsyncExitStack() as stack:
            if timeout is not None:
                source.cancel_after(timeout)
            runner = Runner(context, handler, stack, aws, output)
            try:
                return await body(runner)
            except OperationCanceledError as exc:
                if not source.is_cancellation_requested:
                    raise
                stopped = Stopped(exc, handler.received, timeout)
                logger.debug("stopped: %s", stopped.reason)
                if on_stopped is not None:
                    with handler.critical():
                        on_stopped(stopped)
                return stopped

    return asyncio.run(main())
