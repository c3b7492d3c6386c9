#!/usr/bin/env python3
"""One whole-image push, run by bench_image.py as a fresh process per variant and run.

    python benchmarks/image_variants.py {ecrstream,boto3} LAYOUT --endpoint-url URL
        --repository NAME [--tag TAG] [--part-size BYTES] [--max-concurrent-layers N]

LAYOUT is an OCI image layout folder with one image. Prints ``IMAGE_RESULT <json>`` (the
manifest digest put, and the upload's own clock) and exits 0, or 1 on failure. Only what the
variant needs is imported, inside its function, so the process's wall time (measured by the
parent, interpreter start to exit) is what a user's script would take.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "IMAGE_RESULT "
VARIANTS = ("ecrstream", "boto3")
REGION = "us-east-1"


def push_ecrstream(args: argparse.Namespace) -> dict[str, Any]:
    """``push_image`` of the layout, as the README shows it."""
    import asyncio

    from ecrstream import EcrClient, push_image

    async def main() -> dict[str, Any]:
        async with EcrClient.create(region_name=REGION, endpoint_url=args.endpoint_url) as client:
            started = time.perf_counter()
            result = await push_image(
                client,
                args.layout,
                args.repository,
                tags=[args.tag],
                part_size=args.part_size,
                max_concurrent_layers=args.max_concurrent_layers,
            )
            return {
                "manifest_digest": result.manifest_digest,
                "bytes_uploaded": result.bytes_uploaded,
                "push_s": time.perf_counter() - started,
            }

    return asyncio.run(main())


def push_boto3(args: argparse.Namespace) -> dict[str, Any]:
    """The loop a user writes with boto3: each blob part by part, one after another, then
    PutImage. Retries off, so a failure shows instead of being retried into the time."""
    import hashlib

    import boto3
    from botocore.config import Config

    client = boto3.client(
        "ecr",
        region_name=REGION,
        endpoint_url=args.endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    layout = Path(args.layout)
    index = json.loads((layout / "index.json").read_text())
    descriptor = index["manifests"][0]
    blob_dir = layout / "blobs" / "sha256"
    manifest_text = (blob_dir / descriptor["digest"].removeprefix("sha256:")).read_text()
    manifest = json.loads(manifest_text)
    started = time.perf_counter()
    sent = 0
    for blob in [manifest["config"], *manifest["layers"]]:
        upload_id = client.initiate_layer_upload(repositoryName=args.repository)["uploadId"]
        hasher = hashlib.sha256()
        offset = 0
        with open(blob_dir / blob["digest"].removeprefix("sha256:"), "rb") as file:
            while part := file.read(args.part_size):
                hasher.update(part)
                client.upload_layer_part(
                    repositoryName=args.repository,
                    uploadId=upload_id,
                    partFirstByte=offset,
                    partLastByte=offset + len(part) - 1,
                    layerPartBlob=part,
                )
                offset += len(part)
        digest = "sha256:" + hasher.hexdigest()
        if digest != blob["digest"]:
            raise RuntimeError(f"blob {blob['digest']} hashes to {digest}")
        client.complete_layer_upload(
            repositoryName=args.repository, uploadId=upload_id, layerDigests=[digest]
        )
        sent += offset
    response = client.put_image(
        repositoryName=args.repository,
        imageManifest=manifest_text,
        imageManifestMediaType=descriptor["mediaType"],
        imageTag=args.tag,
    )
    return {
        "manifest_digest": response["image"]["imageId"]["imageDigest"],
        "bytes_uploaded": sent,
        "push_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One whole-image push, for bench_image.py.")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("layout")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--part-size", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--max-concurrent-layers", type=int, default=4)
    args = parser.parse_args(argv)
    push = push_ecrstream if args.variant == "ecrstream" else push_boto3
    try:
        record = {"status": "ok", **push(args)}
    except Exception as exc:
        record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
