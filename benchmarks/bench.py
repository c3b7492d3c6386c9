#!/usr/bin/env python3
"""Throughput, memory and event-loop stalls: ecrstream against the loops users write today.

    .venv/bin/python benchmarks/bench.py [--sizes 64M,256M,1G] [--runs 3]
        [--cases http:20MiB,https:10MiB] [--latency-ms 0] [--latency-sweep] [--with-4g]
        [--long] [--variants ecrstream,boto3,aiobotocore[,ecrstream-asyncio-tls]] [--verify]

A case is a scheme (``http``, or ``https`` against a throwaway CA made at start with trustme,
trusted by the clients through ``AWS_CA_BUNDLE``), a part size (what the sink's
InitiateLayerUpload answers and what every variant sends) and a latency the sink adds before
each answer. For every case it starts the sink (benchmarks/sink.py) in its own process on
127.0.0.1, measures the sink's ceiling with a raw-socket client, then for every size runs
``--runs`` rounds; each round runs every variant once, each in a fresh subprocess
(benchmarks/variants.py), in an order that rotates from round to round so no variant always
goes first. Each run is timed twice: the upload's own clock (InitiateLayerUpload to
CompleteLayerUpload, inside the process) and the whole process (interpreter start to exit).
The test files are random bytes, kept in a temporary folder and reused by later runs. It
prints a Markdown table and writes everything it measured to
benchmarks/results/bench-<time>.json. A variant that cannot be imported is reported as n/a;
the others still run. See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sink_ceiling  # noqa: E402  (sibling modules, importable once the path is set)
import variants  # noqa: E402

MIB = 1 << 20
# A run during which other processes used more than this many cores is marked disturbed.
DISTURBED_CORES = 0.25
GIB = 1 << 30
DEFAULT_SIZES = "64M,256M,1G"
DEFAULT_VARIANTS = ",".join(variants.VARIANTS)
# What users meet: HTTP with the largest parts ECR allows, HTTPS with the 10 MiB that ECR's
# InitiateLayerUpload answers (and its service quota caps parts at).
DEFAULT_CASES = "http:20MiB,https:10MiB"
LATENCY_SWEEP_MS = (0.0, 20.0, 50.0)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64M``, ``64MiB``, ``1G``, ``20971520``: binary units, bytes when there is none."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}[unit])


def format_size(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


@dataclass(frozen=True, slots=True)
class Case:
    """What the sink serves and the variants send: scheme, part size, added latency."""

    scheme: str
    part_size: int
    latency_ms: float = 0.0

    @property
    def label(self) -> str:
        latency = f" +{self.latency_ms:g} ms" if self.latency_ms else ""
        return f"{self.scheme} {format_size(self.part_size)}{latency}"

    def as_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "part_size": self.part_size, "latency_ms": self.latency_ms}


def parse_cases(text: str, latencies: list[float]) -> list[Case]:
    """``http:20MiB,https:10MiB`` times every latency, in that order."""
    cases: list[Case] = []
    for item in (item.strip() for item in text.split(",")):
        if not item:
            continue
        scheme, sep, size = item.partition(":")
        scheme = scheme.strip().lower()
        if not sep or scheme not in ("http", "https"):
            raise argparse.ArgumentTypeError(
                f"--cases: {item!r} is not SCHEME:PART_SIZE with SCHEME http or https"
            )
        part_size = parse_size(size)
        for latency in latencies:
            case = Case(scheme, part_size, latency)
            if case not in cases:
                cases.append(case)
    if not cases:
        raise argparse.ArgumentTypeError("--cases: no case given")
    return cases


# TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it, as PEM files."""

    ca: Path
    cert_chain: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Make a new CA and a server certificate for 127.0.0.1/localhost (trustme)."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - trustme is in the test extra
        raise SystemExit("bench: https cases need trustme (pip install 'ecrstream[test]')") from exc
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(files.cert_chain), append=index > 0)
    return files


# Test files -------------------------------------------------------------------------------


def ensure_test_file(data_dir: Path, size: int) -> tuple[Path, str]:
    """A file of ``size`` random bytes and its ``sha256:`` digest, created once and reused."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"layer-{size}.bin"
    digest_path = path.with_suffix(".sha256")
    if path.exists() and path.stat().st_size == size and digest_path.exists():
        digest = digest_path.read_text().strip()
        if digest_path.stat().st_mtime >= path.stat().st_mtime:
            _warm_page_cache(path)
            return path, digest
    print(f"bench: writing {format_size(size)} of random bytes to {path}", flush=True)
    hasher = hashlib.sha256()
    with open(path, "wb") as file:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 16 * MIB))
            hasher.update(chunk)
            file.write(chunk)
            remaining -= len(chunk)
    digest = "sha256:" + hasher.hexdigest()
    digest_path.write_text(digest + "\n")
    return path, digest


def _warm_page_cache(path: Path) -> None:
    # Every variant should read from the page cache, the first one of a session included.
    with open(path, "rb", buffering=0) as file:
        buffer = bytearray(16 * MIB)
        while file.readinto(buffer):
            pass


# The sink ---------------------------------------------------------------------------------


class Sink:
    """benchmarks/sink.py in a child process; ``stats()`` reads its counters and CPU time."""

    def __init__(self, case: Case, verify: bool, tls: TlsFiles | None = None) -> None:
        command = [sys.executable, str(HERE / "sink.py"), "--part-size", str(case.part_size)]
        if verify:
            command.append("--verify")
        if case.latency_ms:
            command += ["--latency-ms", str(case.latency_ms)]
        self.ca_bundle: str | None = None
        self.context: ssl.SSLContext | None = None
        if case.scheme == "https":
            if tls is None:
                raise ValueError("an https case needs TLS files")
            command += ["--certfile", str(tls.cert_chain), "--keyfile", str(tls.key)]
            self.ca_bundle = str(tls.ca)
            self.context = ssl.create_default_context(cafile=self.ca_bundle)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("SINK_PORT="):
            self.process.kill()
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.url = f"{case.scheme}://127.0.0.1:{int(line.split('=', 1)[1])}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(
            self.url + "/stats", timeout=30, context=self.context
        ) as response:
            stats: dict[str, Any] = json.load(response)
        return stats

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# Runs -------------------------------------------------------------------------------------


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat; 0 without."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal: everything but idle and iowait
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.15) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold_cores``.

    Returns the seconds waited. On a machine shared with test runs this keeps most runs
    undisturbed; whatever still disturbs a run is recorded by run_once.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait_s:
        busy_before, self_before = _machine_busy_s(), _cpu_s(resource.RUSAGE_SELF)
        time.sleep(0.5)
        other = (_machine_busy_s() - busy_before) - (_cpu_s(resource.RUSAGE_SELF) - self_before)
        if other / 0.5 < threshold_cores:
            break
    return time.perf_counter() - started


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Config:
    sizes: list[int]
    runs: int
    cases: list[Case]
    variant_names: list[str]
    data_dir: Path
    verify: bool
    timeout_floor_s: float
    ceiling_size: int
    wait_quiet_s: float


def run_once(
    sink: Sink,
    case: Case,
    variant: str,
    path: Path,
    expected_digest: str,
    size: int,
    config: Config,
) -> dict[str, Any]:
    """One upload in a fresh subprocess, with the sink's counters read before and after."""
    waited_s = wait_for_quiet(config.wait_quiet_s) if config.wait_quiet_s > 0 else 0.0
    before = sink.stats()
    env = dict(os.environ)
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
    env.pop("AWS_CA_BUNDLE", None)
    env.pop("ECRSTREAM_ASYNCIO_TLS", None)  # the ecrstream-asyncio-tls variant sets its own
    if sink.ca_bundle:
        # How an AWS client is told to trust a CA: boto3, aiobotocore and ecrstream alike.
        env["AWS_CA_BUNDLE"] = sink.ca_bundle
    command = [
        sys.executable,
        str(HERE / "variants.py"),
        variant,
        str(path),
        "--endpoint-url",
        sink.url,
        "--part-size",
        str(case.part_size),
    ]
    # Generous: 2 MB/s plus start-up and the added latency, so only a hang is cut short.
    parts = -(-size // case.part_size) + 2
    timeout = max(config.timeout_floor_s, size / 2e6 + 30 + parts * case.latency_ms / 1000)
    busy_before = _machine_busy_s()
    children_before = _cpu_s(resource.RUSAGE_CHILDREN)
    self_before = _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"variant": variant, "status": "error", "error": f"timed out after {timeout:.0f} s"}
    process_wall_s = time.perf_counter() - started
    child_cpu_s = _cpu_s(resource.RUSAGE_CHILDREN) - children_before
    harness_cpu_s = _cpu_s(resource.RUSAGE_SELF) - self_before
    busy_s = _machine_busy_s() - busy_before
    after = sink.stats()
    record: dict[str, Any] = {
        "variant": variant,
        "status": "error",
        "error": f"no result line; exit {completed.returncode}; stderr: {completed.stderr[-2000:]}",
    }
    for line in completed.stdout.splitlines():
        if line.startswith(variants.RESULT_PREFIX):
            record = json.loads(line[len(variants.RESULT_PREFIX) :])
    # Interpreter start to exit, imports and client creation included: what a user running a
    # command pays. Its CPU is the whole process's (RUSAGE_CHILDREN of the waited child).
    record["process_wall_s"] = process_wall_s
    record["process_cpu_s"] = child_cpu_s
    record["sink"] = {
        "cpu_s": (after["cpu_user_s"] + after["cpu_system_s"])
        - (before["cpu_user_s"] + before["cpu_system_s"]),
        "layer_bytes_accepted": after["layer_bytes_accepted"] - before["layer_bytes_accepted"],
        "body_bytes_received": after["body_bytes_received"] - before["body_bytes_received"],
        "parts_accepted": after["parts_accepted"] - before["parts_accepted"],
        "parts_rejected": after["parts_rejected"] - before["parts_rejected"],
    }
    # CPU that neither the variant, the sink nor this harness used during the run: other
    # processes on the machine (and interrupts). Much of it means the figures are disturbed.
    other_cpu_s = busy_s - child_cpu_s - harness_cpu_s - record["sink"]["cpu_s"]
    record["machine"] = {
        "busy_cpu_s": busy_s,
        "variant_process_cpu_s": child_cpu_s,
        "other_cpu_s": other_cpu_s,
        "other_cores": other_cpu_s / process_wall_s,
        "waited_for_quiet_s": waited_s,
    }
    if record["status"] == "ok":
        if record["digest"] != expected_digest or record["size"] != size:
            record["status"] = "error"
            record["error"] = (
                f"wrong result: {record['digest']} / {record['size']} bytes, expected "
                f"{expected_digest} / {size}"
            )
        elif record["sink"]["layer_bytes_accepted"] != size:
            record["status"] = "error"
            record["error"] = f"the sink accepted {record['sink']['layer_bytes_accepted']} bytes"
    if record["status"] == "error" and completed.stderr:
        record.setdefault("stderr_tail", completed.stderr[-2000:])
    return record


def run_all(config: Config) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": [], "sink_ceilings": [], "sink_final": []}
    unavailable: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ecrstream-bench-tls-") as tls_dir:
        tls = None
        if any(case.scheme == "https" for case in config.cases):
            tls = make_tls_files(Path(tls_dir))
        for case in config.cases:
            sink = Sink(case, config.verify, tls)
            try:
                _run_case(sink, case, config, results, unavailable)
            finally:
                sink.close()
    results["unavailable"] = unavailable
    return results


def _run_case(
    sink: Sink,
    case: Case,
    config: Config,
    results: dict[str, Any],
    unavailable: dict[str, str],
) -> None:
    if config.ceiling_size and not case.latency_ms:
        wait_for_quiet(config.wait_quiet_s)
        ceiling = sink_ceiling.measure(
            sink.url, config.ceiling_size, case.part_size, sink.ca_bundle
        )
        ceiling["case"] = case.as_dict()
        results["sink_ceilings"].append(ceiling)
        print(
            f"bench: [{case.label}] sink ceiling (raw-socket client, "
            f"{format_size(config.ceiling_size)}): {ceiling['mb_per_s']:.0f} MB/s, sink CPU "
            f"{ceiling['sink_cpu_s_per_gib']:.2f} s/GiB",
            flush=True,
        )
    for size in config.sizes:
        path, digest = ensure_test_file(config.data_dir, size)
        names = config.variant_names
        for round_index in range(config.runs):
            shift = round_index % len(names)
            for variant in names[shift:] + names[:shift]:
                if variant in unavailable:
                    continue
                record = run_once(sink, case, variant, path, digest, size, config)
                record.update(size=size, round=round_index, case=case.as_dict())
                results["runs"].append(record)
                _print_progress(record, case)
                if record["status"] == "unavailable":
                    unavailable[variant] = record.get("error", "")
    final = {k: v for k, v in sink.stats().items() if k != "completed"}
    final["case"] = case.as_dict()
    results["sink_final"].append(final)


def _print_progress(record: dict[str, Any], case: Case) -> None:
    size = format_size(record["size"])
    head = f"bench: [{case.label}] {size:>8} round {record['round'] + 1} {record['variant']:<12}"
    if record["status"] == "ok":
        stall = record.get("stall")
        stall_text = (
            f", stall p99 {stall['p99_ms']:.1f} ms max {stall['max_ms']:.0f} ms" if stall else ""
        )
        print(
            f"{head} {record['mb_per_s']:7.1f} MB/s, process {record['process_wall_s']:.2f} s, "
            f"CPU {record['cpu_user_s'] + record['cpu_system_s']:.2f} s, peak RSS "
            f"{record['peak_rss_kib'] / 1024:.0f} MiB{stall_text}, sink CPU "
            f"{record['sink']['cpu_s']:.2f} s, other CPU {record['machine']['other_cores']:.2f} "
            f"cores{' (DISTURBED)' if record['machine']['other_cores'] > DISTURBED_CORES else ''}",
            flush=True,
        )
    else:
        print(f"{head} {record['status']}: {record.get('error', '')[:300]}", flush=True)


# Summary ----------------------------------------------------------------------------------


def summarize(results: dict[str, Any], config: Config) -> list[dict[str, Any]]:
    """One row per case, size and variant: medians over the successful runs, and ratios."""
    rows: list[dict[str, Any]] = []
    for case in config.cases:
        for size in config.sizes:
            records = [
                r for r in results["runs"] if r["size"] == size and r.get("case") == case.as_dict()
            ]
            rows.extend(_summarize_group(case, size, records, results, config))
    return rows


def _summarize_group(
    case: Case,
    size: int,
    records: list[dict[str, Any]],
    results: dict[str, Any],
    config: Config,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_variant.setdefault(record["variant"], []).append(record)
    medians: dict[str, float] = {}
    process_medians: dict[str, float] = {}
    for variant in config.variant_names:
        ok = [r for r in by_variant.get(variant, []) if r["status"] == "ok"]
        if ok:
            medians[variant] = statistics.median(r["mb_per_s"] for r in ok)
            process_medians[variant] = statistics.median(r["process_wall_s"] for r in ok)
    gib = size / GIB
    for variant in config.variant_names:
        runs = by_variant.get(variant, [])
        ok = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {
            "case": case.as_dict(),
            "case_label": case.label,
            "size": size,
            "variant": variant,
            "runs_ok": len(ok),
            "runs_failed": len(runs) - len(ok),
        }
        if variant in results["unavailable"]:
            row["status"] = "n/a"
            row["note"] = results["unavailable"][variant]
        elif not ok:
            row["status"] = "error"
            row["note"] = runs[0].get("error", "") if runs else "not run"
        else:
            quiet = [r for r in ok if r["machine"]["other_cores"] <= DISTURBED_CORES]
            stalls = [r["stall"] for r in ok if "stall" in r]
            row.update(
                status="ok",
                mb_per_s_median=medians[variant],
                mb_per_s_min=min(r["mb_per_s"] for r in ok),
                mb_per_s_max=max(r["mb_per_s"] for r in ok),
                process_wall_s_median=process_medians[variant],
                process_wall_s_min=min(r["process_wall_s"] for r in ok),
                process_wall_s_max=max(r["process_wall_s"] for r in ok),
                process_cpu_s_median=statistics.median(r["process_cpu_s"] for r in ok),
                peak_rss_mib_median=statistics.median(r["peak_rss_kib"] for r in ok) / 1024,
                rss_before_upload_mib_median=statistics.median(
                    r["rss_before_upload_kib"] for r in ok
                )
                / 1024,
                client_cpu_s_per_gib=statistics.median(
                    (r["cpu_user_s"] + r["cpu_system_s"]) / gib for r in ok
                ),
                client_system_cpu_s_per_gib=statistics.median(r["cpu_system_s"] / gib for r in ok),
                minor_faults_per_gib=statistics.median(r["minor_faults"] / gib for r in ok),
                sink_cpu_s_per_gib=statistics.median(r["sink"]["cpu_s"] / gib for r in ok),
                sink_cpu_fraction_of_wall=statistics.median(
                    r["sink"]["cpu_s"] / r["wall_s"] for r in ok
                ),
                other_cores_median=statistics.median(r["machine"]["other_cores"] for r in ok),
                runs_quiet=len(quiet),
                mb_per_s_median_quiet=(
                    statistics.median(r["mb_per_s"] for r in quiet) if quiet else None
                ),
            )
            if stalls:
                row["stall_p99_ms_median"] = statistics.median(s["p99_ms"] for s in stalls)
                row["stall_max_ms_worst"] = max(s["max_ms"] for s in stalls)
                row["stall_max_ms_median"] = statistics.median(s["max_ms"] for s in stalls)
                row["loop_blocked_fraction_median"] = statistics.median(
                    r["stall"].get("stalled_over_20ms_s", 0.0) / r["wall_s"] for r in ok
                )
            for baseline in ("boto3", "aiobotocore"):
                if baseline != variant and baseline in medians:
                    theirs = by_variant.get(baseline, [])
                    row[f"ratio_to_{baseline}"] = medians[variant] / medians[baseline]
                    row[f"paired_ratio_to_{baseline}"] = _paired_ratio(
                        ok, theirs, lambda r: r["mb_per_s"]
                    )
                    # Whole process: their seconds over ours, so > 1 means we are faster.
                    row[f"process_ratio_to_{baseline}"] = (
                        process_medians[baseline] / process_medians[variant]
                    )
                    row[f"paired_process_ratio_to_{baseline}"] = _paired_ratio(
                        ok, theirs, lambda r: 1 / r["process_wall_s"]
                    )
        rows.append(row)
    return rows


def _paired_ratio(
    ours: list[dict[str, Any]],
    theirs: list[dict[str, Any]],
    speed: Callable[[dict[str, Any]], float],
) -> float | None:
    """Median over rounds of (our speed / theirs) in the same round, where both succeeded."""
    theirs_by_round = {r["round"]: r for r in theirs if r["status"] == "ok"}
    ratios = [
        speed(r) / speed(theirs_by_round[r["round"]]) for r in ours if r["round"] in theirs_by_round
    ]
    return statistics.median(ratios) if ratios else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| case | size | variant | MB/s median (min-max) | x boto3 | x aiobotocore "
        "| process s | process x boto3 | peak RSS MiB | stall p99 ms | stall max ms "
        "| loop blocked | client CPU s/GiB | process CPU s | sink CPU s/GiB | runs |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows:
        size = format_size(row["size"])
        head = f"| {row['case_label']} | {size} | {row['variant']} "
        if row["status"] != "ok":
            note = row.get("note", "").replace("|", "/")[:80]
            lines.append(f"{head}| {row['status']} ({note}) |" + " |" * 12 + " 0 |")
            continue

        def ratio(key: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return f"{value:.2f}" if value is not None else "-"

        stall_p99 = row.get("stall_p99_ms_median")
        stall_max = row.get("stall_max_ms_worst")
        blocked = row.get("loop_blocked_fraction_median")
        runs = str(row["runs_ok"]) + (
            f" ({row['runs_failed']} failed)" if row["runs_failed"] else ""
        )
        lines.append(
            f"{head}"
            f"| {row['mb_per_s_median']:.1f} ({row['mb_per_s_min']:.1f}-{row['mb_per_s_max']:.1f}) "
            f"| {ratio('ratio_to_boto3')} | {ratio('ratio_to_aiobotocore')} "
            f"| {row['process_wall_s_median']:.2f} | {ratio('paired_process_ratio_to_boto3')} "
            f"| {row['peak_rss_mib_median']:.0f} "
            f"| {f'{stall_p99:.1f}' if stall_p99 is not None else 'n/a'} "
            f"| {f'{stall_max:.0f}' if stall_max is not None else 'n/a'} "
            f"| {f'{blocked:.0%}' if blocked is not None else 'n/a'} "
            f"| {row['client_cpu_s_per_gib']:.2f} | {row['process_cpu_s_median']:.2f} "
            f"| {row['sink_cpu_s_per_gib']:.2f} | {runs} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    versions: dict[str, str] = {}
    from importlib import metadata

    for package in (
        "ecrstream",
        "boto3",
        "botocore",
        "aiobotocore",
        "aiohttp",
        "aiofiles",
        "trustme",
        "uvloop",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "openssl": ssl.OPENSSL_VERSION,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "src", "benchmarks")),
        "versions": versions,
    }


# Shared by bench.py, bench_image.py and bench_copy.py --------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser, data_dir_help: str) -> None:
    """The options every benchmark takes: where data and results go, timeouts, quiet wait."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ecrstream-bench",
        help=data_dir_help,
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/)")
    parser.add_argument(
        "--timeout-floor", type=float, default=120.0, help="minimum per-run timeout, seconds"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other processes to go idle",
    )


def parse_variants(parser: argparse.ArgumentParser, text: str, known: Sequence[str]) -> list[str]:
    """``--variants``: a comma-separated, non-empty subset of ``known`` (else a usage error)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(known)
    if not names or unknown:
        parser.error(
            f"--variants: unknown {', '.join(sorted(unknown)) or '(none given)'};"
            f" choose from {', '.join(known)}"
        )
    return names


def write_report(
    script: str, argv: list[str] | None, started: float, fields: dict[str, Any], output: Path | None
) -> Path:
    """Write a run's JSON report (its command, start and duration first) and return its path."""
    command = f"python benchmarks/{script}.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        **fields,
    }
    path = output or HERE / "results" / time.strftime(
        f"{script}-%Y%m%d-%H%M%S.json".replace("_", "-"), time.localtime(started)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def print_other_cores(records: list[dict[str, Any]]) -> None:
    """The line that says how busy the machine was meanwhile (DISTURBED above a quarter core)."""
    others = [r["other_cores"] for r in records if "other_cores" in r]
    if others:
        median = statistics.median(others)
        print(
            f"\nOther processes used {median:.2f} cores (median; max {max(others):.2f}) of"
            f" {os.cpu_count()} during the runs"
            + ("; the figures are DISTURBED." if median > DISTURBED_CORES else ".")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated, binary units")
    parser.add_argument("--runs", type=int, default=3, help="rounds per case and size")
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help="comma-separated SCHEME:PART_SIZE (http or https; the sink answers that partSize)",
    )
    parser.add_argument(
        "--part-size",
        type=parse_size,
        default=None,
        help="use this part size in every case instead of the one in --cases",
    )
    parser.add_argument(
        "--latency-ms",
        default="0",
        help="comma-separated latencies the sink adds before each answer; every case runs "
        "with each",
    )
    parser.add_argument(
        "--latency-sweep",
        action="store_true",
        help="latencies 0, 20 and 50 ms (long: a 1 GiB upload in 10 MiB parts waits 5 s more "
        "at 50 ms per variant and run)",
    )
    parser.add_argument("--with-4g", action="store_true", help="add a 4 GiB file to --sizes")
    parser.add_argument("--long", action="store_true", help="--with-4g and --latency-sweep")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated subset")
    add_run_arguments(parser, "where the test files are kept between runs")
    parser.add_argument(
        "--verify", action="store_true", help="the sink decodes every part and checks digests"
    )
    parser.add_argument(
        "--ceiling-size",
        type=parse_size,
        default=GIB,
        help="bytes the raw-socket client sends first to measure the sink's ceiling, per case "
        "without added latency (0: skip)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: must be >= 1")
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        latencies = [float(v) for v in args.latency_ms.split(",") if v.strip()]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"--sizes/--latency-ms: {exc}")
    if args.latency_sweep or args.long:
        latencies = sorted(set(latencies) | set(LATENCY_SWEEP_MS))
    if not latencies or any(v < 0 for v in latencies):
        parser.error("--latency-ms: one or more latencies >= 0 (milliseconds)")
    if (args.with_4g or args.long) and 4 * GIB not in sizes:
        sizes.append(4 * GIB)
    if not sizes or any(size <= 0 for size in sizes):
        parser.error("--sizes: one or more sizes > 0")
    try:
        cases = parse_cases(args.cases, latencies)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.part_size is not None:
        cases = list(dict.fromkeys(Case(c.scheme, args.part_size, c.latency_ms) for c in cases))
    variant_names = parse_variants(
        parser, args.variants, variants.VARIANTS + variants.EXTRA_VARIANTS
    )
    config = Config(
        sizes=sizes,
        runs=args.runs,
        cases=cases,
        variant_names=variant_names,
        data_dir=args.data_dir,
        verify=args.verify,
        timeout_floor_s=args.timeout_floor,
        ceiling_size=args.ceiling_size,
        wait_quiet_s=args.wait_quiet,
    )
    started = time.time()
    # Taken before the runs: other sessions may commit to src/ while a long run goes on.
    environment_at_start = environment()
    print(
        f"bench: {environment_at_start['cpu_model'] or 'unknown CPU'}, "
        f"{environment_at_start['cpu_count']} CPUs, Python {environment_at_start['python']}, "
        f"{environment_at_start['openssl']}; cases: " + ", ".join(case.label for case in cases),
        flush=True,
    )
    results = run_all(config)
    rows = summarize(results, config)
    table = markdown_table(rows)
    fields = {
        "config": {
            "sizes": sizes,
            "runs": config.runs,
            "cases": [case.as_dict() for case in cases],
            "variants": variant_names,
            "sink_verify": config.verify,
            "tick_interval_s": variants.TICK_INTERVAL_S,
        },
        "environment": environment_at_start,
        "summary": rows,
        "table_markdown": table,
        **results,
    }
    output = write_report("bench", argv, started, fields, args.output)
    print()
    print(
        f"{environment_at_start['cpu_model'] or 'unknown CPU'}, {os.cpu_count()} CPUs, "
        f"Python {environment_at_start['python']}, {environment_at_start['openssl']}."
    )
    for ceiling in results["sink_ceilings"]:
        label = Case(**ceiling["case"]).label
        print(
            f"Sink ceiling [{label}]: {ceiling['mb_per_s']:.0f} MB/s from a raw-socket client, "
            f"{ceiling['sink_cpu_s_per_gib']:.2f} sink CPU s/GiB."
        )
    print()
    print(table)
    disturbed = [r["machine"]["other_cores"] for r in results["runs"] if "machine" in r]
    if disturbed:
        print(
            f"\nOther processes used {statistics.median(disturbed):.2f} cores (median; max "
            f"{max(disturbed):.2f}) of {os.cpu_count()} during the runs"
            + (
                "; the figures are DISTURBED."
                if statistics.median(disturbed) > DISTURBED_CORES
                else "."
            )
        )
        quiet_rows = [r for r in rows if r.get("runs_quiet")]
        if statistics.median(disturbed) > DISTURBED_CORES and quiet_rows:
            print("Medians over the undisturbed runs only:")
            for row in quiet_rows:
                print(
                    f"  [{row['case_label']}] {format_size(row['size']):>8} "
                    f"{row['variant']:<12} {row['mb_per_s_median_quiet']:7.1f} MB/s "
                    f"({row['runs_quiet']} runs)"
                )
    print(f"\nbench: wrote {output}")
    failed = [r for r in rows if r["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
