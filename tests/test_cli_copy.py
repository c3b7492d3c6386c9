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
from cli_run import assert_clean, cli, error_line, go_on_command, make_env, on
from helpers import assert_copied
from lying_ecr import Exchange, LyingEcr, Reply
from registry_fixtures import (
    BASIC_PASSWORD,
    BASIC_USER,
    Fault,
    FaultProxy,
    RegistryServer,
    SeededImage,
    Seeder,
    StorageServer,
)

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
    stopped = cli(*args, "--timeout", "3", "--json", env=env)
    assert_clean(stopped)
    assert stopped.returncode == 1, stopped.stderr
    assert "timed out" in stopped.stderr
    saved = json.loads(checkpoint.read_text())
    assert saved["source_digest"] == image.digest
    assert ecr.requests("PutImage") == []
    again = go_on_command(stopped.stderr)
    assert again[-2:] == ["--resume", str(checkpoint)]
    report = json.loads(stopped.stdout)  # --json: the same, for a script
    assert report["stopped"] is True
    assert (report["reason"], report["exit_code"]) == ("timed out after 3 s (--timeout)", 1)
    assert report["checkpoint"] == str(checkpoint)
    assert report["in_flight_digests"] == [image.layers[0]]
    assert shlex.split(report["resume_command"]) == again
    again = [word for word in again if word != "--json"]
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
            await assert_copied(ecr, client, repository, reference, image)

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
    line = error_line(copied)
    assert f"the source repository of {ecr.registry_id}.dkr.ecr." in line
    assert "--src-region" in line
    assert ecr.requests("InitiateLayerUpload") == []


def test_a_source_repository_gone_before_its_referrers_are_listed_names_the_source(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    image = seed_ecr_source(tmp_path, anon_registry, ecr, SOURCE_REGION)

    def gone(exchange: Exchange) -> Reply:
        message = f"The repository with name '{exchange.repository_name}' does not exist"
        return Reply(400, {"__type": "RepositoryNotFoundException", "message": message})

    with LyingEcr(ecr) as liar:
        liar.lie("ListImageReferrers", gone)
        copied = cli(
            "copy",
            f"{ecr.registry_id}.dkr.ecr.{SOURCE_REGION}.amazonaws.com/{image.repository}:v1",
            *("--repository", repository, "--with-referrers"),
            *("--src-endpoint-url", liar.endpoint_url),
            *on(ecr),
            env=make_env(tmp_path),
        )

    assert_clean(copied)
    assert copied.returncode == 1
    line = error_line(copied)
    # The source's, not the destination's (which has the image by then)
    assert "the source repository of" in line, line
    assert "while copying the referrers" in line, line
    read_back(ecr, repository, f"@{image.digest}", image)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--src-region", "eu west"], "--src-region: 'eu west' is not an AWS region name"),
        (["--src-endpoint-url", "ftp://x"], "--src-endpoint-url: 'ftp://x' is not an http://"),
        (["--src-registry-id", "12345"], "--src-registry-id: "),
        (["--src-profile", "nope"], "--src-profile: no profile named 'nope'"),
        (
            ["--src-ca-bundle", "/no/such/ca.pem"],
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


@pytest.mark.parametrize("option", ["--endpoint-url", "--src-endpoint-url"])
def test_an_endpoint_url_with_a_password_is_refused_without_printing_it(
    tmp_path: Path, ecr: LocalEcr, repository: str, option: str
) -> None:
    """aiohttp can never send such a request (it signs with AWS keys, not the URL's): a usage
    error naming the option, before any request, and the password is not printed."""
    password = f"url-pass-{uuid.uuid4().hex[:8]}"
    url = f"http://user:{password}@{ecr.endpoint_url.removeprefix('http://')}"
    copied = cli(
        "copy",
        f"{ecr.registry_id}.dkr.ecr.eu-west-1.amazonaws.com/some/app:v1",
        *("--repository", repository, "--region", ecr.region_name, "--debug"),
        *(option, url),
        *([] if option == "--endpoint-url" else ["--endpoint-url", ecr.endpoint_url]),
        env=make_env(tmp_path),
    )
    assert copied.returncode == 2, copied.stderr
    assert f"{option}: " in copied.stderr
    assert password not in copied.stdout + copied.stderr
    assert ecr.requests() == []


def test_debug_logs_do_not_show_the_source_password(
    tmp_path: Path, ecr: LocalEcr, repository: str
) -> None:
    """--debug logs the options a run was given, but not --src-creds's password."""
    password = f"debug-pass-{uuid.uuid4().hex[:8]}"
    copied = cli(
        "copy",
        "registry.example.com/team/app:1.0",
        *("--repository", repository, "--src-creds", f"puller:{password}", "--debug"),
        *("--src-region", "eu-west-1"),  # a usage error: it stops before any request
        *on(ecr),
        env=make_env(tmp_path),
    )
    assert copied.returncode == 2
    assert "ecrstream copy:" in copied.stderr  # the options were logged
    assert password not in copied.stdout + copied.stderr


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


# -- the source's failures, explained: one line, a hint, exit code 1 ------------------------------


def source_env(tmp_path: Path) -> dict[str, str]:
    """make_env, with an empty docker config (never the machine's own logins)."""
    env = make_env(tmp_path)
    docker = tmp_path / "docker-config"
    docker.mkdir(exist_ok=True)
    env["DOCKER_CONFIG"] = str(docker)
    return env


def failed_copy(tmp_path: Path, ecr: LocalEcr, repository: str, source: str, *args: str) -> str:
    """Run a copy that must fail; its one error line (no traceback, no credentials)."""
    result = cli(
        "copy", source, "--repository", repository, *args, *on(ecr), env=source_env(tmp_path)
    )
    assert_clean(result)
    assert BASIC_PASSWORD not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr
    assert "copied" not in result.stdout  # (progress lines may be there: not a terminal)
    line = error_line(result)
    assert line.startswith("ecrstream copy: error: ")
    assert ecr.requests("PutImage") == []
    return line


def test_a_wrong_password_is_explained(
    tmp_path: Path,
    basic_registry: tuple[RegistryServer, StorageServer],
    ecr: LocalEcr,
    repository: str,
) -> None:
    server, _storage = basic_registry
    image = Seeder(server).push_image(f"cli/basic-{uuid.uuid4().hex[:8]}", "v1", (20_000,))
    line = failed_copy(
        tmp_path,
        ecr,
        repository,
        f"{server.host}/{image.repository}:v1",
        *("--src-creds", f"{BASIC_USER}:wrong-{BASIC_PASSWORD}"),
        *("--src-ca-bundle", str(server.ca)),
    )
    assert f"the source registry {server.host} refused access" in line
    assert "401" in line
    assert "check --src-creds USER:PASS" in line
    assert "wrong-" not in line


def test_unreadable_docker_credentials_are_not_called_a_refusal(
    tmp_path: Path,
    basic_registry: tuple[RegistryServer, StorageServer],
    ecr: LocalEcr,
    repository: str,
) -> None:
    server, _storage = basic_registry
    image = Seeder(server).push_image(f"cli/docker-{uuid.uuid4().hex[:8]}", "v1", (20_000,))
    env = source_env(tmp_path)
    config = Path(env["DOCKER_CONFIG"]) / "config.json"
    config.write_text('{"auths": {')  # cut short

    result = cli(
        "copy",
        f"{server.host}/{image.repository}:v1",
        *("--repository", repository, "--src-ca-bundle", str(server.ca)),
        *on(ecr),
        env=env,
    )

    assert result.returncode == 1, result.stderr
    assert_clean(result)
    line = error_line(result)
    assert f"the credentials for the source registry {server.host} could not be read" in line
    assert f"docker config {config}: is not valid JSON" in line
    assert "pass --src-creds USER:PASS" in line
    assert "refused" not in line


def test_src_creds_without_a_colon_names_the_option(
    tmp_path: Path, ecr: LocalEcr, repository: str
) -> None:
    result = cli(
        "copy",
        "registry.example/app:1",
        *("--repository", repository, "--src-creds", "alice-TopSecretPW"),
        *on(ecr),
        env=source_env(tmp_path),
    )

    assert result.returncode == 2, result.stderr
    assert_clean(result)
    line = error_line(result)
    assert "--src-creds: must be USER:PASSWORD" in line, line
    assert "TopSecretPW" not in result.stdout + result.stderr
    assert ecr.requests() == []


def test_an_untrusted_source_certificate_is_explained(
    tmp_path: Path,
    basic_registry: tuple[RegistryServer, StorageServer],
    ecr: LocalEcr,
    repository: str,
) -> None:
    server, _storage = basic_registry
    line = failed_copy(
        tmp_path,
        ecr,
        repository,
        f"{server.host}/cli/any:v1",
        *("--src-creds", f"{BASIC_USER}:{BASIC_PASSWORD}"),
    )
    assert "cannot read from the source registry" in line
    assert "certificate" in line
    assert "pass --src-ca-bundle FILE" in line
    assert "verify=" not in line  # the library's argument, not an option
    assert "object at 0x" not in line  # aiohttp's repr of the TLS context: not for users


def test_tls_to_a_plain_http_source_is_explained(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    line = failed_copy(tmp_path, ecr, repository, f"{anon_registry.host}/cli/any:v1")
    assert "pass --src-plain-http" in line


@pytest.mark.parametrize("missing", ["repository", "tag"])
def test_a_missing_source_image_is_explained(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str, missing: str
) -> None:
    name = f"cli/seeded-{uuid.uuid4().hex[:8]}"
    if missing == "tag":
        Seeder(anon_registry).push_image(name, "v1", (10_000,))
    else:
        name = f"cli/never-{uuid.uuid4().hex[:8]}"
    source = f"{anon_registry.host}/{name}:nope"
    line = failed_copy(tmp_path, ecr, repository, source, "--src-plain-http")
    assert f"{source}: not found at the source" in line
    assert "404" in line
    assert "check SOURCE's repository and its tag or digest" in line


def test_a_rate_limited_source_is_explained(
    tmp_path: Path,
    anon_registry: RegistryServer,
    fault_proxy: FaultProxy,
    ecr: LocalEcr,
    repository: str,
) -> None:
    image = Seeder(anon_registry).push_image(f"cli/rate-{uuid.uuid4().hex[:8]}", "v1", (10_000,))
    fault_proxy.add(Fault("throttle", where="/manifests/", retry_after="0", times=100))
    line = failed_copy(
        tmp_path,
        ecr,
        repository,
        f"{fault_proxy.host}/{image.repository}:v1",
        "--src-plain-http",
    )
    assert "is rate limiting (HTTP 429)" in line
    assert "run the command again, or pass --src-creds" in line
    assert sum(r.fault == "throttle" for r in fault_proxy.requests) > 1  # retried first


@pytest.mark.parametrize("kind", ["replace", "short"])
def test_a_corrupt_source_blob_is_explained(
    tmp_path: Path,
    anon_registry: RegistryServer,
    fault_proxy: FaultProxy,
    ecr: LocalEcr,
    repository: str,
    kind: str,
) -> None:
    image = Seeder(anon_registry).push_image(f"cli/bad-{uuid.uuid4().hex[:8]}", "v1", (200_000,))
    layer = image.layers[0]
    body = bytes(len(image.blobs[layer]))
    fault_proxy.add(Fault(kind, where=layer, body=body, at_byte=50_000, times=100))
    line = failed_copy(
        tmp_path,
        ecr,
        repository,
        f"{fault_proxy.host}/{image.repository}:v1",
        "--src-plain-http",
    )
    assert layer in line
    if kind == "replace":
        assert "the source sent a blob whose bytes do not match its digest" in line
    else:
        assert "the source sent a blob of another size than its manifest says" in line
    assert "no image was put" in line
    completed = [d for r in ecr.requests("CompleteLayerUpload") for d in r.layer_digests]
    assert layer not in completed


def test_a_platform_the_index_lacks_is_explained(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    index = Seeder(anon_registry).push_index(
        f"cli/multi-{uuid.uuid4().hex[:8]}",
        "multi",
        (("linux", "amd64", None), ("linux", "arm64", "v8")),
    )
    line = failed_copy(
        tmp_path,
        ecr,
        repository,
        f"{anon_registry.host}/{index.repository}:multi",
        *("--platform", "linux/amd64", "--platform", "linux/s390x", "--src-plain-http"),
    )
    assert "--platform: " in line
    assert "has no platform linux/s390x (it has: linux/amd64, linux/arm64/v8)" in line
    assert ecr.requests("InitiateLayerUpload") == []
