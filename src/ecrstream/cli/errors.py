"""The command's exit codes and error messages: one line naming what failed and what to do.

Credentials are never printed: every message passes through ``redact``. Argument errors of
the library (``InvalidArgumentError``, a ValueError with ``.field``) are named by the option
the user typed, through ``OPTION_OF_FIELD``; plain ValueErrors whose message starts with a
field name (``part_size: ...``) are mapped the same way.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecrstream.errors import (
    AuthenticationError,
    BlobSizeError,
    CredentialsError,
    DigestMismatchError,
    EcrConnectionError,
    EcrServiceError,
    EcrStreamError,
    ImageSelectionError,
    ImageSourceError,
    InvalidArgumentError,
    ManifestInvalidError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryError,
    RegistryNotFoundError,
    RepositoryNotFoundError,
    ServerError,
    SourceChangedError,
    ThrottlingError,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "OPTION_OF_FIELD",
    "Context",
    "Failure",
    "UsageError",
    "explain",
    "one_line",
    "redact",
    "report",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The option (or argument) the user typed for each Python field the library names.
OPTION_OF_FIELD = {
    "repository_name": "--repository",
    "registry_id": "--registry-id",
    "expected_digest": "--expected-digest",
    "part_size": "--part-size",
    "path": "FILE",
    "source": "SOURCE",
    "resume": "--resume",
    "region_name": "--region",
    "endpoint_url": "--endpoint-url",
    "verify": "--ca-bundle",
    "image_tag": "--tag",
    "tags": "--tag",
    "image_ref": "--image-ref",
    "max_concurrent_layers": "--max-concurrent-layers",
    "source_registry_id": "--src-registry-id",
    "platforms": "--platform",
    "credentials": "--src-creds",
}

_FIELD_PREFIX_RE = re.compile(r"([a-z_]+): ")
# A presigned URL's signature, session token and credential scope (a download URL's query).
_PRESIGNED_RE = re.compile(r"(X-Amz-(?:Signature|Security-Token|Credential)=)[^&\s'\"]+", re.I)
_SSL_CONTEXT_RE = re.compile(r"ssl:<ssl\.SSLContext object at 0x[0-9a-fA-F]+>")
_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)


class UsageError(ValueError):
    """A bad argument, found by the command itself: exit code 2."""


class Failure(Exception):
    """A failure the command explains itself: exit code 1 (or ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Context:
    """What an error message may name; the runner fills in ``region`` once it resolved it.

    The one mutable piece of a run (the options themselves are frozen): the region may come
    from the profile or the environment, known only once the AWS session is made.
    """

    command: str
    repository: str | None = None
    registry_id: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    #: ``copy``'s SOURCE reference, as typed
    source: str | None = None

    @property
    def where(self) -> str:
        return self.endpoint_url or (f"ECR in {self.region}" if self.region else "ECR")

    @property
    def see_help(self) -> str:
        return f"(see 'ecrstream {self.command} --help')"


def redact(text: str) -> str:
    """Hide credentials: the values of the AWS key variables, anything like a key id, and a
    presigned URL's signature, token and credential."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _PRESIGNED_RE.sub(r"\1***", text)
    return _KEY_ID_RE.sub("***", text)


def one_line(text: str) -> str:
    """``text`` redacted, on one line (without aiohttp's ``ssl:<ssl.SSLContext object at
    0x...>``: the connection's TLS context, by its address)."""
    return " ".join(_SSL_CONTEXT_RE.sub("ssl", redact(text)).split())


def _leaf(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap what their tasks raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def name_field(text: str) -> str:
    """``text`` with a leading ``field: `` replaced by the option's name (``--part-size: ``)."""
    match = _FIELD_PREFIX_RE.match(text)
    if match is None or match.group(1) not in OPTION_OF_FIELD:
        return text
    return f"{OPTION_OF_FIELD[match.group(1)]}: {text[match.end() :]}"


# -- one message per kind of error -------------------------------------------------------------

Explanation = tuple[str, int]


def _usage(exc: UsageError, context: Context) -> Explanation:
    return f"{exc} {context.see_help}", EXIT_USAGE


def _failure(exc: Failure, context: Context) -> Explanation:
    return str(exc), exc.exit_code


def _bad_argument(exc: ValueError, context: Context) -> Explanation:
    if isinstance(exc, InvalidArgumentError):
        option = OPTION_OF_FIELD.get(exc.field, exc.field)
        text = f"{option}: {exc.rule}"
    else:  # a plain ValueError, until every library check raises InvalidArgumentError
        text = name_field(str(exc))
    if text.startswith("--resume:"):
        text += "; run the command without --resume to start over"
    return f"{text} {context.see_help}", EXIT_USAGE


#: The operations copy sends to an ECR source (the destination never gets them from copy).
_SOURCE_OPERATIONS = frozenset({"BatchGetImage", "GetDownloadUrlForLayer", "ListImageReferrers"})


def _repository_not_found(exc: RepositoryNotFoundError, context: Context) -> Explanation:
    if context.command == "copy" and exc.operation in _SOURCE_OPERATIONS:
        return (
            f"the source repository of {context.source} was not found ({exc.code}): check"
            " SOURCE's repository and --src-region, --src-registry-id and --src-profile",
            EXIT_FAILURE,
        )
    repository = context.repository
    registry = context.registry_id
    in_registry = f"registry {registry}" if registry else "the default registry"
    where = context.where
    if context.endpoint_url and context.region:
        where += f" (region {context.region})"  # an AWS_REGION set by mistake shows here
    return (
        f"repository {repository!r} not found in {in_registry} at {where}: create it"
        f" (aws ecr create-repository --repository-name {repository}) or check"
        " --repository, --region and --registry-id",
        EXIT_FAILURE,
    )


def _refused(exc: AuthenticationError, context: Context) -> Explanation:
    # The service's message is not shown: some echo the access key id.
    if exc.code == "AccessDeniedException":
        return (
            f"AWS denied {exc.operation} on repository {context.repository!r}"
            " (AccessDeniedException): these credentials lack the ECR permission; use a role"
            " or profile that has it",
            EXIT_FAILURE,
        )
    return (
        f"AWS refused the credentials ({exc.code}): check AWS_PROFILE/--profile or"
        " AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, and that they"
        " have not expired (aws sts get-caller-identity tests them)",
        EXIT_FAILURE,
    )


def _no_credentials(exc: CredentialsError, context: Context) -> Explanation:
    if exc.expired:
        return str(exc), EXIT_FAILURE
    return (
        "no AWS credentials found: set AWS_PROFILE (or pass --profile), or"
        " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role is available",
        EXIT_FAILURE,
    )


def _unreachable(exc: EcrConnectionError, context: Context) -> Explanation:
    text = str(exc)
    if "certificate" in text.lower():
        return (
            f"cannot reach {context.where}: {text}; the endpoint's TLS certificate is not"
            " trusted: pass --ca-bundle PATH (or set AWS_CA_BUNDLE) with the CA that signed"
            " it, or --no-verify-ssl to skip the check",
            EXIT_FAILURE,
        )
    return (
        f"cannot reach {context.where}: {text}; check --endpoint-url, --region and the"
        " network, then run the command again",
        EXIT_FAILURE,
    )


def _digest_mismatch(exc: DigestMismatchError, context: Context) -> Explanation:
    if context.command == "copy":
        return (
            f"the source sent a blob whose bytes do not match its digest: {exc}; no image was"
            " put: run the command again (a proxy or mirror in between may have altered it)",
            EXIT_FAILURE,
        )
    if context.command == "push":
        return f"{exc}: SOURCE holds a blob whose bytes do not match its digest", EXIT_FAILURE
    return f"{exc}: check --expected-digest and the file", EXIT_FAILURE


def _source_changed(exc: SourceChangedError, context: Context) -> Explanation:
    return f"{exc}: run the command again once the file no longer changes", EXIT_FAILURE


def _image_selection(exc: ImageSelectionError, context: Context) -> Explanation:
    names = ", ".join(exc.names) or "none"
    source = exc.source or "SOURCE"
    if context.command == "copy":  # found by reading the source: a failure, not a usage error
        if not exc.names:
            return f"--platform: {source} is one image, not an index of platforms", EXIT_FAILURE
        return (
            f"--platform: {source} has no platform {exc.image_ref} (it has: {names})",
            EXIT_FAILURE,
        )
    if exc.image_ref is None:
        text = f"{source} holds several images: choose one with --image-ref (names: {names})"
    else:
        text = f"--image-ref: {source} has no single image named {exc.image_ref!r} (names: {names})"
    return f"{text} {context.see_help}", EXIT_USAGE


def _image_source(exc: ImageSourceError, context: Context) -> Explanation:
    return (
        f"{exc}: check SOURCE (an OCI layout folder or tar, or a docker save archive)",
        EXIT_FAILURE,
    )


# -- the source registry of ``copy`` -----------------------------------------------------------


def _source_registry(context: Context) -> str:
    """The source registry's host, from SOURCE (docker.io for Docker Hub's short forms)."""
    from ecrstream.registry.reference import parse_reference

    try:
        return parse_reference(context.source or "").registry
    except ValueError:
        return "the source registry"


def _source_refused(exc: RegistryAuthError, context: Context) -> Explanation:
    host = _source_registry(context)
    if exc.status is None:
        # No request was refused: the local credentials (docker's config, a helper) failed.
        return (
            f"the credentials for the source registry {host} could not be read: {exc}; fix"
            " that, or pass --src-creds USER:PASS",
            EXIT_FAILURE,
        )
    if exc.status == 403:
        hint = "these credentials may not pull it: use ones that can (--src-creds USER:PASS)"
    else:
        hint = f"check --src-creds USER:PASS, or log in as docker would (docker login {host})"
    return f"the source registry {host} refused access: {exc}; {hint}", EXIT_FAILURE


def _source_not_found(exc: RegistryNotFoundError, context: Context) -> Explanation:
    return (
        f"{context.source}: not found at the source ({exc}): check SOURCE's repository and"
        " its tag or digest",
        EXIT_FAILURE,
    )


def _source_blob_size(exc: BlobSizeError, context: Context) -> Explanation:
    return (
        f"the source sent a blob of another size than its manifest says: {exc}; its upload"
        " was not completed and no image was put: run the command again (a proxy or mirror"
        " in between may have altered it)",
        EXIT_FAILURE,
    )


def _source_unreachable(exc: RegistryConnectionError, context: Context) -> Explanation:
    host = _source_registry(context)
    text = str(exc).split("; pass verify=", 1)[0]  # the library's hint names its argument
    lowered = text.lower()
    if "certificate" in lowered:
        hint = (
            f"the TLS certificate of {host} is not trusted: pass --src-ca-bundle FILE with"
            " the CA that signed it"
        )
    elif "ssl" in lowered or "tls" in lowered:
        hint = (
            f"{host} does not speak TLS as expected: if it serves plain HTTP, pass --src-plain-http"
        )
    elif exc.timed_out:
        hint = "the source stopped sending: run the command again (a stopped copy resumes)"
    else:
        hint = f"check SOURCE's host ({host}) and the network, then run the command again"
    return f"cannot read from the source registry: {text}; {hint}", EXIT_FAILURE


def _source_failed(exc: RegistryError, context: Context) -> Explanation:
    if isinstance(exc, ManifestInvalidError):
        return f"{exc}: ecrstream cannot copy this image of {context.source}", EXIT_FAILURE
    host = _source_registry(context)
    if exc.status == 429:
        return (
            f"the source registry {host} is rate limiting (HTTP 429) and kept at it after"
            f" retries: {exc}; wait and run the command again, or pass --src-creds: some"
            " registries (Docker Hub) allow logged-in users more pulls",
            EXIT_FAILURE,
        )
    if exc.status is not None and exc.status >= 500:
        return (
            f"the source registry {host} kept failing after retries: {exc}; try again later",
            EXIT_FAILURE,
        )
    return f"the source registry {host} refused a request: {exc}", EXIT_FAILURE


def _referrers_failed(
    exc: BaseException, notes: tuple[str, ...], usual: Explanation
) -> Explanation:
    """``copy --with-referrers`` failed after the image was in: say so, and what the
    referrer was (the notes); a missing or invalid manifest is the referrer's, not SOURCE's
    (the usual hint about SOURCE's tag would mislead)."""
    message, code = usual
    if isinstance(exc, RegistryNotFoundError | ManifestInvalidError):
        message = str(exc)
    return (
        f"{message} ({'; '.join(notes)}): run the command again to retry the referrers, or"
        " without --with-referrers to copy the image alone",
        code,
    )


def _kept_failing(exc: ServerError | ThrottlingError, context: Context) -> Explanation:
    return (
        f"ECR kept failing after retries ({exc.code}: {exc.message}): try again later",
        EXIT_FAILURE,
    )


def _service(exc: EcrServiceError, context: Context) -> Explanation:
    return f"ECR refused {exc.operation} ({exc.code}: {exc.message})", EXIT_FAILURE


def _ours(exc: EcrStreamError, context: Context) -> Explanation:
    return str(exc), EXIT_FAILURE


def _os_error(exc: OSError, context: Context) -> Explanation:
    target = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{target}", EXIT_FAILURE


# Most specific first: InvalidArgumentError is a ValueError and an EcrStreamError.
_HANDLERS: tuple[tuple[Any, Callable[[Any, Context], Explanation]], ...] = (
    (UsageError, _usage),
    (Failure, _failure),
    (ValueError, _bad_argument),
    (RepositoryNotFoundError, _repository_not_found),
    (AuthenticationError, _refused),
    (CredentialsError, _no_credentials),
    (EcrConnectionError, _unreachable),
    (DigestMismatchError, _digest_mismatch),
    (RegistryAuthError, _source_refused),
    (RegistryNotFoundError, _source_not_found),
    (BlobSizeError, _source_blob_size),
    (RegistryConnectionError, _source_unreachable),
    (RegistryError, _source_failed),
    (SourceChangedError, _source_changed),
    (ImageSelectionError, _image_selection),
    (ImageSourceError, _image_source),
    (ServerError | ThrottlingError, _kept_failing),
    (EcrServiceError, _service),
    (EcrStreamError, _ours),
    (OSError, _os_error),
)


def explain(exc: BaseException, context: Context) -> Explanation:
    """One line saying what failed and what to do, and the exit code."""
    exc = _leaf(exc)
    for kind, handler in _HANDLERS:
        if isinstance(exc, kind):
            if not getattr(exc, "__notes__", None):
                return handler(exc, context)
            from ecrstream.copy.referrers import referrers_notes  # not at start: aiobotocore

            notes = referrers_notes(exc)
            if not notes:
                return handler(exc, context)
            return _referrers_failed(exc, notes, handler(exc, context))
    return (
        f"unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback,"
        " and please report it)",
        EXIT_FAILURE,
    )


def report(exc: BaseException, context: Context, *, debug: bool) -> int:
    """Print ``exc`` as the command's one error line (a traceback first with ``debug``)."""
    message, code = explain(exc, context)
    if debug:
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    print(f"ecrstream {context.command}: error: {one_line(message)}", file=sys.stderr)
    return code
