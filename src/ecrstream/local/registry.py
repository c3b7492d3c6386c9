"""The registry API's read side under ``/v2/``, and the layers' download URLs, on the ECR port.

So real clients (skopeo, docker, crane, oras) can pull what was pushed::

    GET /v2/                                   200 {} once logged in
    GET|HEAD /v2/<name>/manifests/<tag|digest> the stored bytes, their media type,
                                               Docker-Content-Digest
    GET|HEAD /v2/<name>/blobs/<digest>         the layer's bytes (Range as S3 answers it)
    GET /v2/<name>/tags/list                   {"name": ..., "tags": [...]}
    GET /v2/<name>/referrers/<digest>          the OCI 1.1 referrers API: an image index of
                                               the repository's manifests whose
                                               ``subject.digest`` is <digest> (empty: none);
                                               ``?artifactType=`` filters it (then the header
                                               ``OCI-Filters-Applied: artifactType``)
    GET|HEAD /_layers/<digest>?X-Amz-...       a GetDownloadUrlForLayer URL (Range too)

``/v2/`` takes ECR's Basic auth: user ``AWS``, the password of a GetAuthorizationToken
token (this endpoint's, made at start); anything else gets 401 and a Basic challenge. A
download URL is signed (HMAC with the endpoint's secret) and expires like a presigned S3 URL;
it needs no other credential. These reads are not ECR API calls: they are not recorded and
no fault applies to them. Images, tags and which layers a repository holds come from moto; the
bytes from the store.

The referrers list is worked out on each request, as ECR's registry endpoint answers it
since ECR took OCI 1.1 (June 2024): the repository's images (ListImages, every page, tagged
or not), their manifests (BatchGetImage, 100 at a time), and those whose ``subject`` names
the digest, each once, in ListImages' order. A descriptor carries the manifest's media type,
digest and size, its ``artifactType`` (else its config's media type) and its annotations.
``referrer_descriptors`` works it out; rules.py answers ListImageReferrers with it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from aiohttp import web

from ecrstream.local.protocol import Reply
from ecrstream.local.store import BlobStore
from ecrstream.local.upstream import Upstream

__all__: list[str] = []

DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
"""A manifest or blob digest as the registry API takes it (rules.py checks subjects with it)."""
_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK: Final = 1024 * 1024
DOWNLOAD_URL_SECONDS: Final = 3600
"""How long a download URL stays valid (ECR's presigned URLs: one hour)."""
TOKEN_SECONDS: Final = 12 * 3600
"""How long an authorization token is said to be valid (ECR's: 12 hours)."""
_REGISTRY_HEADERS: Final = {"Docker-Distribution-API-Version": "registry/2.0"}
_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
_BATCH: Final = 100
"""The most image ids one BatchGetImage takes."""


class Access:
    """The endpoint's secrets: the registry password and the key that signs download URLs.

    Made fresh for each endpoint start; never logged and not in any repr.
    """

    __slots__ = ("_key", "_password", "base_url")

    def __init__(self) -> None:
        self._password = secrets.token_urlsafe(32)
        self._key = secrets.token_bytes(32)
        self.base_url = ""
        """``http://127.0.0.1:PORT``, set once the proxy listens."""

    def __repr__(self) -> str:
        return f"Access(base_url={self.base_url!r})"

    def token(self) -> str:
        """An authorizationToken as GetAuthorizationToken returns it: base64 of ``AWS:<pw>``."""
        return base64.b64encode(f"AWS:{self._password}".encode()).decode()

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries this endpoint's Basic credentials."""
        if authorization is None or not authorization.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(authorization[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return user == b"AWS" and hmac.compare_digest(password, self._password.encode())

    def _signature(self, digest: str, expires: int) -> str:
        return hmac.new(self._key, f"{digest}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def download_url(self, digest: str, *, expired: bool = False) -> str:
        """A URL that serves the blob's bytes for DOWNLOAD_URL_SECONDS, like a presigned URL.

        ``expired``: one whose time ran out a second ago (FaultKind.EXPIRED_URL).
        """
        expires = int(time.time()) + (-1 if expired else DOWNLOAD_URL_SECONDS)
        query = f"X-Amz-Expires={expires}&X-Amz-Signature={self._signature(digest, expires)}"
        return f"{self.base_url}/_layers/{quote(digest)}?{query}"

    def signed(self, digest: str, expires: str, signature: str) -> str | None:
        """Why a download URL is refused (an S3 error code), or None if it is good."""
        if not expires.isdigit() or not hmac.compare_digest(
            signature, self._signature(digest, int(expires))
        ):
            return "SignatureDoesNotMatch"
        if int(expires) < time.time():
            return "AccessDenied"
        return None


def _s3_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}"
    body += "</Message></Error>"
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers)


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """The inclusive byte range to serve, as S3 reads a Range header.

    None: serve it all (no header, or one S3 ignores: malformed, several ranges, a start after
    the end); False: not satisfiable (a start at or past the end, an empty suffix).
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0 or size == 0:
            return False if last else None
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return False
    return start, min(end, size - 1)


async def serve_file(
    request: web.Request, path: Path, headers: dict[str, str]
) -> web.StreamResponse:
    """Answer with a file's bytes, honouring Range as S3 does (206, 416), streamed in chunks."""
    file = await asyncio.to_thread(path.open, "rb")
    try:
        size = os.fstat(file.fileno()).st_size
        chosen = byte_range(request.headers.get("Range"), size)
        if chosen is False:
            return _s3_error(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
                **{"Content-Range": f"bytes */{size}"},
            )
        response = web.StreamResponse(headers={**headers, "Accept-Ranges": "bytes"})
        response.content_type = "application/octet-stream"
        start, end = (0, size - 1) if chosen is None else chosen
        if chosen is not None:
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response.content_length = end - start + 1
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if start:
            await asyncio.to_thread(file.seek, start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = await asyncio.to_thread(file.read, min(_CHUNK, remaining))
            if not chunk:  # cannot happen to a blob (never rewritten); never hang on it
                break
            await response.write(chunk)
            remaining -= len(chunk)
        await response.write_eof()
        return response
    finally:
        file.close()


class Registry:
    """The ``/v2/`` and ``/_layers/`` handlers of one endpoint."""

    def __init__(
        self, upstream: Upstream, store: BlobStore, access: Access, *, region_name: str
    ) -> None:
        self._upstream = upstream
        self._store = store
        self._access = access
        self._region_name = region_name

    def add_routes(self, app: web.Application) -> None:
        """Register the read routes (before the catch-all of the ECR API)."""
        app.router.add_route("GET", "/v2/{path:.*}", self._v2)
        app.router.add_route("HEAD", "/v2/{path:.*}", self._v2)
        app.router.add_route("GET", "/_layers/{digest}", self._download)
        app.router.add_route("HEAD", "/_layers/{digest}", self._download)

    # -- download URLs --

    async def _download(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        refused = self._access.signed(
            digest,
            request.query.get("X-Amz-Expires", ""),
            request.query.get("X-Amz-Signature", ""),
        )
        if refused == "SignatureDoesNotMatch":
            return _s3_error(403, refused, "The request signature we calculated does not match")
        if refused is not None:
            return _s3_error(403, refused, "Request has expired")
        path = await asyncio.to_thread(self._store.find, digest)
        if path is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return await serve_file(request, path, {"ETag": f'"{digest[7:]}"'})

    # -- /v2/ --

    def _error(self, status: int, code: str, message: str, **detail: Any) -> web.Response:
        body = {"errors": [{"code": code, "message": message, "detail": detail or None}]}
        headers = dict(_REGISTRY_HEADERS)
        if status == 401:
            realm = f"{self._access.base_url}/"
            headers["WWW-Authenticate"] = f'Basic realm="{realm}",service="ecr.amazonaws.com"'
        return web.json_response(body, status=status, headers=headers)

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        if not self._access.allows(request.headers.get("Authorization")):
            return self._error(401, "UNAUTHORIZED", "authentication required")
        path = request.match_info["path"]
        if path == "":
            return web.json_response({}, headers=_REGISTRY_HEADERS)
        name, kind, reference = _split(path)
        if kind == "manifests":
            return await self._manifest(request, name, reference)
        if kind == "blobs":
            return await self._blob(request, name, reference)
        if kind == "tags":
            return await self._tags(name)
        if kind == "referrers":
            return await self._referrers(request, name, reference)
        return self._error(404, "NOT_FOUND", "Not found")

    async def _ask(self, operation: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        reply = await self._upstream.call(operation, payload, self._region_name)
        return reply.status, _answer_of(reply)

    def _upstream_error(self, answer: dict[str, Any], name: str) -> web.Response:
        code = str(answer.get("__type", "")).rsplit("#", 1)[-1]
        if code == "RepositoryNotFoundException":
            return self._error(
                404, "NAME_UNKNOWN", "repository name not known to registry", name=name
            )
        return self._error(500, "UNKNOWN", str(answer.get("message", "upstream error")))

    async def _manifest(self, request: web.Request, name: str, reference: str) -> web.Response:
        image_id = {"imageDigest": reference} if DIGEST.fullmatch(reference) else None
        if image_id is None:
            image_id = {"imageTag": reference}
        status, answer = await self._ask(
            "BatchGetImage", {"repositoryName": name, "imageIds": [image_id]}
        )
        if status != 200:
            return self._upstream_error(answer, name)
        images = answer.get("images") or []
        if not images:
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown", reference=reference)
        manifest = str(images[0].get("imageManifest", "")).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        headers = {
            **_REGISTRY_HEADERS,
            "Docker-Content-Digest": digest,
            "Content-Type": _media_type(images[0], manifest),
        }
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(manifest))
            return web.Response(headers=headers)
        return web.Response(body=manifest, headers=headers)

    async def _blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        status, answer = await self._ask(
            "BatchCheckLayerAvailability", {"repositoryName": name, "layerDigests": [digest]}
        )
        if status != 200:
            return self._upstream_error(answer, name)
        available = [
            layer
            for layer in answer.get("layers") or []
            if layer.get("layerAvailability") == "AVAILABLE"
        ]
        path = await asyncio.to_thread(self._store.find, digest) if available else None
        if path is None:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest=digest)
        return await serve_file(
            request, path, {**_REGISTRY_HEADERS, "Docker-Content-Digest": digest}
        )

    async def _tags(self, name: str) -> web.Response:
        tags: list[str] = []
        payload: dict[str, Any] = {"repositoryName": name, "filter": {"tagStatus": "TAGGED"}}
        while True:
            status, answer = await self._ask("ListImages", payload)
            if status != 200:
                return self._upstream_error(answer, name)
            tags += [i["imageTag"] for i in answer.get("imageIds") or [] if i.get("imageTag")]
            token = answer.get("nextToken")
            if not token:
                break
            payload = {**payload, "nextToken": token}
        return web.json_response(
            {"name": name, "tags": sorted(set(tags))}, headers=_REGISTRY_HEADERS
        )

    async def _referrers(self, request: web.Request, name: str, digest: str) -> web.Response:
        if not DIGEST.fullmatch(digest):
            return self._error(400, "DIGEST_INVALID", "invalid digest", digest=digest)
        wanted = request.query.get("artifactType")

        async def ask(operation: str, payload: dict[str, Any]) -> Reply:
            return await self._upstream.call(operation, payload, self._region_name)

        found = await referrer_descriptors(
            ask, name, digest, artifact_types=None if wanted is None else (wanted,)
        )
        if isinstance(found, Reply):
            return self._upstream_error(_answer_of(found), name)
        headers = {**_REGISTRY_HEADERS, "Content-Type": _OCI_INDEX}
        if wanted is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        index = {"schemaVersion": 2, "mediaType": _OCI_INDEX, "manifests": found}
        return web.Response(body=json.dumps(index).encode(), headers=headers)


async def referrer_descriptors(
    ask: Callable[[str, dict[str, Any]], Awaitable[Reply]],
    name: str,
    digest: str,
    *,
    artifact_types: Collection[str] | None = None,
    registry_id: str | None = None,
) -> list[dict[str, Any]] | Reply:
    """The descriptors of the manifests of repository ``name`` whose ``subject`` is
    ``digest``, each once, in ListImages' order (see the module notes); only those whose
    artifactType is one of ``artifact_types`` when given. The referrers API lists them, and so
    does ListImageReferrers (rules.py). ``ask`` makes one moto request; a refusal (an unknown
    repository, say) is returned as moto's Reply."""
    digests: dict[str, None] = {}
    payload: dict[str, Any] = {"repositoryName": name, "filter": {"tagStatus": "ANY"}}
    if registry_id is not None:
        payload["registryId"] = registry_id
    while True:
        reply = await ask("ListImages", payload)
        if reply.status != 200:
            return reply
        answer = _answer_of(reply)
        for image_id in answer.get("imageIds") or []:
            if isinstance(image_id.get("imageDigest"), str):
                digests[image_id["imageDigest"]] = None
        token = answer.get("nextToken")
        if not token:
            break
        payload = {**payload, "nextToken": token}
    found: dict[str, dict[str, Any]] = {}
    listed = list(digests)
    for start in range(0, len(listed), _BATCH):
        ids = [{"imageDigest": d} for d in listed[start : start + _BATCH]]
        batch: dict[str, Any] = {"repositoryName": name, "imageIds": ids}
        if registry_id is not None:
            batch["registryId"] = registry_id
        reply = await ask("BatchGetImage", batch)
        if reply.status != 200:
            return reply
        for image in _answer_of(reply).get("images") or []:
            described = _descriptor(image)
            if described is None or described[0] != digest:
                continue
            descriptor = described[1]
            if artifact_types is not None and descriptor.get("artifactType") not in artifact_types:
                continue
            found.setdefault(descriptor["digest"], descriptor)
    return list(found.values())


def _answer_of(reply: Reply) -> dict[str, Any]:
    """moto's JSON answer ({} if it is no object)."""
    try:
        answer = json.loads(reply.body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _descriptor(image: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The subject digest of a stored manifest and its descriptor in a referrers list, or None
    if it has no ``subject`` (or is no JSON object)."""
    manifest = str(image.get("imageManifest", "")).encode()
    try:
        document = json.loads(manifest)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    subject = document.get("subject")
    target = subject.get("digest") if isinstance(subject, dict) else None
    if not isinstance(target, str):
        return None
    descriptor: dict[str, Any] = {
        "mediaType": _media_type(image, manifest),
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest),
    }
    artifact_type = document.get("artifactType")
    if not isinstance(artifact_type, str) or not artifact_type:
        config = document.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(artifact_type, str) and artifact_type:
        descriptor["artifactType"] = artifact_type
    annotations = document.get("annotations")
    if isinstance(annotations, dict) and annotations:
        descriptor["annotations"] = annotations
    return target, descriptor


def _split(path: str) -> tuple[str, str, str]:
    """``<name>/manifests/<ref>``, ``<name>/blobs/<digest>``, ``<name>/referrers/<digest>``,
    ``<name>/tags/list``."""
    for kind in ("manifests", "blobs", "referrers"):
        name, marker, reference = path.rpartition(f"/{kind}/")
        if marker and name and reference and "/" not in reference:
            return name, kind, reference
    if path.endswith("/tags/list") and len(path) > len("/tags/list"):
        return path.removesuffix("/tags/list"), "tags", ""
    return "", "", ""


def _media_type(image: dict[str, Any], manifest: bytes) -> str:
    """The manifest's media type: as stored with it, else as its own mediaType field says."""
    stored = image.get("imageManifestMediaType")
    if isinstance(stored, str) and stored:
        return stored
    try:
        document = json.loads(manifest)
    except ValueError:
        document = None
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if document.get("schemaVersion") == 1:
            return "application/vnd.docker.distribution.manifest.v1+prettyjws"
        if "manifests" in document:
            return "application/vnd.oci.image.index.v1+json"
    return "application/vnd.oci.image.manifest.v1+json"
