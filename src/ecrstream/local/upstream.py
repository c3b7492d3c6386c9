"""moto's server, the model of repositories, images, tags and errors, as the proxy uses it.

moto runs in this process (``moto.server.ThreadedMotoServer`` on 127.0.0.1, a free port); the
proxy posts to it over HTTP. The bytes of layers never go there: the proxy writes them to its
store and tells moto's backend, in process, which layers completed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from ecrstream.local.protocol import TARGET_PREFIX, Reply

REGISTRY_ID: Final = str(DEFAULT_ACCOUNT_ID)
"""The registry (account) id moto serves for any access key."""

_HOP_BY_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect"}
)
_PASSED_BACK: Final = ("content-type", "x-amzn-requestid", "x-amzn-errortype")


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A request's headers without the hop-by-hop ones, to send on upstream."""
    return {name: value for name, value in headers.items() if name.lower() not in _HOP_BY_HOP}


def _post_blocking(upstream: tuple[str, int], headers: Mapping[str, str], body: bytes) -> Reply:
    connection = http.client.HTTPConnection(*upstream, timeout=600)
    try:
        connection.request("POST", "/", body=body, headers=dict(headers))
        answer = connection.getresponse()
        payload = answer.read()
        passed = tuple(
            (name, value) for name, value in answer.getheaders() if name.lower() in _PASSED_BACK
        )
        return Reply(answer.status, payload, passed, applied=200 <= answer.status < 300)
    finally:
        connection.close()


def manifest_blobs(document: object) -> list[str]:
    """The config and layer digests a manifest needs in the repository (none for an index)."""
    if not isinstance(document, dict):
        return []
    blobs: list[str] = []
    config = document.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        blobs.append(config["digest"])
    layers = document.get("layers")
    if isinstance(layers, list):
        for layer in layers:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                blobs.append(layer["digest"])
    return list(dict.fromkeys(blobs))


class _MuteAccessLog(logging.Filter):
    """Drops werkzeug's per-request INFO lines (moto's server logs every request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_mute_lock = threading.Lock()
_mute_users = 0
_MUTE = _MuteAccessLog()


def _mute_werkzeug(on: bool) -> None:
    global _mute_users
    with _mute_lock:
        _mute_users += 1 if on else -1
        logger = logging.getLogger("werkzeug")
        if on and _mute_users == 1:
            logger.addFilter(_MUTE)
        elif not on and _mute_users == 0:
            logger.removeFilter(_MUTE)


class Upstream:
    """moto's server: started and stopped with the endpoint, called by the proxy.

    While any endpoint runs, werkzeug's access log (INFO) is muted. moto's state is
    process-wide: two endpoints in one process share repositories.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self.address = ("127.0.0.1", 0)

    def start(self) -> None:
        _mute_werkzeug(True)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        try:
            server.start()
        except BaseException:
            _mute_werkzeug(False)
            raise
        host, port = server.get_host_and_port()
        self._server, self.address = server, (host, port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop()
            finally:
                _mute_werkzeug(False)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    async def post(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Forward one request as is and return moto's answer."""
        # http.client in a worker thread, not aiohttp: moto's answers repeat the Server header,
        # which aiohttp's strict parser (python -X dev) refuses.
        return await asyncio.to_thread(_post_blocking, self.address, headers, body)

    async def call(self, operation: str, payload: Mapping[str, Any], region_name: str) -> Reply:
        """Make a request of the proxy's own (registry reads) in ``region_name``."""
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": TARGET_PREFIX + operation,
            # moto reads the region from the credential scope and checks no signature.
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential=testing/20200101/{region_name}/ecr/aws4_request, "
                "SignedHeaders=host, Signature=0"
            ),
        }
        return await self.post(headers, json.dumps(payload).encode())

    async def ask(
        self, headers: Mapping[str, str], operation: str, payload: Mapping[str, Any]
    ) -> Reply:
        """Make another request with a client's headers (its account and region)."""
        asked = {**headers, "X-Amz-Target": TARGET_PREFIX + operation}
        return await self.post(asked, json.dumps(payload).encode())

    async def available_layers(
        self,
        headers: Mapping[str, str],
        repository_name: str | None,
        registry_id: str | None,
        digests: Sequence[str],
    ) -> set[str] | Reply:
        """Which of these digests the repository has; an upstream error comes back as is."""
        available: set[str] = set()
        for start in range(0, len(digests), 100):  # ECR's limit per call
            request: dict[str, Any] = {
                "repositoryName": repository_name,
                "layerDigests": list(digests[start : start + 100]),
            }
            if registry_id is not None:
                request["registryId"] = registry_id
            reply = await self.ask(headers, "BatchCheckLayerAvailability", request)
            if reply.status != 200:
                return reply
            for layer in json.loads(reply.body).get("layers", []):
                if layer.get("layerAvailability") == "AVAILABLE":
                    available.add(layer["layerDigest"])
        return available

    async def referenced_blobs(
        self, headers: Mapping[str, str], repository_name: str | None, registry_id: str | None
    ) -> set[str] | Reply:
        """Every blob an image of the repository references; an upstream error as is."""
        base: dict[str, Any] = {"repositoryName": repository_name}
        if registry_id is not None:
            base["registryId"] = registry_id
        digests: dict[str, None] = {}
        listing = dict(base)
        while True:
            reply = await self.ask(headers, "ListImages", listing)
            if reply.status != 200:
                return reply
            answer = json.loads(reply.body)
            for image_id in answer.get("imageIds", []):
                if isinstance(image_id.get("imageDigest"), str):
                    digests[image_id["imageDigest"]] = None
            if not answer.get("nextToken"):
                break
            listing = {**base, "nextToken": answer["nextToken"]}
        referenced: set[str] = set()
        ordered = list(digests)
        for start in range(0, len(ordered), 100):  # ECR's limit per call
            ids = [{"imageDigest": digest} for digest in ordered[start : start + 100]]
            reply = await self.ask(headers, "BatchGetImage", {**base, "imageIds": ids})
            if reply.status != 200:
                return reply
            for image in json.loads(reply.body).get("images", []):
                try:
                    document = json.loads(image.get("imageManifest", ""))
                except ValueError:
                    continue
                referenced.update(manifest_blobs(document))
        return referenced

    @staticmethod
    def _repository(registry_id: str, region_name: str, repository_name: str) -> Any:
        from moto.ecr.models import ecr_backends

        try:
            return ecr_backends[registry_id][region_name].repositories[repository_name]
        except KeyError:
            return None

    def register_layer(
        self,
        registry_id: str,
        region_name: str,
        repository_name: str,
        upload_id: str,
        digest: str,
        size: int,
    ) -> bool:
        """Record a completed layer in moto's backend and close its upload there.

        What moto's own CompleteLayerUpload would do had the bytes gone there. False if the
        repository no longer exists.
        """
        repository = self._repository(registry_id, region_name, repository_name)
        if repository is None:
            return False
        repository.layers[digest] = size
        repository.uploads.pop(upload_id, None)
        return True

    def drop_upload(
        self, registry_id: str, region_name: str, repository_name: str, upload_id: str
    ) -> None:
        """Forget an open upload in moto's backend (it holds no bytes: they never go there)."""
        repository = self._repository(registry_id, region_name, repository_name)
        if repository is not None:
            repository.uploads.pop(upload_id, None)
