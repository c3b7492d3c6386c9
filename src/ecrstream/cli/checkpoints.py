"""upload-layer's checkpoint files: where they go, reading one, finding one to resume.

A stopped upload writes ``FILE.ecrstream-checkpoint.json`` next to FILE (or in the current
folder if FILE's is read-only; or where --checkpoint-file says). Run again, the same command
finds it there and resumes when it belongs to the same file (path, size, mtime, the whole
file), repository and registry; ``--restart`` starts over instead. Once an upload completes,
a checkpoint of that file left in those places is of no more use and is removed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ecrstream.cli.errors import UsageError, redact
from ecrstream.cli.options import UploadOptions
from ecrstream.cli.parser import CHECKPOINT_SUFFIX
from ecrstream.models import UploadCheckpoint

__all__ = [
    "Found",
    "checkpoint_path",
    "find_resumable",
    "load_checkpoint",
    "program",
    "remove_stale",
    "resume_command",
    "write_checkpoint",
]

_MAX_CHECKPOINT_BYTES = 64 * 1024


def load_checkpoint(path_text: str, option: str = "--resume") -> UploadCheckpoint:
    """The checkpoint in ``path_text``; UsageError naming ``option`` if it is not one."""
    path = Path(path_text)
    with contextlib.suppress(OSError):  # a missing file is reported by the read below
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            # A FIFO or device would block the read (or never end): refuse it up front
            raise UsageError(f"{option}: {path_text} is not a regular file (a checkpoint is)")
        if info.st_size > _MAX_CHECKPOINT_BYTES:
            raise UsageError(
                f"{option}: {path_text} is {info.st_size} bytes; an ecrstream checkpoint is a"
                " small JSON file"
            )
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{option}: no such checkpoint file: {path_text}") from None
    except IsADirectoryError:
        raise UsageError(f"{option}: {path_text} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path_text}: {exc.strerror or exc}") from None
    try:
        return UploadCheckpoint.from_json(text)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{option}: {path_text} is not a usable ecrstream checkpoint ({exc}); run the upload"
            " without --resume to start over"
        ) from None


def _default_places(file: Path) -> list[Path]:
    """Where a stopped upload of ``file`` writes its checkpoint when not told: next to it,
    else (read-only folder) in the current folder."""
    name = file.name + CHECKPOINT_SUFFIX
    places = [file.with_name(name), Path.cwd() / name]
    return list(dict.fromkeys(place.absolute() for place in places))


def checkpoint_path(options: UploadOptions, file: Path) -> Path:
    """Where an interrupted upload writes its checkpoint (see --checkpoint-file's help)."""
    if options.checkpoint_file is not None:
        return Path(options.checkpoint_file)
    if options.resume is not None:
        return Path(options.resume)
    return file.with_name(file.name + CHECKPOINT_SUFFIX)


def _places(options: UploadOptions, file: Path) -> list[Path]:
    if options.checkpoint_file is not None:
        return [Path(options.checkpoint_file)]
    return _default_places(file)


def _of_file(checkpoint: UploadCheckpoint, file: Path) -> bool:
    if checkpoint.source_path is None:
        return False
    return Path(checkpoint.source_path).resolve() == file.resolve()


def _same_version(checkpoint: UploadCheckpoint, file: Path) -> bool:
    """The checkpoint's file, unchanged since: size, mtime, and the whole file uploaded."""
    info = file.stat()
    return (
        _of_file(checkpoint, file)
        and checkpoint.source_size == info.st_size
        and checkpoint.source_mtime_ns == info.st_mtime_ns
        and checkpoint.source_offset == 0
        and checkpoint.source_length in (None, info.st_size)
    )


def _for_target(checkpoint: UploadCheckpoint, options: UploadOptions) -> bool:
    return (
        checkpoint.repository_name == options.repository
        and checkpoint.registry_id == options.aws.registry_id
    )


@dataclass(frozen=True, slots=True)
class Found:
    """A checkpoint file to resume from, found where the command writes them."""

    path: Path
    checkpoint: UploadCheckpoint


def _read_quietly(path: Path) -> UploadCheckpoint | None:
    """The checkpoint at ``path``, or None if there is none or it is not usable."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_CHECKPOINT_BYTES:
            return None
        return UploadCheckpoint.from_json(path.read_bytes())
    except (OSError, ValueError, TypeError):
        return None


def find_resumable(options: UploadOptions, file: Path) -> Found | None:
    """The checkpoint of this upload (same file version, repository and registry), if any."""
    for path in _places(options, file):
        checkpoint = _read_quietly(path)
        if (
            checkpoint is not None
            and _same_version(checkpoint, file)
            and _for_target(checkpoint, options)
        ):
            return Found(path, checkpoint)
    return None


def remove_stale(options: UploadOptions, file: Path, keep: Path | None = None) -> list[Path]:
    """Remove the checkpoints of ``file`` an upload just made useless; the paths removed.

    Stale: of this file, and for this repository and registry (the upload is done) or of an
    older version of the file (it can never be resumed). ``keep`` is never removed.
    """
    removed = []
    for path in _places(options, file):
        if keep is not None and path.absolute() == keep.absolute():
            continue
        checkpoint = _read_quietly(path)
        if checkpoint is None or not _of_file(checkpoint, file):
            continue
        if _for_target(checkpoint, options) or not _same_version(checkpoint, file):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def write_checkpoint(checkpoint: UploadCheckpoint, preferred: Path, explicit: bool) -> Path:
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


def program() -> list[str]:
    """How this command was started, to print a command that runs it again."""
    argv0 = sys.argv[0] if sys.argv else ""
    name = Path(argv0).name
    if name.startswith("ecrstream") and not name.endswith(".py"):
        found = shutil.which(name)
        if found and Path(found).resolve() == Path(argv0).resolve():
            return [name]
        return [str(Path(argv0).resolve())]
    return [sys.executable, "-m", "ecrstream"]


def resume_command(options: UploadOptions, file: Path, checkpoint: Path) -> str:
    """The command line that resumes from ``checkpoint`` (credentials redacted)."""
    aws = options.aws
    words = [*program(), "upload-layer", str(file.resolve()), "--repository", options.repository]
    for option, value in (
        ("--region", aws.region),
        ("--profile", aws.profile),
        ("--endpoint-url", aws.endpoint_url),
        ("--registry-id", aws.registry_id),
        ("--ca-bundle", aws.ca_bundle),
        ("--part-size", options.part_size),
        ("--expected-digest", options.expected_digest),
        ("--timeout", options.timeout),
    ):
        if value is not None:
            words += [option, str(value)]
    flags = (
        ("--no-verify-ssl", aws.no_verify_ssl),
        ("--json", options.output.json),
        ("--quiet", options.output.quiet),
        ("--debug", options.output.debug),
    )
    words += [flag for flag, given in flags if given]
    words += ["--resume", str(checkpoint)]
    return redact(shlex.join(words))
