#!/usr/bin/env python3
"""The layer-upload loops users write today, the baselines that ecrstream is measured against.

    python benchmarks/baselines.py {boto3,aiobotocore} FILE --endpoint-url URL [--part-size N]

prints the result as JSON. Both loops are deliberately plain: read a part, hash it, send it
with ``upload_layer_part``, then ``complete_layer_upload`` with the sha256 digest; nothing
overlaps. They use dummy credentials, ``endpoint_url`` pointing at the sink, and botocore's
retries turned off (one attempt), so a failure shows instead of being retried into the time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

DEFAULT_PART_SIZE = 20_971_520  # 20 MiB, the largest part the ECR API model allows
DEFAULT_REPOSITORY = "bench-repo"
DEFAULT_REGION = "us-east-1"
DUMMY_CREDENTIALS = {"aws_access_key_id": "AKIDBENCHMARK", "aws_secret_access_key": "bench"}


@dataclasses.dataclass(frozen=True, slots=True)
class BaselineResult:
    """What one baseline upload produced."""

    digest: str  # computed by the loop, "sha256:<hex>"
    returned_digest: str  # what CompleteLayerUpload answered
    size: int
    part_count: int
    upload_id: str


def _botocore_config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": 1})


def boto3_client(endpoint_url: str, region_name: str = DEFAULT_REGION) -> Any:
    """A plain boto3 ECR client for the sink: dummy credentials, no retries."""
    import boto3

    return boto3.client(
        "ecr",
        region_name=region_name,
        endpoint_url=endpoint_url,
        config=_botocore_config(),
        **DUMMY_CREDENTIALS,
    )


def upload_layer_boto3(
    client: Any, path: str, repository: str = DEFAULT_REPOSITORY, part_size: int = DEFAULT_PART_SIZE
) -> BaselineResult:
    """Baseline (a): the synchronous boto3 loop, one part at a time."""
    upload_id = client.initiate_layer_upload(repositoryName=repository)["uploadId"]
    hasher = hashlib.sha256()
    offset = 0
    part_count = 0
    with open(path, "rb") as file:
        while part := file.read(part_size):
            hasher.update(part)
            client.upload_layer_part(
                repositoryName=repository,
                uploadId=upload_id,
                partFirstByte=offset,
                partLastByte=offset + len(part) - 1,
                layerPartBlob=part,
            )
            offset += len(part)
            part_count += 1
    digest = "sha256:" + hasher.hexdigest()
    response = client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest]
    )
    return BaselineResult(digest, response["layerDigest"], offset, part_count, upload_id)


@asynccontextmanager
async def aiobotocore_client(
    endpoint_url: str, region_name: str = DEFAULT_REGION
) -> AsyncIterator[Any]:
    """A plain aiobotocore ECR client for the sink: dummy credentials, no retries."""
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client(
        "ecr",
        region_name=region_name,
        endpoint_url=endpoint_url,
        config=_botocore_config(),
        **DUMMY_CREDENTIALS,
    ) as client:
        yield client


async def upload_layer_aiobotocore(
    client: Any, path: str, repository: str = DEFAULT_REPOSITORY, part_size: int = DEFAULT_PART_SIZE
) -> BaselineResult:
    """Baseline (b): the sequential aiobotocore + aiofiles loop, one part at a time."""
    import aiofiles

    upload_id = (await client.initiate_layer_upload(repositoryName=repository))["uploadId"]
    hasher = hashlib.sha256()
    offset = 0
    part_count = 0
    async with aiofiles.open(path, "rb") as file:
        while part := await file.read(part_size):
            hasher.update(part)
            await client.upload_layer_part(
                repositoryName=repository,
                uploadId=upload_id,
                partFirstByte=offset,
                partLastByte=offset + len(part) - 1,
                layerPartBlob=part,
            )
            offset += len(part)
            part_count += 1
    digest = "sha256:" + hasher.hexdigest()
    response = await client.complete_layer_upload(
        repositoryName=repository, uploadId=upload_id, layerDigests=[digest]
    )
    return BaselineResult(digest, response["layerDigest"], offset, part_count, upload_id)


async def _run_aiobotocore(
    path: str, endpoint_url: str, repository: str, part_size: int
) -> BaselineResult:
    async with aiobotocore_client(endpoint_url) as client:
        return await upload_layer_aiobotocore(client, path, repository, part_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one baseline upload loop against a sink.")
    parser.add_argument("variant", choices=["boto3", "aiobotocore"])
    parser.add_argument("file")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY)
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE)
    args = parser.parse_args(argv)
    if args.variant == "boto3":
        result = upload_layer_boto3(
            boto3_client(args.endpoint_url), args.file, args.repository, args.part_size
        )
    else:
        result = asyncio.run(
            _run_aiobotocore(args.file, args.endpoint_url, args.repository, args.part_size)
        )
    print(json.dumps(dataclasses.asdict(result)))
    return 0 if result.digest == result.returned_digest else 1


if __name__ == "__main__":
    sys.exit(main())
