"""``ecrstream demo``: everything on a local ECR endpoint (no AWS account, no network).

Starts the endpoint in a child process (``ecrstream.local.child.spawn``: what ``ecrstream
local-ecr`` serves), uploads a layer of random bytes, confirms it with
BatchCheckLayerAvailability, cancels a second upload half way with a token from its
``on_progress`` and resumes it from the checkpoint file, then writes a small OCI image of
three layers and pushes it with ``push_image``. The child stops with the demo, however it
ends. Its speeds are the local endpoint's (moto, on the same cores), not the uploader's: it
says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenSource,
    OperationCanceledError,
)
from ecrstream.cli.errors import EXIT_INTERRUPTED, EXIT_OK, Context, Failure
from ecrstream.cli.options import DemoOptions, OutputOptions
from ecrstream.cli.parser import CHECKPOINT_SUFFIX
from ecrstream.cli.progress import LayerProgress, PartCounter
from ecrstream.cli.runner import Runner, Stopped, run_command
from ecrstream.cli.units import MIB, format_bytes, mb_per_s, plural
from ecrstream.client import EcrClient
from ecrstream.models import (
    BatchCheckLayerAvailabilityRequest,
    UploadCheckpoint,
    UploadProgress,
)
from ecrstream.uploader import LayerUploader

__all__ = ["run", "write_oci_layout"]

_REPOSITORY = "ecrstream-demo"
_IMAGE_TAG = "demo"
_IMAGE_LAYERS = (3 * MIB, 2 * MIB, MIB)  # a small image: three layers, one blob each
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_PUSH_CONCURRENCY = 1  # layers pushed at once (see push: the demo's peak RSS)

SPEED_NOTE = (
    "why these speeds: the endpoint here is moto, in a child process on this machine (behind a"
    " proxy that checks every part); it decodes, checks and stores each part on the same CPU"
    " cores as the uploader, in one Python interpreter of its own, so it, not the uploader,"
    " sets the pace. Against ECR, or the benchmark's sink, the uploader sends hundreds of"
    " MB/s (README: Performance)."
)


def _random_file(path: Path, size: int, token: CancellationToken) -> str:
    """Write ``size`` random bytes to ``path``; returns their ``sha256:`` digest."""
    digest = hashlib.sha256()
    chunk = 8 * MIB
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            token.throw_if_cancellation_requested()
            data = os.urandom(min(chunk, remaining))
            digest.update(data)
            handle.write(data)
            remaining -= len(data)
    return "sha256:" + digest.hexdigest()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(index: int, size: int, rng: random.Random) -> bytes:
    """A layer: an uncompressed tar holding one file of ``size`` random bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(f"demo/layer-{index}.bin")
        info.size = size
        info.mtime = 0
        archive.addfile(info, io.BytesIO(rng.randbytes(size)))
    return buffer.getvalue()


def write_oci_layout(folder: Path, layer_sizes: tuple[int, ...], seed: int = 0) -> str:
    """Write an OCI image layout of one image with these layers; returns its manifest digest."""
    rng = random.Random(seed)
    layers = [_layer_tar(index, size, rng) for index, size in enumerate(layer_sizes, 1)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(layer) for layer in layers]},
        }
    ).encode()

    def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": _sha256(data), "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [
                descriptor("application/vnd.oci.image.layer.v1.tar", layer) for layer in layers
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **descriptor(_OCI_MANIFEST, manifest),
                "annotations": {"org.opencontainers.image.ref.name": _IMAGE_TAG},
            }
        ],
    }
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in (config, manifest, *layers):
        (blobs / _sha256(data).removeprefix("sha256:")).write_bytes(data)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps(index))
    return _sha256(manifest)


@dataclass(slots=True)
class _Line:
    """A line of the summary: one upload."""

    label: str
    digest: str
    size: int
    parts: int
    seconds: float
    sent: int
    notes: list[str] = field(default_factory=list)


class _Demo:
    """The demo's steps, each a method; ``lines`` collects the summary."""

    def __init__(self, options: DemoOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.size = options.size
        # The second layer only shows cancel and resume: a quarter is enough, but at least
        # two of ECR's 10 MiB parts, so that there is a half way to stop at.
        self.second_size = max(options.size // 4, 16 * MIB)
        self.lines: list[_Line] = []
        self.image: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if not self.options.output.silent:
            print(text, flush=True)

    async def body(self, runner: Runner) -> int:
        import asyncio
        import importlib.util

        # The endpoint runs in a child process: only check here that it can (no import).
        if any(importlib.util.find_spec(name) is None for name in ("moto", "aiohttp")):
            raise Failure(
                "demo needs the local ECR endpoint: pip install 'ecrstream[local]'"
                " (or run 'python3 run.py demo' in a checkout)"
            )
        from ecrstream.local.child import spawn

        async with spawn([_REPOSITORY], cancellation_token=runner.token) as ecr:
            self.say(
                f"local ECR endpoint: {ecr.endpoint_url} (moto behind a strict proxy,"
                f" process {ecr.pid})"
            )
            self.say(f"created repository {_REPOSITORY!r}")
            first, second = self.workdir / "layer-1.bin", self.workdir / "layer-2.bin"
            token = runner.token
            first_digest = await asyncio.to_thread(_random_file, first, self.size, token)
            second_digest = await asyncio.to_thread(_random_file, second, self.second_size, token)
            self.say(
                f"generated {first.name} ({format_bytes(self.size)}) and {second.name}"
                f" ({format_bytes(self.second_size)}) of random bytes in {self.workdir}"
            )
            client = await runner.client(**ecr.client_kwargs())
            uploader = LayerUploader(client, _REPOSITORY)
            await self.upload(runner, uploader, first, first_digest)
            await self.check(runner, client)
            checkpoint = await self.cancel_half_way(runner, uploader, second)
            await self.resume(runner, uploader, second, second_digest, checkpoint)
            await self.push(runner, client)
        self.summary()
        return EXIT_OK

    async def upload(
        self, runner: Runner, uploader: LayerUploader, path: Path, digest: str
    ) -> None:
        """1. A plain upload, with the progress bar."""
        self.say(f"\n1. upload {path.name}")
        detail = "part " + PartCounter(self.size, 0, None).text(0, 0)
        with runner.display(path.name, self.size, 0, detail) as display:
            progress = LayerProgress(display, self.size)
            started = time.monotonic()
            result = await uploader.upload_file(
                path, cancellation_token=runner.token, on_progress=progress
            )
        seconds = time.monotonic() - started
        if result.digest != digest:
            raise Failure(f"demo: uploaded digest {result.digest} != {digest}")
        self.lines.append(
            _Line("layer 1", result.digest, self.size, result.part_count, seconds, progress.sent)
        )
        self.say(f"   {result.digest}, {plural(result.part_count, 'part')}")

    async def check(self, runner: Runner, client: EcrClient) -> None:
        """2. BatchCheckLayerAvailability says the repository has it."""
        digest = self.lines[0].digest
        check = await client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(_REPOSITORY, (digest,)), runner.token
        )
        layer = check.layers[0] if check.layers else None
        if layer is None or not layer.available:
            raise Failure(f"demo: BatchCheckLayerAvailability does not list {digest}")
        self.say(
            f"2. BatchCheckLayerAvailability: {layer.layer_availability}, {layer.layer_size} bytes"
        )
        self.lines[0].notes.append("confirmed AVAILABLE")

    async def cancel_half_way(
        self, runner: Runner, uploader: LayerUploader, path: Path
    ) -> UploadCheckpoint:
        """3. A second upload whose token is canceled from on_progress at half way."""
        self.say(f"3. upload {path.name}, canceling its token half way")
        halfway = CancellationTokenSource.create_linked_token_source(runner.token)
        size = self.second_size
        try:
            detail = "part " + PartCounter(size, 0, None).text(0, 0)
            with runner.display(path.name, size, 0, detail) as display:
                progress = LayerProgress(display, size)

                def cancel_at_half(update: UploadProgress) -> None:
                    progress(update)
                    if update.bytes_sent * 2 >= size:
                        halfway.cancel()

                await uploader.upload_file(
                    path, cancellation_token=halfway.token, on_progress=cancel_at_half
                )
            raise Failure("demo: the second upload finished before it could be canceled")
        except OperationCanceledError as exc:
            if runner.stopping:
                raise
            checkpoint = exc.checkpoint
        finally:
            halfway.dispose()
        assert isinstance(checkpoint, UploadCheckpoint)
        saved = self.workdir / (path.name + CHECKPOINT_SUFFIX)
        saved.write_text(checkpoint.to_json())
        self.say(
            f"   canceled with {format_bytes(checkpoint.bytes_committed)} in ECR;"
            f" checkpoint saved to {saved.name}"
        )
        return checkpoint

    async def resume(
        self,
        runner: Runner,
        uploader: LayerUploader,
        path: Path,
        digest: str,
        checkpoint: UploadCheckpoint,
    ) -> None:
        """4. Resume from the checkpoint file: the committed bytes are not sent again."""
        self.say("4. resume from the checkpoint")
        saved = self.workdir / (path.name + CHECKPOINT_SUFFIX)
        resume = UploadCheckpoint.from_json(saved.read_text())
        size, committed = self.second_size, checkpoint.bytes_committed
        detail = "part " + PartCounter(size, committed, resume.part_size).text(committed, 0)
        with runner.display(path.name, size, committed, detail) as display:
            progress = LayerProgress(display, size, committed, resume.part_size)
            started = time.monotonic()
            resumed = await uploader.upload_file(
                path, cancellation_token=runner.token, on_progress=progress, resume=resume
            )
        seconds = time.monotonic() - started
        if resumed.digest != digest:
            raise Failure(f"demo: resumed digest {resumed.digest} != {digest}")
        line = _Line("layer 2", resumed.digest, size, resumed.part_count, seconds, progress.sent)
        line.notes.append(f"resumed at {format_bytes(committed)}, not re-sent")
        self.lines.append(line)
        self.say(f"   {resumed.digest}, {plural(resumed.part_count, 'more part')}")

    async def push(self, runner: Runner, client: EcrClient) -> None:
        """5. Write a small OCI image layout and push it with push_image."""
        import asyncio

        from ecrstream import push_image

        folder = self.workdir / "image"
        sizes = _IMAGE_LAYERS
        manifest = await asyncio.to_thread(write_oci_layout, folder, sizes)
        self.say(
            f"5. push_image: an OCI image layout written in {folder.name}/, "
            f"{plural(len(sizes), 'layer')} ({', '.join(format_bytes(s) for s in sizes)})"
        )
        started = time.monotonic()
        # One layer at a time, not push_image's four: each upload holds two part-sized body
        # buffers, and those of the demo's earlier uploads are still resident when the push
        # starts. At 256 MiB the demo peaked at ~257 MiB with four, ~223 with two, ~208 with
        # one; its three small layers take well under a second either way.
        result = await push_image(
            client,
            folder,
            _REPOSITORY,
            tags=(_IMAGE_TAG,),
            cancellation_token=runner.token,
            max_concurrent_layers=_PUSH_CONCURRENCY,
        )
        seconds = time.monotonic() - started
        if result.manifest_digest != manifest:
            raise Failure(f"demo: pushed manifest {result.manifest_digest} != {manifest}")
        self.say(
            f"   {_REPOSITORY}:{_IMAGE_TAG} is {result.manifest_digest}:"
            f" {plural(result.layers_uploaded, 'layer')} and"
            f" {plural(result.configs_uploaded, 'config')} uploaded, then the manifest"
        )
        self.image = {
            "manifest_digest": result.manifest_digest,
            "tag": _IMAGE_TAG,
            "layers_uploaded": result.layers_uploaded,
            "bytes_uploaded": result.bytes_uploaded,
            "seconds": round(seconds, 3),
        }

    def summary(self) -> None:
        self.say("\nsummary (digests match the sha256 of the files):")
        for item in self.lines:
            self.say(
                f"  {item.label}  {item.digest}  {format_bytes(item.size)}"
                f"  {plural(item.parts, 'part')}  {mb_per_s(item.sent, item.seconds):.1f} MB/s  "
                + "; ".join(item.notes)
            )
        if self.image:
            self.say(
                f"  image    {_REPOSITORY}:{_IMAGE_TAG}  {plural(len(_IMAGE_LAYERS), 'layer')}"
                f"  pushed in {self.image['seconds']:.1f} s"
            )
        self.say("\n" + SPEED_NOTE)
        if self.options.output.json:
            layers = [
                {
                    "layer": item.label,
                    "digest": item.digest,
                    "size": item.size,
                    "part_count": item.parts,
                    "mb_per_s": mb_per_s(item.sent, item.seconds),
                    "bytes_sent": item.sent,
                }
                for item in self.lines
            ]
            report = {"repository_name": _REPOSITORY, "layers": layers, "image": self.image}
            print(json.dumps(report), flush=True)


def _return_freed_buffers() -> None:
    """Let glibc hand part-sized buffers back to the system when they are freed.

    Every part passes through buffers of a few MiB. glibc's malloc raises its mmap threshold
    each time such a buffer is freed, so later ones come from the heap and stay resident. A
    fixed 1 MiB threshold keeps them mmapped (and returned on free): with the endpoint in its
    child process, the demo's own peak at 256 MiB was ~208 MiB with it and ~225 MiB
    without. Elsewhere than glibc this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    mallopt(m_mmap_threshold, 1024 * 1024)


def run(options: DemoOptions, context: Context) -> int:
    """Run the demo in a temporary folder; the exit code."""
    _return_freed_buffers()
    # With --json, stdout is only the JSON object: no bar, no lines.
    output = options.output
    quiet = OutputOptions(json=output.json, quiet=output.silent, debug=output.debug)
    with tempfile.TemporaryDirectory(prefix="ecrstream-demo-") as workdir:
        demo = _Demo(options, Path(workdir))
        outcome = run_command(context, demo.body, output=quiet)
    if isinstance(outcome, Stopped):
        print("ecrstream demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return outcome
