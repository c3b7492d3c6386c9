"""``ecrstream copy``: an image from another registry (or ECR) into ECR, streaming, resumable.

Progress as ``push`` (the same view). Stopped (Ctrl-C, SIGTERM, --timeout), it writes a
checkpoint (the pinned digest, the blobs committed, the uploads in flight) and prints the
command that resumes it with ``--resume``: committed blobs are skipped and the blobs in flight
go on from the byte ECR holds.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ecrstream.cli.checkpoints import program
from ecrstream.cli.errors import EXIT_OK, Context, UsageError, redact
from ecrstream.cli.options import AwsOptions, CopyOptions
from ecrstream.cli.push import PushView
from ecrstream.cli.runner import (
    Runner,
    Stopped,
    check_endpoint,
    client_arguments,
    report_stopped,
    run_command,
)
from ecrstream.cli.units import format_bytes, mb_per_s, plural
from ecrstream.errors import CopyCanceledError
from ecrstream.models import (
    PutImageRequest,
    UploadCheckpoint,
    validate_registry_id,
    validate_repository_name,
)

if TYPE_CHECKING:
    from ecrstream.client import EcrClient
    from ecrstream.copy import CopyImageResult
    from ecrstream.registry import ImageReference

__all__ = ["load_copy_checkpoint", "run", "write_copy_checkpoint"]

_DEFAULT_STEM: Final = "ecrstream-copy"
_VERSION_KEY: Final = "ecrstream_copy_checkpoint"


def write_copy_checkpoint(error: CopyCanceledError, path: Path | None) -> Path:
    """Write what a stopped copy had done, for ``--resume`` (JSON; no credentials in it).

    ``path`` None is the default place: ``ecrstream-copy.checkpoint.json`` in the current
    folder, or ``ecrstream-copy-2.checkpoint.json`` (3, ...) if that one is there already, so
    that a second copy stopped in the same folder does not overwrite the first one's
    checkpoint (its printed --resume command would then name another copy's). Returns the
    absolute path written, which the printed command names (it works from any folder).
    """
    document = {
        _VERSION_KEY: 1,
        "source_digest": error.source_digest,
        "committed_digests": list(error.committed_digests),
        "checkpoints": {
            digest: json.loads(checkpoint.to_json())
            for digest, checkpoint in error.checkpoints.items()
        },
    }
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if path is not None:
        path.write_text(text)
        return path.absolute()
    for number in itertools.count(1):
        suffix = "" if number == 1 else f"-{number}"
        candidate = Path(f"{_DEFAULT_STEM}{suffix}.checkpoint.json").absolute()
        try:
            with candidate.open("x") as file:  # never an existing one
                file.write(text)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def load_copy_checkpoint(text: str) -> CopyCanceledError:
    """Read a checkpoint ``write_copy_checkpoint`` wrote; UsageError naming --resume if bad."""
    path = Path(text)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {text}: {exc.strerror or exc}") from None
    except ValueError:
        raise UsageError(f"--resume: {text} is not JSON") from None
    if not isinstance(document, dict) or document.get(_VERSION_KEY) != 1:
        raise UsageError(f"--resume: {text} is not an ecrstream copy checkpoint")
    raw = document.get("checkpoints")
    digest = document.get("source_digest")
    if not isinstance(raw, dict) or not (digest is None or isinstance(digest, str)):
        raise UsageError(f"--resume: {text} is not an ecrstream copy checkpoint")
    checkpoints = {
        str(blob): UploadCheckpoint.from_json(json.dumps(entry)) for blob, entry in raw.items()
    }
    return CopyCanceledError(checkpoints=checkpoints, source_digest=digest)


def _stopped(options: CopyOptions, stopped: Stopped, path: Path | None) -> int:
    error = stopped.error
    prefix = "ecrstream copy:"
    argv = _without_password(options.argv, options.src_creds)
    # What --json reports; a stop before anything was copied leaves nothing to resume from
    done: dict[str, object] = {"checkpoint": None, "committed_digests": [], "in_flight_digests": []}
    if isinstance(error, CopyCanceledError):
        path = write_copy_checkpoint(error, path)
        done = {
            "checkpoint": str(path),
            "committed_digests": list(error.committed_digests),
            "in_flight_digests": list(error.checkpoints),
        }
        committed = len(error.committed_digests)
        flying = len(error.checkpoints)
        print(
            f"{prefix} {stopped.reason}; {plural(committed, 'blob')} committed,"
            f" {plural(flying, 'upload')} in flight; checkpoint written to {path}",
            file=sys.stderr,
        )
        if "--resume" not in argv:
            argv += ["--resume", str(path)]
    else:
        print(f"{prefix} {stopped.reason} before anything was copied", file=sys.stderr)
    again = redact(shlex.join([*program(), *argv]))
    print(f"{prefix} to go on, run:", file=sys.stderr)
    print(f"  {again}", file=sys.stderr, flush=True)
    if options.src_creds is not None:
        print(f"{prefix} (with --src-creds's password for ***)", file=sys.stderr, flush=True)
    report_stopped(options.output, stopped, again, **done)
    return stopped.exit_code


def _without_password(argv: Sequence[str], creds: str | None) -> list[str]:
    """``argv`` with the password of each ``--src-creds USER:PASS`` (or ``--src-creds=...``)
    as ``***``: the command printed to go on shows no credentials. Only those words: a
    SOURCE that happens to contain the same text stays as typed (no abbreviations exist)."""
    if creds is None:
        return list(argv)
    words = list(argv)

    def masked(value: str) -> str:
        user, colon, _ = value.partition(":")
        return f"{user}:***" if colon else "***"

    for index, word in enumerate(words):
        if word == "--src-creds" and index + 1 < len(words):
            words[index + 1] = masked(words[index + 1])
        elif word.startswith("--src-creds="):
            words[index] = "--src-creds=" + masked(word.removeprefix("--src-creds="))
    return words


@dataclass(frozen=True, slots=True)
class _Copied:
    result: CopyImageResult
    seconds: float


#: The most referrer digests the text output names (--json names them all).
_REFERRERS_SHOWN: Final = 5


def _referrers_line(found: Sequence[str]) -> str:
    """``with N referrers: d1, d2...``, naming at most _REFERRERS_SHOWN of them."""
    line = f"with {plural(len(found), 'referrer')}"
    if not found:
        return line + " (none found)"
    line += ": " + ", ".join(found[:_REFERRERS_SHOWN])
    if len(found) > _REFERRERS_SHOWN:
        line += f" and {len(found) - _REFERRERS_SHOWN} more (--json lists them all)"
    return line


def _done(options: CopyOptions, copied: _Copied) -> int:
    result, seconds = copied.result, copied.seconds
    rate = mb_per_s(result.bytes_moved, seconds)
    if options.output.json:
        report = {
            "manifest_digest": result.manifest_digest,
            "source_digest": result.source_digest,
            "media_type": result.media_type,
            "tags": list(result.tags),
            "blobs_uploaded": result.blobs_uploaded,
            "blobs_skipped": result.blobs_skipped,
            "bytes_moved": result.bytes_moved,
            "manifest_digests": list(result.manifest_digests),
            "referrer_digests": list(result.referrer_digests),
            "seconds": round(seconds, 3),
            "mb_per_s": rate,
            "repository_name": options.repository,
            "registry_id": options.aws.registry_id,
        }
        print(json.dumps(report), flush=True)
    elif options.output.quiet:
        print(result.manifest_digest, flush=True)
    else:
        names = ", ".join(f"{options.repository}:{tag}" for tag in result.tags)
        print(
            f"copied {result.manifest_digest} to {names or options.repository} in"
            f" {seconds:.1f} s: {plural(result.blobs_uploaded, 'blob')} uploaded,"
            f" {result.blobs_skipped} already there, {format_bytes(result.bytes_moved)}"
            f" at {rate:.1f} MB/s",
            flush=True,
        )
        if options.with_referrers:
            print(_referrers_line(result.referrer_digests), flush=True)
    return EXIT_OK


_SRC_AWS_OPTIONS: Final = (
    ("--src-region", "region"),
    ("--src-profile", "profile"),
    ("--src-endpoint-url", "endpoint_url"),
    ("--src-registry-id", "registry_id"),
)


def _check_source_aws(options: CopyOptions, reference: ImageReference) -> None:
    """The --src-* options: the AWS ones only for an ECR SOURCE, each well formed, before any
    request (a missing --src-ca-bundle would otherwise be named as the library's verify=)."""
    from ecrstream.copy.copy import ecr_registry_of

    given = [name for name, field in _SRC_AWS_OPTIONS if getattr(options.src_aws, field)]
    if given and ecr_registry_of(reference.registry) is None:
        raise UsageError(
            f"{given[0]}: SOURCE {reference.registry}/{reference.repository} is not in ECR;"
            " the ECR source options need SOURCE as"
            " ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY[:TAG]"
        )
    if options.src_ca_bundle is not None and not Path(options.src_ca_bundle).is_file():
        raise UsageError(f"--src-ca-bundle: no such file: {options.src_ca_bundle}")
    if options.src_aws.registry_id is not None:
        validate_registry_id(options.src_aws.registry_id, "source_registry_id")
    check_endpoint(options.src_aws.endpoint_url, "--src-endpoint-url")
    if ecr_registry_of(reference.registry) is not None:
        if options.src_plain_http:
            raise UsageError("--src-plain-http: an ECR SOURCE is read through the ECR API")
        if options.src_creds is not None:
            raise UsageError(
                "--src-creds: an ECR SOURCE is read with AWS credentials (--src-profile),"
                " not USER:PASS"
            )


async def _source_client(
    runner: Runner, options: CopyOptions, reference: ImageReference
) -> EcrClient | None:
    """An ECR SOURCE's own client, or None if the destination's serves (same region, no --src-*
    option: --src-ca-bundle too asks for a client of its own, with that bundle).

    Each setting comes from its --src-* option, else: the region from the SOURCE's host, the
    profile from --profile. The endpoint and TLS are never the destination's (--endpoint-url,
    --ca-bundle): a source elsewhere has its own (--src-endpoint-url, --src-ca-bundle).
    """
    from ecrstream.copy.copy import ecr_registry_of

    host = ecr_registry_of(reference.registry)
    if host is None:
        return None
    src = options.src_aws
    region = src.region or host[1]
    if not (src.profile or src.endpoint_url or options.src_ca_bundle) and (
        region == runner.context.region
    ):
        return None
    source_aws = AwsOptions(
        region=region,
        profile=src.profile or options.aws.profile,
        endpoint_url=src.endpoint_url,
        ca_bundle=options.src_ca_bundle,
    )
    return await runner.client(**client_arguments(source_aws, prefix="src-"))


def run(options: CopyOptions, context: Context) -> int:
    """Run copy; the exit code (errors are raised, for the caller to explain)."""
    from ecrstream.registry import parse_reference

    reference = parse_reference(options.source)  # InvalidArgumentError("source", ...) first
    validate_repository_name(options.repository)
    validate_registry_id(options.aws.registry_id)
    _check_source_aws(options, reference)
    for tag in options.tags:
        PutImageRequest(options.repository, "{}", image_tag=tag)
    check_endpoint(options.aws.endpoint_url)
    resume = load_copy_checkpoint(options.resume) if options.resume else None
    chosen = options.checkpoint_file or options.resume
    path = Path(chosen) if chosen else None  # None: the first free default name, if stopped
    from ecrstream.copy import copy_image

    async def body(runner: Runner) -> _Copied:
        client = await runner.client()
        source_client = await _source_client(runner, options, reference)
        view = PushView(runner.display(options.source, 0), options.part_size)
        started = time.monotonic()
        result = await copy_image(
            client,
            options.source,
            options.repository,
            tags=options.tags,
            registry_id=options.aws.registry_id,
            platforms=options.platforms or None,
            max_concurrent_layers=options.max_concurrent_layers,
            cancellation_token=runner.token,
            on_progress=view,
            source_credentials=options.src_creds,
            plain_http=options.src_plain_http,
            verify=options.src_ca_bundle,
            source_client=source_client,
            source_registry_id=options.src_aws.registry_id,
            resume=resume,
            part_size=options.part_size,
            with_referrers=options.with_referrers,
        )
        view.display.close()
        return _Copied(result, time.monotonic() - started)

    outcome = run_command(
        context, body, output=options.output, aws=options.aws, timeout=options.timeout
    )
    if isinstance(outcome, Stopped):
        return _stopped(options, outcome, path)
    spent = Path(options.resume) if options.resume else None
    if spent is not None and spent.exists():
        spent.unlink()  # done: the checkpoint is spent
    return _done(options, outcome)
