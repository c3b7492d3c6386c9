#!/usr/bin/env python3
"""Registry to ECR: ``ecrstream copy`` against the plain copy loop a user writes, and skopeo.

    .venv/bin/python benchmarks/bench_copy.py [--images single,multi] [--single-size 1GiB]
        [--total 1GiB] [--layers 12] [--runs 3] [--part-size 10MiB]
        [--variants ecrstream,loop,skopeo] [--verify]

Two images (``--images``): ``single``, one layer of ``--single-size`` random bytes, and
``multi``, ``--layers`` layers growing geometrically from ``--smallest`` to whatever makes
``--total`` (12 layers in 1 GiB: 1 MiB to about 430 MiB). They are made once as OCI layouts
(bench_image.ensure_layout) and pushed into a local CNCF distribution registry
(``docker-registry``, started by tests/registry_server.py on 127.0.0.1 over plain HTTP) whose
storage stays in ``--data-dir``, so later runs only start it again. Every run is a fresh
process, timed whole from outside (interpreter start to exit, peak RSS and CPU by ``wait4``):

- ``ecrstream``: ``python -m ecrstream copy HOST/NAME:bench --src-plain-http --repository R
  --json`` into the sink (benchmarks/sink.py) over HTTPS (a throwaway trustme CA trusted
  through AWS_CA_BUNDLE), the part size the sink answers, as ECR does;
- ``loop``: image_variants.copy_loop, the loop a user writes with urllib3 and boto3 (Range GET
  of a part, ``upload_layer_part``, one at a time; ``complete_layer_upload``; ``put_image``),
  into the same sink;
- ``skopeo`` (a reference line only: registry to registry, no ECR protocol): ``skopeo copy``
  from the same source registry into a second, empty ``docker-registry`` started for the run.

Each round runs every variant once per image, in an order that rotates from round to round,
each into a fresh repository. Each run is checked: the sink accepted exactly the image's blob
bytes, completed each blob under its digest and size, and stored the manifest digest under the
tag; for skopeo the destination registry serves the same manifest digest and every blob at its
size. ``--verify`` makes the sink hash every part and refuse a wrong digest, and reads skopeo's
blobs back and hashes them. Prints a Markdown table (medians; ratios are medians over rounds of
the paired times) and writes everything to benchmarks/results/bench-copy-<time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # registry_server.py, shared with the tests

import bench  # noqa: E402  (sibling modules, importable once the path is set)
import bench_image  # noqa: E402
import image_variants  # noqa: E402
import registry_server  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
VARIANTS = ("ecrstream", "loop", "skopeo")
IMAGES = ("single", "multi")
TAG = "bench"
SKOPEO = "skopeo"
# Accept headers for the manifest, as a client of an OCI or docker v2 image sends them.
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json,"
    " application/vnd.docker.distribution.manifest.v2+json"
)


# The source registry ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Image:
    """An image in the source registry: where it is and what a copy of it must produce."""

    kind: str  # "single" or "multi"
    repository: str  # in the source registry
    manifest_digest: str
    blob_bytes: int  # layers and config
    blobs: dict[str, int]  # digest -> size, the config included
    sizes: list[int]

    def reference(self, host: str) -> str:
        return f"{host}/{self.repository}:{TAG}"

    @property
    def label(self) -> str:
        if len(self.sizes) == 1:
            return f"1 layer, {bench.format_size(self.sizes[0])}"
        return (
            f"{len(self.sizes)} layers, {bench.format_size(sum(self.sizes))}"
            f" ({self.sizes[0] / MIB:.0f} to {self.sizes[-1] / MIB:.0f} MiB)"
        )


def _open(request: urllib.request.Request | str, timeout: float = 60) -> Any:
    return urllib.request.urlopen(request, timeout=timeout)  # plain HTTP to 127.0.0.1 only


def _head(url: str, accept: str | None = None) -> dict[str, str] | None:
    """The headers of a HEAD answer, or None on 404."""
    request = urllib.request.Request(url, method="HEAD", headers={"Accept": accept or "*/*"})
    try:
        with _open(request) as response:
            return dict(response.headers)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _push_blob_file(base: str, repository: str, digest: str, path: Path) -> None:
    """A monolithic upload (POST, then PUT of the file, streamed from disk)."""
    if _head(f"{base}/v2/{repository}/blobs/{digest}") is not None:
        return
    post = urllib.request.Request(f"{base}/v2/{repository}/blobs/uploads/", method="POST")
    with _open(post) as response:
        location = urllib.parse.urljoin(base, response.headers["Location"])
    separator = "&" if "?" in location else "?"
    with open(path, "rb") as file:
        put = urllib.request.Request(
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            data=file,
            method="PUT",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )
        with _open(put, timeout=600) as response:
            if response.status != 201:
                raise RuntimeError(f"seeding {digest}: HTTP {response.status}")


def ensure_image(
    server: registry_server.RegistryServer, data_dir: Path, kind: str, sizes: list[int]
) -> Image:
    """The image of ``sizes`` in the source registry, seeded once from its OCI layout."""
    key = hashlib.sha256(json.dumps(sizes).encode()).hexdigest()[:12]
    repository = f"bench-copy/{kind}-{len(sizes)}-{sum(sizes)}-{key}"
    # Beside the storage, not in it: what was seeded, checked against the registry each time.
    facts_path = server.root.parent / f"{repository.replace('/', '_')}.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
    headers = _head(f"{server.base_url}/v2/{repository}/manifests/{TAG}", MANIFEST_ACCEPT)
    if (
        facts is None
        or headers is None
        or headers.get("Docker-Content-Digest") != facts["manifest_digest"]
    ):
        layout = bench_image.ensure_layout(data_dir, sizes)
        print(f"bench_copy: seeding {repository} into the source registry", flush=True)
        blob_dir = layout.path / "blobs" / "sha256"
        manifest_bytes = (blob_dir / layout.manifest_digest.removeprefix("sha256:")).read_bytes()
        manifest = json.loads(manifest_bytes)
        blobs = {b["digest"]: b["size"] for b in [manifest["config"], *manifest["layers"]]}
        for digest in blobs:
            _push_blob_file(
                server.base_url, repository, digest, blob_dir / digest.removeprefix("sha256:")
            )
        put = urllib.request.Request(
            f"{server.base_url}/v2/{repository}/manifests/{TAG}",
            data=manifest_bytes,
            method="PUT",
            headers={"Content-Type": manifest["mediaType"]},
        )
        with _open(put) as response:
            if response.headers.get("Docker-Content-Digest") != layout.manifest_digest:
                raise RuntimeError(f"seeding {repository}: the registry changed the digest")
        facts = {"manifest_digest": layout.manifest_digest, "blobs": blobs}
        facts_path.write_text(json.dumps(facts))
    image = Image(
        kind,
        repository,
        facts["manifest_digest"],
        sum(facts["blobs"].values()),
        facts["blobs"],
        sizes,
    )
    _warm_registry_cache(server, image)
    return image


def _warm_registry_cache(server: registry_server.RegistryServer, image: Image) -> None:
    # Every variant should read the source's blobs from the page cache, the first one too.
    buffer = bytearray(16 * MIB)
    blobs = server.root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for digest in image.blobs:
        hexdigest = digest.removeprefix("sha256:")
        with open(blobs / hexdigest[:2] / hexdigest / "data", "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc (0 without it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Runs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    runs: int
    part_size: int
    max_concurrent_layers: int
    variant_names: list[str]
    images: list[str]
    wait_quiet_s: float
    timeout_floor_s: float
    verify: bool
    work_dir: Path  # skopeo's destination registries, the children's cwd


def _child_env(sink: bench.Sink, docker_config: Path) -> dict[str, str]:
    env = bench_image._child_env(sink.ca_bundle)
    # No docker login of this machine's: the source is anonymous, as for the loop.
    env["DOCKER_CONFIG"] = str(docker_config)
    return env


def _command(
    variant: str,
    reference: str,
    sink: bench.Sink,
    repository: str,
    config: Config,
    policy: Path,
    destination: str | None,
) -> list[str]:
    if variant == "ecrstream":
        return [
            sys.executable,
            "-m",
            "ecrstream",
            "copy",
            reference,
            "--src-plain-http",
            "--repository",
            repository,
            "--tag",
            TAG,
            "--endpoint-url",
            sink.url,
            "--region",
            image_variants.REGION,
            "--max-concurrent-layers",
            str(config.max_concurrent_layers),
            "--json",
        ]
    if variant == "loop":
        return [
            sys.executable,
            str(HERE / "image_variants.py"),
            "loop",
            reference,
            "--endpoint-url",
            sink.url,
            "--repository",
            repository,
            "--tag",
            TAG,
            "--part-size",
            str(config.part_size),
        ]
    assert destination is not None
    return [
        SKOPEO,
        "--policy",
        str(policy),
        "copy",
        # Without it skopeo gzips the uncompressed layers on the way (new digests, and CPU
        # that no ECR client spends): the same bytes, as ecrstream and the loop copy them.
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-no-creds",
        "--dest-no-creds",
        f"docker://{reference}",
        f"docker://{destination}/{repository}:{TAG}",
    ]


def run_once(
    sink: bench.Sink,
    source: registry_server.RegistryServer,
    variant: str,
    image: Image,
    config: Config,
) -> dict[str, Any]:
    """One copy in a fresh process; wall time, peak RSS and CPU of that process alone."""
    waited_s = bench.wait_for_quiet(config.wait_quiet_s) if config.wait_quiet_s > 0 else 0.0
    repository = f"bench-copy/{variant}-{uuid.uuid4().hex[:12]}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{variant}-", dir=config.work_dir))
    docker_config = run_dir / "docker-config"
    docker_config.mkdir()
    policy = run_dir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    destination: registry_server.RegistryServer | None = None
    try:
        if variant == "skopeo":
            # A fresh, empty registry: nothing to skip, nothing left behind after the run.
            destination = registry_server.start_registry("destination", run_dir)
        command = _command(
            variant,
            image.reference(source.host),
            sink,
            repository,
            config,
            policy,
            destination.host if destination else None,
        )
        timeout = max(config.timeout_floor_s, image.blob_bytes / 2e6 + 30)
        before = sink.stats()
        source_before = process_cpu_s(source.process.pid)
        sink_pid_cpu = destination.process.pid if destination else None
        destination_before = process_cpu_s(sink_pid_cpu) if sink_pid_cpu else 0.0
        busy_before = bench._machine_busy_s()
        run = bench_image.time_process(command, _child_env(sink, docker_config), timeout, run_dir)
        busy_s = bench._machine_busy_s() - busy_before
        source_cpu_s = process_cpu_s(source.process.pid) - source_before
        after = sink.stats()
        if variant == "ecrstream":
            record = _ecrstream_result(run)
        elif variant == "loop":
            record = run.result(variant, image_variants.RESULT_PREFIX)
        else:
            record = _skopeo_result(run)
        if destination is not None:
            sink_cpu_s = process_cpu_s(destination.process.pid) - destination_before
        else:
            sink_cpu_s = (after["cpu_user_s"] + after["cpu_system_s"]) - (
                before["cpu_user_s"] + before["cpu_system_s"]
            )
        usage = run.usage
        client_cpu_s = usage.ru_utime + usage.ru_stime
        accepted = after["layer_bytes_accepted"] - before["layer_bytes_accepted"]
        record.update(
            variant=variant,
            image=image.kind,
            repository=repository,
            wall_s=run.wall_s,
            peak_rss_kib=usage.ru_maxrss,
            cpu_user_s=usage.ru_utime,
            cpu_system_s=usage.ru_stime,
            sink_cpu_s=sink_cpu_s,
            source_cpu_s=source_cpu_s,
            sink_requests=after["requests"] - before["requests"],
            layer_bytes_accepted=accepted,
            other_cores=max(0.0, busy_s - client_cpu_s - sink_cpu_s - source_cpu_s) / run.wall_s,
            waited_for_quiet_s=waited_s,
        )
        if destination is None:
            # What the sink completed in this repository (hashed by it with --verify).
            completed = [c for c in after["completed"] if c["repositoryName"] == repository]
            record["blobs_completed"] = {c["layerDigest"]: c["layerSize"] for c in completed}
            record["blobs_verified_by_sink"] = bool(completed) and all(
                c["verified"] for c in completed
            )
        if record["status"] == "ok":
            if destination is not None:
                error = _destination_error(destination, repository, image, config.verify)
            else:
                error = bench_image.sink_image_error(
                    after, repository, TAG, accepted, image.blob_bytes, image.manifest_digest
                ) or _completed_error(record["blobs_completed"], image)
            if error:
                record.update(status="error", error=error)
            elif destination is not None:
                record["destination_blobs_checked"] = len(image.blobs)
                record["destination_blobs_hashed"] = len(image.blobs) if config.verify else 0
        if record["status"] != "ok":
            record["stderr_tail"] = run.stderr[-2000:]
        return record
    finally:
        if destination is not None:
            destination.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _ecrstream_result(run: bench_image.ProcessRun) -> dict[str, Any]:
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        return {
            "status": "error",
            "error": f"exit {run.returncode}; stderr: {run.stderr[-2000:]}",
        }
    report = json.loads(lines[-1])
    return {
        "status": "ok",
        "manifest_digest": report["manifest_digest"],
        "bytes_uploaded": report["bytes_moved"],
        "push_s": report["seconds"],
    }


def _skopeo_result(run: bench_image.ProcessRun) -> dict[str, Any]:
    if run.returncode != 0:
        return {
            "status": "error",
            "error": f"skopeo exit {run.returncode}: {run.stderr[-2000:]}",
        }
    return {"status": "ok"}


def _completed_error(completed: dict[str, int], image: Image) -> str | None:
    """Unless the sink completed exactly the image's blobs (digest: size) in the run's
    repository (hashing the parts when started with --verify), what differs."""
    if completed != image.blobs:
        wrong = {d: s for d, s in completed.items() if image.blobs.get(d) != s}
        missing = sorted(set(image.blobs) - set(completed))
        return f"the sink completed wrong blobs {wrong} and lacks {missing}"
    return None


def _destination_error(
    destination: registry_server.RegistryServer, repository: str, image: Image, verify: bool
) -> str | None:
    """What skopeo's destination lacks: the manifest digest under the tag, each blob (at its
    size; hashed back with ``verify``)."""
    base = f"{destination.base_url}/v2/{repository}"
    headers = _head(f"{base}/manifests/{TAG}", MANIFEST_ACCEPT)
    digest = headers.get("Docker-Content-Digest") if headers else None
    if digest != image.manifest_digest:
        return f"the destination has {digest} under {TAG}, not {image.manifest_digest}"
    for blob, size in image.blobs.items():
        if not verify:
            found = _head(f"{base}/blobs/{blob}")
            if found is None or int(found.get("Content-Length", -1)) != size:
                return f"the destination lacks {blob} ({found})"
            continue
        hasher = hashlib.sha256()
        with _open(f"{base}/blobs/{blob}", timeout=600) as response:
            while chunk := response.read(4 * MIB):
                hasher.update(chunk)
        if "sha256:" + hasher.hexdigest() != blob:
            return f"the destination's {blob} hashes to sha256:{hasher.hexdigest()}"
    return None


def run_all(
    images: list[Image], source: registry_server.RegistryServer, config: Config
) -> list[dict[str, Any]]:
    case = bench.Case("https", config.part_size)
    tls_dir = tempfile.TemporaryDirectory(prefix="bench-copy-tls-")
    tls = bench.make_tls_files(Path(tls_dir.name))
    sink = bench.Sink(case, verify=config.verify, tls=tls)
    records = []
    try:
        names = config.variant_names
        for round_index in range(config.runs):
            shift = round_index % len(names)
            for image in images:
                for variant in names[shift:] + names[:shift]:
                    record = run_once(sink, source, variant, image, config)
                    record["round"] = round_index
                    records.append(record)
                    _print_progress(record)
    finally:
        sink.close()
        tls_dir.cleanup()
    return records


def _print_progress(record: dict[str, Any]) -> None:
    head = f"bench_copy: round {record['round'] + 1} {record['image']:<6} {record['variant']:<9}"
    if record["status"] != "ok":
        print(f"{head} {record['status']}: {record.get('error', '')[:300]}", flush=True)
        return
    disturbed = " (DISTURBED)" if record["other_cores"] > bench.DISTURBED_CORES else ""
    copy_clock = f" ({record['push_s']:6.2f} s copy)" if "push_s" in record else ""
    print(
        f"{head} {record['wall_s']:6.2f} s whole process{copy_clock}, peak RSS"
        f" {record['peak_rss_kib'] / 1024:4.0f} MiB, CPU"
        f" {record['cpu_user_s'] + record['cpu_system_s']:5.2f} s, sink CPU"
        f" {record['sink_cpu_s']:4.2f} s, source CPU {record['source_cpu_s']:4.2f} s,"
        f" other {record['other_cores']:.2f} cores{disturbed}",
        flush=True,
    )


# Summary ----------------------------------------------------------------------------------


def summarize(
    records: list[dict[str, Any]], images: list[Image], config: Config
) -> list[dict[str, Any]]:
    """One row per image and variant: medians over its successful runs, paired ratios."""
    rows = []
    for image in images:
        mine = [r for r in records if r["image"] == image.kind]
        for variant in config.variant_names:
            runs = [r for r in mine if r["variant"] == variant]
            ok = [r for r in runs if r["status"] == "ok"]
            row: dict[str, Any] = {
                "image": image.kind,
                "image_label": image.label,
                "blob_bytes": image.blob_bytes,
                "variant": variant,
                "runs_ok": len(ok),
                "runs": len(runs),
            }
            if ok:
                wall = statistics.median(r["wall_s"] for r in ok)
                clocks = [r["push_s"] for r in ok if "push_s" in r]
                row.update(
                    wall_s_median=wall,
                    mb_per_s_whole_process=image.blob_bytes / wall / 1e6,
                    copy_s_median=statistics.median(clocks) if clocks else None,
                    peak_rss_mib_median=statistics.median(r["peak_rss_kib"] for r in ok) / 1024,
                    cpu_s_median=statistics.median(r["cpu_user_s"] + r["cpu_system_s"] for r in ok),
                    sink_cpu_s_median=statistics.median(r["sink_cpu_s"] for r in ok),
                    source_cpu_s_median=statistics.median(r["source_cpu_s"] for r in ok),
                    other_cores_median=statistics.median(r["other_cores"] for r in ok),
                )
                # Their seconds over ours, in the same round: > 1 means this row is faster.
                for baseline in ("loop", "skopeo"):
                    theirs = [r for r in mine if r["variant"] == baseline]
                    if baseline != variant and theirs:
                        row[f"paired_ratio_to_{baseline}"] = bench._paired_ratio(
                            ok, theirs, lambda r: 1 / r["wall_s"]
                        )
            rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| image | variant | whole process s | x loop | vs skopeo | MB/s whole process "
        "| copy clock s | client CPU s | peak RSS MiB | sink CPU s | source CPU s | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    for row in rows:
        head = f"| {row['image_label']} | {row['variant']}"
        if not row["runs_ok"]:
            lines.append(f"{head} | error | | | | | | | | | 0/{row['runs']} |")
            continue
        copy_s = row["copy_s_median"]
        lines.append(
            f"{head} | {row['wall_s_median']:.2f}"
            f" | {ratio(row.get('paired_ratio_to_loop'))}"
            f" | {ratio(row.get('paired_ratio_to_skopeo'))}"
            f" | {row['mb_per_s_whole_process']:.1f}"
            f" | {f'{copy_s:.2f}' if copy_s is not None else '-'}"
            f" | {row['cpu_s_median']:.2f} | {row['peak_rss_mib_median']:.0f}"
            f" | {row['sink_cpu_s_median']:.2f} | {row['source_cpu_s_median']:.2f}"
            f" | {row['runs_ok']}/{row['runs']} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per image, ecrstream against the target (>= 5x the loop) and against skopeo."""
    lines = []
    for row in rows:
        loop, skopeo = row.get("paired_ratio_to_loop"), row.get("paired_ratio_to_skopeo")
        if row["variant"] != "ecrstream" or not (loop or skopeo):
            continue
        parts = []
        if loop:
            verdict = "meets" if loop >= 5 else "misses"
            parts.append(f"{loop:.2f}x as fast as the loop ({verdict} the 5x target)")
        if skopeo:
            parts.append(f"takes {1 / skopeo:.2f} times skopeo's registry-to-registry time")
        lines.append(f"{row['image_label']}: ecrstream {', and '.join(parts)}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", default=",".join(IMAGES), help="single, multi or both")
    parser.add_argument("--single-size", type=bench.parse_size, default=GIB, help="one layer")
    parser.add_argument("--total", type=bench.parse_size, default=GIB, help="multi: all layers")
    parser.add_argument("--layers", type=int, default=12, help="multi: how many layers")
    parser.add_argument("--smallest", type=bench.parse_size, default=MIB, help="multi: smallest")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each runs every variant)")
    parser.add_argument(
        "--part-size",
        type=bench.parse_size,
        default=10 * MIB,
        help="what the sink's InitiateLayerUpload answers (ecrstream uses it) and the loop sends",
    )
    parser.add_argument("--max-concurrent-layers", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--verify",
        action="store_true",
        help="the sink hashes every part and checks each digest; skopeo's blobs are read back",
    )
    bench.add_run_arguments(
        parser, "where the image layouts and the source registry's storage are kept between runs"
    )
    args = parser.parse_args(argv)
    variant_names = bench.parse_variants(parser, args.variants, VARIANTS)
    image_kinds = [v.strip() for v in args.images.split(",") if v.strip()]
    if not image_kinds or set(image_kinds) - set(IMAGES):
        parser.error(f"--images: {args.images!r}: a comma-separated subset of {IMAGES}")
    if args.runs < 1:
        parser.error("--runs: must be >= 1")
    if not 5 * MIB <= args.part_size <= 20 * MIB:
        parser.error("--part-size: ECR takes parts of 5 MiB to 20 MiB")
    if "skopeo" in variant_names and shutil.which(SKOPEO) is None:
        parser.error("--variants skopeo: skopeo is not on PATH (the Debian package skopeo)")
    try:
        sizes = {
            "single": [args.single_size],
            "multi": bench_image.layer_sizes(args.total, args.layers, args.smallest),
        }
    except ValueError as exc:
        parser.error(f"--total/--layers/--smallest: {exc}")
    started = time.time()
    environment = bench.environment()
    environment["skopeo"] = shutil.which(SKOPEO) or "not installed"
    data_dir: Path = args.data_dir
    (data_dir / "copy-registry").mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="copy-runs-", dir=data_dir))
    config = Config(
        runs=args.runs,
        part_size=args.part_size,
        max_concurrent_layers=args.max_concurrent_layers,
        variant_names=variant_names,
        images=image_kinds,
        wait_quiet_s=args.wait_quiet,
        timeout_floor_s=args.timeout_floor,
        verify=args.verify,
        work_dir=work_dir,
    )
    source_dir = Path(tempfile.mkdtemp(prefix="source-", dir=work_dir))
    try:
        source = registry_server.start_registry(
            "source", source_dir, storage=data_dir / "copy-registry" / "storage"
        )
    except registry_server.RegistryStartError as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        print(f"bench_copy: {exc}", file=sys.stderr)
        return 2
    try:
        images = [ensure_image(source, data_dir, kind, sizes[kind]) for kind in image_kinds]
        print(
            f"bench_copy: {', '.join(f'{i.kind}: {i.label}' for i in images)}; {config.runs}"
            f" rounds of {', '.join(variant_names)}; {bench.format_size(config.part_size)}"
            f" parts, at most {config.max_concurrent_layers} layers at once",
            flush=True,
        )
        records = run_all(images, source, config)
    finally:
        source.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    rows = summarize(records, images, config)
    table = markdown_table(rows)
    fields = {
        "config": {
            "images": {
                image.kind: {
                    "layer_sizes": image.sizes,
                    "blob_bytes": image.blob_bytes,
                    "manifest_digest": image.manifest_digest,
                    "source_repository": image.repository,
                }
                for image in images
            },
            "runs": config.runs,
            "part_size": config.part_size,
            "max_concurrent_layers": config.max_concurrent_layers,
            "variants": variant_names,
            "verify": config.verify,
        },
        "environment": environment,
        "summary": rows,
        "table_markdown": table,
        "runs": records,
    }
    output = bench.write_report("bench_copy", argv, started, fields, args.output)
    print()
    print(table)
    print()
    for line in verdicts(rows):
        print(line)
    bench.print_other_cores(records)
    print(f"CPU: {environment['cpu_model']} ({environment['cpu_count']} cores)")
    print(f"\nbench_copy: wrote {output}")
    return 1 if any(row["runs_ok"] < row["runs"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
