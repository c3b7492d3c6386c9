"""One LayerUploader.upload_file in a process of its own, for tests/test_uploader.py.

Usage: ``python uploader_child.py '<json>'`` with keys ``client`` (create_client kwargs for the
local endpoint), ``repository``, ``path``, and optionally ``part_size`` and ``checkpoint`` (a
``UploadCheckpoint.to_json()`` to resume from). Prints one JSON object: ``result`` (the
LayerUploadResult's fields), ``traced_peak`` (tracemalloc's peak during the upload, bytes)
and ``rss_growth`` (peak resident set during the upload minus the one before, bytes; Linux).

A process of its own keeps moto's allocations (the endpoint's, in the test process) out of
the measurement, and shows that a checkpoint resumes in a later process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import aiobotocore.session
from aiobotocore.config import AioConfig

from ecrstream import (
    BatchCheckLayerAvailabilityRequest,
    EcrClient,
    LayerUploader,
    UploadCheckpoint,
)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _reset_peak_rss() -> None:
    # "5" resets VmHWM (the peak resident set) to the current resident set (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


async def main(args: dict[str, Any]) -> dict[str, Any]:
    config = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"})
    session = aiobotocore.session.get_session()
    async with session.create_client("ecr", config=config, **args["client"]) as aio_client:
        client = EcrClient(aio_client)
        uploader = LayerUploader(client, args["repository"], part_size=args.get("part_size"))
        # botocore loads its service model on the first call: not part of the upload
        await client.batch_check_layer_availability(
            BatchCheckLayerAvailabilityRequest(
                repository_name=args["repository"], layer_digests=("sha256:" + "0" * 64,)
            )
        )
        checkpoint = args.get("checkpoint")
        resume = UploadCheckpoint.from_json(checkpoint) if checkpoint else None
        _reset_peak_rss()
        rss_before = _status_kib("VmRSS")
        tracemalloc.start()
        result = await uploader.upload_file(args["path"], resume=resume)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_growth = (_status_kib("VmHWM") - rss_before) * 1024
    return {
        "result": dataclasses.asdict(result),
        "traced_peak": traced_peak,
        "rss_growth": rss_growth,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
