"""The registry client against the real CNCF distribution registry (Debian's docker-registry).

Registries, token issuer, storage and fault proxy come from ``registry_fixtures`` (all real
servers on 127.0.0.1). Every test seeds what it reads through the registry's push API, and
every byte read is compared with the bytes seeded.
"""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from registry_fixtures import (
    BASIC_PASSWORD,
    BASIC_USER,
    IDENTITY_TOKEN,
    TOKEN_PASSWORD,
    TOKEN_USER,
    Fault,
    FaultProxy,
    RegistryServer,
    SeededImage,
    Seeder,
    StorageServer,
    TokenIssuer,
    sha256_digest,
)

from ecrstream.cancellation import CancellationTokenSource, OperationCanceledError
from ecrstream.errors import (
    BlobSizeError,
    DigestMismatchError,
    EcrStreamError,
    InvalidArgumentError,
    ManifestInvalidError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryError,
    RegistryNotFoundError,
)
from ecrstream.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobReader,
    DockerConfigCredentials,
    ImageReference,
    Manifest,
    Platform,
    RegistryClient,
    RegistryCredentials,
    docker_config_key,
    index_children,
    manifest_blobs,
    parse_reference,
)
from ecrstream.registry.auth import Challenge, parse_www_authenticate, redacted_text
from ecrstream.retry import RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=2.0)
HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


def repo_name(prefix: str = "team") -> str:
    return f"{prefix}/app-{uuid.uuid4().hex[:10]}"


async def read_all(reader: BlobReader, chunk_sizes: tuple[int, ...] = (65_536,)) -> bytes:
    """Everything the reader returns, in buffers cycling through ``chunk_sizes``."""
    out = bytearray()
    turn = 0
    while True:
        buffer = bytearray(chunk_sizes[turn % len(chunk_sizes)])
        turn += 1
        count = await reader.readinto(memoryview(buffer))
        if count == 0:
            return bytes(out)
        assert count == len(buffer) or reader.position == reader.size
        out += buffer[:count]


@pytest.fixture(autouse=True)
def _no_machine_docker_login(isolated_docker_config: Path) -> None:
    """No test may read this machine's own ~/.docker/config.json."""


# -- references ----------------------------------------------------------------------------------

VALID_REFERENCES = [
    ("ubuntu", "registry-1.docker.io", "library/ubuntu", "latest", None),
    ("ubuntu:22.04", "registry-1.docker.io", "library/ubuntu", "22.04", None),
    ("docker.io/ubuntu", "registry-1.docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/library/ubuntu:1", "registry-1.docker.io", "library/ubuntu", "1", None),
    ("bitnami/redis:7", "registry-1.docker.io", "bitnami/redis", "7", None),
    ("docker.io/bitnami/redis", "registry-1.docker.io", "bitnami/redis", "latest", None),
    ("registry.example.com/team/app:1.2", "registry.example.com", "team/app", "1.2", None),
    (
        "registry.example.com:5000/team/app:1.2",
        "registry.example.com:5000",
        "team/app",
        "1.2",
        None,
    ),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("127.0.0.1:5000/a/b/c:v_1", "127.0.0.1:5000", "a/b/c", "v_1", None),
    ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None),
    ("Registry/app", "Registry", "app", "latest", None),
    ("ghcr.io/o/r@" + DIGEST, "ghcr.io", "o/r", None, DIGEST),
    ("ghcr.io/o/r:t@" + DIGEST, "ghcr.io", "o/r", "t", DIGEST),
    ("alpine@" + DIGEST, "registry-1.docker.io", "library/alpine", None, DIGEST),
    ("host.io/a.b/c__d/e-f---g:T.a-g_", "host.io", "a.b/c__d/e-f---g", "T.a-g_", None),
    ("localhost:5000", "registry-1.docker.io", "library/localhost", "5000", None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID_REFERENCES)
def test_parse_reference_normalises_as_docker_does(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    reference = parse_reference(text)
    assert reference == ImageReference(registry, repository, tag, digest)
    assert parse_reference(str(reference)) == reference
    assert reference.manifest_reference == (digest or tag)
    assert reference.is_docker_hub == (registry == "registry-1.docker.io")


INVALID_REFERENCES = [
    ("", "must not be empty"),
    (" ubuntu", "white space"),
    ("ubuntu:", "tag ''"),
    ("ubuntu:-x", "tag '-x'"),
    ("ubuntu:" + "x" * 129, "1 to 128"),
    ("Ubuntu", "must be lower-case"),
    ("registry.example.com/Team/app", "must be lower-case"),
    ("registry.example.com/team//app", "'/'-separated components"),
    ("registry.example.com/team/app-", "'/'-separated components"),
    ("registry.example.com/", "repository is missing"),
    ("ubuntu@sha256:abc", "sha256: and 64"),
    ("ubuntu@md5:" + HEX, "sha256: and 64"),
    ("ubuntu@" + DIGEST.upper(), "sha256: and 64"),
    ("a@b@" + DIGEST, "at most one '@'"),
    (HEX, "image id"),
    ("-bad.host/app", "registry '-bad.host'"),
    ("x" * 256, "over 255"),
    (":tag", "image name is missing"),
]


@pytest.mark.parametrize(("text", "rule"), INVALID_REFERENCES)
def test_parse_reference_refuses_bad_input_naming_source_and_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_reference(text)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, EcrStreamError)
    assert caught.value.field == "source"
    assert rule in caught.value.rule
    assert str(caught.value).startswith("source: ")


def test_a_password_typed_into_a_reference_is_not_echoed() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_reference("bob:hunter2@registry.example.com/team/app")
    assert "hunter2" not in str(caught.value)


def test_image_reference_checks_its_fields() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        ImageReference("registry.example.com", "team/app")
    assert caught.value.field == "tag"
    with pytest.raises(InvalidArgumentError) as caught:
        ImageReference("registry.example.com", "../etc", "x")
    assert caught.value.field == "repository"
    pinned = parse_reference("r.io/a:1").with_digest(DIGEST)
    assert str(pinned) == f"r.io/a:1@{DIGEST}"
    assert pinned.manifest_reference == DIGEST


# -- anonymous, plain HTTP: manifests, indexes, blobs ---------------------------------------------


def anon_client(server: RegistryServer | FaultProxy, **kwargs: object) -> RegistryClient:
    return RegistryClient(server.host, plain_http=True, retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
async def test_manifest_by_tag_is_pinned_to_the_bytes_served(
    anon_registry: RegistryServer, oci: bool
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "1.0", oci=oci)
    async with anon_client(anon_registry) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{anon_registry.host}/{image.repository}:1.0")
        )
        assert manifest.data == image.manifest
        assert manifest.digest == image.digest == sha256_digest(manifest.data)
        assert manifest.media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
        assert not manifest.is_index
        blobs = manifest_blobs(manifest)
        assert [b.digest for b in blobs] == list(image.blobs)
        assert [b.size for b in blobs] == [len(b) for b in image.blobs.values()]
        assert blobs[0].media_type == (
            "application/vnd.oci.image.config.v1+json"
            if oci
            else "application/vnd.docker.container.image.v1+json"
        )
        by_digest = await client.get_manifest(
            parse_reference(f"{anon_registry.host}/{image.repository}@{image.digest}")
        )
        assert by_digest == manifest
        with pytest.raises(ManifestInvalidError, match="not an index"):
            index_children(manifest)


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-manifest-list"])
async def test_index_lists_its_children_with_platforms(
    anon_registry: RegistryServer, oci: bool
) -> None:
    seeder = Seeder(anon_registry)
    platforms = (("linux", "amd64", None), ("linux", "arm64", "v8"), ("windows", "amd64", None))
    index = seeder.push_index(repo_name(), "multi", platforms, oci=oci)
    async with anon_client(anon_registry) as client:
        reference = parse_reference(f"{anon_registry.host}/{index.repository}:multi")
        manifest = await client.get_manifest(reference)
        assert manifest.is_index
        assert manifest.media_type == (OCI_INDEX if oci else DOCKER_MANIFEST_LIST)
        assert (manifest.digest, manifest.data) == (index.digest, index.manifest)
        children = index_children(manifest)
        assert [c.platform for c in children] == [
            Platform("linux", "amd64"),
            Platform("linux", "arm64", "v8"),
            Platform("windows", "amd64"),
        ]
        assert str(children[1].platform) == "linux/arm64/v8"
        for child, seeded in zip(children, index.children, strict=True):
            assert (child.digest, child.size) == (seeded.digest, len(seeded.manifest))
            fetched = await client.get_manifest(reference.with_digest(child.digest))
            assert fetched.data == seeded.manifest
            assert [b.digest for b in manifest_blobs(fetched)] == list(seeded.blobs)
        with pytest.raises(ManifestInvalidError, match="not an image manifest"):
            manifest_blobs(manifest)


async def test_a_moved_tag_does_not_change_a_pinned_image(anon_registry: RegistryServer) -> None:
    seeder = Seeder(anon_registry)
    repository = repo_name()
    first = seeder.push_image(repository, "moving", seed=1)
    async with anon_client(anon_registry) as client:
        reference = parse_reference(f"{anon_registry.host}/{repository}:moving")
        pinned = await client.get_manifest(reference)
        second = seeder.push_image(repository, "moving", seed=2)
        assert second.digest != first.digest
        assert (await client.get_manifest(reference)).digest == second.digest
        again = await client.get_manifest(reference.with_digest(pinned.digest))
        assert again.data == first.manifest


async def test_missing_manifest_and_blob_are_not_found(anon_registry: RegistryServer) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "here")
    async with anon_client(anon_registry) as client:
        with pytest.raises(RegistryNotFoundError) as caught:
            await client.get_manifest(
                parse_reference(f"{anon_registry.host}/{image.repository}:absent")
            )
        assert caught.value.status == 404
        assert caught.value.url == (
            f"http://{anon_registry.host}/v2/{image.repository}/manifests/absent"
        )
        assert "MANIFEST_UNKNOWN" in str(caught.value)
        with pytest.raises(RegistryNotFoundError, match="BLOB_UNKNOWN"):
            await client.open_blob(image.repository, DIGEST, 10)


async def test_blob_reads_whole_and_from_any_offset(anon_registry: RegistryServer) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "blobs", (1_000_003,))
    layer = image.blobs[image.layers[0]]
    async with anon_client(anon_registry) as client:
        async with await client.open_blob(image.repository, image.layers[0], len(layer)) as blob:
            assert await read_all(blob, (65_536, 1, 333_333, 7)) == layer
            assert blob.requests == 1
            assert await blob.readinto(memoryview(bytearray(10))) == 0
        for offset in (1, 65_536, 999_999, len(layer) - 1):
            reader = await client.open_blob(image.repository, image.layers[0], len(layer), offset)
            async with reader:
                assert await read_all(reader, (100_000,)) == layer[offset:]
        at_end = await client.open_blob(image.repository, image.layers[0], len(layer), len(layer))
        assert at_end.requests == 0
        assert await at_end.readinto(bytearray(5)) == 0
        await at_end.aclose()
        with pytest.raises(InvalidArgumentError, match="reader: is closed"):
            await at_end.readinto(bytearray(5))


async def test_open_blob_checks_its_arguments_before_any_request(
    anon_registry: RegistryServer,
) -> None:
    async with anon_client(anon_registry) as client:
        for kwargs, field in (
            ({"repository": "Bad/Name"}, "repository"),
            ({"digest": "sha256:xyz"}, "digest"),
            ({"size": -1}, "size"),
            ({"offset": 11}, "offset"),
            ({"offset": -1}, "offset"),
        ):
            arguments: dict[str, object] = {
                "repository": "team/app",
                "digest": DIGEST,
                "size": 10,
                "offset": 0,
            }
            arguments.update(kwargs)
            with pytest.raises(InvalidArgumentError) as caught:
                await client.open_blob(**arguments)  # type: ignore[arg-type]
            assert caught.value.field == field
        with pytest.raises(InvalidArgumentError, match=r"reference: is in registry 'other\.io'"):
            await client.get_manifest(parse_reference("other.io/team/app:1"))
    with pytest.raises(InvalidArgumentError) as caught:
        RegistryClient("bad host")
    assert caught.value.field == "registry"
    with pytest.raises(InvalidArgumentError) as caught:
        RegistryClient("r.io", verify="/nonexistent/ca.pem")
    assert caught.value.field == "verify"
    with pytest.raises(InvalidArgumentError) as caught:
        RegistryClient("r.io", credentials="no-colon")
    assert caught.value.field == "credentials"
    with pytest.raises(InvalidArgumentError) as caught:
        RegistryClient("r.io", read_timeout=0)
    assert caught.value.field == "read_timeout"


# -- Basic auth over TLS, and the redirect to storage --------------------------------------------


async def test_basic_auth_over_tls_and_the_redirect_drops_authorization(
    basic_registry: tuple[RegistryServer, StorageServer],
) -> None:
    server, storage = basic_registry
    image = Seeder(server).push_image(repo_name(), "tls", (300_000,))
    layer = image.blobs[image.layers[0]]
    storage.requests.clear()
    credentials = f"{BASIC_USER}:{BASIC_PASSWORD}"
    async with RegistryClient(
        server.host, credentials=credentials, verify=str(server.ca_path), retry=FAST_RETRY
    ) as client:
        assert BASIC_PASSWORD not in repr(client)
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:tls")
        )
        assert manifest.data == image.manifest
        async with await client.open_blob(image.repository, image.layers[0], len(layer)) as blob:
            assert await read_all(blob) == layer
        async with await client.open_blob(
            image.repository, image.layers[0], len(layer), 123_456
        ) as blob:
            assert await read_all(blob) == layer[123_456:]
    # Both reads were redirected to storage on another origin, without our credentials.
    assert [(auth, byte_range) for _, auth, byte_range in storage.requests] == [
        (False, None),
        (False, "bytes=123456-"),
    ]
    assert all(path.endswith("/data") for path, _, _ in storage.requests)


async def test_basic_auth_refusals_never_show_the_password(
    basic_registry: tuple[RegistryServer, StorageServer],
) -> None:
    server, _ = basic_registry
    image = Seeder(server).push_image(repo_name(), "tls")
    reference = parse_reference(f"{server.host}/{image.repository}:tls")
    async with RegistryClient(server.host, verify=str(server.ca_path)) as client:
        with pytest.raises(RegistryAuthError, match="asks for Basic credentials and none"):
            await client.get_manifest(reference)
    wrong = RegistryCredentials(BASIC_USER, "wrong-password-123")
    assert repr(wrong) == "RegistryCredentials(username=<redacted>, password=<redacted>)"
    async with RegistryClient(server.host, credentials=wrong, verify=server.ca) as client:
        with pytest.raises(RegistryAuthError) as caught:
            await client.get_manifest(reference)
    assert caught.value.status == 401
    assert "wrong-password-123" not in str(caught.value)
    assert "refused" in str(caught.value)


async def test_tls_with_an_unknown_ca_fails_clearly_at_once(
    basic_registry: tuple[RegistryServer, StorageServer],
) -> None:
    server, _ = basic_registry
    async with RegistryClient(server.host, retry=FAST_RETRY) as client:
        with pytest.raises(RegistryConnectionError, match="pass verify= the CA bundle"):
            await client.get_manifest(parse_reference(f"{server.host}/team/app:1"))


async def test_callable_credentials_are_asked_with_the_registry_host(
    basic_registry: tuple[RegistryServer, StorageServer],
) -> None:
    server, _ = basic_registry
    image = Seeder(server).push_image(repo_name(), "cb")
    asked: list[str] = []

    async def credentials(registry: str) -> tuple[str, str]:
        asked.append(registry)
        return BASIC_USER, BASIC_PASSWORD

    async with RegistryClient(server.host, credentials=credentials, verify=server.ca) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:cb")
        )
    assert manifest.digest == image.digest
    assert asked == [server.host]


# -- token auth ------------------------------------------------------------------------------------


async def test_anonymous_token_flow_caches_one_token_per_scope(
    token_registry: tuple[RegistryServer, TokenIssuer],
) -> None:
    server, issuer = token_registry
    image = Seeder(server).push_image(repo_name("public"), "pub", (50_000, 60_000))
    issuer.reset()
    async with anon_client(server) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:pub")
        )
        assert manifest.data == image.manifest
        for descriptor in manifest_blobs(manifest):
            async with await client.open_blob(
                image.repository, descriptor.digest, descriptor.size
            ) as blob:
                assert await read_all(blob) == image.blobs[descriptor.digest]
        assert client.token_requests == 1
    assert [(r.method, r.user, r.scopes, r.service) for r in issuer.requests] == [
        ("GET", None, (f"repository:{image.repository}:pull",), issuer.service)
    ]


@pytest.mark.parametrize("field", ["token", "access_token"])
async def test_token_flow_with_basic_credentials_at_the_realm(
    token_registry: tuple[RegistryServer, TokenIssuer], field: str
) -> None:
    server, issuer = token_registry
    image = Seeder(server).push_image(repo_name("private"), "priv")
    issuer.reset()
    issuer.token_field = field
    reference = parse_reference(f"{server.host}/{image.repository}:priv")
    async with anon_client(server, credentials=(TOKEN_USER, TOKEN_PASSWORD)) as client:
        assert (await client.get_manifest(reference)).data == image.manifest
    assert [(r.user, r.scopes) for r in issuer.requests] == [
        (TOKEN_USER, (f"repository:{image.repository}:pull",))
    ]
    # Anonymous gets a token without access to a private repository: refused.
    async with anon_client(server) as client:
        with pytest.raises(RegistryAuthError) as caught:
            await client.get_manifest(reference)
    assert caught.value.status == 401
    # Wrong credentials are refused by the token service itself.
    async with anon_client(server, credentials=f"{TOKEN_USER}:nope-pw-42") as client:
        with pytest.raises(RegistryAuthError, match=r"token service .* refused") as caught:
            await client.get_manifest(reference)
    assert "nope-pw-42" not in str(caught.value)
    assert caught.value.url == issuer_url(issuer, server)


def issuer_url(issuer: TokenIssuer, server: RegistryServer) -> str:
    config = json.loads((server.root.parent / "config.yml").read_text())
    realm: str = config["auth"]["token"]["realm"]
    return realm


async def test_a_token_the_registry_refuses_is_fetched_again_once(
    token_registry: tuple[RegistryServer, TokenIssuer],
) -> None:
    server, issuer = token_registry
    seeder = Seeder(server)
    first = seeder.push_image(repo_name("public"), "one", (30_000,))
    second = seeder.push_image(repo_name("public"), "two", (80_000,))
    issuer.reset()
    async with anon_client(server) as client:
        reference = parse_reference(f"{server.host}/{first.repository}:one")
        assert (await client.get_manifest(reference)).data == first.manifest
        assert client.token_requests == 1
        # The realm is known now: the token for a new scope is fetched before the request.
        # The registry refuses it (expired), so it is dropped and a fresh one fetched.
        issuer.expired_next = 1
        reference = parse_reference(f"{server.host}/{second.repository}:two")
        assert (await client.get_manifest(reference)).data == second.manifest
        assert client.token_requests == 3
        layer = second.layers[0]
        async with await client.open_blob(second.repository, layer, 80_000) as blob:
            assert await read_all(blob) == second.blobs[layer]
        assert client.token_requests == 3  # the fresh token is cached and reused
    assert [r.scopes for r in issuer.requests] == [
        (f"repository:{first.repository}:pull",),
        (f"repository:{second.repository}:pull",),
        (f"repository:{second.repository}:pull",),
    ]


async def test_identity_token_from_docker_config_uses_the_oauth2_post(
    token_registry: tuple[RegistryServer, TokenIssuer], isolated_docker_config: Path
) -> None:
    server, issuer = token_registry
    image = Seeder(server).push_image(repo_name("private"), "idt")
    issuer.reset()
    write_config(
        isolated_docker_config, {"auths": {server.host: {"identitytoken": IDENTITY_TOKEN}}}
    )
    async with anon_client(server) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:idt")
        )
    assert manifest.digest == image.digest
    assert [(r.method, r.user) for r in issuer.requests] == [("POST", TOKEN_USER)]


# -- docker's config.json and credential helpers ---------------------------------------------------


def write_config(directory: Path, config: dict[str, object]) -> None:
    (directory / "config.json").write_text(json.dumps(config))


HELPER = """#!{python}
import json, os, sys
server = sys.stdin.read()
with open(os.environ["HELPER_LOG"], "a") as log:
    log.write(json.dumps([sys.argv[1:], server]) + "\\n")
known = json.loads(os.environ["HELPER_CREDENTIALS"])
if server not in known:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = known[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""


@pytest.fixture
def credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-test`` on PATH; it logs each call to the file returned."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-test"
    script.write_text(HELPER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "helper.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HELPER_LOG", str(log))
    monkeypatch.setenv("HELPER_CREDENTIALS", "{}")
    return log


def helper_calls(log: Path) -> list[list[object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("form", ["auth", "username-password"])
async def test_docker_config_auths_log_in(
    basic_registry: tuple[RegistryServer, StorageServer], isolated_docker_config: Path, form: str
) -> None:
    server, _ = basic_registry
    image = Seeder(server).push_image(repo_name(), "cfg")
    if form == "auth":
        encoded = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        entry: dict[str, str] = {"auth": encoded}
    else:
        entry = {"username": BASIC_USER, "password": BASIC_PASSWORD}
    # A legacy key (scheme and path) matches by its host, as in docker.
    write_config(isolated_docker_config, {"auths": {f"https://{server.host}/v1/": entry}})
    async with RegistryClient(server.host, verify=server.ca) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:cfg")
        )
    assert manifest.data == image.manifest


@pytest.mark.parametrize("where", ["credHelpers", "credsStore"])
async def test_docker_credential_helpers_are_run_as_docker_runs_them(
    basic_registry: tuple[RegistryServer, StorageServer],
    isolated_docker_config: Path,
    credential_helper: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    server, _ = basic_registry
    image = Seeder(server).push_image(repo_name(), "helper")
    monkeypatch.setenv(
        "HELPER_CREDENTIALS", json.dumps({server.host: [BASIC_USER, BASIC_PASSWORD]})
    )
    config: dict[str, object] = (
        {"credHelpers": {server.host: "test"}} if where == "credHelpers" else {"credsStore": "test"}
    )
    # auths holds wrong credentials: a helper, when configured, is what docker asks.
    config["auths"] = {server.host: {"username": BASIC_USER, "password": "stale"}}
    write_config(isolated_docker_config, config)
    async with RegistryClient(server.host, verify=server.ca) as client:
        manifest = await client.get_manifest(
            parse_reference(f"{server.host}/{image.repository}:helper")
        )
    assert manifest.digest == image.digest
    assert helper_calls(credential_helper) == [[["get"], server.host]]


async def test_docker_config_failures_are_clear_and_secret_free(
    basic_registry: tuple[RegistryServer, StorageServer],
    isolated_docker_config: Path,
    credential_helper: Path,
) -> None:
    server, _ = basic_registry
    reference = parse_reference(f"{server.host}/team/app:1")
    # The helper does not know this registry: anonymous, which this registry refuses.
    write_config(isolated_docker_config, {"credHelpers": {server.host: "test"}})
    async with RegistryClient(server.host, verify=server.ca) as client:
        with pytest.raises(RegistryAuthError, match="none were found"):
            await client.get_manifest(reference)
    assert helper_calls(credential_helper) == [[["get"], server.host]]
    write_config(isolated_docker_config, {"credsStore": "absent"})
    async with RegistryClient(server.host, verify=server.ca) as client:
        with pytest.raises(RegistryAuthError, match="docker-credential-absent is not on PATH"):
            await client.get_manifest(reference)
    (isolated_docker_config / "config.json").write_text('{"auths": {"x": "s3cr3t-in-bad-json"')
    async with RegistryClient(server.host, verify=server.ca) as client:
        with pytest.raises(RegistryAuthError, match="is not valid JSON") as caught:
            await client.get_manifest(reference)
    assert "s3cr3t" not in str(caught.value)


async def test_docker_hub_credentials_live_under_the_legacy_key(
    isolated_docker_config: Path, credential_helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = parse_reference("ubuntu").registry
    assert docker_config_key(hub) == "https://index.docker.io/v1/"
    assert docker_config_key("ghcr.io") == "ghcr.io"
    encoded = base64.b64encode(b"hubuser:hubpass").decode()
    write_config(
        isolated_docker_config, {"auths": {"https://index.docker.io/v1/": {"auth": encoded}}}
    )
    provider = DockerConfigCredentials()
    assert provider.config_path == isolated_docker_config / "config.json"
    assert await provider.get(hub) == RegistryCredentials("hubuser", "hubpass")
    assert await provider.get("ghcr.io") is None
    monkeypatch.setenv(
        "HELPER_CREDENTIALS", json.dumps({"https://index.docker.io/v1/": ["<token>", "idt"]})
    )
    write_config(isolated_docker_config, {"credHelpers": {"https://index.docker.io/v1/": "test"}})
    assert await provider.get(hub) == RegistryCredentials(identity_token="idt")
    assert helper_calls(credential_helper) == [[["get"], "https://index.docker.io/v1/"]]
    (isolated_docker_config / "config.json").unlink()
    assert await provider.get(hub) is None


# -- digests and limits ----------------------------------------------------------------------------


async def test_manifest_digests_are_verified(
    anon_registry: RegistryServer, fault_proxy: FaultProxy
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "dig")
    other = json.loads(image.manifest)
    other["annotations"] = {"tampered": "yes"}
    tampered = json.dumps(other).encode()
    async with anon_client(fault_proxy) as client:
        by_tag = parse_reference(f"{fault_proxy.host}/{image.repository}:dig")
        fault_proxy.add(
            Fault(
                "replace",
                where="/manifests/",
                body=tampered,
                headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": image.digest},
            )
        )
        with pytest.raises(DigestMismatchError) as caught:
            await client.get_manifest(by_tag)
        assert (caught.value.expected, caught.value.actual) == (
            image.digest,
            sha256_digest(tampered),
        )
        fault_proxy.add(
            Fault(
                "replace",
                where="/manifests/",
                body=tampered,
                headers={"Content-Type": OCI_MANIFEST},
            )
        )
        with pytest.raises(DigestMismatchError, match="the reference says"):
            await client.get_manifest(by_tag.with_digest(image.digest))
        assert (await client.get_manifest(by_tag)).data == image.manifest


async def test_huge_schema1_and_unknown_manifests_are_refused(
    anon_registry: RegistryServer, fault_proxy: FaultProxy
) -> None:
    image = Seeder(anon_registry).push_image(repo_name(), "bad")
    reference = parse_reference(f"{fault_proxy.host}/{image.repository}:bad")
    cases = [
        (b"{" + b" " * (4 * 1024 * 1024) + b"}", OCI_MANIFEST, "over the 4194304-byte limit"),
        (
            json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema 1",
        ),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', "text/plain", "'text/plain' is not"),
        (b"not json", OCI_MANIFEST, "not valid JSON"),
    ]
    async with anon_client(fault_proxy) as client:
        for body, content_type, message in cases:
            fault_proxy.add(
                Fault(
                    "replace",
                    where="/manifests/",
                    body=body,
                    headers={"Content-Type": content_type},
                )
            )
            with pytest.raises(ManifestInvalidError, match=message):
                await client.get_manifest(reference)
    broken = image.manifest.replace(b'"size": ', b'"size": -')
    with pytest.raises(ManifestInvalidError, match=r"config\.size: must be an integer >= 0"):
        manifest_blobs(Manifest(image.digest, OCI_MANIFEST, broken))


# -- source faults ---------------------------------------------------------------------------------


@pytest.fixture
def faulty_image(anon_registry: RegistryServer) -> tuple[SeededImage, bytes]:
    image = Seeder(anon_registry).push_image(repo_name(), "faults", (2 * 1024 * 1024 + 17,))
    return image, image.blobs[image.layers[0]]


async def read_through_proxy(
    proxy: FaultProxy, image: SeededImage, offset: int = 0, **kwargs: object
) -> tuple[bytes, BlobReader]:
    layer = image.layers[0]
    size = len(image.blobs[layer])
    async with (
        anon_client(proxy, **kwargs) as client,
        await client.open_blob(image.repository, layer, size, offset) as reader,
    ):
        return await read_all(reader, (1024 * 1024,)), reader


@pytest.mark.parametrize("kind", ["reset", "truncate"])
async def test_a_broken_body_resumes_from_the_byte_reached(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes], kind: str
) -> None:
    image, layer = faulty_image
    fault_proxy.add(Fault(kind, at_byte=300_000))
    fault_proxy.add(Fault(kind, at_byte=500_000))
    data, reader = await read_through_proxy(fault_proxy, image)
    assert data == layer
    gets = fault_proxy.blob_gets()
    assert [g.fault for g in gets] == [kind, kind, None]
    assert gets[0].range is None
    assert reader.requests == 3
    # Each retry starts at the byte reached: past zero, and never past what was sent.
    first, second = (int(g.range.removeprefix("bytes=").rstrip("-")) for g in gets[1:])  # type: ignore[union-attr]
    assert 0 < first <= 300_000
    assert first < second <= first + 500_000


async def test_a_stalled_body_times_out_and_resumes(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    fault_proxy.add(Fault("stall", at_byte=700_000))
    data, _ = await read_through_proxy(fault_proxy, image, read_timeout=0.3)
    assert data == layer
    gets = fault_proxy.blob_gets()
    assert [g.fault for g in gets] == ["stall", None]
    assert gets[1].range is not None
    assert gets[1].range != "bytes=0-"


async def test_5xx_and_429_are_retried_and_retry_after_is_honoured(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    fault_proxy.add(Fault("status", status=503))
    fault_proxy.add(Fault("status", status=500, where="/manifests/"))
    fault_proxy.add(Fault("throttle", retry_after="1"))
    started = time.monotonic()
    async with anon_client(fault_proxy) as client:
        reference = parse_reference(f"{fault_proxy.host}/{image.repository}:faults")
        assert (await client.get_manifest(reference)).data == image.manifest
    data, _ = await read_through_proxy(fault_proxy, image)
    assert time.monotonic() - started >= 0.95  # Retry-After: 1 was waited for
    assert data == layer
    assert [g.fault for g in fault_proxy.blob_gets()] == ["status", "throttle", None]


async def test_retries_are_bounded(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, _ = faulty_image
    fault_proxy.add(Fault("status", status=502, times=10))
    with pytest.raises(RegistryError) as caught:
        await read_through_proxy(fault_proxy, image)
    assert caught.value.status == 502
    assert len(fault_proxy.blob_gets()) == FAST_RETRY.max_attempts
    fault_proxy.reset()
    fault_proxy.add(Fault("throttle", retry_after="3600"))
    with pytest.raises(RegistryError, match="retry after 3600 s"):
        await read_through_proxy(fault_proxy, image)
    assert len(fault_proxy.blob_gets()) == 1
    fault_proxy.reset()
    fault_proxy.add(Fault("reset", at_byte=0, times=10))
    with pytest.raises(RegistryConnectionError):
        await read_through_proxy(fault_proxy, image)


async def test_a_server_that_ignores_range_has_the_prefix_discarded(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    offset = 1_234_567
    fault_proxy.add(Fault("ignore_range"))
    data, _ = await read_through_proxy(fault_proxy, image, offset)
    assert data == layer[offset:]
    # A reset, then a retry that ignores Range: the bytes already returned are skipped.
    fault_proxy.reset()
    fault_proxy.add(Fault("reset", at_byte=400_000))
    fault_proxy.add(Fault("ignore_range"))
    data, reader = await read_through_proxy(fault_proxy, image, offset)
    assert data == layer[offset:]
    assert [g.fault for g in fault_proxy.blob_gets()] == ["reset", "ignore_range"]
    assert reader.requests == 2


async def test_size_overrun_and_underrun_are_clear_errors(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    fault_proxy.add(Fault("overrun"))
    with pytest.raises(BlobSizeError, match="sent a whole blob of 2097175 bytes") as caught:
        await read_through_proxy(fault_proxy, image)
    assert (caught.value.expected, caught.value.actual) == (len(layer), len(layer) + 6)
    fault_proxy.add(Fault("short", at_byte=100_000))
    with pytest.raises(BlobSizeError, match="ended after 100000 bytes") as caught:
        await read_through_proxy(fault_proxy, image)
    async with anon_client(fault_proxy) as client:
        with pytest.raises(BlobSizeError, match="descriptor says 2097159"):
            await client.open_blob(image.repository, image.layers[0], len(layer) - 10)
        with pytest.raises(BlobSizeError, match="has 2097169 bytes"):
            await client.open_blob(image.repository, image.layers[0], len(layer) + 1, 5)


async def test_cancellation_stops_a_stalled_read_and_a_backoff(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    fault_proxy.add(Fault("stall", at_byte=600_000))
    source = CancellationTokenSource()
    async with anon_client(fault_proxy, read_timeout=30) as client:
        reader = await client.open_blob(
            image.repository, image.layers[0], len(layer), cancellation_token=source.token
        )
        buffer = bytearray(len(layer))

        async def cancel_once_stalled() -> None:
            await anyio.to_thread.run_sync(fault_proxy.stalled.wait, 10)
            source.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_once_stalled)
            started = time.monotonic()
            with pytest.raises(OperationCanceledError):
                await reader.readinto(memoryview(buffer))
        assert time.monotonic() - started < 10  # not the 30 s read timeout
        assert 0 < reader.position <= 600_000
        await reader.aclose()
        # A backoff is cancelled too.
        fault_proxy.add(Fault("status", times=10))
        source = CancellationTokenSource()
        slow = RetryPolicy(max_attempts=5, base_delay=30, max_delay=30)
        async with RegistryClient(fault_proxy.host, plain_http=True, retry=slow) as slow_client:
            source.cancel_after(0.2)
            with pytest.raises(OperationCanceledError):
                await slow_client.open_blob(
                    image.repository, image.layers[0], len(layer), cancellation_token=source.token
                )


async def test_many_random_faults_lose_no_byte(
    fault_proxy: FaultProxy, faulty_image: tuple[SeededImage, bytes]
) -> None:
    image, layer = faulty_image
    rng = random.Random(17)
    kinds = []
    for _ in range(8):
        kind = rng.choice(["reset", "truncate", "stall", "status", "throttle"])
        kinds.append(kind)
        fault_proxy.add(Fault(kind, at_byte=rng.randrange(1, 100_000), retry_after="0"))
    offset = rng.randrange(len(layer) // 2)  # each fault cuts a response before the end
    data, reader = await read_through_proxy(fault_proxy, image, offset, read_timeout=0.3)
    assert data == layer[offset:]
    assert [g.fault for g in fault_proxy.blob_gets()] == [*kinds, None]
    assert reader.requests == 9


def test_www_authenticate_challenges_are_parsed_as_rfc_9110_says() -> None:
    header = (
        'Basic realm="basic, with comma", Bearer realm="https://auth.example.com/token",'
        'service="registry.example.com",scope="repository:a/b:pull,push", error=insufficient_scope'
        ", Newer token68=="
    )
    assert parse_www_authenticate(header) == (
        Challenge("basic", "basic, with comma"),
        Challenge(
            "bearer",
            "https://auth.example.com/token",
            "registry.example.com",
            "repository:a/b:pull,push",
        ),
        Challenge("newer"),
    )
    assert parse_www_authenticate('bearer REALM="x\\"y"') == (Challenge("bearer", 'x"y'),)
    assert parse_www_authenticate("") == ()


def test_an_error_text_quoting_a_presigned_url_loses_its_query_and_user() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/blob?X-Amz-Credential=ASIA0000%2F2026"
        "&X-Amz-Security-Token=token-value&X-Amz-Signature=signature-value"
    )
    text = redacted_text(f"Cannot fetch {url}: too many redirects; see http://u:pw@h:5000/v2/.")

    assert text == (
        "Cannot fetch https://bucket.s3.amazonaws.com/blob: too many redirects;"
        " see http://h:5000/v2/."
    )
