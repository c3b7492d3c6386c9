"""HTTPS with the encryption off the event loop (ecrstream.tls), against a real TLS server.

The server is benchmarks/sink.py with --verify (it decodes every part and checks the
layer's digest) behind a certificate of a throwaway trustme CA, trusted the standard AWS
way (AWS_CA_BUNDLE). Each upload is made twice where it matters: through OffloopTlsTransport
and through asyncio's own TLS transport (ECRSTREAM_ASYNCIO_TLS=1), and both must leave the
same bytes at the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest
import trustme

from ecrstream import (
    CancellationTokenSource,
    EcrClient,
    EcrConnectionError,
    LayerUploader,
    OperationCanceledError,
    UploadProgress,
)
from ecrstream.models import MAX_PART_SIZE
from ecrstream.tls import OffloopTlsTransport

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PART_SIZE = 5 * MIB


@pytest.fixture(scope="module")
def tls_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(https URL, CA bundle) of a verifying benchmark sink."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_path, chain, key = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(chain), append=index > 0)
    cert.private_key_pem.write_to_path(str(key))
    command = [sys.executable, str(ROOT / "benchmarks" / "sink.py"), "--verify"]
    command += ["--part-size", str(PART_SIZE), "--certfile", str(chain), "--keyfile", str(key)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("SINK_PORT="), line
        yield f"https://127.0.0.1:{int(line.split('=', 1)[1])}", str(ca_path)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def trusted(tls_sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The sink's URL, with its CA trusted through AWS_CA_BUNDLE and dummy credentials."""
    url, ca_bundle = tls_sink
    monkeypatch.setenv("AWS_CA_BUNDLE", ca_bundle)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTLSTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "tls-test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("ECRSTREAM_ASYNCIO_TLS", raising=False)
    return url


def _stats(url: str, ca_bundle: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_bundle)
    with urllib.request.urlopen(url + "/stats", timeout=10, context=context) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ecrstream-tls-")]


@pytest.mark.parametrize("offload", [True, False], ids=["offloop", "asyncio-tls"])
async def test_upload_over_https_reaches_the_server_whole(
    offload: bool,
    trusted: str,
    tls_sink: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not offload:
        monkeypatch.setenv("ECRSTREAM_ASYNCIO_TLS", "1")
    data = os.urandom(12 * MIB + 12345)  # three parts, the last one short
    path = tmp_path / "layer.bin"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writers_seen: list[int] = []

    def on_progress(progress: UploadProgress) -> None:
        writers_seen.append(len(_writer_threads()))

    async with EcrClient.create(region_name="us-east-1", endpoint_url=trusted) as client:
        uploader = LayerUploader(client, "tls-repo", part_size=PART_SIZE)
        result = await uploader.upload_file(path, on_progress=on_progress)
    assert result.digest == digest
    assert result.size == len(data)
    assert result.part_count == 3
    upload = _stats(trusted, tls_sink[1])["completed"][-1]
    assert upload["verified"] is True  # the sink decoded every part and checked the digest
    assert upload["layerDigest"] == digest
    assert upload["layerSize"] == len(data)
    assert upload["partsAccepted"] == 3
    assert upload["partsRejected"] == 0
    # The connection had a writer thread of its own only when encrypting off the loop.
    assert len(writers_seen) == 3
    assert all(count >= 1 for count in writers_seen) is offload
    for thread in _writer_threads():
        thread.join(timeout=10)
    assert _writer_threads() == []


async def test_offloop_transport_is_the_one_used(trusted: str) -> None:
    async with EcrClient.create(region_name="us-east-1", endpoint_url=trusted) as client:
        response = await client.aiobotocore_client.describe_repositories()
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        connector = client.aiobotocore_client._endpoint.http_session._sessions[None].connector
        transports = [
            proto.transport
            for connections in connector._conns.values()
            for proto, _ in connections
            if proto.transport is not None
        ]
        assert transports
        assert all(isinstance(t, OffloopTlsTransport) for t in transports)
        transport = transports[0]
        assert transport.get_extra_info("peercert")["subjectAltName"]
        assert transport.get_extra_info("sslcontext") is not None
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
    for thread in _writer_threads():
        thread.join(timeout=10)
    assert _writer_threads() == []


async def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
    trusted: str, tls_sink: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE")
    before = _stats(trusted, tls_sink[1])
    async with EcrClient.create(region_name="us-east-1", endpoint_url=trusted) as client:
        uploader = LayerUploader(client, "tls-repo", part_size=PART_SIZE)
        with pytest.raises(EcrConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await uploader.upload_stream(_chunks(6 * MIB))
    after = _stats(trusted, tls_sink[1])
    assert after["requests"] == before["requests"] + 1  # only this /stats read was answered


async def test_cancel_during_a_part_aborts_the_connection_and_ends_its_writer(
    trusted: str, tls_sink: tuple[str, str]
) -> None:
    source = CancellationTokenSource()
    sent: list[int] = []

    def on_progress(progress: UploadProgress) -> None:
        sent.append(progress.bytes_sent)
        source.cancel()  # while the next part is on its way

    async with EcrClient.create(region_name="us-east-1", endpoint_url=trusted) as client:
        uploader = LayerUploader(client, "tls-repo", part_size=PART_SIZE)
        with pytest.raises(OperationCanceledError) as canceled:
            await uploader.upload_stream(
                _chunks(20 * MIB), cancellation_token=source.token, on_progress=on_progress
            )
        assert canceled.value.checkpoint is not None
        assert canceled.value.checkpoint.bytes_committed == sent[0] == PART_SIZE
        # The client stays usable after the aborted request.
        response = await client.aiobotocore_client.describe_repositories()
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    for thread in _writer_threads():
        thread.join(timeout=10)
    assert _writer_threads() == []


async def _chunks(total: int) -> Any:
    remaining = total
    while remaining:
        size = min(remaining, MIB)
        remaining -= size
        await anyio.lowlevel.checkpoint()
        yield os.urandom(size)


class _FlowRecorder(asyncio.Protocol):
    """Records the transport's pause/resume calls; ``lost`` is done once the socket closed."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.resumed = asyncio.Event()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


async def test_flow_control_pauses_once_and_wakes_the_loop_once_per_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole part body queues without a pause; past the mark, one pause and one wake-up.

    The server does not read until told to, so the writer thread cannot drain the queue.
    """
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    go = threading.Event()
    received: list[int] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            go.wait(60)
            total = 0
            while chunk := tls.recv(MIB):
                total += len(chunk)
            received.append(total)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    raw = socket.create_connection(listener.getsockname())
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock = client_context.wrap_socket(raw, server_hostname="127.0.0.1")
    loop = asyncio.get_running_loop()
    wakeups: list[str] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(getattr(callback, "__name__", ""))
        return call_soon_threadsafe(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    recorder = _FlowRecorder()
    transport = OffloopTlsTransport(loop, sock, recorder)
    try:
        # The default mark holds the largest UploadLayerPart body (its base64 and JSON).
        assert transport.get_write_buffer_limits()[1] > 4 * MAX_PART_SIZE // 3 + 4096
        transport.set_write_buffer_limits(high=MIB, low=MIB // 4)
        piece = memoryview(os.urandom(256 * 1024))
        for _ in range(32):  # 8 MiB, far past the mark, while nothing is read
            transport.write(piece)
        assert recorder.events == ["pause"]
        go.set()
        await asyncio.wait_for(recorder.resumed.wait(), 60)
        for _ in range(2):  # back under the mark: no new pause
            transport.write(piece)
        transport.close()
        await asyncio.wait_for(recorder.lost, 60)
    finally:
        go.set()
        transport.abort()
        server.join(timeout=60)
        listener.close()
    assert received == [34 * 256 * 1024]
    assert recorder.events == ["pause", "resume"]
    # One wake-up of the loop for the one pause (none per buffer sent), and one at the end.
    assert wakeups.count("_maybe_resume") == 1
    assert wakeups.count("_writer_done") == 1
