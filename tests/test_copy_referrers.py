"""copy_image(with_referrers=True) and ``ecrstream copy --with-referrers`` against real parts.

The source is the CNCF distribution registry (Debian's docker-registry, 2.8: it has no
referrers API and answers ``GET /v2/<name>/referrers/<digest>`` with a 404), so copies from it
exercise the referrers tag schema (tag ``sha256-<hex>``) and cosign's tags. The referrers
API path runs through the fault proxy, a real HTTP server on 127.0.0.1 in front of the
registry, answering ``/v2/<name>/referrers/<digest>`` with the index of the seeded referrers
whose ``subject`` is that digest (everything else is forwarded to the registry). Each copy
is read back from the local ECR's registry API, byte for byte, ``subject`` included.

An ECR source (the local ECR, filled by a first copy) is asked through ListImageReferrers,
which the local ECR answers as ECR does. Where that call is unknown (``LyingEcr`` answers
UnknownOperationException; or botocore's model lacks it, through AWS_DATA_PATH), it is asked
on its registry endpoint's referrers API, which the local ECR serves too; the cases where
that endpoint has no such API, refuses the login or needs a CA bundle point
GetAuthorizationToken's ``proxyEndpoint`` elsewhere (``LyingEcr``): a fault proxy answering
404, the TLS registry.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from cli_run import assert_clean, cli, error_line, make_env, on
from helpers import assert_image_in_ecr, assert_no_byte_sent_twice, ecr_reader, repo_name
from lying_ecr import Exchange, Lie, LyingEcr, Reply
from registry_fixtures import (
    Fault,
    FaultProxy,
    LoopThread,
    RegistryServer,
    SeededImage,
    Seeder,
    StorageServer,
    sha256_digest,
)

import ecrstream.copy.source
from ecrstream.cancellation import CancellationTokenSource
from ecrstream.client import UNKNOWN_OPERATION, EcrClient
from ecrstream.copy import CopyCanceledError, CopyImageResult, copy_image
from ecrstream.copy.referrers import MAX_REFERRER_DEPTH, REFERRERS_NOTE, referrers_notes
from ecrstream.copy.source import LOGIN_MARGIN_SECONDS
from ecrstream.errors import (
    EcrServiceError,
    InvalidArgumentError,
    ManifestInvalidError,
    ProtocolViolationError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryError,
    RegistryNotFoundError,
)
from ecrstream.image import PushProgress
from ecrstream.local import LocalEcr
from ecrstream.models import ListImageReferrersRequest, PutImageRequest
from ecrstream.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient, parse_reference

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

MIB = 1024 * 1024
EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"
ATTESTATION = "application/vnd.in-toto+json"


@pytest.fixture
async def client(ecr: LocalEcr, anyio_backend: str) -> AsyncIterator[EcrClient]:
    async with EcrClient.create(**ecr.client_kwargs()) as connected:
        yield connected


@dataclass(frozen=True)
class Seeded:
    """A referrer pushed to the source: its manifest as an image, and what it refers to."""

    image: SeededImage
    artifact_type: str
    subject: str | None

    @property
    def digest(self) -> str:
        return self.image.digest


def push_referrer(
    seeder: Seeder,
    repository: str,
    subject: SeededImage | Seeded | None,
    artifact_type: str,
    payload: bytes,
    *,
    tag: str | None = None,
) -> Seeded:
    """An OCI 1.1 artifact manifest (empty config, one layer) with ``subject`` (None: a
    cosign-style manifest without one), pushed by digest or under ``tag``."""
    target = subject.image if isinstance(subject, Seeded) else subject
    config = seeder.push_blob(repository, EMPTY_CONFIG)
    layer = seeder.push_blob(repository, payload)
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_TYPE, "digest": config, "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": artifact_type, "digest": layer, "size": len(payload)}],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }
    if target is not None:
        document["subject"] = {
            "mediaType": target.media_type,
            "digest": target.digest,
            "size": len(target.manifest),
        }
    data = json.dumps(document, indent=2).encode()  # not canonical: the bytes make the digest
    digest = seeder.push_manifest(repository, tag or sha256_digest(data), data, OCI_MANIFEST)
    image = SeededImage(
        repository,
        tag,
        OCI_MANIFEST,
        data,
        digest,
        {config: EMPTY_CONFIG, layer: payload},
        (layer,),
    )
    return Seeded(image, artifact_type, target.digest if target is not None else None)


def referrers_index(referrers: Iterable[Seeded]) -> bytes:
    """An OCI image index listing ``referrers`` (the referrers API's answer, the tag's index)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": r.digest,
                    "size": len(r.image.manifest),
                    "artifactType": r.artifact_type,
                }
                for r in referrers
            ],
        }
    ).encode()


def schema_tag(digest: str) -> str:
    return "sha256-" + digest.removeprefix("sha256:")


def push_tag_index(seeder: Seeder, repository: str, subject: str, referrers: list[Seeded]) -> str:
    """The referrers tag schema: tag ``sha256-<hex>`` of ``subject`` -> an index of them."""
    return seeder.push_manifest(
        repository, schema_tag(subject), referrers_index(referrers), OCI_INDEX
    )


def serve_referrers_api(proxy: FaultProxy, digests: Iterable[str], referrers: list[Seeded]) -> None:
    """The proxy answers the referrers API for each of ``digests`` from ``referrers``."""
    for digest in digests:
        proxy.add(
            Fault(
                "replace",
                where=f"/referrers/{digest}",
                times=100,
                body=referrers_index(r for r in referrers if r.subject == digest),
                headers={"Content-Type": OCI_INDEX},
            )
        )


async def assert_referrer_in_ecr(reader: RegistryClient, repository: str, referrer: Seeded) -> None:
    """The referrer's manifest by digest, byte for byte, its ``subject`` intact; its blobs."""
    await assert_image_in_ecr(reader, repository, f"@{referrer.digest}", referrer.image)
    manifest = await reader.get_manifest(
        parse_reference(f"{reader.registry}/{repository}@{referrer.digest}")
    )
    document = json.loads(manifest.data)
    assert document.get("subject", {}).get("digest") == referrer.subject
    assert document["artifactType"] == referrer.artifact_type


async def assert_not_in_ecr(reader: RegistryClient, repository: str, reference: str) -> None:
    with pytest.raises(RegistryNotFoundError):
        await reader.get_manifest(parse_reference(f"{reader.registry}/{repository}{reference}"))


def referrer_requests(proxy: FaultProxy) -> list[str]:
    """The paths of the referrers API requests and the ``sha256-...`` tag GETs the proxy saw."""
    return [
        r.path for r in proxy.requests if "/referrers/" in r.path or "/manifests/sha256-" in r.path
    ]


async def copy_with_referrers(
    client: EcrClient, source_host: str, name: str, repository: str, tag: str = "v1", **options: Any
) -> CopyImageResult:
    """copy_image of ``source_host/name:tag`` (plain HTTP) into ``repository``, with referrers."""
    return await copy_image(
        client,
        f"{source_host}/{name}:{tag}",
        repository,
        plain_http=True,
        with_referrers=True,
        **options,
    )


# -- the tag schema (distribution 2.8 has no referrers API) ----------------------------------------


async def test_signature_and_sbom_and_a_signature_of_the_sbom_through_the_tag_schema(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (300_000, 20_000))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"signature of the image")
    sbom = push_referrer(seeder, name, image, SBOM, b'{"spdxVersion": "SPDX-2.3"}' * 500)
    sbom_signature = push_referrer(seeder, name, sbom, SIGNATURE, b"signature of the sbom")
    push_tag_index(seeder, name, image.digest, [signature, sbom])
    push_tag_index(seeder, name, sbom.digest, [sbom_signature])

    result = await copy_image(
        client,
        f"{anon_registry.host}/{name}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
        with_referrers=True,
    )

    assert result.manifest_digest == image.digest
    assert result.referrer_digests == (signature.digest, sbom.digest, sbom_signature.digest)
    # Image: config + 2 layers; referrers: the empty config once, and a layer each.
    assert result.blobs_uploaded == 3 + 1 + 3
    expected_bytes = sum(len(b) for b in image.blobs.values()) + len(EMPTY_CONFIG)
    expected_bytes += sum(len(r.image.blobs[r.image.layers[0]]) for r in (signature, sbom))
    expected_bytes += len(sbom_signature.image.blobs[sbom_signature.image.layers[0]])
    assert result.bytes_moved == expected_bytes
    # One availability check for the image, one for all the referrers' blobs.
    assert len(ecr.requests("BatchCheckLayerAvailability")) == 2
    puts = [r for r in ecr.requests("PutImage") if r.status == 200]
    assert len(puts) == 1 + 3  # the image (tagged), then each referrer by digest
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, ":v1", image)
        for referrer in (signature, sbom, sbom_signature):
            await assert_referrer_in_ecr(reader, repository, referrer)
        # ECR answers its referrers API from the subjects: the tag schema's index stays behind.
        await assert_not_in_ecr(reader, repository, f":{schema_tag(image.digest)}")


async def test_no_referrers_copies_nothing_more_and_asks_the_api_once(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    index = seeder.push_index(name, "v1", (("linux", "amd64", None), ("linux", "arm64", "v8")))

    result = await copy_with_referrers(client, fault_proxy.host, name, repository)

    assert result.manifest_digest == index.digest
    assert result.referrer_digests == ()
    assert len(ecr.requests("BatchCheckLayerAvailability")) == 1  # none for no referrer blobs
    assert len(ecr.requests("PutImage")) == 3  # two children and the index, nothing else
    asked = referrer_requests(fault_proxy)
    # The referrers API once (its 404 says the registry has none), then per manifest copied
    # the tag schema's tag and cosign's three.
    assert [p for p in asked if "/referrers/" in p] == [f"/v2/{name}/referrers/{index.digest}"]
    for digest in (index.digest, *(c.digest for c in index.children)):
        tag = schema_tag(digest)
        wanted = {f"/v2/{name}/manifests/{tag}{s}" for s in ("", ".sig", ".att", ".sbom")}
        assert wanted <= set(asked)
    assert len(asked) == 1 + 3 * 4
    # The tags are looked up with HEADs (Docker Hub does not count them as pulls): no GET.
    tag_lookups = [r for r in fault_proxy.requests if "/manifests/sha256-" in r.path]
    assert {r.method for r in tag_lookups} == {"HEAD"}


async def test_without_the_option_no_referrer_is_asked_for(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (50_000,))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"sig")
    push_tag_index(seeder, name, image.digest, [signature])
    serve_referrers_api(fault_proxy, [image.digest], [signature])

    result = await copy_image(client, f"{fault_proxy.host}/{name}:v1", repository, plain_http=True)

    assert result.referrer_digests == ()
    assert referrer_requests(fault_proxy) == []
    assert len(ecr.requests("PutImage")) == 1
    async with await ecr_reader(ecr, client) as reader:
        await assert_not_in_ecr(reader, repository, f"@{signature.digest}")


# -- the referrers API (served by the proxy) -------------------------------------------------------


async def test_an_index_and_its_children_with_referrers_from_the_referrers_api(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    index = seeder.push_index(name, "v2", (("linux", "amd64", None), ("linux", "arm64", "v8")))
    arm = index.children[1]
    # The index seeded has no subject-aware parent type: give the referrers its descriptor.
    top = SeededImage(name, "v2", index.media_type, index.manifest, index.digest, {}, ())
    signature = push_referrer(seeder, name, top, SIGNATURE, b"signature of the index")
    provenance = push_referrer(seeder, name, arm, ATTESTATION, b'{"predicateType": "slsa"}' * 99)
    provenance_signature = push_referrer(seeder, name, provenance, SIGNATURE, b"sig of the att")
    referrers = [signature, provenance, provenance_signature]
    every = [index.digest, *(c.digest for c in index.children), *(r.digest for r in referrers)]
    serve_referrers_api(fault_proxy, every, referrers)

    result = await copy_image(
        client,
        f"{fault_proxy.host}/{name}:v2",
        repository,
        tags=["v2"],
        plain_http=True,
        with_referrers=True,
    )

    assert result.referrer_digests == (
        signature.digest,
        provenance.digest,
        provenance_signature.digest,
    )
    asked = referrer_requests(fault_proxy)
    api = [p.rsplit("/", 1)[-1] for p in asked if "/referrers/" in p]
    assert sorted(api) == sorted(every)  # each copied manifest and each referrer, once
    # With the API, the tag schema's tag is never looked up (cosign's tags still are).
    assert not [p for p in asked if p.endswith(tuple(schema_tag(d) for d in every))]
    async with await ecr_reader(ecr, client) as reader:
        for referrer in referrers:
            await assert_referrer_in_ecr(reader, repository, referrer)


async def test_with_platforms_the_chosen_childs_referrers_only(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    index = seeder.push_index(name, "v3", (("linux", "amd64", None), ("linux", "arm64", None)))
    amd, arm = index.children
    top = SeededImage(name, "v3", index.media_type, index.manifest, index.digest, {}, ())
    of_index = push_referrer(seeder, name, top, SIGNATURE, b"index signature")
    of_amd = push_referrer(seeder, name, amd, SIGNATURE, b"amd64 signature")
    of_arm = push_referrer(seeder, name, arm, SIGNATURE, b"arm64 signature")
    referrers = [of_index, of_amd, of_arm]
    serve_referrers_api(
        fault_proxy,
        [index.digest, amd.digest, arm.digest, *(r.digest for r in referrers)],
        referrers,
    )

    result = await copy_image(
        client,
        f"{fault_proxy.host}/{name}:v3",
        repository,
        platforms=["linux/arm64"],
        plain_http=True,
        with_referrers=True,
    )

    assert result.manifest_digest == arm.digest
    assert result.referrer_digests == (of_arm.digest,)
    async with await ecr_reader(ecr, client) as reader:
        await assert_referrer_in_ecr(reader, repository, of_arm)
        await assert_not_in_ecr(reader, repository, f"@{of_index.digest}")


# -- cosign's tags ---------------------------------------------------------------------------------


async def test_cosign_tags_are_copied_and_tagged_again(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (80_000,))
    tag = schema_tag(image.digest)
    sig = push_referrer(seeder, name, None, SIGNATURE, b"cosign simplesigning", tag=f"{tag}.sig")
    att = push_referrer(seeder, name, None, ATTESTATION, b"dsse envelope", tag=f"{tag}.att")
    # A signature of the attestation, cosign style too: found one level down.
    att_sig = push_referrer(
        seeder, name, None, SIGNATURE, b"sig of att", tag=f"{schema_tag(att.digest)}.sig"
    )

    result = await copy_with_referrers(client, anon_registry.host, name, repository)

    assert result.referrer_digests == (sig.digest, att.digest, att_sig.digest)
    async with await ecr_reader(ecr, client) as reader:
        for referrer, reference in (
            (sig, f":{tag}.sig"),
            (att, f":{tag}.att"),
            (att_sig, f":{schema_tag(att.digest)}.sig"),
        ):
            await assert_referrer_in_ecr(reader, repository, referrer)  # no subject: None
            await assert_image_in_ecr(reader, repository, reference, referrer.image)
        await assert_not_in_ecr(reader, repository, f":{tag}.sbom")


async def test_an_index_referrer_brings_its_manifests(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (30_000,))
    parts = [push_referrer(seeder, name, None, ATTESTATION, f"part {n}".encode()) for n in (1, 2)]
    document = json.loads(referrers_index(parts))
    document["artifactType"] = ATTESTATION
    document["subject"] = {
        "mediaType": image.media_type,
        "digest": image.digest,
        "size": len(image.manifest),
    }
    data = json.dumps(document).encode()
    index_digest = seeder.push_manifest(name, sha256_digest(data), data, OCI_INDEX)
    index = Seeded(SeededImage(name, None, OCI_INDEX, data, index_digest, {}, ()), ATTESTATION, "")
    push_tag_index(seeder, name, image.digest, [index])

    result = await copy_with_referrers(client, anon_registry.host, name, repository)

    assert result.referrer_digests == (parts[0].digest, parts[1].digest, index_digest)
    async with await ecr_reader(ecr, client) as reader:
        for part in parts:
            await assert_image_in_ecr(reader, repository, f"@{part.digest}", part.image)
        stored = await reader.get_manifest(
            parse_reference(f"{reader.registry}/{repository}@{index_digest}")
        )
        assert stored.data == data
        assert json.loads(stored.data)["subject"]["digest"] == image.digest


# -- cycles and depth ------------------------------------------------------------------------------


async def test_a_cycle_of_tag_indexes_ends(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (30_000,))
    first = push_referrer(seeder, name, image, SIGNATURE, b"first")
    second = push_referrer(seeder, name, first, SBOM, b"second")
    push_tag_index(seeder, name, image.digest, [first])
    push_tag_index(seeder, name, first.digest, [second])
    # second's tag lists first (and itself) again; the image as well.
    as_referrer = Seeded(image, SIGNATURE, None)
    push_tag_index(seeder, name, second.digest, [first, second, as_referrer])

    result = await copy_with_referrers(client, anon_registry.host, name, repository)

    assert result.referrer_digests == (first.digest, second.digest)
    assert len([r for r in ecr.requests("PutImage") if r.status == 200]) == 3


async def test_referrers_are_followed_down_to_the_depth_limit(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (30_000,))
    chain: list[Seeded] = []
    parent: SeededImage | Seeded = image
    for level in range(MAX_REFERRER_DEPTH + 1):
        referrer = push_referrer(seeder, name, parent, SIGNATURE, f"level {level}".encode())
        push_tag_index(seeder, name, parent.digest, [referrer])
        chain.append(referrer)
        parent = referrer

    result = await copy_with_referrers(client, anon_registry.host, name, repository)

    assert result.referrer_digests == tuple(r.digest for r in chain[:MAX_REFERRER_DEPTH])
    async with await ecr_reader(ecr, client) as reader:
        await assert_referrer_in_ecr(reader, repository, chain[MAX_REFERRER_DEPTH - 1])
        await assert_not_in_ecr(reader, repository, f"@{chain[-1].digest}")


# -- stop and resume -------------------------------------------------------------------------------


async def test_a_stop_while_copying_referrers_resumes(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (60_000,))
    sbom = push_referrer(seeder, name, image, SBOM, bytes(range(256)) * (100 * 1024))  # 25 MiB
    push_tag_index(seeder, name, image.digest, [sbom])
    big = sbom.image.layers[0]
    source = CancellationTokenSource()

    def cancel_in_the_sbom(event: PushProgress) -> None:
        if event.digest == big and event.event == "progress":
            source.cancel()

    with pytest.raises(CopyCanceledError) as caught:
        await copy_image(
            client,
            f"{fault_proxy.host}/{name}:v1",
            repository,
            tags=["v1"],
            plain_http=True,
            with_referrers=True,
            max_concurrent_layers=1,
            cancellation_token=source.token,
            on_progress=cancel_in_the_sbom,
        )
    stopped = caught.value
    assert stopped.source_digest == image.digest
    assert stopped.checkpoints[big].bytes_committed == 10 * MIB
    assert set(image.blobs) <= set(stopped.committed_digests)  # the image went in first
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, ":v1", image)
        await assert_not_in_ecr(reader, repository, f"@{sbom.digest}")
    fault_proxy.reset()

    result = await copy_image(
        client,
        f"{fault_proxy.host}/{name}:v1",
        repository,
        tags=["v1"],
        plain_http=True,
        with_referrers=True,
        resume=stopped,
    )

    assert result.referrer_digests == (sbom.digest,)
    # Largest first, one at a time: the stop came before the referrer's config went up.
    assert sha256_digest(EMPTY_CONFIG) not in stopped.committed_digests
    assert result.bytes_moved == len(sbom.image.blobs[big]) - 10 * MIB + len(EMPTY_CONFIG)
    # The SBOM's layer goes on from the committed byte; nothing of the image is read again.
    gets = fault_proxy.blob_gets(big)
    assert gets
    assert gets[0].range == f"bytes={10 * MIB}-"
    assert not [g for g in fault_proxy.blob_gets() if any(d in g.path for d in image.blobs)]
    assert_no_byte_sent_twice(ecr)
    async with await ecr_reader(ecr, client) as reader:
        await assert_referrer_in_ecr(reader, repository, sbom)


async def test_a_stop_while_looking_for_referrers_resumes(
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (60_000,))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"found on resume")
    push_tag_index(seeder, name, image.digest, [signature])
    # The referrers API's answer starts, then nothing more comes: the copy waits there.
    fault_proxy.add(Fault("stall", where="/referrers/", at_byte=0))
    source = CancellationTokenSource()
    caught: list[CopyCanceledError] = []

    async def run() -> None:
        try:
            await copy_with_referrers(
                client, fault_proxy.host, name, repository, cancellation_token=source.token
            )
        except CopyCanceledError as error:
            caught.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        assert await anyio.to_thread.run_sync(fault_proxy.stalled.wait, 30)
        source.cancel()
    assert len(caught) == 1
    stopped = caught[0]
    assert stopped.source_digest == image.digest
    assert set(image.blobs) <= set(stopped.committed_digests)
    fault_proxy.reset()

    result = await copy_with_referrers(client, fault_proxy.host, name, repository, resume=stopped)

    assert result.referrer_digests == (signature.digest,)
    assert result.blobs_skipped == len(image.blobs)
    async with await ecr_reader(ecr, client) as reader:
        await assert_referrer_in_ecr(reader, repository, signature)


# -- an ECR source ---------------------------------------------------------------------------------


async def seed_ecr_source(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient
) -> tuple[str, SeededImage, Seeded, Seeded, Seeded, SeededImage]:
    """An ECR repository with an image (``v1``), its signature and a signature of that, both
    untagged with ``subject`` (as notation pushes them), a cosign ``.sig``, and a decoy: a
    ``sha256-<hex>`` tag schema index of the image that lists another image (``v2``), which
    only a tag schema lookup would take for a referrer."""
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (70_000,))
    decoy = seeder.push_image(name, "v2", (30_000,))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"notation signature")
    countersigned = push_referrer(seeder, name, signature, SIGNATURE, b"countersignature")
    cosign = push_referrer(
        seeder, name, None, SIGNATURE, b"cosign", tag=f"{schema_tag(image.digest)}.sig"
    )
    # distribution 2.8 has no referrers API: the first copy finds them by the tag schema.
    push_tag_index(seeder, name, image.digest, [signature])
    push_tag_index(seeder, name, signature.digest, [countersigned])
    middle = f"ecr-src/{uuid.uuid4().hex[:10]}"
    ecr.create_repository(middle)
    await copy_image(
        client, f"{anon_registry.host}/{name}:v2", middle, tags=["v2"], plain_http=True
    )
    first = await copy_image(
        client,
        f"{anon_registry.host}/{name}:v1",
        middle,
        tags=["v1"],
        plain_http=True,
        with_referrers=True,
    )
    assert first.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    decoy_index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": decoy.digest, "size": len(decoy.manifest)}
            ],
        }
    )
    await client.put_image(
        PutImageRequest(
            repository_name=middle,
            image_manifest=decoy_index,
            image_manifest_media_type=OCI_INDEX,
            image_tag=schema_tag(image.digest),
        )
    )
    return middle, image, signature, countersigned, cosign, decoy


def ecr_source_ecr(middle: str, ecr: LocalEcr) -> str:
    return f"{ecr.registry_address}/{middle}:v1"


async def copy_from_ecr(
    client: EcrClient,
    ecr: LocalEcr,
    middle: str,
    repository: str,
    *,
    through: LyingEcr | None = None,
    **options: Any,
) -> CopyImageResult:
    """copy_image of the ECR source ``middle``'s ``v1`` with its referrers into
    ``repository``; the source's own client talks to ECR through ``through`` if given."""
    source = ecr_source_ecr(middle, ecr)
    if through is None:
        return await copy_image(
            client, source, repository, source_client=client, with_referrers=True, **options
        )
    async with EcrClient.create(**through.client_kwargs()) as source_client:
        return await copy_image(
            client, source, repository, source_client=source_client, with_referrers=True, **options
        )


async def test_from_ecr_untagged_referrers_through_list_image_referrers(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, image, signature, countersigned, cosign, decoy = await seed_ecr_source(
        anon_registry, ecr, client
    )
    ecr.reset()

    result = await copy_from_ecr(client, ecr, middle, repository)

    # From ListImageReferrers (the countersignature a level below), then cosign's tag; the
    # tag schema's index is not looked at (its decoy is not taken for a referrer).
    assert result.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    # One listing per manifest walked (the image; the signature and cosign's; the
    # countersignature), the ECR API's own: no login to the registry endpoint.
    assert len(ecr.requests("ListImageReferrers")) == 4
    assert ecr.requests("GetAuthorizationToken") == []
    # Per manifest, one BatchGetImage of cosign's three tags; one more per referrer listed.
    assert len(ecr.requests("BatchGetImage")) == 1 + 4 + 2
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)
        await assert_referrer_in_ecr(reader, repository, signature)
        await assert_referrer_in_ecr(reader, repository, countersigned)
        await assert_not_in_ecr(reader, repository, f"@{decoy.digest}")


def unknown_operation(exchange: Exchange) -> Reply:
    """What an endpoint without the operation answers (an older ECR-compatible service)."""
    return Reply(
        400,
        {"__type": "UnknownOperationException", "message": f"Unknown {exchange.operation}"},
    )


def without_list_image_referrers(liar: LyingEcr) -> Lie:
    """Make ``liar``'s endpoint one that lacks ListImageReferrers (never forwarded)."""
    return liar.lie("ListImageReferrers", unknown_operation)


async def test_from_ecr_untagged_referrers_through_its_registry_referrers_api(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, image, signature, countersigned, cosign, decoy = await seed_ecr_source(
        anon_registry, ecr, client
    )
    ecr.reset()

    with LyingEcr(ecr) as liar:
        unknown = without_list_image_referrers(liar)
        result = await copy_from_ecr(client, ecr, middle, repository, through=liar)

    # From the registry endpoint's referrers API (the countersignature a level below), then
    # cosign's tag; the tag schema's index is not looked at (its decoy is not taken).
    assert result.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    assert unknown.told == 1  # asked once: its answer is remembered for the whole copy
    assert ecr.requests("ListImageReferrers") == []
    assert len(ecr.requests("GetAuthorizationToken")) == 1  # one login for the whole copy
    # Per manifest, one BatchGetImage of cosign's three tags; one more per referrer listed.
    assert len(ecr.requests("BatchGetImage")) == 1 + 4 + 2
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)
        await assert_referrer_in_ecr(reader, repository, signature)
        await assert_referrer_in_ecr(reader, repository, countersigned)
        await assert_image_in_ecr(
            reader, repository, f":{schema_tag(image.digest)}.sig", cosign.image
        )
        await assert_not_in_ecr(reader, repository, f"@{decoy.digest}")
        # ECR lists the copies from their subjects, as the source did.
        listed = await reader.get_referrers(repository, image.digest)
    assert listed is not None
    assert [entry.digest for entry in listed] == [signature.digest]


async def test_from_ecr_a_501_to_list_image_referrers_is_no_such_operation_either(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, _, signature, countersigned, cosign, _ = await seed_ecr_source(
        anon_registry, ecr, client
    )
    ecr.reset()

    def not_implemented(exchange: Exchange) -> Reply:
        # What an emulator answers for an operation it does not have (LocalStack's shape)
        message = f"The API action '{exchange.operation}' for service 'ecr' is not implemented"
        return Reply(501, {"__type": "InternalFailure", "message": message})

    with LyingEcr(ecr) as liar:
        unknown = liar.lie("ListImageReferrers", not_implemented)
        result = await copy_from_ecr(client, ecr, middle, repository, through=liar)

    assert result.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    assert unknown.told == 1  # not retried (501 is permanent), not asked again
    assert len(ecr.requests("GetAuthorizationToken")) == 1  # the registry endpoint instead


async def test_from_ecr_a_list_image_referrers_of_too_many_pages_is_a_protocol_violation(
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    middle, *_ = await seed_ecr_source(anon_registry, ecr, client)
    monkeypatch.setattr(ecrstream.copy.source, "MAX_REFERRER_PAGES", 3)

    def fresh_token(exchange: Exchange) -> Reply:
        return Reply(200, {"referrers": [], "nextToken": f"page-{exchange.call}"})

    with LyingEcr(ecr) as liar:
        endless = liar.lie("ListImageReferrers", fresh_token)
        with pytest.raises(ProtocolViolationError, match="still a nextToken after 3 pages"):
            await copy_from_ecr(client, ecr, middle, repository, through=liar)

    assert endless.told == 3


async def test_from_ecr_a_login_about_to_expire_is_renewed_before_the_next_listing(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, _, signature, countersigned, cosign, _ = await seed_ecr_source(
        anon_registry, ecr, client
    )
    ecr.reset()
    soon = time.time() + LOGIN_MARGIN_SECONDS / 2  # valid still, but within the margin

    with LyingEcr(ecr) as liar:
        without_list_image_referrers(liar)
        login = liar.lie(
            "GetAuthorizationToken",
            login_lie(lambda login: login.update(expiresAt=soon)),
            forward=True,
        )
        result = await copy_from_ecr(client, ecr, middle, repository, through=liar)

    assert result.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    # One login per listing (the image; the signature and cosign's; the countersignature).
    assert login.told == 4
    assert len(ecr.requests("GetAuthorizationToken")) == 4


@pytest.fixture
def model_without_list_image_referrers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's ECR model as releases before ListImageReferrers had it: a copy without that
    operation, found first through AWS_DATA_PATH (botocore's own override of its models)."""
    import gzip

    import botocore

    shipped = Path(botocore.__file__).parent / "data" / "ecr" / "2015-09-21" / "service-2.json.gz"
    model = json.loads(gzip.decompress(shipped.read_bytes()))
    del model["operations"]["ListImageReferrers"]
    folder = tmp_path / "models" / "ecr" / "2015-09-21"
    folder.mkdir(parents=True)
    (folder / "service-2.json").write_text(json.dumps(model))
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path / "models"))


@pytest.mark.usefixtures("model_without_list_image_referrers")
async def test_from_ecr_with_a_botocore_that_lacks_list_image_referrers(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, image, signature, countersigned, cosign, _ = await seed_ecr_source(
        anon_registry, ecr, client
    )
    ecr.reset()

    async with EcrClient.create(**ecr.client_kwargs()) as older:
        with pytest.raises(EcrServiceError) as caught:
            await older.list_image_referrers(ListImageReferrersRequest(middle, image.digest))
        assert ecr.requests() == []  # refused before sending
        result = await copy_image(
            client,
            ecr_source_ecr(middle, ecr),
            repository,
            source_client=older,
            with_referrers=True,
        )

    assert (caught.value.code, caught.value.status_code) == (UNKNOWN_OPERATION, None)
    assert "botocore" in str(caught.value)
    # The registry endpoint's referrers API instead, logged in once.
    assert result.referrer_digests == (signature.digest, cosign.digest, countersigned.digest)
    assert ecr.requests("ListImageReferrers") == []
    assert len(ecr.requests("GetAuthorizationToken")) == 1


async def test_from_ecr_a_list_image_referrers_that_never_ends_is_a_protocol_violation(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, image, *_ = await seed_ecr_source(anon_registry, ecr, client)

    def again(exchange: Exchange) -> Reply:
        answer = dict(exchange.answer or {})
        answer["nextToken"] = "the-same-token"
        return Reply(200, answer)

    with LyingEcr(ecr) as liar:
        endless = liar.lie("ListImageReferrers", again, forward=True)
        with pytest.raises(ProtocolViolationError) as caught:
            await copy_from_ecr(client, ecr, middle, repository, through=liar)

    assert endless.told == 2  # the first page, then the token repeated: stopped there
    assert "the same nextToken came back twice" in str(caught.value)
    assert caught.value.operation == "ListImageReferrers"
    assert referrers_notes(caught.value)  # the image itself went in first
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)


async def test_from_ecr_a_listed_referrer_that_is_no_digest_is_a_protocol_violation(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    # A referrer named by a tag ("v2", the decoy's) would be read as that tag and copied as
    # a referrer; an endpoint that says so is broken, not a source of referrers.
    middle, image, _, _, _, decoy = await seed_ecr_source(anon_registry, ecr, client)

    def a_tag_for_a_digest(exchange: Exchange) -> Reply:
        answer = dict(exchange.answer or {})
        answer["referrers"] = [{**entry, "digest": "v2"} for entry in answer.get("referrers") or []]
        return Reply(200, answer)

    with LyingEcr(ecr) as liar:
        liar.lie("ListImageReferrers", a_tag_for_a_digest, forward=True)
        async with EcrClient.create(**liar.client_kwargs()) as lying:
            with pytest.raises(ProtocolViolationError) as caught:
                await copy_image(
                    client,
                    ecr_source_ecr(middle, ecr),
                    repository,
                    source_client=lying,
                    with_referrers=True,
                )

    assert caught.value.operation == "ListImageReferrers"
    assert "'v2'" in str(caught.value)
    assert referrers_notes(caught.value)  # the image itself went in first
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)
        await assert_not_in_ecr(reader, repository, f"@{decoy.digest}")


def login_lie(change: Callable[[dict[str, Any]], None]) -> Callable[[Exchange], Reply | None]:
    """A lie told after GetAuthorizationToken reached ECR: its answer's login changed."""

    def lie(exchange: Exchange) -> Reply | None:
        answer = exchange.answer or {}
        for login in answer.get("authorizationData", []):
            change(login)
        return Reply(200, answer)

    return lie


async def test_from_ecr_without_the_referrers_api_the_tag_schema_and_cosign_tags(
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    fixture_loop: LoopThread,
) -> None:
    middle, image, signature, countersigned, cosign, _ = await seed_ecr_source(
        anon_registry, ecr, client
    )
    # As it was before ECR took OCI 1.1: a 404 to the referrers API. Its registry endpoint
    # is behind a proxy that says so; GetAuthorizationToken points to the proxy.
    proxy = FaultProxy(fixture_loop, ecr.endpoint_url)
    proxy.add(Fault("status", where="/referrers/", status=404, times=100))
    tag_index = referrers_index([signature])
    await client.put_image(
        PutImageRequest(
            repository_name=middle,
            image_manifest=tag_index.decode(),
            image_manifest_media_type=OCI_INDEX,
            image_tag=schema_tag(image.digest),
        )
    )
    ecr.reset()
    try:
        with LyingEcr(ecr) as liar:
            without_list_image_referrers(liar)
            login = liar.lie(
                "GetAuthorizationToken",
                login_lie(lambda login: login.update(proxyEndpoint=f"http://{proxy.host}")),
                forward=True,
            )
            result = await copy_from_ecr(client, ecr, middle, repository, through=liar)
    finally:
        fixture_loop.run(proxy.close())

    # The tag schema's index (the signature), cosign's tag; not the countersignature, which
    # only the referrers API lists (the signature has no tag schema index in ECR).
    assert result.referrer_digests == (signature.digest, cosign.digest)
    assert [r.path for r in proxy.requests] == [f"/v2/{middle}/referrers/{image.digest}"]
    assert login.told == 1
    # Per manifest, one BatchGetImage for all four tags; one more per referrer by digest.
    gets = ecr.requests("BatchGetImage")
    assert len(gets) == 1 + 3 + 1  # the image; its tags, the signature's, cosign's; signature
    async with await ecr_reader(ecr, client) as reader:
        await assert_referrer_in_ecr(reader, repository, signature)
        await assert_image_in_ecr(
            reader, repository, f":{schema_tag(image.digest)}.sig", cosign.image
        )
        await assert_not_in_ecr(reader, repository, f"@{countersigned.digest}")


async def test_from_ecr_a_refused_login_is_a_registry_auth_error_without_the_password(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    middle, image, *_ = await seed_ecr_source(anon_registry, ecr, client)
    wrong = "not-the-password-" + uuid.uuid4().hex
    token = base64.b64encode(f"AWS:{wrong}".encode()).decode()
    real = (await client.get_authorization_token()).authorization_data[0].authorization_token
    ecr.reset()

    with LyingEcr(ecr) as liar:
        without_list_image_referrers(liar)
        liar.lie(
            "GetAuthorizationToken",
            login_lie(lambda login: login.update(authorizationToken=token)),
            forward=True,
        )
        with pytest.raises(RegistryAuthError) as caught:
            await copy_from_ecr(client, ecr, middle, repository, through=liar)

    text = str(caught.value)
    assert "refused the login GetAuthorizationToken gave" in text, text
    assert ecr.registry_address in text
    assert caught.value.status == 401
    assert referrers_notes(caught.value)  # the image itself went in first
    shown = "\n".join([text, repr(caught.value), *referrers_notes(caught.value)])
    secrets = (wrong, token, real, base64.b64decode(real).decode().partition(":")[2])
    assert not [secret for secret in secrets if secret in shown]
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)


async def test_from_ecr_the_registry_endpoints_tls_is_checked_as_the_sources(
    anon_registry: RegistryServer,
    basic_registry: tuple[RegistryServer, StorageServer],
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
) -> None:
    # An HTTPS endpoint whose certificate only the test CA vouches for: the TLS registry
    # (distribution 2.8, which answers the referrers route 404 before any auth).
    tls, _ = basic_registry
    middle, image, _, _, cosign, decoy = await seed_ecr_source(anon_registry, ecr, client)
    with LyingEcr(ecr) as liar:
        without_list_image_referrers(liar)
        login = liar.lie(
            "GetAuthorizationToken",
            login_lie(lambda login: login.update(proxyEndpoint=tls.base_url)),
            forward=True,
        )
        with pytest.raises(RegistryConnectionError) as caught:
            await copy_from_ecr(client, ecr, middle, repository, through=liar)
        result = await copy_from_ecr(client, ecr, middle, repository, through=liar, verify=tls.ca)

    assert login.told == 2
    assert f"TLS with https://{tls.host}" in str(caught.value)
    assert referrers_notes(caught.value)  # the image went in first
    # Trusted with the CA bundle; its 404 falls back to the tag schema, whose index in the
    # source lists v2 (the decoy: only a tag schema lookup takes it for a referrer).
    assert result.referrer_digests == (decoy.digest, cosign.digest)
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)
        await assert_image_in_ecr(reader, repository, f"@{decoy.digest}", decoy)


async def test_from_ecr_a_tag_ecr_cannot_read_is_an_error_not_no_referrer(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (20_000,))
    middle = f"ecr-src/{uuid.uuid4().hex[:10]}"
    ecr.create_repository(middle)
    await copy_image(
        client, f"{anon_registry.host}/{name}:v1", middle, tags=["v1"], plain_http=True
    )
    att = f"{schema_tag(image.digest)}.att"

    def kms_error_for_att(exchange: Exchange) -> Reply | None:
        answer = exchange.answer or {}
        failures = answer.get("failures", [])
        if not any(f.get("imageId", {}).get("imageTag") == att for f in failures):
            return None
        for failure in failures:
            if failure.get("imageId", {}).get("imageTag") == att:
                failure["failureCode"] = "KmsError"
                failure["failureReason"] = "the key is disabled"
        return Reply(200, answer)

    with LyingEcr(ecr) as liar:
        liar.lie("BatchGetImage", kms_error_for_att, forward=True)
        with pytest.raises(RegistryError) as caught:
            await copy_from_ecr(client, ecr, middle, repository, through=liar)

    assert liar.told == 1, caught.value
    assert f"could not read tag {att} (KmsError: the key is disabled)" in str(caught.value)
    assert referrers_notes(caught.value)  # the image itself went in first
    async with await ecr_reader(ecr, client) as reader:
        await assert_image_in_ecr(reader, repository, f"@{image.digest}", image)


# -- running again --------------------------------------------------------------------------------


async def test_a_second_run_uploads_nothing_and_puts_what_is_there_without_error(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    index = seeder.push_index(name, "v1", (("linux", "amd64", None), ("linux", "arm64", "v8")))
    top = SeededImage(name, "v1", index.media_type, index.manifest, index.digest, {}, ())
    signature = push_referrer(seeder, name, top, SIGNATURE, b"signature of the index")
    push_tag_index(seeder, name, index.digest, [signature])
    child = index.children[0]
    cosign = push_referrer(
        seeder, name, None, SIGNATURE, b"cosign", tag=f"{schema_tag(child.digest)}.sig"
    )
    arguments = {"tags": ["v1"], "plain_http": True, "with_referrers": True}
    source = f"{anon_registry.host}/{name}:v1"

    first = await copy_image(client, source, repository, **arguments)  # type: ignore[arg-type]
    ecr.reset()
    second = await copy_image(client, source, repository, **arguments)  # type: ignore[arg-type]

    assert first.referrer_digests == second.referrer_digests == (signature.digest, cosign.digest)
    assert first.blobs_uploaded > 0
    assert second.blobs_uploaded == 0
    assert second.bytes_moved == 0
    assert second.blobs_skipped == first.blobs_uploaded
    assert ecr.requests("InitiateLayerUpload") == []
    assert ecr.requests("UploadLayerPart") == []
    async with await ecr_reader(ecr, client) as reader:
        stored = await reader.get_manifest(parse_reference(f"{reader.registry}/{repository}:v1"))
        assert stored.data == index.manifest
        for platform in index.children:
            await assert_image_in_ecr(reader, repository, f"@{platform.digest}", platform)
        await assert_referrer_in_ecr(reader, repository, signature)
        await assert_image_in_ecr(
            reader, repository, f":{schema_tag(child.digest)}.sig", cosign.image
        )


# -- bad input and bad sources ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_with_referrers_must_be_a_bool_before_any_request(
    value: object, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await copy_image(
            client,
            "127.0.0.1:1/none:v1",
            repository,
            plain_http=True,
            with_referrers=value,  # type: ignore[arg-type]
        )
    assert caught.value.field == "with_referrers"
    assert "True or False" in str(caught.value)
    assert ecr.requests() == []


async def test_a_referrers_tag_that_is_no_index_is_a_clear_error(
    anon_registry: RegistryServer, ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name()
    image = seeder.push_image(name, "v1", (30_000,))
    push_referrer(seeder, name, image, SIGNATURE, b"wrongly tagged", tag=schema_tag(image.digest))

    with pytest.raises(ManifestInvalidError) as caught:
        await copy_image(
            client,
            f"{anon_registry.host}/{name}:v1",
            repository,
            tags=["v1"],
            plain_http=True,
            with_referrers=True,
        )
    assert schema_tag(image.digest) in str(caught.value)
    assert "must be an index" in str(caught.value)
    assert referrers_notes(caught.value) == (
        f"{REFERRERS_NOTE}: the image itself is in {repository}",
    )
    async with await ecr_reader(ecr, client) as reader:  # the image itself went in first
        await assert_image_in_ecr(reader, repository, ":v1", image)


# -- the command line ------------------------------------------------------------------------------


def test_cli_with_referrers_json_and_text(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name("cli")
    image = seeder.push_image(name, "v1", (40_000,))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"cli signature")
    push_tag_index(seeder, name, image.digest, [signature])
    env = make_env(tmp_path)
    base = [
        "copy",
        f"{anon_registry.host}/{name}:v1",
        "--repository",
        repository,
        "--src-plain-http",
        *on(ecr),
    ]

    copied = cli(*base, "--with-referrers", "--json", env=env)
    assert_clean(copied)
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["manifest_digest"] == image.digest
    assert report["referrer_digests"] == [signature.digest]

    again = cli(*base, "--with-referrers", env=env)
    assert again.returncode == 0, again.stderr
    assert f"with 1 referrer: {signature.digest}" in again.stdout

    without = cli(*base, "--json", env=env)
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout)["referrer_digests"] == []
    assert "referrer" not in cli(*base, env=env).stdout


def test_cli_a_referrer_failure_is_one_line_saying_the_image_is_in(
    tmp_path: Path,
    fault_proxy: FaultProxy,
    anon_registry: RegistryServer,
    ecr: LocalEcr,
    repository: str,
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name("cli")
    image = seeder.push_image(name, "v1", (40_000,))
    signature = push_referrer(seeder, name, image, SIGNATURE, b"still there")
    # The referrers API lists one the registry does not have (deleted since).
    gone = SeededImage(name, None, OCI_MANIFEST, b"{}", "sha256:" + "0" * 64, {}, ())
    serve_referrers_api(
        fault_proxy, [image.digest], [signature, Seeded(gone, SIGNATURE, image.digest)]
    )

    failed = cli(
        "copy",
        f"{fault_proxy.host}/{name}:v1",
        "--repository",
        repository,
        "--src-plain-http",
        "--with-referrers",
        *on(ecr),
        env=make_env(tmp_path),
    )

    assert_clean(failed)
    assert failed.returncode == 1
    line = error_line(failed)
    assert f"{gone.digest} is listed as a referrer of {image.digest}" in line
    assert "the image itself is in" in line
    assert "--with-referrers" in line
    assert "check SOURCE's repository" not in line  # the image was found: not that hint


def test_cli_text_names_five_referrers_and_counts_the_rest(
    tmp_path: Path, anon_registry: RegistryServer, ecr: LocalEcr, repository: str
) -> None:
    seeder = Seeder(anon_registry)
    name = repo_name("cli")
    image = seeder.push_image(name, "v1", (10_000,))
    signatures = [
        push_referrer(seeder, name, image, SIGNATURE, f"signature {n}".encode()) for n in range(7)
    ]
    push_tag_index(seeder, name, image.digest, signatures)

    copied = cli(
        "copy",
        f"{anon_registry.host}/{name}:v1",
        "--repository",
        repository,
        "--src-plain-http",
        "--with-referrers",
        *on(ecr),
        env=make_env(tmp_path),
    )

    assert_clean(copied)
    assert copied.returncode == 0, copied.stderr
    shown = ", ".join(s.digest for s in signatures[:5])
    assert f"with 7 referrers: {shown} and 2 more (--json lists them all)" in copied.stdout
    assert signatures[5].digest not in copied.stdout
