"""``ecrstream copy`` in a child process: from the docker-registry fixture into the local ECR."""

from __future__ import annotations

import asyncio
import json
import shlex
import uuid
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from cli_run import assert_clean, cli, error_line, make_env, on
from registry_fixtures import Fault, FaultProxy, RegistryServer, SeededImage, Seeder
from test_copy import assert_image_in_ecr, ecr_reader

from ecrstream.client import EcrClient
from ecrstream.local import LocalEcr

pytestmark = pytest.mark.timeout(120)


def test_copy_stopped_by_timeout_then_resumed(
    tmp_path: Path,
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    repository: str,
) -> None:
    image = Seeder(anon_registry).push_image(f"cli/app-{uuid.uuid4().hex[:8]}", "v1", (300_000,))
    env = make_env(tmp_path)
    checkpoint = tmp_path / "copy.json"
    fault_proxy.add(Fault("stall", where=image.layers[0], at_byte=100_000))
    args = [
        "copy",
        f"{fault_proxy.host}/{image.repository}:v1",
        "--repository",
        repository,
        "--tag",
        "v1",
        "--src-plain-http",
        "--checkpoint-file",
        str(checkpoint),
        *on(ecr),
    ]
    stopped = cli(*args, "--timeout", "3", env=env)
    assert_clean(stopped)
    assert stopped.returncode == 1, stopped.stderr
    assert "timed out" in stopped.stderr
    saved = json.loads(checkpoint.read_text())
    assert saved["source_digest"] == image.digest
    assert ecr.requests("PutImage") == []
    lines = stopped.stderr.splitlines()
    again = shlex.split(lines[lines.index("ecrstream copy: to go on, run:") + 1])
    assert again[-2:] == ["--resume", str(checkpoint)]
    fault_proxy.reset()  # the stall ends
    resumed = cli(*again[3:], "--json", env=env)  # after "python -m ecrstream"
    assert_clean(resumed)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["manifest_digest"] == image.digest
    assert report["tags"] == ["v1"]
    assert not checkpoint.exists()  # spent
    assert ecr.requests("PutImage")[-1].status == 200


# -- an ECR source with its own client (--src-region, --src-profile, --src-endpoint-url...) -------

SOURCE_REGION = "eu-west-1"
# The source profile's keys: not the environment's, and never printed either.
PROFILE_KEY_ID = "AKIAECRSTREAMSOURCE1"
PROFILE_SECRET = "ecrstream-source-profile-secret"


def seed_ecr_source(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, region: str
) -> SeededImage:
    """An image in a repository of ``region`` of the local endpoint (its moto keeps regions
    apart: the destination's region, us-east-1, has no repository of that name)."""
    image = Seeder(anon_registry).push_image(f"cli/ecr-{uuid.uuid4().hex[:8]}", "v1", (250_000,))
    kwargs = ecr.client_kwargs()
    kwargs["region_name"] = region
    raw: Any = botocore.session.get_session().create_client("ecr", **kwargs)
    try:
        raw.create_repository(repositoryName=image.repository)
    finally:
        raw.close()
    seeded = cli(
        "copy",
        f"{anon_registry.host}/{image.repository}:v1",
        *("--repository", image.repository, "--tag", "v1", "--src-plain-http"),
        *("--endpoint-url", ecr.endpoint_url, "--region", region),
        env=make_env(tmp_path),
    )
    assert seeded.returncode == 0, seeded.stderr
    return image


def read_back(ecr: LocalEcr, repository: str, reference: str, image: SeededImage) -> None:
    async def check() -> None:
        async with EcrClient.create(**ecr.client_kwargs()) as client:
            reader = await ecr_reader(ecr, client)
            async with reader:
                await assert_image_in_ecr(reader, repository, reference, image)

    asyncio.run(check())


def test_copy_from_ecr_with_the_source_options(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    """ECR to ECR: the source is read with its own profile, endpoint and registry id."""
    image = seed_ecr_source(tmp_path, anon_registry, ecr, SOURCE_REGION)
    env = make_env(tmp_path)
    Path(env["AWS_CONFIG_FILE"]).write_text(
        f"[profile source]\nregion = {SOURCE_REGION}\naws_access_key_id = {PROFILE_KEY_ID}\n"
        f"aws_secret_access_key = {PROFILE_SECRET}\n"
    )
    ecr.reset()
    # The host names another account: --src-registry-id says which one to read.
    host = f"999999999999.dkr.ecr.{SOURCE_REGION}.amazonaws.com"
    copied = cli(
        "copy",
        f"{host}/{image.repository}:v1",
        *("--repository", repository, "--tag", "copied", "--json"),
        *("--src-profile", "source", "--src-endpoint-url", ecr.endpoint_url),
        *("--src-registry-id", ecr.registry_id),
        *on(ecr),
        env=env,
    )
    assert_clean(copied)
    assert PROFILE_KEY_ID not in copied.stdout + copied.stderr
    assert PROFILE_SECRET not in copied.stdout + copied.stderr
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["manifest_digest"] == image.digest
    assert report["blobs_uploaded"] == 2
    assert len(ecr.requests("BatchGetImage")) == 1
    assert len(ecr.requests("GetDownloadUrlForLayer")) == 2  # read through the ECR API
    read_back(ecr, repository, ":copied", image)


def test_src_region_overrides_the_host_region(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    image = seed_ecr_source(tmp_path, anon_registry, ecr, SOURCE_REGION)
    ecr.reset()
    copied = cli(
        "copy",
        f"{ecr.registry_id}.dkr.ecr.ap-south-1.amazonaws.com/{image.repository}:v1",
        *("--repository", repository, "--tag", "v1", "--quiet"),
        *("--src-region", SOURCE_REGION, "--src-endpoint-url", ecr.endpoint_url),
        *on(ecr),
        env=make_env(tmp_path),
    )
    assert_clean(copied)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip() == image.digest
    read_back(ecr, repository, ":v1", image)


def test_the_destination_region_is_not_the_source_s(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    """Without --src-region, the host's region is the source's: not the destination's."""
    image = seed_ecr_source(tmp_path, anon_registry, ecr, SOURCE_REGION)
    ecr.reset()
    copied = cli(
        "copy",
        f"{ecr.registry_id}.dkr.ecr.{ecr.region_name}.amazonaws.com/{image.repository}:v1",
        *("--repository", repository, "--src-endpoint-url", ecr.endpoint_url),
        *on(ecr),
        env=make_env(tmp_path),
    )
    assert_clean(copied)
    assert copied.returncode == 1
    assert "not found" in error_line(copied)
    assert ecr.requests("InitiateLayerUpload") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--src-region", "eu west"], "--src-region: 'eu west' is not an AWS region name"),
        (["--src-endpoint-url", "ftp://x"], "--src-endpoint-url: 'ftp://x' is not an http://"),
        (["--src-registry-id", "12345"], "--src-registry-id: "),
        (["--src-profile", "nope"], "--src-profile: no profile named 'nope'"),
        (
            ["--src-ca-bundle", "/no/such/ca.pem", "--src-region", "eu-west-1"],
            "--src-ca-bundle: no such file: /no/such/ca.pem",
        ),
        (["--src-plain-http"], "--src-plain-http: an ECR SOURCE is read through the ECR API"),
        (["--src-creds", "u:p"], "--src-creds: an ECR SOURCE is read with AWS credentials"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_source_options_are_named_before_any_request(
    tmp_path: Path, ecr: LocalEcr, repository: str, args: list[str], message: str
) -> None:
    copied = cli(
        "copy",
        f"{ecr.registry_id}.dkr.ecr.eu-west-1.amazonaws.com/some/app:v1",
        *("--repository", repository, *args),
        *on(ecr),
        env=make_env(tmp_path),
    )
    assert_clean(copied)
    assert copied.returncode == 2, copied.stderr
    assert message in error_line(copied)
    assert ecr.requests() == []


def test_the_ecr_source_options_need_an_ecr_source(
    tmp_path: Path, ecr: LocalEcr, repository: str
) -> None:
    copied = cli(
        "copy",
        "registry.example.com/team/app:1.0",
        *("--repository", repository, "--src-region", "eu-west-1"),
        *on(ecr),
        env=make_env(tmp_path),
    )
    assert copied.returncode == 2
    line = error_line(copied)
    assert "--src-region: SOURCE registry.example.com/team/app is not in ECR" in line
    assert "ACCOUNT.dkr.ecr.REGION.amazonaws.com" in line
    assert ecr.requests() == []
