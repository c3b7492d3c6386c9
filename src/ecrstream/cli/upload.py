"""``ecrstream upload-layer``: one file as one layer blob, stoppable and resumable."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecrstream.cli.checkpoints import (
    checkpoint_path,
    find_resumable,
    load_checkpoint,
    remove_stale,
    resume_command,
    write_checkpoint,
)
from ecrstream.cli.errors import EXIT_OK, Context, UsageError
from ecrstream.cli.options import UploadOptions
from ecrstream.cli.progress import LayerProgress, PartCounter
from ecrstream.cli.runner import Runner, Stopped, check_endpoint, report_stopped, run_command
from ecrstream.cli.units import format_bytes, mb_per_s, plural
from ecrstream.models import (
    LayerUploadResult,
    UploadCheckpoint,
    validate_digest,
    validate_registry_id,
    validate_repository_name,
)
from ecrstream.uploader import LayerUploader

__all__ = ["check_file", "run"]

logger = logging.getLogger("ecrstream.cli")


def check_file(path_text: str) -> Path:
    """FILE as a Path, if it is a non-empty regular file this user may read; else UsageError."""
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


def _say(options: UploadOptions, text: str) -> None:
    if not options.output.quiet:
        print(f"ecrstream upload-layer: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class _Done:
    result: LayerUploadResult
    seconds: float
    sent: int


class _Upload:
    """One run of upload-layer: the body the runner runs, and what it says afterwards."""

    def __init__(self, options: UploadOptions, file: Path, resume: UploadCheckpoint | None) -> None:
        self.options = options
        self.file = file
        self.size = file.stat().st_size
        self.resume = resume
        self.saved: Path | None = None
        self.save_error: OSError | None = None

    async def body(self, runner: Runner) -> _Done:
        options = self.options
        client = await runner.client()
        uploader = LayerUploader(
            client,
            options.repository,
            registry_id=options.aws.registry_id,
            part_size=options.part_size,
        )
        extra: dict[str, Any] = {}
        expected = options.expected_digest
        if options.skip_existing and expected is None and self.resume is None:
            extra["skip_existing"] = True
        resume = self.resume
        already = resume.bytes_committed if resume else 0
        part_size = (resume.part_size if resume else None) or options.part_size
        detail = "part " + PartCounter(self.size, already, part_size).text(already, 0)
        display = runner.display(self.file.name, self.size, already, detail)
        progress = LayerProgress(display, self.size, already, part_size, options.part_size)
        started = time.monotonic()
        result = await uploader.upload_file(
            self.file,
            cancellation_token=runner.token,
            on_progress=progress,
            expected_digest=expected,
            resume=resume,
            **extra,
        )
        display.close()
        return _Done(result, time.monotonic() - started, progress.sent)

    def save(self, stopped: Stopped) -> None:
        """Write the stopped upload's checkpoint (in the loop, before anything is closed)."""
        checkpoint = stopped.error.checkpoint
        if not isinstance(checkpoint, UploadCheckpoint):
            return
        explicit = self.options.checkpoint_file is not None
        try:
            self.saved = write_checkpoint(
                checkpoint, checkpoint_path(self.options, self.file), explicit
            )
        except OSError as exc:
            self.save_error = exc

    def stopped(self, stopped: Stopped) -> int:
        """Say how far it got and how to resume; the exit code."""
        reason = stopped.reason
        checkpoint = stopped.error.checkpoint
        if not isinstance(checkpoint, UploadCheckpoint):
            print(
                f"ecrstream upload-layer: {reason} before the upload started; nothing to resume"
                " (run the same command again)",
                file=sys.stderr,
            )
            report_stopped(self.options.output, stopped, None, checkpoint=None)
            return stopped.exit_code
        print(
            f"ecrstream upload-layer: {reason}; ECR holds"
            f" {format_bytes(checkpoint.bytes_committed)} of {format_bytes(self.size)}"
            f" (upload {checkpoint.upload_id})",
            file=sys.stderr,
        )
        if self.saved is None:
            error = self.save_error
            reason_text = (error.strerror or str(error)) if error else "unknown error"
            print(
                f"ecrstream upload-layer: cannot write the checkpoint to"
                f" {checkpoint_path(self.options, self.file)} ({reason_text}); here it is,"
                " save it to a file and pass it to --resume:",
                file=sys.stderr,
            )
            print(checkpoint.to_json(), file=sys.stderr)
            report_stopped(
                self.options.output,
                stopped,
                None,
                checkpoint=None,
                bytes_committed=checkpoint.bytes_committed,
                upload_id=checkpoint.upload_id,
            )
            return stopped.exit_code
        print(
            f"ecrstream upload-layer: checkpoint written to {self.saved}; to resume, run:",
            file=sys.stderr,
        )
        command = resume_command(self.options, self.file, self.saved)
        print(f"  {command}", file=sys.stderr, flush=True)
        report_stopped(
            self.options.output,
            stopped,
            command,
            checkpoint=str(self.saved),
            bytes_committed=checkpoint.bytes_committed,
            upload_id=checkpoint.upload_id,
        )
        return stopped.exit_code

    def done(self, done: _Done) -> int:
        """Print the result (a line, the digest, or JSON)."""
        options = self.options
        result = done.result
        resumed_from = result.resumed_from
        rate = mb_per_s(done.sent, done.seconds)
        if options.output.json:
            report = {
                "digest": result.digest,
                "size": result.size,
                "upload_id": result.upload_id,
                "part_count": result.part_count,
                "already_existed": result.already_existed,
                "restarted": result.restarted,
                "resumed_from": resumed_from,
                "seconds": round(done.seconds, 3),
                "mb_per_s": rate,
                "repository_name": options.repository,
                "registry_id": options.aws.registry_id,
            }
            print(json.dumps(report), flush=True)
        elif options.output.quiet:
            print(result.digest, flush=True)
        elif result.already_existed and not result.part_count:
            print(
                f"{result.digest} is already in {options.repository}: nothing uploaded", flush=True
            )
        else:
            resumed = f", resumed at {format_bytes(resumed_from)}" if resumed_from else ""
            restarted = ", restarted once (ECR lost the upload)" if result.restarted else ""
            existed = " (the repository already had it)" if result.already_existed else ""
            print(
                f"uploaded {result.digest} ({format_bytes(result.size)}) to {options.repository}"
                f" in {done.seconds:.1f} s, {rate:.1f} MB/s,"
                f" {plural(result.part_count, 'part')}{resumed}{restarted}{existed}",
                flush=True,
            )
        return EXIT_OK


def _validate(options: UploadOptions) -> Path:
    file = check_file(options.file)
    validate_repository_name(options.repository)
    validate_registry_id(options.aws.registry_id)
    if options.expected_digest is not None:
        validate_digest(options.expected_digest, "expected_digest")
    check_endpoint(options.aws.endpoint_url)
    return file


def run(options: UploadOptions, context: Context) -> int:
    """Run upload-layer; the exit code (errors are raised, for the caller to explain)."""
    file = _validate(options)
    resume: UploadCheckpoint | None = None
    resume_file: Path | None = None
    if options.resume is not None:
        resume = load_checkpoint(options.resume)
        resume_file = Path(options.resume)
    elif not options.restart:
        found = find_resumable(options, file)
        if found is not None:
            resume, resume_file = found.checkpoint, found.path
            _say(
                options,
                f"resuming the upload stopped at {format_bytes(resume.bytes_committed)} from"
                f" {found.path} (pass --restart to start over)",
            )
    upload = _Upload(options, file, resume)
    outcome = run_command(
        context,
        upload.body,
        output=options.output,
        aws=options.aws,
        timeout=options.timeout,
        on_stopped=upload.save,
    )
    if isinstance(outcome, Stopped):
        return upload.stopped(outcome)
    if resume_file is not None:
        # The upload is complete: its checkpoint could only fail now (UploadNotFound).
        with contextlib.suppress(OSError):
            resume_file.unlink()
    for path in remove_stale(options, file):
        logger.debug("removed the stale checkpoint %s", path)
    return upload.done(outcome)
