"""``ecrstream push``: a whole image, from an OCI layout (folder or tar) or a docker save archive.

Progress: on a terminal a bar over the bytes to upload and one per blob in flight; piped, a
line per part of each blob (the last part's line says the blob is done). Stopped, it says
which blobs are committed (a second push skips them) and which were in flight (they start
over), and prints the command to run again.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ecrstream.cli.checkpoints import program
from ecrstream.cli.errors import EXIT_OK, Context, UsageError, redact
from ecrstream.cli.options import PushOptions
from ecrstream.cli.progress import Display, PartCounter, Rate
from ecrstream.cli.runner import Runner, Stopped, check_endpoint, report_stopped, run_command
from ecrstream.cli.units import format_bytes, mb_per_s, plural
from ecrstream.models import PutImageRequest, validate_registry_id, validate_repository_name

if TYPE_CHECKING:
    from ecrstream import PushImageResult, PushProgress

__all__ = ["PushView", "check_source", "run"]

_GIVE = "give an OCI image layout folder or tar, or a 'docker save' archive"


def _check_folder(path: Path, text: str) -> None:
    try:
        names = set(os.listdir(path))
    except OSError as exc:
        raise UsageError(f"SOURCE: cannot read {text}: {exc.strerror or exc}") from None
    if not names:
        raise UsageError(f"SOURCE: {text} is an empty folder; {_GIVE}")
    if {"oci-layout", "index.json"} <= names or "manifest.json" in names:
        return
    nested = sorted(
        f"{name}/{inner}"
        for name in names
        if (path / name).is_dir()
        for inner in ("index.json", "manifest.json")
        if (path / name / inner).is_file()
    )
    hint = f" (found {', '.join(nested)}: point at that folder)" if nested else ""
    raise UsageError(
        f"SOURCE: {text} is neither an OCI image layout (oci-layout, index.json) nor a"
        f" docker save folder (manifest.json){hint}; {_GIVE}"
    )


def _check_archive(path: Path, text: str, size: int) -> None:
    if not os.access(path, os.R_OK):
        raise UsageError(f"SOURCE: permission denied: {text}")
    if size == 0:
        raise UsageError(f"SOURCE: {text} is empty; {_GIVE}")
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise UsageError(f"SOURCE: cannot read {text}: {exc.strerror or exc}") from None
    if not is_tar:
        raise UsageError(f"SOURCE: {text} is not a tar archive; {_GIVE}")


def check_source(text: str) -> Path:
    """SOURCE as a Path if it can be an image (a layout folder, or a tar); else UsageError.

    Only what makes SOURCE not an image at all is checked here (exit 2); what is wrong inside
    an image (a missing blob, an unsafe member) the library finds (ImageSourceError, exit 1).
    """
    path = Path(text)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(
            f"SOURCE: no such file or folder: {text} (give an OCI image layout folder"
            " or tar, or a 'docker save' archive)"
        ) from None
    except OSError as exc:
        raise UsageError(f"SOURCE: cannot read {text}: {exc.strerror or exc}") from None
    if path.is_dir():
        _check_folder(path, text)
    elif path.is_file():
        _check_archive(path, text, info.st_size)
    else:
        raise UsageError(f"SOURCE: {text} is not a folder or a regular file; {_GIVE}")
    return path


def _short(digest: str) -> str:
    return digest[:19]


@dataclass(slots=True)
class _Blob:
    kind: str
    size: int
    sent: int = 0
    parts: int = 0
    counter: PartCounter | None = None


@dataclass(slots=True)
class PushView:
    """on_progress for push_image: the bars, or a line per part; remembers what is in flight."""

    display: Display
    part_size: int | None = None
    blobs: dict[str, _Blob] = field(default_factory=dict)
    in_flight: dict[str, _Blob] = field(default_factory=dict)
    rate: Rate = field(default_factory=lambda: Rate(0))

    def __call__(self, progress: PushProgress) -> None:
        blob = self._follow(progress)
        self.rate.update(progress.total_bytes_sent)
        layers = f"layers {progress.layers_done}/{progress.layers_total}"
        finished_part = progress.event == "progress" and blob.sent < blob.size
        if progress.event == "done" or finished_part or self.display.has_bar:
            self.display.show(
                progress.total_bytes_sent,
                progress.total_bytes,
                layers,
                lambda: self._line(progress, blob, layers),
            )
        self.display.show_item(
            progress.digest,
            f"  {progress.kind} {progress.digest[7:19]}",
            progress.blob_bytes_sent,
            progress.blob_total_bytes,
            progress.event == "done",
        )

    def _follow(self, progress: PushProgress) -> _Blob:
        blob = self.blobs.get(progress.digest)
        if blob is None:
            blob = _Blob(progress.kind, progress.blob_total_bytes)
            blob.counter = PartCounter(blob.size, 0, self.part_size)
            self.blobs[progress.digest] = blob
        if progress.event == "started":
            self.in_flight[progress.digest] = blob
        elif progress.event == "progress":
            blob.parts += 1
        else:
            self.in_flight.pop(progress.digest, None)
        blob.sent = progress.blob_bytes_sent
        return blob

    def _line(self, progress: PushProgress, blob: _Blob, layers: str) -> str:
        totals = (
            f"{layers}, {format_bytes(progress.total_bytes_sent)} of"
            f" {format_bytes(progress.total_bytes)} sent"
        )
        name = f"{progress.kind} {_short(progress.digest)}"
        if progress.event == "done":
            return f"{name} done ({format_bytes(progress.blob_total_bytes)}); {totals}"
        assert blob.counter is not None
        parts = blob.counter.text(blob.sent, blob.parts)
        return (
            f"{name} part {parts}: {format_bytes(blob.sent)} of {format_bytes(blob.size)};"
            f" {totals}, {self.rate.per_second() / 1e6:.1f} MB/s"
        )


def _named(digests: list[str], blobs: dict[str, _Blob]) -> str:
    return ", ".join(f"{blobs[d].kind} {_short(d)}" if d in blobs else _short(d) for d in digests)


def _stopped(options: PushOptions, stopped: Stopped, view: PushView | None) -> int:
    from ecrstream import PushCanceledError

    error = stopped.error
    committed = list(error.committed_digests) if isinstance(error, PushCanceledError) else []
    blobs = view.blobs if view is not None else {}
    flying = [d for d in (view.in_flight if view is not None else ()) if d not in committed]
    prefix = "ecrstream push:"
    if committed:
        print(
            f"{prefix} {stopped.reason}; {plural(len(committed), 'blob')} committed to"
            f" {options.repository} ({_named(committed, blobs)}): skipped next time",
            file=sys.stderr,
        )
    else:
        print(f"{prefix} {stopped.reason}; no blob committed yet", file=sys.stderr)
    if flying:
        sent = ", ".join(
            f"{format_bytes(blobs[d].sent)} of {format_bytes(blobs[d].size)}" for d in flying
        )
        print(
            f"{prefix} {plural(len(flying), 'blob')} in flight ({_named(flying, blobs)}; {sent}"
            " sent): uploaded again from the start next time",
            file=sys.stderr,
        )
    again = redact(_again(options))
    print(f"{prefix} to finish, run the same command again:", file=sys.stderr)
    print(f"  {again}", file=sys.stderr, flush=True)
    report_stopped(
        options.output, stopped, again, committed_digests=committed, in_flight_digests=flying
    )
    return stopped.exit_code


def _again(options: PushOptions) -> str:
    import shlex

    return shlex.join([*program(), *options.argv])


@dataclass(frozen=True, slots=True)
class _Pushed:
    result: PushImageResult
    seconds: float


def _done(options: PushOptions, pushed: _Pushed) -> int:
    result, seconds = pushed.result, pushed.seconds
    rate = mb_per_s(result.bytes_uploaded, seconds)
    if options.output.json:
        report = {
            "manifest_digest": result.manifest_digest,
            "media_type": result.media_type,
            "tags": list(result.tags),
            "layers_uploaded": result.layers_uploaded,
            "layers_skipped": result.layers_skipped,
            "configs_uploaded": result.configs_uploaded,
            "configs_skipped": result.configs_skipped,
            "bytes_uploaded": result.bytes_uploaded,
            "platform_manifest_digests": list(result.platform_manifest_digests),
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
        sent = (
            f", {format_bytes(result.bytes_uploaded)} at {rate:.1f} MB/s"
            if result.bytes_uploaded
            else ""
        )
        print(
            f"pushed {result.manifest_digest} to {names or options.repository} in"
            f" {seconds:.1f} s: {plural(result.layers_uploaded, 'layer')} uploaded,"
            f" {result.layers_skipped} already there{sent}",
            flush=True,
        )
    return EXIT_OK


def run(options: PushOptions, context: Context) -> int:
    """Run push; the exit code (errors are raised, for the caller to explain)."""
    source = check_source(options.source)
    validate_repository_name(options.repository)
    validate_registry_id(options.aws.registry_id)
    for tag in options.tags:  # the library's rule, before SOURCE is read
        PutImageRequest(options.repository, "{}", image_tag=tag)
    check_endpoint(options.aws.endpoint_url)
    # Imported here: only this command needs it
    from ecrstream import push_image

    views: list[PushView] = []

    async def body(runner: Runner) -> _Pushed:
        client = await runner.client()
        view = PushView(runner.display(source.name, 0), options.part_size)
        views.append(view)
        started = time.monotonic()
        result = await push_image(
            client,
            source,
            options.repository,
            tags=options.tags,
            registry_id=options.aws.registry_id,
            max_concurrent_layers=options.max_concurrent_layers,
            cancellation_token=runner.token,
            on_progress=view,
            part_size=options.part_size,
            image_ref=options.image_ref,
        )
        view.display.close()
        return _Pushed(result, time.monotonic() - started)

    outcome = run_command(
        context, body, output=options.output, aws=options.aws, timeout=options.timeout
    )
    if isinstance(outcome, Stopped):
        return _stopped(options, outcome, views[0] if views else None)
    return _done(options, outcome)
