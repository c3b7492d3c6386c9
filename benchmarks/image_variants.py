#!/usr/bin/env python3
"""One whole-image push or copy, run by bench_image.py and bench_copy.py as a fresh process.

    python benchmarks/image_variants.py {ecrstream,boto3} LAYOUT --endpoint-url URL
        --repository NAME [--tag TAG] [--part-size BYTES] [--max-concurrent-layers N]
    python benchmarks/image_variants.py loop HOST:PORT/NAME:TAG --endpoint-url URL
        --repository NAME [--tag TAG] [--part-size BYTES]

LAYOUT is an OCI image layout folder with one image (the push variants); ``loop`` copies the
image at a plain-HTTP registry reference instead. Prints ``IMAGE_RESULT <json>`` (the
manifest digest put, and the push's or copy's own clock) and exits 0, or 1 on failure. Only what the
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
VARIANTS = ("ecrstream", "boto3")  # pushes of a layout (bench_image.py)
COPY_VARIANTS = ("loop",)  # copies from a registry (bench_copy.py; its ecrstream is the CLI)
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
                args.source,
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
    layout = Path(args.source)
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


def copy_loop(args: argparse.Namespace) -> dict[str, Any]:
    """The copy loop a user writes with boto3 and urllib3 (which boto3 brings): GET the
    manifest, then each blob in Range GETs of a part each, ``upload_layer_part`` per part,
    ``complete_layer_upload``, and last ``put_image`` with the manifest's bytes. One blob
    and one part at a time; retries off, so a failure shows instead of being retried into
    the time."""
    import hashlib

    import boto3
    import urllib3
    from botocore.config import Config

    client = boto3.client(
        "ecr",
        region_name=REGION,
        endpoint_url=args.endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    http = urllib3.PoolManager(retries=False)
    host, _, rest = args.source.partition("/")
    name, _, reference = rest.rpartition(":")
    base = f"http://{host}/v2/{name}"
    started = time.perf_counter()
    response = http.request(
        "GET",
        f"{base}/manifests/{reference}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json,"
            " application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    if response.status != 200:
        raise RuntimeError(f"GET manifest {reference}: HTTP {response.status}")
    manifest_bytes = response.data
    media_type = response.headers["Content-Type"]
    manifest = json.loads(manifest_bytes)
    sent = 0
    for blob in [manifest["config"], *manifest["layers"]]:
        upload_id = client.initiate_layer_upload(repositoryName=args.repository)["uploadId"]
        hasher = hashlib.sha256()
        size = blob["size"]
        for offset in range(0, size, args.part_size):
            last = min(offset + args.part_size, size) - 1
            answer = http.request(
                "GET", f"{base}/blobs/{blob['digest']}", headers={"Range": f"bytes={offset}-{last}"}
            )
            part = answer.data
            if answer.status not in (200, 206) or len(part) != last - offset + 1:
                raise RuntimeError(
                    f"GET {blob['digest']} bytes {offset}-{last}: HTTP {answer.status},"
                    f" {len(part)} bytes"
                )
            hasher.update(part)
            client.upload_layer_part(
                repositoryName=args.repository,
                uploadId=upload_id,
                partFirstByte=offset,
                partLastByte=last,
                layerPartBlob=part,
            )
        digest = "sha256:" + hasher.hexdigest()
        if digest != blob["digest"]:
            raise RuntimeError(f"blob {blob['digest']} hashes to {digest}")
        client.complete_layer_upload(
            repositoryName=args.repository, uploadId=upload_id, layerDigests=[digest]
        )
        sent += size
    put = client.put_image(
        repositoryName=args.repository,
        imageManifest=manifest_bytes.decode("utf-8"),
        imageManifestMediaType=media_type,
        imageTag=args.tag,
    )
    return {
        "manifest_digest": put["image"]["imageId"]["imageDigest"],
        "bytes_uploaded": sent,
        "push_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One whole-image push or copy, for bench_image.py and bench_copy.py."
    )
    parser.add_argument("variant", choices=VARIANTS + COPY_VARIANTS)
    parser.add_argument("source", help="LAYOUT folder, or HOST:PORT/NAME:TAG for loop")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--part-size", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--max-concurrent-layers", type=int, default=4)
    args = parser.parse_args(argv)
    push = {"ecrstream": push_ecrstream, "boto3": push_boto3, "loop": copy_loop}[args.variant]
    try:
        record = {"status": "ok", **push(args)}
    except Exception as exc:
        record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
