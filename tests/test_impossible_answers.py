"""An endpoint that answers the impossible: the upload fails inside the error tree, at once.

Every test talks to the local ECR endpoint through ``lying_ecr.LyingEcr``, a middlebox that
forwards everything and lies where told. What a real ECR never does: claim bytes the client
never sent (in an answer or in a refusal), refuse the part that starts at the very byte it
asks for, forget bytes it acknowledged. Each raises ``ProtocolViolationError`` naming the
operation and saying what to check; nothing is completed; a checkpoint never claims more than
reached the endpoint; re-alignments are bounded per upload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import anyio
import pytest
from await_points import Scenario as StopScenario
from await_points import Site, cancel_when, check_stop
from helpers import assert_parts_are_source, digest_of, random_bytes
from lying_ecr import Exchange, LyingEcr, Reply, invalid_part, part_taken

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    EcrStreamError,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    ProtocolViolationError,
)
from ecrstream.local import LocalEcr, Operation

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

MIB = 1024 * 1024
PART = 5 * MIB
PART_OP = Operation.UPLOAD_LAYER_PART
COMPLETE = Operation.COMPLETE_LAYER_UPLOAD
MAX_ATTEMPTS = 3


@pytest.fixture
def liar(ecr: LocalEcr) -> Iterator[LyingEcr]:
    with LyingEcr(ecr) as proxy:
        yield proxy


@pytest.fixture
async def client(liar: LyingEcr) -> AsyncIterator[EcrClient]:
    async with EcrClient.create(**liar.client_kwargs()) as made:
        yield made


def uploader(client: EcrClient, repository: str) -> LayerUploader:
    return LayerUploader(
        client, repository, part_size=PART, max_attempts=MAX_ATTEMPTS, retry_base_delay=0.001
    )


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


async def upload(
    client: EcrClient, repository: str, data: bytes, kind: str, folder: Path
) -> LayerUploadResult:
    if kind == "stream":
        return await uploader(client, repository).upload_stream(chunks(data))
    path = folder / "layer.bin"
    path.write_bytes(data)
    return await uploader(client, repository).upload_file(path)


def assert_clear_violation(error: BaseException, *words: str) -> None:
    """In the tree, names the operation, says what was impossible and what to check."""
    assert isinstance(error, ProtocolViolationError)
    assert isinstance(error, EcrStreamError)
    assert error.operation == "UploadLayerPart"
    text = str(error)
    assert text.startswith("UploadLayerPart: ")
    for word in words:
        assert word in text, text
    assert any(advice in text for advice in ("check", "Check", "upload it again")), text


async def settled(ecr: LocalEcr) -> None:
    with anyio.fail_after(10):
        await ecr.wait_idle_async()


@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_refusing_every_part_while_asking_for_byte_0(
    ecr: LocalEcr, liar: LyingEcr, client: EcrClient, repository: str, tmp_path: Path, kind: str
) -> None:
    """Issue 12 item 4: ECR "keeps asking for byte 0" was a RuntimeError."""
    liar.lie(PART_OP, lambda exchange: invalid_part(exchange, -1))

    with pytest.raises(ProtocolViolationError) as caught:
        await upload(client, repository, random_bytes(2 * PART + 1, 1), kind, tmp_path)

    assert_clear_violation(caught.value, "byte 0", "keeps refusing")
    assert liar.told == MAX_ATTEMPTS + 1  # re-aligned MAX_ATTEMPTS times, then gave up
    await settled(ecr)
    assert ecr.requests(PART_OP) == []  # the lies were told instead of forwarding
    assert ecr.requests(COMPLETE) == []


@pytest.mark.parametrize("kind", ["file", "stream"])
@pytest.mark.parametrize("how", ["answer", "refusal"])
async def test_a_claim_of_bytes_never_sent(
    ecr: LocalEcr,
    liar: LyingEcr,
    client: EcrClient,
    repository: str,
    tmp_path: Path,
    kind: str,
    how: str,
) -> None:
    """ECR holds 37 MB of a layer the client sent 5 MB of: a RuntimeError (file) or a
    "layer ended" RuntimeError (stream) before."""
    extra = 37 * 1000 * 1000

    def claim(exchange: Exchange) -> Reply:
        assert exchange.part_last_byte is not None
        if how == "answer":
            return part_taken(exchange, exchange.part_last_byte + extra)
        return invalid_part(exchange, exchange.part_last_byte + extra)

    liar.lie(PART_OP, claim, forward=how == "answer", times=1)

    with pytest.raises(ProtocolViolationError) as caught:
        await upload(client, repository, random_bytes(PART + 1000, 2), kind, tmp_path)

    assert_clear_violation(caught.value, "claims to hold", "sent it only")
    await settled(ecr)
    assert ecr.requests(COMPLETE) == []


async def test_a_stream_that_ecr_forgets_cannot_be_sent_again(
    ecr: LocalEcr, liar: LyingEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    """After acknowledging the first part, ECR says it holds nothing: a stream cannot rewind
    (a RuntimeError, "bytes were already released", before)."""
    liar.lie(PART_OP, lambda exchange: invalid_part(exchange, -1) if exchange.call == 2 else None)

    with pytest.raises(ProtocolViolationError) as caught:
        await upload(client, repository, random_bytes(2 * PART + 1, 3), "stream", tmp_path)

    assert_clear_violation(caught.value, "after it acknowledged", "stream")


async def test_a_file_that_ecr_forgets_once_is_sent_again(
    ecr: LocalEcr, liar: LyingEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    """A file can rewind: the same lie once costs a re-read, and the layer is right."""
    data = random_bytes(2 * PART + 1, 4)
    liar.lie(PART_OP, lambda exchange: invalid_part(exchange, -1) if exchange.call == 2 else None)

    result = await upload(client, repository, data, "file", tmp_path)

    assert result.digest == digest_of(data)
    assert result.upload_id is not None
    await settled(ecr)
    assert_parts_are_source(ecr, result.upload_id, data)


async def test_realignments_are_bounded_per_upload(
    ecr: LocalEcr, liar: LyingEcr, client: EcrClient, repository: str, tmp_path: Path
) -> None:
    """ECR asks for one byte more than each part's start, a new offset each time: before,
    only a repeated offset was counted, and one upload re-aligned thousands of times."""

    def one_byte_on(exchange: Exchange) -> Reply:
        assert exchange.part_first_byte is not None
        return invalid_part(exchange, exchange.part_first_byte)

    liar.lie(PART_OP, one_byte_on)

    with anyio.fail_after(60), pytest.raises(ProtocolViolationError) as caught:
        await upload(client, repository, random_bytes(PART + 1, 5), "file", tmp_path)

    assert_clear_violation(caught.value, "re-alignments")
    assert liar.told == MAX_ATTEMPTS + 1


@pytest.mark.parametrize("kind", ["token", "native"])
async def test_a_checkpoint_never_claims_more_than_reached_ecr(
    ecr: LocalEcr, liar: LyingEcr, client: EcrClient, repository: str, kind: str
) -> None:
    """A stream upload told it holds 37 MB of 5 MB, then canceled while it would read on:
    the checkpoint claimed 37 MB before. It fails at once now; a cancel racing the failure
    hands back a checkpoint of what reached the endpoint at most."""
    data = random_bytes(PART + 1000, 6)
    more = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data
        await more.wait()  # the rest never comes: an old uploader would wait here
        yield b"x"  # pragma: no cover

    def claim(exchange: Exchange) -> Reply:
        assert exchange.part_last_byte is not None
        return part_taken(exchange, exchange.part_last_byte + 37 * 1000 * 1000)

    liar.lie(PART_OP, claim, forward=True, times=1)

    def start(cts: CancellationTokenSource) -> Awaitable[LayerUploadResult]:
        return uploader(client, repository).upload_stream(stalling(), cancellation_token=cts.token)

    def after_the_lie(sites: set[Site]) -> bool:
        in_flight = any("upload_prepared_part" in " ".join(site) for site in sites)
        return liar.told > 0 and not in_flight

    run = await cancel_when(StopScenario(start), after_the_lie, kind)

    outcome = run.outcome
    if isinstance(outcome, OperationCanceledError):
        checkpoint = outcome.checkpoint
        assert checkpoint is not None
        assert checkpoint.bytes_committed <= liar.sent_end(checkpoint.upload_id)
    elif not isinstance(outcome, ProtocolViolationError):
        assert isinstance(outcome, asyncio.CancelledError), outcome
    problems = await check_stop(run, kind, ecr, client, repository, None, digest_of(data))
    assert [p for p in problems if "ended in ProtocolViolationError" not in p] == []
