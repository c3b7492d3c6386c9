"""The ECR rules moto skips, checked before anything is applied.

What moto 5.2 does, and what the rules add (errors in ECR's JSON shape)::

    InitiateLayerUpload   moto: uploadId, partSize 10 MiB (as ECR).
                          rules: ``part_size`` overrides the returned partSize.
    UploadLayerPart       moto: UploadNotFoundException; partFirstByte != lastByteReceived + 1
                          -> InvalidLayerPartException with lastValidByteReceived, uploadId,
                          registryId, repositoryName (as ECR).
                          rules add, as InvalidLayerPartException with the same fields: a part
                          over 20,971,520 bytes, an empty part, a byte range whose length is not
                          the blob's; and an upload id unknown to this repository ->
                          UploadNotFoundException.
    CompleteLayerUpload   moto: ignores layerDigests and keeps whatever bytes arrived.
                          rules add, in this order: UploadNotFoundException,
                          EmptyUploadException (no parts), LayerPartTooSmallException (a part
                          but the last under ``min_part_size``), InvalidLayerException
                          (layerDigests is not exactly [sha256 of the bytes]),
                          LayerAlreadyExistsException. After such an error the upload stays
                          open; after success it is gone (a retried complete gets
                          UploadNotFoundException).
    BatchCheckLayerAvailability, BatchGetImage  moto, as ECR.
    ListImageReferrers    moto lacks it. rules: the list the registry's referrers API gives
                          (registry.py), every referrer ACTIVE, paged as ECR pages (20 without
                          maxResults, 1-50 with it, an opaque nextToken); its fields checked
                          (InvalidParameterException), an unknown repository as ListImages
                          answers it (RepositoryNotFoundException).
    PutImage              moto: digest of the joined layer digests, imageDigest and blobs not
                          checked, unknown repository -> HTTP 500. rules add:
                          ImageDigestDoesNotMatchException, InvalidParameterException
                          (manifest not JSON), RepositoryNotFoundException,
                          LayersNotFoundException (config or layer blob missing), and make the
                          stored digest sha256(manifest) as ECR does.

The bytes never go to moto: a part is written to the store (``store.py``) at its offset and
answered here; a completion moves the bytes to the blob of their digest and records the layer
(digest and size) in moto's backend, in process, so moto's BatchCheckLayerAvailability and
PutImage see it. Every other operation goes to moto untouched. One upload's parts and
completion are applied one at a time, in arrival order, as ECR does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from ecrstream.local.faults import Exchange, FaultKind, Operation, UploadSnapshot
from ecrstream.local.protocol import MAX_PART_SIZE, Parsed, Reply, error, success
from ecrstream.local.registry import DIGEST, TOKEN_SECONDS, Access, referrer_descriptors
from ecrstream.local.store import BlobStore
from ecrstream.local.upstream import Upstream, manifest_blobs

if TYPE_CHECKING:
    from _hashlib import HASH

_LAYER_DIGEST: Final = re.compile(r"[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+")
_CREDENTIAL_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/")
_NO_SUCH_BLOB: Final = "sha256:" + "0" * 64


class Upload:
    """The state of one open upload. Mutated on the proxy loop, under the shared lock."""

    __slots__ = (
        "hasher",
        "last_byte_received",
        "lock",
        "part_sizes",
        "region_name",
        "registry_id",
        "repository_name",
        "upload_id",
    )

    def __init__(
        self, upload_id: str, repository_name: str, registry_id: str, region_name: str
    ) -> None:
        self.upload_id = upload_id
        self.repository_name = repository_name
        self.registry_id = registry_id
        self.region_name = region_name
        self.hasher: HASH = hashlib.sha256()
        self.part_sizes: list[int] = []
        self.last_byte_received = -1
        # Serializes check and apply of one upload's parts and completion, as ECR does.
        self.lock = asyncio.Lock()

    def snapshot(self) -> UploadSnapshot:
        return UploadSnapshot(
            upload_id=self.upload_id,
            repository_name=self.repository_name,
            registry_id=self.registry_id,
            part_sizes=tuple(self.part_sizes),
            last_byte_received=self.last_byte_received,
            digest="sha256:" + self.hasher.hexdigest(),
        )


class Rules:
    """The ECR operations the endpoint applies itself or checks before moto does.

    ``lock`` is the proxy's: it guards the uploads and settings that other threads read.
    """

    def __init__(
        self,
        upstream: Upstream,
        store: BlobStore,
        access: Access,
        lock: threading.Lock,
        *,
        region_name: str,
        registry_id: str,
        min_part_size: int,
        part_size: int | None,
    ) -> None:
        self._upstream = upstream
        self._store = store
        self._access = access
        self._lock = lock
        self._region_name = region_name
        self._registry_id = registry_id
        self.min_part_size = min_part_size
        self.part_size = part_size
        self._uploads: dict[str, Upload] = {}

    # -- state other threads read (under the lock) --

    def snapshot(self, upload_id: str) -> UploadSnapshot | None:
        with self._lock:
            upload = self._uploads.get(upload_id)
            return upload.snapshot() if upload is not None else None

    def forget(self, upload_id: str) -> bool:
        """Drop an open upload here and in moto; False if it was not open."""
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        if upload is None:
            return False
        self._store.discard(upload_id)
        self._upstream.drop_upload(
            upload.registry_id, upload.region_name, upload.repository_name, upload_id
        )
        return True

    def _current(self, upload: Upload) -> bool:
        with self._lock:
            return self._uploads.get(upload.upload_id) is upload

    def _lookup(self, upload_id: str | None, repository_name: str | None) -> Upload | None:
        with self._lock:
            upload = self._uploads.get(upload_id) if upload_id is not None else None
        if upload is None or upload.repository_name != repository_name:
            return None
        return upload

    # -- applying (proxy loop) --

    async def apply(
        self,
        exchange: Exchange,
        headers: dict[str, str],
        body: bytes,
        parsed: Parsed | None,
    ) -> Reply:
        """Check and apply one request; never raises (a broken upstream answers a 500)."""
        try:
            return await self._dispatch(exchange, headers, body, parsed)
        except Exception as exc:  # the upstream broke: answer like ECR's 500, never hang
            return error("ServerException", f"local ECR proxy: {exc!r}", status=500)

    async def _dispatch(
        self,
        exchange: Exchange,
        headers: dict[str, str],
        body: bytes,
        parsed: Parsed | None,
    ) -> Reply:
        operation = exchange.operation
        if parsed is None:
            if operation == Operation.UPLOAD_LAYER_PART:
                return error("InvalidParameterException", "The request body is not valid JSON.")
            return await self._upstream.post(headers, body)
        if operation == Operation.INITIATE_LAYER_UPLOAD:
            return await self._initiate(exchange, headers, body, parsed)
        if operation == Operation.UPLOAD_LAYER_PART:
            return await self._upload_part(parsed)
        if operation == Operation.COMPLETE_LAYER_UPLOAD:
            return await self._complete(headers, parsed)
        if operation == Operation.PUT_IMAGE:
            return await self._put_image(headers, body, parsed)
        if operation == Operation.GET_DOWNLOAD_URL_FOR_LAYER:
            fault = exchange.fault
            expired = fault is not None and fault.kind is FaultKind.EXPIRED_URL
            return await self._download_url(headers, parsed, expired=expired)
        if operation == Operation.GET_AUTHORIZATION_TOKEN:
            return await self._authorization_token(headers, body)
        if operation == Operation.LIST_IMAGE_REFERRERS:
            return await self._list_image_referrers(headers, parsed)
        return await self._upstream.post(headers, body)

    def _registry_of(self, parsed: Parsed) -> str:
        return parsed.text("registryId") or self._registry_id

    def upload_not_found(
        self, upload_id: str | None, repository_name: str | None, registry_id: str | None
    ) -> Reply:
        return error(
            "UploadNotFoundException",
            f"Upload with id '{upload_id}' could not be found for the repository with name "
            f"'{repository_name}' in the registry with id '{registry_id or self._registry_id}'",
        )

    async def _initiate(
        self, exchange: Exchange, headers: dict[str, str], body: bytes, parsed: Parsed
    ) -> Reply:
        reply = await self._upstream.post(headers, body)
        repository_name = parsed.text("repositoryName")
        if reply.status != 200 or repository_name is None:
            return reply
        answer = json.loads(reply.body)
        upload_id = answer["uploadId"]
        match = _CREDENTIAL_REGION.search(headers.get("Authorization", ""))
        region_name = match.group(1) if match else self._region_name
        upload = Upload(upload_id, repository_name, self._registry_of(parsed), region_name)
        with self._lock:
            self._uploads[upload_id] = upload
            part_size = self.part_size
        exchange.upload_id = upload_id
        if part_size is not None:
            answer["partSize"] = part_size
            reply = Reply(reply.status, json.dumps(answer).encode(), reply.headers, True)
        return reply

    async def _upload_part(self, parsed: Parsed) -> Reply:
        repository_name = parsed.text("repositoryName")
        upload = self._lookup(parsed.text("uploadId"), repository_name)
        if upload is None:
            return self.upload_not_found(
                parsed.text("uploadId"), repository_name, parsed.text("registryId")
            )
        async with upload.lock:
            if not self._current(upload):
                return self.upload_not_found(upload.upload_id, repository_name, None)
            problem = _part_problem(upload, parsed)
            if problem is not None:
                return error(
                    "InvalidLayerPartException",
                    problem,
                    registryId=upload.registry_id,
                    repositoryName=upload.repository_name,
                    uploadId=upload.upload_id,
                    lastValidByteReceived=upload.last_byte_received,
                )
            blob = parsed.blob
            assert blob is not None  # _part_problem refuses a part without one
            # Hash into a copy and swap under the lock: a snapshot never sees a digest
            # ahead of part_sizes.
            hasher = upload.hasher.copy()
            offset = upload.last_byte_received + 1
            await asyncio.to_thread(self._write_part, upload.upload_id, offset, hasher, blob)
            with self._lock:
                upload.hasher = hasher
                upload.part_sizes.append(len(blob))
                upload.last_byte_received += len(blob)
            return success(
                {
                    "registryId": upload.registry_id,
                    "repositoryName": upload.repository_name,
                    "uploadId": upload.upload_id,
                    "lastByteReceived": upload.last_byte_received,
                }
            )

    def _write_part(self, upload_id: str, offset: int, hasher: HASH, blob: bytes) -> None:
        self._store.append(upload_id, offset, blob)
        hasher.update(blob)

    async def _complete(self, headers: dict[str, str], parsed: Parsed) -> Reply:
        repository_name = parsed.text("repositoryName")
        upload = self._lookup(parsed.text("uploadId"), repository_name)
        if upload is None:
            return self.upload_not_found(
                parsed.text("uploadId"), repository_name, parsed.text("registryId")
            )
        async with upload.lock:
            if not self._current(upload):
                return self.upload_not_found(upload.upload_id, repository_name, None)
            with self._lock:
                min_part_size = self.min_part_size
            digest = "sha256:" + upload.hasher.hexdigest()
            refused = _completion_problem(upload, parsed, min_part_size, digest)
            if refused is not None:
                return refused
            found = await self._upstream.available_layers(
                headers, repository_name, parsed.text("registryId"), [digest]
            )
            if isinstance(found, Reply):
                return found
            if digest in found:
                return error(
                    "LayerAlreadyExistsException",
                    f"The layer with digest '{digest}' already exists in the repository "
                    f"with name '{repository_name}' in the registry with id "
                    f"'{upload.registry_id}'.",
                )
            await asyncio.to_thread(self._store.commit, upload.upload_id, digest)
            registered = self._upstream.register_layer(
                upload.registry_id,
                upload.region_name,
                upload.repository_name,
                upload.upload_id,
                digest,
                upload.last_byte_received + 1,
            )
            with self._lock:
                self._uploads.pop(upload.upload_id, None)
            if not registered:
                return error(
                    "RepositoryNotFoundException",
                    f"The repository with name '{repository_name}' does not exist in the "
                    f"registry with id '{upload.registry_id}'",
                )
            return success(
                {
                    "registryId": upload.registry_id,
                    "repositoryName": upload.repository_name,
                    "uploadId": upload.upload_id,
                    "layerDigest": digest,
                }
            )

    async def _put_image(self, headers: dict[str, str], body: bytes, parsed: Parsed) -> Reply:
        manifest = parsed.text("imageManifest")
        if manifest is None:
            return await self._upstream.post(headers, body)
        digest = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        given = parsed.text("imageDigest")
        if given is not None and given != digest:
            return error(
                "ImageDigestDoesNotMatchException",
                f"The imageDigest '{given}' does not match the digest '{digest}' of the manifest.",
            )
        try:
            document = json.loads(manifest)
        except ValueError:
            return error(
                "InvalidParameterException",
                "Invalid parameter at 'imageManifest' failed to satisfy constraint: "
                "'Invalid JSON syntax'",
            )
        referenced = manifest_blobs(document)
        # With nothing to look up, the placeholder still proves the repository exists
        # (moto answers an unknown repository's PutImage with a bare 500).
        found = await self._upstream.available_layers(
            headers,
            parsed.text("repositoryName"),
            parsed.text("registryId"),
            referenced or [_NO_SUCH_BLOB],
        )
        if isinstance(found, Reply):
            return found
        missing = [blob for blob in referenced if blob not in found]
        if missing:
            return error(
                "LayersNotFoundException",
                f"Layers with digests {missing} required for pushing the image into the "
                f"repository with name '{parsed.text('repositoryName')}' do not exist.",
            )
        # moto derives its own digest unless told; tell it the one ECR would compute.
        forwarded = json.dumps({**parsed.fields, "imageDigest": digest}).encode()
        return await self._upstream.post(headers, forwarded)

    async def _download_url(
        self, headers: dict[str, str], parsed: Parsed, *, expired: bool = False
    ) -> Reply:
        repository_name = parsed.text("repositoryName")
        registry_id = parsed.text("registryId")
        digest = parsed.text("layerDigest")
        if digest is None or not _LAYER_DIGEST.fullmatch(digest):
            return error(
                "InvalidParameterException",
                "Invalid parameter at 'layerDigest' failed to satisfy constraint: 'Member must "
                f"satisfy regular expression pattern: {_LAYER_DIGEST.pattern}'",
            )
        found = await self._upstream.available_layers(
            headers, repository_name, registry_id, [digest]
        )
        if isinstance(found, Reply):
            return found
        if digest not in found or await asyncio.to_thread(self._store.find, digest) is None:
            return error(
                "LayersNotFoundException",
                f"The specified layer '{digest}' could not be found in the repository with "
                f"name '{repository_name}' in the registry with id "
                f"'{registry_id or self._registry_id}'.",
            )
        referenced = await self._upstream.referenced_blobs(headers, repository_name, registry_id)
        if isinstance(referenced, Reply):
            return referenced
        if digest not in referenced:
            return error(
                "LayerInaccessibleException",
                f"The specified layer '{digest}' is not available because it is not "
                "associated with an image. Unassociated image layers may be cleaned up at any "
                "time.",
            )
        url = self._access.download_url(digest, expired=expired)
        return success({"downloadUrl": url, "layerDigest": digest})

    async def _authorization_token(self, headers: dict[str, str], body: bytes) -> Reply:
        reply = await self._upstream.post(headers, body)
        if reply.status != 200:
            return reply
        # moto's token and address are AWS's; give this endpoint's, which /v2/ accepts.
        answer = json.loads(reply.body)
        expires_at = time.time() + TOKEN_SECONDS
        for data in answer.get("authorizationData", []):
            data["authorizationToken"] = self._access.token()
            data["proxyEndpoint"] = self._access.base_url
            data["expiresAt"] = expires_at
        return Reply(200, json.dumps(answer).encode(), reply.headers, applied=True)

    async def _list_image_referrers(self, headers: dict[str, str], parsed: Parsed) -> Reply:
        """ListImageReferrers (moto lacks it): the referrers API's list, one page of it."""
        request = _referrers_request(parsed)
        if isinstance(request, Reply):
            return request
        name, digest, types, status, max_results, offset = request

        async def ask(operation: str, payload: dict[str, Any]) -> Reply:
            return await self._upstream.ask(headers, operation, payload)

        found = await referrer_descriptors(
            ask, name, digest, artifact_types=types, registry_id=parsed.text("registryId")
        )
        if isinstance(found, Reply):
            return found
        if status in ("ARCHIVED", "ACTIVATING"):
            found = []  # nothing here is ever archived
        page = found[offset : offset + max_results]
        answer: dict[str, Any] = {
            "referrers": [{**descriptor, "artifactStatus": "ACTIVE"} for descriptor in page]
        }
        if offset + max_results < len(found):
            answer["nextToken"] = _page_token(name, digest, offset + max_results)
        return success(answer)


_ARTIFACT_STATUSES: Final = ("ACTIVE", "ARCHIVED", "ACTIVATING", "ANY")
_DEFAULT_REFERRERS_PAGE: Final = 20
"""ListImageReferrers' page without maxResults (ECR's API reference)."""


def _page_token(name: str, digest: str, offset: int) -> str:
    """An opaque nextToken: where the next page of this listing starts."""
    return base64.urlsafe_b64encode(json.dumps([name, digest, offset]).encode()).decode()


def _referrers_request(
    parsed: Parsed,
) -> tuple[str, str, tuple[str, ...] | None, str, int, int] | Reply:
    """ListImageReferrers' fields checked as ECR checks them: (repository, subject digest,
    artifact types or None, artifact status, page size, offset), or the error answer."""
    name = parsed.text("repositoryName")
    subject = parsed.fields.get("subjectId")
    digest = subject.get("imageDigest") if isinstance(subject, dict) else None
    if name is None or not isinstance(digest, str):
        return error(
            "InvalidParameterException", "repositoryName and subjectId.imageDigest are required."
        )
    if not DIGEST.fullmatch(digest):
        return error(
            "InvalidParameterException",
            f"Invalid parameter at 'subjectId.imageDigest': '{digest}' is not a sha256 digest.",
        )
    given = parsed.fields.get("filter", {})
    if not isinstance(given, dict):
        return error("InvalidParameterException", "Invalid parameter at 'filter'.")
    types = given.get("artifactTypes", [])
    if (
        not isinstance(types, list)
        or len(types) > 5
        or not all(isinstance(t, str) and 1 <= len(t) <= 255 for t in types)
    ):
        return error(
            "InvalidParameterException",
            "Invalid parameter at 'filter.artifactTypes': at most 5 types of 1 to 255 characters.",
        )
    status = given.get("artifactStatus", "ACTIVE")
    if status not in _ARTIFACT_STATUSES:
        return error(
            "InvalidParameterException",
            "Invalid parameter at 'filter.artifactStatus': one of "
            + ", ".join(_ARTIFACT_STATUSES)
            + ".",
        )
    max_results = parsed.fields.get("maxResults", _DEFAULT_REFERRERS_PAGE)
    if (
        not isinstance(max_results, int)
        or isinstance(max_results, bool)
        or not 1 <= max_results <= 50
    ):
        return error(
            "InvalidParameterException",
            "Invalid parameter at 'maxResults': an integer from 1 to 50.",
        )
    offset = 0
    if "nextToken" in parsed.fields:
        offset = -1
        try:
            where = json.loads(base64.urlsafe_b64decode(str(parsed.fields["nextToken"])))
        except ValueError:
            where = None
        if isinstance(where, list) and where[:2] == [name, digest] and len(where) == 3:
            offset = where[2] if isinstance(where[2], int) and where[2] >= 0 else -1
        if offset < 0:
            return error("InvalidParameterException", "Invalid parameter at 'nextToken'.")
    return name, digest, tuple(types) or None, status, max_results, offset


def _part_problem(upload: Upload, parsed: Parsed) -> str | None:
    blob = parsed.blob
    first, last = parsed.integer("partFirstByte"), parsed.integer("partLastByte")
    if blob is None:
        return "The layer part blob is missing or not valid base64."
    if len(blob) > MAX_PART_SIZE:
        return f"The layer part is {len(blob)} bytes, over the {MAX_PART_SIZE} byte limit."
    if not blob:
        return "The layer part is empty."
    if first is None or last is None or last - first + 1 != len(blob):
        return f"The byte range {first}-{last} does not match the {len(blob)} byte layer part."
    if first != upload.last_byte_received + 1:
        return (
            f"The layer part starts at byte {first}; the next expected byte is "
            f"{upload.last_byte_received + 1}."
        )
    return None


def _completion_problem(
    upload: Upload, parsed: Parsed, min_part_size: int, digest: str
) -> Reply | None:
    if not upload.part_sizes:
        return error(
            "EmptyUploadException",
            f"The upload with id '{upload.upload_id}' contains no layer parts.",
        )
    too_small = [
        number
        for number, size in enumerate(upload.part_sizes[:-1], start=1)
        if size < min_part_size
    ]
    if too_small:
        return error(
            "LayerPartTooSmallException",
            f"Layer part(s) {too_small} of upload '{upload.upload_id}' are smaller "
            f"than the minimum of {min_part_size} bytes (only the last may be).",
        )
    if parsed.texts("layerDigests") != (digest,):
        return error(
            "InvalidLayerException",
            f"The layer digests {list(parsed.texts('layerDigests'))} do not match "
            f"the computed digest '{digest}' of the uploaded bytes.",
        )
    return None
