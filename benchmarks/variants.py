#!/usr/bin/env python3
"""One measured upload, run by bench.py in a fresh subprocess per variant and run.

    python benchmarks/variants.py {ecrstream,boto3,aiobotocore,ecrstream-asyncio-tls} FILE
        --endpoint-url URL
        [--part-size BYTES] [--repository NAME]

Prints one line ``BENCH_RESULT <json>`` on stdout: status, wall time of the upload, peak RSS
of the process, CPU time and minor page faults during the upload, and, for the asyncio
variants, the event loop's lateness as seen by a 1 ms ticker coroutine. Exit status 0 on
success, 3 if the variant cannot be imported (ecrstream not written yet), 1 on any other
failure. The client is created before the clock starts, for every variant alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # a sibling module, importable once the path is set

VARIANTS = ("ecrstream", "boto3", "aiobotocore")
# Opt-in: ecrstream with asyncio's own TLS transport (ECRSTREAM_ASYNCIO_TLS=1), the send path
# before ecrstream.tls, to compare the two in one run.
EXTRA_VARIANTS = ("ecrstream-asyncio-tls",)
RESULT_PREFIX = "BENCH_RESULT "
EXIT_UNAVAILABLE = 3
TICK_INTERVAL_S = 0.001


class VariantUnavailable(Exception):
    """The variant's library cannot be imported (ecrstream may not be written yet)."""


@dataclass(slots=True)
class Upload:
    """What a variant's upload returned, whatever its library."""

    digest: str
    size: int
    part_count: int


@dataclass(slots=True)
class Measurement:
    """Clock, CPU and fault counters around the upload, plus the ticker's lateness samples."""

    wall_s: float = 0.0
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    minor_faults: int = 0
    major_faults: int = 0
    lateness_s: list[float] = field(default_factory=list)
    ticker: bool = False
    rss_before_upload_kib: int = 0  # after imports and client creation


def _proc_status_kib(key: str) -> int:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in KiB, or ru_maxrss without procfs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Meter:
    """Starts and stops the counters of a Measurement around the upload."""

    def __init__(self) -> None:
        self.measurement = Measurement()
        self._start_wall = 0.0
        self._start_usage: Any = None

    def start(self) -> None:
        self.measurement.rss_before_upload_kib = _proc_status_kib("VmRSS")
        self._start_usage = resource.getrusage(resource.RUSAGE_SELF)
        self._start_wall = time.perf_counter()

    def stop(self) -> None:
        self.measurement.wall_s = time.perf_counter() - self._start_wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        before = self._start_usage
        self.measurement.cpu_user_s = usage.ru_utime - before.ru_utime
        self.measurement.cpu_system_s = usage.ru_stime - before.ru_stime
        self.measurement.minor_faults = usage.ru_minflt - before.ru_minflt
        self.measurement.major_faults = usage.ru_majflt - before.ru_majflt


async def _ticker(samples: list[float]) -> None:
    """Sleep 1 ms again and again; record how late each wake-up is (the loop's stalls)."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(TICK_INTERVAL_S)
        samples.append(time.perf_counter() - before - TICK_INTERVAL_S)


async def _measure_async(meter: Meter, upload: Callable[[], Awaitable[Upload]]) -> Upload:
    meter.measurement.ticker = True
    ticker = asyncio.create_task(_ticker(meter.measurement.lateness_s))
    await asyncio.sleep(0)  # let the ticker take its first timestamp before the clock starts
    meter.start()
    try:
        result = await upload()
    finally:
        meter.stop()
        ticker.cancel()
        await asyncio.wait([ticker])  # waits for the ticker to end without raising its cancel
    return result


def run_boto3(
    path: str, endpoint_url: str, repository: str, part_size: int, meter: Meter
) -> Upload:
    client = baselines.boto3_client(endpoint_url)
    meter.start()
    try:
        result = baselines.upload_layer_boto3(client, path, repository, part_size)
    finally:
        meter.stop()
    return Upload(result.returned_digest, result.size, result.part_count)


async def run_aiobotocore(
    path: str, endpoint_url: str, repository: str, part_size: int, meter: Meter
) -> Upload:
    async with baselines.aiobotocore_client(endpoint_url) as client:

        async def upload() -> Upload:
            result = await baselines.upload_layer_aiobotocore(client, path, repository, part_size)
            return Upload(result.returned_digest, result.size, result.part_count)

        return await _measure_async(meter, upload)


async def run_ecrstream(
    path: str, endpoint_url: str, repository: str, part_size: int, meter: Meter
) -> Upload:
    try:
        from ecrstream import EcrClient, LayerUploader
    except ImportError as exc:
        raise VariantUnavailable(f"{type(exc).__name__}: {exc}") from exc
    async with EcrClient.create(
        region_name=baselines.DEFAULT_REGION, endpoint_url=endpoint_url
    ) as client:
        uploader = LayerUploader(client, repository, part_size=part_size)

        async def upload() -> Upload:
            result = await uploader.upload_file(path)
            return Upload(result.digest, result.size, result.part_count)

        return await _measure_async(meter, upload)


def run_variant(
    variant: str, path: str, endpoint_url: str, repository: str, part_size: int
) -> dict[str, Any]:
    """Run one upload of ``path`` and return the result record that bench.py collects."""
    # The standard credential chain finds these first; no ~/.aws file can change the run.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", baselines.DUMMY_CREDENTIALS["aws_access_key_id"])
    os.environ.setdefault(
        "AWS_SECRET_ACCESS_KEY", baselines.DUMMY_CREDENTIALS["aws_secret_access_key"]
    )
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    meter = Meter()
    record: dict[str, Any] = {"variant": variant, "file": path, "part_size": part_size}
    try:
        if variant == "boto3":
            upload = run_boto3(path, endpoint_url, repository, part_size, meter)
        elif variant == "aiobotocore":
            upload = asyncio.run(run_aiobotocore(path, endpoint_url, repository, part_size, meter))
        elif variant in ("ecrstream", "ecrstream-asyncio-tls"):
            if variant == "ecrstream-asyncio-tls":
                os.environ["ECRSTREAM_ASYNCIO_TLS"] = "1"
            upload = asyncio.run(run_ecrstream(path, endpoint_url, repository, part_size, meter))
        else:
            raise ValueError(f"unknown variant {variant!r}")
    except VariantUnavailable as exc:
        record.update(status="unavailable", error=str(exc))
        return record
    except Exception as exc:
        record.update(
            status="error",
            error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc()[-4000:],
        )
        return record
    measurement = meter.measurement
    lateness = sorted(measurement.lateness_s)
    record.update(
        status="ok",
        digest=upload.digest,
        size=upload.size,
        part_count=upload.part_count,
        wall_s=measurement.wall_s,
        mb_per_s=upload.size / measurement.wall_s / 1e6,
        cpu_user_s=measurement.cpu_user_s,
        cpu_system_s=measurement.cpu_system_s,
        minor_faults=measurement.minor_faults,
        major_faults=measurement.major_faults,
        peak_rss_kib=_proc_status_kib("VmHWM"),
        rss_before_upload_kib=measurement.rss_before_upload_kib,
    )
    if measurement.ticker:
        record["stall"] = summarize_lateness(lateness)
    return record


def summarize_lateness(sorted_lateness: list[float]) -> dict[str, float | int]:
    """p50/p99/max lateness of the ticker in ms, and how much time went to stalls > 20 ms."""
    if not sorted_lateness:
        return {"ticks": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

    def percentile(fraction: float) -> float:
        index = min(len(sorted_lateness) - 1, int(fraction * len(sorted_lateness)))
        return sorted_lateness[index] * 1000

    long_stalls = [late for late in sorted_lateness if late > 0.020]
    return {
        "ticks": len(sorted_lateness),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": sorted_lateness[-1] * 1000,
        "stalls_over_20ms": len(long_stalls),
        "stalled_over_20ms_s": sum(long_stalls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One measured upload, for bench.py.")
    parser.add_argument("variant", choices=VARIANTS + EXTRA_VARIANTS)
    parser.add_argument("file")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--repository", default=baselines.DEFAULT_REPOSITORY)
    parser.add_argument("--part-size", type=int, default=baselines.DEFAULT_PART_SIZE)
    args = parser.parse_args(argv)
    record = run_variant(
        args.variant, args.file, args.endpoint_url, args.repository, args.part_size
    )
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    if record["status"] == "unavailable":
        return EXIT_UNAVAILABLE
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
