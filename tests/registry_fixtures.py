"""Real source registries for the tests: the CNCF distribution registry, a token issuer, faults.

The registry is Debian's ``docker-registry`` (distribution 2.8), started as
``docker-registry serve CONFIG`` on 127.0.0.1 with a temporary config and filesystem storage,
and waited for by polling ``GET /v2/`` (registry_server.py, shared with the copy benchmark).
Three set-ups (session fixtures, started on first use):

- ``anon_registry``: anonymous, plain HTTP;
- ``basic_registry``: htpasswd Basic auth over TLS with a throwaway CA (trustme). Its blob GETs
  redirect (the registry's own ``redirect`` storage middleware) to ``storage``, a file server
  on ``localhost`` (another origin) that refuses any request carrying Authorization, as S3
  refuses a presigned URL with our credentials;
- ``token_registry``: distribution's ``auth: token`` with :class:`TokenIssuer`, a token service
  written here that signs RS256 JWTs with a certificate the registry trusts
  (``rootcertbundle``). Anonymous callers get pull on ``public/*``; users pull and push all.

:class:`FaultProxy` sits in front of ``anon_registry`` and injects source faults. The aiohttp
servers (issuer, storage, proxy) share one event loop in a daemon thread. Images are seeded
through the registry's own push API (:class:`Seeder`: monolithic POST + PUT uploads, PUT
manifest). Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import pytest
import registry_server
import trustme
from aiohttp import ClientSession, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from registry_server import RegistryServer, RegistryStartError

from ecrstream.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)

BASIC_USER = "seeder"
BASIC_PASSWORD = "s3cret-basic-pw"
TOKEN_USER = "alice"
TOKEN_PASSWORD = "s3cret-token-pw"
IDENTITY_TOKEN = "s3cret-refresh-token"

_T = TypeVar("_T")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- one event loop in a thread for the fixtures' aiohttp servers -------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread; ``serve(app)`` starts an aiohttp app on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="registry-fixtures", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def serve(self, app: web.Application, host: str = "127.0.0.1") -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, host, 0)
            await site.start()
            self._runners.append(runner)
            port: int = runner.addresses[0][1]
            return port

        return self.run(start())

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# -- the token issuer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered: who asked (None: anonymous), how, and for what."""

    method: str
    user: str | None
    scopes: tuple[str, ...]
    service: str | None


class TokenIssuer:
    """The distribution token service (GET with Basic, or OAuth2 POST with a refresh token)."""

    issuer = "ecrstream-test-issuer"
    service = "ecrstream-test-registry"

    def __init__(self, directory: Path) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecrstream test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_path = directory / "token-signer.pem"
        self.bundle_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._x5c = [
            base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
        ]
        self.users = {TOKEN_USER: TOKEN_PASSWORD}
        self.identity_tokens = {IDENTITY_TOKEN: TOKEN_USER}
        self.requests: list[TokenRequest] = []
        self.reset()

    def reset(self) -> None:
        """Back to defaults: ``token`` field, 300 s tokens, none pre-expired, no records."""
        self.token_field = "token"
        self.expires_in = 300
        #: How many of the next tokens to sign already expired (the registry refuses them).
        self.expired_next = 0
        self.requests.clear()

    def mint(self, subject: str, scopes: list[str], *, expired: bool = False) -> str:
        """A JWT granting ``subject`` the actions in ``scopes`` (``repository:name:actions``)."""
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        # The registry allows 60 s of clock skew: an expired token must be older than that.
        expiry = now - 600 if expired else now + self.expires_in
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": expiry,
            "nbf": now - 900,
            "iat": now - 900 if expired else now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _granted(self, user: str | None, scope: str) -> str | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        if user is not None:
            return scope
        if name.startswith("public/") and "pull" in actions.split(","):
            return f"repository:{name}:pull"
        return f"repository:{name}:"  # anonymous: a valid token that grants nothing

    async def handle(self, request: web.Request) -> web.Response:
        user: str | None = None
        if request.method == "POST":
            form = await request.post()
            scopes = tuple(str(s) for s in form.getall("scope", []))
            service = form.get("service")
            refresh = form.get("refresh_token")
            if form.get("grant_type") != "refresh_token" or refresh not in self.identity_tokens:
                return web.json_response({"error": "invalid_grant"}, status=401)
            user = self.identity_tokens[str(refresh)]
        else:
            scopes = tuple(request.query.getall("scope", []))
            service = request.query.get("service")
            header = request.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if self.users.get(name) != password:
                    return web.json_response({"details": "bad credentials"}, status=401)
                user = name
        self.requests.append(
            TokenRequest(request.method, user, scopes, None if service is None else str(service))
        )
        if service != self.service:
            return web.json_response({"details": "unknown service"}, status=400)
        granted = [g for g in (self._granted(user, s) for s in scopes) if g is not None]
        expired = self.expired_next > 0
        if expired:
            self.expired_next -= 1
        token = self.mint(user or "", granted, expired=expired)
        return web.json_response(
            {
                self.token_field: token,
                "expires_in": self.expires_in,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self.handle)
        return app


# -- storage behind the redirect -----------------------------------------------------------------


class StorageServer:
    """Serves the registry's storage directory, as S3 would behind a presigned redirect.

    Refuses (403) any request that carries an Authorization header; records every request.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, bool, str | None]] = []  # (path, had auth, Range)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        had_auth = "Authorization" in request.headers
        self.requests.append((request.path, had_auth, request.headers.get("Range")))
        if had_auth:
            return web.Response(status=403, text="only one auth mechanism allowed")
        path = (self.root / request.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path)  # answers Range with 206, as S3 does

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        return app


# -- the registry process ------------------------------------------------------------------------


def start_registry(
    name: str,
    directory: Path,
    *,
    plain_http: bool = True,
    tls: tuple[Path, Path] | None = None,
    auth: dict[str, Any] | None = None,
    middleware: dict[str, Any] | None = None,
    ca_path: Path | None = None,
) -> RegistryServer:
    """``registry_server.start_registry`` (fresh storage in ``directory``); fails the test if
    the registry cannot start."""
    try:
        return registry_server.start_registry(
            name,
            directory,
            plain_http=plain_http,
            tls=tls,
            auth=auth,
            middleware=middleware,
            ca_path=ca_path,
        )
    except RegistryStartError as error:
        pytest.fail(str(error))


# -- seeding through the push API ----------------------------------------------------------------


@dataclass(frozen=True)
class SeededImage:
    """An image pushed by :class:`Seeder`: its manifest bytes and digest, and its blobs."""

    repository: str
    tag: str | None
    media_type: str
    manifest: bytes
    digest: str
    blobs: dict[str, bytes]  # digest -> bytes; the config first, then the layers
    layers: tuple[str, ...]


@dataclass(frozen=True)
class SeededIndex:
    """An index pushed by :class:`Seeder` with its children."""

    repository: str
    tag: str
    media_type: str
    manifest: bytes
    digest: str
    children: tuple[SeededImage, ...]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Seeder:
    """Pushes blobs, manifests, images and indexes into a registry through its API."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        context = server.ssl_context()
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def _request(
        self, method: str, url: str, repository: str, *, body: bytes | None = None, **headers: str
    ) -> tuple[int, Any]:
        scope = f"repository:{repository}:pull,push"
        request = urllib.request.Request(
            url, data=body, method=method, headers={**self.server.seed_headers(scope), **headers}
        )
        try:
            with self._opener.open(request, timeout=30) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as error:
            text = error.read()[:500]
            raise AssertionError(f"seeding {method} {url}: HTTP {error.code}: {text!r}") from None

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        base = self.server.base_url
        status, headers = self._request(
            "POST", f"{base}/v2/{repository}/blobs/uploads/", repository
        )
        assert status == 202, status
        location = urllib.parse.urljoin(base, headers["Location"])
        separator = "&" if "?" in location else "?"
        status, _ = self._request(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            repository,
            body=data,
            **{"Content-Type": "application/octet-stream"},
        )
        assert status == 201, status
        return digest

    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        url = f"{self.server.base_url}/v2/{repository}/manifests/{reference}"
        status, headers = self._request(
            "PUT", url, repository, body=data, **{"Content-Type": media_type}
        )
        assert status == 201, status
        digest = sha256_digest(data)
        assert headers.get("Docker-Content-Digest") == digest
        return digest

    def push_image(
        self,
        repository: str,
        tag: str | None,
        layer_sizes: tuple[int, ...] = (150_000, 70_000),
        *,
        oci: bool = True,
        seed: int = 0,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> SeededImage:
        """An image of random layers of ``layer_sizes`` bytes, tagged ``tag`` (None: untagged)."""
        rng = random.Random(f"{repository}:{tag}:{seed}")
        layers = [rng.randbytes(size) for size in layer_sizes]
        config = json.dumps(
            {
                "architecture": platform[1],
                "os": platform[0],
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b) for b in layers]},
                "config": {"Labels": {"seed": str(seed)}},
            }
        ).encode()
        layer_type = (
            "application/vnd.oci.image.layer.v1.tar+gzip"
            if oci
            else "application/vnd.docker.image.rootfs.diff.tar.gzip"
        )
        config_type = (
            "application/vnd.oci.image.config.v1+json"
            if oci
            else "application/vnd.docker.container.image.v1+json"
        )
        blobs = {self.push_blob(repository, config): config}
        for layer in layers:
            blobs[self.push_blob(repository, layer)] = layer
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {
                    "mediaType": config_type,
                    "digest": sha256_digest(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": layer_type, "digest": sha256_digest(b), "size": len(b)}
                    for b in layers
                ],
            },
            indent=3,  # not the canonical form: the bytes, not the JSON, make the digest
        ).encode()
        digest = self.push_manifest(
            repository, tag or sha256_digest(manifest), manifest, media_type
        )
        return SeededImage(
            repository,
            tag,
            media_type,
            manifest,
            digest,
            blobs,
            tuple(sha256_digest(b) for b in layers),
        )

    def push_index(
        self,
        repository: str,
        tag: str,
        platforms: tuple[tuple[str, str, str | None], ...],
        *,
        oci: bool = True,
    ) -> SeededIndex:
        """An index with one small image per (os, architecture, variant), all pushed."""
        children = []
        entries = []
        for number, (os_name, architecture, variant) in enumerate(platforms):
            child = self.push_image(
                repository,
                None,
                (40_000 + number,),
                oci=oci,
                seed=number,
                platform=(os_name, architecture),
            )
            children.append(child)
            platform: dict[str, str] = {"os": os_name, "architecture": architecture}
            if variant:
                platform["variant"] = variant
            entries.append(
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": platform,
                }
            )
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        ).encode()
        digest = self.push_manifest(repository, tag, data, media_type)
        return SeededIndex(repository, tag, media_type, data, digest, tuple(children))


# -- the fault proxy -----------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault the proxy injects into the next ``times`` requests whose path has ``where``.

    Kinds: ``status`` (answer ``status`` instead of forwarding), ``throttle`` (429 with
    ``retry_after``), ``reset`` (send ``at_byte`` bytes of the body, then a TCP RST),
    ``truncate`` (``at_byte`` bytes, then a clean close short of Content-Length), ``stall``
    (``at_byte`` bytes, then nothing until the client gives up), ``ignore_range`` (forward
    without Range: a 200 with the whole blob), ``overrun`` (the body with extra bytes),
    ``short`` (``at_byte`` bytes, chunked, ended cleanly), ``replace`` (serve ``body`` with
    ``headers`` instead of the registry's answer), ``corrupt`` (the registry's answer, ranged
    or not, with the blob's byte at offset ``at_byte`` flipped if the answer holds it).
    """

    kind: str
    where: str = "/blobs/"
    times: int = 1
    at_byte: int = 64 * 1024
    status: int = 503
    retry_after: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ProxiedRequest:
    """What the proxy saw: method, path, the Range header and the fault injected (if any);
    ``served``: the body bytes it answered with (set once the answer is written)."""

    method: str
    path: str
    range: str | None
    fault: str | None
    served: int = 0


_HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of one registry that injects :class:`Fault`s."""

    def __init__(self, loop_thread: LoopThread, upstream: str) -> None:
        self._loop_thread = loop_thread
        self._upstream = upstream
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        #: Set when a ``stall`` fault has sent its bytes and stopped.
        self.stalled = threading.Event()
        self._session: ClientSession | None = None
        self._release_stalls: asyncio.Event | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.port = loop_thread.serve(app)
        self.host = f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.stalled.clear()

        async def release() -> None:
            if self._release_stalls is not None:
                self._release_stalls.set()
            self._release_stalls = asyncio.Event()

        self._loop_thread.run(release())

    def blob_gets(self, digest: str = "/blobs/") -> list[ProxiedRequest]:
        """The blob GETs seen (of ``digest`` if given), in arrival order."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and "/blobs/" in r.path and digest in r.path
            ]

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.where in path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._take(request.path)
        record = ProxiedRequest(
            request.method,
            request.path,
            request.headers.get("Range"),
            fault.kind if fault else None,
        )
        with self._lock:
            self.requests.append(record)
        if fault is not None and fault.kind == "status":
            return web.Response(status=fault.status, text="injected fault")
        if fault is not None and fault.kind == "throttle":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.Response(status=429, headers=headers, text="slow down")
        if self._session is None:
            self._session = ClientSession(auto_decompress=False)
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        if fault is not None and fault.kind == "ignore_range":
            headers.pop("Range", None)
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
            answer_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
            }
        if fault is not None and fault.kind == "corrupt":
            first = _range_start(answer_headers.get("Content-Range")) if status == 206 else 0
            if 0 <= fault.at_byte - first < len(body):
                flipped = bytearray(body)
                flipped[fault.at_byte - first] ^= 0xFF
                body = bytes(flipped)
        if fault is None or fault.kind in ("ignore_range", "corrupt"):
            record.served = len(body)
            return web.Response(status=status, headers=answer_headers, body=body)
        if fault.kind == "replace":
            record.served = len(fault.body)
            return web.Response(status=200, headers=fault.headers, body=fault.body)
        if fault.kind == "overrun":
            record.served = len(body) + 6
            return web.Response(status=status, headers=answer_headers, body=body + b"extra!")
        record.served = min(len(body), fault.at_byte)
        response = web.StreamResponse(status=status, headers=answer_headers)
        if fault.kind != "short":
            response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: fault.at_byte])
        transport = request.transport
        assert transport is not None
        if fault.kind == "short":
            await response.write_eof()
        elif fault.kind == "truncate":
            transport.close()  # a FIN after the bytes written, short of Content-Length
        elif fault.kind == "reset":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif fault.kind == "stall":
            self.stalled.set()
            release = self._release_stalls
            assert release is not None
            await release.wait()  # until the test resets the proxy or the client goes away
            transport.close()
        return response


def _range_start(content_range: str | None) -> int:
    """The first byte a ``Content-Range: bytes FIRST-LAST/TOTAL`` header names (0 if none)."""
    if not content_range or not content_range.startswith("bytes "):
        return 0
    return int(content_range[len("bytes ") :].split("-", 1)[0])


# -- pytest fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fixture_loop() -> Iterator[LoopThread]:
    """The event loop (in a thread) of the issuer, storage and proxy servers."""
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()


@pytest.fixture(scope="session")
def registry_ca() -> trustme.CA:
    """The throwaway CA that signs the TLS registry's certificate."""
    return trustme.CA()


@pytest.fixture(scope="session")
def anon_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A distribution registry without auth, over plain HTTP."""
    server = start_registry("anonymous", tmp_path_factory.mktemp("anon-registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_ca: trustme.CA, fixture_loop: LoopThread
) -> Iterator[tuple[RegistryServer, StorageServer]]:
    """A registry with htpasswd Basic auth over TLS; blob GETs redirect to the storage server."""
    directory = tmp_path_factory.mktemp("basic-registry")
    certificate = registry_ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = (
        directory / "cert.pem",
        directory / "key.pem",
        directory / "ca.pem",
    )
    cert_path.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(key_path))
    registry_ca.cert_pem.write_to_path(str(ca_path))
    # Cost 4: the registry checks the bcrypt hash on every request.
    hashed = bcrypt.hashpw(BASIC_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(f"{BASIC_USER}:{hashed}\n")
    storage = StorageServer(directory / "storage")
    storage_port = fixture_loop.serve(storage.app())
    server = start_registry(
        "basic",
        directory,
        plain_http=False,
        tls=(cert_path, key_path),
        auth={"htpasswd": {"realm": "ecrstream-test", "path": str(htpasswd)}},
        # "localhost", not 127.0.0.1: another origin, so Authorization must be dropped.
        middleware={
            "storage": [
                {"name": "redirect", "options": {"baseurl": f"http://localhost:{storage_port}"}}
            ]
        },
        ca_path=ca_path,
    )
    basic = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    server.seed_headers = lambda scope: {"Authorization": basic}
    yield server, storage
    server.stop()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, fixture_loop: LoopThread
) -> Iterator[tuple[RegistryServer, TokenIssuer]]:
    """A registry with token auth, and its issuer (plain HTTP both)."""
    directory = tmp_path_factory.mktemp("token-registry")
    issuer = TokenIssuer(directory)
    issuer_port = fixture_loop.serve(issuer.app())
    server = start_registry(
        "token",
        directory,
        auth={
            "token": {
                "realm": f"http://127.0.0.1:{issuer_port}/token",
                "service": issuer.service,
                "issuer": issuer.issuer,
                "rootcertbundle": str(issuer.bundle_path),
            }
        },
    )
    server.seed_headers = lambda scope: {
        "Authorization": f"Bearer {issuer.mint('seeder', [scope])}"
    }
    yield server, issuer
    server.stop()


@pytest.fixture(scope="session")
def session_fault_proxy(
    anon_registry: RegistryServer, fixture_loop: LoopThread
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(fixture_loop, anon_registry.base_url)
    yield proxy
    proxy.reset()
    with contextlib.suppress(concurrent.futures.TimeoutError):
        fixture_loop.run(proxy.close())


@pytest.fixture
def fault_proxy(session_fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The fault proxy in front of ``anon_registry``, with no faults and no records."""
    session_fault_proxy.reset()
    yield session_fault_proxy
    session_fault_proxy.reset()


@pytest.fixture
def isolated_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DOCKER_CONFIG directory, so no test reads the machine's own docker login."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


__all__ = [
    "BASIC_PASSWORD",
    "BASIC_USER",
    "IDENTITY_TOKEN",
    "TOKEN_PASSWORD",
    "TOKEN_USER",
    "Fault",
    "FaultProxy",
    "ProxiedRequest",
    "RegistryServer",
    "Seeder",
    "SeededImage",
    "SeededIndex",
    "StorageServer",
    "TokenIssuer",
    "sha256_digest",
    "start_registry",
]
