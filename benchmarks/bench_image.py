#!/usr/bin/env python3
"""Whole images: ``push_image`` against the plain boto3 push loop a user writes, whole process.

    .venv/bin/python benchmarks/bench_image.py [--total 512MiB] [--layers 12] [--runs 5]
        [--part-size 10MiB] [--max-concurrent-layers 4] [--variants ecrstream,boto3]

Builds an OCI image layout (``--layers`` layers of random bytes whose sizes grow
geometrically from ``--smallest`` to whatever makes ``--total``; 1.5GiB gives about 1 MiB to
640 MiB), kept in ``--data-dir`` and reused. Starts the sink (benchmarks/sink.py) in its own
process, then runs ``--runs`` rounds; each round pushes the image once per variant
(benchmarks/image_variants.py, a fresh process each, in an order that rotates from round to
round) into a fresh repository, so nothing is skipped. Measured per run, from outside the
process: wall time from interpreter start to exit, peak RSS and CPU (``wait4``); and the
push's own clock inside it. Each run is checked: the sink accepted exactly the image's blob
bytes and stored the image's manifest digest under its tag. Prints a Markdown table (medians
over the runs; the ratio is the median over rounds of boto3's wall time / ecrstream's in the
same round) and writes everything to benchmarks/results/bench-image-<time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (sibling modules, importable once the path is set)
import image_variants  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


# The image --------------------------------------------------------------------------------


def layer_sizes(total: int, count: int, smallest: int) -> list[int]:
    """``count`` sizes growing geometrically from ``smallest``, adding up to ``total``."""
    if count < 1 or smallest * count > total:
        raise ValueError(f"cannot make {count} layers of at least {smallest} bytes in {total}")
    if count == 1:
        return [total]
    low, high = 1.0, 64.0  # the ratio between neighbours, found by bisection

    def sum_for(ratio: float) -> float:
        return sum(smallest * ratio**n for n in range(count))

    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if sum_for(middle) < total else (low, middle)
    sizes = [int(smallest * low**n) for n in range(count)]
    sizes[-1] += total - sum(sizes)  # exact total; the rest goes to the largest
    return sizes


@dataclass(frozen=True, slots=True)
class Layout:
    """An OCI layout on disk and what a push of it must produce."""

    path: Path
    manifest_digest: str
    blob_bytes: int  # layers and config
    sizes: list[int]


def ensure_layout(data_dir: Path, sizes: list[int]) -> Layout:
    """The OCI layout of an image with layers of ``sizes`` random bytes, made once, reused."""
    key = hashlib.sha256(json.dumps(sizes).encode()).hexdigest()[:12]
    root = data_dir / f"image-{len(sizes)}-{sum(sizes)}-{key}"
    done = root / "bench-complete.json"
    if done.exists():
        facts = json.loads(done.read_text())
        layout = Layout(root, facts["manifest_digest"], facts["blob_bytes"], sizes)
        _warm_page_cache(layout)
        return layout
    print(f"bench_image: writing {len(sizes)} layers, {bench.format_size(sum(sizes))}, to {root}")
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put_blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    layers = []
    for size in sizes:
        hasher = hashlib.sha256()
        temporary = blobs / "incoming"
        with open(temporary, "wb") as file:
            remaining = size
            while remaining:
                chunk = os.urandom(min(remaining, 16 * MIB))
                hasher.update(chunk)
                file.write(chunk)
                remaining -= len(chunk)
        temporary.rename(blobs / hasher.hexdigest())
        layers.append(
            {"mediaType": LAYER_TYPE, "digest": "sha256:" + hasher.hexdigest(), "size": size}
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put_blob(config),
                "size": len(config),
            },
            "layers": layers,
        },
        indent=2,
    ).encode()
    manifest_digest = put_blob(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(manifest),
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    facts = {"manifest_digest": manifest_digest, "blob_bytes": sum(sizes) + len(config)}
    done.write_text(json.dumps(facts))
    return Layout(root, manifest_digest, facts["blob_bytes"], sizes)


def _warm_page_cache(layout: Layout) -> None:
    # Every variant should read from the page cache, the first one of a session included.
    buffer = bytearray(16 * MIB)
    for blob in (layout.path / "blobs" / "sha256").iterdir():
        with open(blob, "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


# Runs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    runs: int
    part_size: int
    max_concurrent_layers: int
    variant_names: list[str]
    wait_quiet_s: float
    timeout_floor_s: float
    scheme: str = "https"


def _child_env(ca_bundle: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # Both variants trust the sink's throwaway CA the standard AWS way.
    env.pop("AWS_CA_BUNDLE", None)
    if ca_bundle:
        env["AWS_CA_BUNDLE"] = ca_bundle
    env.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHMARK",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    return env


@dataclass(frozen=True, slots=True)
class ProcessRun:
    """One child process, timed whole from outside: its output, exit code, wall time and
    the ``wait4`` rusage of that process alone (peak RSS, CPU)."""

    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    usage: Any  # resource.struct_rusage

    def result(self, variant: str, prefix: str) -> dict[str, Any]:
        """The JSON after ``prefix`` on the last stdout line that has it, else an error."""
        record: dict[str, Any] = {
            "variant": variant,
            "status": "error",
            "error": f"no result line; exit {self.returncode}; stderr: {self.stderr[-2000:]}",
        }
        for line in self.stdout.splitlines():
            if line.startswith(prefix):
                record = {"variant": variant, **json.loads(line[len(prefix) :])}
        return record


def time_process(
    command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> ProcessRun:
    """Run ``command`` to its exit (killed after ``timeout`` s), interpreter start to exit."""
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            assert process.stdout is not None
            stdout = process.stdout.read()
            # wait4, not Popen.wait: the rusage of this one child (peak RSS, CPU).
            _, status, usage = os.wait4(process.pid, 0)
            wall_s = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            process.stdout.close()
        finally:
            killer.cancel()
        stderr.seek(0)
        stderr_text = stderr.read()
    return ProcessRun(stdout, stderr_text, process.returncode, wall_s, usage)


def run_once(sink: bench.Sink, variant: str, layout: Layout, config: Config) -> dict[str, Any]:
    """One push in a fresh process; wall time, peak RSS and CPU of that process alone."""
    waited_s = bench.wait_for_quiet(config.wait_quiet_s) if config.wait_quiet_s > 0 else 0.0
    repository = f"bench-image/{variant}-{uuid.uuid4().hex[:12]}"
    tag = "bench"
    command = [
        sys.executable,
        str(HERE / "image_variants.py"),
        variant,
        str(layout.path),
        "--endpoint-url",
        sink.url,
        "--repository",
        repository,
        "--tag",
        tag,
        "--part-size",
        str(config.part_size),
        "--max-concurrent-layers",
        str(config.max_concurrent_layers),
    ]
    before = sink.stats()
    busy_before = bench._machine_busy_s()
    timeout = max(config.timeout_floor_s, layout.blob_bytes / 2e6 + 30)
    run = time_process(command, _child_env(sink.ca_bundle), timeout)
    busy_s = bench._machine_busy_s() - busy_before
    after = sink.stats()
    record = run.result(variant, image_variants.RESULT_PREFIX)
    usage, wall_s, stderr_text = run.usage, run.wall_s, run.stderr
    sink_cpu_s = (after["cpu_user_s"] + after["cpu_system_s"]) - (
        before["cpu_user_s"] + before["cpu_system_s"]
    )
    client_cpu_s = usage.ru_utime + usage.ru_stime
    record.update(
        repository=repository,
        wall_s=wall_s,
        peak_rss_kib=usage.ru_maxrss,
        cpu_user_s=usage.ru_utime,
        cpu_system_s=usage.ru_stime,
        sink_cpu_s=sink_cpu_s,
        requests=after["requests"] - before["requests"],
        layer_bytes_accepted=after["layer_bytes_accepted"] - before["layer_bytes_accepted"],
        other_cores=max(0.0, busy_s - client_cpu_s - sink_cpu_s) / wall_s,
        waited_for_quiet_s=waited_s,
    )
    if record["status"] == "ok":
        error = sink_image_error(
            after,
            repository,
            tag,
            record["layer_bytes_accepted"],
            layout.blob_bytes,
            layout.manifest_digest,
        )
        if error:
            record.update(status="error", error=error)
    if record["status"] != "ok":
        record["stderr_tail"] = stderr_text[-2000:]
    return record


def sink_image_error(
    stats: dict[str, Any],
    repository: str,
    tag: str,
    accepted: int,
    blob_bytes: int,
    manifest_digest: str,
) -> str | None:
    """What is wrong with a push the sink saw (``stats`` after it), or None: the sink must
    have accepted exactly ``blob_bytes`` and stored ``manifest_digest`` under ``tag``."""
    stored = [
        image
        for image in stats["images"]
        if image["repositoryName"] == repository and image.get("imageTag") == tag
    ]
    if accepted != blob_bytes:
        return f"the sink accepted {accepted} blob bytes, the image has {blob_bytes}"
    if [image["imageDigest"] for image in stored] != [manifest_digest]:
        return f"the sink stored {stored}"
    return None


def run_all(layout: Layout, config: Config) -> list[dict[str, Any]]:
    case = bench.Case(config.scheme, config.part_size)
    tls_dir = tempfile.TemporaryDirectory(prefix="bench-image-tls-")
    tls = bench.make_tls_files(Path(tls_dir.name)) if config.scheme == "https" else None
    sink = bench.Sink(case, verify=False, tls=tls)
    records = []
    try:
        names = config.variant_names
        for round_index in range(config.runs):
            shift = round_index % len(names)
            for variant in names[shift:] + names[:shift]:
                record = run_once(sink, variant, layout, config)
                record["round"] = round_index
                records.append(record)
                _print_progress(record)
    finally:
        sink.close()
        tls_dir.cleanup()
    return records


def _print_progress(record: dict[str, Any]) -> None:
    head = f"bench_image: round {record['round'] + 1} {record['variant']:<10}"
    if record["status"] != "ok":
        print(f"{head} {record['status']}: {record.get('error', '')[:300]}", flush=True)
        return
    disturbed = " (DISTURBED)" if record["other_cores"] > bench.DISTURBED_CORES else ""
    print(
        f"{head} {record['wall_s']:6.2f} s whole process ({record['push_s']:6.2f} s push),"
        f" peak RSS {record['peak_rss_kib'] / 1024:4.0f} MiB, CPU"
        f" {record['cpu_user_s'] + record['cpu_system_s']:5.2f} s, sink CPU"
        f" {record['sink_cpu_s']:4.2f} s, other {record['other_cores']:.2f} cores{disturbed}",
        flush=True,
    )


# Summary ----------------------------------------------------------------------------------


def summarize(
    records: list[dict[str, Any]], layout: Layout, config: Config
) -> list[dict[str, Any]]:
    """One row per variant: medians over its successful runs, and the paired ratio."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record["status"] == "ok":
            by_round.setdefault(record["round"], {})[record["variant"]] = record
    rows = []
    for variant in config.variant_names:
        mine = [r for r in records if r["variant"] == variant]
        ok = [r for r in mine if r["status"] == "ok"]
        row: dict[str, Any] = {"variant": variant, "runs_ok": len(ok), "runs": len(mine)}
        if ok:
            row.update(
                wall_s_median=statistics.median(r["wall_s"] for r in ok),
                push_s_median=statistics.median(r["push_s"] for r in ok),
                mb_per_s_whole_process=layout.blob_bytes
                / statistics.median(r["wall_s"] for r in ok)
                / 1e6,
                peak_rss_mib_median=statistics.median(r["peak_rss_kib"] for r in ok) / 1024,
                cpu_s_median=statistics.median(r["cpu_user_s"] + r["cpu_system_s"] for r in ok),
                sink_cpu_s_median=statistics.median(r["sink_cpu_s"] for r in ok),
                requests_median=statistics.median(r["requests"] for r in ok),
                other_cores_median=statistics.median(r["other_cores"] for r in ok),
            )
            if variant != "boto3":
                ratios = [
                    pair["boto3"]["wall_s"] / pair[variant]["wall_s"]
                    for pair in by_round.values()
                    if "boto3" in pair and variant in pair
                ]
                push_ratios = [
                    pair["boto3"]["push_s"] / pair[variant]["push_s"]
                    for pair in by_round.values()
                    if "boto3" in pair and variant in pair
                ]
                if ratios:
                    row["paired_ratio_to_boto3"] = statistics.median(ratios)
                    row["paired_push_ratio_to_boto3"] = statistics.median(push_ratios)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | whole process s (median) | MB/s whole process | x boto3 (paired) "
        "| push clock s | x boto3, push clock | peak RSS MiB | client CPU s | sink CPU s "
        "| requests | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["runs_ok"]:
            lines.append(f"| {row['variant']} | error | | | | | | | | | 0/{row['runs']} |")
            continue
        ratio = row.get("paired_ratio_to_boto3")
        push_ratio = row.get("paired_push_ratio_to_boto3")
        lines.append(
            f"| {row['variant']} | {row['wall_s_median']:.2f} | {row['mb_per_s_whole_process']:.1f}"
            f" | {f'{ratio:.2f}x' if ratio else '-'} | {row['push_s_median']:.2f}"
            f" | {f'{push_ratio:.2f}x' if push_ratio else '-'}"
            f" | {row['peak_rss_mib_median']:.0f} | {row['cpu_s_median']:.2f}"
            f" | {row['sink_cpu_s_median']:.2f} | {row['requests_median']:.0f}"
            f" | {row['runs_ok']}/{row['runs']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--total", type=bench.parse_size, default=512 * MIB, help="image bytes")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--smallest", type=bench.parse_size, default=MIB, help="smallest layer")
    parser.add_argument("--runs", type=int, default=5, help="rounds (each runs every variant)")
    parser.add_argument("--part-size", type=bench.parse_size, default=10 * MIB)
    parser.add_argument(
        "--scheme",
        choices=("https", "http"),
        default="https",
        help="how the sink serves (https: a throwaway CA, trusted through AWS_CA_BUNDLE)",
    )
    parser.add_argument("--max-concurrent-layers", type=int, default=4)
    parser.add_argument("--variants", default=",".join(image_variants.VARIANTS))
    bench.add_run_arguments(parser, "where the image layout is kept between runs")
    args = parser.parse_args(argv)
    variant_names = bench.parse_variants(parser, args.variants, image_variants.VARIANTS)
    try:
        sizes = layer_sizes(args.total, args.layers, args.smallest)
    except ValueError as exc:
        parser.error(str(exc))
    config = Config(
        runs=args.runs,
        part_size=args.part_size,
        max_concurrent_layers=args.max_concurrent_layers,
        variant_names=variant_names,
        wait_quiet_s=args.wait_quiet,
        timeout_floor_s=args.timeout_floor,
        scheme=args.scheme,
    )
    started = time.time()
    environment = bench.environment()
    layout = ensure_layout(args.data_dir, sizes)
    print(
        f"bench_image: {len(sizes)} layers, {bench.format_size(sum(sizes))} in all"
        f" ({', '.join(f'{size / MIB:.1f}' for size in sizes)} MiB), {config.runs} rounds,"
        f" {bench.format_size(config.part_size)} parts, at most"
        f" {config.max_concurrent_layers} layers at once",
        flush=True,
    )
    records = run_all(layout, config)
    rows = summarize(records, layout, config)
    table = markdown_table(rows)
    fields = {
        "config": {
            "layer_sizes": sizes,
            "blob_bytes": layout.blob_bytes,
            "runs": config.runs,
            "part_size": config.part_size,
            "max_concurrent_layers": config.max_concurrent_layers,
            "variants": variant_names,
        },
        "environment": environment,
        "summary": rows,
        "table_markdown": table,
        "runs": records,
    }
    output = bench.write_report("bench_image", argv, started, fields, args.output)
    print()
    print(table)
    bench.print_other_cores(records)
    print(f"CPU: {environment['cpu_model']} ({environment['cpu_count']} cores)")
    print(f"\nbench_image: wrote {output}")
    return 1 if any(not row["runs_ok"] or row["runs_ok"] < row["runs"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
