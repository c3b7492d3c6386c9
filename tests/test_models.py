"""Request and response dataclasses: each validation rule, and what the models promise.

Every rule is checked the way a caller meets it: building the request for an EcrClient call
on the local endpoint raises ``ValueError`` naming the field (``"<field>: <rule> (got ...)"``),
and the proxy, which records every request, saw none of it. Were a rule missing, the request
would reach the proxy (and come back as a service error, not a ValueError).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import botocore.session
import pytest
from aiobotocore.session import AioSession
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecrstream.client import EcrClient
from ecrstream.local import LocalEcr, Operation
from ecrstream.models import (
    MAX_PART_SIZE,
    BatchCheckLayerAvailabilityRequest,
    BatchCheckLayerAvailabilityResponse,
    BatchGetImageRequest,
    CompleteLayerUploadRequest,
    GetAuthorizationTokenRequest,
    Image,
    InitiateLayerUploadRequest,
    InitiateLayerUploadResponse,
    Layer,
    LayerFailure,
    ListImageReferrersRequest,
    PutImageRequest,
    UploadCheckpoint,
    UploadLayerPartRequest,
    UploadLayerPartResponse,
    validate_repository_name,
)
from ecrstream.retry import RetryPolicy

pytestmark = pytest.mark.timeout(30)

MIB = 1024 * 1024
MAX_MANIFEST = 4 * MIB
UPLOAD_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DIGEST = "sha256:" + hashlib.sha256(b"layer").hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "layers": []})

Send = Callable[[EcrClient, str], Awaitable[object]]


# -- fixtures and the check every rule goes through ------------------------------------------


@pytest.fixture
async def client(
    ecr: LocalEcr, aio_session: AioSession, anyio_backend: str
) -> AsyncIterator[EcrClient]:
    """An EcrClient on the proxy, one request per call."""
    async with EcrClient.create(
        **ecr.client_kwargs(), session=aio_session, retry=RetryPolicy(max_attempts=1)
    ) as made:
        yield made


async def assert_refused_before_sending(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    sends: Send | list[Send],
    field: str,
    rule: str,
) -> None:
    """Each send raises ValueError naming ``field`` and ``rule``; the proxy saw no request."""
    for send in sends if isinstance(sends, list) else [sends]:
        with pytest.raises(ValueError, match=f"^{re.escape(field)}: ") as caught:
            await send(client, repository)
        assert re.search(rule, str(caught.value)), str(caught.value)

    # A valid call now does reach the proxy, and it is the only request the proxy saw.
    await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(repository, (DIGEST,))
    )
    with anyio.fail_after(10):
        await ecr.wait_idle_async()
    assert [r.operation for r in ecr.requests()] == [Operation.BATCH_CHECK_LAYER_AVAILABILITY]


def part(
    first: int = 0,
    last: int | None = None,
    blob: bytes | bytearray | memoryview = b"part",
    *,
    repository_name: str = "repo",
    upload_id: str = UPLOAD_ID,
    registry_id: str | None = None,
) -> UploadLayerPartRequest:
    size = blob.nbytes if isinstance(blob, memoryview) else len(blob)
    return UploadLayerPartRequest(
        repository_name,
        upload_id,
        first,
        first + size - 1 if last is None else last,
        blob,
        registry_id=registry_id,
    )


# One way to send a request of each type, with one field replaced.
def send_initiate(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {"repository_name": repository, **fields}
        return client.initiate_layer_upload(InitiateLayerUploadRequest(**values))

    return send


def send_part(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {
            "repository_name": repository,
            "upload_id": UPLOAD_ID,
            "part_first_byte": 0,
            "part_last_byte": 3,
            "layer_part_blob": b"part",
            **fields,
        }
        return client.upload_layer_part(UploadLayerPartRequest(**values))

    return send


def send_complete(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {
            "repository_name": repository,
            "upload_id": UPLOAD_ID,
            "layer_digests": (DIGEST,),
            **fields,
        }
        return client.complete_layer_upload(CompleteLayerUploadRequest(**values))

    return send


def send_check(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {
            "repository_name": repository,
            "layer_digests": (DIGEST,),
            **fields,
        }
        return client.batch_check_layer_availability(BatchCheckLayerAvailabilityRequest(**values))

    return send


def send_put_image(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {
            "repository_name": repository,
            "image_manifest": MANIFEST,
            **fields,
        }
        return client.put_image(PutImageRequest(**values))

    return send


def send_get_image(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {"repository_name": repository, "image_ids": ("v1",), **fields}
        return client.batch_get_image(BatchGetImageRequest(**values))

    return send


def send_list_referrers(**fields: Any) -> Send:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        values: dict[str, Any] = {"repository_name": repository, "subject_digest": DIGEST, **fields}
        return client.list_image_referrers(ListImageReferrersRequest(**values))

    return send


EVERY_REQUEST = {
    "initiate": send_initiate,
    "part": send_part,
    "complete": send_complete,
    "check": send_check,
    "put_image": send_put_image,
    "get_image": send_get_image,
    "list_referrers": send_list_referrers,
}


# -- repository name: ECR's pattern, 2 to 256 characters -------------------------------------

BAD_REPOSITORY_NAMES = {
    "uppercase": "Repo",
    "leading separator": "-repo",
    "trailing separator": "repo.",
    "empty path segment": "name//repo",
    "trailing slash": "repo/",
    "leading slash": "/repo",
    "double dot": "re..po",
    "three underscores": "re___po",
    "space": "re po",
    "colon": "repo:tag",
    "non-ascii": "répo",
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", list(BAD_REPOSITORY_NAMES.values()), ids=list(BAD_REPOSITORY_NAMES)
)
async def test_repository_name_must_match_ecrs_pattern(
    ecr: LocalEcr, client: EcrClient, repository: str, name: str
) -> None:
    send = [request(repository_name=name) for request in EVERY_REQUEST.values()]
    await assert_refused_before_sending(ecr, client, repository, send, "repository_name", "pattern")


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["a", "a" * 257], ids=["1 character", "257 characters"])
async def test_repository_name_must_be_2_to_256_characters(
    ecr: LocalEcr, client: EcrClient, repository: str, name: str
) -> None:
    send = [request(repository_name=name) for request in EVERY_REQUEST.values()]
    await assert_refused_before_sending(
        ecr, client, repository, send, "repository_name", "2 to 256 characters"
    )


@pytest.mark.parametrize(
    "name", ["ab", "a" * 256, "a__b", "a_b", "a---b", "a.b", "team/app-1.0_x", "0/1/2"]
)
def test_repository_names_ecr_accepts_are_accepted(name: str) -> None:
    assert InitiateLayerUploadRequest(name).repository_name == name


_MODEL = botocore.session.get_session().get_service_model("ecr")
_INITIATE_INPUT = _MODEL.operation_model("InitiateLayerUpload").input_shape
assert _INITIATE_INPUT is not None
_REPOSITORY_SHAPE = _INITIATE_INPUT.members["repositoryName"]
ECR_REPOSITORY_PATTERN = re.compile(_REPOSITORY_SHAPE.metadata["pattern"])


@settings(deadline=None)  # a loaded CI machine must not turn a slow example into a failure
@given(st.text(alphabet="ab9._-/A é", max_size=12))
@example("a" * 256)
@example("a" * 257)
@example("a-" * 128)
def test_repository_name_rule_is_botocores_model(name: str) -> None:
    if 2 <= len(name) <= 256 and ECR_REPOSITORY_PATTERN.fullmatch(name) is not None:
        assert validate_repository_name(name) == name
    else:
        with pytest.raises(ValueError, match=r"^repository_name: "):
            validate_repository_name(name)


# -- registry id: 12 digits ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "registry_id",
    [
        "12345678901",
        "1234567890123",
        "12345678901a",
        "",
        " 123456789012",
        "\uff11" * 12,
    ],
    ids=["11 digits", "13 digits", "letter", "empty", "space", "full-width digits"],
)
async def test_registry_id_must_be_12_digits(
    ecr: LocalEcr, client: EcrClient, repository: str, registry_id: str
) -> None:
    send = [request(registry_id=registry_id) for request in EVERY_REQUEST.values()]
    await assert_refused_before_sending(
        ecr, client, repository, send, "registry_id", "12-digit AWS account id"
    )


def test_registry_id_may_be_12_digits_or_none() -> None:
    assert InitiateLayerUploadRequest("repo", "000000000000").registry_id == "000000000000"
    assert InitiateLayerUploadRequest("repo").registry_id is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("registry_ids", "field"),
    [
        (("12345678901",), "registry_ids[0]"),
        (("123456789012", "x"), "registry_ids[1]"),
        ("123456789012", "registry_ids"),
        ((None,), "registry_ids[0]"),
    ],
    ids=["11 digits", "second not digits", "a string", "none"],
)
async def test_authorization_token_registry_ids_must_be_12_digits(
    ecr: LocalEcr, client: EcrClient, repository: str, registry_ids: Any, field: str
) -> None:
    def send(client: EcrClient, repository: str) -> Awaitable[object]:
        return client.get_authorization_token(GetAuthorizationTokenRequest(registry_ids))

    await assert_refused_before_sending(ecr, client, repository, send, field, "account id")


@pytest.mark.anyio
async def test_authorization_token_gives_the_registry_and_a_login_its_repr_hides(
    ecr: LocalEcr, client: EcrClient
) -> None:
    for request in (None, GetAuthorizationTokenRequest(("123456789012",))):
        answer = await client.get_authorization_token(request)
        [login] = answer.authorization_data
        assert login.proxy_endpoint == ecr.endpoint_url
        assert base64.b64decode(login.authorization_token).startswith(b"AWS:")
        assert login.expires_at is not None
        assert login.expires_at > time.time()
        assert login.authorization_token not in repr(answer)
    assert [r.operation for r in ecr.requests()] == [Operation.GET_AUTHORIZATION_TOKEN] * 2


# -- upload id: UUID form --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "upload_id",
    [
        "not-an-upload-id",
        UPLOAD_ID.replace("-", ""),
        "{" + UPLOAD_ID + "}",
        UPLOAD_ID + "\n",
        UPLOAD_ID[:-1] + "g",
        "",
    ],
    ids=["words", "no dashes", "braces", "newline", "not hex", "empty"],
)
async def test_upload_id_must_have_the_uuid_form(
    ecr: LocalEcr, client: EcrClient, repository: str, upload_id: str
) -> None:
    send = [send_part(upload_id=upload_id), send_complete(upload_id=upload_id)]
    await assert_refused_before_sending(ecr, client, repository, send, "upload_id", "UUID form")


def test_upload_ids_in_either_case_are_accepted() -> None:
    for upload_id in (UPLOAD_ID, UPLOAD_ID.upper(), str(uuid.uuid4())):
        assert part(upload_id=upload_id).upload_id == upload_id


# -- the part's byte range and blob ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"part_first_byte": -1, "part_last_byte": 2}, "part_first_byte", ">= 0"),
        ({"part_first_byte": True}, "part_first_byte", "integer"),
        ({"part_first_byte": 0.0}, "part_first_byte", "integer"),
        ({"part_last_byte": "3"}, "part_last_byte", "integer"),
        ({"part_first_byte": -4, "part_last_byte": -1}, "part_first_byte", ">= 0"),
    ],
    ids=["negative", "bool", "float", "str", "negative range of the right length"],
)
async def test_part_first_byte_must_be_an_integer_at_least_0(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    fields: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    await assert_refused_before_sending(ecr, client, repository, send_part(**fields), field, rule)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "last", "size"),
    [(0, 4, 4), (0, 2, 4), (10, 10, 4), (5, 4, 0 + 1)],
    ids=["one too many", "one too few", "one byte claimed", "last before first"],
)
async def test_part_byte_range_must_cover_the_blob_exactly(
    ecr: LocalEcr, client: EcrClient, repository: str, first: int, last: int, size: int
) -> None:
    send = send_part(part_first_byte=first, part_last_byte=last, layer_part_blob=b"x" * size)
    await assert_refused_before_sending(
        ecr,
        client,
        repository,
        send,
        "part_last_byte",
        re.escape("part_last_byte - part_first_byte + 1 must equal len(layer_part_blob)"),
    )


@pytest.mark.anyio
async def test_part_blob_must_be_at_most_20971520_bytes(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    blob = bytes(MAX_PART_SIZE + 1)
    send = send_part(part_last_byte=MAX_PART_SIZE, layer_part_blob=blob)
    await assert_refused_before_sending(
        ecr, client, repository, send, "layer_part_blob", "at most 20971520 bytes"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("blob", [b"", bytearray(), memoryview(b"")], ids=type)
async def test_part_blob_must_not_be_empty(
    ecr: LocalEcr, client: EcrClient, repository: str, blob: bytes | bytearray | memoryview
) -> None:
    send = send_part(part_last_byte=0, layer_part_blob=blob)
    await assert_refused_before_sending(
        ecr, client, repository, send, "layer_part_blob", "must not be empty"
    )


@pytest.mark.anyio
async def test_part_blob_must_be_bytes_like(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    send = send_part(layer_part_blob="part")
    await assert_refused_before_sending(
        ecr, client, repository, send, "layer_part_blob", "bytes-like"
    )


def test_part_edge_cases_that_are_valid() -> None:
    largest = part(blob=bytes(MAX_PART_SIZE))
    assert (largest.part_first_byte, largest.part_last_byte) == (0, MAX_PART_SIZE - 1)
    assert part(first=0, blob=b"x").part_last_byte == 0
    # A memoryview counts bytes, whatever its format.
    wide = memoryview(bytearray(8)).cast("I")
    assert part(blob=wide).part_last_byte == 7


# -- digests: sha256: + 64 lowercase hex -----------------------------------------------------

BAD_DIGESTS = {
    "uppercase hex": "sha256:" + "A" * 64,
    "63 hex digits": "sha256:" + "a" * 63,
    "65 hex digits": "sha256:" + "a" * 65,
    "no algorithm": "a" * 64,
    "sha512": "sha512:" + "a" * 128,
    "not hex": "sha256:" + "g" * 64,
    "trailing newline": DIGEST + "\n",
}


@pytest.mark.anyio
@pytest.mark.parametrize("digest", list(BAD_DIGESTS.values()), ids=list(BAD_DIGESTS))
async def test_layer_digests_must_be_sha256_lowercase_hex(
    ecr: LocalEcr, client: EcrClient, repository: str, digest: str
) -> None:
    send = [
        send_complete(layer_digests=(DIGEST, digest)),
        send_check(layer_digests=(DIGEST, digest)),
    ]
    await assert_refused_before_sending(
        ecr, client, repository, send, "layer_digests[1]", "64 lowercase hex"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("digest", list(BAD_DIGESTS.values()), ids=list(BAD_DIGESTS))
async def test_image_digest_must_be_sha256_lowercase_hex(
    ecr: LocalEcr, client: EcrClient, repository: str, digest: str
) -> None:
    send = send_put_image(image_digest=digest)
    await assert_refused_before_sending(
        ecr, client, repository, send, "image_digest", "64 lowercase hex"
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("digests", "rule"),
    [
        ((), "at least 1"),
        (tuple([DIGEST] * 101), "at most 100"),
        (DIGEST, "sequence of digests"),
    ],
    ids=["none", "101", "a bare string"],
)
async def test_layer_digests_must_be_1_to_100(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    digests: Any,
    rule: str,
) -> None:
    send = [send_complete(layer_digests=digests), send_check(layer_digests=digests)]
    await assert_refused_before_sending(ecr, client, repository, send, "layer_digests", rule)


def test_layer_digests_are_kept_as_a_tuple() -> None:
    digests: Any = [DIGEST]
    request = CompleteLayerUploadRequest("repo", UPLOAD_ID, digests)
    assert request.layer_digests == (DIGEST,)
    assert hash(request) == hash(CompleteLayerUploadRequest("repo", UPLOAD_ID, (DIGEST,)))
    check = BatchCheckLayerAvailabilityRequest("repo", tuple([DIGEST] * 100))
    assert len(check.layer_digests) == 100


# -- image manifest: 1 byte to 4 MiB (UTF-8); image tag --------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "manifest",
    ["", "x" * (MAX_MANIFEST + 1), "é" * (MAX_MANIFEST // 2 + 1)],
    ids=["empty", "4 MiB + 1 byte", "2 Mi + 1 two-byte characters"],
)
async def test_image_manifest_must_be_1_byte_to_4_mib(
    ecr: LocalEcr, client: EcrClient, repository: str, manifest: str
) -> None:
    send = send_put_image(image_manifest=manifest)
    await assert_refused_before_sending(
        ecr, client, repository, send, "image_manifest", "1 byte to 4 MiB"
    )


@pytest.mark.anyio
async def test_image_manifest_must_be_text(
    ecr: LocalEcr, client: EcrClient, repository: str
) -> None:
    send = send_put_image(image_manifest=MANIFEST.encode())
    await assert_refused_before_sending(ecr, client, repository, send, "image_manifest", "a str")


def test_image_manifest_edge_sizes_are_accepted() -> None:
    assert PutImageRequest("repo", "x").image_manifest == "x"
    assert len(PutImageRequest("repo", "é" * (MAX_MANIFEST // 2)).image_manifest) == 2 * MIB


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tag",
    ["", "t" * 301, "has space", "slash/tag", "colon:tag", "täg"],
    ids=["empty", "301 characters", "space", "slash", "colon", "non-ascii"],
)
async def test_image_tag_must_be_1_to_300_allowed_characters(
    ecr: LocalEcr, client: EcrClient, repository: str, tag: str
) -> None:
    send = send_put_image(image_tag=tag)
    await assert_refused_before_sending(ecr, client, repository, send, "image_tag", "1 to 300")


def test_image_tags_that_are_valid() -> None:
    for tag in ("latest", "v1.2.3", "t" * 300, "1.0_rc-2", "A"):
        assert PutImageRequest("repo", MANIFEST, image_tag=tag).image_tag == tag


@pytest.mark.anyio
@pytest.mark.parametrize("image_ids", [(), "v1"], ids=["none", "a bare string"])
async def test_batch_get_image_needs_image_ids(
    ecr: LocalEcr, client: EcrClient, repository: str, image_ids: Any
) -> None:
    send = send_get_image(image_ids=image_ids)
    await assert_refused_before_sending(ecr, client, repository, send, "image_ids", "non-empty")


# -- what the dataclasses promise ------------------------------------------------------------

REQUESTS: list[object] = [
    InitiateLayerUploadRequest("repo"),
    part(),
    CompleteLayerUploadRequest("repo", UPLOAD_ID, (DIGEST,)),
    BatchCheckLayerAvailabilityRequest("repo", (DIGEST,)),
    PutImageRequest("repo", MANIFEST),
    BatchGetImageRequest("repo", ("v1",)),
    InitiateLayerUploadResponse(UPLOAD_ID, 10 * MIB),
    UploadLayerPartResponse("123456789012", "repo", UPLOAD_ID, 9),
    Layer(DIGEST, "AVAILABLE", 3),
    Image("123456789012", "repo", DIGEST, "v1"),
]


@pytest.mark.parametrize("value", REQUESTS, ids=lambda v: type(v).__name__)
def test_requests_and_responses_are_frozen_and_slotted(value: object) -> None:
    assert dataclasses.is_dataclass(value)
    name = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, name, getattr(value, name))
    assert not hasattr(value, "__dict__")


def test_large_fields_stay_out_of_reprs() -> None:
    shown = repr(part(blob=b"secret-bytes" * 10))
    assert "secret-bytes" not in shown
    assert "part_first_byte=0" in shown
    assert "schemaVersion" not in repr(PutImageRequest("repo", MANIFEST))


def test_layer_availability_helpers() -> None:
    other = "sha256:" + "0" * 64
    answer = BatchCheckLayerAvailabilityResponse(
        layers=(Layer(DIGEST, "AVAILABLE", 5), Layer(other, "UNAVAILABLE")),
        failures=(LayerFailure(other, "MissingLayerDigest", "not found"),),
    )
    assert answer.available_digests() == {DIGEST}
    assert [layer.available for layer in answer.layers] == [True, False]


# -- upload checkpoints ----------------------------------------------------------------------


def test_checkpoint_round_trips_through_json() -> None:
    checkpoint = UploadCheckpoint(
        "repo",
        "123456789012",
        UPLOAD_ID,
        5 * MIB,
        part_size=5 * MIB,
        source_path="/tmp/layer.tar",
        source_size=12 * MIB,
        source_mtime_ns=1_700_000_000_000_000_000,
        source_offset=512,
        source_length=11 * MIB,
    )
    assert UploadCheckpoint.from_json(checkpoint.to_json()) == checkpoint
    assert UploadCheckpoint.from_json(checkpoint.to_json().encode()) == checkpoint


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not an ecrstream checkpoint"),
        ('{"ecrstream_checkpoint": 2}', "not an ecrstream checkpoint"),
        ('{"ecrstream_checkpoint": 1, "repository_name": "repo"}', "missing field"),
        (
            json.dumps(
                {
                    "ecrstream_checkpoint": 1,
                    "repository_name": "repo",
                    "upload_id": UPLOAD_ID,
                    "bytes_committed": 0,
                    "extra": 1,
                }
            ),
            "unknown field",
        ),
        (
            json.dumps(
                {
                    "ecrstream_checkpoint": 1,
                    "repository_name": "repo",
                    "upload_id": UPLOAD_ID,
                    "bytes_committed": -1,
                }
            ),
            r"checkpoint\.bytes_committed: must be >= 0",
        ),
        (
            json.dumps(
                {
                    "ecrstream_checkpoint": 1,
                    "repository_name": "Repo",
                    "upload_id": UPLOAD_ID,
                    "bytes_committed": 0,
                }
            ),
            r"checkpoint\.repository_name: ",
        ),
        (
            json.dumps(
                {
                    "ecrstream_checkpoint": 1,
                    "repository_name": "repo",
                    "upload_id": UPLOAD_ID,
                    "bytes_committed": 0,
                    "source_path": 12345,
                }
            ),
            r"checkpoint\.source_path: must be a string",
        ),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
    ids=[
        "garbage",
        "array",
        "version 2",
        "missing",
        "unknown",
        "negative",
        "bad name",
        "path",
        "deep",
    ],
)
def test_checkpoint_from_json_names_what_is_wrong(text: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        UploadCheckpoint.from_json(text)
