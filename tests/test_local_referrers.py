"""The local ECR's referrers, listed both ways ECR lists them, over real HTTP: the OCI 1.1
referrers API (``GET /v2/<name>/referrers/<digest>``) and the ECR API's ListImageReferrers
(``EcrClient.list_image_referrers``, through aiobotocore).

Manifests are put through the ECR API (PutImage by digest, untagged, as notation's and oras'
referrers land in ECR); the list is read back with aiohttp (the exact index, headers and
statuses) and with ``RegistryClient.get_referrers``, logged in with the password of
GetAuthorizationToken (``EcrClient.get_authorization_token``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from helpers import digest_of, push_layer

from ecrstream.client import EcrClient
from ecrstream.errors import (
    InvalidArgumentError,
    InvalidParameterError,
    LayerAlreadyExistsError,
    RepositoryNotFoundError,
)
from ecrstream.local import LocalEcr, Operation
from ecrstream.models import (
    GetAuthorizationTokenRequest,
    ImageReferrer,
    ListImageReferrersRequest,
    ListImageReferrersResponse,
    PutImageRequest,
)
from ecrstream.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNATURE = "application/vnd.cncf.notary.signature"
SBOM = "application/spdx+json"


@dataclass(frozen=True)
class Put:
    """A manifest put into the repository: its bytes and digest."""

    data: bytes
    digest: str

    def descriptor(self, artifact_type: str, **annotations: str) -> dict[str, Any]:
        """Its entry in a referrers list, as the OCI spec has it."""
        entry: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.data),
            "artifactType": artifact_type,
        }
        if annotations:
            entry["annotations"] = annotations
        return entry


async def blob(client: EcrClient, repository: str, data: bytes) -> str:
    """``data`` as a layer of the repository (once: the configs repeat)."""
    try:
        return await push_layer(client, repository, data)
    except LayerAlreadyExistsError:
        return digest_of(data)


async def put_manifest(
    client: EcrClient, repository: str, document: dict[str, Any], *, tag: str | None = None
) -> Put:
    data = json.dumps(document, indent=1).encode()  # not canonical: the bytes make the digest
    await client.put_image(
        PutImageRequest(
            repository_name=repository,
            image_manifest=data.decode(),
            image_manifest_media_type=OCI_MANIFEST,
            image_tag=tag,
            image_digest=None if tag else digest_of(data),
        )
    )
    return Put(data, digest_of(data))


async def put_artifact(
    client: EcrClient,
    repository: str,
    subject: Put | None,
    payload: bytes,
    *,
    artifact_type: str | None,
    annotations: dict[str, str] | None = None,
    tag: str | None = None,
) -> Put:
    """An OCI artifact manifest (empty config unless ``artifact_type`` is None: then an image
    config) with ``subject``, put by digest (or under ``tag``)."""
    config = b"{}" if artifact_type else b'{"os": "linux"}'
    config_digest = await blob(client, repository, config)
    layer = await blob(client, repository, payload)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": EMPTY_TYPE if artifact_type else IMAGE_CONFIG,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/octet-stream", "digest": layer, "size": len(payload)}
        ],
    }
    if artifact_type:
        document["artifactType"] = artifact_type
    if subject is not None:
        document["subject"] = {
            "mediaType": OCI_MANIFEST,
            "digest": subject.digest,
            "size": len(subject.data),
        }
    if annotations:
        document["annotations"] = annotations
    return await put_manifest(client, repository, document, tag=tag)


@pytest.fixture
async def password(client: EcrClient) -> str:
    answer = await client.get_authorization_token(GetAuthorizationTokenRequest())
    token = answer.authorization_data[0].authorization_token
    return base64.b64decode(token).decode().partition(":")[2]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def http(password: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=basic("AWS", password)) as session:
        yield session


async def referrers_of(
    http: aiohttp.ClientSession, ecr: LocalEcr, repository: str, digest: str, query: str = ""
) -> tuple[int, dict[str, str], dict[str, Any]]:
    url = f"{ecr.endpoint_url}/v2/{repository}/referrers/{digest}{query}"
    async with http.get(url) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


@dataclass(frozen=True)
class Seeded:
    image: Put
    signature: Put
    sbom: Put
    plain: Put
    of_signature: Put


@pytest.fixture
async def seeded(client: EcrClient, repository: str) -> Seeded:
    """An image (tagged) with a signature (untagged), an SBOM (tagged: a tag does not
    matter), a referrer without artifactType, and a signature of the signature."""
    image = await put_artifact(client, repository, None, b"the image", artifact_type=None, tag="v1")
    signature = await put_artifact(
        client,
        repository,
        image,
        b"a notation signature",
        artifact_type=SIGNATURE,
        annotations={"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
    )
    sbom = await put_artifact(client, repository, image, b"an sbom", artifact_type=SBOM, tag="sbom")
    plain = await put_artifact(client, repository, image, b"no artifact type", artifact_type=None)
    of_signature = await put_artifact(
        client, repository, signature, b"countersigned", artifact_type=SIGNATURE
    )
    return Seeded(image, signature, sbom, plain, of_signature)


async def test_the_index_lists_the_manifests_whose_subject_is_the_digest(
    ecr: LocalEcr, repository: str, http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    status, headers, index = await referrers_of(http, ecr, repository, seeded.image.digest)

    assert status == 200
    assert headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in headers
    assert index == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            seeded.signature.descriptor(
                SIGNATURE, **{"io.cncf.notary.x509chain.thumbprint#S256": "[]"}
            ),
            seeded.sbom.descriptor(SBOM),
            seeded.plain.descriptor(IMAGE_CONFIG),  # no artifactType: the config's media type
        ],
    }
    status, _, index = await referrers_of(http, ecr, repository, seeded.signature.digest)
    assert (status, index["manifests"]) == (200, [seeded.of_signature.descriptor(SIGNATURE)])


async def test_artifact_type_filters_and_says_so(
    ecr: LocalEcr, repository: str, http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    status, headers, index = await referrers_of(
        http, ecr, repository, seeded.image.digest, f"?artifactType={quote(SBOM, safe='')}"
    )

    assert status == 200
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert index["manifests"] == [seeded.sbom.descriptor(SBOM)]
    _, headers, index = await referrers_of(
        http, ecr, repository, seeded.image.digest, "?artifactType=application/none"
    )
    assert (headers["OCI-Filters-Applied"], index["manifests"]) == ("artifactType", [])


async def test_no_referrer_is_an_empty_index_not_a_404(
    ecr: LocalEcr,
    repository: str,
    client: EcrClient,
    http: aiohttp.ClientSession,
    password: str,
    seeded: Seeded,
) -> None:
    unknown = digest_of(b"nothing refers to this")
    for digest in (seeded.sbom.digest, unknown):
        status, headers, index = await referrers_of(http, ecr, repository, digest)
        assert status == 200
        assert headers["Content-Type"] == OCI_INDEX
        assert index == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}

    async with RegistryClient(
        ecr.registry_address, credentials=("AWS", password), plain_http=True, docker_config=False
    ) as registry:
        assert await registry.get_referrers(repository, unknown) == ()
        listed = await registry.get_referrers(repository, seeded.image.digest)
    assert listed is not None
    assert [entry.digest for entry in listed] == [
        seeded.signature.digest,
        seeded.sbom.digest,
        seeded.plain.digest,
    ]


async def test_it_needs_the_login_a_known_repository_and_a_digest(
    ecr: LocalEcr, repository: str, http: aiohttp.ClientSession, seeded: Seeded
) -> None:
    url = f"{ecr.endpoint_url}/v2/{repository}/referrers/{seeded.image.digest}"
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    async with (
        aiohttp.ClientSession(headers=basic("AWS", "wrong")) as wrong,
        wrong.get(url) as response,
    ):
        assert response.status == 401

    status, _, answer = await referrers_of(http, ecr, "no/such-repo", seeded.image.digest)
    assert (status, answer["errors"][0]["code"]) == (404, "NAME_UNKNOWN")
    status, _, answer = await referrers_of(http, ecr, repository, "sha256:not-hex")
    assert (status, answer["errors"][0]["code"]) == (400, "DIGEST_INVALID")


# -- ListImageReferrers: the ECR API's listing (moto lacks it; the proxy answers it) ---------


def listed(page: ListImageReferrersResponse) -> list[str]:
    return [referrer.digest for referrer in page.referrers]


async def test_list_image_referrers_gives_the_same_list_in_ecrs_shape(
    ecr: LocalEcr, client: EcrClient, repository: str, seeded: Seeded
) -> None:
    page = await client.list_image_referrers(
        ListImageReferrersRequest(repository, seeded.image.digest)
    )

    assert page.next_token is None
    assert page.referrers == (
        ImageReferrer(
            digest=seeded.signature.digest,
            media_type=OCI_MANIFEST,
            size=len(seeded.signature.data),
            artifact_type=SIGNATURE,
            annotations={"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
            artifact_status="ACTIVE",
        ),
        ImageReferrer(seeded.sbom.digest, OCI_MANIFEST, len(seeded.sbom.data), SBOM, {}, "ACTIVE"),
        ImageReferrer(
            seeded.plain.digest, OCI_MANIFEST, len(seeded.plain.data), IMAGE_CONFIG, {}, "ACTIVE"
        ),
    )
    below = await client.list_image_referrers(
        ListImageReferrersRequest(repository, seeded.signature.digest)
    )
    assert listed(below) == [seeded.of_signature.digest]
    nothing = await client.list_image_referrers(
        ListImageReferrersRequest(repository, digest_of(b"nothing refers to this"))
    )
    assert nothing == ListImageReferrersResponse((), None)
    assert {r.operation for r in ecr.requests()} >= {Operation.LIST_IMAGE_REFERRERS}


async def test_list_image_referrers_filters_by_artifact_type_and_status(
    client: EcrClient, repository: str, seeded: Seeded
) -> None:
    async def digests(**fields: Any) -> list[str]:
        request = ListImageReferrersRequest(repository, seeded.image.digest, **fields)
        return listed(await client.list_image_referrers(request))

    assert await digests(artifact_types=(SBOM,)) == [seeded.sbom.digest]
    assert await digests(artifact_types=(SBOM, SIGNATURE)) == [
        seeded.signature.digest,
        seeded.sbom.digest,
    ]
    assert await digests(artifact_types=("application/none",)) == []
    everything = [seeded.signature.digest, seeded.sbom.digest, seeded.plain.digest]
    assert await digests(artifact_status="ANY") == everything
    assert await digests(artifact_status="ACTIVE") == everything
    assert await digests(artifact_status="ARCHIVED") == []  # nothing here is ever archived


async def test_list_image_referrers_pages_of_20_or_max_results_follow_next_token(
    client: EcrClient, repository: str
) -> None:
    image = await put_artifact(client, repository, None, b"many referrers", artifact_type=None)
    config = await blob(client, repository, b"{}")
    puts = []
    for number in range(23):
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE,
            "config": {"mediaType": EMPTY_TYPE, "digest": config, "size": 2},
            "layers": [{"mediaType": EMPTY_TYPE, "digest": config, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": 1},
            "annotations": {"number": str(number)},
        }
        puts.append((await put_manifest(client, repository, document)).digest)

    first = await client.list_image_referrers(ListImageReferrersRequest(repository, image.digest))
    assert len(first.referrers) == 20
    assert first.next_token is not None
    rest = await client.list_image_referrers(
        ListImageReferrersRequest(repository, image.digest, next_token=first.next_token)
    )
    assert rest.next_token is None
    assert sorted(listed(first) + listed(rest)) == sorted(puts)

    pages, token = [], None
    while True:
        page = await client.list_image_referrers(
            ListImageReferrersRequest(repository, image.digest, max_results=7, next_token=token)
        )
        pages.append(len(page.referrers))
        token = page.next_token
        if token is None:
            break
    assert pages == [7, 7, 7, 2]


async def test_list_image_referrers_refuses_a_foreign_token_and_an_unknown_repository(
    client: EcrClient, repository: str, seeded: Seeded
) -> None:
    with pytest.raises(InvalidParameterError, match="nextToken"):
        await client.list_image_referrers(
            ListImageReferrersRequest(repository, seeded.image.digest, next_token="not-ours")
        )
    with pytest.raises(RepositoryNotFoundError):
        await client.list_image_referrers(
            ListImageReferrersRequest("no/such-repo", seeded.image.digest)
        )


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"subject_digest": "sha256:not-hex"}, "subject_digest", "64 lowercase hex"),
        ({"artifact_types": ("a",) * 6}, "artifact_types", "at most 5"),
        ({"artifact_types": ("",)}, "artifact_types[0]", "1 to 255 characters"),
        ({"artifact_types": SBOM}, "artifact_types", "sequence"),
        ({"artifact_status": "DELETED"}, "artifact_status", "one of ACTIVE"),
        ({"max_results": 0}, "max_results", ">= 1"),
        ({"max_results": 51}, "max_results", "at most 50"),
        ({"next_token": ""}, "next_token", "previous page"),
    ],
    ids=lambda value: value if isinstance(value, str) else "-",
)
def test_list_image_referrers_request_names_the_bad_field(
    fields: dict[str, Any], field: str, rule: str
) -> None:
    values: dict[str, Any] = {
        "repository_name": "repo",
        "subject_digest": digest_of(b"subject"),
        **fields,
    }
    with pytest.raises(InvalidArgumentError) as caught:
        ListImageReferrersRequest(**values)
    assert caught.value.field == field
    assert rule in str(caught.value)
