"""The ``ecrstream`` command: upload-layer, push, demo and local-ecr (entry point: ``main``).

Streams: results go to stdout (a line per part when stdout is not a terminal, then a summary
line, or one JSON object with ``--json``); errors, warnings and the resume instructions go to
stderr. On a terminal the progress is a rich live bar (plain lines if rich is missing).

Cancellation: the first Ctrl-C or SIGTERM cancels the command's token (the upload stops at
once, the request in flight is aborted), the checkpoint is written and the command that
resumes is printed; the same signal again within a second is the same request (GNU
``timeout`` sends two), a later one exits at once. ``--timeout`` is a ``cancel_after`` on the
same token.

Error messages are one line on stderr, naming what failed and what to do; a traceback only
with ``--debug``, which also shows the ``ecrstream`` logger's debug log. Credentials are
never printed: anything shown passes through ``errors.redact``.

The modules, one concern each:

- ``parser``: the grammar (argparse) and one frozen ``options`` object per command;
- ``runner``: the one command runner (token, interrupts, timeout, client, displays);
- ``signals``: Ctrl-C and SIGTERM; ``progress``: bars and lines; ``units``: sizes, rates;
- ``errors``: exit codes, messages, the field-to-option table;
- ``upload`` (with ``checkpoints``), ``push``, ``demo``, ``local_ecr``: the commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from ecrstream.cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    redact,
    report,
)
from ecrstream.cli.options import (
    CopyOptions,
    DemoOptions,
    LocalEcrOptions,
    Options,
    PushOptions,
    UploadOptions,
)
from ecrstream.cli.parser import build_parser, parse
from ecrstream.cli.units import parse_size

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main", "parse_size"]

_logger = logging.getLogger("ecrstream")


class _Redacting(logging.Filter):
    """No credentials in the log either."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _Handler(logging.StreamHandler[TextIO]):
    """The command's handler on stderr (one, however often main() runs in a process)."""


def _configure_logging(debug: bool) -> None:
    for old in [h for h in _logger.handlers if isinstance(h, _Handler)]:
        _logger.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.addFilter(_Redacting())
    if debug:
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("ecrstream: %(levelname)s: %(message)s"))
    _logger.addHandler(handler)
    # Only ecrstream's own loggers: botocore's debug log shows request headers.
    _logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    _logger.propagate = False
    # Other libraries' warnings (botocore's, aiohttp's) went to Python's last-resort handler,
    # unredacted and unprefixed, beside the command's own error line that says the same
    # (botocore's "credentials are still expired"): their errors only, redacted and named
    # by their logger; with --debug their warnings too.
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    others = _Handler(sys.stderr)
    others.addFilter(_Redacting())
    others.setLevel(logging.WARNING if debug else logging.ERROR)
    others.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root.addHandler(others)


def _context(options: Options) -> Context:
    if isinstance(options, DemoOptions | LocalEcrOptions):
        return Context(options.command)
    return Context(
        options.command,
        repository=options.repository,
        registry_id=options.aws.registry_id,
        endpoint_url=options.aws.endpoint_url,
        region=options.aws.region,
        source=options.source if isinstance(options, CopyOptions) else None,
    )


def _dispatch(options: Options, context: Context) -> int:
    # Each command's module is imported when it runs: push needs the image reader, demo the
    # local endpoint; upload-layer neither.
    if isinstance(options, UploadOptions):
        from ecrstream.cli import upload

        return upload.run(options, context)
    if isinstance(options, PushOptions):
        from ecrstream.cli import push

        return push.run(options, context)
    if isinstance(options, CopyOptions):
        from ecrstream.cli import copy

        return copy.run(options, context)
    if isinstance(options, LocalEcrOptions):
        from ecrstream.cli import local_ecr

        return local_ecr.run(options, context)
    from ecrstream.cli import demo

    return demo.run(options, context)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``--help``).

    Run as the program (``argv`` None: the ``ecrstream`` script, ``python -m ecrstream``),
    it hands the collector's objects to ``gc.freeze()`` once the command is done, so the
    interpreter's exit does not walk botocore's and aiohttp's objects again (about 0.25 s of
    CPU and of wall time per command on this project's 2-core test machine).
    """
    try:
        return _main(argv)
    finally:
        if argv is None:
            import gc

            gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse(parser, words)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if options is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(options.output.debug)
    _logger.debug("ecrstream %s: %s", options.command, options)
    context = _context(options)
    try:
        return _dispatch(options, context)
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
        return report(exc, context, debug=options.output.debug)
