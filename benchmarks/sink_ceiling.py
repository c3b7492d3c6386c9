#!/usr/bin/env python3
"""How fast the sink can take parts: proof that it is not what the benchmark measures.

    python benchmarks/sink_ceiling.py --endpoint-url http://127.0.0.1:PORT [--size 1G]
        [--ca-bundle PEM]  (for an https:// endpoint)

A raw-socket client that sends one prebuilt UploadLayerPart body over and over (only the
byte range changes), with no serializer, no signing and no hashing, over one keep-alive
connection (a blocking TLS socket for ``https://``). It prints the layer bytes per second
the sink accepted and the sink's CPU seconds per GiB (from ``GET /stats``). bench.py runs it
once per case before the variants.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

TARGET = "AmazonEC2ContainerRegistry_V20150921."


def tls_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """The client context that trusts ``ca_bundle`` (None: no TLS)."""
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None


def _stats(url: str, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=30, context=context) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


class RawClient:
    """Just enough HTTP/1.1 to talk to the sink on one connection."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        tls = parts.scheme == "https"
        sock = socket.create_connection((self.host, parts.port or (443 if tls else 80)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = (context or ssl.create_default_context()).wrap_socket(
                sock, server_hostname=self.host
            )
        self.sock = sock
        self.pending = b""

    def call(self, operation: str, *body: bytes | memoryview) -> tuple[int, dict[str, Any]]:
        length = sum(len(chunk) for chunk in body)
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.host}\r\n"
            f"X-Amz-Target: {TARGET}{operation}\r\n"
            "Content-Type: application/x-amz-json-1.1\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        self.sock.sendall(head)
        for chunk in body:
            self.sock.sendall(chunk)
        return self._read_response()

    def _read_response(self) -> tuple[int, dict[str, Any]]:
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(rest) < length:
            rest += self._recv()
        self.pending = rest[length:]
        return status, json.loads(rest[:length] or b"{}")

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the sink closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def measure(url: str, size: int, part_size: int, ca_bundle: str | None = None) -> dict[str, Any]:
    """Upload ``size`` bytes of one repeated random part; return throughput and sink CPU."""
    context = tls_context(ca_bundle)
    blob = base64.b64encode(os.urandom(part_size))
    client = RawClient(url, context)
    before = _stats(url, context)
    started = time.perf_counter()
    status, response = client.call("InitiateLayerUpload", b'{"repositoryName": "ceiling"}')
    if status != 200:
        raise RuntimeError(f"InitiateLayerUpload answered {status}: {response}")
    upload_id = response["uploadId"]
    offset = 0
    parts = 0
    while offset < size:
        length = min(part_size, size - offset)
        part_blob = blob if length == part_size else base64.b64encode(os.urandom(length))
        prefix = (
            f'{{"repositoryName": "ceiling", "uploadId": "{upload_id}", '
            f'"partFirstByte": {offset}, "partLastByte": {offset + length - 1}, '
            '"layerPartBlob": "'
        ).encode()
        status, response = client.call("UploadLayerPart", prefix, part_blob, b'"}')
        if status != 200:
            raise RuntimeError(f"UploadLayerPart answered {status}: {response}")
        offset += length
        parts += 1
    status, response = client.call(
        "CompleteLayerUpload",
        json.dumps(
            {
                "repositoryName": "ceiling",
                "uploadId": upload_id,
                "layerDigests": ["sha256:" + "0" * 64],
            }
        ).encode(),
    )
    wall = time.perf_counter() - started
    client.close()
    after = _stats(url, context)
    sink_cpu = (after["cpu_user_s"] + after["cpu_system_s"]) - (
        before["cpu_user_s"] + before["cpu_system_s"]
    )
    return {
        "size": size,
        "part_size": part_size,
        "parts": parts,
        "complete_status": status,
        "wall_s": wall,
        "mb_per_s": size / wall / 1e6,
        "sink_cpu_s": sink_cpu,
        "sink_cpu_s_per_gib": sink_cpu / (size / (1 << 30)),
        "sink_cpu_user_s": after["cpu_user_s"] - before["cpu_user_s"],
        "sink_cpu_system_s": after["cpu_system_s"] - before["cpu_system_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the sink's own ceiling.")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes (default 1 GiB)")
    parser.add_argument("--part-size", type=int, default=20_971_520)
    parser.add_argument("--ca-bundle", help="PEM file of the CA to trust for https://")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.endpoint_url, args.size, args.part_size, args.ca_bundle)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
