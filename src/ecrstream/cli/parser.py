"""The command line's grammar: argparse, then one frozen options object per command."""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Final, NoReturn

from ecrstream.cli.errors import EXIT_USAGE, redact
from ecrstream.cli.options import (
    AwsOptions,
    CopyOptions,
    DemoOptions,
    LocalEcrOptions,
    Options,
    OutputOptions,
    PushOptions,
    UploadOptions,
)
from ecrstream.cli.units import MIB, parse_size

__all__ = ["CHECKPOINT_SUFFIX", "EXIT_CODES", "build_parser", "parse"]

CHECKPOINT_SUFFIX = ".ecrstream-checkpoint.json"

EXIT_CODES = """\
exit codes:
  0    success
  1    failure: ECR refused or failed, no answer from the endpoint, no or bad
       credentials, digest mismatch, --timeout expired (checkpoint written)
  2    usage error: bad arguments, missing, unreadable or empty file, a
       directory, bad repository name, bad --part-size, bad checkpoint file,
       unknown profile, no region, a SOURCE that is not an image layout or archive
  130  interrupted by Ctrl-C or SIGTERM (checkpoint written, resume command printed)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with one line on stderr for a usage error (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        message = _hide_echoed_values(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# argparse echoes what it could not place: a mistyped ``--src-cred USER:PASS`` would print the
# password. Such messages keep the option names and hide what follows any colon of a value.
_ECHOES: Final = ("unrecognized arguments: ", "ambiguous option: ")
_AFTER_COLON: Final = re.compile(r"(?<=[^\s:]):(?!//)\S+")


def _hide_echoed_values(message: str) -> str:
    """``message`` with secrets hidden where argparse echoes the command line's words."""
    if not message.startswith(_ECHOES):
        return message
    head, _, words = message.partition(": ")
    return f"{head}: {redact(_AFTER_COLON.sub(':***', words))}"


# -- argument types ------------------------------------------------------------------------------


def _endpoint_argument(text: str) -> str:
    """An endpoint URL with no user or password in it, refused here without echoing it: the
    options are logged (--debug) as soon as they are parsed."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return text  # not a URL: check_endpoint says so
    if userinfo:
        raise argparse.ArgumentTypeError(
            "must not hold a user or password (requests to ECR are signed with AWS"
            " credentials, never the URL's)"
        )
    return text


def _part_size_argument(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    from ecrstream.models import MAX_PART_SIZE, MIN_PART_SIZE  # not needed for --help

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


# -- option groups ---------------------------------------------------------------------------------


def _add_aws_options(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group("AWS options (as in the AWS CLI)")
    aws.add_argument(
        "--region",
        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's)",
    )
    aws.add_argument(
        "--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE or default)"
    )
    aws.add_argument(
        "--endpoint-url",
        type=_endpoint_argument,
        metavar="URL",
        help="ECR endpoint (e.g. a local one)",
    )
    aws.add_argument(
        "--registry-id", metavar="ACCOUNT", help="registry's 12-digit account id (default: yours)"
    )
    tls = aws.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca-bundle",
        metavar="PATH",
        help="CA certificates (PEM) to verify the endpoint's TLS certificate with"
        " (default: AWS_CA_BUNDLE, else the system's)",
    )
    tls.add_argument(
        "--no-verify-ssl",
        action="store_true",
        help="do not verify the endpoint's TLS certificate (a test endpoint only)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object at the end (stdout; also when stopped)",
    )
    output.add_argument(
        "--quiet", "-q", action="store_true", help="no progress; print only the digest"
    )
    output.add_argument(
        "--debug",
        action="store_true",
        help="tracebacks, and the debug log of the 'ecrstream' logger on stderr",
    )


def _subcommand(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def _add_upload_layer(commands: argparse._SubParsersAction[_Parser]) -> None:
    upload = _subcommand(
        commands,
        "upload-layer",
        "upload one layer file, part by part",
        "Upload FILE as one layer blob (InitiateLayerUpload, UploadLayerPart per part,"
        " CompleteLayerUpload with its sha256). Ctrl-C or SIGTERM stops it, writes a"
        " checkpoint and prints the command that resumes it; the same command run again"
        " resumes it too.",
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
        "--skip-existing",
        action="store_true",
        help="hash FILE first and upload nothing if the repository already has that layer",
    )
    layer.add_argument(
        "--timeout",
        type=_timeout_argument,
        metavar="SECONDS",
        help="stop after this long (exit 1), writing a checkpoint as for Ctrl-C",
    )
    resume = layer.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        metavar="CHECKPOINT_FILE",
        help="continue the upload a checkpoint file describes (the file is deleted on success;"
        f" without it, a FILE{CHECKPOINT_SUFFIX} of this FILE and repository is resumed)",
    )
    resume.add_argument(
        "--restart",
        action="store_true",
        help="start a new upload even if a checkpoint of this FILE is there to resume",
    )
    layer.add_argument(
        "--checkpoint-file",
        metavar="PATH",
        help="where to write the checkpoint if stopped (default: the --resume file, else"
        f" FILE{CHECKPOINT_SUFFIX} next to FILE, or in the current folder if FILE's is"
        " read-only)",
    )
    _add_output_options(upload)


def _add_image_target(command: argparse.ArgumentParser) -> None:
    """Where push and copy put the image: ``--repository`` and ``--tag``s."""
    command.add_argument("--repository", required=True, metavar="NAME", help="ECR repository")
    command.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="image tag (repeatable)"
    )


def _add_concurrency_options(group: argparse._ArgumentGroup, what: str) -> None:
    """push's and copy's ``--max-concurrent-layers`` (``what`` go at once) and ``--part-size``."""
    group.add_argument(
        "--max-concurrent-layers",
        type=_positive_int_argument,
        default=4,
        metavar="N",
        help=f"{what} uploaded at once (default 4)",
    )
    group.add_argument(
        "--part-size",
        type=_part_size_argument,
        metavar="SIZE",
        help="bytes per part, 5MiB to 20MiB (default: the partSize ECR returns, 10 MiB)",
    )


def _add_push(commands: argparse._SubParsersAction[_Parser]) -> None:
    push = _subcommand(
        commands,
        "push",
        "push a whole image (OCI layout or docker save archive)",
        "Push an image: its layers, its config and its manifest, then tag it. Stopped, the"
        " same command run again skips the blobs already committed.",
    )
    push.add_argument(
        "source", metavar="SOURCE", help="OCI image layout (folder or tar) or docker save archive"
    )
    _add_image_target(push)
    _add_aws_options(push)
    options = push.add_argument_group("push")
    _add_concurrency_options(options, "layers")
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


def _add_copy(commands: argparse._SubParsersAction[_Parser]) -> None:
    copy = _subcommand(
        commands,
        "copy",
        "copy an image from another registry (or ECR) into ECR",
        "Copy an image or a whole index from an OCI distribution registry into ECR, streaming"
        " every blob from the source into the upload. Stopped, it writes a checkpoint and"
        " prints the command that resumes it.",
    )
    copy.add_argument(
        "source", metavar="SOURCE", help="image reference (host/repo:tag or host/repo@sha256:...)"
    )
    _add_image_target(copy)
    copy.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH",
        help="copy only this platform of an index (repeatable; default: all)",
    )
    _add_aws_options(copy)
    source = copy.add_argument_group("source")
    source.add_argument(
        "--src-plain-http", action="store_true", help="speak plain HTTP to the source registry"
    )
    source.add_argument(
        "--src-creds",
        metavar="USER:PASS",
        help="source credentials (default: docker's config and credential helpers)",
    )
    source.add_argument(
        "--src-ca-bundle",
        metavar="FILE",
        help="CA bundle for the source registry's TLS (an ECR source's too: its API endpoint"
        " and download URLs)",
    )
    ecr = copy.add_argument_group(
        "ECR source (SOURCE is ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG)",
        "read through the ECR API with a client of its own; by default the source's region is"
        " that of its host, its profile --profile's, its account the host's",
    )
    ecr.add_argument(
        "--src-region", metavar="REGION", help="the source's AWS region (default: its host's)"
    )
    ecr.add_argument(
        "--src-profile", metavar="NAME", help="the source's profile (default: --profile's)"
    )
    ecr.add_argument(
        "--src-endpoint-url",
        type=_endpoint_argument,
        metavar="URL",
        help="the source's ECR endpoint (default: AWS's for its region; never --endpoint-url)",
    )
    ecr.add_argument(
        "--src-registry-id",
        metavar="ACCOUNT",
        help="the source registry's 12-digit account id (default: the host's)",
    )
    options = copy.add_argument_group("copy")
    options.add_argument(
        "--with-referrers",
        action="store_true",
        help="also copy the signatures, SBOMs and attestations that refer to the image (the"
        " referrers API, else the sha256-<hex> tag; cosign's .sig/.att/.sbom tags too)",
    )
    _add_concurrency_options(options, "blobs")
    options.add_argument(
        "--timeout",
        type=_timeout_argument,
        metavar="SECONDS",
        help="stop after this long (exit 1), with a checkpoint to resume from",
    )
    options.add_argument(
        "--resume", metavar="FILE", help="go on from the checkpoint a stopped copy wrote"
    )
    options.add_argument(
        "--checkpoint-file",
        metavar="FILE",
        help="where to write the checkpoint if stopped (default: the --resume file, else"
        " ecrstream-copy.checkpoint.json in the current folder, or -2, -3, ... if taken)",
    )
    _add_output_options(copy)


def _add_demo(commands: argparse._SubParsersAction[_Parser]) -> None:
    demo = _subcommand(
        commands,
        "demo",
        "everything on a local ECR endpoint of its own (no AWS account, no network)",
        "Start a local ECR endpoint (moto behind a strict proxy, in a child process),"
        " upload a random layer, confirm it with BatchCheckLayerAvailability, cancel a"
        " second upload half way with a token and resume it from its checkpoint, then push"
        " a small image of three layers built on the fly.",
    )
    demo.add_argument(
        "--size",
        type=_demo_size_argument,
        default=256 * MIB,
        metavar="SIZE",
        help="size of the first layer (default 256MiB; the local endpoint, not the uploader,"
        " sets the pace); the second, canceled and resumed, is a quarter of it (at least"
        " 16MiB)",
    )
    _add_output_options(demo)


def _add_local_ecr(commands: argparse._SubParsersAction[_Parser]) -> None:
    # Only the server's argparse part: moto is imported when it serves. (The module, not
    # the function ecrstream.local.serve that shadows it as an attribute.)
    serve = importlib.import_module("ecrstream.local.serve")

    local = _subcommand(
        commands,
        "local-ecr",
        "serve a local ECR endpoint on 127.0.0.1 until Ctrl-C (no AWS account, no network)",
        textwrap.fill(serve.DESCRIPTION, 78),
    )
    serve.add_arguments(local)


def _version() -> str:
    from importlib import metadata  # ~40 ms: only when --version asks

    try:
        return metadata.version("ecrstream")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        parser._print_message(f"ecrstream {_version()}\n", sys.stdout)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``ecrstream`` parser with its commands."""
    parser = _Parser(
        prog="ecrstream",
        description="Stream container image layers into Amazon ECR.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_upload_layer(commands)
    _add_push(commands)
    _add_copy(commands)
    _add_demo(commands)
    _add_local_ecr(commands)
    return parser


def _aws(namespace: argparse.Namespace) -> AwsOptions:
    return AwsOptions(
        region=namespace.region,
        profile=namespace.profile,
        endpoint_url=namespace.endpoint_url,
        registry_id=namespace.registry_id,
        ca_bundle=namespace.ca_bundle,
        no_verify_ssl=namespace.no_verify_ssl,
    )


def _output(namespace: argparse.Namespace) -> OutputOptions:
    return OutputOptions(json=namespace.json, quiet=namespace.quiet, debug=namespace.debug)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Options | None:
    """The options ``argv`` asks for; None if it names no command.

    Raises SystemExit for --help, --version and usage errors (already printed).
    """
    namespace = parser.parse_args(argv)
    words = tuple(argv)
    if namespace.command == "upload-layer":
        return UploadOptions(
            argv=words,
            file=namespace.file,
            repository=namespace.repository,
            aws=_aws(namespace),
            output=_output(namespace),
            part_size=namespace.part_size,
            expected_digest=namespace.expected_digest,
            timeout=namespace.timeout,
            resume=namespace.resume,
            checkpoint_file=namespace.checkpoint_file,
            restart=namespace.restart,
            skip_existing=namespace.skip_existing,
        )
    if namespace.command == "push":
        return PushOptions(
            argv=words,
            source=namespace.source,
            repository=namespace.repository,
            aws=_aws(namespace),
            output=_output(namespace),
            tags=tuple(namespace.tag),
            max_concurrent_layers=namespace.max_concurrent_layers,
            part_size=namespace.part_size,
            image_ref=namespace.image_ref,
            timeout=namespace.timeout,
        )
    if namespace.command == "copy":
        return CopyOptions(
            argv=words,
            source=namespace.source,
            repository=namespace.repository,
            aws=_aws(namespace),
            output=_output(namespace),
            tags=tuple(namespace.tag),
            platforms=tuple(namespace.platform),
            src_plain_http=namespace.src_plain_http,
            src_creds=namespace.src_creds,
            src_ca_bundle=namespace.src_ca_bundle,
            src_aws=AwsOptions(
                region=namespace.src_region,
                profile=namespace.src_profile,
                endpoint_url=namespace.src_endpoint_url,
                registry_id=namespace.src_registry_id,
            ),
            with_referrers=namespace.with_referrers,
            max_concurrent_layers=namespace.max_concurrent_layers,
            part_size=namespace.part_size,
            timeout=namespace.timeout,
            resume=namespace.resume,
            checkpoint_file=namespace.checkpoint_file,
        )
    if namespace.command == "demo":
        return DemoOptions(argv=words, output=_output(namespace), size=namespace.size)
    if namespace.command == "local-ecr":
        return LocalEcrOptions(
            argv=words,
            port=namespace.port,
            repositories=tuple(namespace.repository),
            data_dir=namespace.data_dir,
            region=namespace.region,
        )
    return None
